"""The committed CPU benchmark: `small` preset, eager vs ONNX Runtime, merged vs separate LoRA at ranks 4/8/16/64
on all targets and on cross-attention only. Writes docs/results/cpu-small.json, docs/results/cpu-report.md and the
two plots (cpu-latency_vs_rank.png, cpu-tokens_per_s_vs_rank.png).

    python -m wanrt.tools.bench_cpu [--repeats 5] [--threads 2] [--out docs/results]

It is `wanrt bench` with a fixed sweep (the equivalent command is recorded in the JSON as `bench_command`); run it
on a quiet machine: timings share the CPU with whatever else runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

RANKS = (4, 8, 16, 64)
MODES = ("merged", "separate")
TARGETS = ("all", "cross-attn")
BACKENDS = ("eager", "ort")


@click.command()
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed CFG steps per backend and point.")
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--video-shape", default="5x64x64", show_default=True, help="Quality videos (tiny pipeline).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="docs/results", show_default=True)
@click.option("--prefix", default="cpu", show_default=True)
def main(repeats, warmup, threads, video_shape, out_dir, prefix):
    from wanrt.artifacts import command_line, write_json
    from wanrt.parse import parse_shape
    from wanrt.runtime.bench import BenchSpec, run_bench

    vs = parse_shape(video_shape, "--video-shape")
    spec = BenchSpec(model="small", ranks=RANKS, modes=MODES, targets=TARGETS, backends=BACKENDS, repeats=repeats,
                     warmup=warmup, threads=threads, video_quality=True, video_steps=2, video_frames=vs.frames,
                     video_height=vs.height, video_width=vs.width)
    command = command_line()
    equivalent = (f"wanrt bench --model small --ranks {','.join(map(str, RANKS))} --modes {','.join(MODES)} "
                  f"--targets {','.join(TARGETS)} --backends {','.join(BACKENDS)} --repeats {repeats} "
                  f"--warmup {warmup} --threads {threads} --video-quality --video-shape {video_shape} -o OUT")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        results = run_bench(spec, out_dir=run_dir, command=command)
        results["bench_command"] = equivalent
        write_json(out / f"{prefix}-small.json", results)
        report = (run_dir / "report.md").read_text()
        for png in ("latency_vs_rank.png", "tokens_per_s_vs_rank.png"):
            if (run_dir / png).is_file():
                shutil.copyfile(run_dir / png, out / f"{prefix}-{png}")
            report = report.replace(f"({png})", f"({prefix}-{png})").replace(f"[{png}]", f"[{prefix}-{png}]")
        report = report.replace("- command: ", f"- equivalent: `{equivalent}`\n- command: ", 1)
        (out / f"{prefix}-report.md").write_text(report)
    click.echo(f"wrote {out}/{prefix}-small.json, {prefix}-report.md and plots")


if __name__ == "__main__":
    main()
