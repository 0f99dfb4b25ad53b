"""tools/motion_study.py: the whole study at toy size (tiny preset, 16x16 clips), its statistics and its resume."""

import json
import statistics
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch
from click.testing import CliRunner

from wanrt.artifacts import write_manifest
from wanrt.errors import BadInputError
from wanrt.tools import motion_clips as mc
from wanrt.tools import motion_study as ms
from wanrt.tools import train_small as ts


def test_interval_is_the_student_t_interval():
    iv = ms.interval([1.0, 2.0, 3.0])
    half = 4.303 * statistics.stdev([1.0, 2.0, 3.0]) / 3 ** 0.5
    assert iv["mean"] == 2.0 and iv["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert ms.interval([5.0])["ci95"] is None


def test_methods_and_bad_ranks():
    names = [m.name for m in ms.study_methods((4, 16), 8, ("ffn",))]
    assert names == ["full", "r4-all", "r16-all", "r4-cross-attn", "r16-cross-attn", "r8-ffn"]
    for bad in ("", "4,x", "0"):
        with pytest.raises(BadInputError, match="--ranks"):
            ms._parse_ints(bad, "--ranks")


def test_study_end_to_end_and_resume(tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / "down"
    mc.write_dataset(data, 0, "downstream", {"train": 4, "validation": 2, "test": 4}, 17, (16, 16), camera_pan=False)
    cfg = ts.TrainConfig(data=str(data), preset="tiny", steps=2, batch=2, val_every=2, val_clips=2)
    ts.save_run(tmp_path / "pre", cfg, *ts.train(cfg, log=lambda _: None))
    opts = dict(pretrain=tmp_path / "pre", data=str(data), out=tmp_path / "study", ranks="2", groups="", group_rank=2,
                steps=2, seeds=2, test_clips=4, sample_steps=1, latency_rounds=2, jobs=1)
    result = ms.run_study(opts, say=lambda _: None)
    s = result["summary"]
    assert list(s["methods"]) == ["full", "r2-all", "r2-cross-attn"]
    for name, row in s["methods"].items():
        # the kept rate is the one of lowest validation loss at seed 0; two seeds scored at it
        search = result["lr_search"][name]
        assert row["lr"] == min(ms.LR_GRID[row["method"]], key=lambda lr: search[f"{lr:g}"])
        assert row["lpips"]["n"] == 2 and 0 < row["lpips"]["mean"] < 1 and row["fvd"]["ci95"] is not None
        assert row["final_validation"][0] == search[f"{row['lr']:g}"]
    extracted = s["extracted"]["2"]
    assert 0 < extracted["retained_energy_of_all_changes"] <= extracted["retained_energy_of_targets"] <= 1
    rows = result["latency"]["rows"]
    assert set(rows) == {"merged", "r2-all", "r2-cross-attn"}
    assert all(rows[n]["separate_over_merged"]["mean"] > 0 for n in ("r2-all", "r2-cross-attn"))
    # a branch on a subset costs less than on all targets; the 14B's 32,760 tokens make attention dominate
    assert 0 < rows["r2-cross-attn"]["flop_share"] < rows["r2-all"]["flop_share"]
    assert 0 < rows["r2-all"]["flop_share_wan14b_480p"] < rows["r2-all"]["flop_share"]
    assert all(row["trainable_parameters"] > 0 for row in s["methods"].values())
    report = ms.report_md(result)
    assert all(f"| {n} |" in report for n in s["methods"]) and result["cpu"]["model"] in report
    # a re-run trains and scores nothing again, and reads the same numbers
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "study").rglob("*.json")}
    again = ms.run_study(opts, say=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["summary"] == s
    # the results are a function of the settings: a resume with another step budget is refused before any work
    with pytest.raises(BadInputError, match="other steps"):
        ms.run_study({**opts, "steps": 3}, say=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_dead_worker_is_one_line_that_says_how_to_resume(monkeypatch, tmp_path):
    def dies(opts):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(ms, "run_study", dies)
    result = CliRunner().invoke(ms.main, ["--pretrain", "p", "--data", "d", "-o", str(tmp_path / "w")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: a study worker died (killed, or out of memory); the finished runs under {tmp_path / 'w'} are kept: "
        "rerun the same command to resume"]


def test_a_pretrain_of_another_conditioning_is_refused_before_any_job(tmp_path):
    data = tmp_path / "down"
    mc.write_dataset(data, 0, "downstream", {"train": 2, "validation": 2, "test": 2}, 5, (16, 16), camera_pan=False)
    cfg = ts.TrainConfig(data=str(data), preset="tiny", steps=1, batch=2, val_every=1, val_clips=2)
    ts.save_run(tmp_path / "pre", cfg, *ts.train(cfg, log=lambda _: None))
    doc = json.loads((tmp_path / "pre" / "manifest.json").read_text())
    del doc["payload"]["conditioning"]  # as version 1 wrote it
    write_manifest(tmp_path / "pre", doc)
    opts = dict(pretrain=tmp_path / "pre", data=str(data), out=tmp_path / "study", ranks="2", groups="", group_rank=2,
                steps=1, seeds=1, test_clips=2, sample_steps=1, latency_rounds=1, jobs=1)
    with pytest.raises(BadInputError, match="conditioning v1, this wanrt feeds v2"):
        ms.run_study(opts, say=lambda _: None)
    assert not (tmp_path / "study").exists()
