"""Deploying a LoRA stack (issue 18): merged-all vs distill merged + style separate vs all separate, and what a
strength or stack change costs against a fresh build. Writes lora-stack-<model>.json and .md under -o.

    python -m wanrt.tools.bench_lora_stack --model small -o docs/results                 # ~3 min on 2 cores
    python -m wanrt.tools.bench_lora_stack --model wan2.1-i2v-14b --layers 1 -o docs/results

The stack is two LoRA files written once per run (a rank-`--distill-rank` "distill" on every target, a
rank-`--style-rank` "style" on `--style-targets`), the same files in every deployment, so the three are one function:
1. each deployment exported (fp32 ONNX) and compiled for `--backend` at `--precision`; its error against eager fp32
   of the same stack, gated as the CPU bench gates it (fp32 1e-4, bf16 1e-2);
2. latency per forward, interleaved (the order rotates every round), each deployment's ratio to merged-all with a
   bootstrap 95% CI over rounds, until every half-width is <= 1 point or `--rounds` is spent; per video for a 40-step
   CFG schedule (80 forwards: diffusers' Wan pipelines run the conditional and unconditional passes as two batch-1
   calls) and the 4-step no-CFG distill recipe (4 forwards);
3. on the all-separate engine: a strength change and a stack change (style dropped) by `set_loras`, median of
   `--swaps`, against the fresh build of that engine measured in this run (export + compile).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import machine_info
from wanrt.dit_io import VideoShape
from wanrt.export.api import LoraSpec, export_model
from wanrt.export.lora import synthetic_lora
from wanrt.export.lora_formats import load_lora_file, save_lora_file
from wanrt.export.model import ModelSpec, load_transformer
from wanrt.export.onnx_export import ExportSpec
from wanrt.export.presets import PRESETS
from wanrt.parse import LoraEntry
from wanrt.runtime.backends import build_transformer, create_backend
from wanrt.runtime.bench.measure import rel_error
from wanrt.runtime.flops import forward_flops, lora_branches
from wanrt.tools.bench_cpu_engines import (GATES, feeds_for, finish, header, log, ratio_ci, skipped_backends,
                                           sweep_precision, time_rounds, write_results)

SCHEDULES = {"40-step CFG": 80, "4-step no-CFG": 4}  # forwards per video


def deployments(files: dict[str, Path], strengths: tuple[float, float]) -> dict[str, LoraSpec]:
    distill = LoraEntry(file=str(files["distill"]), strength=strengths[0])
    style = LoraEntry(file=str(files["style"]), strength=strengths[1])
    return {"merged-all": LoraSpec(mode="merged", merge=(distill, style)),
            "distill merged + style separate": LoraSpec(file=style.file, scale=style.strength, mode="separate",
                                                        merge=(distill,)),
            "all separate": LoraSpec(file=distill.file, scale=distill.strength, mode="separate", stack=(style,))}


def write_stack(model_spec: ModelSpec, args, shape: VideoShape,
                directory: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """The two LoRA files, and each deployment's separate-branch FLOP share at `shape` (runtime/flops: branch FLOPs
    over the base forward's; a stack is one branch of rank r_distill + r_style where both adapt a module)."""
    model = load_transformer(model_spec)
    distill = synthetic_lora(model, args.distill_rank, "all", seed=1)
    style = synthetic_lora(model, args.style_rank, args.style_targets, seed=2)
    files = {"distill": save_lora_file(distill, directory / "distill.safetensors"),
             "style": save_lora_file(style, directory / "style.safetensors", "comfyui")}
    d, s = lora_branches(distill), lora_branches(style)
    stack = {m: replace(d.get(m) or s[m], rank=(d[m].rank if m in d else 0) + (s[m].rank if m in s else 0))
             for m in {*d, *s}}
    shares = {label: forward_flops(model.config, shape.latent, lora=b, mode="separate")["lora_share"] if b else 0.0
              for label, b in (("merged-all", {}), ("distill merged + style separate", s), ("all separate", stack))}
    return files, shares


def build(model_spec: ModelSpec, spec: LoraSpec, directory: Path, args) -> tuple[Any, float]:
    """(backend, fresh build seconds: export + compile) of one deployment."""
    t0 = time.perf_counter()
    export_model(model_spec, spec, ExportSpec(validate=False), directory, progress=False)
    options = {"precision": args.precision} if args.backend == "ov" else {}
    backend = create_backend(args.backend, artifact=directory, threads=args.threads, **options)
    return backend, time.perf_counter() - t0


def interleaved(backends: dict[str, Any], feeds, rounds: int) -> dict[str, dict[str, Any]]:
    """Rounds of every backend once, order rotated per round; ratios to merged-all with bootstrap CIs."""
    samples = time_rounds({label: partial(b, *feeds) for label, b in backends.items()}, rounds, rotate=True,
                          check=(20, 5))
    out = {}
    for label in backends:
        ratios, (lo, hi), half = ratio_ci(samples, label)
        out[label] = {"median_s": statistics.median(samples[label]), "rounds": len(ratios),
                      "ratio_to_merged": statistics.fmean(ratios), "ci95": [lo, hi], "half_width": half,
                      "per_video_s": {k: n * statistics.median(samples[label]) for k, n in SCHEDULES.items()}}
    return out


def swap_costs(backend, model_spec: ModelSpec, files: dict[str, Path], swaps: int) -> dict[str, float]:
    """Median seconds of a strength change and of a stack change by set_loras (files read once, as a server keeps
    its library loaded: the swap is the stacking and the weight upload)."""
    model = load_transformer(model_spec)
    distill, style = (load_lora_file(files[n], model) for n in ("distill", "style"))
    strength, stack = [], []
    for i in range(swaps):
        distill.lora_scale, style.lora_scale = 1.0, 0.5 + 0.1 * i
        t = time.perf_counter()
        backend.set_loras([distill, style], ["distill", "style"])
        strength.append(time.perf_counter() - t)
        t = time.perf_counter()
        backend.set_loras([distill], ["distill"])
        stack.append(time.perf_counter() - t)
    return {"strength_change_s": statistics.median(strength), "stack_change_s": statistics.median(stack)}


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# LoRA stack deployments: {results['model']}", "",
             f"`{results['command']}`  ", f"{m.get('cpu')} ({' '.join(m['cpu_isa'])}), load average "
             f"{results['load_average'][0]:.1f}; {results['backend']} {results['precision']}, "
             f"{results['threads']} threads; shape {results['shape']}; stack: distill r{results['distill_rank']} + "
             f"style r{results['style_rank']} ({results['style_targets']}), strengths {results['strengths']}", "",
             "| deployment | per forward ms | vs merged-all (95% CI) | branch FLOP share | 40-step CFG s/video "
             "| 4-step no-CFG s/video | rel err vs eager | gate | build s |", "|---|---|---|---|---|---|---|---|---|"]
    for label, row in results["deployments"].items():
        lo, hi = row["ci95"]
        video = row["per_video_s"]
        share = f"{row['flop_share'] * 100:.1f}%" if "flop_share" in row else "?"
        lines.append(f"| {label} | {row['median_s'] * 1e3:.1f} | {row['ratio_to_merged']:.3f} ({lo:.3f}–{hi:.3f}) "
                     f"| {share} | {video['40-step CFG']:.2f} | {video['4-step no-CFG']:.3f} | {row['rel_err']:.1e} "
                     f"| {'pass' if row['passes_gate'] else 'FAIL'} | {row['build_s']:.1f} |")
    s = results["swap"]
    lines += ["", f"All-separate engine: strength change {s['strength_change_s'] * 1e3:.2f} ms, stack change "
              f"{s['stack_change_s'] * 1e3:.2f} ms (median of {results['swaps']}), against a fresh build of "
              f"{s['build_s']:.1f} s: {s['build_s'] / s['strength_change_s']:.0f}x.", ""]
    noisy = [k for k, r in results["deployments"].items() if r["half_width"] > 0.01]
    if noisy:
        lines.append(f"Noise: the CI half-width exceeds 1 point for {', '.join(noisy)}; read those ratios as such.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", choices=list(PRESETS))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--shape", default=None, help="FxHxW pixels (default: the preset's)")
    ap.add_argument("--backend", choices=("ov", "ort"), default="ov")
    ap.add_argument("--precision", default=None, help="ov: fp32|bf16 (default: bf16 where the CPU has it)")
    ap.add_argument("--distill-rank", type=int, default=64)
    ap.add_argument("--style-rank", type=int, default=16)
    ap.add_argument("--style-targets", default="cross-attn")
    ap.add_argument("--strengths", default="1.0,0.8")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.backend == "ov" and args.precision is None:
        args.precision = sweep_precision(skipped_backends())  # bf16 where this CPU runs it, as the CPU bench
    precision = args.precision or "fp32"
    strengths = tuple(float(v) for v in args.strengths.split(","))
    model_spec = ModelSpec(args.model, layers=args.layers)
    shape = VideoShape(*map(int, args.shape.split("x"))) if args.shape else PRESETS[args.model].default_shape
    t0 = time.perf_counter()
    results = header("bench_lora_stack", argv, machine=machine_info(),
                     model=args.model + (f" --layers {args.layers}" if args.layers else ""), shape=str(shape),
                     backend=args.backend, precision=precision, threads=args.threads, strengths=list(strengths),
                     distill_rank=args.distill_rank, style_rank=args.style_rank, style_targets=args.style_targets,
                     swaps=args.swaps, deployments={})
    with tempfile.TemporaryDirectory(prefix="wanrt-stack-") as tmp:
        files, shares = write_stack(model_spec, args, shape, Path(tmp))
        backends, rows = {}, results["deployments"]
        for i, (label, spec) in enumerate(deployments(files, strengths).items()):
            log(f"{label}: export + compile")
            backends[label], build_s = build(model_spec, spec, Path(tmp) / f"d{i}", args)
            eager = create_backend("eager", model=build_transformer(model_spec, spec)[0])
            feeds = feeds_for(eager, shape)
            err = rel_error(backends[label](*feeds), eager(*feeds))
            rows[label] = {"build_s": build_s, "rel_err": err, "gate": GATES[precision],
                           "passes_gate": err <= GATES[precision], "flop_share": shares[label]}
            del eager
        log("interleaved timing")
        for label, timing in interleaved(backends, feeds, args.rounds).items():
            rows[label].update(timing)
        log("swaps")
        results["swap"] = {**swap_costs(backends["all separate"], model_spec, files, args.swaps),
                           "build_s": rows["all separate"]["build_s"]}
        for b in backends.values():
            b.close()
    finish(results, t0)
    write_results(args.out, f"lora-stack-{args.model}" + (f"-l{args.layers}" if args.layers else ""), results,
                  render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
