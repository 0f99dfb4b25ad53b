"""`wanrt bench`: the same inputs through every backend, over LoRA ranks x modes x targets, at equal quality.

Protocol (docs/bench.md): for each sweep point (targets, mode, rank) the transformer is built once from the specs;
each backend gets `warmup` untimed steps, then `repeats` timed denoising steps. A step is two DiT forwards
(classifier-free guidance: conditional, then unconditional text, as diffusers' Wan pipeline runs them); every
forward is timed on its own with the device synchronised before each clock read. Reported: median and p90 per
forward and per step, tokens/s, achieved TFLOP/s (analytic FLOPs, runtime/flops.py) and MFU against the matmul
peak measured in the same run, peak memory (a separate forward, so sampling never perturbs the timings) and
setup times (export, build, compile, load).

Quality: every forward's output is compared with eager fp32 on the same inputs (relative L2 error) and gated by
precision; with video quality on, each backend also generates a short video with the tiny pipeline, compared
per frame (PSNR, SSIM, LPIPS) with eager's, and FVD between the sets when I3D weights are installed. A backend that
misses a gate is reported as "not equal quality" and left out of every speed comparison.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.errors import BadInputError, MissingDependencyError, WanrtError

RESULTS_SCHEMA = "wanrt.bench/1"
MODES = ("base", "merged", "separate", "full")
DEFAULT_PROMPT = "a red fox trotting through fresh snow, soft morning light"


# ------------------------------------------------------------------------------------------------ specs
@dataclass(frozen=True)
class QualityGates:
    """Equal-quality thresholds (all configurable from the CLI)."""

    rel_err: tuple[tuple[str, float], ...] = (("fp32", 1e-4), ("bf16", 1e-2), ("fp16", 1e-2), ("fp8", 5e-2))
    psnr_db: float = 35.0  # per-frame minimum
    lpips: float = 0.02  # per-frame maximum

    def rel_err_for(self, precision: str) -> float:
        table = dict(self.rel_err)
        if precision not in table:
            raise BadInputError(f"no relative-error gate for precision {precision!r} (have {', '.join(table)})")
        return table[precision]


@dataclass(frozen=True)
class BenchSpec:
    model: str = "small"
    layers: int | None = None
    dtype: str = "fp32"
    frames: int | None = None  # None: the preset's default shape
    height: int | None = None
    width: int | None = None
    batch: int = 1  # per DiT forward; a CFG step is two forwards
    ranks: tuple[int, ...] = (16,)
    modes: tuple[str, ...] = ("merged",)
    targets: tuple[str, ...] = ("all",)
    backends: tuple[str, ...] = ("eager",)
    include_base: bool = True  # a no-LoRA row per bench (the cost every mode is measured against)
    repeats: int = 10  # timed denoising steps (2 forwards each)
    warmup: int = 2  # untimed steps per backend
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0
    lora_seed: int = 0
    gates: QualityGates = QualityGates()
    video_quality: bool = False
    video_steps: int = 2
    video_frames: int | None = None  # None: the bench shape
    video_height: int | None = None
    video_width: int | None = None
    video_seeds: int = 1  # videos per backend and point (FVD needs at least 2 per set)
    cuda_graph: bool = False
    trt_precision: str | None = None  # None: the bench dtype; fp8 builds FP8 engines (gated at fp8's tolerance)
    compile_mode: str | None = None
    peak_size: int | None = None  # matmul size of the peak measurement (default: 2048 CPU, 8192 GPU)
    engine_dir: str | None = None  # ort/trt with a single prebuilt artifact instead of exporting per point
    interleave: bool = True  # time the point's backends step by step in turn (fair under drifting load)
    retries: int = 2  # re-time a point disturbed by other work on the machine (LoadProbe)
    settle_s: float | None = None  # idle before each timed step (None: 0.1 s on CPU, 0 on GPU); see time_backend

    def shape(self):
        from wanrt.export.onnx_export import check_video_shape
        from wanrt.export.presets import PRESETS

        preset = PRESETS.get(self.model)
        default = preset.default_shape if preset else None
        f = self.frames or (default.frames if default else None)
        h = self.height or (default.height if default else None)
        w = self.width or (default.width if default else None)
        if None in (f, h, w):
            raise BadInputError("--frames/--height/--width are required for a checkpoint (no preset default)")
        return check_video_shape(f, h, w)

    def video_shape(self):
        from wanrt.export.onnx_export import check_video_shape

        s = self.shape()
        return check_video_shape(self.video_frames or s.frames, self.video_height or s.height,
                                 self.video_width or s.width)


@dataclass(frozen=True)
class SweepPoint:
    """One LoRA configuration of the sweep."""

    targets: str | None  # None for the base row
    mode: str  # base | merged | separate | full
    rank: int | None  # None for base; the synthetic rank whose targets size the dense delta for full

    @property
    def label(self) -> str:
        if self.mode == "base":
            return "base"
        rank = "full" if self.mode == "full" else f"r{self.rank}"
        return f"{self.targets}/{self.mode}/{rank}"

    def lora_spec(self, seed: int):
        from wanrt.export.api import LoraSpec

        if self.mode == "base":
            return LoraSpec()
        return LoraSpec(rank=self.rank, targets=self.targets, mode=self.mode, seed=seed)


def sweep_points(spec: BenchSpec) -> list[SweepPoint]:
    for m in spec.modes:
        if m not in MODES[1:]:
            raise BadInputError(f"--modes {m!r}: choose from merged, separate, full")
    for r in spec.ranks:
        if r < 1:
            raise BadInputError(f"--ranks {r}: ranks are positive integers")
    points = [SweepPoint(None, "base", None)] if spec.include_base else []
    for targets in spec.targets:
        for mode in spec.modes:
            if mode == "full":  # one dense delta per target set (rank only picks targets; it is irrelevant)
                points.append(SweepPoint(targets, "full", max(spec.ranks)))
                continue
            points += [SweepPoint(targets, mode, r) for r in spec.ranks]
    if not points:
        raise BadInputError("the sweep is empty (no modes and no base row)")
    return points


# ------------------------------------------------------------------------------------------------ measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(samples_s: list[float]) -> dict[str, Any]:
    """Latency statistics in milliseconds: median, p90 (linear interpolation), mean, min, max, all samples."""
    ms = sorted(s * 1e3 for s in samples_s)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median_ms": statistics.median(ms), "p90_ms": percentile(ms, 90),
            "mean_ms": statistics.fmean(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "samples_ms": [round(s * 1e3, 4) for s in samples_s]}


def percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None,
                        repeats: int = 5) -> dict[str, Any]:
    """Achievable dense matmul throughput on this device and dtype (median of `repeats` timed [n,n]x[n,n])."""
    n = size or (2048 if device.type == "cpu" else 8192)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(2):
            torch.mm(a, b)
        _sync(device)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    med = statistics.median(times)
    return {"dtype": str(dtype).replace("torch.", ""), "size": n, "repeats": repeats, "median_s": med,
            "tflops": flops / med / 1e12, "samples_tflops": [flops / t / 1e12 for t in times],
            "threads": torch.get_num_threads() if device.type == "cpu" else None}


class LoadProbe:
    """Detects other work on the machine: a fixed matmul timed before and after each point's timing. A point whose
    probe runs `tolerance` x slower than the best probe seen (or whose p90/median exceeds it) is re-timed up to
    `retries` times and, if still disturbed, flagged in the results."""

    def __init__(self, device: torch.device, size: int = 768, tolerance: float = 1.5):
        self.device, self.tolerance = device, tolerance
        gen = torch.Generator().manual_seed(1)
        self.a = torch.randn(size, size, generator=gen).to(device)
        self.best = math.inf
        self.measure()

    def measure(self) -> float:
        times = []
        with torch.inference_mode():
            for _ in range(3):
                _sync(self.device)
                t0 = time.perf_counter()
                torch.mm(self.a, self.a)
                _sync(self.device)
                times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        self.best = min(self.best, t)
        return t


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _RssSampler:
    """Peak resident memory while a block runs (a thread reading /proc/self/statm every `interval` s)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def memory_in_use(device: torch.device) -> int:
    """Bytes in use now: process RSS on CPU, device memory in use on CUDA (all allocators, ORT/TensorRT too)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        return total - free
    gc.collect()
    return _rss_bytes()


def measure_memory(backend, feed: tuple, device: torch.device, before_load: int | None = None) -> dict[str, Any]:
    """Memory of a backend: what loading it took (`load_mb`, from `before_load` = memory_in_use() taken just before
    its weights were built/loaded) plus the growth during its first, cold forward (`forward_mb`: activations,
    workspaces, arenas; for `compile` also compilation). `peak_mb` = load_mb + forward_mb. Call it on the first
    forward (warm-up), never inside the timed steps."""
    if device.type == "cuda":
        start = memory_in_use(device)
        torch.cuda.reset_peak_memory_stats(device)
        backend(*feed)
        torch.cuda.synchronize(device)
        end = memory_in_use(device)
        alloc0 = torch.cuda.memory_allocated(device)
        out = {"kind": "cuda", "torch_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
               "torch_peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
               "device_used_mb": end / 2**20,
               "forward_mb": max(end - start, torch.cuda.max_memory_allocated(device) - alloc0, 0) / 2**20}
    else:
        with _RssSampler() as s:
            backend(*feed)
        out = {"kind": "cpu-rss", "process_rss_peak_mb": s.peak / 2**20, "forward_mb": (s.peak - s.start) / 2**20}
        start = s.start
    out["load_mb"] = max(start - before_load, 0) / 2**20 if before_load is not None else None
    out["peak_mb"] = (out["load_mb"] or 0.0) + out["forward_mb"]
    return out


def time_backend(backend, feeds: list[tuple], warmup: int, repeats: int, device: torch.device,
                 tick: Callable[[], None] | None = None, settle: float = 0.0) -> tuple[list[float], list[float]]:
    """Timed forwards: `feeds` = [cond, uncond] input tuples; each step runs both. Returns (forward samples s,
    step samples s = the sum of a step's two forwards). `settle`: idle seconds before each timed step, so worker
    threads still spinning from the previous backend (ONNX Runtime's pool, OpenMP) never steal its cores."""
    with torch.inference_mode():
        for _ in range(warmup):
            for feed in feeds:
                backend(*feed)
        _sync(device)
        fwd, steps = [], []
        for _ in range(repeats):
            if settle:
                time.sleep(settle)
            step = 0.0
            for feed in feeds:
                _sync(device)
                t0 = time.perf_counter()
                backend(*feed)
                _sync(device)
                dt = time.perf_counter() - t0
                fwd.append(dt)
                step += dt
            steps.append(step)
            if tick:
                tick()
    return fwd, steps


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_2 / ||ref||_2 in float64."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape:
        raise BadInputError(f"output shape {tuple(out.shape)} differs from eager's {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def make_inputs(config: dict[str, Any], shape, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded fp32 CPU inputs shared by every backend: latents, one timestep, cond/uncond text, image."""
    from wanrt.export.presets import IMAGE_TOKENS, TEXT_TOKENS

    gen = torch.Generator().manual_seed(seed)
    f, h, w = shape.latent
    out = {
        "latents": torch.randn(batch, config["in_channels"], f, h, w, generator=gen),
        "timestep": torch.full((batch,), 757.0),
        "text": torch.randn(batch, TEXT_TOKENS, config["text_dim"], generator=gen),
        "text_uncond": torch.randn(batch, TEXT_TOKENS, config["text_dim"], generator=gen),
        "image": None,
    }
    if config.get("image_dim") is not None:
        out["image"] = torch.randn(batch, IMAGE_TOKENS, config["image_dim"], generator=gen)
    return out


def bench_image(height: int, width: int, seed: int):
    """A deterministic conditioning image: smooth colour gradients plus seeded texture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 7.0)], -1)
    img = np.clip(img * 0.8 + 0.2 * rng.random((height, width, 3)), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------------ the run
class _Artifacts:
    """ONNX exports (and TensorRT engines) per sweep point, cached by spec hash; removed after use unless kept
    or already present before this run."""

    def __init__(self, root: Path, keep: bool):
        self.root, self.keep = root, keep
        self.made: list[Path] = []

    def onnx(self, model_spec, lora_spec, shape_lo, shape_hi) -> tuple[Path, float | None]:
        from wanrt.artifacts import spec_hash
        from wanrt.runtime.backends import export_artifact

        # same key as backend_from_specs for the preset's own range, so exports are shared with generate/serve
        key = spec_hash(model_spec, lora_spec) if shape_lo is None and shape_hi is None else \
            spec_hash(model_spec, lora_spec, shape_lo, shape_hi)
        path = self.root / "exports" / key
        if (path / "manifest.json").is_file():
            return path, None
        _, seconds = export_artifact(model_spec, lora_spec, path, min_shape=shape_lo, max_shape=shape_hi,
                                     force=True)
        self.made.append(path)
        return path, seconds

    def engine(self, onnx_dir: Path, spec: BenchSpec) -> tuple[Path, float | None]:
        """A TensorRT engine for one ONNX artifact (wanrt.engines.build), built on this run's GPU."""
        try:
            from wanrt.engines.build import EngineSpec, build_engine_from_onnx_dir
        except ImportError as e:
            raise MissingDependencyError(f"backend 'trt' in a sweep needs wanrt.engines (TensorRT): {e}") from None
        precision = spec.trt_precision or spec.dtype
        path = self.root / "engines" / f"{onnx_dir.name}-{precision}"
        if (path / "manifest.json").is_file():
            return path, None
        t0 = time.perf_counter()
        build_engine_from_onnx_dir(onnx_dir, EngineSpec(precision=precision, progress=False), path, force=True)
        self.made.append(path)
        return path, time.perf_counter() - t0

    def release(self, path: Path | None) -> None:
        if path is not None and not self.keep and path in self.made:
            shutil.rmtree(path, ignore_errors=True)
            self.made.remove(path)


def _precision(backend, spec: BenchSpec) -> str:
    p = backend.describe().get("precision")
    return p if isinstance(p, str) and p else spec.dtype


def run_bench(spec: BenchSpec, out_dir: str | Path | None = None, force: bool = False, artifacts_dir: Path | None = None,
              keep_artifacts: bool = False, progress: bool | None = None, console=None,
              command: str | None = None) -> dict[str, Any]:
    """Run the sweep; returns the results document (and writes results.json, report.md, plots into out_dir)."""
    from wanrt.artifacts import build_manifest, check_output_dir, atomic_output_dir, write_json
    from wanrt.export.model import ModelSpec
    from wanrt.runtime import backends as B
    from wanrt.runtime.flops import branches_from_model, forward_flops

    if out_dir is not None:
        check_output_dir(out_dir, force)
    device = torch.device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.repeats < 1 or spec.warmup < 0 or spec.batch not in (1, 2):
        raise BadInputError("--repeats >= 1, --warmup >= 0 and --batch 1 or 2")
    shape = spec.shape()
    points = sweep_points(spec)
    for name in spec.backends:
        if name not in B.REGISTRY:
            raise BadInputError(f"--backends {name!r}: choose from {', '.join(B.REGISTRY)}")
    disabled = {}
    for name in spec.backends:
        try:
            B.check_backend(name, device)
        except MissingDependencyError as e:
            disabled[name] = str(e)
    if spec.engine_dir and len(points) > 1:
        raise BadInputError("--engine serves one sweep point; drop --ranks/--modes sweeps or --engine")
    artifacts = _Artifacts(Path(artifacts_dir) if artifacts_dir else B.default_cache_dir(), keep_artifacts)
    model_base = ModelSpec(source=spec.model, layers=spec.layers, dtype=spec.dtype, seed=0)
    ref_spec = replace(model_base, dtype="fp32")
    # shape range exported for the bench: the preset's, widened to the bench (and video) shape if needed
    vshape = spec.video_shape() if spec.video_quality else shape
    lo, hi = _export_range(model_base, [shape, vshape])

    ui = _Ui(console, progress, total=len(points) * len(spec.backends) * spec.repeats)
    runs: list[dict[str, Any]] = []
    peak_start = measure_matmul_peak(device, _peak_dtype(spec, device), spec.peak_size)
    probe = LoadProbe(device)
    video_ctx = _VideoQuality(spec, vshape) if spec.video_quality else None
    t_start = time.perf_counter()
    with ui:
        for point in points:
            lora_spec = point.lora_spec(spec.lora_seed)
            ui.status(f"{point.label}: building the eager reference")
            # 1. eager fp32 reference model, its outputs and (optionally) its video
            ref_model, lora_summary = B.build_transformer(ref_spec, lora_spec)
            config = dict(ref_model.config)
            inputs = make_inputs(config, shape, spec.batch, spec.seed)
            feeds = [(inputs["latents"], inputs["timestep"], inputs["text"], inputs["image"]),
                     (inputs["latents"], inputs["timestep"], inputs["text_uncond"], inputs["image"])]
            ref_backend = B.create_backend("eager", model=ref_model, device=device)
            with torch.inference_mode():
                refs = [ref_backend(*f).float().cpu() for f in feeds]
            flops = forward_flops(config, shape.latent, spec.batch, lora=branches_from_model(ref_model),
                                  mode=point.mode)
            if video_ctx is not None:
                video_ctx.reference(point, ref_backend)
            del ref_backend, ref_model
            gc.collect()
            # 2. every backend of the point, on the same inputs
            point_runs = _run_point(spec, point, feeds, refs, flops, lora_summary, model_base, lora_spec, artifacts,
                                    lo, hi, device, disabled, peak_start["tflops"], video_ctx, ui, probe)
            runs += point_runs
        fvd = video_ctx.fvd_all() if video_ctx is not None else None
    peak_end = measure_matmul_peak(device, _peak_dtype(spec, device), spec.peak_size)
    peak = {"start": peak_start, "end": peak_end, "tflops": max(peak_start["tflops"], peak_end["tflops"]),
            "method": "median of timed torch.mm [n,n]x[n,n] at the bench's threads; the higher of start/end"}
    for run in runs:  # MFU against the run's best peak measurement
        if run.get("status") == "ok":
            run["mfu"] = run["tflops"] / peak["tflops"] if peak["tflops"] else None
    payload = {
        "schema": RESULTS_SCHEMA,
        "shape": {"frames": shape.frames, "height": shape.height, "width": shape.width, "latent": list(shape.latent),
                  "batch": spec.batch, "tokens_per_forward": runs[0]["tokens"] * spec.batch if runs else None},
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "device": str(device),
        "peak": peak,
        "backends_disabled": disabled,
        "runs": runs,
        "fvd": fvd,
        "summary": summarize_runs(runs, spec),
        "wall_s": time.perf_counter() - t_start,
    }
    results = build_manifest("bench", {"bench": spec}, payload)
    if command is not None:
        results["command"] = command
    if out_dir is not None:
        with atomic_output_dir(out_dir, force=force) as tmp:
            write_json(tmp / "results.json", results)
            (tmp / "report.md").write_text(render_report(results))
            write_plots(results, tmp)
    ui.final_table(results)
    return results


def _fail(run: dict[str, Any], e: BaseException) -> None:
    msg = str(e).splitlines()[0] if str(e) else ""
    run.update(status="failed", reason=f"{type(e).__name__}: {msg}")


_RUN_ERRORS = (WanrtError, RuntimeError, ValueError, TypeError, OSError, ImportError)


def _run_point(spec: BenchSpec, point: SweepPoint, feeds, refs, flops, lora_summary, model_spec, lora_spec,
               artifacts: "_Artifacts", lo, hi, device, disabled, peak_tflops, video_ctx, ui,
               probe: "LoadProbe") -> list[dict[str, Any]]:
    """Create every backend of one point, warm each up, time them (interleaved step by step when
    spec.interleave, so drifting machine load hits all alike), then memory and quality one by one."""
    runs, live = [], []  # live: (run, backend, artifact)
    for name in spec.backends:
        run = {"point": point.label, "targets": point.targets, "mode": point.mode, "rank": point.rank,
               "backend": name, "dtype": spec.dtype, "batch": spec.batch, "tokens": flops["tokens"],
               "flops": {k: flops[k] for k in ("total", "base", "lora", "lora_share")}, "lora": lora_summary}
        runs.append(run)
        if name in disabled:
            run.update(status="disabled", reason=disabled[name])
            continue
        ui.status(f"{point.label}: preparing {name}")
        try:
            backend, artifact, setup = _make_backend(name, spec, model_spec, lora_spec, artifacts, lo, hi, device)
            run["setup_s"] = setup
            live.append((run, backend, artifact))
        except _RUN_ERRORS as e:
            _fail(run, e)
    # warm-up (compile happens here), then timing
    samples: dict[int, tuple[list[float], list[float]]] = {}
    for run, backend, _ in list(live):
        ui.status(f"{point.label}: warming up {run['backend']}")
        try:
            # memory on the first (cold) forward, then the warm-up steps; compilation and CUDA-graph capture
            # must never land in a timed step
            run["memory"] = measure_memory(backend, feeds[0], device, run["setup_s"].pop("_mem_before", None))
            warm = max(spec.warmup, 1) if run["backend"] in ("compile", "trt") else spec.warmup
            time_backend(backend, feeds, warm, 0, device)
            samples[id(run)] = ([], [])
        except _RUN_ERRORS as e:
            _fail(run, e)
    timed = [(run, b, a) for run, b, a in live if id(run) in samples]
    order = [(rep, item) for rep in range(spec.repeats) for item in timed] if spec.interleave else \
        [(rep, item) for item in timed for rep in range(spec.repeats)]
    checks = []
    settle = spec.settle_s if spec.settle_s is not None else (0.1 if device.type == "cpu" else 0.0)
    for attempt in range(1 + spec.retries):
        for key in samples:
            samples[key] = ([], [])
        time.sleep(settle)
        before = probe.measure()
        for _, (run, backend, _) in order:
            if run.get("status") == "failed":
                continue
            ui.status(f"{point.label}: timing {run['backend']}" + (f" (retry {attempt})" if attempt else ""))
            try:
                fwd, steps = time_backend(backend, feeds, 0, 1, device, settle=settle)
                samples[id(run)][0].extend(fwd)
                samples[id(run)][1].extend(steps)
                if attempt == 0:
                    ui.advance(1)
            except _RUN_ERRORS as e:
                _fail(run, e)
        time.sleep(settle)
        after = probe.measure()
        spread = max((percentile(sorted(f), 90) / statistics.median(f) for f, _ in samples.values() if f),
                     default=1.0)
        check = {"probe_ratio_before": before / probe.best, "probe_ratio_after": after / probe.best,
                 "p90_over_median_max": spread}
        check["disturbed"] = max(check["probe_ratio_before"], check["probe_ratio_after"]) > probe.tolerance \
            or spread > probe.tolerance
        checks.append(check)
        if not check["disturbed"]:
            break
    for run, _, _ in timed:
        run["interference"] = {"attempts": len(checks), "disturbed": checks[-1]["disturbed"], "checks": checks}
    # memory, quality, video: one backend at a time, then release it
    for run, backend, artifact in live:
        try:
            if run.get("status") != "failed" and id(run) in samples:
                fwd, steps = samples[id(run)]
                run.update(_timing_record(fwd, steps, flops, spec.batch, peak_tflops))
                run["setup_s"] = {**run.get("setup_s", {}), **backend.setup}
                run["backend_info"] = backend.describe()
                run["quality"] = _quality(spec, point, run["backend"], backend, feeds, refs, video_ctx, ui)
                run["equal_quality"] = not run["quality"]["failures"]
                run["status"] = "ok"
        except _RUN_ERRORS as e:
            _fail(run, e)
        finally:
            backend.close()
            artifacts.release(artifact)
    live.clear()
    gc.collect()
    for run in runs:
        run.setdefault("status", "failed")
        done = len(samples[id(run)][1]) if id(run) in samples else 0
        ui.advance(spec.repeats - done)
        ui.log_run(run)
    return runs


def _quality(spec: BenchSpec, point: SweepPoint, name: str, backend, feeds, refs, video_ctx, ui) -> dict[str, Any]:
    precision = _precision(backend, spec)
    with torch.inference_mode():
        errs = [rel_error(backend(*f), r) for f, r in zip(feeds, refs)]
    gate = spec.gates.rel_err_for(precision)
    quality: dict[str, Any] = {"precision": precision, "reference": "eager fp32", "rel_err": errs,
                               "rel_err_max": max(errs), "rel_err_gate": gate}
    failures = []
    if not quality["rel_err_max"] <= gate:
        failures.append(f"relative error {quality['rel_err_max']:.3g} > {gate:g} ({precision})")
    if video_ctx is not None:
        ui.status(f"{point.label}: {name} video")
        vq = video_ctx.compare(point, name, backend)
        quality["video"] = vq
        failures += vq.get("failures", [])
    quality["failures"] = failures
    return quality


def _export_range(model_spec, shapes) -> tuple[Any, Any]:
    """(min, max) VideoShape for the bench's exports: None/None (the preset's own range) when every shape fits
    it, else that range widened to cover the shapes."""
    from wanrt.export.presets import VideoShape

    from wanrt.export.api import CHECKPOINT_MAX, CHECKPOINT_MIN

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


def _peak_dtype(spec: BenchSpec, device: torch.device) -> torch.dtype:
    from wanrt.export.model import DTYPES

    if device.type == "cpu":
        return torch.float32
    return DTYPES.get(spec.dtype, torch.bfloat16)


def _make_backend(name, spec: BenchSpec, model_spec, lora_spec, artifacts: _Artifacts, lo, hi, device):
    from wanrt.runtime import backends as B

    setup: dict[str, Any] = {}
    if name in ("eager", "compile"):
        t0 = time.perf_counter()
        setup["_mem_before"] = memory_in_use(device)
        model, _ = B.build_transformer(model_spec, lora_spec)
        setup["build_model_s"] = time.perf_counter() - t0
        opts = {"mode": spec.compile_mode} if name == "compile" else {}
        return B.create_backend(name, model=model, device=device, **opts), None, setup
    if spec.engine_dir:
        artifact, owned = Path(spec.engine_dir), None
    else:
        artifact, seconds = artifacts.onnx(model_spec, lora_spec, lo, hi)
        setup["export_s"] = seconds
        setup["export_cached"] = seconds is None
        owned = artifact
    if name == "ort":
        setup["_mem_before"] = memory_in_use(device)
        return B.create_backend("ort", artifact=artifact, device=device), owned, setup
    if not spec.engine_dir:
        onnx_dir = artifact
        artifact, seconds = artifacts.engine(onnx_dir, spec)
        setup["build_s"] = seconds
        artifacts.release(onnx_dir)
        owned = artifact
    setup["_mem_before"] = memory_in_use(device)
    return B.create_backend("trt", artifact=artifact, device=device, cuda_graph=spec.cuda_graph), owned, setup


def _timing_record(fwd: list[float], steps: list[float], flops: dict, batch: int, peak_tflops: float):
    f, s = summarize(fwd), summarize(steps)
    tokens = flops["tokens"] * batch
    med = f["median_ms"] / 1e3
    tflops = flops["total"] / med / 1e12
    return {"latency": {"forward": f, "step": s},
            "tokens_per_s": {"forward": tokens / med, "step": tokens / (s["median_ms"] / 1e3)},
            "tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None}


# ------------------------------------------------------------------------------------------------ video quality
class _VideoQuality:
    """Generate one short video per (point, backend) with the tiny pipeline and compare with eager fp32."""

    def __init__(self, spec: BenchSpec, shape):
        from wanrt.runtime.generate import GenerateSpec

        self.spec, self.shape = spec, shape
        self.gen_specs = [GenerateSpec(prompt=DEFAULT_PROMPT, frames=shape.frames, height=shape.height,
                                       width=shape.width, steps=spec.video_steps, seed=spec.seed + i)
                          for i in range(spec.video_seeds)]
        self.image = bench_image(shape.height, shape.width, spec.seed)
        self.pipe = None
        self.refs: dict[str, list] = {}
        self.videos: dict[str, list] = {}  # backend -> videos over all points (FVD sets)
        self.ref_all: list = []
        self.lpips_note: str | None = None

    def _generate(self, backend) -> list:
        from wanrt.runtime.generate import generate_video
        from wanrt.runtime.pipeline import build_pipeline, install_backend

        if self.pipe is None:
            self.pipe = build_pipeline(backend, seed=self.spec.seed)
        else:
            install_backend(self.pipe, backend)
        return [generate_video(backend, self.image, g, pipe=self.pipe)[0] for g in self.gen_specs]

    def reference(self, point: SweepPoint, backend) -> None:
        videos = self._generate(backend)
        self.refs[point.label] = videos
        self.ref_all += videos

    def compare(self, point: SweepPoint, name: str, backend) -> dict[str, Any]:
        videos = self._generate(backend)
        self.videos.setdefault(name, []).extend(videos)
        per_video = []
        for ref, gen in zip(self.refs[point.label], videos):
            per_video.append(self._frames(ref, gen))
        psnr = [p for v in per_video for p in v["psnr"]]
        ssim = [p for v in per_video for p in v["ssim"]]
        lp = [p for v in per_video for p in (v["lpips"] or [])]
        out: dict[str, Any] = {"videos": len(videos), "frames": self.shape.frames, "steps": self.spec.video_steps,
                               "psnr": psnr, "ssim": ssim, "lpips": lp or None,
                               "psnr_min": min(psnr), "ssim_min": min(ssim), "lpips_max": max(lp) if lp else None,
                               "lpips_note": self.lpips_note, "failures": []}
        gates = self.spec.gates
        if not out["psnr_min"] >= gates.psnr_db:
            out["failures"].append(f"video PSNR {out['psnr_min']:.2f} dB < {gates.psnr_db:g} dB")
        if lp and not out["lpips_max"] <= gates.lpips:
            out["failures"].append(f"video LPIPS {out['lpips_max']:.4f} > {gates.lpips:g}")
        return out

    def _frames(self, ref, gen) -> dict[str, Any]:
        from wanrt.runtime import metrics

        if self.lpips_note is None:
            try:
                return metrics.compare_videos(ref, gen, lpips=True)
            except MissingDependencyError as e:
                self.lpips_note = f"LPIPS not available: {e}"
            except BadInputError as e:
                self.lpips_note = f"LPIPS not available: {e}"
        return metrics.compare_videos(ref, gen, lpips=False)

    def fvd_all(self) -> dict[str, Any]:
        """FVD of each backend's videos against eager's (same points and seeds), when I3D weights exist."""
        out: dict[str, Any] = {}
        if len(self.ref_all) < 2:
            return {"available": False, "reason": "FVD needs at least 2 videos per set (raise --video-seeds or "
                                                  "sweep more points)"}
        if self.shape.frames < 9:
            return {"available": False, "reason": f"FVD needs videos of at least 9 frames (have {self.shape.frames})"}
        from wanrt.runtime import metrics

        config = metrics.FVDConfig(clip_len=min(16, self.shape.frames))
        for name, videos in self.videos.items():
            try:
                res = metrics.fvd(self.ref_all, videos, config)
                out[name] = {"fvd": res.fvd, "noise_floor": res.noise_floor, "floor_kind": res.floor_kind,
                             "n_videos": res.n_gen_videos}
            except (MissingDependencyError, BadInputError) as e:
                return {"available": False, "reason": f"FVD not available: {e}"}
        return {"available": True, "per_backend": out, "clip_len": config.clip_len}


# ------------------------------------------------------------------------------------------------ summary
def _ok(run) -> bool:
    return run.get("status") == "ok" and run.get("equal_quality", False)


def _med(run: dict[str, Any], kind: str) -> float:
    return run["latency"][kind]["median_ms"]


def summarize_runs(runs: list[dict[str, Any]], spec: BenchSpec) -> dict[str, Any]:
    """Comparisons between equal-quality runs only: backend speedups over eager, separate-mode overhead against
    its FLOP share, and the goals of the CPU benchmark."""
    by = {(r["point"], r["backend"]): r for r in runs}
    speedups = []
    for r in runs:
        if r["backend"] == "eager" or not _ok(r):
            continue
        e = by.get((r["point"], "eager"))
        if e is not None and _ok(e):
            speedups.append({"point": r["point"], "backend": r["backend"],
                             "speedup_forward": _med(e, "forward") / _med(r, "forward"),
                             "speedup_step": _med(e, "step") / _med(r, "step")})
    overhead = []
    for r in runs:
        if r["mode"] != "separate" or not _ok(r):
            continue
        m = by.get((f"{r['targets']}/merged/r{r['rank']}", r["backend"]))
        if m is None or not _ok(m):
            continue
        ov = r["latency"]["forward"]["median_ms"] / m["latency"]["forward"]["median_ms"] - 1.0
        share = r["flops"]["lora"] / r["flops"]["base"]
        overhead.append({"targets": r["targets"], "rank": r["rank"], "backend": r["backend"], "overhead": ov,
                         "flop_share": share, "gap_points": 100.0 * (ov - share)})
    not_equal = [{"point": r["point"], "backend": r["backend"], "failures": r["quality"]["failures"]}
                 for r in runs if r.get("status") == "ok" and not r.get("equal_quality", False)]
    failed = [{"point": r["point"], "backend": r["backend"], "status": r["status"], "reason": r.get("reason")}
              for r in runs if r.get("status") != "ok"]
    disturbed = sorted({r["point"] for r in runs if r.get("interference", {}).get("disturbed")})
    retimed = sorted({r["point"] for r in runs if r.get("interference", {}).get("attempts", 1) > 1})
    ort = [s["speedup_forward"] for s in speedups if s["backend"] == "ort"]
    r16 = [o for o in overhead if o["rank"] == 16]
    goals = {
        "ort_speedup_ge_1.3": {"values": ort, "min": min(ort) if ort else None,
                               "median": statistics.median(ort) if ort else None,
                               "met": (min(ort) >= 1.3) if ort else None},
        "separate_r16_within_2_points": {"values": [{k: o[k] for k in ("targets", "backend", "gap_points")}
                                                    for o in r16],
                                         "met": all(abs(o["gap_points"]) <= 2.0 for o in r16) if r16 else None},
    }
    # merged LoRAs at any rank run the base model's graph: the spread of those rows is the run's noise floor
    noise = {}
    for be in sorted({r["backend"] for r in runs}):
        same = [_med(r, "forward") for r in runs if r["backend"] == be and _ok(r) and r["mode"] in ("base", "merged")]
        if len(same) >= 2:
            noise[be] = {"rows": len(same), "min_ms": min(same), "max_ms": max(same),
                         "spread": (max(same) - min(same)) / statistics.median(same)}
    return {"speedups": speedups, "separate_overhead": overhead, "not_equal_quality": not_equal, "failed": failed,
            "retimed_points": retimed, "disturbed_points": disturbed, "noise_floor": noise, "goals": goals}


# ------------------------------------------------------------------------------------------------ report
def _fmt(v, digits=1, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.{digits}f}%"
    return f"{v:,.{digits}f}"


def render_report(results: dict[str, Any]) -> str:
    p = results["payload"]
    spec = results["specs"]["bench"]
    m = results.get("machine", {})
    lines = [f"# wanrt bench: {spec['model']} ({spec['dtype']}, {p['device']})", ""]
    lines += [f"- command: `{results.get('command', '')}`",
              f"- machine: {m.get('cpu', m.get('processor', '?'))}, {m.get('cpu_count')} CPUs, "
              f"{m.get('mem_total_gib', '?')} GiB" + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
              f"- threads: {p.get('threads')}; versions: " + ", ".join(
                  f"{k} {v}" for k, v in results.get("versions", {}).items()
                  if k in ("torch", "onnxruntime", "onnxruntime-gpu", "diffusers", "tensorrt", "tensorrt_rtx")),
              f"- shape: {p['shape']['frames']}x{p['shape']['height']}x{p['shape']['width']} (latent "
              f"{'x'.join(map(str, p['shape']['latent']))}), batch {p['shape']['batch']}, "
              f"{p['shape']['tokens_per_forward']} video tokens per forward; a step = 2 forwards (CFG)",
              f"- protocol: {spec['warmup']} warm-up steps, {spec['repeats']} timed steps per backend"
              f"{' (interleaved across backends)' if spec.get('interleave') else ''}, "
              f"{spec.get('settle_s') if spec.get('settle_s') is not None else (0.1 if p['device'] == 'cpu' else 0)}"
              f" s idle before each step; median / p90; mem MB = "
              + ("resident memory taken by loading the backend + growth during its first forward" if p["device"] == "cpu"
                 else "device memory taken by loading the backend + growth during its first forward"),
              f"- matmul peak ({p['peak']['start']['dtype']}, n={p['peak']['start']['size']}): "
              f"{p['peak']['start']['tflops'] * 1e3:.1f} GFLOP/s at start, {p['peak']['end']['tflops'] * 1e3:.1f} "
              f"at end; MFU uses {p['peak']['tflops'] * 1e3:.1f}",
              "- equal-quality gates: rel. error " + ", ".join(f"{k} <= {v:g}" for k, v in spec["gates"]["rel_err"])
              + f"; video PSNR >= {spec['gates']['psnr_db']:g} dB, LPIPS <= {spec['gates']['lpips']:g}", ""]
    if p.get("backends_disabled"):
        lines += ["Disabled backends:", ""] + [f"- {k}: {v}" for k, v in p["backends_disabled"].items()] + [""]
    runs = p["runs"]
    targets = [None] + sorted({r["targets"] for r in runs if r["targets"] is not None})
    for tg in targets:
        rows = [r for r in runs if r["targets"] == tg]
        if not rows:
            continue
        lines += [f"## {'base model (no LoRA)' if tg is None else 'targets: ' + tg}", "",
                  "| mode | rank | backend | fwd median ms | fwd p90 ms | step median ms | step p90 ms | tokens/s "
                  "| TFLOP/s | MFU | mem MB | LoRA FLOPs | rel. err | equal quality |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            rank = "full" if r["mode"] == "full" else ("-" if r["rank"] is None else r["rank"])
            if r.get("status") != "ok":
                lines.append(f"| {r['mode']} | {rank} | {r['backend']} | {r['status']}: {r.get('reason', '')} "
                             "| | | | | | | | | | |")
                continue
            q = r["quality"]
            eq = "yes" if r["equal_quality"] else "**NOT EQUAL QUALITY**: " + "; ".join(q["failures"])
            mark = "*" if r.get("interference", {}).get("disturbed") else ""
            lines.append(
                f"| {r['mode']} | {rank} | {r['backend']}{mark} | {_fmt(r['latency']['forward']['median_ms'])} "
                f"| {_fmt(r['latency']['forward']['p90_ms'])} | {_fmt(r['latency']['step']['median_ms'])} "
                f"| {_fmt(r['latency']['step']['p90_ms'])} | {_fmt(r['tokens_per_s']['forward'], 0)} "
                f"| {_fmt(r['tflops'], 3)} | {_fmt(r.get('mfu'), 1, pct=True)} | {_fmt(_mem(r), 0)} "
                f"| {_fmt(r['flops']['lora_share'], 2, pct=True)} | {q['rel_err_max']:.2e} | {eq} |")
        lines.append("")
    s = p["summary"]
    if s["speedups"]:
        lines += ["## Speed-up over eager (equal-quality runs only)", "",
                  "| point | backend | per forward | per step |", "|---|---|---:|---:|"]
        lines += [f"| {x['point']} | {x['backend']} | {x['speedup_forward']:.2f}x | {x['speedup_step']:.2f}x |"
                  for x in s["speedups"]] + [""]
    if s["separate_overhead"]:
        lines += ["## Separate-mode LoRA overhead against its FLOP share", "",
                  "overhead = separate / merged forward latency - 1; FLOP share = LoRA branch FLOPs / base FLOPs; "
                  "gap = overhead - share in percentage points.", "",
                  "| targets | rank | backend | overhead | FLOP share | gap (points) |", "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {o['targets']} | {o['rank']} | {o['backend']} | {_fmt(o['overhead'], 1, True)} "
                  f"| {_fmt(o['flop_share'], 1, True)} | {o['gap_points']:+.1f} |" for o in s["separate_overhead"]]
        lines.append("")
    video_runs = [r for r in runs if r.get("status") == "ok" and "video" in r.get("quality", {})]
    if video_runs:
        lines += ["## Video quality against eager fp32 (same seeds)", "",
                  "| point | backend | PSNR min dB | SSIM min | LPIPS max |", "|---|---|---:|---:|---:|"]
        for r in video_runs:
            v = r["quality"]["video"]
            psnr = "inf (identical)" if math.isinf(v["psnr_min"]) else f"{v['psnr_min']:.2f}"
            lines.append(f"| {r['point']} | {r['backend']} | {psnr} | {v['ssim_min']:.4f} "
                         f"| {_fmt(v['lpips_max'], 4) if v['lpips_max'] is not None else 'n/a'} |")
        note = next((r["quality"]["video"].get("lpips_note") for r in video_runs
                     if r["quality"]["video"].get("lpips_note")), None)
        if note:
            lines += ["", f"{note}"]
        lines.append("")
    if p.get("fvd") is not None:
        f = p["fvd"]
        lines += ["## FVD", "", (f"{f.get('reason')}" if not f.get("available") else
                                 ", ".join(f"{k}: {v['fvd']:.2f} (floor {v['noise_floor']})"
                                           for k, v in f["per_backend"].items())), ""]
    if s["not_equal_quality"]:
        lines += ["## Not equal quality (left out of every comparison)", ""]
        lines += [f"- {x['point']} / {x['backend']}: {'; '.join(x['failures'])}" for x in s["not_equal_quality"]]
        lines.append("")
    if s.get("noise_floor"):
        lines += ["## Noise floor", "",
                  "Merged LoRAs at every rank run exactly the base model's graph (W + s·BA folded in), so the spread of "
                  "the base and merged rows is this run's point-to-point measurement noise; differences between "
                  "points smaller than it are not resolved.", "",
                  "| backend | rows | min ms | max ms | spread |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {be} | {n['rows']} | {n['min_ms']:.1f} | {n['max_ms']:.1f} | {100 * n['spread']:.1f}% |"
                  for be, n in s["noise_floor"].items()] + [""]
    g = s["goals"]
    lines += ["## Goals", "",
              f"- ONNX Runtime >= 1.3x eager: min {_fmt(g['ort_speedup_ge_1.3']['min'], 2)}x, median "
              f"{_fmt(g['ort_speedup_ge_1.3']['median'], 2)}x -> "
              f"{_goal(g['ort_speedup_ge_1.3']['met'])}",
              "- separate-mode overhead at r=16 within 2 points of its FLOP share: "
              + (", ".join(f"{v['targets']}/{v['backend']} {v['gap_points']:+.1f}"
                           for v in g["separate_r16_within_2_points"]["values"]) or "not measured")
              + f" -> {_goal(g['separate_r16_within_2_points']['met'])}", ""]
    plots = ["latency_vs_rank.png", "tokens_per_s_vs_rank.png"]
    lines += ["Plots: " + ", ".join(f"[{x}]({x})" for x in plots), ""]
    return "\n".join(lines)


def _mem(run: dict[str, Any]) -> float | None:
    """The report's memory column: load + first-forward growth (see measure_memory)."""
    return run.get("memory", {}).get("peak_mb")


def _goal(met) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")


def write_plots(results: dict[str, Any], out_dir: Path, prefix: str = "") -> list[Path]:
    """latency and tokens/s vs rank, one panel per target set, one line per (backend, mode); full and base as
    horizontal lines. Needs matplotlib (skipped with a note otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        (out_dir / f"{prefix}PLOTS_SKIPPED.txt").write_text("matplotlib is not installed: pip install matplotlib\n")
        return []
    runs = [r for r in results["payload"]["runs"] if r.get("status") == "ok"]
    targets = sorted({r["targets"] for r in runs if r["targets"] is not None}) or [None]
    backends = sorted({r["backend"] for r in runs})
    written = []
    metrics = [("latency_vs_rank", "forward latency (ms, median)", lambda r: r["latency"]["forward"]["median_ms"]),
               ("tokens_per_s_vs_rank", "tokens/s (per forward)", lambda r: r["tokens_per_s"]["forward"])]
    for fname, ylabel, get in metrics:
        fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.2), squeeze=False)
        for ax, tg in zip(axes[0], targets):
            for i, be in enumerate(backends):
                color = f"C{i}"
                for mode, style in (("merged", "-o"), ("separate", "--s")):
                    pts = sorted((r["rank"], get(r), r.get("equal_quality")) for r in runs
                                 if r["targets"] == tg and r["backend"] == be and r["mode"] == mode)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=f"{be} {mode}")
                        bad = [p for p in pts if not p[2]]
                        if bad:
                            ax.plot([p[0] for p in bad], [p[1] for p in bad], "x", color="red", markersize=10)
                for mode, ls in (("full", ":"), ("base", "-.")):
                    rr = [r for r in runs if r["backend"] == be and r["mode"] == mode
                          and (r["targets"] == tg or mode == "base")]
                    if rr:
                        ax.axhline(get(rr[0]), linestyle=ls, color=color, alpha=0.7, label=f"{be} {mode}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("LoRA rank")
            ax.set_ylabel(ylabel)
            ax.set_title(f"targets: {tg}" if tg else "base")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        spec = results["specs"]["bench"]
        fig.suptitle(f"{spec['model']} {spec['dtype']} on {results['payload']['device']} (x = not equal quality)")
        fig.tight_layout()
        path = out_dir / f"{prefix}{fname}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------ terminal
class _Ui:
    """rich progress bar over timed steps, a status line, and a final table."""

    def __init__(self, console, enabled: bool | None, total: int):
        from wanrt.console import err_console

        self.console = console or err_console
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.total = total
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                                      transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def log_run(self, run: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if run.get("status") == "ok":
            tag = "" if run["equal_quality"] else " [red]NOT EQUAL QUALITY[/red]"
            self.console.print(f"  {run['point']:<28} {run['backend']:<8} "
                               f"{run['latency']['forward']['median_ms']:9.2f} ms/forward{tag}")
        else:
            self.console.print(f"  {run['point']:<28} {run['backend']:<8} [yellow]{run['status']}[/yellow]: "
                               f"{run.get('reason', '')}")

    def final_table(self, results: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from rich.table import Table

        t = Table(title="wanrt bench (forward latency, median / p90)")
        for col in ("point", "backend", "median ms", "p90 ms", "step ms", "tokens/s", "MFU", "rel. err", "quality"):
            t.add_column(col, justify="right" if col not in ("point", "backend", "quality") else "left")
        for r in results["payload"]["runs"]:
            if r.get("status") != "ok":
                t.add_row(r["point"], r["backend"], "-", "-", "-", "-", "-", "-", f"[yellow]{r['status']}[/yellow]")
                continue
            t.add_row(r["point"], r["backend"], f"{r['latency']['forward']['median_ms']:.2f}",
                      f"{r['latency']['forward']['p90_ms']:.2f}", f"{r['latency']['step']['median_ms']:.2f}",
                      f"{r['tokens_per_s']['forward']:,.0f}", _fmt(r.get("mfu"), 1, pct=True),
                      f"{r['quality']['rel_err_max']:.1e}",
                      "equal" if r["equal_quality"] else "[red]NOT EQUAL[/red]")
        self.console.print(t)
