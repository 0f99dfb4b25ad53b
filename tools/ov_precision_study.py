"""Which nodes must stay fp32 for OpenVINO bf16 to meet the bf16 gate: a per-group ablation with OpenVINO's own
per-node precision control (the `precise` runtime attribute) and its runtime model as the record of what ran in
which precision. Writes docs/results/ov-precision-<name>.json.

    python -m wanrt.tools.ov_precision_study EXPORT_DIR [--shape 17x128x224] [--threads 2] [-o docs/results]

EXPORT_DIR: an fp32 `wanrt export` directory (any LoRA mode). The reference is eager fp32 of the same specs on the
same seeded inputs; eager bf16 (diffusers' keep-in-fp32 modules) is measured too, as the bar OpenVINO must meet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wanrt.artifacts import library_versions
from wanrt.tools.bench_cpu_engines import header, write_results


def build_model(model_spec, lora_spec):
    """The transformer with its LoRA applied, exactly as the exporter built it."""
    from wanrt.export.api import resolve_lora
    from wanrt.export.lora import apply_lora
    from wanrt.export.model import load_transformer

    model = load_transformer(model_spec)
    lora, _ = resolve_lora(model, lora_spec)
    if lora is not None:
        apply_lora(model, lora, lora_spec.mode)
    return model.eval()


def eager_outputs(export_dir: Path, shape, threads: int):
    from wanrt.dit_io import DitIO, ShapeRange
    from wanrt.engines.onnx_dir import read_onnx_dir
    from wanrt.export.api import LoraSpec
    from wanrt.export.model import ModelSpec

    torch.set_num_threads(threads)
    manifest, onnx_path = read_onnx_dir(export_dir)
    ms = ModelSpec(**manifest.export_specs["model"])
    ls = LoraSpec(**manifest.export_specs["lora"])
    io = DitIO(manifest.geometry, torch.float32, ShapeRange(shape, shape))
    feeds = io.dummy_inputs(1, shape, seed=0)
    out = {}
    for dtype in ("fp32", "bf16"):
        from dataclasses import replace

        model = build_model(replace(ms, dtype=dtype), ls)
        cast = {k: (v if k == "timestep" else v.to(model.patch_embedding.weight.dtype)) for k, v in feeds.items()}
        with torch.inference_mode():
            args = dict(hidden_states=cast["latents"], timestep=cast["timestep"], encoder_hidden_states=cast["text"],
                        encoder_hidden_states_image=cast.get("image"), return_dict=False)
            model(**args)
            t = time.perf_counter()
            y = model(**args)[0].float().numpy()
            out[dtype] = (y, time.perf_counter() - t)
        del model
    return manifest, onnx_path, {k: v.numpy() for k, v in feeds.items()}, out


def main(argv=None) -> int:
    import openvino as ov

    from wanrt.engines.openvino.engine import compile_properties, read_with_lora_inputs
    from wanrt.engines.openvino.precision import (GROUPS, KEEP_POLICIES, compress_int8, mark_groups,
                                                     runtime_precisions, split_time_path)
    from wanrt.dit_io import VideoShape

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--shape", default="17x128x224")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default=None)
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--int8", action="store_true", help="also int8 (NNCF weights) per policy")
    ap.add_argument("--quick", action="store_true", help="fp32, default bf16 and the chosen policy only")
    args = ap.parse_args(argv)
    shape = VideoShape(*map(int, args.shape.split("x")))
    manifest, onnx_path, feeds, eager = eager_outputs(args.export_dir, shape, args.threads)
    ref = eager["fp32"][0]

    def rel(y):
        return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))

    rows = [{"config": "eager fp32", "rel_err": 0.0, "ms": eager["fp32"][1] * 1e3},
            {"config": "eager bf16 (diffusers keep-in-fp32)", "rel_err": rel(eager["bf16"][0]),
             "ms": eager["bf16"][1] * 1e3}]
    core = ov.Core()
    lora = manifest.lora
    lora_names = [n for e in (lora.get("initializers") or {}).values() for n in e.values()]
    configs = [("ov fp32", "fp32", ()), ("ov bf16 default hint", "bf16", ())]
    if not args.quick:
        configs += [(f"ov bf16 + {g} fp32" + (" (cut out, compiled fp32)" if g == "time" else " (marked)"), "bf16",
                     (g,)) for g in GROUPS]
    configs += [(f"ov bf16 policy {p}", "bf16", KEEP_POLICIES[p]) for p in KEEP_POLICIES
                if p != "none" and (not args.quick or p == "wan")]
    if args.int8:
        configs += [(f"ov int8 policy {p}", "int8", KEEP_POLICIES[p]) for p in ("none", "wan")]
    for label, precision, keep in configs:
        model, defaults = read_with_lora_inputs(core, onnx_path, lora_names)
        time_req = None
        with tempfile.TemporaryDirectory(prefix="wanrt-study-") as work:
            report = {}
            if precision != "fp32":
                if "time" in keep:
                    model, time_model = split_time_path(model)
                    time_c = core.compile_model(time_model, "CPU", compile_properties("fp32", args.threads))
                    time_req = time_c.create_infer_request()
                model, report = mark_groups(core, model, [g for g in keep if g != "time"], Path(work), defaults,
                                            compress_int8 if precision == "int8" else None)
            compiled = core.compile_model(model, "CPU", compile_properties(precision, args.threads))
        req = compiled.create_infer_request()
        for n, v in {**defaults, **feeds}.items():
            if n == "timestep" and time_req is not None:
                time_req.infer({"timestep": v})
                for i, o in enumerate(time_req.model_outputs):
                    req.set_tensor(o.get_any_name(), time_req.get_output_tensor(i))
            else:
                req.set_tensor(n, ov.Tensor(np.ascontiguousarray(v)))
        req.infer()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            req.infer()
            times.append(time.perf_counter() - t)
        y = req.get_output_tensor(0).data.copy()
        row = {"config": label, "precision": precision, "keep_fp32": list(keep), "rel_err": rel(y),
               "ms": float(np.median(times)) * 1e3, "marked_nodes": report.get("marked_nodes", 0),
               "group_sizes": report.get("group_sizes"), "runtime_precisions": runtime_precisions(compiled),
               "int8_nodes": (report.get("int8") or {}).get("count")}
        rows.append(row)
        print(f"{label:52s} rel {row['rel_err']:.3e}  {row['ms']:8.1f} ms  marked {row['marked_nodes']}", flush=True)
        del compiled, req, model
    name = args.name or f"{manifest.specs['model'].get('source', 'model')}-{args.shape}".replace("/", "_")
    out = header("ov_precision_study", argv, versions={**library_versions(), "openvino": ov.__version__},
                 export=str(args.export_dir), shape=args.shape, threads=args.threads, rows=rows)
    write_results(args.out, f"ov-precision-{name}", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
