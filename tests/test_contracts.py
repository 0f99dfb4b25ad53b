"""The core contracts (wanrt/dit_io.py and its torch-free half wanrt/io_contract.py, wanrt/lora_layout.py,
wanrt/choices.py) against independent references: the LoRA arithmetic against a plain matmul, the inputs against
their declared shapes, the choices against the CLI."""

from __future__ import annotations

import pytest
import torch

from wanrt import lora_layout
from wanrt.choices import Dtype, LoraMode, Precision
from wanrt.runtime.backend_names import Backend
from wanrt.dit_io import DitIO, ShapeRange, VideoShape, check_latent_range, check_video_shape, parse_video_shape
from wanrt.errors import BadInputError, LoraError
from wanrt.io_contract import pixel_range
from wanrt.export.lora import LoraLinear, LoraModule
from wanrt.export.presets import PRESETS

TINY = PRESETS["tiny"].config


def test_dummy_inputs_follow_the_declared_shapes_and_are_seeded():
    io = DitIO(TINY, torch.float16, ShapeRange(VideoShape(1, 16, 16), VideoShape(17, 128, 128)))
    shape = VideoShape(5, 32, 48)
    a = io.dummy_inputs(2, shape, seed=3, uncond=True)
    b = io.dummy_inputs(2, shape, seed=3, uncond=True)
    declared = io.input_shapes(2, shape)
    assert list(a) == ["latents", "timestep", "text", "text_uncond", "image"]
    for name, t in a.items():
        assert tuple(t.shape) == declared["text" if name == "text_uncond" else name], name
        assert t.dtype == io.input_dtype("text" if name == "text_uncond" else name), name
        assert torch.equal(t, b[name]), name
    assert a["timestep"].dtype == torch.float32 and ((0 < a["timestep"]) & (a["timestep"] < 1000)).all()
    assert not torch.equal(a["text"], a["text_uncond"])
    assert (io.dummy_inputs(1, shape, timestep=757.0)["timestep"] == 757.0).all()
    cond, uncond = io.cfg_feeds(a)
    assert cond[2] is a["text"] and uncond[2] is a["text_uncond"] and cond[0] is uncond[0]


def test_contract_from_an_existing_graph_and_t2v():
    io = DitIO.from_graph_inputs({"latents": (-1, 36, -1, -1, -1), "timestep": (-1,), "text": (-1, 512, 32),
                                  "image": (-1, 257, 16)})
    assert io.has_image and io.latent_input_shapes(1, (2, 4, 4))["image"] == (1, 257, 16)
    t2v = DitIO({"in_channels": 16, "text_dim": 32, "image_dim": None})
    assert t2v.input_names == ("latents", "timestep", "text")
    assert "image" not in t2v.dummy_inputs(1, VideoShape(1, 16, 16))


def test_shape_checks_speak_the_users_units():
    assert check_video_shape(81, 480, 832).tokens() == 32760
    with pytest.raises(BadInputError, match="4k\\+1"):
        check_video_shape(8, 32, 32)
    with pytest.raises(BadInputError, match="FRAMESxHEIGHTxWIDTH"):
        parse_video_shape("5x32", "--shape")
    ranges = ShapeRange(VideoShape(1, 16, 16), VideoShape(17, 128, 128)).latent
    check_latent_range(VideoShape(17, 128, 16), ranges)
    with pytest.raises(BadInputError, match="height 256 is outside the artifact's range 16..128 pixels"):
        check_latent_range(VideoShape(5, 256, 32), ranges)
    check_latent_range(VideoShape(81, 720, 1280), None)  # eager: nothing exported, nothing to check


@pytest.mark.parametrize("frames,height,width,param", [
    (8, 32, 32, "frames"), (5, 24, 32, "height"), (5, 32, 0, "width"),  # the VAE/patch grid
    (21, 32, 32, "frames"), (5, 256, 32, "height"), (5, 32, 144, "width"),  # outside the exported 1..17 x 16..128
])
def test_shape_refusals_carry_the_axis_as_param(frames, height, width, param):
    """Callers (the serving API's error.param) read the axis from the error, never from its text."""
    ranges = ShapeRange(VideoShape(1, 16, 16), VideoShape(17, 128, 128)).latent
    with pytest.raises(BadInputError) as e:
        check_latent_range(check_video_shape(frames, height, width), ranges)
    assert e.value.param == param and f"{param} " in str(e.value)


def test_latent_and_pixel_grids_are_inverse_and_torch_free():
    import subprocess
    import sys

    for shape in (VideoShape(1, 16, 16), VideoShape(81, 480, 832), VideoShape(17, 128, 64)):
        assert VideoShape.from_latent(shape.latent) == shape
    assert pixel_range({"F": (1, 5), "H": (2, 16), "W": (4, 8)}) == {"frames": (1, 17), "height": (16, 128),
                                                                     "width": (32, 64)}
    code = "import sys, wanrt.io_contract, wanrt.runtime.serving.requests; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def _module(rank=3, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LoraModule(down=torch.randn(rank, 8, generator=g), up=torch.randn(6, rank, generator=g), alpha=2.0,
                      diff_b=torch.randn(6, generator=g) if bias else None)


def test_branch_layout_is_the_lora_function_and_pads_exactly():
    m, scale = _module(), 0.7
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = x @ (m.scale(scale) * m.up.double() @ m.down.double()).T + scale * m.diff_b.double()
    for rank in (None, 5):  # own rank, and zero-padded to a larger branch: the same function
        w = lora_layout.branch_weights(m, scale, torch.float64, rank=rank)
        assert w["A"].shape == (8, rank or 3) and w["B"].shape == (rank or 3, 6)
        # s·Bᵀ is computed in fp32 and cast once (the layout's rule): fp32 rounding, not float64's 1e-7
        torch.testing.assert_close((x @ w["A"]) @ w["B"] + w["bias"], expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        lora_layout.branch_weights(m, scale, torch.float32, rank=2)
    no_bias = lora_layout.branch_weights(_module(bias=False), 1.0, torch.float32, with_bias=True)
    assert torch.equal(no_bias["bias"], torch.zeros(6))
    # LoraLinear stores exactly the layout's tensors (what ONNX export and refit name and rewrite)
    layer = LoraLinear(torch.nn.Linear(8, 6), m, scale)
    w = lora_layout.branch_weights(m, scale, torch.float32)
    assert torch.equal(layer.lora_A, w["A"]) and torch.equal(layer.lora_B, w["B"])
    assert torch.equal(layer.lora_bias, w["bias"])


def test_merged_layout_and_names_both_ways():
    m, base = _module(), torch.randn(6, 8, dtype=torch.bfloat16)
    merged = lora_layout.merged_weight(base, m.delta(0.5))
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, (base.float() + 0.5 * m.alpha / m.rank * m.up @ m.down).to(torch.bfloat16))
    assert torch.equal(lora_layout.merged_bias(None, m, 0.5, 6, torch.float32), 0.5 * m.diff_b)
    name = lora_layout.initializer_name_of_parameter("blocks.0.attn2.to_k.lora_B")
    assert name == "lora.blocks.0.attn2.to_k.B"
    assert lora_layout.parse_initializer_name(name) == ("blocks.0.attn2.to_k", "B")
    assert lora_layout.initializer_name_of_parameter("blocks.0.attn2.to_k.weight") == "blocks.0.attn2.to_k.weight"
    assert lora_layout.parse_initializer_name("blocks.0.attn2.to_k.weight") is None
    assert lora_layout.initializer_names("m", has_bias=False) == {"A": "lora.m.A", "B": "lora.m.B"}
    assert lora_layout.token_stream("blocks.3.attn2.add_v_proj") == "image"
    assert lora_layout.branch_flops_per_token(8, 6, 3, bias=True) == 2 * 3 * (8 + 6) + 6


def test_choices_parse_and_feed_the_cli():
    assert Dtype.parse("bf16", "--dtype") is Dtype.BF16 and Dtype.BF16 == "bf16" and f"{Dtype.BF16}" == "bf16"
    assert Precision.values()[:4] == (*Dtype.values(), "fp8")  # every dtype, then the quantized formats
    with pytest.raises(BadInputError, match="^--lora-mode 'fused': choose one of merged, separate, full$"):
        LoraMode.parse("fused", "--lora-mode")
    with pytest.raises(LoraError):
        LoraMode.parse("fused", "--lora-mode", LoraError)
    from click.testing import CliRunner

    from wanrt.commands.main import cli

    res = CliRunner().invoke(cli, ["generate", "--backend", "tensorflow", "--image", "x.png"])
    assert res.exit_code == 2 and all(b in res.output for b in Backend.values())
