"""`wanrt build` and `wanrt refit`, plus `engine_options` (the option group `wanrt export --engine` reuses).

TensorRT is imported only when a command runs, so `wanrt --help` and `wanrt export` work without it; a missing
TensorRT is one MissingDependencyError naming what to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from wanrt.choices import Fp8Backend, Refit
from wanrt.console import compact_table, out_console
from wanrt.engines import registry
from wanrt.errors import BadInputError
from wanrt.manifests import EngineManifest
from wanrt.commands.flags import deprecated_option
from wanrt.commands.options import (FINITE_FLOAT, SEED, FiniteFloat, LoraEntryType, SectionedCommand,
                                    lora_entries, option_group)

PRECISION_CHOICES = registry.precision_choices()  # each flavour refuses what it does not build (its refusal)


_engine_core = option_group(
    click.option("--flavour", "flavour", type=click.Choice(registry.choices()), default=registry.AUTO,
                 show_default=True, help="Engine flavour: " + ", ".join(f"{f.name} ({f.label})" for f in
                                                                          registry.flavours())
                 + ", or auto (the TensorRT that fits)."),
    deprecated_option("--trt", "--flavour", "flavour", type=click.Choice(registry.choices())),
    click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
                 help="Engine precision. fp16/bf16/fp32 must match the ONNX dtype (strongly typed); fp8 quantizes "
                      "the ONNX (Q/DQ) first. Default: the ONNX's dtype (bf16 for Wan).  [default: ONNX dtype]"),
    deprecated_option("--trt-precision", "--precision", "precision", type=click.Choice(PRECISION_CHOICES)),
    click.option("--profile", "profiles", multiple=True,
                 help="Optimization profile: 480p, 480p-portrait, 720p, 720p-portrait, export (the ONNX's whole "
                      "range), or MIN:OPT:MAX with each BxFRAMESxHxW. Repeat for several.  [default: export]"),
    click.option("--frames", default=None, help="Pixel frames for presets: 17..81 (opt = max), 17..49..81, or 81."),
    click.option("--batch", default=None, help="Batch N or range LO..HI, e.g. 1..2 (CFG): the engine profile's "
                 "batch (with --profile presets); on export also the largest batch the graph takes.  [default: 1..2]"),
    # beside --batch, so every subcommand that takes --batch LO..HI (export, build) takes the old spelling
    deprecated_option("--max-batch", "--batch 1..N", "batch", type=click.IntRange(1, 2), convert=lambda n: f"1..{n}"),
    click.option("--opt-level", type=click.IntRange(0, 5), default=None,
                 help="Builder optimization level (TensorRT default 3)."),
    click.option("--workspace", "workspace_gib", type=FiniteFloat(0, min_open=True), default=None,
                 help="Workspace limit in GiB."),
    click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
                 help="Timing cache file, read and updated across builds (datacenter TensorRT; TensorRT-RTX "
                      "compiles just in time and keeps a runtime cache instead)."),
    click.option("--weight-streaming", is_flag=True, help="Build with weight streaming (weights may stay in host "
                 "memory; set a GPU budget at load time)."),
    click.option("--refit", "refit", type=click.Choice(Refit.values()), default="auto", show_default=True,
                 help="Make the LoRA weights refittable (auto: when the ONNX has a LoRA and a GPU builds)."),
    click.option("--compute-capability", "compute_capability", default=None,
                 help="TensorRT-RTX targets, comma list (8.9,12.0). Default: this GPU, or RTX's portable set."),
    section="Engine",
)

_fp8_options = option_group(
    click.option("--calib", type=click.IntRange(1), default=8, show_default=True,
                 help="FP8 and OpenVINO w8a8: number of calibration samples."),
    click.option("--calib-data", type=click.Path(exists=True), default=None,
                 help="FP8: .npz file or directory of .npz input dicts (default: seeded random inputs)."),
    click.option("--calib-shape", default=None, help="FP8: FRAMESxHxW of random calibration inputs."),
    click.option("--keep-blocks", default="1", show_default=True,
                 help="FP8: blocks kept in high precision: N = first and last N, or a list 0,1,39."),
    click.option("--fp8-backend", type=click.Choice(Fp8Backend.values()), default="auto",
                 show_default=True, help="FP8 Q/DQ by NVIDIA ModelOpt or wanrt's own pass."),
    click.option("--fp8-tolerance", type=FiniteFloat(0, min_open=True), default=0.1, show_default=True,
                 help="FP8: largest relative error per output accepted in the ONNX Runtime check."),
    click.option("--no-fp8-check", is_flag=True, help="FP8: skip the ONNX Runtime numerics check."),
    section="FP8 (--precision fp8)",
)

# each flavour's own options, under its name (engines/<flavour>/plugin.py declares them)
_flavour_options = option_group(*(option_group(*f.options, section=f"{f.label} (--flavour {f.name})")
                                   for f in registry.flavours() if f.options))

_cache_options = option_group(
    click.option("--no-cache", is_flag=True, help="Do not reuse or store engines in the engine cache."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Cache root; engines go to CACHE_DIR/engines (default: $WANRT_CACHE_DIR or ~/.cache/wanrt)."),
    deprecated_option("--artifacts", "--cache-dir", "cache_dir", type=click.Path(file_okay=False)),
    section="Engine cache",
)

# the option group `wanrt export --engine` reuses, in sections for --help
engine_options = option_group(_engine_core, _fp8_options, _flavour_options, _cache_options)


def engine_table(flavour, rows: list[tuple[str, EngineManifest]], title: str = "wanrt build") -> Table:
    """One row per engine, sized for 80 columns (the flavour's columns; details are in each manifest.json)."""
    table = compact_table(title, flavour.summary_columns, right=("MiB", "s", "int8"))
    for out, m in rows:
        table.add_row(*flavour.summary_row(out, m))
    table.caption = flavour.summary_caption([m for _, m in rows])
    return table


def settings_table(rows: list[tuple[str, str]]) -> Table:
    """`wanrt build --dry-run`: one setting per row, so it fits 80 columns whatever a profile description's length."""
    table = Table(title="wanrt build --dry-run", show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column("setting", style="bold")
    table.add_column("value")
    for row in rows:
        table.add_row(*row)
    return table


def rows_table(title: str, rows: list[dict[str, str]]) -> Table:
    """A column per key of the first row, a row per dict."""
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*row.values())
    return table


@click.command(cls=SectionedCommand)
@click.argument("onnx_dir", type=click.Path(exists=True, file_okay=False))
@option_group(
    click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
                 help="Engine directory (engine.plan + manifest.json).  [default: ONNX_DIR/engine]"),
    click.option("--force", is_flag=True, help="Replace an existing engine directory that holds another engine."),
    click.option("--dry-run", is_flag=True, help="Parse and configure (profiles, flags, FP8 Q/DQ) without building."),
    click.option("--progress/--no-progress", default=None,
                 help="TensorRT build progress bars (default: on a terminal)."),
    section="Output")
@engine_options
def build(onnx_dir, output, force, dry_run, progress, **kw):
    """Build a TensorRT or OpenVINO engine from a `wanrt export` directory (asked twice: reused, not rebuilt).

    \b
    Examples:
      wanrt build out/r16 -o out/r16.engine   # the ONNX's precision and shapes
      wanrt build out/wan --profile 480p --frames 17..81   # batch 1..2, 480x832
      wanrt build out/wan --precision fp8 --calib 16 --keep-blocks 2
      wanrt build out/sep --flavour rtx --compute-capability 8.9,12.0
      wanrt build out/r16 --flavour openvino --precision bf16   # CPU engine
    """
    from wanrt.artifacts import artifact_kind
    from wanrt.manifests import ExpertsManifest

    flavour = registry.get(kw["flavour"])
    spec = flavour.spec({**kw, "progress": progress})
    out = Path(output) if output else Path(onnx_dir) / "engine"
    if artifact_kind(onnx_dir) == ExpertsManifest.KIND:  # Wan2.2: one engine per expert, OUT/high and OUT/low
        _build_experts(onnx_dir, flavour, spec, out, force, dry_run)
        return
    if dry_run:
        out_console.print(settings_table([*flavour.dry_run(onnx_dir, spec), ("output", str(out))]))
        return
    manifest = flavour.build(onnx_dir, spec, out, force=force)
    out_console.print(engine_table(flavour, [(str(out), manifest)]))


def _build_experts(onnx_dir, flavour, spec, out: Path, force: bool, dry_run: bool) -> None:
    from wanrt.engines.experts import build_experts, read_experts

    if dry_run:
        experts = read_experts(onnx_dir, "onnx")
        out_console.print(settings_table(
            [(f"{name}: {setting}", value) for name in experts.experts
             for setting, value in flavour.dry_run(experts.member_dir(onnx_dir, name), spec)]
            + [("output", f"{out}/{{{','.join(experts.experts)}}}")]))
        return
    manifest, built = build_experts(onnx_dir, flavour, spec, out, force=force)
    table = engine_table(flavour, [(str(out / name), m) for name, m in built.items()])
    table.caption = f"{table.caption or ''}; experts switch at boundary {manifest['payload']['boundary_ratio']}"
    out_console.print(table)


@click.command()
@click.argument("engine_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--lora", "loras", type=LoraEntryType(), multiple=True,  # a file or a peft adapter dir
              help="New LoRA file (diffusers/peft, ComfyUI/Kijai or musubi/kohya safetensors) at strength :S; "
                   "repeat for a stack (synthetic:RANK[:S] adds a synthetic one). Wan2.2: high:FILE or low:FILE "
                   "for one expert.")
@click.option("--rank", type=click.IntRange(1), default=None,
              help="Synthetic LoRA of this rank (no --lora), or SVD re-rank of --lora.")
@click.option("--lora-scale", type=FINITE_FLOAT, default=None, help="LoRA strength (default: the export's).")
@click.option("--seed", type=SEED, default=None, help="Seed of a synthetic LoRA (default: the export's).")
@deprecated_option("--lora-seed", "--seed", "seed", type=SEED)
@click.option("--allow-pickle", is_flag=True, help="Allow .pt/.ckpt/.bin LoRA files.")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Write the refit engine here instead of replacing ENGINE_DIR.")
@click.option("--force", is_flag=True, help="Replace an existing --output directory.")
@click.option("--dry-run", is_flag=True, help="Check the LoRA against the engine and compute the new weights "
              "(no GPU needed); refit nothing.")
def refit(engine_dir, loras, rank, lora_scale, seed, allow_pickle, output, force, dry_run):
    """Swap the LoRA of a refittable engine without rebuilding it.

    \b
    separate-mode engines: only the LoRA A/B weights are refit; same targets,
      rank <= the engine's (zero-padded).
    merged-mode engines: W = original base + new delta (never cumulative:
      A -> B -> A returns exactly to A).
    Wan2.2 engines (wanrt build of a two-expert export): --lora low:FILE:S
      refits the low-noise expert only; a plain --lora refits both.
    """
    from wanrt.artifacts import artifact_kind
    from wanrt.manifests import ExpertsManifest

    if not loras and rank is None:
        raise BadInputError("refit needs --lora FILE or --rank N")
    if artifact_kind(engine_dir) == ExpertsManifest.KIND:  # Wan2.2: the experts named (a plain --lora: both)
        _refit_experts(engine_dir, loras, rank, lora_scale, seed, allow_pickle, output, force, dry_run)
        return
    if any(e.expert for e in loras):
        raise BadInputError(f"--lora {next(e for e in loras if e.expert)}: the high:/low: prefixes name Wan2.2's "
                            f"experts; {engine_dir} is one engine")
    flavour = registry.of_engine_dir(engine_dir)
    lora = _refit_options(loras, rank, lora_scale, seed, allow_pickle)
    if dry_run:
        out_console.print(rows_table("wanrt refit --dry-run", [flavour.refit_dry_run(engine_dir, **lora)]))
        return
    manifest = flavour.refit(engine_dir, **lora, out_dir=output, force=force)
    out_console.print(engine_table(flavour, [(str(output or engine_dir), manifest)], title="wanrt refit"))


def _refit_options(loras, rank, lora_scale, seed, allow_pickle) -> dict[str, Any]:
    """The flavours' refit keywords for one engine's new stack (the first entry, then the rest)."""
    first, rest = (loras[0], loras[1:]) if loras else (None, ())
    if rank is not None and first is not None and (rest or first.rank is not None):
        raise BadInputError("--rank re-ranks a single --lora file; a stack keeps each LoRA's rank")
    # a strength left out is --lora-scale's, and without one the first LoRA keeps the export's scale (None)
    stack = lora_entries({"lora": rest, "lora_scale": lora_scale})
    scale = lora_scale if first is None or first.strength is None else first.strength
    return {"lora_file": first and first.file, "rank": (first and first.rank) or rank, "scale": scale, "seed": seed,
            "allow_pickle": allow_pickle, "stack": stack}


def _refit_experts(engine_dir, loras, rank, lora_scale, seed, allow_pickle, output, force, dry_run) -> None:
    """`wanrt refit` of a two-expert engine: each expert named by a prefix gets its entries, a plain --lora (or
    --rank) goes to every expert; an expert no entry names is left as it is."""
    from dataclasses import replace

    from wanrt.engines.experts import read_experts, refit_experts

    experts = read_experts(engine_dir, "engine")
    options = {}
    for name in experts.experts:
        mine = tuple(replace(e, expert=None) for e in loras if e.expert in (None, name))
        if mine or not loras:
            options[name] = _refit_options(mine, rank, lora_scale, seed, allow_pickle)
    if dry_run:
        rows = [{"expert": name, **registry.of_engine_dir(experts.member_dir(engine_dir, name)).refit_dry_run(
            experts.member_dir(engine_dir, name), **opts)} for name, opts in options.items()]
        out_console.print(rows_table("wanrt refit --dry-run", rows))
        return
    target = Path(output or engine_dir)
    _, refit = refit_experts(engine_dir, options, out_dir=output, force=force)
    flavour = registry.get(experts.flavour or registry.AUTO)
    out_console.print(engine_table(flavour, [(str(target / name), m) for name, m in refit.items()],
                                   title=f"wanrt refit ({', '.join(refit)})"))
