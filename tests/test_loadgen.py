"""wanrt as MLPerf LoadGen's system under test (runtime/loadgen.py): a real LoadGen SingleStream over whole tiny
videos writes its summary and detail logs beside results.json, whose figures are LoadGen's own, parsed."""

from pathlib import Path

import pytest
from PIL import Image

from wanrt.errors import BadInputError
from wanrt.export.model import ModelSpec
from wanrt.runtime.backends import backend_from_specs
from wanrt.runtime.generate import GenerateSpec
from wanrt.runtime.loadgen import DETAIL_NAME, RESULTS_NAME, SUMMARY_NAME, LoadgenSpec, parse_summary, run_loadgen
from wanrt.runtime.pipeline import build_pipeline
from wanrt.runtime.schedule import Schedule
from wanrt.jsonio import read_json

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "results" / "loadgen-tiny-singlestream"


def test_short_singlestream_writes_and_parses_loadgen_logs(tmp_path):
    backend = backend_from_specs("eager", ModelSpec("tiny"))
    pipe = build_pipeline(backend)
    base = GenerateSpec(prompt="", frames=1, height=16, width=16, schedule=Schedule(steps=1, guidance=1.0))
    spec = LoadgenSpec(samples=3, min_query_count=3, max_query_count=3, target_latency_ms=200)
    result = run_loadgen(backend, Image.new("RGB", (16, 16)), base, spec, tmp_path, pipe=pipe)
    for name in (SUMMARY_NAME, DETAIL_NAME, RESULTS_NAME):
        assert (tmp_path / name).stat().st_size > 0
    assert read_json(tmp_path / RESULTS_NAME)["loadgen"] == result["loadgen"]
    lg = result["loadgen"]
    assert lg["scenario"] == "SingleStream" and result["queries_run"] == 3
    assert 0 < lg["p50_latency_ms"] <= lg["p90_latency_ms"] <= lg["max_latency_ms"]
    # 3 queries are too few for LoadGen's early stopping at p90 (it needs 64): the verdict says so, INVALID run
    es = lg["early_stopping"]
    assert es == {"satisfied": False, "percentile": None, "estimate_ms": None, "queries": 3, "min_queries": 64}
    assert lg["result"] == "INVALID"


def test_committed_run_has_an_early_stopping_estimate():
    """The committed >= 50-query SingleStream (tools/loadgen_wan.py): LoadGen's estimate is parsed, and it bounds
    the observed p90 from above (it is an upper confidence bound on the 90th percentile)."""
    lg = parse_summary((COMMITTED / SUMMARY_NAME).read_text())
    es = lg["early_stopping"]
    assert es["satisfied"] and es["queries"] >= 64 and es["percentile"] == 90.0
    assert es["estimate_ms"] >= lg["p90_latency_ms"] > 0
    assert read_json(COMMITTED / RESULTS_NAME)["loadgen"] == lg


@pytest.mark.parametrize("kw, param", [({"scenario": "Server"}, "scenario"), ({"samples": 0}, "samples"),
                                       ({"target_latency_ms": 0}, "target_latency_ms")])
def test_bad_spec_is_refused(kw, param):
    with pytest.raises(BadInputError) as e:
        LoadgenSpec(**kw)
    assert e.value.param == param


def test_compiled_stages_are_built_once_for_every_query(tmp_path, monkeypatch):
    """The whole pipeline compiled under LoadGen: the stage sessions are built once by the caller and every query's
    video runs through them (counted at the VAE decode drop-in); no query builds its own."""
    import dataclasses

    from wanrt.runtime import generate

    monkeypatch.setenv("WANRT_CACHE_DIR", str(tmp_path / "cache"))
    backend = backend_from_specs("eager", ModelSpec("tiny"))
    pipe = build_pipeline(backend)
    built = generate.compiled_stages(pipe, "ort", "ort")
    decodes = []

    def counted(*args, **kwargs):
        decodes.append(1)
        return built.vae_decode(*args, **kwargs)

    def rebuilt(*_args, **_kwargs):
        pytest.fail("a query built its own stages")

    monkeypatch.setattr(generate, "compiled_stages", rebuilt)
    base = GenerateSpec(prompt="", frames=5, height=16, width=16, schedule=Schedule(steps=1, guidance=1.0))
    spec = LoadgenSpec(samples=3, min_query_count=3, max_query_count=3, target_latency_ms=200)
    result = run_loadgen(backend, Image.new("RGB", (16, 16)), base, spec, tmp_path / "lg", pipe=pipe,
                         compiled=dataclasses.replace(built, vae_decode=counted))
    assert result["queries_run"] == len(decodes) == 3
