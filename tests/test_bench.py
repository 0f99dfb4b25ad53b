"""`wanrt bench`: results.json schema, report contents, plots, quality gates, sweep construction."""

import json
import math

import pytest

from wanrt.errors import BadInputError
from wanrt.runtime.backends import available_backends
from wanrt.runtime.bench import (RESULTS_SCHEMA, BenchSpec, QualityGates, SweepPoint, percentile, run_bench,
                                 summarize, sweep_points)
from wanrt.runtime.bench.measure import median_ci
from wanrt.runtime.bench.per_video import per_video, schedule_ratios
from wanrt.runtime.bench.report import per_video_section


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "wanrt-cache"


@pytest.fixture(scope="module")
def results(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("bench") / "run"
    spec = BenchSpec(model="tiny", ranks=(4,), modes=("merged", "separate"), targets=("all",),
                     backends=("eager", "ort") + (("trt",) if available_backends("cpu")["trt"] is None else ()),
                     repeats=2, warmup=1, threads=2, video_quality=True,
                     video_steps=1, include_base=False, peak_size=512)
    res = run_bench(spec, out_dir=out, artifacts_dir=cache_dir, keep_artifacts=True, progress=False,
                    command="wanrt bench (test)")
    return out, res


def test_sweep_points():
    spec = BenchSpec(ranks=(4, 16), modes=("merged", "separate", "full"), targets=("all", "cross-attn"))
    points = sweep_points(spec)
    assert points[0] == SweepPoint(None, "base", None)
    assert len(points) == 1 + 2 * (2 + 2 + 1)
    assert [p.label for p in points if p.mode == "full"] == ["all/full/full", "cross-attn/full/full"]
    assert points[1].lora_spec(7).rank == 4 and points[1].lora_spec(7).seed == 7
    with pytest.raises(BadInputError):
        sweep_points(BenchSpec(modes=("fused",)))


def test_statistics():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    s = summarize([0.003, 0.001, 0.002])
    assert s["median_ms"] == pytest.approx(2.0) and s["n"] == 3 and s["min_ms"] == pytest.approx(1.0)
    assert QualityGates().rel_err_for("bf16") == 1e-2
    with pytest.raises(BadInputError):
        QualityGates().rel_err_for("int4")


def test_sampler_samples_while_the_block_runs_and_the_rss_peak_sees_an_allocation():
    """wanrt.memory.Sampler (peak RSS here, the rank study's load average): samples during the block, none after;
    the RSS sampler's peak covers a 64 MiB buffer touched and freed inside the block."""
    import time

    import numpy as np

    from wanrt.memory import Sampler, rss_bytes
    from wanrt.runtime.bench.measure import _RssSampler

    ticks: list[float] = []
    with Sampler(lambda: ticks.append(time.perf_counter()), 0.005):
        time.sleep(0.1)
    n = len(ticks)
    time.sleep(0.03)
    assert 3 <= n == len(ticks)
    with _RssSampler() as s:
        buf = np.ones(64 * 2**20, dtype=np.uint8)  # touched: resident
        time.sleep(0.05)
        del buf
    assert s.peak - s.start >= 48 * 2**20 and rss_bytes() > 0


def test_median_interval_covers_the_median():
    """The order-statistic interval: its ranks, no interval below 6 samples, and its coverage on a skewed
    (exponential, like latencies) distribution whose median is ln 2."""
    import numpy as np

    assert median_ci(list(range(1, 21))) == (6, 15) and median_ci(list(range(1, 21)), 0.975) == (5, 16)
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) is None and median_ci([1, 2, 3, 4, 5, 6]) == (1, 6)
    draws = np.random.default_rng(0).exponential(size=(2000, 20))
    hits = [lo <= math.log(2) <= hi for lo, hi in (median_ci(list(d)) for d in draws)]
    assert 0.94 <= sum(hits) / len(hits) <= 0.98  # binomial coverage 95.9% at n = 20


def _run(point, median_ms, batch=1):
    """A finished run as the bench records it: 20 forward samples around `median_ms`."""
    samples = [median_ms * (1 + 0.01 * (i - 10)) / 1e3 for i in range(21) if i != 10]
    fwd = summarize(samples)
    return {"point": point, "backend": "ort", "status": "ok", "equal_quality": True, "latency": {"forward": fwd},
            "per_video": per_video(fwd, batch)}


def test_per_video_seconds_and_the_schedule_ratio():
    base, sep = _run("base", 10.0), _run("all/separate/r64", 12.5)
    slow, fast = base["per_video"]["wan-40step-cfg"], sep["per_video"]["distill-4step"]
    assert slow["seconds"] == pytest.approx(80 * base["latency"]["forward"]["median_ms"] / 1e3)
    assert fast["seconds"] == pytest.approx(4 * sep["latency"]["forward"]["median_ms"] / 1e3)
    lo, hi = base["latency"]["forward"]["median_ci95_ms"]
    assert slow["ci95_s"] == pytest.approx([80 * lo / 1e3, 80 * hi / 1e3]) and lo < 10.0 < hi
    assert _run("base", 10.0, batch=2)["per_video"] is None  # a video's forwards run at batch 1
    ratios = {x["point"]: x for x in schedule_ratios([base, sep])}
    assert ratios["base"]["ratio"] == pytest.approx(20.0) and ratios["base"]["ci95"] == [20.0, 20.0]
    x = ratios["all/separate/r64"]  # the base row's 40-step CFG video over this row's 4-step video
    assert x["slow_point"] == "base" and x["ratio"] == pytest.approx(80 * 10.0 / (4 * 12.5), rel=1e-3)
    assert x["ci95"][0] < x["ratio"] < x["ci95"][1] < 20.0
    assert schedule_ratios([{**sep, "per_video": None}]) == []  # runs from an older results.json
    results = {"payload": {"runs": [base, sep], "summary": {"per_video": list(ratios.values())}}}
    table = "\n".join(per_video_section(results["payload"]))
    assert "## Per video" in table and "20.0x exact vs base" in table and f"{x['ratio']:.1f}x [" in table


def test_results_schema(results):
    out, res = results
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["kind"] == "bench" and on_disk["payload"]["schema"] == RESULTS_SCHEMA
    assert on_disk["command"] == "wanrt bench (test)"
    for key in ("machine", "versions", "specs", "created", "wanrt_version"):
        assert key in on_disk
    p = on_disk["payload"]
    assert p["threads"] == 2 and p["device"] == "cpu"
    assert set(p["peak"]["kernels"]) >= {"F.linear fp32", "ORT MatMul fp32"}  # each backend's own kernel
    assert all(k["tflops"] > 0 and k["end"]["tflops"] > 0 for k in p["peak"]["kernels"].values())
    assert p["shape"] == {"frames": 5, "height": 32, "width": 32, "latent": [2, 4, 4], "batch": 1,
                          "tokens_per_forward": 8}
    labels = {(r["point"], r["backend"]) for r in p["runs"]}
    backends = res["specs"]["bench"]["backends"]
    assert labels == {(pt, be) for pt in ("all/merged/r4", "all/separate/r4") for be in backends}
    for r in p["runs"]:
        if r["backend"] == "trt":  # a GPU here: it ran, or failed with a one-line reason (the bench's device: CPU)
            assert r["status"] in ("ok", "failed") and "\n" not in r.get("reason", "")
            continue
        assert r["status"] == "ok", r.get("reason")
        for k in ("forward", "step"):
            lat = r["latency"][k]
            assert lat["n"] == (4 if k == "forward" else 2) and lat["p90_ms"] >= lat["median_ms"] > 0
        assert r["tokens_per_s"]["forward"] == pytest.approx(8 / (r["latency"]["forward"]["median_ms"] / 1e3))
        assert 0 < r["mfu"] and r["tflops"] > 0
        assert r["mfu"] == pytest.approx(r["tflops"] / p["peak"]["kernels"][r["peak_kernel"]]["tflops"])
        assert r["memory"]["kind"] == "cpu-rss" and r["memory"]["load_mb"] is not None
        assert r["memory"]["peak_mb"] == pytest.approx(r["memory"]["load_mb"] + r["memory"]["forward_mb"])
        assert r["quality"]["rel_err_max"] <= 1e-4 and r["equal_quality"] is True
        assert r["quality"]["video"]["psnr_min"] >= 35.0 and len(r["quality"]["video"]["psnr"]) == 5
        assert r["flops"]["total"] == r["flops"]["base"] + r["flops"]["lora"]
        assert r["interference"]["attempts"] >= 1 and "probe_ratio_before" in r["interference"]["checks"][0]
        if r["backend"] == "ort":
            assert "export_s" in r["setup_s"]
        fwd, video = r["latency"]["forward"], r["per_video"]  # per video: forwards x the batch-1 forward median
        assert video["wan-40step-cfg"]["forwards"] == 80 and video["distill-4step"]["forwards"] == 4
        assert video["distill-4step"]["seconds"] == pytest.approx(4 * fwd["median_ms"] / 1e3)
        assert fwd["median_ci95_ms"] is None and video["distill-4step"]["ci95_s"] is None  # 4 samples: too few
    sep = next(r for r in p["runs"] if r["point"] == "all/separate/r4" and r["backend"] == "ort")
    assert 0 < sep["flops"]["lora_share"] < 1
    assert {o["backend"] for o in p["summary"]["separate_overhead"]} == {"eager", "ort"}
    assert {s["backend"] for s in p["summary"]["speedups"]} == {"ort"}
    assert p["fvd"]["available"] is False and "9 frames" in p["fvd"]["reason"]


def test_report_and_plots(results):
    out, _ = results
    report = (out / "report.md").read_text()
    for text in ("# wanrt bench: tiny", "command: `wanrt bench (test)`", "threads: 2", "## targets: all",
                 "fwd median ms", "step p90 ms", "tokens/s", "MFU", "## Speed-up over eager",
                 "## Separate-mode LoRA overhead", "## Video quality", "## Goals"):
        assert text in report, text
    assert "F.linear fp32" in report and "ORT MatMul fp32" in report  # the peak each MFU is taken against
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # plots are optional: the report says how to get them
        assert "matplotlib" in (out / "PLOTS_SKIPPED.txt").read_text()
        return
    for png in ("latency_vs_rank.png", "tokens_per_s_vs_rank.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_gate_is_flagged(tmp_path, cache_dir):
    """A backend over the relative-error gate is 'not equal quality' and left out of every ranking."""
    gates = QualityGates(rel_err=(("fp32", 1e-12),))
    spec = BenchSpec(model="tiny", ranks=(4,), modes=("separate",), backends=("eager", "ort"), repeats=1,
                     warmup=0, include_base=False, gates=gates, peak_size=512)
    res = run_bench(spec, out_dir=tmp_path / "b", artifacts_dir=cache_dir, progress=False)
    runs = {r["backend"]: r for r in res["payload"]["runs"]}
    assert runs["eager"]["equal_quality"] is True  # eager fp32 is the reference itself
    assert runs["ort"]["equal_quality"] is False
    assert "relative error" in runs["ort"]["quality"]["failures"][0]
    s = res["payload"]["summary"]
    assert s["speedups"] == [] and s["not_equal_quality"][0]["backend"] == "ort"
    report = (tmp_path / "b" / "report.md").read_text()
    assert "NOT EQUAL QUALITY" in report and "## Not equal quality" in report
    # the video gates: an impossible PSNR floor or LPIPS ceiling fails a video that passes the default gates
    assert QualityGates().video_failures(40.0, 0.01) == []
    assert "video PSNR" in QualityGates(psnr_db=math.inf).video_failures(40.0, None)[0]
    assert "video LPIPS" in QualityGates(lpips=0.0).video_failures(40.0, 0.01)[0]


def test_bench_cli(tmp_path, cache_dir, monkeypatch):
    from click.testing import CliRunner

    from wanrt.commands.main import cli

    monkeypatch.setenv("WANRT_CACHE_DIR", str(cache_dir))
    out = tmp_path / "cli"
    args = ["bench", "--model", "tiny", "--ranks", "4", "--modes", "separate,full", "--targets", "cross-attn+ffn",
            "--backends", "eager", "--repeats", "1", "--warmup", "0", "--peak-size", "256", "-o", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["specs"]["bench"]["targets"] == ["cross-attn,ffn"]
    runs = {r["point"]: r for r in data["payload"]["runs"]}
    assert set(runs) == {"base", "cross-attn,ffn/separate/r4", "cross-attn,ffn/full/full"}
    assert runs["base"]["flops"]["lora"] == 0 and runs["base"]["lora"] == {}
    assert runs["cross-attn,ffn/separate/r4"]["lora"]["modules"] == 2 * 6  # 2 blocks x (4 cross-attn + 2 ffn)
    assert runs["cross-attn,ffn/full/full"]["flops"]["lora"] == 0  # dense delta folded into W
    assert "## base model (no LoRA)" in (out / "report.md").read_text()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "--force" in res.output
    res = CliRunner().invoke(cli, [*args[:-2], "--backends", "jax", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "jax" in res.output
