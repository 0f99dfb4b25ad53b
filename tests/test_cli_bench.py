"""`wanrt bench` reports as it goes: a progress line per run when stderr is not a terminal, results.json rewritten
after every point (Ctrl-C keeps what is done), `--resume` finishes the run; disturbed runs are marked in every
view; full fine-tune rows carry rank "full". Real runs of the tiny preset, eager only (no exports): seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.process_helpers import wanrt_command

# 1 base + 4 LoRA points + 1 full: enough points that the interrupt lands mid-sweep
SWEEP = ["bench", "--model", "tiny", "--backends", "eager", "--ranks", "1,2", "--lora-modes", "merged,separate,full",
         "--repeats", "1", "--warmup", "0", "--retries", "0", "--settle", "0", "--peak-size", "64"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "WANRT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A bench interrupted (SIGINT) right after its first progress line, then resumed."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "res"
    cmd = wanrt_command(*SWEEP, "-o", str(out))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp))
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # stderr is a pipe: progress comes as plain lines, while the bench runs
        lines.append(line.rstrip("\n"))
        if line.startswith("[1/"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, lines
    _, err_rest = proc.communicate(timeout=240)
    lines += err_rest.splitlines()
    partial = json.loads((out / "results.json").read_text())
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=_env(tmp), timeout=600,
                             check=False)
    return {"rc": proc.returncode, "stderr": lines, "partial": partial, "resumed": resumed, "out": out}


def test_progress_lines_when_not_a_terminal(interrupted):
    first = next(line for line in interrupted["stderr"] if line.startswith("[1/"))
    # point, backend, median step time, relative error, verdict
    assert first.split()[1:3] == ["base", "eager"], first
    assert "ms/step" in first and "rel err 0.0e+00" in first and ("equal" in first or "NOT EQUAL" in first)
    assert not any("\x1b[" in line for line in interrupted["stderr"])  # no terminal control codes in a log
    assert interrupted["stderr"][0].startswith("bench: 6 sweep point(s) to run")


def test_interrupt_keeps_finished_points(interrupted):
    assert interrupted["rc"] == 130
    last = [line for line in interrupted["stderr"] if line.strip()][-1]
    assert last.startswith("error: interrupted:") and "--resume" in last, last
    p = interrupted["partial"]["payload"]
    assert p["complete"] is False and 1 <= p["points"]["done"] < 6 and p["points"]["total"] == 6
    assert {r["point"] for r in p["runs"]} >= {"base"}
    assert all(r["status"] == "ok" for r in p["runs"])
    assert "Partial results" in (interrupted["out"] / "report.md").read_text() or interrupted["resumed"].returncode == 0


def test_resume_runs_only_what_is_missing(interrupted):
    r = interrupted["resumed"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already done, resumed" in r.stderr
    done = json.loads((interrupted["out"] / "results.json").read_text())["payload"]
    assert done["complete"] is True and done["points"] == {"done": 6, "total": 6}
    before = {(x["point"], x["backend"]): x for x in interrupted["partial"]["payload"]["runs"]}
    after = {(x["point"], x["backend"]): x for x in done["runs"]}
    assert len(after) == 6 and set(before) < set(after)
    for key, run in before.items():  # the finished points were kept, not measured again
        assert after[key]["latency"] == run["latency"], key
    resumed_lines = [line for line in r.stderr.splitlines() if line.startswith("[")]
    assert len(resumed_lines) == 6 - len(before) and resumed_lines[0].startswith(f"[{len(before) + 1}/6]")
    # full fine-tune rows have no rank of their own
    full = [x for x in done["runs"] if x["mode"] == "full"]
    assert full and all(x["rank"] == "full" for x in full)


def test_resume_refuses_another_sweep_and_a_finished_run(interrupted, tmp_path):
    cmd = wanrt_command(*SWEEP, "-o", str(interrupted["out"]), "--resume")
    finished = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=120, check=False)
    assert finished.returncode == 2 and "finished run" in finished.stderr
    missing = subprocess.run(cmd[:-2] + [str(tmp_path / "none"), "--resume"], capture_output=True, text=True,
                             env=_env(tmp_path), timeout=120, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_resume_checks_the_sweep_is_the_same(interrupted, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "results.json").write_text(json.dumps(interrupted["partial"]))
    cmd = wanrt_command(*SWEEP, "--ranks", "8", "-o", str(partial), "--resume")
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=120, check=False)
    assert r.returncode == 2 and "was made with ranks=" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_disturbed_runs_are_marked_in_table_and_report(interrupted):
    from rich.console import Console

    from wanrt.runtime.bench.report import render_report
    from wanrt.commands.bench import runs_table

    results = json.loads((interrupted["out"] / "results.json").read_text())
    runs = results["payload"]["runs"]
    run = next((r for r in runs if not r["interference"]["disturbed"]), runs[0])
    run["interference"] = {**run["interference"], "disturbed": True}  # as if the load probe had seen other work
    disturbed = [r for r in runs if r["interference"]["disturbed"]]
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(runs_table(results))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [line for line in text.splitlines() if line.strip().startswith(("all/", "base"))]
    assert len(rows) == len(runs)
    for line, r in zip(rows, runs):
        assert ("disturbed" in line) == r["interference"]["disturbed"], line
    report = render_report(results)
    assert report.count(" (disturbed) |") == len(disturbed) and "(disturbed): the load probe" in report
