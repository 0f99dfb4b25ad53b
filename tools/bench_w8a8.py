"""W8A8 int8 OpenVINO engines against weight-only int8, bf16/fp32 and eager fp32, in one interleaved run (issue 20).
Writes w8a8-cpu.json and .md under -o.

    python -m wanrt.tools.bench_w8a8 -o docs/results     # ~3.5 min on 2 quiet cores: small + the 14B slice

Per geometry: every backend built from the same rank-16 merged export, timed interleaved (tools/bench_cpu_engines's
run_geometry), its error against eager fp32 gated (int8 and w8a8: 5e-2), and its rate against the matmul peak of
the kernel it runs, measured in the same run: W8A8 against OpenVINO's int8 x int8 FullyConnected and torch._int_mm,
weight-only int8 against OpenVINO's FC with int8 weights. A precision this CPU lacks is skipped and named.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import machine_info
from wanrt.tools.bench_cpu_engines import (finish, header, log, measure_peaks, ratio_ci, run_geometry,
                                           skipped_backends, write_results)

ONLY = ("ov fp32", "ov bf16", "ov int8", "ov w8a8")
# small at 560 tokens and the 14B one-block slice at 1,344 (21x224x256: 6 x 14 x 16 latent patches), the sizes
GEOMETRIES = [("small", None, ["17x128x224"]), ("wan2.1-i2v-14b", 1, ["21x224x256"])]


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# W8A8 on the CPU", "", f"`{results['command']}`  ",
             f"{m['cpu']} ({' '.join(m['cpu_isa'])}), {results['threads']} threads, load average "
             f"{results['load_average'][0]:.1f}", "",
             "| geometry | shape | tokens | backend | ms | rel err | gate | TFLOP/s | vs its kernel peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["backends"]:
        mfu = f"{r['mfu']:.0%} of {r['peak_kernel']}" if r.get("mfu") else "-"
        lines.append(f"| {r['geometry']} | {r['shape']} | {r['tokens']} | {r['backend']} | {r['median_s'] * 1e3:.1f} "
                     f"| {r['rel_err']:.1e} | {'pass' if r['passes_gate'] else 'FAIL'} | {r['tflops']:.2f} | {mfu} |")
    lines += ["", "W8A8 speed-up, paired by round (the backends ran interleaved; 95% bootstrap CI of the mean "
              "per-round ratio): " + "; ".join(_speedups(results["backends"]))]
    peaks = results["peaks"]
    lines += ["", "Kernel peaks in this run (TFLOP/s or TOP/s): " + ", ".join(
        f"{k} {v['tflops']:.2f}" for k, v in peaks.items() if isinstance(v, dict) and "tflops" in v)]
    if results["skipped"]:
        lines.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items()))
    return "\n".join(lines) + "\n"


def _speedups(rows: list[dict[str, Any]]) -> list[str]:
    """Per geometry, 'vs ov int8 1.40x [1.38, 1.42]': the other backend's time over w8a8's in the same round."""
    out = []
    for geometry in dict.fromkeys(r["geometry"] for r in rows):
        by = {r["backend"]: r["samples_s"] for r in rows if r["geometry"] == geometry}
        if "ov w8a8" not in by:
            continue
        parts = []
        for other in ("ov int8", "ov bf16", "ov fp32", "eager fp32"):
            if other in by:
                ratios, (lo, hi), _ = ratio_ci({"ov w8a8": by["ov w8a8"], other: by[other]}, other)
                parts.append(f"vs {other} {statistics.fmean(ratios):.2f}x [{lo:.2f}, {hi:.2f}]")
        out.append(f"{geometry}: " + ", ".join(parts))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    skipped = skipped_backends()
    results = header("bench_w8a8", argv, machine=machine_info(),
                     threads=args.threads, skipped=skipped)
    log("peaks")
    results["peaks"] = measure_peaks(1024, 5120, 5120, skipped)
    results["backends"] = []
    for source, layers, shapes in GEOMETRIES:
        results["backends"] += run_geometry(source, layers, shapes, args.threads, args.repeats, results["peaks"],
                                            skipped, only=ONLY)
    finish(results, t0)
    write_results(args.out, "w8a8-cpu", results, render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
