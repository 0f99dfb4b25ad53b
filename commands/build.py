"""`wanrt build` and `wanrt refit`, plus `engine_options` (the option group `wanrt export --engine` reuses).

TensorRT is imported only when a command runs, so `wanrt --help` and `wanrt export` work without it; a missing
TensorRT is one MissingDependencyError naming what to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from wanrt.choices import Flavour, Precision
from wanrt.console import out_console
from wanrt.errors import BadInputError
from wanrt.commands.flags import deprecated_option
from wanrt.commands.options import FINITE_FLOAT, SEED, FiniteFloat, SectionedCommand, option_group

PRECISION_CHOICES = Precision.values()  # int8: openvino flavour


_engine_core = option_group(
    click.option("--flavour", "flavour", type=click.Choice(Flavour.values()), default="auto", show_default=True,
                 help="Engine flavour: datacenter `tensorrt`, TensorRT for RTX (`rtx`), or whichever fits."),
    deprecated_option("--trt", "--flavour", "flavour", type=click.Choice(Flavour.values())),
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
    click.option("--refit", "refit", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
                 help="Make the LoRA weights refittable (auto: when the ONNX has a LoRA and a GPU builds)."),
    click.option("--compute-capability", "compute_capability", default=None,
                 help="TensorRT-RTX targets, comma list (8.9,12.0). Default: this GPU, or RTX's portable set."),
    section="Engine",
)

_fp8_options = option_group(
    click.option("--calib", type=click.IntRange(1), default=8, show_default=True,
                 help="FP8: number of calibration samples."),
    click.option("--calib-data", type=click.Path(exists=True), default=None,
                 help="FP8: .npz file or directory of .npz input dicts (default: seeded random inputs)."),
    click.option("--calib-shape", default=None, help="FP8: FRAMESxHxW of random calibration inputs."),
    click.option("--keep-blocks", default="1", show_default=True,
                 help="FP8: blocks kept in high precision: N = first and last N, or a list 0,1,39."),
    click.option("--fp8-backend", type=click.Choice(["auto", "modelopt", "wanrt"]), default="auto",
                 show_default=True, help="FP8 Q/DQ by NVIDIA ModelOpt or wanrt's own pass."),
    click.option("--fp8-tolerance", type=FiniteFloat(0, min_open=True), default=0.1, show_default=True,
                 help="FP8: largest relative error per output accepted in the ONNX Runtime check."),
    click.option("--no-fp8-check", is_flag=True, help="FP8: skip the ONNX Runtime numerics check."),
    section="FP8 (--precision fp8)",
)

_openvino_options = option_group(
    click.option("--ov-device", "ov_device", default="CPU", show_default=True,
                 help="openvino flavour: the OpenVINO device (CPU, GPU, GPU.1)."),
    click.option("--keep-fp32", "keep_fp32", type=click.Choice(["wan", "wan+residual", "wan+norms", "none"]),
                 default="wan", show_default=True,
                 help="openvino bf16/int8: what stays fp32 (wan: the timestep embedding, as Wan keeps it)."),
    section="OpenVINO (--flavour openvino)",
)

_cache_options = option_group(
    click.option("--no-cache", is_flag=True, help="Do not reuse or store engines in the engine cache."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Cache root; engines go to CACHE_DIR/engines (default: $WANRT_CACHE_DIR or ~/.cache/wanrt)."),
    deprecated_option("--artifacts", "--cache-dir", "cache_dir", type=click.Path(file_okay=False)),
    section="Engine cache",
)

# the option group `wanrt export --engine` reuses, in sections for --help
engine_options = option_group(_engine_core, _fp8_options, _openvino_options, _cache_options)


def engine_spec_from_kwargs(kw: dict[str, Any]):
    """click kwargs of engine_options -> EngineSpec."""
    from wanrt.engines.build import EngineSpec
    from wanrt.engines.cache import engine_cache_from_root
    from wanrt.engines.fp8 import Fp8Spec

    ccs = tuple(c.strip() for c in (kw.get("compute_capability") or "").split(",") if c.strip())
    for cc in ccs:
        parts = cc.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise BadInputError(f"--compute-capability {cc!r}: expected MAJOR.MINOR like 8.9")
    fp8 = Fp8Spec(calib=kw["calib"], keep_blocks=kw["keep_blocks"], backend=kw["fp8_backend"],
                  tolerance=kw["fp8_tolerance"], calib_data=kw["calib_data"], calib_shape=kw["calib_shape"],
                  check=not kw["no_fp8_check"])
    return EngineSpec(flavour=kw["flavour"], precision=kw["precision"], profiles=tuple(kw["profiles"]),
                      frames=kw["frames"], batch=kw["batch"], opt_level=kw["opt_level"],
                      workspace_gib=kw["workspace_gib"], timing_cache=kw["timing_cache"],
                      weight_streaming=kw["weight_streaming"], refit=kw["refit"], compute_capabilities=ccs, fp8=fp8,
                      cache=not kw["no_cache"],
                      cache_dir=engine_cache_from_root(kw.get("cache_dir")))


def engine_table(rows: list[tuple[str, dict[str, Any]]], title: str = "wanrt build") -> Table:
    """One row per engine, sized for 80 columns (targets and profiles are in each manifest.json)."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("engine", "TensorRT", "precision", "MiB", "LoRA", "refit", "s"):
        table.add_column(col, justify="right" if col in ("MiB", "s") else "left")
    for out, m in rows:
        p = m["payload"]
        fp8 = p.get("fp8") or {}
        err = fp8.get("check", {}).get("relative_error") if fp8 else None
        precision = p["precision"] + (f" (rel err {max(err.values()):.2g})" if err else "")
        table.add_row(out, p["trt"]["label"], precision, f"{p['plan_bytes'] / 2**20:.1f}", p["lora"]["mode"] or "-",
                      p["lora"]["refit"] or "no", f"{p['timings_s']['total']:.0f}")
    return table


def _predict_build(resolved, spec) -> str:
    """What `wanrt build` without --dry-run will do on this machine: the dry run configures for the build GPU, so it
    must also say when the real build is refused here, and which refit mode `--refit auto` will really pick."""
    from wanrt.engines.build import cpu_build_blocker, resolve_refit
    from wanrt.errors import WanrtError

    blocker = cpu_build_blocker(resolved)
    if blocker is not None:
        return f"refused: {blocker}"
    try:
        kind = resolve_refit(spec, resolved.refit_names, resolved.precision, resolved.flavour, resolved.gpu,
                             dry_run=False)
    except WanrtError as e:
        return f"refused: {e}"
    where = resolved.gpu["name"] if resolved.gpu else "the CPU (no GPU: ahead of time)"
    if kind:
        return f"builds on {where}; refittable ({kind}, {len(resolved.refit_names['weights'])} LoRA weights)"
    why = " (--refit auto: no GPU to compile a refittable engine)" if resolved.refit_names["weights"] else ""
    return f"builds on {where}; not refittable{why}"


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
    from dataclasses import replace

    from wanrt.engines.build import build_engine_from_onnx_dir, configure_from_onnx_dir

    if kw.get("flavour") == "openvino":  # CPU / Intel GPU engines (issue 12)
        from wanrt.commands.build_openvino import build_openvino

        return build_openvino(onnx_dir, output, force, dry_run, kw)

    spec = replace(engine_spec_from_kwargs(kw), progress=progress)
    out = Path(output) if output else Path(onnx_dir) / "engine"
    if dry_run:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="wanrt-dry-") as work:
            resolved, configured = configure_from_onnx_dir(onnx_dir, spec, work)
            # one setting per row: fits 80 columns whatever the profile descriptions' length
            table = Table(title="wanrt build --dry-run", show_header=False, box=None, padding=(0, 2, 0, 0))
            table.add_column("setting", style="bold")
            table.add_column("value")
            flags = ", ".join(k for k, v in configured.flags().items() if v) or "-"
            table.add_row("TensorRT", resolved.flavour.label)
            table.add_row("precision", resolved.precision)
            table.add_row("targets", ",".join(resolved.targets) or "(the build GPU)")
            table.add_row("layers", str(configured.network.num_layers))
            table.add_row("profiles", "\n".join(p.describe() for p in resolved.profiles))
            table.add_row("builder flags (GPU)", flags)
            table.add_row("real build here", _predict_build(resolved, spec))
            out_console.print(table)
        return
    manifest = build_engine_from_onnx_dir(onnx_dir, spec, out, force=force)
    out_console.print(engine_table([(str(out), manifest)]))


@click.command()
@click.argument("engine_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--lora", "lora_file", type=click.Path(), default=None,  # a file or a peft adapter dir
              help="New LoRA file (diffusers/peft, ComfyUI/Kijai or musubi/kohya safetensors).")
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
def refit(engine_dir, lora_file, rank, lora_scale, seed, allow_pickle, output, force, dry_run):
    """Swap the LoRA of a refittable engine without rebuilding it.

    \b
    separate-mode engines: only the LoRA A/B weights are refit; same targets,
      rank <= the engine's (zero-padded).
    merged-mode engines: W = original base + new delta (never cumulative:
      A -> B -> A returns exactly to A).
    """
    from wanrt.engines.refit import prepare_refit, refit_engine_dir

    if lora_file is None and rank is None:
        raise BadInputError("refit needs --lora FILE or --rank N")
    from wanrt.engines.openvino import is_openvino_engine

    if is_openvino_engine(engine_dir):  # an OpenVINO swap: new LoRA weights, no recompile (issue 12)
        from wanrt.commands.build_openvino import refit_openvino

        return refit_openvino(engine_dir, lora_file, rank, lora_scale, seed, allow_pickle, output, force, dry_run)
    if dry_run:
        manifest, weights, lora = prepare_refit(engine_dir, lora_file, rank, lora_scale, seed, allow_pickle)
        table = Table(title="wanrt refit --dry-run")
        for col in ("engine", "mode", "weights", "LoRA rank", "engine rank"):
            table.add_column(col)
        section = manifest["payload"]["lora"]
        ranks = {w["shape"][1] for n, w in section["refittable_weights"].items() if n.endswith(".A")}
        table.add_row(str(engine_dir), section["mode"], str(len(weights)), str(lora.rank),
                      ",".join(map(str, sorted(ranks))) or "-")
        out_console.print(table)
        return
    manifest = refit_engine_dir(engine_dir, lora_file, rank, lora_scale, seed, allow_pickle, out_dir=output,
                                force=force)
    out_console.print(engine_table([(str(output or engine_dir), manifest)], title="wanrt refit"))
