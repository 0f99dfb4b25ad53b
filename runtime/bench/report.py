"""report.md: the results document rendered as Markdown."""

from __future__ import annotations

import math
from typing import Any

from wanrt.engines import registry
from wanrt.runtime.bench.per_video import FAST, SLOW
from wanrt.runtime.bench.vs_finetuned import render_finetuned_section


def fmt(v, digits=1, pct=False):
    """A table cell: "-" for missing/NaN, thousands separators, or a percentage."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.{digits}f}%"
    return f"{v:,.{digits}f}"


def render_report(results: dict[str, Any]) -> str:
    """report.md: header (command, machine, protocol, peak, gates), one table per target set, then comparisons
    between equal-quality runs, video quality, FVD, what failed a gate, noise floor, goals."""
    p = results["payload"]
    lines = _header(results) + _point_tables(p["runs"]) + _comparisons(p["summary"]) + per_video_section(p)
    lines += _video_sections(p)
    lines += _exclusions(p["summary"]) + _goals(p["summary"]["goals"])
    lines += render_finetuned_section(p)  # issue 11: rank vs the full fine-tune, when that was the reference
    return "\n".join(lines)


def _header(results: dict[str, Any]) -> list[str]:
    """Command, machine, versions, shape, protocol, kernel peaks, gates."""
    p = results["payload"]
    spec = results["specs"]["bench"]
    m = results.get("machine", {})
    lines = [f"# wanrt bench: {spec['model']} ({spec['dtype']}, {p['device']})", ""]
    if not p.get("complete", True):
        done = p.get("points", {})
        lines += [f"**Partial results: {done.get('done', '?')} of {done.get('total', '?')} sweep points** (the run "
                  "was interrupted or is still running; `wanrt bench ... --resume` with the same command finishes "
                  "it).", ""]
    lines += [f"- command: `{results.get('command', '')}`",
              f"- machine: {m.get('cpu', m.get('processor', '?'))}"
              + (f" ({', '.join(m['cpu_isa']) or 'no AVX2, AVX-512 or AMX flags'})" if "cpu_isa" in m else "")
              + f", {m.get('cpu_count')} CPUs, "
              f"{m.get('mem_total_gib', '?')} GiB" + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
              f"- threads: {p.get('threads')}; versions: " + ", ".join(
                  f"{k} {v}" for k, v in results.get("versions", {}).items()
                  if k in ("torch", "onnxruntime", "onnxruntime-gpu", "diffusers", *registry.distributions())),
              f"- shape: {p['shape']['frames']}x{p['shape']['height']}x{p['shape']['width']} (latent "
              f"{'x'.join(map(str, p['shape']['latent']))}), batch {p['shape']['batch']}, "
              f"{p['shape']['tokens_per_forward']} video tokens per forward; a step = 2 forwards (CFG)",
              f"- protocol: {spec['warmup']} warm-up steps, {spec['repeats']} timed steps per backend"
              f"{' (interleaved across backends)' if spec.get('interleave') else ''}, "
              f"{spec.get('settle_s') if spec.get('settle_s') is not None else (0.1 if p['device'] == 'cpu' else 0)}"
              f" s idle before each step; median / p90; mem MB = "
              + ("resident" if p["device"] == "cpu" else "device")
              + " memory taken by loading the backend + growth during its first forward",
              "- MFU: against the peak of each backend's own matmul kernel, measured in this run (GFLOP/s, the "
              "higher of start/end): " + "; ".join(_peak_text(k, v) for k, v in p["peak"]["kernels"].items()),
              "- equal-quality gates: rel. error " + ", ".join(f"{k} <= {v:g}" for k, v in spec["gates"]["rel_err"])
              + f"; video PSNR >= {spec['gates']['psnr_db']:g} dB, LPIPS <= {spec['gates']['lpips']:g}", ""]
    return lines


def _peak_text(kernel: str, peak: dict[str, Any]) -> str:
    if not peak.get("tflops"):
        return f"{kernel} not measurable here ({peak.get('error', '?')})"
    return f"{kernel} {peak['tflops'] * 1e3:.1f}" + ("" if "end" in peak else " (end not measured yet)")


def _point_tables(runs: list[dict[str, Any]]) -> list[str]:
    """One table per target set (base first): latency, throughput, MFU, memory, quality."""
    lines: list[str] = []
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
            mark = " (disturbed)" if r.get("interference", {}).get("disturbed") else ""
            lines.append(
                f"| {r['mode']} | {rank} | {r['backend']}{mark} | {fmt(r['latency']['forward']['median_ms'])} "
                f"| {fmt(r['latency']['forward']['p90_ms'])} | {fmt(r['latency']['step']['median_ms'])} "
                f"| {fmt(r['latency']['step']['p90_ms'])} | {fmt(r['tokens_per_s']['forward'], 0)} "
                f"| {fmt(r['tflops'], 3)} | {fmt(r.get('mfu'), 1, pct=True)} | {fmt(_mem(r), 0)} "
                f"| {fmt(r['flops']['lora_share'], 2, pct=True)} | {q['rel_err_max']:.2e} | {eq} |")
        if any(r.get("interference", {}).get("disturbed") for r in rows):
            lines += ["", "(disturbed): the load probe saw other work on the machine during this row's timing, "
                          "even after the retries; its latency is noise, not an effect of rank or mode."]
        lines.append("")
    return lines


def _comparisons(s: dict[str, Any]) -> list[str]:
    """Speed-ups over eager and separate-mode overhead (equal-quality runs only)."""
    lines: list[str] = []
    if s["speedups"]:
        lines += ["## Speed-up over eager (equal-quality runs only)", "",
                  "| point | backend | per forward | per step |", "|---|---|---:|---:|"]
        lines += [f"| {x['point']} | {x['backend']} | {x['speedup_forward']:.2f}x | {x['speedup_step']:.2f}x |"
                  for x in s["speedups"]] + [""]
    if s["separate_overhead"]:
        lines += ["## Separate-mode LoRA overhead against its FLOP share", "",
                  "overhead = separate / merged forward latency - 1; FLOP share = LoRA branch FLOPs / base FLOPs; "
                  "gap = overhead - share in percentage points.", "",
                  "| targets | rank | backend | overhead | FLOP share | gap (points) |",
                  "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {o['targets']} | {o['rank']} | {o['backend']} | {fmt(o['overhead'], 1, True)} "
                  f"| {fmt(o['flop_share'], 1, True)} | {o['gap_points']:+.1f} |" for o in s["separate_overhead"]]
        lines.append("")
    return lines


def per_video_section(p: dict[str, Any]) -> list[str]:
    """DiT seconds per video of each declared schedule, and the 40-step CFG vs 4-step no-CFG ratio (equal-quality
    runs at batch 1 only), each with its 95% interval."""
    ratios = p["summary"].get("per_video") or []
    if not ratios:
        return []
    runs = {(r["point"], r["backend"]): r for r in p["runs"]}
    lines = ["## Per video (DiT seconds of a schedule)", "",
             "seconds = forwards x median batch-1 forward latency (CFG: 2 forwards a step, as diffusers runs it; "
             "VAE and encoders not included); [95% interval] from the median's order-statistic interval. The "
             f"ratio puts {SLOW} on the backend's base row over {FAST} on the row; within one row it is the "
             "forward-count ratio exactly.", "",
             f"| point | backend | fwd median ms | {SLOW} s | {FAST} s | ratio |", "|---|---|---:|---:|---:|---|"]
    for x in ratios:
        r = runs[(x["point"], x["backend"])]
        v, fwd = r["per_video"], r["latency"]["forward"]
        lines.append(f"| {x['point']} | {x['backend']} | {_with_ci(fwd['median_ms'], fwd.get('median_ci95_ms'))} "
                     f"| {_with_ci(v[SLOW]['seconds'], v[SLOW]['ci95_s'], 2)} "
                     f"| {_with_ci(v[FAST]['seconds'], v[FAST]['ci95_s'], 2)} "
                     f"| {_with_ci(x['ratio'], x['ci95'], 1, 'x')} vs {x['slow_point']} |")
    return lines + [""]


def _with_ci(value: float, ci: list[float] | None, digits: int = 1, unit: str = "") -> str:
    """'1.14 [0.22, 9.14]'; an interval of zero width (one run's forward-count ratio) reads 'exact'."""
    text = fmt(value, digits) + unit
    if ci and ci[0] == ci[1]:
        return text + " exact"
    return text + (f" [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]" if ci else "")


def _video_sections(p: dict[str, Any]) -> list[str]:
    """Per-frame video quality against eager and FVD."""
    runs = p["runs"]
    lines: list[str] = []
    video_runs = [r for r in runs if r.get("status") == "ok" and "video" in r.get("quality", {})]
    if video_runs:
        lines += ["## Video quality against eager fp32 (same seeds)", "",
                  "| point | backend | PSNR min dB | SSIM min | LPIPS max |", "|---|---|---:|---:|---:|"]
        for r in video_runs:
            v = r["quality"]["video"]
            psnr = "inf (identical)" if math.isinf(v["psnr_min"]) else f"{v['psnr_min']:.2f}"
            lines.append(f"| {r['point']} | {r['backend']} | {psnr} | {v['ssim_min']:.4f} "
                         f"| {fmt(v['lpips_max'], 4) if v['lpips_max'] is not None else 'n/a'} |")
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
    return lines


def _exclusions(s: dict[str, Any]) -> list[str]:
    """What failed a gate and the run's noise floor."""
    lines: list[str] = []
    if s["not_equal_quality"]:
        lines += ["## Not equal quality (left out of every comparison)", ""]
        lines += [f"- {x['point']} / {x['backend']}: {'; '.join(x['failures'])}" for x in s["not_equal_quality"]]
        lines.append("")
    if s.get("noise_floor"):
        lines += ["## Noise floor", "",
                  "Merged LoRAs at every rank run exactly the base model's graph (W + s·BA folded in), so the spread "
                  "of the base and merged rows is this run's point-to-point measurement noise; differences between "
                  "points smaller than it are not resolved.", "",
                  "| backend | rows | min ms | max ms | spread |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {be} | {n['rows']} | {n['min_ms']:.1f} | {n['max_ms']:.1f} | {100 * n['spread']:.1f}% |"
                  for be, n in s["noise_floor"].items()] + [""]
    return lines


def _goals(g: dict[str, Any]) -> list[str]:
    """The goals of the CPU benchmark and links to the plots."""
    lines: list[str] = []
    lines += ["## Goals", "",
              f"- ONNX Runtime >= 1.3x eager: min {fmt(g['ort_speedup_ge_1.3']['min'], 2)}x, median "
              f"{fmt(g['ort_speedup_ge_1.3']['median'], 2)}x -> "
              f"{_goal(g['ort_speedup_ge_1.3']['met'])}",
              "- separate-mode overhead at r=16 within 2 points of its FLOP share: "
              + (", ".join(f"{v['targets']}/{v['backend']} {v['gap_points']:+.1f}"
                           for v in g["separate_r16_within_2_points"]["values"]) or "not measured")
              + f" -> {_goal(g['separate_r16_within_2_points']['met'])}", ""]
    plots = ["latency_vs_rank.png", "tokens_per_s_vs_rank.png"]
    lines += ["Plots: " + ", ".join(f"[{x}]({x})" for x in plots), ""]
    return lines


def _mem(run: dict[str, Any]) -> float | None:
    """The report's memory column: load + first-forward growth (see measure_memory)."""
    return run.get("memory", {}).get("peak_mb")


def _goal(met) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")
