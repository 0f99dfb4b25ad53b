"""One prepared device run that needs only torch (+ diffusers): what issue 20 asks of a lent H100/H200, tried on the
CPU path first. Writes gpu-torch-<device>.json under -o.

    python -m wanrt.tools.gpu_torch_study --device cuda --model wan2.1-i2v-14b --layers 2 --shape 81x480x832
    python -m wanrt.tools.gpu_torch_study --device cpu --model small --shape 5x64x64 --pairs 8    # the CPU path

In one call, on `--model` at `--shape` (81x480x832 is 32,760 tokens on the 14B geometry), batch 1:
1. eager (bf16 on CUDA, fp32 on the CPU) vs torch.compile of the same merged rank-`--rank` model: latency, compile time;
2. merged vs separate rank-`--rank` LoRA (all targets), eager, paired and alternating, the mean overhead with a
   bootstrap 95% CI, against the branch's FLOP share (runtime/flops.py);
3. FP8 linears: F.linear bf16 vs torch._scaled_mm float8_e4m3fn on the FFN's shapes at these tokens (CUDA with
   compute capability >= 8.9; otherwise recorded as not available, with the reason);
4. the roofline cost model's prediction (tools/cpu_cost_model.py) for this GPU beside the measured merged latency.
TensorRT is not in the lent image: engine figures stay "not measured". On the lent machine (torch, onnx, peft,
transformers present; diffusers carried as its wheel): `pip install --no-deps diffusers-*.whl && pip install --no-deps
-e . && python -m wanrt.tools.gpu_torch_study --layers 2` (about 5 minutes on an H100 at 81x480x832).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from wanrt.dit_io import DitIO, ShapeRange, VideoShape
from wanrt.export.api import LoraSpec
from wanrt.export.model import ModelSpec
from wanrt.runtime.backends import build_transformer
from wanrt.runtime.flops import forward_flops, lora_branches
from wanrt.tools.bench_cpu_engines import bootstrap_ci, finish, header, write_results
from wanrt.tools.cpu_cost_model import GPU_PEAKS, forward_ops, predict


def timer(device: torch.device):
    """seconds of fn(): CUDA events on a GPU, perf_counter on the CPU."""
    def run(fn) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return run


def model_call(model, inputs):
    return lambda: model(hidden_states=inputs["latents"], timestep=inputs["timestep"],
                         encoder_hidden_states=inputs["text"], encoder_hidden_states_image=inputs["image"],
                         return_dict=False)


def fp8_linears(device: torch.device, tokens: int, dim: int, ffn: int, repeats: int) -> dict[str, Any]:
    """bf16 F.linear vs torch._scaled_mm (e4m3, per-tensor scales) on [tokens x dim] @ [dim x ffn]."""
    if device.type != "cuda":
        return {"available": False, "reason": "torch._scaled_mm float8 needs a CUDA GPU (sm_89+)"}
    if torch.cuda.get_device_capability(device) < (8, 9):
        return {"available": False, "reason": f"compute capability {torch.cuda.get_device_capability(device)} < 8.9"}
    x = torch.randn(tokens, dim, device=device, dtype=torch.bfloat16)
    w = torch.randn(ffn, dim, device=device, dtype=torch.bfloat16) / dim ** 0.5
    xs, ws = x.abs().max().float() / 448, w.abs().max().float() / 448
    x8, w8 = (x.float() / xs).to(torch.float8_e4m3fn), (w.float() / ws).to(torch.float8_e4m3fn)
    time_it = timer(device)
    out = {}
    for name, fn in (("bf16 F.linear", lambda: torch.nn.functional.linear(x, w)),
                     ("fp8 _scaled_mm", lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws,
                                                                  out_dtype=torch.bfloat16))):
        fn()
        s = statistics.median(time_it(fn) for _ in range(repeats))
        out[name] = {"median_s": s, "tflops": 2 * tokens * dim * ffn / s / 1e12}
    ref = torch.nn.functional.linear(x, w).float()
    got = torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16).float()
    out["rel_err"] = float((got - ref).abs().max() / ref.abs().max())
    out["speedup"] = out["bf16 F.linear"]["median_s"] / out["fp8 _scaled_mm"]["median_s"]
    return {"available": True, "shape": [tokens, dim, ffn], **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="wan2.1-i2v-14b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--shape", default="81x480x832")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: use --device cpu for the CPU path", file=sys.stderr)
        return 2
    dtype = "bf16" if device.type == "cuda" else "fp32"
    shape = VideoShape(*map(int, args.shape.split("x")))
    spec = ModelSpec(args.model, layers=args.layers, dtype=dtype)
    t0 = time.perf_counter()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    results = header("gpu_torch_study", argv, device=gpu or "cpu", model=args.model, layers=args.layers,
                     shape=str(shape), dtype=dtype, rank=args.rank,
                     tensorrt="not measured (TensorRT is not in the lent image)")
    models = {}
    for mode in ("merged", "separate"):
        model, _ = build_transformer(spec, LoraSpec(rank=args.rank, mode=mode))
        models[mode] = model.to(device)
    io = DitIO(models["merged"].config, shapes=ShapeRange(shape, shape))
    inputs = {k: v.to(device) for k, v in io.dummy_inputs(1, shape, seed=0, timestep=500.0).items()}
    inputs = {k: (v.to(torch.bfloat16) if dtype == "bf16" and k != "timestep" else v) for k, v in inputs.items()}
    time_it = timer(device)
    calls = {mode: model_call(m, inputs) for mode, m in models.items()}
    with torch.inference_mode():
        for fn in calls.values():
            fn()
        eager = statistics.median(time_it(calls["merged"]) for _ in range(args.repeats))
        results["eager_merged_s"] = eager
        if not args.no_compile:
            compiled = torch.compile(models["merged"])
            c0 = time.perf_counter()
            model_call(compiled, inputs)()
            results["compile_s"] = time.perf_counter() - c0
            results["compiled_merged_s"] = statistics.median(time_it(model_call(compiled, inputs))
                                                            for _ in range(args.repeats))
            results["compile_speedup"] = eager / results["compiled_merged_s"]
        ratios = []
        for i in range(args.pairs):  # alternating order: drift hits both sides alike
            order = ("merged", "separate") if i % 2 == 0 else ("separate", "merged")
            t = {mode: time_it(calls[mode]) for mode in order}
            ratios.append(t["separate"] / t["merged"] - 1.0)
    lo, hi = bootstrap_ci(ratios)
    from wanrt.export.lora import synthetic_lora  # the branch shapes of the same synthetic LoRA, for its FLOPs

    branches = lora_branches(synthetic_lora(models["merged"].to("cpu"), args.rank))
    flops = forward_flops(dict(models["merged"].config), shape.latent, lora=branches, mode="separate")
    results["separate_overhead"] = {"pairs": len(ratios), "mean": statistics.fmean(ratios), "ci95": [lo, hi],
                                    "flop_share": flops["lora_share"], "tokens": flops["tokens"]}
    config = dict(models["merged"].config)
    results["fp8_linears"] = fp8_linears(device, flops["tokens"], config["num_attention_heads"] *
                                         config["attention_head_dim"], config["ffn_dim"], args.repeats)
    peaks = next((p for name, p in GPU_PEAKS.items() if gpu and name.split()[0] in gpu), None)
    if peaks is not None:
        ops = forward_ops(config, flops["tokens"], 1, "bf16", args.rank, "merged")
        pred = predict(ops, peaks["bf16"], peaks["bandwidth"])["seconds"]
        results["cost_model"] = {"predicted_merged_s": pred, "measured_merged_s": eager, "ratio": eager / pred}
    else:
        results["cost_model"] = "no published peaks for this device in tools/cpu_cost_model.GPU_PEAKS"
    finish(results, t0)
    write_results(args.out, "gpu-torch-" + (gpu or "cpu").replace(" ", "-").lower(), results)
    print(json.dumps({k: results[k] for k in ("device", "eager_merged_s", "separate_overhead") if k in results},
                     default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
