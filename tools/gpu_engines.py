"""GPU measurements of wanrt engines, written to docs/results/engines_<gpu>.json.

For each LoRA mode (merged, separate) and precision (bf16, fp16, fp8): export the model, build the engine (build
time, plan size), load it, run it with torch CUDA tensors (latency by CUDA events, relative error against eager
PyTorch in the same dtype), and refit it (time to compute the weights on CPU and to refit on the GPU; A -> B -> A
must give bit-identical outputs). Also records what each installed TensorRT flavour does on this GPU (TensorRT-RTX on
Hopper: the error it gives). Needs an NVIDIA GPU; refuses to run without one.

    python -m wanrt.tools.gpu_engines --model small --shape 17x128x224
    python -m wanrt.tools.gpu_engines --model wan2.1-i2v-14b --layers 2 --shape 81x480x832 --precisions bf16,fp8
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any


def _events_ms(fn, warmup: int, iters: int) -> dict[str, float]:
    import torch

    from wanrt.tools.gpu_torch_study import timer  # CUDA events

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    time_it = timer(torch.device("cuda"))
    times = sorted(time_it(fn) * 1e3 for _ in range(iters))
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1], "iters": iters}


def run(args) -> dict[str, Any]:
    import torch
    from wanrt.engines.trt.build import build_engine_from_onnx_dir
    from wanrt.runtime.bench.measure import rel_error
    from wanrt.engines.trt.engine_spec import EngineSpec
    from wanrt.engines.trt.flavour import gpu_info, installed_flavours, load_flavour
    from wanrt.engines.trt.fp8.quantize import Fp8Spec
    from wanrt.engines.trt.refit import base_weights_from_model, refit_loaded_engine, refit_weights
    from wanrt.engines.trt.engine import TRTEngine
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.lora import apply_lora, synthetic_lora
    from wanrt.export.model import ModelSpec, load_transformer, model_geometry
    from wanrt.dit_io import TORCH_DTYPES, DitIO, ShapeRange
    from wanrt.export.onnx_export import ExportSpec

    from wanrt.artifacts import library_versions, machine_info
    from wanrt.parse import parse_shape

    gpu = gpu_info()
    if gpu is None:
        raise SystemExit("tools/gpu_engines.py needs an NVIDIA GPU visible to torch")
    shape = parse_shape(args.shape, "--shape")
    profile = f"1x{shape.frames}x{shape.height}x{shape.width}:2x{shape.frames}x{shape.height}x{shape.width}:" \
              f"2x{shape.frames}x{shape.height}x{shape.width}"
    work = Path(args.work or tempfile.mkdtemp(prefix="wanrt-gpu-engines-"))
    results: dict[str, Any] = {"gpu": gpu, "machine": machine_info(), "versions": library_versions(),
                               "model": args.model, "layers": args.layers, "shape": str(shape), "rank": args.rank,
                               "installed_flavours": installed_flavours(), "runs": []}
    flavour = load_flavour(args.flavour)
    results["flavour"] = flavour.info()
    # With --flavour rtx on Hopper / datacenter Blackwell every row records TensorRT-RTX's refusal as its error.
    for mode in args.modes.split(","):
        for precision in args.precisions.split(","):
            dtype = "fp16" if precision == "fp16" else "bf16"
            row: dict[str, Any] = {"mode": mode, "precision": precision}
            results["runs"].append(row)
            try:
                onnx_dir = work / f"onnx-{mode}-{dtype}"
                model_spec = ModelSpec(args.model, layers=args.layers, dtype=dtype, seed=0)
                if not (onnx_dir / "manifest.json").is_file():
                    t = time.perf_counter()
                    export_model(model_spec, LoraSpec(rank=args.rank, mode=mode, seed=0),
                                 ExportSpec(dtype=dtype, validate=False, min_shape=shape, max_shape=shape),
                                 onnx_dir, force=True, progress=False)
                    row["export_s"] = time.perf_counter() - t
                spec = EngineSpec(flavour=args.flavour, precision=precision, profiles=(profile,), refit="yes",
                                  opt_level=args.opt_level, cache=False,
                                  fp8=Fp8Spec(calib=args.calib, keep_blocks=args.keep_blocks))
                engine_dir = work / f"engine-{mode}-{precision}"
                t = time.perf_counter()
                m = build_engine_from_onnx_dir(onnx_dir, spec, engine_dir, force=True)
                row["build_s"] = time.perf_counter() - t
                row.update(plan_mib=m.plan_bytes / 2**20, build_timings=m.timings_s, refit=m.lora["refit"],
                           fp8=m.section("fp8"))
                t = time.perf_counter()
                engine = TRTEngine(engine_dir, runtime_cache=None)
                row["load_s"] = time.perf_counter() - t
                row["device_memory_mib"] = engine.device_memory_bytes / 2**20
                # inputs and eager reference
                base = load_transformer(model_spec)
                geometry = model_geometry(base)
                config = DitIO(geometry, TORCH_DTYPES[dtype], ShapeRange(shape, shape))
                feed = {k: v.cuda() for k, v in config.dummy_inputs(2, shape, seed=1).items()}
                lora_a = synthetic_lora(base, args.rank, "all", seed=0)
                lora_b = synthetic_lora(base, args.rank, "all", seed=1)
                out_a = engine(**feed)
                torch.cuda.synchronize()
                out_a = out_a.clone()
                eager = load_transformer(model_spec)
                apply_lora(eager, lora_a, mode)
                eager = eager.cuda()
                with torch.no_grad():
                    ref = eager(hidden_states=feed["latents"], timestep=feed["timestep"],
                                encoder_hidden_states=feed["text"], encoder_hidden_states_image=feed["image"],
                                return_dict=False)[0]
                    row["eager_latency"] = _events_ms(lambda m=eager, x=feed: m(
                        hidden_states=x["latents"], timestep=x["timestep"], encoder_hidden_states=x["text"],
                        encoder_hidden_states_image=x["image"], return_dict=False), args.warmup, args.iters)
                del eager
                torch.cuda.empty_cache()
                row["rel_error_vs_eager"] = rel_error(out_a, ref)
                row["latency"] = _events_ms(lambda e=engine, x=feed: e(**x), args.warmup, args.iters)
                # refit: CPU weights + GPU refit, then A -> B -> A
                names = [n for e in m.lora["modules"].values() for n in e.values()]
                base_w = base_weights_from_model(base, names) if mode != "separate" else None
                t = time.perf_counter()
                refit_weights(m, lora_b, base_w)
                row["refit_weights_cpu_s"] = time.perf_counter() - t
                if m.lora["refit"]:
                    swap = refit_loaded_engine(engine, lora_b)
                    row["refit_b"] = swap["timings"]
                    out_b = engine(**feed).clone()
                    back = refit_loaded_engine(engine, lora_a)
                    row["refit_a"] = back["timings"]
                    out_a2 = engine(**feed)
                    torch.cuda.synchronize()
                    row["a_b_a_exact"] = bool(torch.equal(out_a, out_a2))
                    row["b_differs"] = not bool(torch.equal(out_a, out_b))
                engine.close()
                del engine, base
                torch.cuda.empty_cache()
                row["ok"] = True
            except Exception as e:  # noqa: BLE001 - one failed configuration is a result, not the end
                row["ok"] = False
                row["error"] = f"{type(e).__name__}: {e}"
                row["traceback"] = traceback.format_exc(limit=5)
            print(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "fp8", "build_timings")}),
                  file=sys.stderr)
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--shape", default="17x128x224", help="FRAMESxHxW the engines are built and timed at")
    ap.add_argument("--precisions", default="bf16,fp16,fp8")
    ap.add_argument("--modes", default="merged,separate")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--flavour", default="auto", choices=("auto", "tensorrt", "rtx"))
    ap.add_argument("--opt-level", type=int, default=None)
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--keep-blocks", default="1")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--work", default=None, help="Working directory for exports and engines (default: temp).")
    ap.add_argument("--out", default=None, help="Result JSON (default docs/results/engines_<gpu>.json).")
    args = ap.parse_args(argv)
    results = run(args)
    slug = re.sub(r"[^a-z0-9]+", "-", results["gpu"]["name"].lower()).strip("-")
    out = Path(args.out or Path(__file__).resolve().parents[1] / "docs" / "results" / f"engines_{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(out)


if __name__ == "__main__":
    main()
