"""The committed rank study: how LoRA rank, and rank in cross-attention, trades latency against distance to the
full fine-tune it stands in for. `small` preset, a SYNTHETIC fine-tune (power-law delta spectrum, exponent from a
measured real fine-tune: docs/rank-study.md), LoRAs extracted from it at ranks 4..256 on all targets and on
cross-attention only, eager.

    python -m wanrt.tools.rank_study [--repeats 2] [--shape 9x96x160] [--out docs/results]

It is `wanrt bench --reference finetuned` with a fixed sweep (the equivalent command is in the JSON as
`bench_command`). Writes docs/results/rank-small-synthetic.json, rank-report.md, rank-pareto.png and
rank-quality_vs_rank.png. The machine's load average is sampled through the run and recorded beside the timings:
timings on a shared machine are only as good as the load they ran under.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click

from wanrt.memory import Sampler

RANKS = (4, 16, 64, 256)
MODES = ("merged", "separate", "full")
# self-attn and ffn work the same way (--target-sets); left out of the committed run for CPU time on a shared machine
TARGETS = ("all", "cross-attn")
PNGS = ("pareto.png", "quality_vs_rank.png", "latency_vs_rank.png", "tokens_per_s_vs_rank.png")


class LoadSampler(Sampler):
    """/proc/loadavg every `interval` s while the study runs (1-minute load average)."""

    def __init__(self, interval: float = 10.0):
        super().__init__(lambda: self.samples.append(os.getloadavg()[0]), interval)
        self.samples: list[float] = []

    def summary(self) -> dict:
        s = sorted(self.samples)
        return {"loadavg_1min_samples": len(s), "min": s[0], "median": s[len(s) // 2], "max": s[-1],
                "cpus": os.cpu_count(), "interval_s": self.interval,
                "note": "1-minute load average of the whole machine, sampled during the run (other engineers' "
                        "jobs included); above the CPU count, timings are contended"}


@click.command()
@click.option("--repeats", type=int, default=2, show_default=True, help="Timed CFG steps per point.")
@click.option("--warmup", type=int, default=0, show_default=True,
              help="Untimed steps (eager: the cold forward of the memory measurement already warms it up).")
@click.option("--shape", default="9x96x160", show_default=True, help="Video FRAMESxHxW of the forwards.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--finetuned", default="synthetic", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="docs/results", show_default=True)
@click.option("--prefix", default="rank", show_default=True)
@click.option("--model", default="small", show_default=True, help="Preset (tiny: a smoke run of this script).")
@click.option("--ranks", default=",".join(map(str, RANKS)), show_default=True)
@click.option("--from-json", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Re-render the report and plots of an earlier run's JSON (no measurement).")
def main(repeats, warmup, shape, threads, finetuned, out_dir, prefix, model, ranks, from_json):
    from wanrt.artifacts import command_line, write_json
    from wanrt.parse import parse_int_list, parse_shape
    from wanrt.runtime.bench import BenchSpec, run_bench

    if from_json:
        import json

        results = json.loads(Path(from_json).read_text())
        _render(results, Path(out_dir), prefix, results["bench_command"], results["payload"]["machine_load"])
        click.echo(f"re-rendered {out_dir}/{prefix}-report.md and plots from {from_json}")
        return
    s = parse_shape(shape, "--shape")
    ranks = tuple(parse_int_list(ranks, "--ranks"))
    spec = BenchSpec(model=model, frames=s.frames, height=s.height, width=s.width, ranks=ranks, modes=MODES,
                     targets=TARGETS, backends=("eager",), repeats=repeats, warmup=warmup, threads=threads,
                     reference="finetuned", finetuned=finetuned)
    command = command_line()
    equivalent = (f"wanrt bench --model {model} --shape {shape} --reference finetuned --finetuned {finetuned} "
                  f"--ranks {','.join(map(str, ranks))} --lora-modes {','.join(MODES)} "
                  + " ".join(f"--target-sets {t}" for t in TARGETS)
                  + f" --backends eager --repeats {repeats} --warmup {warmup} --threads {threads} -o OUT")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, LoadSampler() as load:
        run_dir = Path(tmp) / "run"
        results = run_bench(spec, out_dir=run_dir, command=command)
    results["bench_command"] = equivalent
    results["payload"]["machine_load"] = load.summary()
    name = "synthetic" if finetuned.startswith("synthetic") else "finetuned"
    write_json(out / f"{prefix}-{model}-{name}.json", results)
    _render(results, out, prefix, equivalent, load.summary())
    click.echo(f"wrote {out}/{prefix}-{model}-{name}.json, {prefix}-report.md and plots")


def _render(results: dict, out: Path, prefix: str, equivalent: str, ml: dict) -> None:
    """rank-report.md and the PNGs from a results document."""
    from wanrt.runtime.bench.vs_finetuned import write_pareto
    from wanrt.runtime.bench.plots import write_plots
    from wanrt.runtime.bench.report import render_report

    with tempfile.TemporaryDirectory() as tmp:
        write_plots(results, Path(tmp))
        write_pareto(results, Path(tmp))
        report = render_report(results)
        for png in PNGS:
            if (Path(tmp) / png).is_file():
                shutil.copyfile(Path(tmp) / png, out / f"{prefix}-{png}")
            report = report.replace(f"({png})", f"({prefix}-{png})")
    # the study's own 2 threads account for a load of about 2; more than that is other work on the machine
    verdict = ("the machine was shared with other jobs, so the latencies are noise-dominated (see `interference` per "
               "run)" if ml["median"] > ml["cpus"] + 0.5 else "no other work beyond the study's own threads")
    report = report.replace("- command: ", f"- equivalent: `{equivalent}`\n- machine load during the run (1-min "
                            f"load average, {ml['cpus']} CPUs): median {ml['median']:.1f}, min {ml['min']:.1f}, "
                            f"max {ml['max']:.1f} ({ml['loadavg_1min_samples']} samples): {verdict}; the "
                            "quality numbers do not depend on load\n- command: ", 1)
    (out / f"{prefix}-report.md").write_text(report)


if __name__ == "__main__":
    main()
