"""CPU engines against eager at equal quality, in one interleaved run (issue 12). Writes under -o (docs/results):
ov-cpu-<config>.json (raw), ov-cpu-<config>.md (report) and ov-cpu-<config>-*.png (plots).

    python -m wanrt.tools.bench_cpu_engines --config full --threads 2 -o docs/results     # ~12 min, quiet machine
    python -m wanrt.tools.bench_cpu_engines --config smoke -o /tmp/smoke                  # ~3 min, any machine

One run measures, in this order and all with the same threads:
1. peaks: F.linear fp32/bf16, torch._int_mm, ONNX Runtime MatMul (fp32) and MatMulInteger (u8 x s8), OpenVINO
   FullyConnected fp32/bf16/int8 (the kernels the backends use), [M x K]·[K x N]; memory bandwidth (tensor copy);
2. backends per geometry and shape, interleaved step by step: eager fp32/bf16, ort fp32, ov fp32/bf16/int8 (rank-16
   merged exports): median latency, relative error vs eager fp32 (gated: fp32 1e-4, bf16 1e-2, int8 5e-2), MFU
   against the peak of the kernel the backend runs (FLOPs from runtime/flops.py);
3. separate vs merged at rank 16 on OpenVINO bf16, paired (alternating order) until the bootstrap 95% CI of the mean
   overhead is within +/-1 point or the pair budget is spent; compared with the branch's FLOP share;
4. latency vs tokens (>= 4 shapes) and vs LoRA rank, with fitted log-log exponents;
5. the roofline cost model (tools/cpu_cost_model.py) against every measured point (+/-20% check), then evaluated
   with published H100/H200 peaks for 480x832, 81 frames, CFG (batch 2): a prediction, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.artifacts import atomic_path, cache_root, command_line, library_versions, machine_info, spec_hash
from wanrt.dit_io import DitIO, ShapeRange, VideoShape
from wanrt.tools import cpu_cost_model as cm

GATES = {"fp32": 1e-4, "bf16": 1e-2, "int8": 5e-2, "w8a8": 5e-2}
CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": {"geometries": [("tiny", None, ["5x32x32", "9x48x64"])], "token_shapes": ("tiny", None, [
              "1x32x32", "5x32x32", "9x48x64", "17x64x64"]), "rank_point": ("tiny", None, "9x48x64"),
              "ranks": [2, 4, 8], "pairs": (16, 48), "repeats": 3, "peak_mkn": (256, 1024, 1024),
              "pair_point": ("tiny", None, "9x48x64")},
    "full": {"geometries": [("small", None, ["5x128x224", "17x128x224"]),
                            ("wan2.1-i2v-14b", 1, ["5x128x224", "9x256x448"])],
             "token_shapes": ("small", None, ["5x64x64", "9x128x128", "17x128x224", "33x256x256"]),
             "rank_point": ("small", None, "17x128x224"), "ranks": [4, 16, 64, 128], "pairs": (40, 400),
             "repeats": 5, "peak_mkn": (1024, 5120, 5120), "pair_point": ("small", None, "17x128x224"),
             "repeats_by_geometry": {"wan2.1-i2v-14b": 3}},  # its 9x256x448 round is ~45 s on a quiet 2-core CPU
}
BACKENDS = [("eager fp32", "eager", "fp32"), ("eager bf16", "eager", "bf16"), ("ort fp32", "ort", "fp32"),
            ("ov fp32", "ov", "fp32"), ("ov bf16", "ov", "bf16"), ("ov int8", "ov", "int8"),
            ("ov w8a8", "ov", "w8a8")]
# which measured peak each backend's MFU is taken against (the kernel it runs)
PEAK_OF = {"eager fp32": "F.linear fp32", "eager bf16": "F.linear bf16", "ort fp32": "ORT MatMul fp32",
           "ov fp32": "OpenVINO FC fp32", "ov bf16": "OpenVINO FC bf16", "ov int8": "OpenVINO FC int8",
           "ov w8a8": "OpenVINO FC w8a8"}


def write_results(out: Path, stem: str, results: dict[str, Any], markdown: str | None = None) -> None:
    """<stem>.json (the raw results) and, given one, <stem>.md (the report) under `out`, each written whole, then a
    log line."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=1, default=str) + "\n"), (".md", markdown)):
        if text is not None:
            with atomic_path(out / f"{stem}{suffix}") as tmp:
                tmp.write_text(text)
    log(f"wrote {out / stem}.json{'/.md' if markdown is not None else ''} ({results.get('seconds', 0):.0f} s)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def header(tool: str, argv: list[str] | None, **fields: Any) -> dict[str, Any]:
    """What every bench records before it measures: the exact command, the machine, the library versions and the
    load average; `fields` add to them (a `machine` or `versions` given replaces the default)."""
    return {"command": command_line(argv, f"wanrt.tools.{tool}"),
            "machine": fields.pop("machine", None) or machine_info(),
            "versions": fields.pop("versions", None) or library_versions(), "load_average": list(os.getloadavg()),
            **fields}


def finish(results: dict[str, Any], t0: float) -> None:
    """The load average at the end and the wall time since `t0`."""
    results["load_average_end"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - t0


def time_rounds(calls: dict[str, Callable[[], Any]], rounds: int, rotate: bool = False,
                check: tuple[int, int] | None = None) -> dict[str, list[float]]:
    """Seconds of each call per round, interleaved: every round runs every call once, so drift hits all alike.
    `rotate`: the order turns by one every round (no call is always first). `check` (first, every): after `first`
    rounds and then every `every` more, stop once each call's per-round ratio to the first call has a bootstrap 95%
    CI half-width <= 1 point (`rounds` is then the budget)."""
    labels = list(calls)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    n = 0
    while n < rounds:
        for _ in range(min(rounds if check is None else check[0] if n == 0 else check[1], rounds - n)):
            for label in labels[n % len(labels):] + labels[:n % len(labels)] if rotate else labels:
                t = time.perf_counter()
                calls[label]()
                samples[label].append(time.perf_counter() - t)
            n += 1
        if check is not None and all(ratio_ci(samples, label)[2] <= 0.01 for label in labels[1:]):
            break
    return samples


# Student t, two-sided 95%, by degrees of freedom; past 10 the normal 1.96 (at most 11% under t there)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values: list[float]) -> dict[str, Any]:
    """Mean over independent repeats (seeds, runs) with its t 95% interval (None for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": None, "n": len(values), "values": values}
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(values), "values": values}


def ratio_ci(samples: dict[str, list[float]], label: str) -> tuple[list[float], tuple[float, float], float]:
    """`label`'s per-round ratios to the first call's (paired: the same round), their bootstrap 95% CI of the mean
    and its half-width."""
    first = next(iter(samples))
    ratios = [s / m for s, m in zip(samples[label], samples[first])]
    lo, hi = bootstrap_ci(ratios)
    return ratios, (lo, hi), (hi - lo) / 2


# ------------------------------------------------------------------------------------------------ 1. peaks
def measure_peaks(m: int, k: int, n: int, skipped: dict[str, str], repeats: int = 5) -> dict[str, dict[str, Any]]:
    """Matmul rates of the kernels the backends run (runtime/bench/peaks.py, as `wanrt bench` measures them), and
    the copy bandwidth. OpenVINO precisions in `skipped` (the CPU lacks them) are not measured."""
    from wanrt.runtime.bench.peaks import measure_bandwidth, measure_kernel

    kernels = ["F.linear fp32", "F.linear bf16", "torch._int_mm int8", "ORT MatMul fp32", "ORT MatMulInteger u8s8",
               *(PEAK_OF[label] for label, kind, _ in BACKENDS if kind == "ov" and label not in skipped)]
    out = {name: measure_kernel(name, m, k, n, repeats=repeats) for name in kernels}
    out["bandwidth"] = measure_bandwidth(repeats)
    return out


def skipped_backends() -> dict[str, str]:
    """{backend label: why} for the OpenVINO precisions this CPU lacks, as wanrt reads its capabilities
    (engines/openvino.supported_precisions, narrowed by $WANRT_OV_CAPABILITIES)."""
    from wanrt.engines.openvino.engine import supported_precisions

    refused = supported_precisions()
    return {label: refused[precision] for label, kind, precision in BACKENDS if kind == "ov" and refused[precision]}


def sweep_precision(skipped: dict[str, str]) -> str:
    """The OpenVINO precision of the paired and rank sections: bf16, or fp32 on a CPU without it."""
    return "bf16" if "ov bf16" not in skipped else "fp32"


# ------------------------------------------------------------------------------------------------ artifacts
def export_dir(source: str, layers: int | None, rank: int, mode: str, targets: str = "all") -> Path:
    """An fp32 export of (preset, layers, synthetic rank-`rank` LoRA, mode), cached by its specs."""
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.model import ModelSpec
    from wanrt.export.onnx_export import ExportSpec

    ms, ls = ModelSpec(source, layers=layers), LoraSpec(rank=rank, mode=mode, targets=targets)
    es = ExportSpec(validate=False)
    out = cache_root("exports") / f"bench-cpu-{spec_hash(ms, ls, es)}"
    if not (out / "manifest.json").is_file():
        log(f"export {source} layers={layers} r{rank} {mode} {targets}")
        export_model(ms, ls, es, out, force=True, progress=False)
    return out


def make_backend(kind: str, precision: str, source: str, layers, threads: int, rank: int = 16,
                 mode: str = "merged", targets: str = "all"):
    from wanrt.export.api import LoraSpec
    from wanrt.export.model import ModelSpec
    from wanrt.runtime.backends import build_transformer, create_backend

    if kind == "eager":
        model, _ = build_transformer(ModelSpec(source, layers=layers, dtype=precision),
                                     LoraSpec(rank=rank, mode=mode, targets=targets))
        return create_backend("eager", model=model)
    art = export_dir(source, layers, rank, mode, targets)
    if kind == "ort":
        return create_backend("ort", artifact=art, threads=threads)
    return create_backend("ov", artifact=art, threads=threads, precision=precision)


def feeds_for(backend, shape: VideoShape, seed: int = 0) -> list[torch.Tensor]:
    geometry = {"in_channels": backend.config.get("in_channels", 36), "text_dim": backend.config["text_dim"],
                "image_dim": backend.config.get("image_dim")}
    f = DitIO(geometry, torch.float32, ShapeRange(shape, shape)).dummy_inputs(1, shape, seed=seed)
    return [f["latents"], f["timestep"], f["text"], f.get("image")]


# ------------------------------------------------------------------------------------------------ 2. backends
def run_geometry(source, layers, shapes, threads, repeats, peaks, skipped,
                 only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    from wanrt.runtime.bench.measure import rel_error
    from wanrt.runtime.flops import forward_flops

    backends = {}
    for label, kind, precision in BACKENDS:
        if label in skipped or (only is not None and label not in only and label != "eager fp32"):
            continue
        log(f"{source} layers={layers}: {label}")
        backends[label] = (make_backend(kind, precision, source, layers, threads), precision)
    config = backends["eager fp32"][0].config
    rows = []
    for s in shapes:
        shape = VideoShape(*map(int, s.split("x")))
        feeds = feeds_for(backends["eager fp32"][0], shape)
        ref = backends["eager fp32"][0](*feeds)
        outs = {label: b(*feeds) for label, (b, _) in backends.items()}  # warm-up + quality
        samples = time_rounds({label: partial(b, *feeds) for label, (b, _) in backends.items()}, repeats)
        cost = forward_flops(dict(config), shape.latent)
        flops = cost["total"]
        tokens = flops and cost["tokens"]
        for label, (_b, precision) in backends.items():
            med = statistics.median(samples[label])
            peak = peaks.get(PEAK_OF[label], {}).get("tflops")
            err = rel_error(outs[label], ref)
            engine = getattr(_b, "engine", None)  # OpenVINO: the compiled blob's size (int8 vs bf16 memory)
            blob_mib = _b.manifest.plan_bytes / 2**20 if engine is not None else None
            rows.append({"geometry": f"{source}" + (f" --layers {layers}" if layers else ""), "shape": s,
                         "engine_mib": blob_mib,
                         "tokens": tokens, "backend": label, "precision": precision, "median_s": med,
                         "samples_s": samples[label], "rel_err": err, "gate": GATES[precision],
                         "passes_gate": err <= GATES[precision], "flops": flops, "tflops": flops / med / 1e12,
                         "mfu": (flops / med / 1e12) / peak if peak else None, "peak_kernel": PEAK_OF[label],
                         "config": {k: config.get(k) for k in ("num_attention_heads", "attention_head_dim",
                                                               "ffn_dim", "num_layers", "in_channels", "text_dim",
                                                               "image_dim", "added_kv_proj_dim", "patch_size",
                                                               "out_channels")}})
            log(f"  {s} {label:11s} {med * 1e3:9.1f} ms  rel {err:.2e}")
    for b, _ in backends.values():
        b.close()
    return rows


# ------------------------------------------------------------------------------------------------ 3. paired
def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def paired_overhead(source, layers, shape_s, threads, pairs: tuple[int, int], precision: str,
                    rank: int = 16) -> dict[str, Any]:
    """Separate vs merged (OpenVINO `precision`), same inputs, alternating order, until CI half-width <= 1 point."""
    from wanrt.runtime.flops import forward_flops

    merged = make_backend("ov", precision, source, layers, threads, rank, "merged")
    sep = make_backend("ov", precision, source, layers, threads, rank, "separate")
    shape = VideoShape(*map(int, shape_s.split("x")))
    feeds = feeds_for(merged, shape)
    merged(*feeds), sep(*feeds)
    first, budget = pairs
    t_start = time.perf_counter()
    samples = time_rounds({"merged": partial(merged, *feeds), "separate": partial(sep, *feeds)}, budget,
                          rotate=True, check=(first, max(first // 2, 8)))
    ratios, ci, _ = ratio_ci(samples, "separate")
    ratios, ci = [r - 1.0 for r in ratios], (ci[0] - 1.0, ci[1] - 1.0)  # the overhead: separate / merged - 1
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.model import ModelSpec, load_transformer
    from wanrt.runtime.flops import lora_branches

    model = load_transformer(ModelSpec(source, layers=layers))
    branches = lora_branches(synthetic_lora(model, rank))
    fl = forward_flops(dict(model.config), shape.latent, lora=branches, mode="separate")
    # hot-swap vs a fresh build of the engine (read + precision passes + compile, from its manifest)
    swaps = [sep.set_lora(synthetic_lora(model, rank, seed=s))["swap_s"] for s in (1, 2, 3)]
    build = sep.manifest.timings_s
    swap = {"swap_s": statistics.median(swaps), "build_s": build["total"], "compile_s": build["compile"],
            "speedup_vs_build": build["total"] / statistics.median(swaps)}
    merged.close(), sep.close()
    return {"geometry": source, "shape": shape_s, "rank": rank, "backend": f"ov {precision}", "pairs": len(ratios),
            "mean_overhead": statistics.fmean(ratios), "ci95": list(ci), "half_width": (ci[1] - ci[0]) / 2,
            "reached_1pt": (ci[1] - ci[0]) / 2 <= 0.01, "flop_share": fl["lora_share"], "swap": swap,
            "seconds": time.perf_counter() - t_start}


# ------------------------------------------------------------------------------------------------ 4. scaling
def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def token_sweep(source, layers, shapes, threads, repeats, skipped) -> dict[str, Any]:
    backends = {label: make_backend(kind, precision, source, layers, threads)
                for label, kind, precision in BACKENDS
                if label in ("eager fp32", "ov fp32", "ov bf16") and label not in skipped}
    rows = []
    for s in shapes:
        shape = VideoShape(*map(int, s.split("x")))
        feeds = feeds_for(next(iter(backends.values())), shape)
        for b in backends.values():  # warm-up (OpenVINO specialises on the first call of a shape)
            b(*feeds)
        samples = time_rounds({label: partial(b, *feeds) for label, b in backends.items()}, repeats)
        for label in backends:
            rows.append({"shape": s, "tokens": shape.tokens(), "backend": label,
                         "median_s": statistics.median(samples[label])})
    for b in backends.values():
        b.close()
    fits = {label: fit_exponent([r["tokens"] for r in rows if r["backend"] == label],
                                [r["median_s"] for r in rows if r["backend"] == label]) for label in backends}
    return {"geometry": source, "rows": rows, "exponent": fits}


def rank_sweep(source, layers, shape_s, ranks, threads, repeats, precision: str) -> dict[str, Any]:
    shape = VideoShape(*map(int, shape_s.split("x")))
    backends = {"merged r16": make_backend("ov", precision, source, layers, threads, 16, "merged")}
    for r in ranks:
        backends[f"separate r{r}"] = make_backend("ov", precision, source, layers, threads, r, "separate")
    # the same branch on the cross-attention projections only (the rank study's other target set)
    backends["separate r16 cross-attn"] = make_backend("ov", precision, source, layers, threads, 16, "separate",
                                                       "cross-attn")
    feeds = feeds_for(backends["merged r16"], shape)
    for b in backends.values():
        b(*feeds)
    samples = time_rounds({k: partial(b, *feeds) for k, b in backends.items()}, repeats)
    med = {k: statistics.median(v) for k, v in samples.items()}
    for b in backends.values():
        b.close()
    over = {r: med[f"separate r{r}"] - med["merged r16"] for r in ranks}
    return {"geometry": source, "shape": shape_s, "backend": f"ov {precision}", "median_s": med, "overhead_s": over,
            "exponent_latency": fit_exponent(list(ranks), [med[f"separate r{r}"] for r in ranks]),
            "exponent_overhead": fit_exponent(list(ranks), [over[r] for r in ranks])}


# ------------------------------------------------------------------------------------------------ 5. cost model
def validate_cost_model(rows, peaks) -> list[dict[str, Any]]:
    """Roofline per measured point, plus a per-op dispatch overhead per backend: a CPU runtime spends a fixed time
    per op (scheduling, reorders, small kernels) that no peak captures. It is calibrated on each backend's smallest
    point (marked `calibration`, not counted in the +/-20% check) and predicted for the others."""
    bw = peaks["bandwidth"]["gbps"] * 1e9
    pure = []
    for r in rows:
        precision = "fp32" if r["precision"] == "fp32" else ("int8" if r["precision"] == "int8" else "bf16")
        peak = peaks[r["peak_kernel"]]["tflops"] * 1e12
        ops = cm.forward_ops(r["config"], r["tokens"], 1, precision)
        pure.append((r, cm.predict(ops, peak, bw), len(ops)))
    overhead: dict[str, tuple[float, Any]] = {}
    for r, pred, n_ops in sorted(pure, key=lambda x: x[0]["flops"]):
        if r["backend"] not in overhead:
            overhead[r["backend"]] = (max(0.0, (r["median_s"] - pred["seconds"]) / n_ops), id(r))
    out = []
    for r, pred, n_ops in pure:
        per_op, calib_id = overhead[r["backend"]]
        seconds = pred["seconds"] + per_op * n_ops
        ratio = seconds / r["median_s"]
        calibration = id(r) == calib_id
        out.append({"geometry": r["geometry"], "shape": r["shape"], "backend": r["backend"],
                    "measured_s": r["median_s"], "roofline_s": pred["seconds"], "overhead_per_op_s": per_op,
                    "ops": n_ops, "predicted_s": seconds, "ratio": ratio, "calibration": calibration,
                    "within_20pct": None if calibration else abs(ratio - 1) <= 0.2, "by_kind_s": pred["by_kind_s"],
                    "bound_s": pred["bound_s"]})
    return out


def real_geometry_prediction() -> list[dict[str, Any]]:
    from wanrt.export.presets import PRESETS

    config = dict(PRESETS["wan2.1-i2v-14b"].config)
    tokens = VideoShape(81, 480, 832).tokens()
    return cm.gpu_predictions(config, tokens, batch=2, rank=16)


# ------------------------------------------------------------------------------------------------ report
def render(results: dict[str, Any]) -> str:
    L = [f"# CPU engines vs eager at equal quality ({results['config']})", "",
         f"Command: `{results['command']}`  ", f"Machine: {results['machine'].get('cpu')}, "
         f"{results['machine'].get('cpu_count')} CPUs, threads {results['threads']}; load average at start "
         f"{results['load_average']}; OpenVINO {results['versions'].get('openvino')}, torch "
         f"{results['versions'].get('torch')}, ONNX Runtime {results['versions'].get('onnxruntime')}.  ",
         f"Wall time {results['seconds']:.0f} s. {results.get('note', '')}", ""]
    L += [f"Skipped: **{k}**: {v}" for k, v in results.get("skipped", {}).items()]
    L += ["", "## Peaks (same run)", "",
         "| kernel | TFLOP/s (TOP/s) |", "|---|---|"]
    for k, v in results["peaks"].items():
        if "tflops" in v:
            L.append(f"| {k} | {v['tflops']:.3f} |")
    L += [f"| copy bandwidth | {results['peaks']['bandwidth']['gbps']:.1f} GB/s |", "",
          "## Backends (rank-16 merged exports; interleaved; rel. error vs eager fp32)", "",
          "| geometry | shape | tokens | backend | ms | x eager fp32 | x eager bf16 | rel err | gate | MFU "
          "| blob MiB |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["geometry"], r["shape"], r["backend"]): r for r in results["backends"]}
    for r in results["backends"]:
        e32 = by[(r["geometry"], r["shape"], "eager fp32")]["median_s"]
        e16 = by[(r["geometry"], r["shape"], "eager bf16")]["median_s"]
        mfu = f"{100 * r['mfu']:.0f}% of {r['peak_kernel']}" if r["mfu"] else "-"
        L.append(f"| {r['geometry']} | {r['shape']} | {r['tokens']} | {r['backend']} | {r['median_s'] * 1e3:.1f} | "
                 f"{e32 / r['median_s']:.2f} | {e16 / r['median_s']:.2f} | {r['rel_err']:.2e} | "
                 f"{'pass' if r['passes_gate'] else 'FAIL'} ({r['gate']:g}) | {mfu} | "
                 f"{'-' if r.get('engine_mib') is None else format(r['engine_mib'], '.1f')} |")
    p = results["paired"]
    L += ["", f"## Separate vs merged LoRA (paired, OpenVINO {p['backend'].split()[-1]})", "",
          f"{p['geometry']} {p['shape']}, rank {p['rank']}: overhead {100 * p['mean_overhead']:.1f}% "
          f"(95% CI {100 * p['ci95'][0]:.1f}..{100 * p['ci95'][1]:.1f}%, {p['pairs']} pairs; +/-1 point "
          f"{'reached' if p['reached_1pt'] else 'NOT reached'}); FLOP share of the branches "
          f"{100 * p['flop_share']:.1f}% (goal: within 2 points: "
          f"{'yes' if abs(p['mean_overhead'] - p['flop_share']) <= 0.02 else 'no'}).", "",
          f"LoRA hot-swap on that engine: {1e3 * p['swap']['swap_s']:.1f} ms (median of 3) vs a fresh build "
          f"{p['swap']['build_s']:.2f} s (compile alone {p['swap']['compile_s']:.2f} s): "
          f"{p['swap']['speedup_vs_build']:.0f}x (goal >= 20x).", ""]
    t = results["tokens"]
    L += ["## Latency vs tokens", "", "| shape | tokens | " + " | ".join(t["exponent"]) + " |",
          "|---|---|" + "---|" * len(t["exponent"])]
    for s in dict.fromkeys(r["shape"] for r in t["rows"]):
        rs = [r for r in t["rows"] if r["shape"] == s]
        L.append(f"| {s} | {rs[0]['tokens']} | " + " | ".join(f"{r['median_s'] * 1e3:.1f} ms" for r in rs) + " |")
    L.append("| fitted exponent | | " + " | ".join(f"{v:.2f}" if v else "-" for v in t["exponent"].values()) + " |")
    rk = results["ranks"]
    L += ["", f"## Latency vs LoRA rank ({rk['geometry']} {rk['shape']}, OpenVINO {rk['backend'].split()[-1]}, "
               "separate)", "",
          "| variant | ms | overhead vs merged |", "|---|---|---|"]
    for k, v in rk["median_s"].items():
        over = v - rk["median_s"]["merged r16"]
        L.append(f"| {k} | {v * 1e3:.1f} | {over * 1e3:+.1f} ms |")
    L.append(f"\nFitted exponent of latency vs rank {rk['exponent_latency']}, of the overhead vs rank "
             f"{rk['exponent_overhead']}.")
    cmv = results["cost_model"]
    checked = [r for r in cmv if not r["calibration"]]
    ok = sum(bool(r["within_20pct"]) for r in checked)
    L += ["", f"## Cost model vs measured ({ok}/{len(checked)} predicted points within +/-20%)", "",
          "Roofline (FLOPs / the backend's kernel peak, bytes / copy bandwidth, per op) + a per-op overhead fitted on "
          "each backend's smallest point (calibration rows, not checked).", "",
          "| geometry | shape | backend | measured ms | roofline ms | + overhead = predicted ms | predicted/measured |",
          "|---|---|---|---|---|---|---|"]
    for r in cmv:
        flag = "calibration" if r["calibration"] else ("" if r["within_20pct"] else " (out)")
        L.append(f"| {r['geometry']} | {r['shape']} | {r['backend']} | {r['measured_s'] * 1e3:.1f} | "
                 f"{r['roofline_s'] * 1e3:.1f} | {r['predicted_s'] * 1e3:.1f} | {r['ratio']:.2f} {flag} |")
    L += ["", "## PREDICTION (not measured): real Wan2.1 I2V-14B, 480x832, 81 frames, CFG batch 2, rank 16", "",
          "Roofline with published dense peaks; a lower bound on latency (perfect kernels, no overlap).", "",
          "| GPU | precision | LoRA mode | forward s | LoRA branch s | branch bound (intensity vs ridge) |",
          "|---|---|---|---|---|---|"]
    for r in results["gpu_prediction"]:
        inten = (f"{r['lora_bound']} ({r['lora_intensity_flop_per_byte']:.0f} vs {r['ridge_flop_per_byte']:.0f} "
                 f"FLOP/B)" if r["lora_bound"] else "-")
        L.append(f"| {r['gpu']} | {r['precision']} | {r['mode']} | {r['seconds']:.2f} | {r['lora_s']:.3f} | "
                 f"{inten} |")
    return "\n".join(L) + "\n"


def plots(results: dict[str, Any], out: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in results["tokens"]["exponent"]:
        rs = [r for r in results["tokens"]["rows"] if r["backend"] == label]
        ax.loglog([r["tokens"] for r in rs], [r["median_s"] for r in rs], "o-", label=label)
    ticks = sorted({r["tokens"] for r in results["tokens"]["rows"]})
    ax.minorticks_off(), ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("video tokens"), ax.set_ylabel("forward s"), ax.legend(), ax.set_title("latency vs tokens")
    fig.tight_layout(), fig.savefig(out / f"{stem}-tokens.png", dpi=100), plt.close(fig)
    files.append(f"{stem}-tokens.png")
    rk = results["ranks"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ranks = sorted(rk["overhead_s"], key=int)
    ax.plot([int(r) for r in ranks], [rk["overhead_s"][r] * 1e3 for r in ranks], "o-")
    ax.set_xscale("log", base=2), ax.set_xlabel("LoRA rank"), ax.set_ylabel("separate - merged (ms)")
    fig.tight_layout(), fig.savefig(out / f"{stem}-rank.png", dpi=100), plt.close(fig)
    files.append(f"{stem}-rank.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    c = results["cost_model"]
    ax.loglog([r["measured_s"] for r in c], [r["predicted_s"] for r in c], "o")
    lo, hi = min(r["measured_s"] for r in c), max(r["measured_s"] for r in c)
    ax.plot([lo, hi], [lo, hi], "k--"), ax.set_xlabel("measured s"), ax.set_ylabel("roofline s")
    fig.tight_layout(), fig.savefig(out / f"{stem}-roofline.png", dpi=100), plt.close(fig)
    files.append(f"{stem}-roofline.png")
    return files


def main(argv=None) -> int:
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=list(CONFIGS), default="smoke")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--note", default="", help="e.g. the machine's load while this ran")
    args = ap.parse_args(argv)
    cfg = CONFIGS[args.config]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = header("bench_cpu_engines", argv, config=args.config, threads=args.threads, note=args.note,
                     versions={**library_versions(), "openvino": ov.__version__})
    skipped = results["skipped"] = skipped_backends()
    for label, why in skipped.items():  # measured what the CPU has; says what it skipped
        log(f"skipping {label}: {why}")
    precision = sweep_precision(skipped)
    log("peaks")
    results["peaks"] = measure_peaks(*cfg["peak_mkn"], skipped)
    results["backends"] = []
    for source, layers, shapes in cfg["geometries"]:
        repeats = cfg.get("repeats_by_geometry", {}).get(source, cfg["repeats"])
        results["backends"] += run_geometry(source, layers, shapes, args.threads, repeats, results["peaks"], skipped)
    log("paired separate vs merged")
    results["paired"] = paired_overhead(*cfg["pair_point"], args.threads, cfg["pairs"], precision)
    log("token sweep")
    results["tokens"] = token_sweep(*cfg["token_shapes"], args.threads, cfg["repeats"], skipped)
    log("rank sweep")
    results["ranks"] = rank_sweep(*cfg["rank_point"], cfg["ranks"], args.threads, cfg["repeats"], precision)
    results["cost_model"] = validate_cost_model(results["backends"], results["peaks"])
    results["gpu_prediction"] = real_geometry_prediction()
    finish(results, t0)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ov-cpu-{args.config}"
    results["plots"] = plots(results, args.out, stem)
    write_results(args.out, stem, results, render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
