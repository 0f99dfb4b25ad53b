"""`wanrt bench` of Wan2.2's two experts (issue 19): per backend, each expert's forward latency with its interval, its
error against eager fp32 of the same expert and LoRA, the expert loads, and the whole video of each declared schedule.

One LoRA configuration (a two-expert model is not swept): from `--model`, each expert its own seeded synthetic LoRA
at one rank, mode and target set; from an experts artifact (`--artifact`), the stacks its manifest names, and no
eager reference (the artifact's LoRA files are not rebuilt here, so quality is "not measured").

Timing: `repeats` rounds after `warmup` steps per expert; in each round both experts run one CFG step (two forwards,
conditional then unconditional), the order alternating round by round. With both experts resident nothing loads in
the rounds. With one resident (runtime/experts.py) a round's first expert is the one open and its second is not:
each switch closes one backend and loads the other, timed by the pair's loader apart from the forwards, and the
step right after a load is kept apart ("cold": first-run costs a real video pays once per load) from the warm steps
the latency is taken from.

Whole video of a schedule (runtime/schedule.py RECIPES, on the tiny pipeline's scheduler): the forwards each expert
runs (its steps by diffusers' boundary split, x2 with CFG) x its median forward, summed; the interval adds the ends
of each median's RATIO_LEVEL interval (jointly >= 95%). Reload per video (one resident): a schedule that crosses the
boundary loads both experts in every video after the first (high again, then low), each costing its median load plus
its cold step's excess over the warm median; the VAE, encoders and scheduler are not in it.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import build_manifest, check_output_dir
from wanrt.dit_io import DitIO
from wanrt.errors import BadInputError
from wanrt.export.model import ModelSpec
from wanrt.runtime import backends as B
from wanrt.runtime.bench.experts_report import render_experts_report
from wanrt.runtime.bench.measure import median_ci, rel_error, summarize, time_backend
from wanrt.runtime.bench.per_video import RATIO_LEVEL
from wanrt.runtime.bench.run import write_results
from wanrt.runtime.bench.spec import BenchSpec, make_inputs
from wanrt.runtime.experts import ExpertPair, expert_pair, is_experts_artifact
from wanrt.runtime.pipeline import expert_steps
from wanrt.runtime.schedule import RECIPES

SCHEMA = "wanrt.bench.experts/1"
EXPERTS = ("high", "low")


def experts_lora_specs(spec: BenchSpec) -> dict[str, Any]:
    """{expert: LoraSpec}: the sweep's one point, each expert its own seed (spec.lora_seed + its index)."""
    from wanrt.export.api import LoraSpec  # lazy: keeps this module's import list to what the bench itself runs

    if len(spec.ranks) * len(spec.modes) * len(spec.targets) != 1:
        raise BadInputError("a two-expert bench runs one LoRA configuration: give one --rank, one --lora-mode and "
                            "one --targets")
    return {e: LoraSpec(rank=spec.ranks[0], targets=spec.targets[0], mode=spec.modes[0], seed=spec.lora_seed + i)
            for i, e in enumerate(EXPERTS)}


def run_experts_bench(spec: BenchSpec, resident: str = "both", out_dir: str | Path | None = None,
                      force: bool = False, cache_dir: Path | None = None, command: str | None = None,
                      say=None, artifact_loras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bench every backend of `spec` on the two-expert model (or `spec.engine_dir`, an experts artifact); returns
    the results document and, with `out_dir`, writes results.json and report.md there. `artifact_loras`: the
    {expert: LoraSpec} an artifact was exported with, where the caller made it (tools/bench_experts.py): its
    experts are then compared with eager fp32 of the same stacks."""
    say = say or (lambda _m: None)
    if out_dir is not None:
        check_output_dir(out_dir, force, kind="bench")
    if spec.batch != 1:
        raise BadInputError("a two-expert bench times batch-1 forwards (diffusers runs CFG as two calls): --batch 1")
    if spec.video_quality or spec.reference != "eager":
        raise BadInputError("a two-expert bench compares each expert with eager fp32; --video-quality and "
                            "--reference finetuned are for one-transformer models")
    device = torch.device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    artifact = spec.engine_dir
    if artifact is not None and not is_experts_artifact(artifact):
        raise BadInputError(f"--artifact {artifact}: not a two-expert artifact (wanrt export/build of Wan2.2)")
    model_spec = ModelSpec(source=spec.model, layers=spec.layers, dtype=spec.dtype, seed=spec.lora_seed)
    loras = artifact_loras if artifact else experts_lora_specs(spec)
    for name in spec.backends:
        B.check_backend(name, device)
    if spec.trt_precision is not None and artifact is None:
        raise BadInputError("--precision: a two-expert --model runs engines at their default precision; build the "
                            "experts at another (wanrt build --precision) and bench that with --artifact")
    shape, t0, load_start = spec.shape(), time.perf_counter(), list(os.getloadavg())
    runs, refs, feeds = [], None, None
    for name in spec.backends:
        say(f"{name}: loading the experts (resident: {resident})")
        pair = expert_pair(name, model_spec, loras, artifact=artifact, device=device, cache_dir=cache_dir,
                           threads=spec.threads, cuda_graph=spec.cuda_graph, resident=resident)
        try:
            if feeds is None:
                feeds = DitIO(pair.config).cfg_feeds(make_inputs(pair.config, shape, 1, spec.seed))
                refs = None if loras is None else eager_references(model_spec, loras, feeds)
            say(f"{name}: timing {spec.repeats} rounds")
            runs.append(bench_pair(name, pair, feeds, refs, spec, device))
        finally:
            pair.close()
        gc.collect()
    payload = {"schema": SCHEMA, "complete": True, "resident": resident, "boundary_ratio": pair.boundary_ratio,
               "shape": {"frames": shape.frames, "height": shape.height, "width": shape.width,
                         "latent": list(shape.latent), "batch": 1},
               "lora": {e: None if loras is None else {"rank": s.rank, "mode": s.mode, "targets": s.targets,
                                                       "seed": s.seed} for e, s in (loras or {}).items()},
               "threads": torch.get_num_threads() if device.type == "cpu" else None, "device": str(device),
               "runs": runs, "wall_s": time.perf_counter() - t0,
               # the CPU may be shared: loads and forwards are only as quiet as the machine was
               "load_average": {"start": load_start, "end": list(os.getloadavg())}}
    results = build_manifest("bench", {"bench": spec, "experts_resident": resident}, payload)
    if command is not None:
        results["command"] = command
    if out_dir is not None:
        write_results(results, out_dir, force=True, plots=False, render=render_experts_report)
    return results


def eager_references(model_spec: ModelSpec, loras: dict[str, Any], feeds: list[tuple]) -> dict[str, list]:
    """Eager fp32 outputs of each expert with its LoRA on the shared feeds (one expert built at a time)."""
    out = {}
    for e in EXPERTS:
        model, _ = B.build_transformer(replace(model_spec, dtype="fp32", expert=e), loras[e])
        ref = B.EagerBackend(model)
        with torch.inference_mode():
            out[e] = [ref(*f).float().cpu() for f in feeds]
        del ref, model
        gc.collect()
    return out


def bench_pair(name: str, pair: ExpertPair, feeds: list[tuple], refs: dict[str, list] | None, spec: BenchSpec,
               device: torch.device) -> dict[str, Any]:
    """One backend's record: per expert latency, quality and loads; per schedule the whole video."""
    precision = spec.precision_of(name)
    experts: dict[str, Any] = {}
    for e in EXPERTS:  # warm-up and quality, one expert after the other (with one resident: high, then low)
        backend = pair.load(e)
        precision = getattr(backend, "precision", None) or precision  # an engine's own (an artifact's members)
        gate = spec.gates.rel_err_for(precision)
        time_backend(backend, feeds, spec.warmup, 0, device)
        with torch.inference_mode():
            errs = None if refs is None else [rel_error(backend(*f), r) for f, r in zip(feeds, refs[e])]
        experts[e] = {"quality": None if errs is None else {"rel_err_max": max(errs), "gate": gate,
                                                            "passed": max(errs) <= gate}}
        del backend  # with one resident, the next load frees it: no reference may outlive its turn
    samples = time_rounds(pair, feeds, spec, device)
    loads = pair.loads()
    for e in EXPERTS:
        warm, cold = samples[e]
        load_s = [x["seconds"] for x in loads["loads"] if x["expert"] == e]
        step = summarize(warm["step"])
        cold_ms = statistics.median(s * 1e3 for s in cold) if cold else None
        experts[e].update({
            "latency": {"forward": summarize(warm["forward"]), "step": step},
            "loads": {"n": len(load_s), "median_s": statistics.median(load_s) if load_s else None,
                      "ci95_s": list(median_ci(load_s) or ()) or None, "samples_s": load_s,
                      "cold_step_median_ms": cold_ms, "n_cold": len(cold)},
            # what one more load of this expert costs a video: the load, and its first step's excess over warm
            "reload_s": (statistics.median(load_s) + max(0.0, (cold_ms - step["median_ms"]) / 1e3)
                         if load_s and cold_ms is not None else None)})
    ok = all(x["quality"] is None or x["quality"]["passed"] for x in experts.values())
    return {"backend": name, "precision": precision, "status": "ok", "equal_quality": ok, "experts": experts,
            "loads": {k: loads[k] for k in ("count", "seconds", "peak_alive")},
            "per_video": experts_per_video(experts, pair.boundary_ratio, pair.resident)}


def time_rounds(pair: ExpertPair, feeds: list[tuple], spec: BenchSpec,
                device: torch.device) -> dict[str, tuple[dict[str, list], list[float]]]:
    """{expert: ({forward, step} warm samples in s, cold step samples in s)}: `spec.repeats` rounds of one CFG step
    per expert, the order alternating; a step right after its expert loaded is cold (module docstring)."""
    settle = spec.settle_s if spec.settle_s is not None else (0.1 if device.type == "cpu" else 0.0)
    out = {e: ({"forward": [], "step": []}, []) for e in EXPERTS}
    for r in range(spec.repeats):
        for e in (EXPERTS[::-1] if r % 2 == 0 else EXPERTS):  # low first: the warm-up leaves it open
            before = len(pair.loader.loads) if pair.loader else 0
            backend = pair.load(e)  # a load, if any, happens here: outside the clock
            fwd, steps = time_backend(backend, feeds, 0, 1, device, settle=settle)
            del backend  # (as in bench_pair)
            warm, cold = out[e]
            if pair.loader and len(pair.loader.loads) > before:
                cold += steps
            else:
                warm["forward"] += fwd
                warm["step"] += steps
    return out


def experts_per_video(experts: dict[str, Any], boundary_ratio: float, resident: str) -> dict[str, Any]:
    """{recipe: steps and forwards per expert, DiT seconds with its interval, and (one resident) the reload}."""
    out = {}
    for name, recipe in RECIPES.items():
        schedule = recipe.schedule()
        steps = expert_steps(schedule, boundary_ratio)
        forwards = {e: n * schedule.forwards_per_step for e, n in steps.items()}
        seconds, lo, hi = 0.0, 0.0, 0.0
        for e, n in forwards.items():
            fwd = experts[e]["latency"]["forward"]
            ci = median_ci(fwd["samples_ms"], RATIO_LEVEL) if n else (0.0, 0.0)
            seconds += n * fwd["median_ms"] / 1e3
            lo, hi = (lo + n * ci[0] / 1e3, hi + n * ci[1] / 1e3) if ci and lo is not None else (None, None)
        used = [e for e in EXPERTS if forwards[e]]
        # one resident: a video after the first loads each expert it uses, unless it uses one only (no switch)
        reload_s = sum(experts[e]["reload_s"] or 0.0 for e in used) if resident == "one" and len(used) > 1 else 0.0
        out[name] = {"steps": schedule.steps, "cfg": schedule.cfg, "expert_steps": steps, "forwards": forwards,
                     "dit_s": seconds, "dit_ci95_s": None if lo is None else [lo, hi],
                     "loads_per_video": len(used) if resident == "one" and len(used) > 1 else 0,
                     "reload_s": reload_s, "video_s": seconds + reload_s}
    return out
