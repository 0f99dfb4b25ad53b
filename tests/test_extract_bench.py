"""`wanrt bench --reference finetuned`: ranks extracted from a full fine-tune, measured against it."""

from __future__ import annotations

import json

import pytest

from wanrt.errors import BadInputError
from wanrt.export.finetuned import ModuleWeights, SyntheticFinetune, SyntheticWeights, load_finetuned_into
from wanrt.export.model import ModelSpec, load_transformer


@pytest.fixture(scope="module")
def rank3_finetune(tmp_path_factory):
    """A fine-tune whose block Linear deltas are exactly rank 3 (and no norm deltas), saved in diffusers layout."""
    model = load_transformer(ModelSpec("tiny"))
    load_finetuned_into(model, SyntheticWeights(ModuleWeights(model), model,
                                                SyntheticFinetune(rank=3, norm_relative=0.0, seed=5)))
    path = tmp_path_factory.mktemp("ft") / "ft"
    model.save_pretrained(path)
    return path


def test_bench_against_the_finetune_finds_the_rank_that_reproduces_it(rank3_finetune, tmp_path):
    from wanrt.runtime.bench import BenchSpec, run_bench

    spec = BenchSpec(model="tiny", ranks=(1, 3), modes=("merged", "separate", "full"), targets=("all", "cross-attn"),
                     backends=("eager",), repeats=1, warmup=0, retries=0, settle_s=0.0, reference="finetuned",
                     finetuned=str(rank3_finetune))
    out = tmp_path / "bench"
    results = run_bench(spec, out_dir=out, artifacts_dir=tmp_path / "cache")
    runs = {r["point"]: r for r in results["payload"]["runs"]}
    # one full row (the fine-tune is one model), base and the ranks of both target sets
    assert sorted(runs) == sorted(["base", "all/full/full", *(f"{t}/{m}/r{r}" for t in ("all", "cross-attn")
                                                              for m in ("merged", "separate") for r in (1, 3))])
    err = {k: r["quality"]["rel_err_max"] for k, r in runs.items()}
    assert err["all/full/full"] == 0.0  # the fine-tune against itself, same weights, same code
    assert err["all/merged/r3"] < 1e-5 and err["all/separate/r3"] < 1e-5  # exactly rank 3: recovered
    assert err["all/merged/r1"] > 10 * err["all/merged/r3"] and err["base"] > err["all/merged/r1"]
    # cross-attention alone cannot carry the other modules' deltas
    assert err["cross-attn/merged/r3"] > 1e-3
    s = results["payload"]["finetuned"]["summary"]
    assert s["targets"]["all"]["per_backend"]["eager"]["smallest_rank_within_gate"] == 3
    assert s["targets"]["all"]["monotonic"] is True
    assert s["targets"]["cross-attn"]["per_backend"]["eager"]["smallest_rank_within_gate"] is None
    assert runs["all/merged/r3"]["lora"]["retained_energy"] == pytest.approx(1.0, abs=1e-6)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["payload"]["finetuned"]["reference"]["finetuned"]["layout"] == "diffusers"
    assert (out / "pareto.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "## Rank vs the full fine-tune" in report and "pareto.png" in report and "SYNTHETIC" not in report
    # the extracted LoRAs were the run's own: removed with its other artifacts
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_reference_finetuned_needs_a_finetune():
    from wanrt.runtime.bench import BenchSpec, run_bench

    with pytest.raises(BadInputError, match="needs --finetuned"):
        run_bench(BenchSpec(model="tiny", reference="finetuned", repeats=1, warmup=0))
    with pytest.raises(BadInputError, match="--reference finetuned"):
        run_bench(BenchSpec(model="tiny", finetuned="synthetic", modes=("merged",), repeats=1, warmup=0))


def test_eager_reference_times_the_real_finetune_as_the_full_row(rank3_finetune, tmp_path):
    """--reference eager with --finetuned: the `full` row is the fine-tune itself, checked against eager fp32 of the
    same weights like every other row (engine parity of the real fine-tune)."""
    from wanrt.runtime.bench import BenchSpec, run_bench

    spec = BenchSpec(model="tiny", ranks=(2,), modes=("full",), backends=("eager",), include_base=False, repeats=1,
                     warmup=0, retries=0, settle_s=0.0, finetuned=str(rank3_finetune))
    results = run_bench(spec, artifacts_dir=tmp_path / "cache")
    (run,) = results["payload"]["runs"]
    assert run["lora"]["finetuned_parameters_changed"] > 0 and run["quality"]["rel_err_max"] == 0.0
    assert run["quality"]["reference"] == "eager fp32" and isinstance(run["quality"]["rel_err"][0], float)
