"""`wanrt bench --pipeline RECIPES`: whole videos, stage by stage, eager against compiled (issue 21).

A DiT-only bench answers "how fast is a forward"; users ask "how long is a video". With 40 CFG steps the DiT
dominates, with a 4-step CFG-free schedule the VAE and encoders can (a Wan2GP run: denoise 26.4 s, VAE decode 77 s).
So this mode runs the whole WanImageToVideoPipeline per declared schedule (runtime/schedule.py RECIPES) and times
every stage where the pipeline makes the call (runtime/stages.py): text encode, CLIP image encode, VAE encode of the
conditioning frame, the DiT loop, VAE decode.

Rows: `eager` is diffusers' pipeline with the eager fp32 DiT, VAE and encoders: the reference for time and for
quality. Every other backend runs the DiT on its engine and the VAE (encode and decode) and both encoders on the
same backend's stage sessions where they exist (runtime/backend_names.StageBackend: ort, ov), else diffusers' own;
the row names which. A two-expert model (Wan2.2) runs both experts, each with its own seeded LoRA (seed + index),
switched at diffusers' boundary step.

Timing: untimed videos per (schedule, backend) first (first-run costs; their frames are the quality sample), then
`repeats` rounds, each running every backend once in an order rotated round by round, so drifting machine load
falls on all rows alike. Video seconds: the median over rounds with its distribution-free 95% interval
(measure.median_ci, >= 6 rounds). Speed-up: per round, eager's video seconds / the row's, paired within the round;
its median and interval the same way. Quality: the sample video against eager's of the same seed and schedule,
per frame, gated as `--video-quality` gates (PSNR >= 35 dB, LPIPS <= 0.02 by default); with `--video-seeds N`
over N seeds (N untimed videos per row, the first also the warm-up), and FVD between the two sets from N = 2.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.artifacts import atomic_output_dir, build_manifest, check_output_dir, cpu_info, write_manifest
from wanrt.engines import registry
from wanrt.errors import BadInputError, MissingDependencyError
from wanrt.export.api import LoraSpec
from wanrt.export.model import ModelSpec, model_experts
from wanrt.runtime import backends as B
from wanrt.runtime import metrics
from wanrt.runtime.backend_names import StageBackend
from wanrt.runtime.bench.measure import median_ci
from wanrt.runtime.bench.spec import BenchSpec
from wanrt.runtime.bench.video import DEFAULT_PROMPT, bench_image
from wanrt.runtime.components import component_geometry
from wanrt.runtime.experts import expert_pair
from wanrt.runtime.generate import compiled_stages
from wanrt.runtime.pipeline import build_pipeline, install_backend, run_pipeline
from wanrt.runtime.schedule import RECIPES, recipe
from wanrt.runtime.stages import STAGES, StageClock

SCHEMA = "wanrt.bench.pipeline/1"
REFERENCE = "eager"
GOAL = ("distill-4step", 1.5)  # issue 21: >= 1.5x eager per video on the 4-step schedule, at equal quality


def parse_recipes(text: str) -> tuple[str, ...]:
    """'distill-4step,wan-40step-cfg' or 'all' -> recipe names, each checked."""
    names = tuple(RECIPES) if text.strip() == "all" else tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise BadInputError("--pipeline is empty: name recipes (" + ", ".join(RECIPES) + ") or 'all'")
    for n in names:
        recipe(n, "--pipeline ")
    return names


def stage_backend_for(backend: str) -> str:
    """Where a row's VAE and encoders run: the backend's own stage sessions where it has them, else eager."""
    return backend if backend in StageBackend.values() else StageBackend.EAGER.value


def run_pipeline_bench(spec: BenchSpec, recipes: tuple[str, ...], out_dir: str | Path | None = None,
                       force: bool = False, cache_dir: Path | None = None, command: str | None = None,
                       say: Callable[[str], None] | None = None, components: str = "tiny",
                       text_layers: int | None = None, resident: str = "both") -> dict[str, Any]:
    """Time whole videos of every recipe on eager and every backend of `spec` (one LoRA configuration), the
    pipeline's other parts in geometry `components` (runtime/components.py); returns the results document and,
    with `out_dir`, writes results.json and report.md there."""
    say = say or (lambda _m: None)
    if out_dir is not None:
        check_output_dir(out_dir, force, kind="bench")
    _check(spec)
    preset = ModelSpec(source=spec.model, layers=spec.layers).preset  # a checkpoint: checked when the parts build
    dims = (preset.config["text_dim"], preset.config["image_dim"]) if preset else (None, None)
    geo, text_layers = component_geometry(components, *dims, text_layers)
    device = torch.device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    names = (REFERENCE, *[b for b in spec.backends if b != REFERENCE])
    for name in names:
        B.check_backend(name, device)
    shape = spec.shape()
    model_spec = ModelSpec(source=spec.model, layers=spec.layers, dtype="fp32", seed=spec.lora_seed)
    lora = LoraSpec(rank=spec.ranks[0], targets=spec.targets[0], mode=spec.modes[0], seed=spec.lora_seed)
    t0, load_start = time.perf_counter(), list(os.getloadavg())
    experts = model_experts(model_spec).names  # Wan2.2: both experts, each with its own seeded LoRA
    precision = spec.trt_precision or "fp32"  # every compiled row's: its DiT engine and its stage sessions
    if experts and precision != "fp32":
        raise BadInputError(f"--precision {precision}: a two-expert pipeline bench runs its engines at fp32")
    for name in names[1:]:  # before any work: only an engine flavour builds another precision
        if precision != "fp32" and registry.for_backend(name) is None:
            raise BadInputError(f"--precision {precision}: backend '{name}' runs fp32 (the model or its export as is)")
    rows: dict[str, dict[str, Any]] = {}
    try:  # every row loaded is closed, whatever fails
        for name in names:
            say(f"{name}: loading the DiT (r{lora.rank} {lora.mode}{', both experts' if experts else ''}) and the "
                f"other stages ({stage_backend_for(name)})")
            options = {"device": device, "cache_dir": cache_dir, "threads": spec.threads, "progress": say}
            row_precision = "fp32" if name == REFERENCE else precision
            if experts:
                loras = {e: replace(lora, seed=lora.seed + i) for i, e in enumerate(experts)}
                backend = expert_pair(name, model_spec, loras, resident=resident, **options)
            else:
                backend = B.backend_from_specs(name, model_spec, lora, precision=row_precision, **options)
            rows[name] = {"backend": backend, "stage_backend": stage_backend_for(name), "precision": row_precision}
        say(f"building the pipeline's {components} encoders and VAE")
        pipe = build_pipeline(rows[REFERENCE]["backend"], seed=spec.seed, components=components,
                              text_layers=text_layers)
        for row in rows.values():
            row["compiled"] = compiled_stages(pipe, row["stage_backend"], row["stage_backend"], spec.threads, say,
                                              row["precision"])
        image = bench_image(shape.height, shape.width, spec.seed)
        schedules = {r: _bench_recipe(r, rows, pipe, image, shape, spec, say) for r in recipes}
    finally:
        for row in rows.values():
            row["backend"].close()
        gc.collect()
    payload = {"schema": SCHEMA, "complete": True, "device": str(device), "cpu": cpu_info(),
               "threads": torch.get_num_threads() if device.type == "cpu" else None,
               "shape": {"frames": shape.frames, "height": shape.height, "width": shape.width,
                         "latent": list(shape.latent)},
               "components": {"name": components, "text_layers": text_layers, "text_layers_full": geo.text_layers},
               "lora": {"rank": lora.rank, "mode": lora.mode, "targets": lora.targets, "seed": lora.seed},
               "experts": list(experts), "experts_resident": resident if experts else None,
               "rows": {n: {"stage_backend": r["stage_backend"], "precision": r["precision"],
                            "describe": r["backend"].describe()}
                        for n, r in rows.items()},
               "schedules": schedules, "goal": _goal(schedules), "wall_s": time.perf_counter() - t0,
               # the CPU may be shared: stage times are only as quiet as the machine was
               "load_average": {"start": load_start, "end": list(os.getloadavg())}}
    results = build_manifest("bench", {"bench": spec, "pipeline": list(recipes), "components": components,
                                       "text_layers": text_layers}, payload)
    if command is not None:
        results["command"] = command
    if out_dir is not None:
        with atomic_output_dir(out_dir, force=True, kind="bench") as tmp:
            (tmp / "report.md").write_text(render_pipeline_report(results))
            write_manifest(tmp, dict(results), name="results.json")
    return results


def _check(spec: BenchSpec) -> None:
    """What a pipeline bench does not do, refused in one line before any work."""
    if len(spec.ranks) * len(spec.modes) * len(spec.targets) != 1:
        raise BadInputError("a pipeline bench runs one LoRA configuration: give one --rank, one --lora-mode and "
                            "one --targets")
    if spec.modes[0] == "full":
        raise BadInputError("--lora-mode full: a pipeline bench deploys a LoRA, merged or separate")
    if spec.batch != 1 or spec.engine_dir or spec.reference != "eager":
        raise BadInputError("a pipeline bench runs the pipeline's batch-1 calls on engines it exports, against "
                            "eager fp32: --batch 2, --artifact and --reference finetuned are for the DiT bench")
    if spec.video_quality:
        raise BadInputError("--video-quality: a pipeline bench always compares its videos with eager's "
                            "(--video-seeds N: over N seeds, with FVD from 2)")


def _bench_recipe(name: str, rows: dict[str, dict[str, Any]], pipe, image, shape, spec: BenchSpec,
                  say: Callable[[str], None]) -> dict[str, Any]:
    schedule = RECIPES[name].schedule()
    order = list(rows)

    def video(row_name: str, seed: int = spec.seed) -> tuple[Any, float, dict[str, float]]:
        row = rows[row_name]
        install_backend(pipe, row["backend"])
        gc.collect()
        clock = StageClock()
        t = time.perf_counter()
        frames, _ = run_pipeline(pipe, image, DEFAULT_PROMPT, frames=shape.frames, height=shape.height,
                                 width=shape.width, schedule=schedule, seed=seed, clock=clock,
                                 compiled=row["compiled"])
        return frames, time.perf_counter() - t, clock.ordered()

    seeds = range(spec.seed, spec.seed + spec.video_seeds)
    say(f"{name}: {len(seeds)} untimed video(s) per row ({schedule.describe()})")
    samples = {n: [video(n, s)[0] for s in seeds] for n in order}
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {n: [] for n in order}
    for i in range(spec.repeats):
        say(f"{name}: round {i + 1}/{spec.repeats}")
        for n in order[i % len(order):] + order[:i % len(order)]:
            _, seconds, stages = video(n)
            runs[n].append((seconds, stages))
    out = {"schedule": schedule.to_dict(), "rounds": spec.repeats, "rows": {}}
    for n in order:
        seconds = [s for s, _ in runs[n]]
        ratios = [e / s for (e, _), s in zip(runs[REFERENCE], seconds)]
        out["rows"][n] = {
            "video_s": _stat(seconds), "speedup": None if n == REFERENCE else _stat(ratios),
            "stages_s": {k: statistics.median(st.get(k, 0.0) for _, st in runs[n]) for k in STAGES[:-1]},
            "quality": None if n == REFERENCE else _quality(samples[REFERENCE], samples[n], spec)}
    return out


def _quality(refs: list, gens: list, spec: BenchSpec) -> dict[str, Any]:
    """Per frame over every seed's video (PSNR min, LPIPS max, the gates), and FVD between the two sets when there
    are >= 2 videos of >= 9 frames and the I3D weights exist (else the reason)."""
    per = [_frames(r, g) for r, g in zip(refs, gens)]
    psnr_min = min(min(p["psnr"]) for p, _ in per)
    lpips = [x for p, _ in per for x in (p["lpips"] or [])]
    lpips_max = max(lpips) if lpips else None
    out = {"videos": len(per), "psnr_min": psnr_min, "ssim_min": min(min(p["ssim"]) for p, _ in per),
           "lpips_max": lpips_max, "lpips_note": per[0][1], "failures": spec.gates.video_failures(psnr_min, lpips_max),
           "fvd": None}
    frames = len(refs[0])
    if len(refs) < 2 or frames < 9:
        out["fvd_note"] = f"FVD needs >= 2 videos (--video-seeds) of >= 9 frames (have {len(refs)} of {frames})"
        return out
    try:
        res = metrics.fvd(refs, gens, metrics.FVDConfig(clip_len=min(16, frames)))
        out["fvd"] = {"fvd": res.fvd, "noise_floor": res.noise_floor, "floor_kind": res.floor_kind}
    except (MissingDependencyError, BadInputError) as e:
        out["fvd_note"] = f"FVD not available: {e}"
    return out


def _stat(values: list[float]) -> dict[str, Any]:
    ci = median_ci(values) if values else None
    return {"n": len(values), "median": statistics.median(values) if values else None,
            "ci95": list(ci) if ci else None, "samples": [round(v, 6) for v in values]}


def _frames(ref, gen) -> tuple[dict[str, Any], str | None]:
    try:
        return metrics.compare_videos(ref, gen, lpips=True), None
    except (MissingDependencyError, BadInputError) as e:  # LPIPS weights missing: PSNR/SSIM still gate
        return metrics.compare_videos(ref, gen, lpips=False), f"LPIPS not available: {e}"


def _goal(schedules: dict[str, Any]) -> dict[str, Any]:
    """Issue 21's goal on this run: a row at equal quality whose per-video speed-up on the 4-step schedule has its
    95% interval's lower end at >= 1.5 (met), its median there (met on the median only), or neither."""
    name, target = GOAL
    if name not in schedules:
        return {"target": target, "schedule": name, "verdict": "not run"}
    best = None
    for row, r in schedules[name]["rows"].items():
        if r["speedup"] is None or (r["quality"] and r["quality"]["failures"]):
            continue
        if best is None or r["speedup"]["median"] > best[1]["median"]:
            best = (row, r["speedup"])
    if best is None:
        return {"target": target, "schedule": name, "verdict": "no compiled row at equal quality"}
    ci = best[1]["ci95"]
    verdict = "met" if ci and ci[0] >= target else "met on the median only" if best[1]["median"] >= target \
        else "not met"
    return {"target": target, "schedule": name, "row": best[0], "speedup": best[1]["median"], "ci95": ci,
            "verdict": verdict}


def render_pipeline_report(results: dict[str, Any]) -> str:
    p = results["payload"]
    spec, sh, lora = results["specs"]["bench"], p["shape"], p["lora"]
    g = p["goal"]
    L = [f"# wanrt bench --pipeline: {spec['model']}, whole videos per stage", "",
         f"Command: `{results.get('command', '')}`  ",
         f"Video {sh['frames']}x{sh['height']}x{sh['width']} (latent {'x'.join(map(str, sh['latent']))}); LoRA "
         f"r{lora['rank']} {lora['mode']} ({lora['targets']}); {p['device']} ({p['cpu']['model']}; "
         f"{', '.join(p['cpu']['isa'])}), threads {p['threads']}; wall "
         f"{p['wall_s']:.0f} s; load average at start {'/'.join(f'{v:.1f}' for v in p['load_average']['start'])}, "
         f"end {'/'.join(f'{v:.1f}' for v in p['load_average']['end'])}.", "",
         _components_line(p["components"]), "",
         "Rows: DiT backend / its stage backend (precision). Seconds: medians over rounds [distribution-free 95% "
         "CI of the median; 'n<6' when too few rounds]; speed-up: eager's video / the row's, paired per round. "
         "Quality: the row's video against eager's, per frame.", ""]
    for name, s in p["schedules"].items():
        L += [f"## {name}: {s['schedule']['steps']} steps, {'CFG' if s['schedule']['cfg'] else 'no CFG'}, "
              f"{s['schedule']['forwards']} DiT forwards, {s['rounds']} rounds", "",
              "| row | video s | speed-up | " + " | ".join(STAGES[:-1]) + " | min PSNR | max LPIPS | quality |",
              "|---|---|---|" + "---|" * (len(STAGES) - 1) + "---|---|---|"]
        for row, r in s["rows"].items():
            q = r["quality"]
            verdict = "reference" if q is None else "; ".join(q["failures"]) or "equal"
            about = p["rows"][row]
            L.append(f"| {row} / {about['stage_backend']} ({about['precision']}) | {_fmt(r['video_s'], 's')} | "
                     f"{'-' if r['speedup'] is None else _fmt(r['speedup'], 'x')} | "
                     + " | ".join(f"{r['stages_s'][k]:.3f}" for k in STAGES[:-1])
                     + f" | {'-' if q is None else format(q['psnr_min'], '.1f')} | "
                     f"{'-' if q is None or q['lpips_max'] is None else format(q['lpips_max'], '.4f')} | {verdict} |")
        fvd = [f"{row}: FVD {r['quality']['fvd']['fvd']:.2f} against eager ({_floor(r['quality']['fvd'])}, "
               f"{r['quality']['videos']} videos per set)" for row, r in s["rows"].items()
               if r["quality"] and r["quality"]["fvd"]]
        notes = {r["quality"].get("fvd_note") for r in s["rows"].values() if r["quality"]} - {None}
        L += [*fvd, *sorted(notes), ""]
    L.append(f"Goal (issue 21): >= {g['target']}x eager per video on {g['schedule']} at equal quality: "
             f"**{g['verdict']}**" + (f" (best: {g['row']}, {g['speedup']:.2f}x)" if g.get("row") else "") + ".")
    return "\n".join(L) + "\n"


def _floor(fvd: dict[str, Any]) -> str:
    floor = fvd["noise_floor"]
    return "no noise floor: too few clips" if floor is None else f"noise floor {floor:.2f}, {fvd['floor_kind']}"


def _components_line(c: dict[str, Any]) -> str:
    sliced = c["text_layers"] != c["text_layers_full"]
    scale = c["text_layers_full"] / c["text_layers"]
    return (f"Other stages: the `{c['name']}` geometry (runtime/components.py); UMT5 {c['text_layers']} of "
            f"{c['text_layers_full']} layers" + (f" (the text stage ran those: x{scale:g} is the whole encoder's time)"
                                                 if sliced else "") + ".")


def _fmt(stat: dict[str, Any], unit: str) -> str:
    ci = stat["ci95"]
    return f"{stat['median']:.3f}{unit} " + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n<6]")

