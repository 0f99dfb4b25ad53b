"""W8A8 OpenVINO engines and a LoRA branch beside a quantized base (issue 20).

Gate: the int8 gate of the CPU bench, max |engine - eager fp32| / max |eager fp32| <= 5e-2, for W8A8 and for
weight-only int8, each with a separate rank-4 LoRA branch that stays fp32/bf16 and swappable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wanrt.engines.openvino.engine import OvEngine, OvEngineSpec, build_openvino_engine
from wanrt.export.api import LoraSpec
from wanrt.export.lora import synthetic_lora
from wanrt.export.model import ModelSpec
from wanrt.runtime.backends import build_transformer

INT8_GATE = 5e-2


def _rel(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_separate_exports):
    root = tmp_path_factory.mktemp("w8a8")
    exports = tiny_separate_exports
    return {"root": root, "exports": exports, "inputs": exports["inputs"], "feeds": exports["feeds"]}


def _eager(spec: LoraSpec, inputs) -> np.ndarray:
    model, _ = build_transformer(ModelSpec("tiny"), spec)
    with torch.no_grad():
        return model(hidden_states=inputs["latents"], timestep=inputs["timestep"], encoder_hidden_states=inputs["text"],
                     encoder_hidden_states_image=inputs["image"], return_dict=False)[0].numpy()


@pytest.mark.parametrize("precision", ["w8a8", "int8"])
def test_quantized_base_with_a_swappable_lora_branch(precision, art):
    spec = OvEngineSpec(precision=precision, cache=False)
    out = art["root"] / precision
    manifest = build_openvino_engine(art["exports"]["sep"], spec, out)
    report = manifest.section("precision_report")["int8"]
    assert report["count"] > 0 and all("lora" not in n for n in report["quantized_nodes"])
    engine = OvEngine(out)
    want = _eager(LoraSpec(rank=4, mode="merged"), art["inputs"])  # eager fp32 of the merged model
    assert _rel(engine.infer(art["feeds"]), want) <= INT8_GATE
    # a swap to another LoRA equals a fresh quantized build of that LoRA's export, within the int8 gate
    engine.set_lora(synthetic_lora(build_transformer(ModelSpec("tiny"))[0], 4, seed=5))
    build_openvino_engine(art["exports"]["fresh"], spec, art["root"] / f"{precision}-fresh")
    fresh = OvEngine(art["root"] / f"{precision}-fresh")
    assert _rel(engine.infer(art["feeds"]), fresh.infer(art["feeds"])) <= INT8_GATE
    assert _rel(engine.infer(art["feeds"]), _eager(LoraSpec(rank=4, mode="merged", seed=5), art["inputs"])) <= INT8_GATE


def test_w8a8_records_its_policy_and_calibration(art):
    manifest = build_openvino_engine(art["exports"]["sep"], OvEngineSpec(precision="w8a8", calib=3, cache=False),
                                     art["root"] / "w8a8-c3")
    report = manifest.section("precision_report")["int8"]
    assert report["calibration_samples"] == 3 and report["policy"]["smooth_quant_alpha"] == -1.0
    assert manifest.specs["engine"]["calib"] == 3
