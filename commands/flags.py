"""The flag vocabulary: one name, one meaning and one default per concept in every subcommand that takes it.

A sweep takes the plural of the same flag with the same syntax for one value (`--rank 16` / `--ranks 4,8,16`).
Old spellings keep working for one release through `deprecated_option`, with one line on stderr; README
("Flags") lists the same table, and tests/test_cli_vocabulary.py checks every subcommand against it.
"""

from __future__ import annotations

from typing import Any, Callable

import click

# flag -> (meaning, default in every subcommand that takes it; None = no default / required or derived)
VOCABULARY: dict[str, tuple[str, Any]] = {
    "--model": ("preset name, local diffusers checkpoint or hub id", "tiny"),
    "--layers": ("keep only the first N transformer blocks", None),
    "--seed": ("seed of the preset's random weights and of synthetic LoRAs", 0),
    "--input-seed": ("seed of the bench's latents/text/image inputs", 0),
    "--noise-seed": ("seed of the initial noise of a generated video", 0),
    "--dtype": ("dtype of the model weights and the exported graph (fp32, fp16, bf16)", None),
    "--precision": ("engine precision (fp32, fp16, bf16, fp8; int8 on openvino); default: the export's dtype", None),
    "--rank": ("one LoRA rank (synthetic LoRA, or SVD re-rank of --lora)", None),
    "--ranks": ("several ranks: a sweep (bench) or one export per rank; --ranks 16 = --rank 16", None),
    "--lora-mode": ("merged, separate or full", "merged"),
    "--lora-modes": ("several modes (bench sweep), comma list", None),
    "--targets": ("one target set: groups or module patterns joined by ',' or '+' (a union)", "all"),
    "--target-sets": ("several target sets (bench sweep): repeat the flag, each value as --targets", None),
    "--backend": ("one backend: eager, compile, ort, ov, trt", None),
    "--backends": ("several backends (bench), comma list", None),
    "--flavour": ("engine flavour: auto, tensorrt, rtx, openvino", "auto"),
    "--artifact": ("a prebuilt directory: an ONNX export (ort/ov) or an engine (trt)", None),
    "--batch": ("batch: N, or a range LO..HI where a range makes sense (export, build)", None),
    "--shape": ("video FRAMESxHEIGHTxWIDTH in pixels", None),
    "--cache-dir": ("cache root (exports/, engines/, weights/ under it); default $WANRT_CACHE_DIR", None),
    "--device": ("cpu or cuda[:N]", "cpu"),
    "--threads": ("CPU threads for torch and the runtimes", None),
    "--weights": ("the metric weights folder (eval, weights list/fetch)", None),
    "--output": ("output path (-o)", None),
    "--force": ("replace an existing output that wanrt made", False),
}

# old spelling -> new spelling, for the README and the deprecation lines (kept for one release)
DEPRECATED: dict[str, str] = {
    "--trt": "--flavour",
    "--max-batch": "--batch 1..N",
    "--modes": "--lora-modes",
    "--lora-seed": "--seed",
    "--trt-precision": "--precision",
    "--engine DIR": "--artifact DIR",
    "serve --engine DIR": "serve DIR",
    "--artifacts": "--cache-dir",
    "weights fetch --cache-dir DIR": "--weights DIR",
    "--rank 4,8,16 (export)": "--ranks 4,8,16",
    "--targets a,b (bench: two sets)": "--target-sets a --target-sets b",
}


def deprecation_line(old: str, new: str) -> None:
    click.echo(f"warning: {old} is deprecated and goes in the next release; use {new}", err=True)


def deprecated_option(old: str, new: str, dest: str, convert: Callable[[Any], Any] | None = None,
                      **click_kwargs) -> Callable:
    """A hidden option `old` that sets parameter `dest` (the new flag's) with one deprecation line. Given on the
    command line it wins over the new flag's default; `convert` maps an old value to the new syntax."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False or value == ():
            return
        deprecation_line(old, new)
        ctx.params[dest] = convert(value) if convert else value

    return click.option(old, f"_deprecated_{old.lstrip('-').replace('-', '_')}", hidden=True, expose_value=False,
                        callback=callback, **click_kwargs)
