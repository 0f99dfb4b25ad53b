"""Measurement primitives: clocks with device sync, latency statistics, interference probe, memory, relative
error (kernel peaks: peaks.py). No knowledge of sweeps or backends' kinds."""

from __future__ import annotations

import gc
import math
import statistics
import time
from typing import Any, Callable

import torch

from wanrt.errors import BadInputError
from wanrt.memory import Sampler, rss_bytes

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(samples_s: list[float]) -> dict[str, Any]:
    """Latency statistics in milliseconds: median with its 95% confidence interval (None below 6 samples), p90
    (linear interpolation), mean, min, max, all samples."""
    ms = sorted(s * 1e3 for s in samples_s)
    if not ms:
        return {"n": 0}
    ci = median_ci(ms)
    return {"n": len(ms), "median_ms": statistics.median(ms), "median_ci95_ms": list(ci) if ci else None,
            "p90_ms": percentile(ms, 90), "mean_ms": statistics.fmean(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "samples_ms": [round(s * 1e3, 4) for s in samples_s]}


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median: the order statistics x_(j) and x_(n+1-j) for the
    largest j whose coverage 1 - 2 P(Binomial(n, 1/2) < j) is at least `level`. No assumption on the shape of the
    latency distribution (it is skewed); None when n is too small (fewer than 6 samples at 95%)."""
    xs = sorted(values)
    n, j, below = len(xs), 0, 0.0
    for k in range(n):
        below += math.comb(n, k) / 2**n  # P(B <= k)
        if 2 * below > 1 - level:
            break
        j = k + 1
    return (xs[j - 1], xs[n - j]) if j else None


def percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


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


class _RssSampler(Sampler):
    """Peak resident memory while a block runs (/proc/self/statm every `interval` s, and at its end)."""

    def __init__(self, interval: float = 0.002):
        super().__init__(self._read, interval)
        self.start = self.peak = rss_bytes()

    def _read(self) -> None:
        self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._read()


def memory_in_use(device: torch.device) -> int:
    """Bytes in use now: process RSS on CPU, device memory in use on CUDA (all allocators, ORT/TensorRT too)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        return total - free
    gc.collect()
    return rss_bytes()


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


def timing_record(fwd: list[float], steps: list[float], flops: dict, batch: int, peak_tflops: float):
    f, s = summarize(fwd), summarize(steps)
    tokens = flops["tokens"] * batch
    med = f["median_ms"] / 1e3
    tflops = flops["total"] / med / 1e12
    return {"latency": {"forward": f, "step": s},
            "tokens_per_s": {"forward": tokens / med, "step": tokens / (s["median_ms"] / 1e3)},
            "tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None}
