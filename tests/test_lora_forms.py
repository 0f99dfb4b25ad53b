"""Graph forms of the separate LoRA branch (issue 20): a rewritten OpenVINO engine computes what the plain one does
(fp32, 1e-5 relative), keeps the swap layout, and a swap on it equals a fresh build of the new LoRA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from wanrt.engines import registry
from wanrt.engines.lora_swap import shared_a_onnx
from wanrt.engines.openvino.engine import (OvEngine, OvEngineSpec, build_openvino_engine, compile_properties,
                                           device_capabilities, read_with_lora_inputs)
from wanrt.engines.openvino.lora_form import bf16_bits, narrow_lora_inputs
from wanrt.errors import BadInputError, WanrtError
from wanrt.export.lora import synthetic_lora
from wanrt.export.model import ModelSpec
from wanrt.export.presets import PRESETS
from wanrt.runtime.backends import OrtBackend, build_transformer
from wanrt.tools import cpu_cost_model as cm
from wanrt.tools.bench_lora_forms import main as bench_lora_forms, runs_spread, trends

TOL = 1e-5  # fp32: the same sums in another order


def _rel(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_separate_exports):
    root = tmp_path_factory.mktemp("forms")
    exports = tiny_separate_exports
    model = build_transformer(ModelSpec("tiny"))[0]
    feeds = exports["feeds"]
    plain = build_openvino_engine(exports["sep"], OvEngineSpec(cache=False), root / "plain")
    return {"root": root, "exports": exports, "feeds": feeds, "model": model, "plain": plain,
            "want": OvEngine(root / "plain").infer(feeds)}


def test_shared_a_equals_plain_and_swaps_like_a_fresh_build(art):
    root, exports, feeds = art["root"], art["exports"], art["feeds"]
    spec = OvEngineSpec(lora_form="shared-a", cache=False)
    manifest = build_openvino_engine(exports["sep"], spec, root / "shared")
    report = manifest.section("lora_form")
    # tiny has 2 blocks: each block's attn1 q/k/v share its video tokens; attn2 k/v of every block read the same
    # text tensor, and add_k/add_v of every block the same image tensor (one GEMM across blocks)
    assert report["form"] == "shared-a" and report["a_matmuls_removed"] == 2 * 2 + 3 + 3
    assert sorted(map(len, report["groups"])) == [3, 3, 4, 4]
    assert manifest.specs["engine"]["lora_form"] == "shared-a"
    assert manifest.cache_key != art["plain"].cache_key
    assert manifest.lora["refittable_weights"] == art["plain"].lora["refittable_weights"]  # the swap layout
    engine = OvEngine(root / "shared")
    assert _rel(engine.infer(feeds), art["want"]) <= TOL
    # a swap on the rewritten engine equals a fresh (plain) build of the new LoRA's export
    engine.set_lora(synthetic_lora(art["model"], 4, seed=5))
    build_openvino_engine(exports["fresh"], OvEngineSpec(cache=False), root / "fresh-plain")
    fresh = OvEngine(root / "fresh-plain").infer(feeds)
    assert _rel(engine.infer(feeds), fresh) <= TOL and _rel(fresh, art["want"]) > 1e-3  # the swap changed it


def test_ort_shared_a_session_equals_plain_and_swaps_like_a_fresh_export(art):
    exports, feeds = art["exports"], art["feeds"]
    args = [torch.from_numpy(feeds[k]) for k in ("latents", "timestep", "text", "image")]
    plain = OrtBackend(exports["sep"], threads=1)(*args).numpy()
    proto = onnx.load(str(exports["sep"] / "model.onnx"), load_external_data=False)
    assert shared_a_onnx(proto) == 2 * 2 + 3 + 3  # the same groups as OpenVINO's rewrite
    onnx.checker.check_model(proto)
    shared = OrtBackend(exports["sep"], threads=1, lora_form="shared-a")
    assert _rel(shared(*args).numpy(), plain) <= TOL
    shared.set_lora(synthetic_lora(art["model"], 4, seed=5))
    fresh = OrtBackend(exports["fresh"], threads=1)(*args).numpy()
    assert _rel(shared(*args).numpy(), fresh) <= TOL


def test_plain_keeps_its_cache_key_and_an_unknown_form_is_refused(art):
    assert "lora_form" not in OvEngineSpec().key_fields()  # engines built before the forms keep their key
    assert art["plain"].section("lora_form") == {"form": "plain", "groups": [], "lora_inputs": "f32"}
    with pytest.raises(BadInputError, match="--lora-form fused"):
        build_openvino_engine(art["exports"]["sep"], OvEngineSpec(lora_form="fused", cache=False),
                              art["root"] / "bad")
    assert not (art["root"] / "bad").exists()


def test_bf16_bits_round_to_nearest_even():
    """Against the bit arithmetic of round-to-nearest-even (what OpenVINO's own fp32 -> bf16 conversion does)."""
    values = np.concatenate([np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 1e-2,
                             np.array([0.0, -0.0, 1.0, -2.5, 1e-30, 3e38, 1.00390625, 1.01171875], np.float32)])
    bits = values.view(np.uint32)
    want = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(bf16_bits(values), want)  # ties (1.00390625, 1.01171875) go to the even neighbour


def test_narrowed_lora_inputs_compute_the_rounded_factors_exactly(art):
    """The bf16 inputs of a bf16 engine (lora_form.narrow_lora_inputs), checked on any CPU: compiled at f32, the
    narrowed graph fed bf16 bits equals the plain graph fed the same factors rounded to bf16 by torch."""
    import openvino as ov

    exports, feeds = art["exports"], art["feeds"]
    names = list(art["plain"].lora["refittable_weights"])
    core, runs = ov.Core(), {}
    for narrow in (False, True):
        model, defaults = read_with_lora_inputs(core, exports["sep"] / "model.onnx", names)
        assert narrow_lora_inputs(model, "bf16" if narrow else "fp32", ["BF16"]) == ("bf16" if narrow else "f32")
        request = core.compile_model(model, "CPU", compile_properties("fp32", 1)).create_infer_request()
        held = {n: bf16_bits(v) if narrow else torch.from_numpy(v).to(torch.bfloat16).float().numpy()
                for n, v in defaults.items()}  # the bf16 tensor shares this memory: keep it alive
        for name, value in held.items():
            request.set_tensor(name, ov.Tensor(value, value.shape, ov.Type.bf16) if narrow else ov.Tensor(value))
        runs[narrow] = request.infer({k: v for k, v in feeds.items()})[0]
    assert _rel(runs[True], runs[False]) <= 1e-6


def test_a_bf16_compile_takes_its_lora_factors_in_bf16(art):
    """int8 runs its branch in bf16 where the CPU has BF16 (compile_properties), f32 elsewhere: the factors' input
    type follows, and the engine still equals the fp32 plain engine within the int8 gate."""
    import openvino as ov

    built = build_openvino_engine(art["exports"]["sep"], OvEngineSpec(precision="int8", cache=False),
                                  art["root"] / "int8")
    has_bf16 = "BF16" in device_capabilities(ov.Core(), "CPU")
    assert built.section("lora_form")["lora_inputs"] == ("bf16" if has_bf16 else "f32")
    engine = OvEngine(art["root"] / "int8")
    types = {i.get_any_name(): i.get_element_type() for i in engine.compiled.inputs}
    assert {types[n] for n in engine.lora_names} == {ov.Type.bf16 if has_bf16 else ov.Type.f32}
    assert _rel(engine.infer(art["feeds"]), art["want"]) <= 5e-2


def test_cost_model_shared_a_same_flops_fewer_bytes():
    config = dict(PRESETS["wan2.1-i2v-14b"].config)
    plain, shared = (cm.predict(cm.forward_ops(config, 32760, 2, "bf16", 16, "separate", f), 989e12, 3.35e12)
                     for f in ("plain", "shared-a"))
    assert shared["flops"] == pytest.approx(plain["flops"], rel=1e-12)
    # x is read once per shared group: 40 blocks x 2 extra reads of [L, 5120] bf16, plus the cross-block text/image
    saved = plain["bytes"] - shared["bytes"]
    assert saved >= 40 * 2 * (2 * 32760) * 5120 * 2
    rows = cm.form_predictions(config, 32760)
    assert {r["label"] for r in rows} == {"PREDICTION"} and len(rows) == 2 * 2 * 2


def test_build_option_reaches_the_spec_and_the_dry_run(art):
    flavour = registry.get("openvino")
    spec = flavour.spec({"precision": "fp32", "lora_form": "shared-a", "no_cache": True})
    assert spec.lora_form == "shared-a" and flavour.spec({"precision": "fp32"}).lora_form == "plain"
    assert ("LoRA form", "shared-a") in flavour.dry_run(art["exports"]["sep"], spec)


def test_token_trend_is_a_line_and_needs_two_token_counts():
    """tools/bench_lora_forms' trend: the branch's extra ms and merged's ms as lines in tokens (exact through two
    points), their slope ratio the per-token share; a one-shape run has no line to fit (it once divided by zero)."""
    rows = [{"tokens": t, "median_ms": {"merged": 5 + 0.1 * t, "plain": 5 + 0.1 * t + 1 + 0.004 * t,
                                        "shared-a": 5 + 0.1 * t + 2 + 0.002 * t}} for t in (500, 1500)]
    fitted = trends(rows)
    assert fitted["plain"]["per_token_share"] == pytest.approx(0.04)
    assert fitted["shared-a"]["extra_ms"] == pytest.approx((2.0, 0.002))
    at = fitted["plain"]["at_tokens"]
    assert fitted["plain"]["extrapolated_overhead"] == pytest.approx((1 + 0.004 * at) / (5 + 0.1 * at))
    assert trends(rows[:1]) == {}


def test_graph_look_refuses_a_target_group_it_would_ignore(capsys):
    """--graph-look compiles the LoRA on every target; with --lora-targets it exits 2 in one line instead."""
    with pytest.raises(SystemExit) as e:
        bench_lora_forms(["--graph-look", "--lora-targets", "cross-attn"])
    assert e.value.code == 2
    assert "--graph-look looks at the LoRA on every target" in capsys.readouterr().err


def test_runs_spread_is_the_t_interval_over_runs_of_each_main_row():
    """--runs N: each form's main-shape overhead per run, the mean's t 95% interval over runs (df 1: t = 12.706);
    a target that one run skipped has no spread; the other shapes' rows do not count."""
    def run(plain, shared, with_ov=True):
        rows = [{"main": False, "flop_share": 0.5, "plain": {"mean_overhead": 9.0}, "shared-a": {"mean_overhead": 9.0}},
                {"main": True, "flop_share": 0.039, "plain": {"mean_overhead": plain},
                 "shared-a": {"mean_overhead": shared}}]
        return {"targets": [{"target": "ort fp32", "rows": rows}] + ([{"target": "ov bf16", "rows": rows}]
                                                                     if with_ov else [])}

    spread = runs_spread([run(0.10, 0.20), run(0.14, 0.22, with_ov=False)])
    assert set(spread) == {"ort fp32"} and spread["ort fp32"]["flop_share"] == 0.039
    plain = spread["ort fp32"]["plain"]
    half = 12.706 * (0.02 * 2 ** 0.5) / 2 ** 0.5  # stdev of (0.10, 0.14) is 0.02 * sqrt(2)
    assert plain["mean"] == pytest.approx(0.12) and plain["values"] == [0.10, 0.14]
    assert plain["ci95"] == pytest.approx([0.12 - half, 0.12 + half])
    assert spread["ort fp32"]["shared-a"]["mean"] == pytest.approx(0.21)


def test_a_failed_run_leaves_no_output_folder(tmp_path):
    """Bad input ends before a result exists, so the -o folder the tool would have made is never created."""
    out = tmp_path / "new"
    with pytest.raises(WanrtError, match="nosuch"):
        bench_lora_forms(["--model", "nosuch", "--targets", "ort fp32", "-o", str(out)])
    assert not out.exists()


def test_render_writes_the_report_and_leaves_the_raw_json_as_it_was(tmp_path):
    """--render: the .md from a committed raw JSON (one written before --lora-targets: "on all targets"); the JSON's
    bytes, its recorded trend and GPU prediction included, are not rewritten."""
    raw = tmp_path / "lora-forms-small.json"
    raw.write_bytes((Path(__file__).parents[1] / "docs/results/lora-forms-small.json").read_bytes())
    before = raw.read_bytes()
    assert bench_lora_forms(["--render", str(raw)]) == 0
    assert raw.read_bytes() == before
    report = (tmp_path / "lora-forms-small.md").read_text()
    assert "rank 16 on all targets" in report and "## ort fp32" in report


def test_targets_the_cpu_cannot_run_are_refused_before_any_work(tmp_path, monkeypatch):
    """On a CPU without BF16 (an AVX2 Zen 2), `--targets "ov bf16"` alone measured nothing and exited 0 with nothing
    written (and a --runs parent then crashed reading the missing file); it is refused in one line instead."""
    import wanrt.tools.bench_lora_forms as tool

    monkeypatch.setattr(tool, "supported_precisions", lambda: {"fp32": None, "bf16": "no BF16 on this CPU"})
    out = tmp_path / "new"
    with pytest.raises(BadInputError, match="--targets ov bf16: none runs on this CPU .ov bf16: no BF16 on this CPU."):
        bench_lora_forms(["--targets", "ov bf16", "-o", str(out)])
    assert not out.exists()
