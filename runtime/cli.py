"""`wanrt bench`, `wanrt generate`, `wanrt serve`."""

from __future__ import annotations

from pathlib import Path

import click

from wanrt.console import err_console, out_console
from wanrt.errors import BadInputError
from wanrt.options import lora_options, lora_spec_from_kwargs, model_options, model_spec_from_kwargs, parse_int_list

BACKEND_CHOICES = ("eager", "compile", "ort", "trt")


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


def _threads(threads):
    if threads:
        import torch

        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ bench
def runs_table(results: dict) -> "Table":
    """The terminal view of results.json: one row per (targets, mode, rank, backend)."""
    from rich.table import Table

    payload = results["payload"]
    shape = payload["shape"]
    table = Table(title=f"wanrt bench: {results['specs']['bench']['model']} on {payload['device']}, "
                        f"{shape['frames']}x{shape['height']}x{shape['width']} ({shape['tokens_per_forward']:,} "
                        f"tokens per forward, batch {shape['batch']}); a step is 2 forwards (CFG)")
    for col in ("targets", "mode", "rank", "backend", "step ms (median)", "p90", "tokens/s", "MFU", "LoRA FLOPs",
                "rel. err", "equal quality"):
        table.add_column(col, justify="left" if col in ("targets", "mode", "backend", "equal quality") else "right")
    for r in payload["runs"]:
        if r.get("status") != "ok" or "latency" not in r:
            table.add_row(r.get("targets") or "-", r["mode"], str(r.get("rank") or "-"), r["backend"],
                          "-", "-", "-", "-", "-", "-", f"[red]{r.get('status', 'failed')}[/red]")
            continue
        q = r.get("quality", {})
        ok = r.get("equal_quality", False)
        table.add_row(r.get("targets") or "-", r["mode"], str(r.get("rank") or "-"), r["backend"],
                      f"{r['latency']['step']['median_ms']:,.1f}", f"{r['latency']['step']['p90_ms']:,.1f}",
                      f"{r['tokens_per_s']['forward']:,.0f}", f"{r['mfu']:.0%}" if r.get("mfu") else "-",
                      f"{r['flops']['lora_share']:.2%}", f"{q.get('rel_err_max', float('nan')):.1e}",
                      "yes" if ok else "[red]NOT EQUAL QUALITY[/red]")
    return table


@click.command()
@click.option("--model", default="small", show_default=True, help="Preset or checkpoint (see 'wanrt presets').")
@click.option("--layers", type=int, default=None, help="Keep only the first N transformer blocks.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--shape", default=None, help="Video FRAMESxHEIGHTxWIDTH in pixels (default: the preset's).")
@click.option("--batch", type=click.IntRange(1, 2), default=1, show_default=True, help="Batch per DiT forward.")
# The defaults are the rank study itself: one plain `wanrt bench` answers how rank, and rank in cross-attention,
# change latency and tokens/s against a full fine-tune (dense delta).
@click.option("--ranks", default="4,8,16,64", show_default=True, help="LoRA ranks to sweep, e.g. 4,8,16,32,64,128.")
@click.option("--modes", default="merged,separate,full", show_default=True, help="LoRA modes: merged,separate,full.")
@click.option("--targets", default="all,cross-attn", show_default=True,
              help="Target sets to sweep, comma separated (all, self-attn, cross-attn, image-kv, ffn or module "
                   "patterns); join groups inside one set with '+', e.g. self-attn+ffn.")
@click.option("--backends", default="eager,ort", show_default=True, help="Backends: eager,compile,ort,trt.")
@click.option("--no-base", is_flag=True, help="Leave out the no-LoRA base row.")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True,
              help="Timed denoising steps per backend (2 forwards each).")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True, help="Untimed steps first.")
@click.option("--interleave/--no-interleave", default=True, show_default=True,
              help="Time a point's backends step by step in turn (fair under drifting machine load).")
@click.option("--settle", type=click.FloatRange(0), default=None,
              help="Idle seconds before each timed step (default 0.1 on CPU: ONNX Runtime's and OpenMP's threads "
                   "spin for tens of ms after a run and would slow the next backend; 0 on GPU).")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True,
              help="Re-time a point the load probe finds disturbed by other work, up to N times.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inputs (and videos).")
@click.option("--lora-seed", type=int, default=0, show_default=True, help="Seed of the synthetic LoRAs.")
@click.option("--video-quality/--no-video-quality", default=False, show_default=True,
              help="Also generate videos with each backend and compare PSNR/SSIM/LPIPS (+FVD) with eager.")
@click.option("--video-shape", default=None, help="FRAMESxHxW of the quality videos (default: --shape).")
@click.option("--video-steps", type=click.IntRange(1), default=2, show_default=True)
@click.option("--video-seeds", type=click.IntRange(1), default=1, show_default=True,
              help="Videos per backend and point (FVD needs >= 2 per set).")
@click.option("--gate-fp32", type=float, default=1e-4, show_default=True, help="Max relative error, fp32.")
@click.option("--gate-bf16", type=float, default=1e-2, show_default=True)
@click.option("--gate-fp16", type=float, default=1e-2, show_default=True)
@click.option("--gate-fp8", type=float, default=5e-2, show_default=True)
@click.option("--gate-psnr", type=float, default=35.0, show_default=True, help="Min per-frame PSNR (dB).")
@click.option("--gate-lpips", type=float, default=0.02, show_default=True, help="Max per-frame LPIPS.")
@click.option("--engine", "engine_dir", type=click.Path(file_okay=False), default=None,
              help="A prebuilt ONNX/engine directory for ort/trt (single point only).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture a CUDA graph per shape.")
@click.option("--trt-precision", type=click.Choice(["fp32", "fp16", "bf16", "fp8"]), default=None,
              help="Precision of the TensorRT engines built per point (default: --dtype).")
@click.option("--compile-mode", default=None, help="torch.compile mode (default, max-autotune, ...).")
@click.option("--peak-size", type=click.IntRange(64), default=None,
              help="Matrix size of the matmul-peak measurement (default 2048 on CPU, 8192 on GPU).")
@click.option("--artifacts", type=click.Path(file_okay=False), default=None,
              help="Where per-point exports/engines go (default ~/.cache/wanrt or $WANRT_CACHE_DIR).")
@click.option("--keep-artifacts", is_flag=True, help="Keep the exports/engines made by this run.")
@click.option("-o", "--output", type=click.Path(file_okay=False), default="bench-results", show_default=True,
              help="Output directory: results.json, report.md, *.png.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def bench(**kw):
    """Benchmark backends over LoRA ranks x modes x targets, at equal quality against eager fp32.

    Writes OUTPUT/results.json (schema in docs/bench.md), OUTPUT/report.md and latency/tokens-per-second plots.
    """
    from wanrt.artifacts import command_line
    from wanrt.runtime.bench import BenchSpec, QualityGates, run_bench
    from wanrt.options import parse_shape

    shape = parse_shape(kw["shape"], "--shape")
    vshape = parse_shape(kw["video_shape"], "--video-shape")
    ranks = tuple(parse_int_list(kw["ranks"], "--ranks"))
    gates = QualityGates(rel_err=(("fp32", kw["gate_fp32"]), ("bf16", kw["gate_bf16"]), ("fp16", kw["gate_fp16"]),
                                  ("fp8", kw["gate_fp8"])), psnr_db=kw["gate_psnr"], lpips=kw["gate_lpips"])
    spec = BenchSpec(
        model=kw["model"], layers=kw["layers"], dtype=kw["dtype"],
        frames=shape.frames if shape else None, height=shape.height if shape else None,
        width=shape.width if shape else None, batch=kw["batch"], ranks=ranks,
        modes=_csv(kw["modes"], "--modes", ("merged", "separate", "full")),
        targets=tuple(t.replace("+", ",") for t in _csv(kw["targets"], "--targets")),
        backends=_csv(kw["backends"], "--backends", BACKEND_CHOICES), include_base=not kw["no_base"],
        repeats=kw["repeats"], warmup=kw["warmup"], threads=kw["threads"], device=kw["device"], seed=kw["seed"],
        lora_seed=kw["lora_seed"], gates=gates, video_quality=kw["video_quality"], video_steps=kw["video_steps"],
        video_frames=vshape.frames if vshape else None, video_height=vshape.height if vshape else None,
        video_width=vshape.width if vshape else None, video_seeds=kw["video_seeds"], cuda_graph=kw["cuda_graph"],
        trt_precision=kw["trt_precision"], compile_mode=kw["compile_mode"], engine_dir=kw["engine_dir"],
        interleave=kw["interleave"], retries=kw["retries"], settle_s=kw["settle"],
        peak_size=kw["peak_size"])
    results = run_bench(spec, out_dir=kw["output"], force=kw["force"],
                        artifacts_dir=Path(kw["artifacts"]) if kw["artifacts"] else None,
                        keep_artifacts=kw["keep_artifacts"], console=err_console, command=command_line())
    out_console.print(runs_table(results))
    s = results["payload"]["summary"]
    out_console.print(f"wrote {kw['output']}/results.json, report.md and plots "
                      f"({len(results['payload']['runs'])} runs, {len(s['not_equal_quality'])} not equal quality, "
                      f"{len(s['failed'])} failed/disabled)")


# ------------------------------------------------------------------------------------------------ generate
@click.command()
@click.option("--image", type=click.Path(dir_okay=False), required=True, help="Conditioning image (PNG/JPEG).")
@click.option("--prompt", required=True)
@click.option("--negative-prompt", default="", show_default=True)
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="eager", show_default=True)
@click.option("--engine", type=click.Path(file_okay=False), default=None,
              help="ONNX export directory (ort) or engine directory (trt). ort without it exports once into the "
                   "cache.")
@model_options
@lora_options
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--pipeline", default=None,
              help="A diffusers Wan I2V pipeline (directory or hub id) for VAE/encoders/scheduler; default: the "
                   "tiny built-in pipeline sized to the model.")
@click.option("--shape", default="5x32x32", show_default=True, help="FRAMESxHEIGHTxWIDTH.")
@click.option("--steps", type=click.IntRange(1), default=2, show_default=True)
@click.option("--guidance", type=float, default=5.0, show_default=True)
@click.option("--noise-seed", type=int, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--fps", type=click.IntRange(1), default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None)
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
               lora_spec=lora_spec_from_kwargs(kw, _single_rank(kw)), engine=kw["engine"], device=kw["device"],
               pipeline=kw["pipeline"], force=kw["force"], threads=kw["threads"], cuda_graph=kw["cuda_graph"],
               say=lambda m: err_console.print(f"[dim]{m}[/dim]"))
    out_console.print(f"wrote {info['output']}: {info['frames']} frames {info['height']}x{info['width']}, "
                      f"{info['dit_calls']} DiT calls with '{kw['backend']}' in {info['generate_s']:.1f} s")


# ------------------------------------------------------------------------------------------------ serve
@click.command()
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="ort", show_default=True)
@click.option("--engine", type=click.Path(file_okay=False), default=None,
              help="Prebuilt ONNX export (ort) or engine directory (trt); its manifest is checked on load.")
@model_options
@lora_options
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--pipeline", default=None, help="diffusers Wan I2V pipeline for /v1/generate (default: tiny).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--max-body-mb", type=click.IntRange(1), default=32, show_default=True)
@click.option("--max-frames", type=click.IntRange(1), default=33, show_default=True)
@click.option("--max-steps", type=click.IntRange(1), default=50, show_default=True)
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture a CUDA graph per shape.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the model/plan on load.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def serve(**kw):
    """Serve one prebuilt engine/ONNX directory (or an eager preset) over HTTP: /healthz, /v1/predict,
    /v1/generate."""
    from wanrt.runtime.serve import load_state, make_server

    _threads(kw["threads"])
    if kw["backend"] in ("ort", "trt") and kw["engine"] is None:
        raise BadInputError(f"backend '{kw['backend']}' serves a prebuilt directory: pass --engine DIR")
    state = load_state(kw["backend"], kw["engine"], model_spec_from_kwargs(kw),
                       lora_spec_from_kwargs(kw, _single_rank(kw)), device=kw["device"], verify=not kw["no_verify"],
                       max_body=kw["max_body_mb"] * 2**20, max_frames=kw["max_frames"], max_steps=kw["max_steps"],
                       pipeline=kw["pipeline"], cuda_graph=kw["cuda_graph"])
    server = make_server(state, kw["host"], kw["port"], verbose=kw["verbose"])
    host, port = server.server_address[:2]
    err_console.print(f"serving {kw['backend']} ({state.identity.get('kind')}) on http://{host}:{port} "
                      "(GET /healthz, POST /v1/predict, POST /v1/generate); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        state.backend.close()
