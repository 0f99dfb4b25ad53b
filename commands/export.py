"""`wanrt export`, `wanrt demo`, `wanrt presets`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from rich.table import Table

from wanrt.console import compact_table, err_console, out_console
from wanrt.commands.build import engine_options
from wanrt.engines import registry
from wanrt.errors import BadInputError
from wanrt.artifacts import MANIFEST_NAME
from wanrt.manifests import EngineManifest, ExportManifest
from wanrt.commands.flags import deprecation_line
from wanrt.commands.options import (SectionedCommand, dtype_option, lora_options, lora_spec_from_kwargs,
                                    lora_specs_by_expert, model_options, model_spec_from_kwargs, option_group)
from wanrt.parse import SYNTHETIC_PREFIX, parse_int_list, parse_shape


def summary_table(rows: list[tuple[str, dict]], title: str = "wanrt export") -> Table:
    """One row per export, sized for 80 columns (LoRA parameter count and FLOPs are in each manifest.json)."""
    parsers = set()
    table = compact_table(title, ("output", "mode", "rank", "dtype", "ORT max rel err", "TensorRT parse", "s"),
                          right=("rank", "s"))
    for out, doc in rows:
        m = ExportManifest.from_dict(doc, Path(out) / MANIFEST_NAME)
        lora, v = m.lora, m.validation
        # a failed validation fails the export, so a manifest that exists passed it
        check = "skipped" if v.get("skipped") else f"{v['max_rel']:.1e} ok"
        t = m.trt_parse
        if t.get("parsed") is None:
            parse = "not installed"
        else:
            parsers.add(f"{t['flavour']} {t['version']}")
            parse = f"{t['layers']} layers, " + ("ok" if not t["num_errors"] else f"{t['num_errors']} errors")
        table.add_row(out, lora.get("mode") or "-", str(lora.get("rank", "-")), m.export_specs["export"]["dtype"],
                      check, parse, f"{m.timings_s['total']:.0f}")
    if parsers:
        table.caption = f"TensorRT parse by {', '.join(sorted(parsers))}; LoRA size and FLOPs in manifest.json"
    return table


_export_options = option_group(
    click.option("--opset", type=click.IntRange(7), default=None,
                 help="ONNX opset (default 23: fused Attention/RMSNorm; 18 where TensorRT-RTX is installed and "
                      "there is no GPU, since its CPU-only builder cannot compile 23)."),
    click.option("--min-shape", default=None, help="Smallest video FRAMESxHxW the graph accepts (pixels)."),
    click.option("--max-shape", default=None, help="Largest video FRAMESxHxW the graph accepts (pixels)."),
    click.option("--no-validate", is_flag=True, help="Skip ONNX Runtime parity checks (not recommended)."),
    section="Graph and validation",
)


def _export_spec(kw):
    from wanrt.export.onnx_export import DEFAULT_OPSET, ExportSpec

    if kw.get("engine"):
        kw["dtype"] = kw["dtype"] or "bf16"  # the engine precision Wan is trained in
    if kw["opset"] is None and _cpu_only_rtx():
        # TensorRT-RTX's CPU-only builder crashes on opset-23 Attention (docs/engines.md): export what the local
        # builder takes, so `wanrt export ... && wanrt build ...` works here as the README shows
        kw["opset"] = 18
        # said with the summary, once the export has run: bad input stays one line
        kw["_notes"] = [*kw.get("_notes", []), "opset 18: TensorRT-RTX without a GPU cannot compile opset 23 "
                        "(--opset 23 keeps the fused Attention for ONNX Runtime)"]
    kw["dtype"] = kw["dtype"] or "fp32"
    if kw.get("engine") and kw["dtype"] == "bf16" and kw["lora_mode"] == "separate" and _cpu_only_rtx():
        raise BadInputError("--engine: TensorRT-RTX without a GPU cannot compile a bf16 separate-LoRA graph; "
                            "use --dtype fp16 or --lora-mode merged here, or build on an NVIDIA GPU")

    lo, hi = parse_shape(kw["min_shape"], "--min-shape"), parse_shape(kw["max_shape"], "--max-shape")
    if lo and hi and any(a > b for a, b in zip(vars(lo).values(), vars(hi).values())):
        raise BadInputError(f"--min-shape {kw['min_shape']} exceeds --max-shape {kw['max_shape']}")
    return ExportSpec(dtype=kw["dtype"], opset=kw["opset"] or DEFAULT_OPSET, min_shape=lo, max_shape=hi,
                      max_batch=_max_batch(kw["batch"]), validate=not kw["no_validate"])


def _max_batch(text: str | None) -> int:
    """--batch N or LO..HI: the graph accepts batches up to the top of the range (default 2: CFG in one call)."""
    from wanrt.engines.trt.profiles import parse_range  # the one parser of --batch/--frames ranges

    if text is None:
        return 2
    lo_n, _, hi_n = parse_range(str(text), "--batch")
    if not 1 <= lo_n <= hi_n <= 2:
        raise BadInputError(f"--batch {text}: batches run from 1 to 2 (2 = CFG in one call)")
    return hi_n


def _cpu_only_rtx() -> bool:
    """The local engine builder is TensorRT-RTX compiling on the CPU (installed, no CUDA device)."""
    from importlib.util import find_spec

    return not _has_cuda() and any(find_spec(m) is not None for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))


def default_output(kw) -> Path:
    """wanrt-out/<model>[-l<layers>]-<lora>-<mode>-<dtype>: a name that says what the export is."""
    source = str(kw["model"]).rstrip("/")
    parts = [Path(source).name or source]
    if kw.get("layers"):
        parts.append(f"l{kw['layers']}")
    ranks = kw.get("ranks") or kw.get("rank")
    labels = [e.label.replace(SYNTHETIC_PREFIX, "r") for e in kw.get("merge") or ()] + [
        e.label.replace(SYNTHETIC_PREFIX, "r") for e in kw.get("lora") or ()]
    if labels:
        parts.append("+".join(labels) + (f"-r{ranks}" if ranks else ""))
    elif ranks:
        parts.append("r" + str(ranks).replace(",", "-"))
    if labels or ranks:
        parts.append(kw["lora_mode"])
    parts.append(kw["dtype"] or "fp32")
    return Path("wanrt-out") / "-".join(parts)


def _check_lora_file(kw) -> None:
    """Cheap checks before any model is loaded, so bad input fails in milliseconds and writes nothing."""
    import math

    if not math.isfinite(kw["lora_scale"]):
        raise BadInputError(f"--lora-scale {kw['lora_scale']}: must be a finite number")
    files = [e.file for e in (*kw["lora"], *kw["merge"]) if e.file is not None]
    if files:
        from wanrt.export.lora_formats import check_lora_source

        for file in files:
            check_lora_source(file, kw["allow_pickle"])  # the whole validation pass, before any model


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@click.command(cls=SectionedCommand)
@model_options
@dtype_option
@lora_options
@option_group(click.option("--ranks", default=None, help="Several LoRA ranks: one export per rank, OUTPUT/r4, "
                           "OUTPUT/r8, ... (--ranks 16 is --rank 16)."), section="LoRA")
@option_group(
    click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
                 help="Output directory.  [default: wanrt-out/<model>-<lora>-<mode>-<dtype>, printed]"),
    click.option("--force", is_flag=True, help="Replace an existing output directory."),
    section="Output")
@_export_options
@option_group(click.option("--engine", is_flag=True, help="Also build an engine from each export (OUTPUT/engine) "
                           "with the options below."), section="Engine")
@engine_options
def export(**kw):
    """Export the Wan DiT (+ LoRA) to validated ONNX: OUTPUT/model.onnx and manifest.json.

    \b
    Examples:
      wanrt export --rank 16 -o out/r16   # tiny preset, rank-16 LoRA, merged
      wanrt export --ranks 4,8,16 --lora-mode separate -o out   # out/r4 ...
      wanrt export --model wan2.1-i2v-14b --layers 2 --dtype bf16 --rank 16 \\
          -o out/slice
      wanrt export --rank 16 --engine -o out/trt   # + OUTPUT/engine
      wanrt export --model tiny-wan2.2 --lora high:h.safetensors:3 \\
          --lora low:l.safetensors:1.5 -o out/wan22   # out/wan22/high, low
    """
    from wanrt.artifacts import check_output_dir
    from wanrt.engines.experts import build_experts
    from wanrt.engines.trt.acceptance import tensorrt_acceptance
    from wanrt.export.api import export_experts, export_model, export_ranks
    from wanrt.export.model import model_experts

    if kw["rank"] is not None and "," in str(kw["rank"]):
        deprecation_line("--rank with a list", "--ranks")  # one flag, one value; the sweep is the plural
        kw["ranks"], kw["rank"] = kw["ranks"] or kw["rank"], None
    ranks = parse_int_list(kw["ranks"], "--ranks") or parse_int_list(kw["rank"])
    export_spec = _export_spec(kw)
    if kw["output"] is None:
        kw["output"] = str(default_output(kw))
        kw["_notes"] = [f"output: {kw['output']} (-o to choose)", *kw.get("_notes", [])]
    model_spec = model_spec_from_kwargs(kw)
    _check_lora_file(kw)
    out = Path(kw["output"])
    experts = model_experts(model_spec)
    check_output_dir(out, kw["force"], kind="experts" if experts.names else "onnx")
    if experts.names:  # Wan2.2: one artifact, OUTPUT/high and OUTPUT/low, each expert with its own LoRA stack
        if ranks is not None and len(ranks) > 1:
            raise BadInputError("--ranks: a two-expert model exports one rank (its artifact holds both experts)")
        manifest = export_experts(model_spec, lora_specs_by_expert(kw, experts.names, ranks[0] if ranks else None),
                                  export_spec, out, force=kw["force"], acceptance=tensorrt_acceptance)
        rows = [(str(out / e), ExportManifest.read(out / e).to_dict()) for e in manifest["payload"]["experts"]]
    elif ranks is not None and len(ranks) > 1:
        manifests = export_ranks(model_spec, lora_spec_from_kwargs(kw), export_spec, ranks, out, force=kw["force"],
                                 acceptance=tensorrt_acceptance)
        rows = [(str(out / f"r{r}"), m) for r, m in zip(ranks, manifests)]
    else:
        manifest = export_model(model_spec, lora_spec_from_kwargs(kw, ranks[0] if ranks else None), export_spec, out,
                                force=kw["force"], acceptance=tensorrt_acceptance)
        rows = [(str(out), manifest)]
    built = None
    if kw["engine"]:
        flavour = registry.get(kw["flavour"])
        spec = flavour.spec(kw)
        if experts.names:  # one engine per expert, OUTPUT/engine/high and OUTPUT/engine/low
            built = list(build_experts(out, flavour, spec, out / "engine", force=kw["force"])[1].values())
        else:
            built = [flavour.build(d, spec, Path(d) / "engine", force=kw["force"]) for d, _ in rows]
    for note in kw.get("_notes", []):  # after the work: a bad input (found by the export itself) stays one line
        err_console.print(note, highlight=False, soft_wrap=True)
    # one table per command: with --engine, the engine's precision and size replace the TensorRT parse column
    out_console.print(summary_table(rows) if built is None else export_engine_table(rows, built))


def export_engine_table(rows: list[tuple[str, dict]], engines: list[EngineManifest]) -> Table:
    """`export --engine`: one row per export with the engine built from it (engine at <output>/engine)."""
    table = compact_table("wanrt export --engine", ("output", "mode", "rank", "ORT max rel err", "engine", "MiB",
                                                    "refit", "s"), right=("rank", "MiB", "s"))
    for (out, doc), em in zip(rows, engines):
        m = ExportManifest.from_dict(doc, Path(out) / MANIFEST_NAME)
        lora, v = m.lora, m.validation
        check = "skipped" if v.get("skipped") else f"{v['max_rel']:.1e} ok"
        seconds = m.timings_s["total"] + em.timings_s["total"]
        table.add_row(out, lora.get("mode") or "-", str(lora.get("rank", "-")), check, em.precision,
                      f"{em.plan_bytes / 2**20:.1f}", em.lora.get("refit") or "no", f"{seconds:.0f}")
        by = registry.get(em.flavour).describe(em)  # every engine of one command has the same flavour
    table.caption = f"engines by {by} in <output>/engine; details in manifest.json"
    return table


@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Where to write the two exports (default: a new temporary directory).")
@click.option("--rank", type=click.IntRange(1), default=16, show_default=True, help="LoRA rank.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def demo(output, rank, force):
    """Export the tiny preset with a rank-16 LoRA merged and separate, validate both; then sample the shipped
    trained motion model from held-out first frames; print a summary."""
    from wanrt.engines.trt.acceptance import tensorrt_acceptance
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    strip_name = "motion.png"
    if output and (Path(output) / strip_name).exists() and not force:
        raise BadInputError(f"{Path(output) / strip_name} exists; pass --force to replace it")
    # without -o the exports live in a temporary directory that is removed at the end, even on Ctrl-C
    with tempfile.TemporaryDirectory(prefix="wanrt-demo-") as tmp:
        out = Path(output) if output else Path(tmp)
        rows = []
        say = lambda m: err_console.print(m, highlight=False, soft_wrap=True)  # noqa: E731 - one line per stage
        for i, mode in enumerate(("merged", "separate"), 1):
            target = out / mode
            # a line per stage: the two exports take a minute or more, and a silent minute looks like a hang
            say(f"demo {i}/3: tiny preset, rank-{rank} LoRA {mode} -> {target}")
            rows.append((mode, export_model(ModelSpec("tiny"), LoraSpec(rank=rank, mode=mode), ExportSpec(),
                                            target, force=force, acceptance=tensorrt_acceptance, say=say)))
        out_console.print(summary_table(rows, title=f"wanrt demo: tiny preset, rank-{rank} LoRA"))
        say("demo 3/3: the shipped trained motion model samples held-out clips from their first frames")
        out_console.print(demo_motion(out / strip_name), highlight=False)
    out_console.print(f"exports and {strip_name} in {out}" if output else
                      f"exports and {strip_name} removed (temporary); `wanrt demo -o DIR` keeps them", highlight=False)


def demo_motion(strip: Path, steps: int = 20) -> str:
    """Sample the shipped motion model (runtime/motion.py) from its clips' first frames; write real-over-sample
    strips; one line saying how far the frames move from frame 0, sampled against real."""
    import time

    from wanrt.artifacts import write_bytes_atomic
    from wanrt.runtime.motion import frame_strip_png, load_shipped, movement

    shipped = load_shipped()
    start = time.perf_counter()
    fake = shipped.sample(steps)
    seconds = time.perf_counter() - start
    real = shipped.clips
    write_bytes_atomic(strip, frame_strip_png([c.numpy() for pair in zip(real, fake) for c in pair], scale=4))
    off = lambda a, b: float((a.float() - b.float()).abs().mean())  # noqa: E731 - mean |difference|, 8-bit levels
    return (f"motion: {len(real)} clips of {real.shape[1]} frames at {real.shape[2]}x{real.shape[3]}, {steps} steps in "
            f"{seconds:.1f} s. Frames change from frame 0 by {movement(fake):.1f} levels (real: {movement(real):.1f}); "
            f"samples are {off(fake, real):.1f} levels from the real clips, frame 0 {off(fake[:, 0], real[:, 0]):.1f} "
            f"(frame 0 copied forward: {off(real[:, :1].expand_as(real), real):.1f}); {strip.name}: real above sample")


@click.command()
def presets():
    """List the built-in model presets."""
    from wanrt.export.presets import PRESETS

    # sized for 80 columns: the geometry in the table, each description on its own line below it
    table = compact_table("wanrt presets (seeded random weights)",
                          ("name", "blocks", "heads x dim", "FFN", "text/image", "video", "tokens"),
                          right=("blocks", "heads x dim", "FFN", "text/image", "tokens"), no_wrap=True)
    for p in PRESETS.values():
        c = p.config
        table.add_row(p.name, str(c["num_layers"]), f"{c['num_attention_heads']}x{c['attention_head_dim']}",
                      str(c["ffn_dim"]), f"{c['text_dim']}/{c['image_dim'] or '-'}", str(p.default_shape),
                      f"{p.default_shape.tokens():,}")
    table.caption = ("text and image dims (512 and 257 tokens; - : no image branch); video: the default FRAMESxHxW; "
                     "wan2.2 presets: two experts each")
    out_console.print(table)
    for p in PRESETS.values():
        out_console.print(f"{p.name}: {p.description}", highlight=False)
