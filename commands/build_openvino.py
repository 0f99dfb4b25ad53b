"""The `openvino` flavour of `wanrt build` and `wanrt refit` (commands/build.py dispatches here).

OpenVINO is imported only when one of these runs; without it, `--flavour openvino` is one MissingDependencyError
line naming the extra to install, and the TensorRT flavours keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from wanrt.console import out_console
from wanrt.errors import BadInputError

# engine options that only TensorRT understands: refused with the openvino flavour instead of silently ignored
TRT_ONLY = {"profiles": (), "frames": None, "opt_level": None, "workspace_gib": None, "timing_cache": None,
            "weight_streaming": False, "compute_capability": None}


def ov_spec_from_kwargs(kw: dict[str, Any]):
    from wanrt.engines.cache import engine_cache_from_root
    from wanrt.engines.openvino import PRECISIONS, OvEngineSpec

    used = [k for k, default in TRT_ONLY.items() if kw.get(k) not in (default, None, (), False)]
    if used:
        flag = "--" + used[0].replace("_gib", "").replace("_", "-").replace("profiles", "profile")
        raise BadInputError(f"{flag} is a TensorRT option; the openvino flavour compiles for any shape in the "
                            f"export's range")
    precision = kw.get("precision") or "fp32"
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision {precision}: the openvino flavour builds {', '.join(PRECISIONS)} "
                            f"(fp8 is TensorRT's; int8 is its CPU counterpart here)")
    return OvEngineSpec(precision=precision, device=kw.get("ov_device") or "CPU",
                        keep_fp32=kw.get("keep_fp32") or "wan", cache=not kw.get("no_cache"),
                        cache_dir=engine_cache_from_root(kw.get("cache_dir")))


def ov_engine_table(rows: list[tuple[str, dict[str, Any]]], title: str = "wanrt build --flavour openvino") -> Table:
    """One row per engine, sized for 80 columns like the TensorRT table (the OpenVINO version and the int8 node
    list are in the caption and in each manifest.json)."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("engine", "device", "precision", "fp32 kept", "int8", "MiB", "LoRA", "s"):
        table.add_column(col, justify="right" if col in ("MiB", "s", "int8") else "left")
    versions = set()
    for out, m in rows:
        p = m["payload"]
        versions.add(p["openvino"]["version"].split("-")[0])
        report = p.get("precision_report") or {}
        int8 = (report.get("int8") or {}).get("count")
        lora = p.get("lora") or {}
        table.add_row(out, p["openvino"]["device"], p["precision"],
                      ",".join(report.get("keep_fp32") or []) or "-", "-" if int8 is None else str(int8),
                      f"{p['plan_bytes'] / 2**20:.1f}",
                      f"{lora.get('mode') or '-'}{' (swap)' if lora.get('refit') else ''}",
                      f"{p['timings_s']['total']:.1f}")
    table.caption = f"OpenVINO {', '.join(sorted(versions))}; int8: quantized MatMuls (list in manifest.json)"
    return table


def build_openvino(onnx_dir: str, output: str | None, force: bool, dry_run: bool, kw: dict[str, Any]) -> None:
    from wanrt.engines.openvino import build_openvino_engine, check_precision_supported, require_openvino

    spec = ov_spec_from_kwargs(kw)
    out = Path(output) if output else Path(onnx_dir) / "engine"
    if dry_run:
        ov = require_openvino()
        caps = check_precision_supported(ov.Core(), spec.device, spec.precision)
        out_console.print(f"OpenVINO {ov.__version__} {spec.device} ({', '.join(caps)}): would compile {onnx_dir} "
                          f"in {spec.precision} (keep fp32: {spec.keep_fp32}) into {out}")
        return
    manifest = build_openvino_engine(onnx_dir, spec, out, force=force)
    out_console.print(ov_engine_table([(str(out), manifest)]))


def refit_openvino(engine_dir: str, lora_file, rank, lora_scale, seed, allow_pickle, output, force,
                   dry_run: bool) -> None:
    from wanrt.engines.openvino import refit_openvino_engine_dir

    if dry_run:
        raise BadInputError("--dry-run is for TensorRT refits; an OpenVINO swap writes only the LoRA weights "
                            "(use -o DIR to keep the original)")
    manifest = refit_openvino_engine_dir(engine_dir, lora_file, rank, lora_scale, seed, allow_pickle,
                                         out_dir=output, force=force)
    out_console.print(ov_engine_table([(str(output or engine_dir), manifest)], title="wanrt refit (OpenVINO swap)"))
