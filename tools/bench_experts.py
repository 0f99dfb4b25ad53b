"""Wan2.2's two experts on this CPU (issue 19): export both experts of a two-expert preset into one artifact, build one
OpenVINO engine per expert, bench each expert's forward and one video through the two-expert pipeline; then the
cost model's GPU predictions and each expert engine's memory for the full model. Writes experts-cpu.json (raw) and
experts-cpu.md (report) under -o.

    python -m wanrt.tools.bench_experts -o docs/results          # wan2.2-i2v-a14b --layers 1, ~15 min on 2 cores
    python -m wanrt.tools.bench_experts --model tiny-wan2.2 --layers 2 --shape 5x32x32 -o /tmp/smoke   # a minute

1. `wanrt export` of the model with a different synthetic rank-16 LoRA stack per expert (separate mode: swappable
   per expert), the distill example's strengths (3.0 on the high-noise expert, 1.5 on the low-noise one); validated;
2. `wanrt build --flavour openvino --precision P` of that artifact: one engine per expert (engines/experts.py);
3. per expert, measured by `wanrt bench`'s two-expert mode (runtime/bench/experts.py, on that artifact with the stacks
   it was exported with): loads, error against eager fp32 of the same expert and stack (gated as the bench gates:
   fp32 1e-4, bf16 1e-2), latency of interleaved CFG steps (the order alternating) with the median's 95% CI, and the
   whole video per schedule; its report is this report's middle section;
4. one video through WanImageToVideoPipeline with both experts installed (the tiny built-in VAE and encoders sized
   to the model), forwards counted per expert, against the sum of the per-forward medians;
5. PREDICTIONS (not measurements): the roofline cost model (tools/cpu_cost_model.py, checked within +/-20% against
   this CPU in ov-cpu-full.md) on published H100/H200 peaks for Wan2.2-I2V-A14B at 480x832, 81 frames, 40 steps
   with CFG, and MLPerf Inference's Wan2.2-T2V-A14B settings (720x1280, 81 frames, 20 steps, CFG); each step's
   expert from diffusers' UniPC flow schedule at Wan2.2's shift and boundary; each expert engine's memory (bf16
   weights, exact parameter count from diffusers on the meta device, + the cost model's activation estimate).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import cpu_info, library_versions
from wanrt.dit_io import VideoShape
from wanrt.engines import registry
from wanrt.engines.experts import build_experts
from wanrt.export.api import LoraSpec, export_experts
from wanrt.export.model import ModelSpec
from wanrt.export.onnx_export import ExportSpec
from wanrt.export.presets import PRESETS
from wanrt.manifests import EngineManifest, ExportManifest, ExpertsManifest
from wanrt.runtime.bench.experts import run_experts_bench
from wanrt.runtime.bench.experts_report import render_experts_report
from wanrt.runtime.bench.spec import BenchSpec
from wanrt.runtime.experts import expert_pair
from wanrt.runtime.pipeline import expert_steps
from wanrt.runtime.schedule import Schedule
from wanrt.tools import cpu_cost_model as cm
from wanrt.tools.bench_cpu_engines import finish, header, log, write_results

STRENGTHS = {"high": 3.0, "low": 1.5}  # a Wan2.1 distill LoRA on Wan2.2: 3 on the high-noise expert, 1.5 on the low
GIB = 2**30
# Usable memory as nvidia-smi reports it (81559 MiB, 143771 MiB), before the CUDA context.
GPU_MEMORY_GIB = {"H100 SXM": 79.6, "H200 SXM": 140.4}
# UMT5-XXL encoder (d_model 4096, 24 layers, 64 heads x 64, gated FFN 10240, vocab 256384): Wan's text encoder, bf16
UMT5_XXL_ENCODER_PARAMS = 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240) + 256384 * 4096
# Wan2.2's schedules: I2V-A14B (Wan2.2 wan/configs: shift 5, 40 steps, boundary 0.900) at 480p; MLPerf Inference's
# text-to-video benchmark, Wan2.2-T2V-A14B (shift 12, boundary 0.875; 20 steps at 720x1280, 81 frames)
SCENARIOS = [
    {"name": "Wan2.2-I2V-A14B 480p", "shape": VideoShape(81, 480, 832), "steps": 40, "shift": 5.0,
     "boundary_ratio": 0.9, "in_channels": 36},
    {"name": "MLPerf Wan2.2-T2V-A14B 720p", "shape": VideoShape(81, 720, 1280), "steps": 20, "shift": 12.0,
     "boundary_ratio": 0.875, "in_channels": 16},
]


# ------------------------------------------------------------------------------------------------ 1-2. artifacts
def make_artifacts(args, work: Path) -> tuple[Path, Path, dict[str, Any]]:
    model_spec = ModelSpec(args.model, layers=args.layers)
    specs = {e: LoraSpec(rank=args.rank, scale=s, seed=i, mode="separate")
             for i, (e, s) in enumerate(STRENGTHS.items())}
    export, engines = work / "export", work / "engines"
    t0 = time.perf_counter()
    log(f"export {args.model} --layers {args.layers} (both experts)")
    export_experts(model_spec, specs, ExportSpec(validate=True), export, force=True, progress=False)
    t1 = time.perf_counter()
    log(f"build openvino {args.precision} (one engine per expert)")
    flavour = registry.get("openvino")
    spec = flavour.spec({"precision": args.precision, "no_cache": True})  # a build, not a cache hit
    build_experts(export, flavour, spec, engines, force=True)
    t2 = time.perf_counter()
    exported = ExpertsManifest.read(export)
    return export, engines, {"export_s": t1 - t0, "build_s": t2 - t1, "specs": specs,
                             "export_timings_s": {e: ExportManifest.read(exported.member_dir(export, e)).timings_s
                                                  for e in exported.experts}}


# ------------------------------------------------------------------------------------------------ 3. experts
def bench(args, engines: Path, made: dict[str, Any], shape: VideoShape, command: str) -> dict[str, Any]:
    """`wanrt bench`'s two-expert measurement of the built artifact, both experts resident."""
    spec = BenchSpec(model=args.model, layers=args.layers, frames=shape.frames, height=shape.height,
                     width=shape.width, backends=("ov",), repeats=args.rounds, warmup=1, threads=args.threads,
                     engine_dir=str(engines))
    return run_experts_bench(spec, command=command, say=log, artifact_loras=made["specs"])


def video(pair, shape: VideoShape, steps: int, forward_s: dict[str, float]) -> dict[str, Any]:
    from PIL import Image

    from wanrt.runtime.generate import GenerateSpec, generate_video

    spec = GenerateSpec(prompt="a red fox in the snow", frames=shape.frames, height=shape.height, width=shape.width,
                        schedule=Schedule(steps=steps, guidance=5.0), seed=0)
    image = Image.new("RGB", (shape.width, shape.height), (200, 80, 30))
    warm = GenerateSpec(prompt="warm-up", frames=shape.frames, height=shape.height, width=shape.width,
                        schedule=Schedule(steps=1, guidance=5.0))
    generate_video(pair, image, warm)  # the pipeline's own first-call costs
    _, timing = generate_video(pair, image, spec)
    calls = timing["dit_calls_by_expert"]
    composed = sum(n * forward_s[e] for e, n in calls.items())
    return {"steps": steps, "cfg": True, "shape": str(shape), **timing, "forwards_sum_s": composed}


# ------------------------------------------------------------------------------------------------ 5. predictions
def high_steps(steps: int, shift: float, boundary_ratio: float) -> int:
    """Steps diffusers runs on the high-noise expert: timesteps >= boundary x 1000 of UniPC's flow schedule (the
    split `wanrt bench` makes, runtime/pipeline.expert_steps)."""
    return expert_steps(Schedule(steps=steps, guidance=5.0, shift=shift), boundary_ratio)["high"]


def parameters(config: dict[str, Any]) -> int:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return sum(p.numel() for p in WanTransformer3DModel(**config).parameters())


def predictions() -> list[dict[str, Any]]:
    """PREDICTION: seconds per forward (batch 1; diffusers runs CFG as two calls), per expert and per video."""
    rows = []
    for sc in SCENARIOS:
        config = {**PRESETS["wan2.2-i2v-a14b"].config, "in_channels": sc["in_channels"]}
        tokens, high = sc["shape"].tokens(), high_steps(sc["steps"], sc["shift"], sc["boundary_ratio"])
        for gpu, peaks in cm.GPU_PEAKS.items():
            for precision in ("bf16", "fp8"):
                fwd = cm.predict(cm.forward_ops(config, tokens, 1, precision), peaks[precision],
                                 peaks["bandwidth"])["seconds"]
                rows.append({"scenario": sc["name"], "gpu": gpu, "precision": precision, "tokens": tokens,
                             "steps": sc["steps"], "high_steps": high, "low_steps": sc["steps"] - high,
                             "forward_s": fwd, "high_s": 2 * high * fwd, "low_s": 2 * (sc["steps"] - high) * fwd,
                             "video_s": 2 * sc["steps"] * fwd, "kind": "PREDICTION"})
    return rows


def memory() -> dict[str, Any]:
    """PREDICTION: each expert engine's bf16 weights + activations, and what fits on one GPU."""
    config = PRESETS["wan2.2-i2v-a14b"].config
    params = parameters(config)
    weights = params * 2
    out: dict[str, Any] = {"parameters_per_expert": params, "weights_bytes_per_expert_bf16": weights,
                           "umt5_xxl_encoder_bytes_bf16": UMT5_XXL_ENCODER_PARAMS * 2, "scenarios": []}
    for sc in SCENARIOS:
        for batch in (1, 2):
            act = cm.activation_bytes(config, sc["shape"].tokens(), batch, "bf16")
            both = 2 * weights + act["bytes"]
            with_umt5 = both + UMT5_XXL_ENCODER_PARAMS * 2
            out["scenarios"].append({
                "scenario": sc["name"], "batch": batch, "activations_bytes": act["bytes"],
                "peak_phase": act["peak_phase"], "one_expert_bytes": weights + act["bytes"],
                "both_experts_bytes": both, "both_experts_with_umt5_bytes": with_umt5,
                # what is left on the GPU for the CUDA context, TensorRT's workspace and the VAE decode
                "headroom_gib": {gpu: {"one": gib - (weights + act["bytes"]) / GIB, "both": gib - both / GIB,
                                       "both_with_umt5": gib - with_umt5 / GIB}
                                 for gpu, gib in GPU_MEMORY_GIB.items()}})
    return out


def reload_costs(loads: dict[str, dict[str, float]], weights_bytes: int, videos: list[dict[str, Any]]) -> dict:
    """What loading one expert at a time costs: both engines loaded once per video (high for the first steps, then
    low), measured here per engine and scaled to a 14B bf16 engine at this CPU's rate and at assumed GPU rates."""
    cpu_rate = sum(v["bytes"] for v in loads.values()) / sum(v["load_s"] for v in loads.values())
    gpu_rates = {"NVMe 7 GB/s (assumed: plan read from disk)": 7e9,
                 "page cache -> GPU 25 GB/s (assumed: PCIe Gen5 x16, pinned, effective)": 25e9}
    per_video = {k: 2 * weights_bytes / r for k, r in gpu_rates.items()}
    return {"measured": loads, "cpu_rate_bytes_per_s": cpu_rate, "cpu_reload_per_video_s": 2 * weights_bytes / cpu_rate,
            "gpu_rate_bytes_per_s": gpu_rates, "reload_per_video_s": per_video,
            "overhead_vs_predicted_video": [
                {"scenario": v["scenario"], "gpu": v["gpu"], "precision": v["precision"], "video_s": v["video_s"],
                 **{k: s / v["video_s"] for k, s in per_video.items()}} for v in videos if v["precision"] == "bf16"]}


# ------------------------------------------------------------------------------------------------ report
def _gib(b: float) -> str:
    return f"{b / GIB:.1f}"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    L = [f"# Wan2.2's two experts on CPU: {r['model']} --layers {r['layers']}, OpenVINO {r['precision']}", "",
         f"Command: `{r['command']}`  ",
         f"Machine: {m.get('cpu')} ({m.get('cpu_count')} CPUs, {m.get('mem_total_gib')} GiB), ISA flags "
         f"{', '.join(r['cpu_isa']) or 'none'}; threads {r['threads']}; load average at start {r['load_average']}, "
         f"end {r['load_average_end']}.  ",
         f"Versions: OpenVINO {r['versions'].get('openvino')}, torch {r['versions'].get('torch')}, diffusers "
         f"{r['versions'].get('diffusers')}. Wall time {r['seconds']:.0f} s. {r['note']}", "",
         "## Export and build (one artifact, both experts)", "",
         f"`export_experts` (both experts, validated) {r['export_s']:.0f} s; `build_experts` (OpenVINO "
         f"{r['precision']}, one engine per expert) {r['build_s']:.0f} s. LoRA per expert: synthetic rank "
         f"{r['rank']} separate (swappable), strength {STRENGTHS['high']} on high, {STRENGTHS['low']} on low.", "",
         "Engines: " + ", ".join(f"{e} {x['bytes'] / 2**20:.1f} MiB" for e, x in r["loads"].items()) + ".", ""]
    # the measurement is `wanrt bench`'s (runtime/bench/experts.py): its report, one heading level down
    L += ["#" + line if line.startswith("#") else line for line in render_experts_report(r["bench"]).splitlines()]
    v = r["video"]
    L += ["", f"One video through WanImageToVideoPipeline with both experts installed (built-in tiny VAE and "
          f"encoders sized to the model; boundary {r['boundary_ratio']}): {v['steps']} steps with CFG, "
          f"{v['dit_calls']} DiT forwards ({', '.join(f'{e} {n}' for e, n in v['dit_calls_by_expert'].items())}), "
          f"{v['generate_s']:.1f} s; the per-forward medians sum to {v['forwards_sum_s']:.1f} s "
          f"(the rest: VAE, encoders, scheduler).", "",
          "## PREDICTION: the full model on GPUs (cost model, not measured)", "",
          "Roofline of tools/cpu_cost_model.py on published dense peaks; a forward is batch 1 (diffusers runs CFG as "
          "two calls), so a step is two forwards; both experts have one geometry, so they cost the same per "
          "forward and the split only says which engine runs when. LoRA merged (no branch).", "",
          "| scenario | GPU | precision | tokens | steps high/low | forward s | high s | low s | video s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for p in r["predictions"]:
        L.append(f"| {p['scenario']} | {p['gpu']} | {p['precision']} | {p['tokens']:,} | {p['high_steps']}/"
                 f"{p['low_steps']} | {p['forward_s']:.2f} | {p['high_s']:.0f} | {p['low_s']:.0f} | "
                 f"{p['video_s']:.0f} |")
    mem = r["memory"]
    L += ["", "## PREDICTION: memory of each expert engine (bf16)", "",
          f"Weights: {mem['parameters_per_expert'] / 1e9:.2f} B parameters per expert (diffusers' "
          f"WanTransformer3DModel of the A14B config, counted on the meta device) = "
          f"{_gib(mem['weights_bytes_per_expert_bf16'])} GiB in bf16; both experts "
          f"{_gib(2 * mem['weights_bytes_per_expert_bf16'])} GiB. Activations: the cost model's estimate (largest "
          f"live set of a block with fused attention). Wan's UMT5-XXL text encoder: "
          f"{_gib(mem['umt5_xxl_encoder_bytes_bf16'])} GiB bf16. Not counted: the CUDA context, TensorRT's "
          "workspace and the VAE's decode activations.", "",
          "| scenario | batch | activations GiB | one expert GiB | both GiB | both + UMT5 GiB | H100 left: one / "
          "both / both+UMT5 GiB | H200 left: one / both / both+UMT5 GiB |", "|---|---|---|---|---|---|---|---|"]
    for s in mem["scenarios"]:
        h = s["headroom_gib"]
        L.append(f"| {s['scenario']} | {s['batch']} | {_gib(s['activations_bytes'])} | {_gib(s['one_expert_bytes'])} "
                 f"| {_gib(s['both_experts_bytes'])} | {_gib(s['both_experts_with_umt5_bytes'])} | "
                 f"{_left(h['H100 SXM'])} | {_left(h['H200 SXM'])} |")
    rc = r["reload"]
    worst = max(mem["scenarios"], key=lambda x: x["both_experts_bytes"])
    L += ["", f"Left: GPU memory (as nvidia-smi reports it: H100 {GPU_MEMORY_GIB['H100 SXM']} GiB, H200 "
          f"{GPU_MEMORY_GIB['H200 SXM']} GiB) less the line's total, for the CUDA context, TensorRT's workspace and "
          "the VAE decode; negative: does not fit.", "",
          f"Reading: at {worst['scenario']} with CFG as one batch-{worst['batch']} call, the two experts and their "
          f"activations need {_gib(worst['both_experts_bytes'])} GiB. By this estimate that fits an 80 GB H100 "
          f"({worst['headroom_gib']['H100 SXM']['both']:.1f} GiB left) only while nothing else is resident: with "
          f"Wan's text encoder resident as well it is {_gib(worst['both_experts_with_umt5_bytes'])} GiB, leaving "
          f"{worst['headroom_gib']['H100 SXM']['both_with_umt5']:.1f} GiB for the CUDA context, TensorRT's "
          "workspace and the VAE decode of 81 frames at 720p (none of them modelled here): too tight to plan on. "
          "On one 80 GB GPU: free the text "
          "encoder after encoding the prompt, or load one expert at a time (below). An H200 holds all of it with "
          f"{worst['headroom_gib']['H200 SXM']['both_with_umt5']:.1f} GiB to spare.", "",
          "## Loading one expert at a time", "",
          "Where both experts do not fit, load the high-noise expert, run its steps (they come first and are "
          "contiguous), free it, load the low-noise one and run the rest: the GPU holds one expert's weights "
          "plus activations. The cost is two engine loads per video (fewer when several videos run expert-major: "
          "all their high steps, then all their low steps, holding each video's latents). Per video, for one "
          "14B bf16 engine pair:", "",
          "| load rate | reload s per video | / predicted bf16 video (per scenario, GPU) |", "|---|---|---|"]
    for k, s in rc["reload_per_video_s"].items():
        ratios = "; ".join(f"{o['scenario']} {o['gpu'].split()[0]} {o[k]:.2f}"
                           for o in rc["overhead_vs_predicted_video"])
        L.append(f"| {k} | {s:.1f} | {ratios} |")
    L += ["", f"Measured here: the two OpenVINO engines of this slice load at {rc['cpu_rate_bytes_per_s'] / 1e9:.2f} "
          f"GB/s (blob import); at that rate a CPU deployment would spend {rc['cpu_reload_per_video_s']:.0f} s per "
          f"video reloading a 14B bf16 pair.", ""]
    return "\n".join(L)


def _left(h: dict[str, float]) -> str:
    return f"{h['one']:.1f} / {h['both']:.1f} / {h['both_with_umt5']:.1f}"


def main(argv=None) -> int:
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wan2.2-i2v-a14b", choices=[n for n, p in PRESETS.items() if p.experts])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--shape", default="5x128x224", help="FRAMESxHxW of the per-forward timing and the video")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--video-steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wanrt-bench-experts"), help="exports and engines")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = VideoShape(*map(int, args.shape.split("x")))
    t0 = time.perf_counter()
    r = header("bench_experts", argv, model=args.model, layers=args.layers, precision=args.precision, rank=args.rank,
               shape=str(shape), tokens=shape.tokens(), rounds=args.rounds, threads=args.threads, note=args.note,
               cpu_isa=cpu_info()["isa"], versions={**library_versions(), "openvino": ov.__version__})
    _export, engines, made = make_artifacts(args, args.work)
    r.update(export_s=made["export_s"], build_s=made["build_s"], export_timings_s=made["export_timings_s"])
    r["bench"] = bench(args, engines, made, shape, r["command"])
    experts = r["bench"]["payload"]["runs"][0]["experts"]
    r["boundary_ratio"] = r["bench"]["payload"]["boundary_ratio"]
    r["loads"] = {e: {"load_s": x["loads"]["median_s"], "bytes": EngineManifest.read(engines / e).plan_bytes}
                  for e, x in experts.items()}
    log(f"one video ({args.video_steps} steps, CFG)")
    pair = expert_pair("ov", artifact=engines, threads=args.threads)
    r["video"] = video(pair, shape, args.video_steps,
                       {e: x["latency"]["forward"]["median_ms"] / 1e3 for e, x in experts.items()})
    pair.close()
    r["predictions"] = predictions()
    r["memory"] = memory()
    r["reload"] = reload_costs(r["loads"], r["memory"]["weights_bytes_per_expert_bf16"], r["predictions"])
    finish(r, t0)
    write_results(args.out, "experts-cpu", r, render(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
