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

Modules, one concern each (imports run down this list, never up):
    spec       BenchSpec, QualityGates, SweepPoint, sweep_points: what a run measures
    measure    clocks, latency statistics, matmul peak, load probe, memory, relative error
    store      BenchArtifacts: exports/engines of the sweep in the cache root
    video      VideoQuality: per-frame PSNR/SSIM/LPIPS and FVD against eager's videos
    per_video  per_video, schedule_ratios: seconds per video of the declared schedules, 40-step CFG vs 4-step
    summary    summarize_runs: speed-ups, separate-mode overhead, goals, noise floor, schedule ratios
    report     render_report: report.md
    plots      write_plots: PNGs (matplotlib optional)
    ui         BenchUi: terminal progress and the final table
    point      BenchSession, PointContext, run_point: one sweep point across every backend
    run        run_bench: the sweep, the results document and its files
"""

from wanrt.runtime.bench.measure import (LoadProbe, measure_memory, memory_in_use, percentile, rel_error, summarize,
                                         time_backend, timing_record)
from wanrt.runtime.bench.plots import write_plots
from wanrt.runtime.bench.point import BenchSession, PointContext, make_backend, run_point
from wanrt.runtime.bench.report import render_report
from wanrt.runtime.bench.run import run_bench, write_results
from wanrt.runtime.bench.spec import (MODES, RESULTS_SCHEMA, BenchSpec, QualityGates, SweepPoint, make_inputs,
                                      sweep_points)
from wanrt.runtime.bench.sweep_store import BenchArtifacts
from wanrt.runtime.bench.summary import summarize_runs
from wanrt.runtime.bench.ui import BenchUi
from wanrt.runtime.bench.video import DEFAULT_PROMPT, VideoQuality, bench_image

__all__ = [
    "DEFAULT_PROMPT", "MODES", "RESULTS_SCHEMA", "BenchArtifacts", "BenchSession", "BenchSpec", "BenchUi", "LoadProbe",
    "PointContext", "QualityGates", "SweepPoint", "VideoQuality", "bench_image", "make_backend", "make_inputs",
    "measure_memory", "memory_in_use", "percentile", "rel_error", "render_report", "run_bench",
    "run_point", "summarize", "summarize_runs", "sweep_points", "time_backend", "timing_record", "write_plots",
    "write_results",
]
