"""Graph forms of the separate LoRA branch (issue 20): a rewritten OpenVINO engine computes what the plain one does
(fp32, 1e-5 relative), keeps the swap layout, and a swap on it equals a fresh build of the new LoRA."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from wanrt.engines import registry
from wanrt.engines.lora_swap import shared_a_onnx
from wanrt.engines.openvino.engine import OvEngine, OvEngineSpec, build_openvino_engine
from wanrt.errors import BadInputError
from wanrt.export.lora import synthetic_lora
from wanrt.export.model import ModelSpec
from wanrt.export.presets import PRESETS
from wanrt.runtime.backends import OrtBackend, build_transformer
from wanrt.tools import cpu_cost_model as cm

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
    assert art["plain"].section("lora_form") == {"form": "plain", "groups": []}
    with pytest.raises(BadInputError, match="--lora-form fused"):
        build_openvino_engine(art["exports"]["sep"], OvEngineSpec(lora_form="fused", cache=False),
                              art["root"] / "bad")
    assert not (art["root"] / "bad").exists()


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
