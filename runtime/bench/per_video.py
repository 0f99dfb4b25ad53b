"""Seconds per video of the declared schedules (runtime/schedule.py RECIPES), from a run's per-forward latency.

diffusers' WanImageToVideoPipeline makes one transformer call per step without CFG and two with it (conditional,
then unconditional), each at batch 1, so the DiT time of one video is forwards x the batch-1 forward latency; the
VAE, the encoders and the scheduler are not in it. Within one run the ratio of two schedules is their forward-count
ratio (40 x 2 / 4 = 20) exactly; the informative ratio is across rows: the paper's 40-step CFG video on the base
model against the 4-step no-CFG video of the row that deploys a (distill) LoRA, merged or separate.
"""

from __future__ import annotations

from typing import Any

from wanrt.runtime.bench.measure import median_ci
from wanrt.runtime.schedule import RECIPES

SLOW, FAST = "wan-40step-cfg", "distill-4step"  # the comparison the report leads with
RATIO_LEVEL = 0.975  # each median's interval for a ratio of two runs: jointly >= 95% (Bonferroni)


def per_video(forward: dict[str, Any], batch: int) -> dict[str, Any] | None:
    """{recipe: {steps, cfg, forwards, seconds, ci95_s}} from a run's forward latency statistics; None when the
    forwards were timed at batch 2 (a video's forwards run at batch 1)."""
    if batch != 1 or not forward.get("n"):
        return None
    ci = forward.get("median_ci95_ms")
    out = {}
    for name, recipe in RECIPES.items():
        s = recipe.schedule()
        out[name] = {"steps": s.steps, "cfg": s.cfg, "forwards": s.forwards,
                     "seconds": s.forwards * forward["median_ms"] / 1e3,
                     "ci95_s": [s.forwards * v / 1e3 for v in ci] if ci else None}
    return out


def schedule_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run (the caller passes the equal-quality ones): the SLOW schedule's seconds on the same backend's base
    row (the row itself without one) over the FAST schedule's seconds on this row, with a confidence interval:
    exact when both come from one run, else the ratio of the ends of each median's RATIO_LEVEL interval (None when
    too few samples)."""
    timed = [r for r in runs if r.get("per_video")]  # runs resumed from an older results.json have none
    base = {r["backend"]: r for r in timed if r["point"] == "base"}
    out = []
    for r in timed:
        ref = base.get(r["backend"], r)
        slow, fast = ref["per_video"][SLOW], r["per_video"][FAST]
        ratio = slow["seconds"] / fast["seconds"]
        if ref is r:
            ci = [ratio, ratio]
        else:
            a, b = _ci(ref), _ci(r)
            ci = [slow["forwards"] * a[0] / (fast["forwards"] * b[1]),
                  slow["forwards"] * a[1] / (fast["forwards"] * b[0])] if a and b else None
        out.append({"point": r["point"], "backend": r["backend"], "slow": SLOW, "slow_point": ref["point"],
                    "slow_s": slow["seconds"], "fast": FAST, "fast_s": fast["seconds"], "ratio": ratio,
                    "ci95": ci})
    return out


def _ci(run: dict[str, Any]) -> tuple[float, float] | None:
    return median_ci(run["latency"]["forward"]["samples_ms"], RATIO_LEVEL)
