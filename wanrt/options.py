"""CLI argument groups shared by subcommands (Polygraphy's habit): each group is a decorator that adds its
options, and a `*_from_kwargs` function that turns them into the matching frozen spec."""

from __future__ import annotations

from typing import Callable

import click

from wanrt.errors import BadInputError
from wanrt.export.lora import LORA_MODES, TARGET_GROUPS
from wanrt.export.presets import PRESETS, VideoShape


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
    if text is None:
        return None
    from wanrt.export.onnx_export import check_video_shape

    try:
        frames, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInputError(f"{what} {text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 81x480x832") from None
    return check_video_shape(frames, height, width)


model_options = option_group(
    click.option("--model", "model", default="tiny", show_default=True,
                 help=f"Preset ({', '.join(PRESETS)}), a local diffusers checkpoint directory, or a hub id "
                      "(e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)."),
    click.option("--layers", type=int, default=None, help="Keep only the first N transformer blocks."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of preset weights and synthetic LoRAs."),
)

lora_options = option_group(
    click.option("--lora", "lora_file", type=click.Path(dir_okay=False), default=None,
                 help="LoRA file (safetensors): diffusers/peft, ComfyUI/Kijai or musubi/kohya format."),
    click.option("--rank", "rank", default=None,
                 help="Synthetic LoRA rank (no --lora), or SVD re-rank target (--lora of higher rank). "
                      "A list (4,8,16) exports one directory per rank."),
    click.option("--targets", default="all", show_default=True,
                 help=f"Target group ({', '.join(TARGET_GROUPS)}) or comma list of module patterns."),
    click.option("--lora-mode", type=click.Choice(LORA_MODES), default="merged", show_default=True,
                 help="merged: folded into W; separate: its own branch in the graph; full: dense delta reference."),
    click.option("--lora-scale", type=float, default=1.0, show_default=True),
    click.option("--allow-pickle", is_flag=True, help="Allow .pt/.ckpt/.bin LoRA files (loaded weights_only)."),
)

dtype_option = click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                            help="Export precision (bf16 is what Wan is trained in).  [default: fp32; bf16 with "
                                 "--engine]")


def model_spec_from_kwargs(kw):
    from wanrt.export.model import ModelSpec

    return ModelSpec(source=kw["model"], layers=kw["layers"], dtype=kw.get("dtype") or "fp32", seed=kw["seed"])


def lora_spec_from_kwargs(kw, rank: int | None = None):
    from wanrt.export.api import LoraSpec

    return LoraSpec(file=kw["lora_file"], rank=rank, targets=kw["targets"], mode=kw["lora_mode"],
                    scale=kw["lora_scale"], seed=kw["seed"], allow_pickle=kw["allow_pickle"])
