"""MLPerf-style SingleStream / Offline runs of whole Wan videos through MLCommons' LoadGen (issue 21).

    python -m wanrt.tools.loadgen_wan --scenario SingleStream --queries 64 -o docs/results/loadgen-tiny-singlestream
    python -m wanrt.tools.loadgen_wan --scenario Offline --queries 32 -o docs/results/loadgen-tiny-offline

A CPU-sized config: the `tiny` preset (eager by default, any runtime backend with --backend/--artifact), 5 frames
at 32x32, the 4-step CFG-free schedule; one query = one video (runtime/loadgen.py). The whole pipeline compiled:
--stages-backend ov runs the VAE and both encoders on their graphs (built once), --precision the DiT engine's and
theirs, --components wan2.1 the real part geometries (with a 14B preset, --layers and --text-layers to fit here):

    python -m wanrt.tools.loadgen_wan --model wan2.1-i2v-14b --layers 1 --backend ov --stages-backend ov \
        --precision bf16 --components wan2.1 --text-layers 2 --size 128x128 --target-latency-ms 8000 \
        --queries 64 -o docs/results/loadgen-14b-slice-ov-bf16-singlestream Writes LoadGen's
mlperf_log_summary.txt and mlperf_log_detail.txt and results.json (p90, early-stopping verdict, samples/s) into -o.
Not MLPerf's Wan2.2 T2V config (720x1280, 81 frames, 20 steps, A14B): the same harness at a size this CPU runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from wanrt.artifacts import command_line, cpu_info, library_versions, machine_info, write_json
from wanrt.export.model import ModelSpec
from wanrt.runtime.backends import backend_from_specs
from wanrt.runtime.generate import GenerateSpec, compiled_stages
from wanrt.runtime.loadgen import SCENARIOS, LoadgenSpec, run_loadgen
from wanrt.runtime.pipeline import build_pipeline
from wanrt.runtime.schedule import Schedule


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=SCENARIOS, default="SingleStream")
    ap.add_argument("--queries", type=int, default=64, help="LoadGen's min_query_count (and the cap)")
    ap.add_argument("--samples", type=int, default=50, help="query sample library size (MLPerf: 50)")
    ap.add_argument("--target-latency-ms", type=float, default=500.0,
                    help="SingleStream's expected latency; Offline's expected QPS is 1000 / this")
    ap.add_argument("--backend", default="eager", help="a runtime backend (wanrt generate --backend)")
    ap.add_argument("--artifact", default=None, help="export/engine directory for ort/openvino/trt")
    ap.add_argument("--model", default="tiny", help="preset or checkpoint (exported into the cache for ort/ov)")
    ap.add_argument("--layers", type=int, default=None, help="the first N transformer blocks (a slice)")
    ap.add_argument("--stages-backend", default="eager", help="where the VAE and encoders run: eager, ort, ov")
    ap.add_argument("--precision", default=None, help="the DiT engine's and the stage sessions' (ov: bf16 here)")
    ap.add_argument("--components", default="tiny", help="the pipeline's other parts: tiny or wan2.1")
    ap.add_argument("--text-layers", type=int, default=None, help="--components wan2.1: UMT5 layers to build")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--size", default="32x32", help="HxW pixels")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=1.0, help="1.0: no CFG (one DiT call per step)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(x) for x in args.size.split("x"))
    spec = LoadgenSpec(scenario=args.scenario, samples=args.samples, min_query_count=args.queries,
                       max_query_count=args.queries, target_latency_ms=args.target_latency_ms)
    base = GenerateSpec(prompt="", frames=args.frames, height=h, width=w,
                        schedule=Schedule(steps=args.steps, guidance=args.guidance))
    model = ModelSpec(args.model, layers=args.layers) if args.artifact is None else None
    backend = backend_from_specs(args.backend, model, engine=args.artifact, threads=args.threads,
                                 precision=args.precision)
    try:
        pipe = build_pipeline(backend, components=args.components, text_layers=args.text_layers)
        compiled = compiled_stages(pipe, args.stages_backend, args.stages_backend, args.threads,
                                   precision=args.precision or "fp32")
        image = Image.new("RGB", (w, h), (90, 140, 200))
        result = run_loadgen(backend, image, base, spec, args.out, pipe=pipe,
                             say=lambda m: print(m, file=sys.stderr), compiled=compiled)
    finally:
        backend.close()
    result.update(backend=args.backend, model=args.model, layers=args.layers, stages_backend=args.stages_backend,
                  precision=args.precision, components=args.components, text_layers=args.text_layers,
                  machine=machine_info(), cpu=cpu_info(), versions=library_versions(), command=command_line())
    write_json(args.out / "results.json", result)
    print(json.dumps(result["loadgen"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
