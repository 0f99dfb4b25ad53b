"""Wan2.2's two experts (issue 19): presets and checkpoints with a high- and a low-noise transformer, a LoRA stack
per expert, one artifact holding both, engines per expert, and the pipeline switching at diffusers' boundary.

Tolerance: 1e-4 relative (max abs error / max abs reference), the I/O contract's fp32 tolerance
(wanrt.export.onnx_export.TOLERANCE), between diffusers' eager pipeline and wanrt's engines: the same function
computed by other kernels."""

from __future__ import annotations

import json

import pytest
import torch

from wanrt.errors import BadInputError
from wanrt.export.model import Experts, ModelSpec, load_transformer, model_experts
from wanrt.export.presets import PRESETS

TINY22 = "tiny-wan2.2"


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------------------------------------ 1. presets
def test_two_expert_presets_are_two_seeded_transformers_of_one_geometry():
    high, low = (load_transformer(ModelSpec(TINY22, expert=e)) for e in ("high", "low"))
    assert dict(high.config) == dict(low.config) and not _same_weights(high, low)
    assert _same_weights(high, load_transformer(ModelSpec(TINY22, expert="high")))  # seeded: the same every time
    assert model_experts(ModelSpec(TINY22)) == Experts(("high", "low"), 0.9)
    assert model_experts(ModelSpec("tiny")) == Experts()
    with pytest.raises(BadInputError, match="has two experts"):
        load_transformer(ModelSpec(TINY22))
    with pytest.raises(BadInputError, match="has one transformer"):
        load_transformer(ModelSpec("tiny", expert="low"))


def test_wan22_preset_is_the_real_a14b_geometry():
    """Built by diffusers on the meta device: Wan2.2-I2V-A14B's experts are Wan2.1-14B's blocks with 36 input
    channels and no CLIP image branch (diffusers' conversion config: image_dim and added_kv_proj_dim null)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        m = WanTransformer3DModel(**PRESETS["wan2.2-i2v-a14b"].config)
    assert len(m.blocks) == 40 and tuple(m.blocks[0].attn1.to_q.weight.shape) == (5120, 5120)
    assert m.blocks[0].ffn.net[0].proj.out_features == 13824 and m.config.in_channels == 36
    assert m.condition_embedder.image_embedder is None and m.blocks[0].attn2.add_k_proj is None
    assert PRESETS["wan2.2-i2v-a14b"].experts == ("high", "low") and PRESETS["wan2.2-i2v-a14b"].boundary_ratio == 0.9


def test_a_local_wan22_pipeline_loads_each_expert_from_its_folder(tmp_path):
    pipe = tmp_path / "pipe"
    for expert, folder in (("high", "transformer"), ("low", "transformer_2")):
        load_transformer(ModelSpec(TINY22, expert=expert)).save_pretrained(pipe / folder)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline",
                                                       "boundary_ratio": 0.9}))
    assert model_experts(ModelSpec(str(pipe))) == Experts(("high", "low"), 0.9)
    low = load_transformer(ModelSpec(str(pipe), expert="low", layers=1))
    assert len(low.blocks) == 1
    want = load_transformer(ModelSpec(TINY22, expert="low"))
    assert torch.equal(low.blocks[0].attn1.to_q.weight, want.blocks[0].attn1.to_q.weight)
    with pytest.raises(BadInputError, match="has two experts"):
        load_transformer(ModelSpec(str(pipe)))
    # transformer_2 without a boundary: diffusers runs `transformer` alone, and so does wanrt
    (pipe / "model_index.json").write_text(json.dumps({"boundary_ratio": None}))
    assert model_experts(ModelSpec(str(pipe))) == Experts()
