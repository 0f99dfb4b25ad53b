"""Every closed vocabulary of wanrt as an enum: LoRA modes, dtypes, engine precisions. (Engine flavours and the
backends that run them are named by engines/registry.py; runtime/backend_names.py lists the backends.)

One place declares each set; CLI choices (`Dtype.values()` in a click.Choice), validation (`Dtype.parse`) and
error messages are generated from it, so a value is never accepted in one subcommand and refused in another.
Members are `str` subclasses: `Dtype.BF16 == "bf16"`, and specs may keep plain strings (manifests stay JSON).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from wanrt.errors import BadInputError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A closed set of lowercase names. `parse` refuses anything else with one line naming the flag."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The names, in declaration order (what a click.Choice offers)."""
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls: type[C], value: str | C, flag: str, error: type[Exception] = BadInputError) -> C:
        """`value` as a member; `error` (BadInputError unless the caller's domain has its own type) otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise error(f"{flag} {value!r}: choose one of {', '.join(cls.values())}") from None


def choice(name: str, doc: str, *values: str, module: str = __name__) -> type[Choice]:
    """A Choice class `name` of `values`, each member named by its value upper-cased (`Dtype.BF16 == "bf16"`);
    `module`: where the class is bound (pickling finds it there)."""
    cls = Choice(name, [(v.upper().replace("-", "_"), v) for v in values], module=module)
    cls.__doc__ = doc
    return cls


LoraMode = choice("LoraMode", "How a LoRA enters the graph: merged (W + s B A folded into the base weight), separate "
                  "(its own branch per Linear: refittable, swappable), full (a dense delta: the full fine-tune "
                  "reference).", "merged", "separate", "full")
Dtype = choice("Dtype", "Precision of a PyTorch model and of an exported graph.", "fp32", "fp16", "bf16")
# Precision of a compiled engine: every Dtype, then the quantized formats (issue 12 adds int8 with its flavour).
Precision = choice("Precision", "Precision of a compiled engine.", *Dtype.values(), "fp8", "int8", "w8a8")

# The vocabularies of single options, here so a command lists them without importing the module that uses them
# (those import torch; `wanrt CMD --help` must not).
LoraFormat = choice("LoraFormat", "LoRA file layouts read and written (export/lora_formats.py).",
                    "diffusers", "peft", "comfyui", "kohya")
ComfyuiKeys = choice("ComfyuiKeys", "Key names of a ComfyUI LoRA's factors: lora_A/lora_B or lora_down/lora_up.",
                     "lora_A", "lora_down")
SvdMethod = choice("SvdMethod", "`wanrt extract --svd` (export/extract.py: auto is randomized for large matrices, "
                   "with an accuracy check).", "auto", "exact", "randomized")
Fp8Backend = choice("Fp8Backend", "Who inserts FP8 Q/DQ: NVIDIA ModelOpt or wanrt's own pass (auto: ModelOpt when "
                    "importable).", "auto", "modelopt", "wanrt")
Refit = choice("Refit", "Refittable LoRA weights in an engine (auto: when the ONNX has a LoRA and a GPU builds).",
               "auto", "yes", "no")
LpipsNet = choice("LpipsNet", "LPIPS feature networks (runtime/metrics/lpips.py).", "alex", "vgg")
ResizeMode = choice("ResizeMode", "How FVD brings frames to the I3D input size (runtime/metrics/frechet.py).",
                    "bilinear", "bilinear-tf1", "center-crop")
Reference = choice("Reference", "What `wanrt bench` compares against: eager fp32 of the same weights (engine parity) "
                   "or the full fine-tune the LoRAs were extracted from (rank vs full).", "eager", "finetuned")
Expert = choice("Expert", "Wan2.2's two transformers of one model (diffusers: `transformer` and `transformer_2`): "
                "the high-noise expert runs the steps whose timestep is at or above the pipeline's boundary "
                "(`boundary_ratio` x 1000), the low-noise expert the rest.", "high", "low")
