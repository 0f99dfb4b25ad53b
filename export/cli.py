"""`wanrt export`, `wanrt demo`, `wanrt presets`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from rich.table import Table

from wanrt.console import out_console
from wanrt.engines.cli import engine_options
from wanrt.errors import BadInputError
from wanrt.options import (dtype_option, lora_options, lora_spec_from_kwargs, model_options, model_spec_from_kwargs,
                           parse_int_list, parse_shape)


def summary_table(rows: list[tuple[str, dict]], title: str = "wanrt export") -> Table:
    table = Table(title=title)
    for col in ("output", "mode", "rank", "targets", "LoRA params", "LoRA FLOPs/token", "dtype",
                "ORT vs torch max rel", "TensorRT parse", "seconds"):
        table.add_column(col, justify="right" if col in ("rank", "LoRA params", "LoRA FLOPs/token", "seconds") else "left")
    for out, m in rows:
        p, specs = m["payload"], m["specs"]
        lora = p["lora"]
        v = p["validation"]
        check = "skipped" if v.get("skipped") else f"{v['max_rel']:.2e} {'ok' if v['passed'] else 'FAIL'}"
        t = p["trt_parse"]
        parse = ("not installed" if t.get("parsed") is None else
                 f"{t['flavour']} {t['version']}: {t['layers']} layers, {t['num_errors']} errors")
        flops = lora.get("flops_per_token", {}).get("video_token", 0) if lora.get("enabled") else 0
        table.add_row(out, lora.get("mode") or "-", str(lora.get("rank", "-")), lora.get("targets") or "-",
                      f"{lora.get('parameters', 0):,}", f"{flops:,}", specs["export"]["dtype"], check, parse,
                      f"{p['timings_s']['total']:.1f}")
    return table


def _export_options(f):
    f = click.option("--no-validate", is_flag=True, help="Skip ONNX Runtime parity checks (not recommended).")(f)
    f = click.option("--force", is_flag=True, help="Replace an existing output directory.")(f)
    f = click.option("--max-batch", type=click.IntRange(1, 2), default=2, show_default=True,
                     help="Largest batch the graph accepts (2 = CFG in one call).")(f)
    f = click.option("--max-shape", default=None, help="Largest video FRAMESxHxW the graph accepts (pixels).")(f)
    f = click.option("--min-shape", default=None, help="Smallest video FRAMESxHxW the graph accepts (pixels).")(f)
    f = click.option("--opset", type=int, default=None, help="ONNX opset (default 23: fused Attention/RMSNorm).")(f)
    return f


def _export_spec(kw):
    from wanrt.export.onnx_export import DEFAULT_OPSET, ExportSpec

    if kw.get("engine"):
        kw["dtype"] = kw["dtype"] or "bf16"  # the engine precision Wan is trained in
        if kw["opset"] is None and not _has_cuda():
            # TensorRT-RTX's CPU-only builder crashes on opset-23 Attention (docs/engines.md)
            kw["opset"] = 18
    kw["dtype"] = kw["dtype"] or "fp32"

    lo, hi = parse_shape(kw["min_shape"], "--min-shape"), parse_shape(kw["max_shape"], "--max-shape")
    if lo and hi and any(a > b for a, b in zip(vars(lo).values(), vars(hi).values())):
        raise BadInputError(f"--min-shape {kw['min_shape']} exceeds --max-shape {kw['max_shape']}")
    return ExportSpec(dtype=kw["dtype"], opset=kw["opset"] or DEFAULT_OPSET, min_shape=lo, max_shape=hi,
                      max_batch=kw["max_batch"], validate=not kw["no_validate"])


def _check_lora_file(kw) -> None:
    """Cheap checks before any model is loaded, so bad input fails in milliseconds and writes nothing."""
    if kw["lora_file"] is not None:
        from wanrt.export.lora_formats import check_lora_source

        check_lora_source(kw["lora_file"], kw["allow_pickle"])


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@click.command()
@model_options
@lora_options
@dtype_option
@_export_options
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--engine", is_flag=True, help="Also build a TensorRT engine from each export (OUTPUT/engine); "
              "the engine options below apply.")
@engine_options
def export(**kw):
    """Export the Wan DiT (+ LoRA) to validated ONNX: OUTPUT/model.onnx and manifest.json.

    \b
    Examples:
      wanrt export --rank 16 -o out/r16                       # tiny preset, synthetic rank-16 LoRA, merged
      wanrt export --rank 4,8,16 --lora-mode separate -o out  # out/r4, out/r8, out/r16
      wanrt export --model wan2.1-i2v-14b --layers 2 --dtype bf16 --rank 16 -o out/slice
      wanrt export --rank 16 --lora-mode separate --engine -o out/trt  # + OUTPUT/engine (TensorRT)
    """
    from wanrt.artifacts import check_output_dir
    from wanrt.export.api import export_model, export_ranks

    ranks = parse_int_list(kw["rank"])
    export_spec = _export_spec(kw)
    model_spec = model_spec_from_kwargs(kw)
    _check_lora_file(kw)
    out = Path(kw["output"])
    check_output_dir(out, kw["force"])
    if ranks is not None and len(ranks) > 1:
        manifests = export_ranks(model_spec, lora_spec_from_kwargs(kw), export_spec, ranks, out, force=kw["force"])
        rows = [(str(out / f"r{r}"), m) for r, m in zip(ranks, manifests)]
    else:
        manifest = export_model(model_spec, lora_spec_from_kwargs(kw, ranks[0] if ranks else None), export_spec, out,
                                force=kw["force"])
        rows = [(str(out), manifest)]
    out_console.print(summary_table(rows))
    if kw["engine"]:
        from wanrt.engines.build import build_engine_from_onnx_dir
        from wanrt.engines.cli import engine_spec_from_kwargs, engine_table

        spec = engine_spec_from_kwargs(kw)
        built = [(str(Path(d) / "engine"), build_engine_from_onnx_dir(d, spec, Path(d) / "engine", force=kw["force"]))
                 for d, _ in rows]
        out_console.print(engine_table(built))


@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Where to write the two exports (default: a new temporary directory).")
@click.option("--rank", type=int, default=16, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def demo(output, rank, force):
    """Export the tiny preset with a rank-16 LoRA merged and separate, validate both, print a summary."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    out = Path(output) if output else Path(tempfile.mkdtemp(prefix="wanrt-demo-"))
    rows = []
    for mode in ("merged", "separate"):
        target = out / mode
        rows.append((str(target), export_model(ModelSpec("tiny"), LoraSpec(rank=rank, mode=mode), ExportSpec(),
                                               target, force=force)))
    out_console.print(summary_table(rows, title=f"wanrt demo: tiny preset, rank-{rank} LoRA"))
    out_console.print(f"artifacts in {out}")


@click.command()
def presets():
    """List the built-in model presets."""
    from wanrt.export.presets import PRESETS

    table = Table(title="wanrt presets (seeded random weights)")
    for col in ("name", "blocks", "heads x dim", "FFN", "text", "image", "default video", "tokens", "description"):
        table.add_column(col)
    for p in PRESETS.values():
        c = p.config
        table.add_row(p.name, str(c["num_layers"]), f"{c['num_attention_heads']}x{c['attention_head_dim']}",
                      str(c["ffn_dim"]), f"512x{c['text_dim']}", f"257x{c['image_dim']}", str(p.default_shape),
                      f"{p.default_shape.tokens():,}", p.description)
    out_console.print(table)
