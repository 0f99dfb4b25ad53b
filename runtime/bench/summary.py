"""Comparisons between equal-quality runs: speed-ups over eager, separate-mode overhead, goals, noise floor."""

from __future__ import annotations

import statistics
from typing import Any

from wanrt.runtime.bench.per_video import schedule_ratios


def _ok(run) -> bool:
    return run.get("status") == "ok" and run.get("equal_quality", False)


def _med(run: dict[str, Any], kind: str) -> float:
    return run["latency"][kind]["median_ms"]


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
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
            "retimed_points": retimed, "disturbed_points": disturbed, "noise_floor": noise, "goals": goals,
            "per_video": schedule_ratios([r for r in runs if _ok(r)])}
