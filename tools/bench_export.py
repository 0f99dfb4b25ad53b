"""Export benchmark (issue 2): seconds and peak RSS per phase, against the exported weights' size.

Each configuration runs in its own process so peak RSS is its own. Writes docs/results/export-cpu.json.

    python -m wanrt.tools.bench_export                       # tiny (both modes) + 14B 2-block slice fp32/bf16
    python -m wanrt.tools.bench_export --only tiny
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wanrt.manifests import ExportManifest
from wanrt.memory import Sampler, rss_bytes

CONFIGS = {
    "tiny-merged": dict(model="tiny", layers=None, dtype="fp32", mode="merged"),
    "tiny-separate": dict(model="tiny", layers=None, dtype="fp32", mode="separate"),
    "14b-slice2-fp32": dict(model="wan2.1-i2v-14b", layers=2, dtype="fp32", mode="merged"),
    "14b-slice2-bf16": dict(model="wan2.1-i2v-14b", layers=2, dtype="bf16", mode="merged"),
}


def run_one(name: str) -> dict:
    """In this process: export CONFIGS[name] with a synthetic rank-16 LoRA, sampling RSS per step."""
    from wanrt.console import StepProgress
    from wanrt.engines.trt.acceptance import tensorrt_acceptance
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    cfg = CONFIGS[name]
    state, peaks = {"step": "start"}, {}

    def sample():
        peaks[state["step"]] = max(peaks.get(state["step"], 0), rss_bytes())

    original_call = StepProgress.__call__

    def tracking_call(self, step):
        state["step"] = step
        return original_call(self, step)

    StepProgress.__call__ = tracking_call
    with Sampler(sample, 0.02), tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = export_model(ModelSpec(cfg["model"], layers=cfg["layers"]), LoraSpec(rank=16, mode=cfg["mode"]),
                                ExportSpec(dtype=cfg["dtype"]), Path(tmp) / "out", progress=False,
                                acceptance=tensorrt_acceptance)
        wall = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in (Path(tmp) / "out").iterdir()}
    m = ExportManifest.from_dict(manifest)
    weights = m.initializer_bytes
    export_peak = max(v for k, v in peaks.items() if k in ("start", "load model", "LoRA", "reference outputs",
                                                             "trace + save ONNX"))
    return {
        "config": cfg, "seconds": round(wall, 2), "timings_s": {k: round(v, 2) for k, v in m.timings_s.items()},
        "parameters": m.geometry["parameters"], "exported_weights_bytes": weights, "files_bytes": files,
        "peak_rss_bytes_by_step": peaks,
        "export_peak_rss_over_weights": round(export_peak / weights, 3),
        "validation_peak_rss_over_weights": round(peaks.get("validate", 0) / weights, 3),
        "validation": {k: m.validation.get(k) for k in ("passed", "max_rel", "evaluated_as")},
        "trt_parse": {k: m.trt_parse.get(k) for k in ("parsed", "layers", "num_errors", "flavour", "version")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=[*CONFIGS, "tiny", "14b"], default=None)
    ap.add_argument("--out", default="docs/results/export-cpu.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child)))
        return
    from wanrt.artifacts import command_line, library_versions, machine_info, write_json

    names = [n for n in CONFIGS if not args.only or n in args.only or n.split("-")[0] in args.only]
    results = {}
    for name in names:
        proc = subprocess.run([sys.executable, "-m", "wanrt.tools.bench_export", "--child", name],
                              capture_output=True, text=True)
        if proc.returncode:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
        else:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:18s} " + (f"{r['seconds']:7.1f} s  export peak {r['export_peak_rss_over_weights']:.2f}x "
                                 f"validate peak {r['validation_peak_rss_over_weights']:.2f}x weights "
                                 f"({r['exported_weights_bytes'] / 2**30:.2f} GiB)" if "error" not in r else str(r)),
              flush=True)
    doc = {"command": command_line(), "machine": machine_info(),
           "versions": library_versions(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
