"""The bench run: per sweep point an eager fp32 reference, then every backend on the same inputs (point.py), and
the results document with its report and plots."""

from __future__ import annotations

import gc
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.artifacts import atomic_output_dir, build_manifest, cache_root, check_output_dir, to_jsonable, write_manifest
from wanrt.dit_io import DitIO, VideoShape
from wanrt.engines import registry
from wanrt.errors import BadInputError, WanrtError
from wanrt.export.api import CHECKPOINT_MAX, CHECKPOINT_MIN
from wanrt.export.model import ModelSpec
from wanrt.jsonio import read_json
from wanrt.runtime import backends as B
from wanrt.runtime.bench.measure import LoadProbe
from wanrt.runtime.bench.peaks import kernel_for, measure_kernel
from wanrt.runtime.bench.plots import write_plots
from wanrt.runtime.bench.point import BenchSession, PointContext, run_point
from wanrt.runtime.bench.report import render_report
from wanrt.runtime.bench.spec import RESULTS_SCHEMA, BenchSpec, SweepPoint, make_inputs, sweep_points
from wanrt.runtime.bench.summary import summarize_runs
from wanrt.runtime.bench.sweep_store import BenchArtifacts
from wanrt.runtime.bench.ui import BenchUi
from wanrt.runtime.bench.video import VideoQuality
from wanrt.runtime.bench.vs_finetuned import FinetunedReference, check_reference_spec, write_pareto
from wanrt.runtime.flops import branches_from_model, forward_flops


class BenchInterrupted(WanrtError):
    """Ctrl-C (or SIGTERM's KeyboardInterrupt) during the sweep: the finished points are kept in results.json."""

    exit_code = 130


def run_bench(spec: BenchSpec, out_dir: str | Path | None = None, force: bool = False,
              artifacts_dir: Path | None = None, keep_artifacts: bool = False, progress: bool | None = None,
              console=None, command: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the sweep; returns the results document. With out_dir, results.json and report.md are rewritten after
    every point (payload.complete false until the end), so an interrupt or a crash keeps what is done, and
    `resume=True` runs only the points that results.json does not hold yet."""
    done: list[dict[str, Any]] = []
    if out_dir is not None:
        done = resumable_runs(out_dir, spec) if resume else []
        if not resume:
            check_output_dir(out_dir, force, kind="bench")
    elif resume:
        raise BadInputError("--resume needs the output directory of the interrupted run")
    device = torch.device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.repeats < 1 or spec.warmup < 0 or spec.batch not in (1, 2):
        raise BadInputError("--repeats >= 1, --warmup >= 0 and --batch 1 or 2")
    shape = spec.shape()
    check_reference_spec(spec)
    points = sweep_points(spec)
    _check_backends(spec, device)
    if spec.engine_dir and len(points) > 1:
        raise BadInputError("--artifact serves one sweep point; drop the --ranks/--lora-modes sweeps or --artifact")
    finished = {r["point"] for r in done}
    todo = [p for p in points if p.label not in finished]
    artifacts = BenchArtifacts(Path(artifacts_dir) if artifacts_dir else cache_root(), keep_artifacts)
    # spec.lora_seed is the CLI's --seed: preset weights and synthetic LoRAs, as in every other subcommand
    model_base = ModelSpec(source=spec.model, layers=spec.layers, dtype=spec.dtype, seed=spec.lora_seed)
    # shape range exported for the bench: the preset's, widened to the bench (and video) shape if needed
    vshape = spec.video_shape() if spec.video_quality else shape
    export_range = _export_range(model_base, [shape, vshape])

    ui = BenchUi(console, progress, total=len(todo) * len(spec.backends) * spec.repeats, points=len(points),
                 done=len(points) - len(todo))
    kernels = {name: kernel_for(name, spec.precision_of(name), device) for name in spec.backends}
    peak = {"method": "median of timed [n,k]x[k,n] products (n=k) in the kernel each backend runs, at the bench's "
                      "threads; the higher of start/end", "kernels": _kernel_peaks(kernels, device, spec.peak_size)}
    session = BenchSession(spec=spec, device=device, model_spec=model_base, artifacts=artifacts,
                           export_range=export_range, peak_kernels=kernels,
                           peaks={k: v["tflops"] for k, v in peak["kernels"].items()}, ui=ui,
                           probe=LoadProbe(device), video=VideoQuality(spec, vshape) if spec.video_quality else None)
    if spec.reference == "finetuned":  # the full fine-tune and the LoRAs extracted from it (issue 11)
        session.finetuned = FinetunedReference(session, shape)
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = list(done)

    def document(complete: bool, fvd=None) -> dict[str, Any]:
        results = _results_document(spec, shape, device, peak, runs, fvd, time.perf_counter() - t_start,
                                    complete, command, total_points=len(points))
        if session.finetuned is not None:
            results["payload"]["finetuned"] = session.finetuned.payload(runs)
        return results

    ui.plan(len(todo), len(points) - len(todo))
    fvd = _sweep(session, todo, len(points), shape, runs, document, out_dir)
    for name, end in _kernel_peaks(kernels, device, spec.peak_size).items():
        entry = peak["kernels"][name]
        entry["end"] = end
        entry["tflops"] = max((t for t in (entry["tflops"], end["tflops"]) if t), default=None)
    for run in runs:  # MFU against the best peak of the run's own kernel
        if run.get("status") == "ok":
            run["peak_kernel"] = kernels.get(run["backend"], run.get("peak_kernel"))
            best = peak["kernels"].get(run["peak_kernel"], {}).get("tflops")
            run["mfu"] = run["tflops"] / best if best else None
    results = document(True, fvd)
    if out_dir is not None:
        write_results(results, out_dir, force=True)
    if session.finetuned is not None:
        session.finetuned.close(keep_artifacts)
    return results


def _sweep(session: BenchSession, todo: list[SweepPoint], total: int, shape, runs: list[dict[str, Any]],
           document: Callable[[bool], dict[str, Any]], out_dir: str | Path | None) -> dict[str, Any] | None:
    """Run the points in `todo`, appending to `runs`; results.json is rewritten after every point, so Ctrl-C keeps
    what is done (BenchInterrupted says how to resume). Returns the FVD section (video quality) or None."""
    ui = session.ui
    try:
        with ui:
            for i, point in enumerate(todo):
                t_point = time.perf_counter()
                point_runs = run_point(_point_context(session, point, shape))
                runs += point_runs
                if out_dir is not None:  # what is done survives an interrupt or a crash of a later point
                    write_results(document(False), out_dir, force=True, plots=False)
                for run in point_runs:  # a progress line = a point that is on disk
                    ui.log_run(run)
                if i == 0:
                    ui.estimate(time.perf_counter() - t_point, len(todo) - 1)
            return session.video.fvd_all() if session.video is not None else None
    except KeyboardInterrupt:
        if session.finetuned is not None:  # the LoRAs extracted for this run (issue 11)
            session.finetuned.close(session.artifacts.keep)
        kept = len({r["point"] for r in runs})
        if out_dir is not None and runs:
            write_results(document(False), out_dir, force=True)
            raise BenchInterrupted(f"interrupted: {kept} of {total} points kept in {out_dir}/results.json; "
                                   "add --resume to the same command to finish") from None
        raise BenchInterrupted("interrupted before the first point finished; nothing was written") from None


def _results_document(spec, shape, device, peak, runs, fvd, wall_s, complete, command,
                      total_points) -> dict[str, Any]:
    payload = {
        "schema": RESULTS_SCHEMA,
        # false while the sweep runs (results.json is rewritten after every point) and after an interrupt
        "complete": complete,
        "points": {"done": len({r["point"] for r in runs}), "total": total_points},
        "shape": {"frames": shape.frames, "height": shape.height, "width": shape.width, "latent": list(shape.latent),
                  "batch": spec.batch, "tokens_per_forward": runs[0]["tokens"] * spec.batch if runs else None},
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "device": str(device),
        "peak": peak,
        "runs": runs,
        "fvd": fvd,
        "summary": summarize_runs(runs),
        "wall_s": wall_s,
    }
    results = build_manifest("bench", {"bench": spec}, payload)
    if command is not None:
        results["command"] = command
    return results


def resumable_runs(out_dir: str | Path, spec: BenchSpec) -> list[dict[str, Any]]:
    """The finished runs of an interrupted bench in out_dir, after checking it was the same sweep."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise BadInputError(f"--resume: {path} does not exist (nothing to resume; drop --resume)")
    try:
        results = read_json(path)  # bounded: size, depth, regular files only
        payload, old = results["payload"], results["specs"]["bench"]
    except (WanrtError, KeyError, TypeError):
        raise BadInputError(f"--resume: {path} is not a wanrt bench results file") from None
    if payload.get("complete", True):
        raise BadInputError(f"--resume: {path} is a finished run; nothing to resume")
    if spec.video_quality:
        raise BadInputError("--resume cannot continue a --video-quality run (FVD pools the videos of every point)")
    new = to_jsonable(spec)
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        k = differ[0]
        raise BadInputError(f"--resume: {path} was made with {k}={old.get(k)!r}, this command has {new.get(k)!r} "
                            f"({len(differ)} setting(s) differ); run the same command with --resume")
    return list(payload.get("runs", []))


def write_results(results: dict[str, Any], out_dir: str | Path, force: bool, plots: bool = True,
                  render: Callable[[dict[str, Any]], str] = render_report) -> None:
    """results.json, report.md (`render`'s: the sweep's, or the two-expert bench's) and (plots=True) the plots,
    written together (temp dir + rename)."""
    with atomic_output_dir(out_dir, force=force, kind="bench") as tmp:
        (tmp / "report.md").write_text(render(results))
        if plots:
            write_plots(results, tmp)
            write_pareto(results, tmp)
        # last: it lists the report and plots; Infinity is a measured PSNR (identical frames) the report reads back
        write_manifest(tmp, dict(results), name="results.json", allow_nan=True)


def _check_backends(spec: BenchSpec, device: torch.device) -> None:
    """Every backend asked for runs here at its precision, or the bench is refused before any work, in one line:
    an unknown name or a precision the CPU lacks (exit 2), a missing extra, GPU or CUDA build (exit 3)."""
    for name in spec.backends:
        if name not in B.REGISTRY:
            raise BadInputError(f"--backends {name!r}: choose from {', '.join(B.REGISTRY)}")
    engines = [b for b in spec.backends if registry.for_backend(b) is not None]
    if spec.trt_precision is not None and not engines:  # never a label on runs that ignored it
        raise BadInputError(f"--precision {spec.trt_precision}: only the engine backends "
                            f"({', '.join(registry.backends())}) take a precision; the others run at --dtype "
                            f"({spec.dtype}): use --dtype, or add an engine backend to --backends")
    for name in spec.backends:
        B.check_backend(name, device)
    for name in spec.backends:  # a precision a flavour does not build here: refused, never swapped for another
        flavour = registry.for_backend(name)
        why = flavour.refusal(spec.precision_of(name)) if flavour is not None else None
        if why is not None:
            raise BadInputError(f"--backends {name}: {why}")


def _kernel_peaks(kernels: dict[str, str], device: torch.device, size: int | None) -> dict[str, dict[str, Any]]:
    """{kernel: its measurement} for the kernels the backends run (runtime/bench/peaks.py)."""
    n = size or (2048 if device.type == "cpu" else 8192)
    out = {}
    for k in sorted(set(kernels.values())):
        out[k] = measure_kernel(k, n, n, n, device)
        out[k].setdefault("tflops", None)  # {"error": ...}: this machine cannot run it; MFU is then left out
    return out


def _point_context(session: BenchSession, point: SweepPoint, shape) -> PointContext:
    """The eager fp32 reference of one point: its outputs on the shared inputs, FLOPs and (optionally) video."""
    spec = session.spec
    if session.finetuned is not None:
        return session.finetuned.point_context(point, shape)
    lora_spec = point.lora_spec(spec.lora_seed)
    if point.mode == "full" and spec.finetuned:  # the full row is the real fine-tune, not a dense delta (issue 11)
        lora_spec = replace(lora_spec, rank=None, finetuned=spec.finetuned)
    session.ui.status(f"{point.label}: building the eager reference")
    ref_model, lora_summary = B.build_transformer(replace(session.model_spec, dtype="fp32"), lora_spec)
    config = dict(ref_model.config)
    feeds = DitIO(config).cfg_feeds(make_inputs(config, shape, spec.batch, spec.seed))
    ref_backend = B.create_backend("eager", model=ref_model, device=session.device)
    with torch.inference_mode():
        refs = [ref_backend(*f).float().cpu() for f in feeds]
    flops = forward_flops(config, shape.latent, spec.batch, lora=branches_from_model(ref_model), mode=point.mode)
    if session.video is not None:
        session.video.reference(point, ref_backend)
    del ref_backend, ref_model
    gc.collect()
    return PointContext(session=session, point=point, lora_spec=lora_spec, feeds=feeds, refs=refs, flops=flops,
                        lora_summary=lora_summary)


def _export_range(model_spec, shapes) -> tuple[Any, Any]:
    """(min, max) VideoShape for the bench's exports: None/None (the preset's own range) when every shape fits
    it, else that range widened to cover the shapes."""


    preset = model_spec.preset
    base_lo, base_hi = (preset.min_shape, preset.max_shape) if preset else (CHECKPOINT_MIN, CHECKPOINT_MAX)
    fits = all(base_lo.frames <= s.frames <= base_hi.frames and base_lo.height <= s.height <= base_hi.height
               and base_lo.width <= s.width <= base_hi.width for s in shapes)
    if fits:
        return None, None

    def bound(fn, base):
        return VideoShape(*(fn([getattr(base, a)] + [getattr(s, a) for s in shapes])
                            for a in ("frames", "height", "width")))

    lo, hi = bound(min, base_lo), bound(max, base_hi)
    return lo, hi
