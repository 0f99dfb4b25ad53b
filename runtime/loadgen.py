"""wanrt as an MLPerf LoadGen system under test: one query sample = one whole video (issue 21).

MLCommons' LoadGen (`mlcommons-loadgen`, import `mlperf_loadgen`) issues the queries, times them and writes its own
logs; this module is the SUT and the query sample library around `runtime/generate.generate_video`: sample i is the
video of prompt `PROMPTS[i % len]` with seed i, so every sample is a fixed input (MLPerf fixes latents and seed too).
SingleStream reports LoadGen's 90th-percentile latency and its early-stopping estimate; Offline its samples/s.
`run_loadgen` keeps LoadGen's `mlperf_log_summary.txt` and `mlperf_log_detail.txt` in the output directory beside
`results.json`, whose numbers are parsed from that summary (LoadGen's own figures, not re-timed here).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from wanrt.artifacts import write_json
from wanrt.errors import BadInputError, MissingDependencyError
from wanrt.runtime.generate import GenerateSpec, generate_video

SCENARIOS = ("SingleStream", "Offline")
PROMPTS = ("a cat surfing a wave at sunset", "a red fox running through snow", "city lights at night, timelapse")
SUMMARY_NAME = "mlperf_log_summary.txt"
DETAIL_NAME = "mlperf_log_detail.txt"
RESULTS_NAME = "results.json"


@dataclass(frozen=True)
class LoadgenSpec:
    scenario: str = "SingleStream"
    samples: int = 8  # the query sample library's size (MLPerf's Wan2.2 T2V uses 50 performance samples)
    min_query_count: int = 8
    max_query_count: int = 0  # 0: no cap (LoadGen's own convention)
    min_duration_ms: int = 0  # LoadGen's default is 10 min; whole videos on a CPU are counted in queries instead
    target_latency_ms: float = 1000.0  # SingleStream's expected latency; Offline's expected QPS is its inverse

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise BadInputError(f"scenario {self.scenario!r}: choose one of {', '.join(SCENARIOS)}",
                                param="scenario")
        for name in ("samples", "min_query_count"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be at least 1, got {getattr(self, name)}", param=name)
        if self.target_latency_ms <= 0:
            raise BadInputError(f"target latency must be positive, got {self.target_latency_ms} ms",
                                param="target_latency_ms")


def require_loadgen():
    try:
        import mlperf_loadgen as lg  # lazy: optional (dev extra), a C++ extension
    except ImportError as e:
        raise MissingDependencyError(f"LoadGen runs need mlcommons-loadgen ({e}); pip install mlcommons-loadgen"
                                     ) from None
    return lg


def test_settings(lg, spec: LoadgenSpec):
    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, spec.scenario)
    s.mode = lg.TestMode.PerformanceOnly
    s.min_query_count = spec.min_query_count
    if spec.max_query_count:
        s.max_query_count = spec.max_query_count
    s.min_duration_ms = spec.min_duration_ms
    s.single_stream_expected_latency_ns = int(spec.target_latency_ms * 1e6)
    s.offline_expected_qps = 1000.0 / spec.target_latency_ms
    return s


def _log_settings(lg, out_dir: Path):
    out = lg.LogOutputSettings()
    out.outdir = str(out_dir)
    out.copy_summary_to_stdout = False
    log = lg.LogSettings()
    log.log_output = out
    log.enable_trace = False  # the trace is a large JSON of every event; summary and detail are what is kept
    return log


def _number(text: str, label: str) -> float | None:
    m = re.search(rf"^\s*\*?\s*{re.escape(label)}\s*:\s*([-0-9.eE+]+)\s*$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def parse_summary(text: str) -> dict[str, Any]:
    """LoadGen's summary log -> its verdict, latencies (ms), early-stopping verdict and estimate, throughput."""
    def line(pattern: str):
        return re.search(pattern, text, re.MULTILINE)

    ns = {k: _number(text, k) for k in ("50.00 percentile latency (ns)", "90.00 percentile latency (ns)",
                                       "Max latency (ns)", "Mean latency (ns)")}
    valid, scenario = line(r"^Result is\s*:\s*(\w+)"), line(r"^Scenario\s*:\s*(\S+)")
    out = {"result": valid.group(1) if valid else None, "scenario": scenario.group(1) if scenario else None,
           "samples_per_second": _number(text, "Samples per second"),
           "p50_latency_ms": _ms(ns["50.00 percentile latency (ns)"]),
           "p90_latency_ms": _ms(ns["90.00 percentile latency (ns)"]),
           "max_latency_ms": _ms(ns["Max latency (ns)"]), "mean_latency_ms": _ms(ns["Mean latency (ns)"]),
           "early_stopping": None}
    satisfied = line(r"^\s*Early stopping satisfied\s*:\s*(\w+)")
    if satisfied:  # SingleStream (and the other latency-bound scenarios); Offline has none
        estimate = line(r"Early stopping ([\d.]+)th percentile estimate\s*:\s*(\d+)")
        processed = line(r"Processed at least (\d+) queries \((\d+)\)")
        short = line(r"Only processed (\d+) queries") and line(r"Need to process at least (\d+) queries")
        out["early_stopping"] = {
            "satisfied": satisfied.group(1).lower() == "yes",
            "percentile": float(estimate.group(1)) if estimate else None,
            "estimate_ms": int(estimate.group(2)) / 1e6 if estimate else None,
            "queries": int((processed or line(r"Only processed (\d+) queries")).group(2 if processed else 1))
            if processed or short else None,
            "min_queries": int((processed or short).group(1)) if processed or short else None}
    return out


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def run_loadgen(backend, image, base: GenerateSpec, spec: LoadgenSpec, out_dir: str | Path, pipe=None,
                say: Callable[[str], None] | None = None, compiled=None) -> dict[str, Any]:
    """Run one LoadGen test with `backend` as the SUT; returns results.json's content (also written there).

    Queries run one after another inside LoadGen's issue callback (one CPU, one video at a time: Offline's batch is
    the same loop); each completes with the frames' size as its response, so LoadGen times the whole video.
    `compiled`: the pipeline's other stages on their graphs (runtime/generate.compiled_stages), built once."""
    lg = require_loadgen()
    say = say or (lambda _m: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_query: list[float] = []

    def run_one(index: int):
        t = time.perf_counter()
        frames, _ = generate_video(backend, image, replace(base, prompt=PROMPTS[index % len(PROMPTS)], seed=index),
                                   pipe=pipe, compiled=compiled)
        per_query.append(time.perf_counter() - t)
        return frames

    def issue_queries(samples):
        for s in samples:
            frames = run_one(s.index)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, int(frames.nbytes))])
        say(f"{len(per_query)} videos")

    sut = lg.ConstructSUT(issue_queries, lambda: None)
    qsl = lg.ConstructQSL(spec.samples, spec.samples, lambda _idx: None, lambda _idx: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, test_settings(lg, spec), _log_settings(lg, out_dir))
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    summary = (out_dir / SUMMARY_NAME).read_text()
    result = {"loadgen": parse_summary(summary), "spec": asdict(spec), "video": asdict(base) | {
        "schedule": base.schedule.to_dict()}, "queries_run": len(per_query),
        "logs": {"summary": SUMMARY_NAME, "detail": DETAIL_NAME}}
    write_json(out_dir / RESULTS_NAME, result)
    return result
