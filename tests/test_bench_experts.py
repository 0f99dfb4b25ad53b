"""`wanrt bench` of Wan2.2's two experts (issue 19, runtime/bench/experts.py): each expert's forward and loads, and the
whole video of each declared schedule split at diffusers' boundary step. tiny-wan2.2 on eager (a load there is
building the seeded expert), one expert resident so the rounds reload."""

from __future__ import annotations

import json

from click.testing import CliRunner

from wanrt.commands.main import cli
from wanrt.export.model import ModelSpec
from wanrt.runtime.schedule import RECIPES


def test_bench_reports_each_expert_the_whole_video_and_the_reload(tmp_path):
    from diffusers import UniPCMultistepScheduler
    from PIL import Image

    from wanrt.runtime.experts import expert_pair
    from wanrt.runtime.generate import GenerateSpec, generate_video

    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["bench", "--model", "tiny-wan2.2", "--backends", "eager", "--repeats", "3",
                                   "--warmup", "0", "--settle", "0", "--experts-resident", "one", "--threads", "2",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    p = doc["payload"]
    assert (p["schema"], p["resident"], p["boundary_ratio"]) == ("wanrt.bench.experts/1", "one", 0.9)
    assert p["lora"]["high"]["seed"] != p["lora"]["low"]["seed"]  # each expert its own synthetic LoRA
    (run,) = p["runs"]
    assert run["loads"]["peak_alive"] == 1 and run["equal_quality"]
    for e in ("high", "low"):
        x = run["experts"][e]
        assert x["quality"]["rel_err_max"] <= x["quality"]["gate"]  # eager fp32 against itself: 0
        assert x["latency"]["forward"]["n"] >= 2 and x["latency"]["forward"]["median_ms"] > 0
        assert x["reload_s"] >= x["loads"]["median_s"] > 0
    # made with high open, the warm-up loads low, then rounds (low, high), (high, low), (low, high): high loads in
    # rounds 0 and 2 (cold there), low in round 1
    assert [(run["experts"][e]["loads"]["n"], run["experts"][e]["loads"]["n_cold"]) for e in ("high", "low")] == [
        (3, 2), (2, 1)] and run["loads"]["count"] == 5
    # the forwards per expert are the split diffusers makes: counted here on the real pipeline (distill-4step),
    # and from diffusers' own scheduler for the 40-step schedule (the tiny pipeline's UniPC, shift 3)
    fast, slow = run["per_video"]["distill-4step"], run["per_video"]["wan-40step-cfg"]
    pair = expert_pair("eager", ModelSpec("tiny-wan2.2"), {})
    spec = GenerateSpec(prompt="a fox", schedule=RECIPES["distill-4step"].schedule())
    _, timing = generate_video(pair, Image.new("RGB", (32, 32)), spec)
    pair.close()
    assert fast["forwards"] == timing["dit_calls_by_expert"] and min(fast["forwards"].values()) > 0
    s = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    s.set_timesteps(40)
    high = int((s.timesteps >= 900).sum())
    assert slow["forwards"] == {"high": 2 * high, "low": 2 * (40 - high)} and slow["cfg"]
    for v in (fast, slow):  # the whole video: each expert's forwards x its median, plus both reloads
        fwd = {e: run["experts"][e]["latency"]["forward"]["median_ms"] / 1e3 for e in ("high", "low")}
        assert abs(v["dit_s"] - sum(n * fwd[e] for e, n in v["forwards"].items())) < 1e-9
        reload = run["experts"]["high"]["reload_s"] + run["experts"]["low"]["reload_s"]
        assert v["loads_per_video"] == 2 and abs(v["video_s"] - v["dit_s"] - reload) < 1e-9
    report = (out / "report.md").read_text()
    assert "## Whole video per schedule" in report and "| eager | distill-4step | 2/2 |" in report
    assert "resident one" in res.output and "expert loads" in res.output


def test_a_two_expert_bench_refuses_a_sweep_in_one_line_and_writes_nothing(tmp_path):
    for flags, why in ((["--ranks", "4,8"], "runs one LoRA configuration"),
                       (["--video-quality"], "--video-quality and --reference finetuned are for one-transformer"),
                       (["--batch", "2"], "--batch 1")):
        res = CliRunner().invoke(cli, ["bench", "--model", "tiny-wan2.2", *flags, "-o", str(tmp_path / "out")])
        assert res.exit_code == 2 and why in res.output and not (tmp_path / "out").exists(), res.output
    res = CliRunner().invoke(cli, ["bench", "--model", "tiny", "--experts-resident", "one", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "for Wan2.2's two experts" in res.output and not (tmp_path / "o").exists()
