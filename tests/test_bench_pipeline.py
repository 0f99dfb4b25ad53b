"""`wanrt bench --pipeline` (issue 21, runtime/bench/pipeline.py): whole videos of a declared schedule, stage by
stage, eager against a compiled row (ORT DiT + ORT VAE decode) at equal video quality, on the tiny pipeline.

What is asserted: the rows and their VAE decode, every stage timed, the stages inside the video's seconds, the
speed-up being eager's seconds over the row's within each round (paired), the quality sample equal to eager's
(fp32 on both sides: PSNR far above the 35 dB gate), the forward count of the schedule, and one-line refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from wanrt.commands.main import cli
from wanrt.runtime.bench import pipeline as P
from wanrt.runtime.bench.pipeline import parse_recipes, stage_backend_for
from wanrt.runtime.stages import STAGES


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "bench"
    cache = tmp_path_factory.mktemp("cache")
    res = CliRunner().invoke(cli, ["bench", "--model", "tiny", "--backends", "ort", "--pipeline", "distill-4step",
                                   "--rank", "4", "--repeats", "2", "--shape", "9x32x32", "--threads", "2",
                                   "--video-seeds", "2", "--cache-dir", str(cache), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_rows_stages_and_paired_speedup(bench_run):
    out, text = bench_run
    doc = json.loads((out / "results.json").read_text())
    p = doc["payload"]
    assert p["schema"] == "wanrt.bench.pipeline/1"
    assert p["rows"]["eager"]["stage_backend"] == "eager" and p["rows"]["ort"]["stage_backend"] == "ort"
    assert p["lora"] == {"rank": 4, "mode": "merged", "targets": "all", "seed": 0}
    s = p["schedules"]["distill-4step"]
    assert (s["schedule"]["steps"], s["schedule"]["cfg"], s["schedule"]["forwards"]) == (4, False, 4)
    for name, row in s["rows"].items():
        assert row["video_s"]["n"] == 2 and row["video_s"]["median"] > 0
        assert set(row["stages_s"]) == set(STAGES[:-1])  # no mp4: the bench writes none
        assert all(v > 0 for v in row["stages_s"].values()), (name, row["stages_s"])
        # the stages are parts of the video; medians of parts need not sum to the median, so check per sample
        assert sum(row["stages_s"].values()) <= max(row["video_s"]["samples"]) * 1.05
    eager, ort = s["rows"]["eager"]["video_s"]["samples"], s["rows"]["ort"]["video_s"]["samples"]
    ratios = sorted(e / o for e, o in zip(eager, ort))
    assert s["rows"]["ort"]["speedup"]["median"] == pytest.approx((ratios[0] + ratios[1]) / 2, rel=1e-3)
    assert s["rows"]["eager"]["speedup"] is None and s["rows"]["eager"]["quality"] is None
    q = s["rows"]["ort"]["quality"]
    assert q["psnr_min"] >= 60 and q["failures"] == []  # fp32 DiT and VAE on both sides
    # two seeds of 9 frames: FVD between the sets, ~0 for equal videos
    assert q["videos"] == 2 and abs(q["fvd"]["fvd"]) < 1e-3, q
    assert p["goal"]["schedule"] == "distill-4step" and p["goal"]["verdict"] != "not run"
    report = (out / "report.md").read_text()
    assert "## distill-4step: 4 steps, no CFG, 4 DiT forwards, 2 rounds" in report
    assert "| ort / ort (fp32) |" in report and "Goal (issue 21)" in report
    assert "goal >= 1.5x on distill-4step" in text


def test_two_experts_run_both_each_at_its_steps(tmp_path):
    """Wan2.2: both experts in every video, switched at diffusers' boundary (0.9: on distill-4step's timesteps
    1000,750,500,250 at shift 5 the first is high, the rest low), one resident at a time; equal to eager."""
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["bench", "--model", "tiny-wan2.2", "--backends", "ort", "--pipeline",
                                   "distill-4step", "--rank", "4", "--repeats", "1", "--experts-resident", "one",
                                   "--cache-dir", str(tmp_path / "cache"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    p = json.loads((out / "results.json").read_text())["payload"]
    assert (p["experts"], p["experts_resident"]) == (["high", "low"], "one")
    rows = p["schedules"]["distill-4step"]["rows"]
    assert rows["ort"]["quality"]["failures"] == [] and rows["ort"]["quality"]["psnr_min"] >= 60
    assert rows["ort"]["video_s"]["median"] > 0 and rows["eager"]["stages_s"]["dit"] > 0


def test_real_component_geometries_are_the_ones_timed(tmp_path, keep_built_pipelines):
    """--components wan2.1 on the 14B one-block slice (eager row only, ~1 min): the parts the bench times are
    Wan2.1's (UMT5 4096 wide with one of its 24 layers, CLIP ViT-H/14, the Wan VAE at base_dim 96), every stage of
    the video is timed, and the results and report say which geometry and how many text layers ran."""
    built = keep_built_pipelines(P)
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["bench", "--model", "wan2.1-i2v-14b", "--layers", "1", "--backends", "eager",
                                   "--pipeline", "distill-4step", "--components", "wan2.1", "--text-layers", "1",
                                   "--repeats", "1", "--shape", "5x32x32", "--threads", "2",
                                   "--cache-dir", str(tmp_path / "cache"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    (pipe,) = built
    text, image, vae = pipe.text_encoder.config, pipe.image_encoder.config, pipe.vae.config
    assert (text.d_model, text.num_layers, text.d_ff) == (4096, 1, 10240)
    assert (image.hidden_size, image.num_hidden_layers) == (1280, 32)
    assert (vae.base_dim, vae.z_dim) == (96, 16)
    p = json.loads((out / "results.json").read_text())["payload"]
    assert p["components"] == {"name": "wan2.1", "text_layers": 1, "text_layers_full": 24}
    row = p["schedules"]["distill-4step"]["rows"]["eager"]
    assert set(row["stages_s"]) == set(STAGES[:-1]) and all(v > 0 for v in row["stages_s"].values())
    assert p["goal"]["verdict"] == "no compiled row at equal quality"
    assert "the `wan2.1` geometry (runtime/components.py); UMT5 1 of 24 layers" in (out / "report.md").read_text()


def test_recipes_and_vae_rows():
    assert parse_recipes("all") == ("distill-4step", "wan-40step-cfg")
    assert parse_recipes(" distill-4step ,") == ("distill-4step",)
    assert (stage_backend_for("ov"), stage_backend_for("ort"), stage_backend_for("compile")) == ("ov", "ort", "eager")


@pytest.mark.parametrize("args, line", [
    (["--pipeline", "fast"], "--pipeline recipe 'fast': choose from distill-4step, wan-40step-cfg"),
    (["--pipeline", "all", "--ranks", "4,16"], "a pipeline bench runs one LoRA configuration"),
    (["--pipeline", "all", "--lora-mode", "full"], "--lora-mode full: a pipeline bench deploys a LoRA"),
    (["--pipeline", "all", "--batch", "2"], "--batch 2, --artifact and --reference finetuned"),
    (["--pipeline", "all", "--precision", "bf16"], "--precision bf16: backend 'ort' runs fp32"),
    (["--pipeline", "all", "--experts-resident", "one"], "--experts-resident one: for Wan2.2's two experts"),
    (["--pipeline", "all", "--components", "wan2.1"], "this transformer takes 32 / 16 (use a 14B preset)"),
    (["--pipeline", "all", "--text-layers", "9"], "--text-layers 9: 1 to"),
    (["--components", "wan2.1"], "they build the pipeline's other stages; add --pipeline RECIPES"),
    (["--text-layers", "2"], "they build the pipeline's other stages; add --pipeline RECIPES"),
])
def test_refusals_are_one_line_before_any_work(tmp_path, args, line):
    res = CliRunner().invoke(cli, ["bench", "--model", "tiny", "--backends", "ort", "-o", str(tmp_path / "o"),
                                   *args])
    assert res.exit_code == 2, res.output
    assert line in res.output
    assert not (tmp_path / "o").exists()
