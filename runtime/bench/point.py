"""One sweep point: create every backend, warm each up, time them side by side, then quality one by one.

State is carried by two objects instead of long parameter lists: a `BenchSession` (fixed for the whole sweep)
and a `PointContext` (one LoRA configuration with its inputs and eager references).
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.engines import registry
from wanrt.errors import WanrtError
from wanrt.runtime import backends as B
from wanrt.runtime.bench.measure import (LoadProbe, measure_memory, memory_in_use, percentile, rel_error,
                                         time_backend, timing_record)
from wanrt.runtime.bench.per_video import per_video
from wanrt.runtime.bench.spec import BenchSpec, SweepPoint
from wanrt.runtime.bench.sweep_store import BenchArtifacts
from wanrt.runtime.bench.ui import BenchUi
from wanrt.runtime.bench.video import VideoQuality

_RUN_ERRORS = (WanrtError, RuntimeError, ValueError, TypeError, OSError, ImportError)


@dataclass
class BenchSession:
    """What every point of one bench run shares."""

    spec: BenchSpec
    device: torch.device
    model_spec: Any  # ModelSpec of the timed backends (bench dtype)
    artifacts: BenchArtifacts
    export_range: tuple[Any, Any]  # (min, max) VideoShape of the exports; (None, None) = the preset's own
    peak_kernels: dict[str, str]  # backend -> the kernel its MFU is taken against (runtime/bench/peaks.py)
    peaks: dict[str, float | None]  # kernel -> TFLOP/s measured at the start (MFU until the end peaks are in)
    ui: BenchUi
    probe: LoadProbe
    video: VideoQuality | None = None
    finetuned: Any = None  # FinetunedReference when --reference finetuned (issue 11)


@dataclass
class PointContext:
    """One sweep point: its LoRA, the shared inputs (cond/uncond feeds) and eager fp32's outputs on them."""

    session: BenchSession
    point: SweepPoint
    lora_spec: Any
    feeds: list[tuple]
    refs: list[torch.Tensor]
    flops: dict[str, Any]
    lora_summary: dict[str, Any]
    # (run record, backend, artifact it owns) for every backend that was created
    live: list[tuple[dict, Any, Path | None]] = field(default_factory=list)

    @property
    def spec(self) -> BenchSpec:
        return self.session.spec


def _fail(run: dict[str, Any], e: BaseException) -> None:
    msg = str(e).splitlines()[0] if str(e) else ""
    run.update(status="failed", reason=f"{type(e).__name__}: {msg}")


def run_point(ctx: PointContext) -> list[dict[str, Any]]:
    """Create every backend of one point, warm each up, time them (interleaved step by step when
    spec.interleave, so drifting machine load hits all alike), then memory and quality one by one."""
    runs = _create_backends(ctx)
    samples = _warm_up(ctx)
    _time_point(ctx, samples)
    _finish_point(ctx, samples)
    ui, repeats = ctx.session.ui, ctx.spec.repeats
    for run in runs:
        run.setdefault("status", "failed")
        done = len(samples[id(run)][1]) if id(run) in samples else 0
        ui.advance(repeats - done)
    return runs


def _create_backends(ctx: PointContext) -> list[dict[str, Any]]:
    s, point, flops = ctx.session, ctx.point, ctx.flops
    runs = []
    for name in ctx.spec.backends:
        # a full fine-tune has no rank (point.rank only chose its targets' synthetic LoRA): say "full"
        rank = "full" if point.mode == "full" else point.rank
        run = {"point": point.label, "targets": point.targets, "mode": point.mode, "rank": rank,
               "backend": name, "dtype": ctx.spec.dtype, "batch": ctx.spec.batch, "tokens": flops["tokens"],
               "flops": {k: flops[k] for k in ("total", "base", "lora", "lora_share")}, "lora": ctx.lora_summary}
        runs.append(run)
        s.ui.status(f"{point.label}: preparing {name}")
        try:
            backend, artifact, setup = make_backend(ctx, name)
            run["setup_s"] = setup
            ctx.live.append((run, backend, artifact))
        except _RUN_ERRORS as e:
            _fail(run, e)
    return runs


def _warm_up(ctx: PointContext) -> dict[int, tuple[list[float], list[float]]]:
    """Memory on the first (cold) forward, then the warm-up steps: compilation and CUDA-graph capture must never
    land in a timed step. Returns empty sample lists keyed by id(run) for every backend that warmed up."""
    s = ctx.session
    samples: dict[int, tuple[list[float], list[float]]] = {}
    for run, backend, _ in list(ctx.live):
        s.ui.status(f"{ctx.point.label}: warming up {run['backend']}")
        try:
            run["memory"] = measure_memory(backend, ctx.feeds[0], s.device, run["setup_s"].pop("_mem_before", None))
            flavour = registry.for_backend(run["backend"])
            compiles = run["backend"] == "compile" or (flavour is not None and flavour.first_run_compiles)
            warm = max(ctx.spec.warmup, 1) if compiles else ctx.spec.warmup
            time_backend(backend, ctx.feeds, warm, 0, s.device)
            samples[id(run)] = ([], [])
        except _RUN_ERRORS as e:
            _fail(run, e)
    return samples


def _time_point(ctx: PointContext, samples: dict[int, tuple[list[float], list[float]]]) -> None:
    """The timed steps, re-timed (up to spec.retries) while the load probe says other work disturbed them."""
    s, spec = ctx.session, ctx.spec
    timed = [(run, b) for run, b, _ in ctx.live if id(run) in samples]
    order = [(rep, item) for rep in range(spec.repeats) for item in timed] if spec.interleave else \
        [(rep, item) for item in timed for rep in range(spec.repeats)]
    checks = []
    settle = spec.settle_s if spec.settle_s is not None else (0.1 if s.device.type == "cpu" else 0.0)
    for attempt in range(1 + spec.retries):
        for key in samples:
            samples[key] = ([], [])
        time.sleep(settle)
        before = s.probe.measure()
        for _, (run, backend) in order:
            if run.get("status") == "failed":
                continue
            s.ui.status(f"{ctx.point.label}: timing {run['backend']}" + (f" (retry {attempt})" if attempt else ""))
            try:
                fwd, steps = time_backend(backend, ctx.feeds, 0, 1, s.device, settle=settle)
                samples[id(run)][0].extend(fwd)
                samples[id(run)][1].extend(steps)
                if attempt == 0:
                    s.ui.advance(1)
            except _RUN_ERRORS as e:
                _fail(run, e)
        time.sleep(settle)
        checks.append(_interference_check(s.probe, before, s.probe.measure(), samples))
        if not checks[-1]["disturbed"]:
            break
    for run, _ in timed:
        run["interference"] = {"attempts": len(checks), "disturbed": checks[-1]["disturbed"], "checks": checks}


def _interference_check(probe: LoadProbe, before: float, after: float, samples) -> dict[str, Any]:
    spread = max((percentile(sorted(f), 90) / statistics.median(f) for f, _ in samples.values() if f),
                 default=1.0)
    check = {"probe_ratio_before": before / probe.best, "probe_ratio_after": after / probe.best,
             "p90_over_median_max": spread}
    check["disturbed"] = max(check["probe_ratio_before"], check["probe_ratio_after"]) > probe.tolerance \
        or spread > probe.tolerance
    return check


def _finish_point(ctx: PointContext, samples: dict[int, tuple[list[float], list[float]]]) -> None:
    """Memory, quality, video: one backend at a time, then release it."""
    s = ctx.session
    for run, backend, artifact in ctx.live:
        try:
            if run.get("status") != "failed" and id(run) in samples:
                fwd, steps = samples[id(run)]
                kernel = s.peak_kernels[run["backend"]]
                run.update(timing_record(fwd, steps, ctx.flops, ctx.spec.batch, s.peaks.get(kernel)),
                           peak_kernel=kernel)
                run["per_video"] = per_video(run["latency"]["forward"], ctx.spec.batch)
                run["setup_s"] = {**run.get("setup_s", {}), **backend.setup}
                run["backend_info"] = backend.describe()
                run["quality"] = _quality(ctx, run["backend"], backend)
                run["equal_quality"] = not run["quality"]["failures"]
                run["status"] = "ok"
        except _RUN_ERRORS as e:
            _fail(run, e)
        finally:
            backend.close()
            s.artifacts.release(artifact)
    ctx.live.clear()
    gc.collect()


def _precision(backend, spec: BenchSpec) -> str:
    p = backend.describe().get("precision")
    return p if isinstance(p, str) and p else spec.dtype


def _quality(ctx: PointContext, name: str, backend) -> dict[str, Any]:
    spec = ctx.spec
    precision = _precision(backend, spec)
    if ctx.session.finetuned is not None:  # distance to the full fine-tune, under the rank gate (issue 11)
        return ctx.session.finetuned.quality(ctx, name, backend, precision)
    gate = spec.gates.rel_err_for(precision)
    return compare_with_reference(ctx, name, backend, precision, "eager fp32", gate,
                                  lambda err: f"relative error {err:.3g} > {gate:g} ({precision})")


def compare_with_reference(ctx: PointContext, name: str, backend, precision: str, reference: str, gate: float,
                           failure: Callable[[float], str]) -> dict[str, Any]:
    """A run's quality record: relative error of its outputs to `ctx.refs` on the point's inputs against `gate`
    (`failure(err)` says why it missed), plus the video comparison when the bench makes videos."""
    video = ctx.session.video
    with torch.inference_mode():
        errs = [rel_error(backend(*f), r) for f, r in zip(ctx.feeds, ctx.refs)]
    quality: dict[str, Any] = {"precision": precision, "reference": reference, "rel_err": errs,
                               "rel_err_max": max(errs), "rel_err_gate": gate}
    failures = []
    if not quality["rel_err_max"] <= gate:
        failures.append(failure(quality["rel_err_max"]))
    if video is not None:
        ctx.session.ui.status(f"{ctx.point.label}: {name} video")
        vq = video.compare(ctx.point, name, backend)
        quality["video"] = vq
        failures += vq.get("failures", [])
    quality["failures"] = failures
    return quality


def make_backend(ctx: PointContext, name: str) -> tuple[Any, Path | None, dict[str, Any]]:
    """(backend, the artifact it owns or None, setup times) for backend `name` at this point. Eager and compile
    build the model from the specs; ort exports (cached); an engine backend exports and builds its flavour's
    engine (cached), or hands the export to a flavour that compiles it on load."""
    s, spec = ctx.session, ctx.spec
    device, artifacts = s.device, s.artifacts
    setup: dict[str, Any] = {}
    if name in ("eager", "compile"):
        t0 = time.perf_counter()
        setup["_mem_before"] = memory_in_use(device)
        model, _ = B.build_transformer(s.model_spec, ctx.lora_spec)
        setup["build_model_s"] = time.perf_counter() - t0
        opts = {"mode": spec.compile_mode} if name == "compile" else {}
        return B.create_backend(name, model=model, device=device, **opts), None, setup
    if spec.engine_dir:
        artifact, owned = Path(spec.engine_dir), None
    else:
        artifact, seconds = artifacts.onnx(s.model_spec, ctx.lora_spec, *s.export_range)
        setup["export_s"] = seconds
        setup["export_cached"] = seconds is None
        owned = artifact
    if name == "ort":
        setup["_mem_before"] = memory_in_use(device)
        return B.create_backend("ort", artifact=artifact, device=device), owned, setup
    flavour = registry.for_backend(name)
    if not spec.engine_dir and not flavour.loads_exports:  # built here first (cached); others compile the export
        onnx_dir = artifact
        artifact, seconds = artifacts.engine(onnx_dir, spec, name)
        setup["build_s"] = seconds
        artifacts.release(onnx_dir)
        owned = artifact
    setup["_mem_before"] = memory_in_use(device)
    options = {"threads": spec.threads, "cuda_graph": spec.cuda_graph, "precision": spec.precision_of(name)}
    options = {k: v for k, v in options.items() if k in flavour.runtime_options}
    return B.create_backend(name, artifact=artifact, device=device, **options), owned, setup
