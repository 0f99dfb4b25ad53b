"""Every closed vocabulary of wanrt as an enum: LoRA modes, dtypes, engine precisions, engine flavours, backends.

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


class LoraMode(Choice):
    """How a LoRA enters the graph."""

    MERGED = "merged"  # W + s B A folded into the base weight
    SEPARATE = "separate"  # its own branch per Linear (refittable / swappable)
    FULL = "full"  # a dense delta: the full fine-tune reference


class Dtype(Choice):
    """Precision of a PyTorch model and of an exported graph."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


# Precision of a compiled engine: every Dtype, then the quantized formats (issue 12 adds int8 with its flavour).
Precision = Choice("Precision", [(m.name, m.value) for m in Dtype] + [("FP8", "fp8"), ("INT8", "int8")])


class Flavour(Choice):
    """Engine flavour requested with --flavour (`auto` picks the installed one)."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    RTX = "rtx"
    OPENVINO = "openvino"  # CPU / Intel GPU engines (engines/openvino.py)


class Backend(Choice):
    """Runtime backends (runtime/backends.py REGISTRY has exactly these keys; tests/test_layers.py checks it)."""

    EAGER = "eager"
    COMPILE = "compile"
    ORT = "ort"
    TRT = "trt"
    OV = "ov"  # OpenVINO engines (runtime/backends.OvBackend)
