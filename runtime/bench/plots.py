"""latency and tokens/s against rank (PNG, matplotlib optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

def _disturbed(run: dict[str, Any]) -> bool:
    return bool(run.get("interference", {}).get("disturbed"))


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
                    pts = sorted((r["rank"], get(r), r.get("equal_quality"), _disturbed(r)) for r in runs
                                 if r["targets"] == tg and r["backend"] == be and r["mode"] == mode)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=f"{be} {mode}")
                        bad = [p for p in pts if not p[2]]
                        if bad:
                            ax.plot([p[0] for p in bad], [p[1] for p in bad], "x", color="red", markersize=10)
                        noisy = [p for p in pts if p[3]]
                        if noisy:  # the same mark as the table's "disturbed": not an effect of rank or mode
                            ax.plot([p[0] for p in noisy], [p[1] for p in noisy], "o", markersize=14,
                                    markerfacecolor="none", markeredgecolor="orange")
                            for p in noisy:
                                ax.annotate("disturbed", (p[0], p[1]), textcoords="offset points", xytext=(6, 6),
                                            fontsize=7, color="orange")
                for mode, ls in (("full", ":"), ("base", "-.")):
                    rr = [r for r in runs if r["backend"] == be and r["mode"] == mode
                          and (r["targets"] == tg or mode == "base")]
                    if rr:
                        tag = " (disturbed)" if _disturbed(rr[0]) else ""
                        ax.axhline(get(rr[0]), linestyle=ls, color=color, alpha=0.7, label=f"{be} {mode}{tag}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("LoRA rank")
            ax.set_ylabel(ylabel)
            ax.set_title(f"targets: {tg}" if tg else "base")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        spec = results["specs"]["bench"]
        fig.suptitle(f"{spec['model']} {spec['dtype']} on {results['payload']['device']}\n"
                     f"x = not equal quality; orange ring = disturbed by other load", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{prefix}{fname}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
