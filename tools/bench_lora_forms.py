"""Graph forms of the separate LoRA branch against merged, on OpenVINO and ONNX Runtime (issue 20). Writes
lora-forms-<model>.json (raw: every ratio) and .md under -o.

    python -m wanrt.tools.bench_lora_forms --model small -o docs/results          # ~20 min on a loaded 2-core CPU
    python -m wanrt.tools.bench_lora_forms --model wan2.1-i2v-14b --layers 1 --shape 21x224x256 \
        --shapes 5x128x128,9x128x224,21x224x256,29x320x384 --rounds 10,60 --sweep-rounds 10,10  # the 14B slice

One rank-`--rank` synthetic LoRA on `--lora-targets` (default every target), exported twice (merged, separate);
for each of `--targets`: the separate export compiled in each form of engines/openvino/lora_form.FORMS at an
OpenVINO precision the CPU runs natively ("ov bf16"), or ONNX Runtime's swappable session in each form ("ort fp32":
engines/lora_swap.shared_a_onnx; both forms hold the same LoRA as fed inputs, so they differ only in the graph form):
1. quality: each form's output against the plain form (fp32: the same sums in another order);
2. paired overhead at the main shape: every round runs merged and each form once, the order rotating; each form's
   per-round ratio to merged, its mean and bootstrap 95% CI (tools/bench_cpu_engines), until every half-width is
   <= 1 point or `--rounds` is spent; against the branch's FLOP share (runtime/flops.py; the forms do the same
   FLOPs);
3. overhead vs tokens: the same at >= 4 shapes (fewer rounds); the branch's extra ms and merged's ms each fitted
   as a line in tokens (trend), evaluated at Wan 480p/81 frames (32,760 tokens) as an EXTRAPOLATION, not a
   measurement; and shared-a against plain in the same rounds (paired difference).
The machine is recorded (CPU model and ISA flags, cores, load average before and after): on a shared machine the
CI half-width is the honest size of the noise within one run. Between runs it is larger (on `small`, OpenVINO bf16:
+5.5% to +13.2% in six fresh processes, each ±1): `--runs N` repeats the whole measurement in N fresh processes and
reports each form's main-shape overhead per run with a t 95% interval over the runs (<stem>-runs.json/.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wanrt.artifacts import atomic_path, cpu_info
from wanrt.dit_io import DitIO, ShapeRange, VideoShape
from wanrt.errors import BadInputError, WanrtError
from wanrt.engines.cache import engine_in_cache
from wanrt.engines.lora_swap import swap_section
from wanrt.engines.onnx_dir import onnx_initializer_info, read_onnx_dir
from wanrt.engines.openvino.engine import (OvEngine, OvEngineSpec, build_openvino_engine, cache_key,
                                           compile_properties, device_capabilities, read_with_lora_inputs,
                                           supported_precisions)
from wanrt.engines.openvino.lora_form import FORMS, apply_form, bound_factor, narrow_lora_inputs
from wanrt.export.lora import synthetic_lora
from wanrt.export.model import ModelSpec, load_transformer
from wanrt.runtime.backends import OrtBackend
from wanrt.runtime.flops import forward_flops, lora_branches
from wanrt.export.presets import PRESETS
from wanrt.tools.bench_cpu_engines import (bootstrap_ci, export_dir, finish, header, interval, log, ratio_ci,
                                           time_rounds, write_results)
from wanrt.tools.cpu_cost_model import form_predictions

WAN_480P_TOKENS = 21 * 60 * 104 // 4  # 81 frames -> 21 latent frames, 480x832 -> 60x104 latent, 2x2 patches


def engine(art: Path, precision: str, form: str, threads: int) -> OvEngine:
    spec = OvEngineSpec(precision=precision, lora_form=form)
    out = engine_in_cache(spec.cache_dir, cache_key(art, spec),
                          lambda o: build_openvino_engine(art, spec, o, force=True, threads=threads))
    return OvEngine(out, threads=threads)


def feeds(config, shape: VideoShape, seed: int = 0) -> dict[str, np.ndarray]:
    io = DitIO(config, torch.float32, ShapeRange(shape, shape))
    return {k: v.numpy() for k, v in io.dummy_inputs(1, shape, seed=seed, timestep=500.0).items()}


def paired(runs: dict[str, Callable[[], Any]], rounds: tuple[int, int]) -> dict[str, Any]:
    """Rounds of every run once (order rotating; "merged" first in `runs`), each form's ratio to "merged" per round,
    until every bootstrap 95% CI half-width is <= 1 point or rounds[1] are spent (checked every rounds[0])."""
    for run in runs.values():
        run()  # warm-up: OpenVINO specialises on the first call of a shape
    times = time_rounds(runs, rounds[1], rotate=True, check=(rounds[0], rounds[0]))
    out = {"rounds": len(times["merged"]), "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}}
    for k in list(runs)[1:]:
        ratios, (lo, hi), half = ratio_ci(times, k)
        out[k] = {"mean_overhead": statistics.fmean(ratios) - 1.0, "ci95": [lo - 1.0, hi - 1.0], "half_width": half,
                  "ratios": [r - 1.0 for r in ratios]}
    return out


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def trend(rows: list[dict[str, Any]], form: str, at: int = WAN_480P_TOKENS) -> dict[str, Any]:
    """The branch's extra time and merged's time, each a line in tokens (a fixed per-op cost + a per-token cost):
    the overhead tends to the ratio of the per-token slopes; evaluated at `at` tokens as an EXTRAPOLATION (merged's
    quadratic self-attention term is not in a line, so the value at 32k tokens overstates the overhead)."""
    tokens = [r["tokens"] for r in rows]
    extra = _line(tokens, [r["median_ms"][form] - r["median_ms"]["merged"] for r in rows])
    merged = _line(tokens, [r["median_ms"]["merged"] for r in rows])
    return {"model": "extra ms = a + b tokens; merged ms = c + d tokens", "extra_ms": extra, "merged_ms": merged,
            "per_token_share": extra[1] / merged[1], "at_tokens": at,
            "extrapolated_overhead": (extra[0] + extra[1] * at) / (merged[0] + merged[1] * at)}


def trends(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each form's trend; none from fewer than two token counts (a one-shape run: a line needs two)."""
    return {form: trend(rows, form) for form in FORMS} if len({r["tokens"] for r in rows}) > 1 else {}


def paired_difference(row: dict[str, Any], form: str, base: str = "plain") -> dict[str, Any]:
    """`form` against `base` in the same rounds: the per-round difference of their overheads, mean and 95% CI."""
    d = [a - b for a, b in zip(row[form]["ratios"], row[base]["ratios"])]
    lo, hi = bootstrap_ci(d)
    return {"mean": statistics.fmean(d), "ci95": [lo, hi]}


def ort_runs(arts: dict[str, Path], lora, threads: int) -> dict[str, Any]:
    """ORT fp32: merged, and the separate export's swappable session in each form, all holding the same LoRA (the
    plain session made swappable by a swap of that LoRA, so both forms run its weights as fed inputs)."""
    out = {"merged": OrtBackend(arts["merged"], threads=threads)}
    for form in FORMS:
        out[form] = OrtBackend(arts["separate"], threads=threads, lora_form=form)
        out[form].set_lora(lora)
    return out


def run_target(source, layers, target, shapes, main_shape, rank, threads, rounds, sweep_rounds,
               lora_targets: str = "all") -> dict[str, Any]:
    """One target (OpenVINO at a precision, or "ort fp32"): quality vs plain, paired overheads per shape, trend."""
    model = load_transformer(ModelSpec(source, layers=layers))
    config = dict(model.config)
    lora = synthetic_lora(model, rank, lora_targets)  # what export_dir exported (LoraSpec's default seed 0)
    branches = lora_branches(lora)
    arts = {mode: export_dir(source, layers, rank, mode, lora_targets) for mode in ("merged", "separate")}
    del model  # the exports are on disk; a 14B block is 1.8 GB in fp32
    log(f"{target}: engines")
    out: dict[str, Any] = {"target": target}
    if target == "ort fp32":
        backends = ort_runs(arts, lora, threads)

        def call(k, f):
            args = [torch.from_numpy(f[n]) for n in ("latents", "timestep", "text", "image") if n in f]
            return lambda: backends[k](*args).numpy()
    else:
        precision = target.split()[-1]
        engines = {"merged": engine(arts["merged"], precision, "plain", threads),
                   **{form: engine(arts["separate"], precision, form, threads) for form in FORMS}}
        out["forms"] = {f: engines[f].manifest.section("lora_form") for f in FORMS}

        def call(k, f):
            return lambda: engines[k].infer(f)
    labels = ["merged", *FORMS]
    f = feeds(config, main_shape)
    plain = call("plain", f)()
    out["rel_err_vs_plain"] = {form: float(np.abs(call(form, f)() - plain).max() / np.abs(plain).max())
                               for form in FORMS}
    rows = []
    for s in shapes:
        shape = VideoShape(*map(int, s.split("x")))
        log(f"{target}: {s}")
        fs = feeds(config, shape)
        r = paired({k: call(k, fs) for k in labels}, rounds if s == str(main_shape) else sweep_rounds)
        fl = forward_flops(config, shape.latent, lora=branches, mode="separate")
        r.update({"shape": s, "tokens": fl["tokens"], "flop_share": fl["lora_share"], "main": s == str(main_shape)})
        rows.append(r)
        log("  " + ", ".join(f"{k} {r[k]['mean_overhead'] * 100:+.1f}% +/-{r[k]['half_width'] * 100:.1f}"
                             for k in FORMS) + f" (FLOP share {fl['lora_share'] * 100:.1f}%, {r['rounds']} rounds)")
    out["rows"] = rows
    out["trend"] = trends(rows)
    return out


def graph_look(source: str, layers: int | None, precision: str, rank: int, threads: int, shape: VideoShape,
               rounds: int = 40) -> dict[str, Any]:
    """What OpenVINO's CPU plugin makes of the branch, per form, compiled as the engine compiles it (the LoRA
    factors' input type included: lora_form.narrow_lora_inputs): its runtime layer types; the layer each branch
    output Add (base + x A B) runs in, an Eltwise of its own or fused as a post-op into the base FullyConnected or
    the branch's MatMul (the fusion issue 20 asks about); and where the time goes, from the plugin's per-layer
    counters (PERF_COUNT) summed by layer type over `rounds` interleaved inferences at `shape`, each form's extra
    milliseconds per layer type against merged's."""
    import collections

    import openvino as ov

    core = ov.Core()
    caps = device_capabilities(core, "CPU")
    fs = feeds(dict(PRESETS[source].config), shape)
    requests, out, held = {}, {}, []
    for form in ("merged", *FORMS):
        manifest, onnx_path = read_onnx_dir(export_dir(source, layers, rank, "merged" if form == "merged"
                                                       else "separate"))
        names = [] if form == "merged" else \
            list(swap_section(manifest.lora, onnx_initializer_info(onnx_path))["refittable_weights"])
        model, defaults = read_with_lora_inputs(core, onnx_path, names)
        model, _ = apply_form(model, "plain" if form == "merged" else form)
        adds = {t.get_node().get_friendly_name() for p in model.get_parameters()
                if p.get_friendly_name().endswith(".B") for b in p.output(0).get_target_inputs()
                for t in b.get_node().output(0).get_target_inputs() if t.get_node().get_type_name() == "Add"}
        factor_type = narrow_lora_inputs(model, "fp32" if form == "merged" else precision, caps)  # after the walk
        compiled = core.compile_model(model, "CPU", {**compile_properties(precision, threads), "PERF_COUNT": True})
        types, add_in = collections.Counter(), collections.Counter()
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            types[kind] += 1
            add_in[kind] += len(set(info["originalLayersNames"].astype(str).split(",")) & adds)
        out[form] = {"runtime_layers": dict(sorted(types.items())), "branch_adds": len(adds),
                     "branch_add_runs_in": {k: v for k, v in add_in.items() if v}}
        request = requests[form] = compiled.create_infer_request()
        for name, value in {**fs, **defaults}.items():
            kept, tensor = bound_factor(value, ov.Type.bf16 if name in defaults and factor_type == "bf16"
                                        else ov.Type.f32)
            held.append(kept)  # the tensor shares this memory
            request.set_tensor(name, tensor)
        request.infer()  # warm-up
    ms = {form: collections.Counter() for form in requests}
    for i in range(rounds):
        order = list(requests)[i % len(requests):] + list(requests)[:i % len(requests)]
        for form in order:
            requests[form].infer()
            for info in requests[form].profiling_info:
                ms[form][info.node_type] += info.real_time.total_seconds() * 1e3 / rounds
    for form in requests:
        out[form]["ms_by_layer_type"] = {k: round(v, 3) for k, v in ms[form].most_common() if v >= 0.005}
        if form != "merged":
            extra = {k: ms[form][k] - ms["merged"][k] for k in ms[form] | ms["merged"]}
            out[form]["extra_ms_by_layer_type"] = {k: round(v, 3) for k, v in
                                                   sorted(extra.items(), key=lambda kv: -abs(kv[1]))
                                                   if abs(v) >= 0.05}
    out["counters"] = {"shape": str(shape), "rounds": rounds, "lora_inputs": factor_type}
    return out


def gpu_prediction(rank: int) -> list[dict[str, Any]]:
    """The roofline cost model's PREDICTION per form on the 14B geometry at 480p/81 frames, CFG batch 2."""
    return form_predictions(dict(PRESETS["wan2.1-i2v-14b"].config), WAN_480P_TOKENS, batch=2, rank=rank)


def render(results: dict[str, Any]) -> str:
    m, cpu = results["machine"], results["cpu"]
    blocks = f", {results['layers']} block(s)" if results.get("layers") else ""
    on = results.get("lora_targets", "all")  # results written before the option: every target
    lines = [f"# Separate LoRA graph forms vs merged ({results['model']}{blocks}, rank {results['rank']} on {on} "
             "targets)", "",
             f"CPU {cpu['model']} ({', '.join(cpu['isa'])}), {m.get('cpu_count', '?')} cores, {results['threads']} "
             f"threads; load average {results['load_average']} before, {results['load_average_end']} after "
             f"(above {results['threads']}, this run's own threads, other jobs shared the cores). Command: "
             f"`{results['command']}`.", "",
             "Forms (engines/openvino/lora_form.py, engines/lora_swap.shared_a_onnx): plain = one x·A GEMM per "
             "module as exported; shared-a = one x·Concat(A) GEMM per shared input, then a split. Same FLOPs, same "
             "swap layout.", ""]
    for p in results["targets"]:
        lines += [f"## {p['target']}", "",
                  "rel. error vs plain: " + ", ".join(f"{k} {v:.1e}" for k, v in p["rel_err_vs_plain"].items()), "",
                  "| shape | tokens | rounds | merged ms | " + " | ".join(f"{f} overhead (95% CI)" for f in FORMS)
                  + " | FLOP share |", "|---|---|---|---|" + "---|" * len(FORMS) + "---|"]
        for r in p["rows"]:
            cells = [f"{r[f]['mean_overhead'] * 100:+.1f}% ({r[f]['ci95'][0] * 100:+.1f}..{r[f]['ci95'][1] * 100:+.1f})"
                     for f in FORMS]
            head = f"| {r['shape']}{' (main)' if r['main'] else ''} | {r['tokens']} | {r['rounds']} | "
            lines.append(head + f"{r['median_ms']['merged']:.1f} | " + " | ".join(cells)
                         + f" | {r['flop_share'] * 100:.1f}% |")
        lines.append("")
        for r in p["rows"]:
            d = paired_difference(r, "shared-a")
            lines.append(f"- {r['shape']}: shared-a − plain, same rounds: {d['mean'] * 100:+.1f} points (95% CI "
                         f"{d['ci95'][0] * 100:+.1f}..{d['ci95'][1] * 100:+.1f})")
        lines.append("")
        for f, t in p["trend"].items():
            lines.append(f"- {f} trend: extra {t['extra_ms'][0]:.1f} + {t['extra_ms'][1] * 1e3:.2f}/1k tokens ms, "
                         f"merged {t['merged_ms'][0]:.1f} + {t['merged_ms'][1] * 1e3:.1f}/1k tokens ms: per-token "
                         f"share {t['per_token_share'] * 100:.1f}%; EXTRAPOLATED to {t['at_tokens']} tokens (Wan "
                         f"480p/81 frames): {t['extrapolated_overhead'] * 100:+.1f}% (not a measurement)")
        lines.append("")
    lines += ["## Cost model: PREDICTION, not a measurement", "",
              f"tools/cpu_cost_model.form_predictions: Wan2.1 14B, {WAN_480P_TOKENS} tokens (480x832, 81 frames), CFG "
              "batch 2, rank 16, published dense peaks; roofline per op (no launch cost). fp8 rows run the branch at "
              "the base's rate and bytes.", "",
              "| GPU | precision | form | merged s | separate s | predicted overhead |", "|---|---|---|---|---|---|"]
    for r in results.get("gpu_prediction", []):
        lines.append(f"| {r['gpu']} | {r['precision']} | {r['form']} | {r['merged_s']:.2f} | {r['separate_s']:.2f} | "
                     f"{r['predicted_overhead'] * 100:+.1f}% |")
    return "\n".join(lines) + "\n"


def runs_spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target's main-shape overhead per run and form, with the mean's t 95% interval over the runs (targets
    every run measured; a skipped one is absent)."""
    out = {}
    for target in [p["target"] for p in runs[0]["targets"]]:
        mains = [next(r for r in p["rows"] if r["main"]) for run in runs for p in run["targets"]
                 if p["target"] == target]
        if len(mains) == len(runs):
            out[target] = {"flop_share": mains[0]["flop_share"],
                           **{f: interval([m[f]["mean_overhead"] for m in mains]) for f in FORMS}}
    return out


def render_runs(results: dict[str, Any]) -> str:
    cpu = results["cpu"]
    lines = [f"# Separate LoRA vs merged, {len(results['runs'])} runs ({results['model']}, rank {results['rank']} on "
             f"{results['lora_targets']} targets)", "",
             f"CPU {cpu['model']} ({', '.join(cpu['isa'])}); each run a fresh process (its own file: "
             f"{results['stem']}-runN.json/.md); load average {results['load_average']} before, "
             f"{results['load_average_end']} after. Command: `{results['command']}`.", "",
             "| target | form | overhead per run | mean (95% CI over runs) | FLOP share |", "|---|---|---|---|---|"]
    for target, t in results["spread"].items():
        for f in FORMS:
            iv = t[f]
            ci = f"{iv['ci95'][0] * 100:+.1f}..{iv['ci95'][1] * 100:+.1f}" if iv["ci95"] else "one run"
            lines.append(f"| {target} | {f} | {', '.join(f'{v * 100:+.1f}%' for v in iv['values'])} | "
                         f"{iv['mean'] * 100:+.1f}% ({ci}) | {t['flop_share'] * 100:.1f}% |")
    return "\n".join(lines) + "\n"


def repeat_runs(args: argparse.Namespace, argv: list[str] | None, stem: str) -> int:
    """--runs N: this tool N times over in fresh processes (engines loaded and memory placed anew each time), then
    the spread between them (runs_spread)."""
    t0 = time.perf_counter()
    results = header("bench_lora_forms", argv, model=args.model, layers=args.layers, rank=args.rank,
                     lora_targets=args.lora_targets, cpu=cpu_info(), stem=stem, runs=[])
    child = ["--model", args.model, "--rank", str(args.rank), "--lora-targets", args.lora_targets,
             "--shape", args.shape, "--shapes", args.shapes, "--targets", args.targets, "--rounds", args.rounds,
             "--sweep-rounds", args.sweep_rounds, "--threads", str(args.threads), "-o", str(args.out)]
    child += ["--layers", str(args.layers)] if args.layers else []
    for i in range(1, args.runs + 1):
        log(f"run {i} of {args.runs}")
        rc = subprocess.run([sys.executable, "-m", "wanrt.tools.bench_lora_forms", *child, "--name",
                             f"{stem}-run{i}"]).returncode
        if rc != 0:  # the child said why; runs 1..i-1 stay in their own files
            print(f"error: run {i} of {args.runs} exited {rc}; no {stem}-runs file written", file=sys.stderr)
            return rc
        results["runs"].append(json.loads((args.out / f"{stem}-run{i}.json").read_text()))
    results["spread"] = runs_spread(results["runs"])
    finish(results, t0)
    write_results(args.out, f"{stem}-runs", results, render_runs(results))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--layers", type=int, default=None, help="keep the first N blocks (the 14B slice: 1)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lora-targets", default="all", help="the LoRA's target group (all, cross-attn, ...: "
                    "export/lora.resolve_targets); --graph-look takes all")
    ap.add_argument("--shape", default="17x128x224", help="the main shape (small: 560 tokens)")
    ap.add_argument("--shapes", default="5x64x64,9x128x128,17x128x224,17x192x320",
                    help="the token sweep (small: 32, 192, 560, 1200 tokens)")
    ap.add_argument("--targets", default="ov bf16,ort fp32",
                    help="OpenVINO precisions as 'ov P' (those the CPU lacks are skipped, saying why), and 'ort fp32'")
    ap.add_argument("--rounds", default="40,200", help="main shape: check every N rounds, at most M")
    ap.add_argument("--sweep-rounds", default="20,20", help="the other shapes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--name", default=None, help="file stem (default lora-forms-<model>)")
    ap.add_argument("--graph-look", action="store_true",
                    help="only compile each form and record OpenVINO's runtime graph and its time per layer type "
                         "against merged (<stem>-graph.json)")
    ap.add_argument("--render", type=Path, default=None, help="only re-render the .md of a raw JSON this tool wrote")
    ap.add_argument("--runs", type=int, default=1,
                    help="the whole measurement N times, each in a fresh process, and the spread between the runs")
    args = ap.parse_args(argv)
    if args.runs < 1 or (args.runs > 1 and (args.graph_look or args.render is not None)):
        ap.error("--runs N: N >= 1, and not with --graph-look or --render")
    if args.graph_look and args.lora_targets != "all":  # before any work
        ap.error("--graph-look looks at the LoRA on every target; leave --lora-targets out")
    if args.render is not None:  # the raw JSON is read, never rewritten: the report shows what it recorded
        results = json.loads(args.render.read_text())
        for p in results["targets"]:  # only results older than the trend lack these two: computed only then
            if "trend" not in p:
                p["trend"] = trends(p["rows"])
        if "gpu_prediction" not in results:
            results["gpu_prediction"] = gpu_prediction(results["rank"])
        with atomic_path(args.render.with_suffix(".md")) as tmp:
            tmp.write_text(render(results))
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    offered = supported_precisions()
    results = header("bench_lora_forms", argv, model=args.model, layers=args.layers, rank=args.rank,
                     lora_targets=args.lora_targets,
                     threads=args.threads, cpu=cpu_info(), targets=[], gpu_prediction=gpu_prediction(args.rank),
                     skipped={t: offered[t.split()[-1]] for t in args.targets.split(",")
                              if t.startswith("ov ") and offered.get(t.split()[-1])})
    if len(results["skipped"]) == len(args.targets.split(",")):  # else the run measures and writes nothing, exit 0
        raise BadInputError(f"--targets {args.targets}: none runs on this CPU ("
                            + "; ".join(f"{t}: {why}" for t, why in results["skipped"].items()) + ")")
    main_shape = VideoShape(*map(int, args.shape.split("x")))
    shapes = list(dict.fromkeys([*args.shapes.split(","), args.shape]))
    stem = args.name or (f"lora-forms-{args.model}" + (f"-layers{args.layers}" if args.layers else "")
                         + (f"-{args.lora_targets}" if args.lora_targets != "all" else ""))
    if args.runs > 1:
        return repeat_runs(args, argv, stem)
    if args.graph_look:  # the runtime graph and its per-layer counters only (~20 s on small)
        looked = [t for t in args.targets.split(",") if t.startswith("ov ") and t not in results["skipped"]]
        results["graph_look"] = {t: graph_look(args.model, args.layers, t.split()[-1], args.rank, args.threads,
                                               main_shape) for t in looked}
        write_results(args.out, f"{stem}-graph", results)
        return 0
    rounds, sweep = tuple(map(int, args.rounds.split(","))), tuple(map(int, args.sweep_rounds.split(",")))
    for t in args.targets.split(","):  # write_results makes -o when there is a result: a failed run leaves none
        if t in results["skipped"]:
            log(f"skipping {t}: {results['skipped'][t]}")
            continue
        results["targets"].append(run_target(args.model, args.layers, t, shapes, main_shape, args.rank,
                                             args.threads, rounds, sweep, args.lora_targets))
        finish(results, t0)
        # written after every target: a long run stopped part way keeps what it measured
        write_results(args.out, stem, results, render(results))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except WanrtError as e:  # bad input (a model, a shape, a target): one line, as wanrt's commands answer it
        raise SystemExit(f"error: {e}") from None
