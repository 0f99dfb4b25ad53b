"""`wanrt bench`, `wanrt generate` (`wanrt serve` lives in runtime/serving/cli.py)."""

from __future__ import annotations

from pathlib import Path

import click
from rich import box
from rich.table import Table

from wanrt.choices import Backend, Precision
from wanrt.console import err_console, out_console
from wanrt.errors import BadInputError
from wanrt.export.presets import PRESETS
from wanrt.flags import deprecated_option, deprecation_line
from wanrt.options import (FINITE_FLOAT, SEED, FiniteFloat, Text, backend_option, device_options, lora_options,
                           lora_spec_from_kwargs, model_options, model_spec_from_kwargs, parse_int_list,
                           run_dtype_option)
from wanrt.text import MAX_PROMPT_BYTES

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


def _single_rank(kw) -> int | None:
    ranks = parse_int_list(kw.get("rank"), "--rank")
    if ranks and len(ranks) > 1:
        raise BadInputError("--rank takes one value here (use 'wanrt bench --ranks' for sweeps)")
    return ranks[0] if ranks else None


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
@click.option("--reference", type=click.Choice(["eager", "finetuned"]), default="eager", show_default=True,
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
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture a CUDA graph per shape.")
@click.option("--precision", type=click.Choice(Precision.values()), default=None,
              help="Precision of the engines built per point (trt).  [default: --dtype]")
@deprecated_option("--trt-precision", "--precision", "precision", type=click.Choice(Precision.values()))
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
    from wanrt.options import parse_shape

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


# ------------------------------------------------------------------------------------------------ generate
@click.command()
@click.option("--image", type=click.Path(dir_okay=False), required=True, help="Conditioning image (PNG/JPEG).")
@click.option("--prompt", required=True, type=Text(MAX_PROMPT_BYTES))
@click.option("--negative-prompt", default="", show_default=True, type=Text(MAX_PROMPT_BYTES))
@backend_option("eager")
@click.option("--artifact", type=click.Path(file_okay=False), default=None,
              help="ONNX export directory (ort) or engine directory (trt). ort without it exports once into the "
                   "cache.")
@deprecated_option("--engine", "--artifact", "artifact", type=click.Path(file_okay=False))
@model_options
@lora_options
@run_dtype_option
@click.option("--pipeline", default=None,
              help="A diffusers Wan I2V pipeline (directory or hub id) for VAE/encoders/scheduler; default: the "
                   "tiny built-in pipeline sized to the model.")
# 17 frames: the shortest video `wanrt eval` can also score with FVD (16-frame clips)
@click.option("--shape", default="17x32x32", show_default=True, help="FRAMESxHEIGHTxWIDTH in pixels.")
@click.option("--steps", type=click.IntRange(1), default=2, show_default=True)
@click.option("--guidance", type=FINITE_FLOAT, default=5.0, show_default=True,
              help="Classifier-free guidance scale.")
@click.option("--noise-seed", type=SEED, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--fps", type=click.IntRange(1), default=16, show_default=True)
@device_options
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture a CUDA graph per shape.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output .mp4.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def generate(**kw):
    """Image + prompt -> mp4 with any backend as the pipeline's transformer."""
    from wanrt.options import parse_shape
    from wanrt.runtime.generate import GenerateSpec, generate as run

    shape = parse_shape(kw["shape"], "--shape")
    spec = GenerateSpec(prompt=kw["prompt"], negative_prompt=kw["negative_prompt"], frames=shape.frames,
                        height=shape.height, width=shape.width, steps=kw["steps"], guidance=kw["guidance"],
                        seed=kw["noise_seed"], fps=kw["fps"])
    info = run(kw["image"], spec, kw["backend"], kw["output"], model_spec=model_spec_from_kwargs(kw),
               lora_spec=lora_spec_from_kwargs(kw, _single_rank(kw)), engine=kw["artifact"], device=kw["device"],
               pipeline=kw["pipeline"], force=kw["force"], threads=kw["threads"], cuda_graph=kw["cuda_graph"],
               say=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    out_console.print(f"wrote {info['output']}: {info['frames']} frames {info['height']}x{info['width']}, "
                      f"{info['dit_calls']} DiT calls with '{kw['backend']}' in {info['generate_s']:.1f} s",
                      highlight=False)
    if kw["model"] in PRESETS and kw["pipeline"] is None:
        err_console.print(f"note: the '{kw['model']}' preset and the built-in pipeline have seeded random weights, "
                          "so the video is colour noise, not your prompt: it shows the pipeline runs end to end. "
                          "Pass --model and --pipeline of a real Wan2.1 I2V checkpoint for a real video.",
                          highlight=False)
