"""`wanrt bench`: the sweep of backends, ranks, modes and target sets, and its table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
from rich import box
from rich.table import Table

from wanrt.choices import Reference
from wanrt.engines import registry
from wanrt.runtime.backend_names import Backend
from wanrt.runtime.components import COMPONENTS
from wanrt.console import err_console, out_console
from wanrt.errors import BadInputError
from wanrt.commands.flags import deprecated_option, deprecation_line
from wanrt.commands.options import (SEED, FiniteFloat, device_options, experts_resident_option, model_options,
                                    run_dtype_option)
from wanrt.parse import parse_int_list

BACKEND_CHOICES = Backend.values()


def _csv(text: str, what: str, choices=None) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise BadInputError(f"{what} is empty")
    if choices:
        bad = [i for i in items if i not in choices]
        if bad:
            raise BadInputError(f"{what} {', '.join(bad)}: choose from {', '.join(choices)}")
    return items


# ------------------------------------------------------------------------------------------------ bench
def runs_table(results: dict) -> Table:
    """The terminal view of results.json, one row per (point, backend), sized for 80 columns (p90, memory and
    FLOPs are in report.md). Every view marks a disturbed point the same way: ", disturbed" in the verdict."""
    from wanrt.runtime.bench.ui import verdict

    payload = results["payload"]
    shape = payload["shape"]
    table = Table(title=f"wanrt bench: {results['specs']['bench']['model']} on {payload['device']}",
                  caption=f"{shape['frames']}x{shape['height']}x{shape['width']}, {shape['tokens_per_forward']:,} "
                          f"tokens per forward, batch {shape['batch']}; a step is 2 forwards (CFG)",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("point", "backend", "step ms", "tokens/s", "MFU", "rel err", "quality"):
        table.add_column(col, justify="left" if col in ("point", "backend", "quality") else "right",
                         no_wrap=col != "quality")
    for r in payload["runs"]:
        text = verdict(r)
        style = "" if text == "equal" else "red" if r.get("status") != "ok" or "NOT" in text else "yellow"
        shown = f"[{style}]{text}[/{style}]" if style else text
        if r.get("status") != "ok" or "latency" not in r:
            table.add_row(r["point"], r["backend"], "-", "-", "-", "-", shown)
            continue
        table.add_row(r["point"], r["backend"], f"{r['latency']['step']['median_ms']:,.1f}",
                      f"{r['tokens_per_s']['forward']:,.0f}", f"{r['mfu']:.0%}" if r.get("mfu") else "-",
                      f"{r['quality']['rel_err_max']:.1e}", shown)
    return table


@click.command()
@model_options
@run_dtype_option
@click.option("--shape", default=None, help="Video FRAMESxHEIGHTxWIDTH in pixels (default: the preset's).")
@click.option("--batch", type=click.IntRange(1, 2), default=1, show_default=True, help="Batch per DiT forward.")
# A plain `wanrt bench` is a short sweep (a few minutes on 2 CPU cores) that shows the whole report; --study is the
# rank study itself: how rank, and rank in cross-attention, change latency and tokens/s against a full fine-tune.
@click.option("--study", is_flag=True,
              help="The full rank study: --model small --ranks 4,8,16,64 --lora-modes merged,separate,full "
                   "--target-sets all --target-sets cross-attn (flags you give win). ~16 min on 2 CPU cores.")
@click.option("--ranks", "--rank", "ranks", default=None,
              help="LoRA ranks to sweep, e.g. 4,8,16,32,64,128 (one value = --rank).  [default: 4,16]")
@click.option("--lora-modes", "--lora-mode", "lora_modes", default=None,
              help="LoRA modes to sweep: merged,separate,full.  [default: merged,separate]")
@deprecated_option("--modes", "--lora-modes", "lora_modes")
@click.option("--targets", default=None,
              help="One target set, as on export: groups (all, self-attn, cross-attn, image-kv, ffn) and/or module "
                   "patterns joined by ',' or '+'.  [default: all]")
@click.option("--target-sets", multiple=True,
              help="Sweep several target sets: repeat the flag, each value as --targets takes it.")
@click.option("--backends", "--backend", "backends", default="eager,ort", show_default=True,
              help="Backends: eager,compile,ort,trt.")
@click.option("--no-base", is_flag=True, help="Leave out the no-LoRA base row.")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True,
              help="Timed denoising steps per backend (2 forwards each).")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True, help="Untimed steps first.")
@click.option("--interleave/--no-interleave", default=True, show_default=True,
              help="Time a point's backends step by step in turn (fair under drifting machine load).")
@click.option("--settle", type=FiniteFloat(0), default=None,
              help="Idle seconds before each timed step (default 0.1 on CPU: ONNX Runtime's and OpenMP's threads "
                   "spin for tens of ms after a run and would slow the next backend; 0 on GPU).")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True,
              help="Re-time a point the load probe finds disturbed by other work, up to N times.")
@device_options
@click.option("--input-seed", type=SEED, default=0, show_default=True,
              help="Seed of the inputs (latents, text, image) and of the quality videos' noise.")
@click.option("--video-quality/--no-video-quality", default=False, show_default=True,
              help="Also generate videos with each backend and compare PSNR/SSIM/LPIPS (+FVD) with eager.")
@click.option("--video-shape", default=None, help="FRAMESxHxW of the quality videos (default: --shape).")
@click.option("--video-steps", type=click.IntRange(1), default=2, show_default=True)
@click.option("--video-seeds", type=click.IntRange(1), default=1, show_default=True,
              help="Videos per backend and point (FVD needs >= 2 per set).")
@click.option("--gate-fp32", type=FiniteFloat(0), default=1e-4, show_default=True, help="Max relative error, fp32.")
@click.option("--gate-bf16", type=FiniteFloat(0), default=1e-2, show_default=True)
@click.option("--gate-fp16", type=FiniteFloat(0), default=1e-2, show_default=True)
@click.option("--gate-fp8", type=FiniteFloat(0), default=5e-2, show_default=True,
              help="Max relative error, fp8 (TensorRT) and int8 (OpenVINO, the CPU's counterpart).")
@click.option("--gate-psnr", type=FiniteFloat(0), default=35.0, show_default=True, help="Min per-frame PSNR (dB).")
@click.option("--gate-lpips", type=FiniteFloat(0), default=0.02, show_default=True, help="Max per-frame LPIPS.")
@click.option("--reference", type=click.Choice(Reference.values()), default="eager", show_default=True,
              help="eager: every backend against eager fp32 of the same weights (engine parity). finetuned: every "
                   "LoRA rank against the full fine-tune --finetuned, the LoRAs extracted from it (rank vs full).")
@click.option("--finetuned", default=None,
              help="A real full fine-tune: the reference of --reference finetuned, and the `full` row instead of a "
                   "dense delta. A diffusers dir, .safetensors (sharded or ComfyUI-style), or synthetic[:EXPONENT] "
                   "(a power-law-spectrum fine-tune of --model).")
@click.option("--gate-finetuned", type=FiniteFloat(0), default=1e-2, show_default=True,
              help="--reference finetuned: max relative error of a rank against the full fine-tune.")
@click.option("--artifact", "artifact", type=click.Path(file_okay=False), default=None,
              help="A prebuilt ONNX export (ort) or engine directory (trt) to time (single point only).")
@deprecated_option("--engine", "--artifact", "artifact", type=click.Path(file_okay=False))
@experts_resident_option
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture a CUDA graph per shape.")
@click.option("--precision", type=click.Choice(registry.precision_choices()), default=None,
              help="Precision of the engine backends (each flavour refuses one it does not build here).  "
                   "[default: --dtype; OpenVINO: fp32]")
@deprecated_option("--trt-precision", "--precision", "precision", type=click.Choice(registry.precision_choices()))
@click.option("--compile-mode", default=None, help="torch.compile mode (default, max-autotune, ...).")
@click.option("--peak-size", type=click.IntRange(64), default=None,
              help="Matrix size of the matmul-peak measurement (default 2048 on CPU, 8192 on GPU).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Cache root for the per-point exports/engines (default: $WANRT_CACHE_DIR or ~/.cache/wanrt).")
@deprecated_option("--artifacts", "--cache-dir", "cache_dir", type=click.Path(file_okay=False))
@click.option("--keep-artifacts", is_flag=True, help="Keep the exports/engines made by this run.")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Output directory: results.json, report.md, *.png.  [default: bench-results/MODEL-BACKENDS-"
                   "PRECISION-HASH, one per set of flags: another bench never collides, the same one + --resume "
                   "finds it]")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in OUTPUT (same command, plus --resume).")
@click.option("--pipeline", "pipeline", default=None, metavar="RECIPES",
              help="Whole videos instead of DiT steps: each recipe (distill-4step, wan-40step-cfg, or all) through "
                   "the pipeline, per-stage seconds, eager vs each backend (its VAE decode too where it has one), "
                   "at equal video quality. --repeats counts rounds of videos; one LoRA (default r16 merged).")
@click.option("--components", type=click.Choice(sorted(COMPONENTS)), default="tiny", show_default=True,
              help="--pipeline: the built-in pipeline's encoders and VAE: tiny, or wan2.1's real geometries (VAE, "
                   "CLIP ViT-H/14, UMT5-XXL; 14B presets).")
@click.option("--text-layers", type=click.IntRange(1), default=None,
              help="--pipeline --components wan2.1: UMT5 layers to build (of 24; its time scales per layer).")
def bench(**kw):
    """Benchmark backends over LoRA ranks x modes x targets, at equal quality against eager fp32.

    A plain run is a short sweep of the tiny preset (ranks 4,16, merged and separate; 12.5 minutes on a busy
    2-core CPU); --study runs the rank study on `small` (about 16 minutes). A line per finished run goes to stderr;
    OUTPUT/results.json and report.md are rewritten after every point, so Ctrl-C keeps what is done and --resume
    finishes it. At the end: latency/tokens-per-second plots (schema of results.json: docs/bench.md).
    """
    from wanrt.artifacts import command_line
    from wanrt.runtime.bench import BenchSpec, QualityGates, run_bench
    from wanrt.runtime.bench.spec import default_output
    from wanrt.parse import parse_shape

    shape = parse_shape(kw["shape"], "--shape")
    vshape = parse_shape(kw["video_shape"], "--video-shape")
    sweep = _bench_sweep(kw)
    gates = QualityGates(rel_err=(("fp32", kw["gate_fp32"]), ("bf16", kw["gate_bf16"]), ("fp16", kw["gate_fp16"]),
                                  ("fp8", kw["gate_fp8"]), ("int8", kw["gate_fp8"])),
                         psnr_db=kw["gate_psnr"], lpips=kw["gate_lpips"], finetuned_rel_err=kw["gate_finetuned"])
    spec = BenchSpec(
        model=kw["model"], layers=kw["layers"], dtype=kw["dtype"],
        frames=shape.frames if shape else None, height=shape.height if shape else None,
        width=shape.width if shape else None, batch=kw["batch"], **sweep,
        backends=_csv(kw["backends"], "--backends", BACKEND_CHOICES), include_base=not kw["no_base"],
        repeats=kw["repeats"], warmup=kw["warmup"], threads=kw["threads"], device=kw["device"],
        seed=kw["input_seed"], lora_seed=kw["seed"], gates=gates, video_quality=kw["video_quality"],
        video_steps=kw["video_steps"], video_frames=vshape.frames if vshape else None,
        video_height=vshape.height if vshape else None, video_width=vshape.width if vshape else None,
        video_seeds=kw["video_seeds"], cuda_graph=kw["cuda_graph"], trt_precision=kw["precision"],
        compile_mode=kw["compile_mode"], engine_dir=kw["artifact"], interleave=kw["interleave"],
        retries=kw["retries"], settle_s=kw["settle"], peak_size=kw["peak_size"], reference=kw["reference"],
        finetuned=kw["finetuned"])
    if kw["pipeline"]:
        return _bench_pipeline(spec, kw)
    if kw["components"] != "tiny" or kw["text_layers"] is not None:  # else silently a DiT-only bench
        raise BadInputError(f"--components {kw['components']} / --text-layers: they build the pipeline's other "
                            "stages; add --pipeline RECIPES", param="components")
    if _two_experts(kw):
        return _bench_experts(spec, kw)
    if kw["experts_resident"] != "both":
        raise BadInputError("--experts-resident one: for Wan2.2's two experts (a two-expert --model or --artifact)")
    kw["output"] = kw["output"] or default_output(spec)
    results = run_bench(spec, out_dir=kw["output"], force=kw["force"],
                        artifacts_dir=Path(kw["cache_dir"]) if kw["cache_dir"] else None,
                        keep_artifacts=kw["keep_artifacts"], console=err_console, command=command_line(),
                        resume=kw["resume"])
    out_console.print(runs_table(results))
    s = results["payload"]["summary"]
    out_console.print(f"wrote {kw['output']}/results.json, report.md and plots "
                      f"({len(results['payload']['runs'])} runs, {len(s['not_equal_quality'])} not equal quality, "
                      f"{len(s['failed'])} failed/disabled)", highlight=False, soft_wrap=True)


def _two_experts(kw) -> bool:
    from wanrt.export.model import ModelSpec, model_experts
    from wanrt.runtime.experts import is_experts_artifact

    return is_experts_artifact(kw["artifact"]) or bool(model_experts(ModelSpec(kw["model"], layers=kw["layers"])).names)


def _bench_experts(spec, kw) -> None:
    """Wan2.2's two experts: one LoRA configuration (rank 16, separate unless the flags say), every backend."""
    from wanrt.artifacts import command_line
    from wanrt.runtime.bench.experts import run_experts_bench
    from wanrt.runtime.bench.spec import default_output

    spec = replace(spec, ranks=spec.ranks if kw["ranks"] else (16,),
                   modes=spec.modes if kw["lora_modes"] else ("separate",))
    if kw["resume"]:
        raise BadInputError("--resume: a two-expert bench is one point; run it again with --force")
    resident = kw["experts_resident"]
    out = kw["output"] or default_output(spec) + ("-one" if resident == "one" else "")
    results = run_experts_bench(spec, resident, out_dir=out, force=kw["force"],
                                cache_dir=Path(kw["cache_dir"]) if kw["cache_dir"] else None,
                                command=command_line(), say=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    table = Table(title=f"wanrt bench: two experts, resident {resident}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("backend", "expert", "fwd ms", "rel err", "loads", "reload s"):
        table.add_column(col, justify="left" if col in ("backend", "expert") else "right")
    for r in results["payload"]["runs"]:
        for e, x in r["experts"].items():
            q = x["quality"]
            table.add_row(r["backend"], e, f"{x['latency']['forward']['median_ms']:,.1f}",
                          "-" if q is None else f"{q['rel_err_max']:.1e}", str(x["loads"]["n"]),
                          "-" if x["reload_s"] is None else f"{x['reload_s']:.2f}")
    out_console.print(table)
    for r in results["payload"]["runs"]:
        v = r["per_video"]
        out_console.print(f"{r['backend']}: " + "; ".join(
            f"{name} {x['video_s']:.2f} s per video (high {x['forwards']['high']} + low {x['forwards']['low']} "
            f"forwards, {x['loads_per_video']} expert loads, {x['reload_s']:.2f} s)" for name, x in v.items()),
            highlight=False, soft_wrap=True)
    out_console.print(f"wrote {out}/results.json and report.md", highlight=False)


def _bench_pipeline(spec, kw) -> None:
    """Whole videos per recipe and stage (runtime/bench/pipeline.py): one LoRA configuration, every backend."""
    from wanrt.artifacts import command_line
    from wanrt.runtime.bench.pipeline import parse_recipes, run_pipeline_bench
    from wanrt.runtime.bench.spec import default_output
    from wanrt.runtime.stages import STAGES

    recipes = parse_recipes(kw["pipeline"])
    if kw["experts_resident"] != "both" and not _two_experts(kw):
        raise BadInputError("--experts-resident one: for Wan2.2's two experts (a two-expert --model or --artifact)")
    spec = replace(spec, ranks=spec.ranks if kw["ranks"] else (16,),
                   modes=spec.modes if kw["lora_modes"] else ("merged",))
    if kw["resume"]:
        raise BadInputError("--resume: a pipeline bench is one run; run it again with --force")
    out = kw["output"] or default_output(spec) + "-pipeline"
    results = run_pipeline_bench(spec, recipes, out_dir=out, force=kw["force"],
                                 cache_dir=Path(kw["cache_dir"]) if kw["cache_dir"] else None,
                                 command=command_line(), say=lambda m: err_console.print(f"[dim]{m}[/dim]"),
                                 components=kw["components"], text_layers=kw["text_layers"],
                                 resident=kw["experts_resident"])
    p = results["payload"]
    table = Table(title="wanrt bench --pipeline: seconds per video and stage (medians)", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1, 0, 0),
                  caption="x: eager's video / the row's, paired per round. Stages: text, CLIP, VAE encode, DiT "
                          "loop, VAE decode (on the row's backend where it has one: ort, ov)")
    for col in ("recipe", "row", "video", "x", "text", "clip", "venc", "dit", "vdec", "quality"):
        table.add_column(col, justify="left" if col in ("recipe", "row", "quality") else "right", no_wrap=True)
    for name, s in p["schedules"].items():
        for row, r in s["rows"].items():
            q = r["quality"]
            table.add_row(name, row, f"{r['video_s']['median']:.2f}",
                          "-" if r["speedup"] is None else f"{r['speedup']['median']:.2f}x",
                          *(f"{r['stages_s'][k]:.2f}" for k in STAGES[:-1]),  # mp4: none written
                          "ref" if q is None else "; ".join(q["failures"]) or "equal")
    out_console.print(table)
    out_console.print(f"goal >= {p['goal']['target']}x on {p['goal']['schedule']}: {p['goal']['verdict']}; wrote "
                      f"{out}/results.json and report.md", highlight=False, soft_wrap=True)


STUDY = {"model": "small", "ranks": "4,8,16,64", "lora_modes": "merged,separate,full",
         "target_sets": ("all", "cross-attn")}
SHORT = {"ranks": "4,16", "lora_modes": "merged,separate", "target_sets": ("all",)}


def _bench_sweep(kw) -> dict:
    """ranks, modes and target sets of the sweep: the flags given, else the short default, or --study's."""
    ctx = click.get_current_context()
    if kw["study"] and ctx.get_parameter_source("model").name == "DEFAULT":
        kw["model"] = STUDY["model"]
    defaults = STUDY if kw["study"] else SHORT
    target_sets = tuple(kw["target_sets"])
    if not target_sets and kw["targets"] is not None:
        if "," in kw["targets"] and "+" not in kw["targets"]:
            # bench's --targets used to be a list of sets; that meaning stays for this release
            deprecation_line("bench --targets with a list of sets", "--target-sets SET (repeated); --targets is one "
                             "set, a union, as on export")
            target_sets = _csv(kw["targets"], "--targets")
        else:
            target_sets = (kw["targets"],)
    target_sets = target_sets or defaults["target_sets"]
    return {"ranks": tuple(parse_int_list(kw["ranks"] or defaults["ranks"], "--ranks")),
            "modes": _csv(kw["lora_modes"] or defaults["lora_modes"], "--lora-modes", ("merged", "separate", "full")),
            "targets": tuple(t.replace("+", ",") for t in target_sets)}
