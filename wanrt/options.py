"""CLI argument groups shared by subcommands (Polygraphy's habit): each group is a decorator that adds its
options, and a `*_from_kwargs` function that turns them into the matching frozen spec."""

from __future__ import annotations

from typing import Callable

import click

from wanrt.errors import BadInputError
from wanrt.export.lora import TARGET_GROUPS
from wanrt.choices import Backend, Dtype, LoraMode
from wanrt.dit_io import VideoShape, parse_video_shape
from wanrt.export.presets import PRESETS

# Seeds every generator accepts (torch.Generator overflows past 2^63, numpy past 2^32): one line, exit 2 beyond.
SEED = click.IntRange(0, 2**32 - 1)


def option_group(*decorators: Callable) -> Callable:
    """Several click options as one decorator (an argument group shared by subcommands)."""
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def parse_int_list(text: str | None, what: str = "--rank") -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"{what} {text!r}: expected an integer or a comma list like 4,8,16") from None
    if not values:
        raise BadInputError(f"{what} is empty")
    for v in values:
        if v <= 0:
            raise BadInputError(f"{what} {v}: must be a positive integer")
    return values


def parse_shape(text: str | None, what: str) -> VideoShape | None:
    """'FRAMESxHEIGHTxWIDTH' in pixels, e.g. 81x480x832."""
    return None if text is None else parse_video_shape(text, what)


model_options = option_group(
    click.option("--model", "model", default="tiny", show_default=True,
                 help=f"Preset ({', '.join(PRESETS)}), a local diffusers checkpoint directory, or a hub id "
                      "(e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)."),
    click.option("--layers", type=int, default=None, help="Keep only the first N transformer blocks."),
    click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of preset weights and synthetic LoRAs."),
)

lora_options = option_group(
    click.option("--lora", "lora_file", type=click.Path(), default=None,
                 help="LoRA file (safetensors) or peft adapter directory: diffusers/peft, ComfyUI/Kijai or "
                      "musubi/kohya format."),
    click.option("--rank", "rank", default=None,
                 help="Synthetic LoRA rank (no --lora), or SVD re-rank target (--lora of higher rank)."),
    click.option("--targets", default="all", show_default=True,
                 help=f"One target set: groups ({', '.join(TARGET_GROUPS)}) and/or module patterns, joined by "
                      "',' or '+' (a union)."),
    click.option("--lora-mode", type=click.Choice(LoraMode.values()), default="merged", show_default=True,
                 help="merged: folded into W; separate: its own branch in the graph; full: dense delta reference."),
    click.option("--lora-scale", type=float, default=1.0, show_default=True),
    click.option("--allow-pickle", is_flag=True, help="Allow .pt/.ckpt/.bin LoRA files (loaded weights_only)."),
    click.option("--finetuned", default=None,
                 help="With --lora-mode full: a real full fine-tune instead of a dense delta (diffusers dir, sharded "
                      "or single .safetensors, ComfyUI checkpoint; or synthetic[:EXPONENT]). See 'wanrt extract'."),
)

dtype_option = click.option("--dtype", type=click.Choice(Dtype.values()), default=None,
                            help="Export precision (bf16 is what Wan is trained in).  [default: fp32; bf16 with "
                                 "--engine]")

# the model dtype of subcommands that run the model (bench, generate): fp32 unless asked
run_dtype_option = click.option("--dtype", type=click.Choice(Dtype.values()), default="fp32", show_default=True,
                                help="dtype of the model weights (and of the exports made on the way).")

# where the model runs, for every subcommand that runs it
device_options = option_group(
    click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]."),
    click.option("--threads", type=int, default=None, help="CPU threads for torch and the runtimes."),
)


def backend_option(default: str):
    """--backend, one of wanrt.choices.Backend (generate, and serve's per-replica backend)."""
    return click.option("--backend", type=click.Choice(Backend.values()), default=default, show_default=True,
                        help="Runtime backend (docs/bench.md).")


def model_spec_from_kwargs(kw):
    from wanrt.export.model import ModelSpec

    return ModelSpec(source=kw["model"], layers=kw["layers"], dtype=kw.get("dtype") or "fp32", seed=kw["seed"])


def lora_spec_from_kwargs(kw, rank: int | None = None):
    from wanrt.export.api import LoraSpec

    # '+' and ',' both join a target set (bench sweeps several sets with --target-sets): one syntax everywhere
    return LoraSpec(file=kw["lora_file"], rank=rank, targets=kw["targets"].replace("+", ","), mode=kw["lora_mode"],
                    scale=kw["lora_scale"], seed=kw["seed"], allow_pickle=kw["allow_pickle"],
                    finetuned=kw.get("finetuned"))
