"""Export spine: ONNX parity against eager on two shapes in both LoRA modes, manifest contents, TensorRT-RTX
parsing, model sources, SVD re-rank, and every bad input of issue 2 (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from wanrt.artifacts import sha256_file
from wanrt.commands.main import cli
from wanrt.errors import LoraError, ModelSourceError
from wanrt.export.api import LoraSpec, export_model, resolve_lora
from wanrt.export.lora import (TARGET_GROUPS, apply_lora, dense_reference, rerank, resolve_targets, synthetic_lora)
from wanrt.export.model import ModelSpec, load_transformer
from wanrt.export.onnx_export import ExportSpec
from wanrt.dit_io import VideoShape
from wanrt.engines.trt.acceptance import tensorrt_acceptance
from wanrt.export.presets import PRESETS

RANK = 4
FP32_TOL = 1e-4  # max |ort - torch| / max |torch|
TIERS = ["names", "axes", "shapes", "values"]  # a manifest records validation only when every tier passed


def _forward(model, inputs):
    with torch.inference_mode():
        return model(hidden_states=inputs["latents"], timestep=inputs["timestep"],
                     encoder_hidden_states=inputs["text"], encoder_hidden_states_image=inputs["image"],
                     return_dict=False)[0].float()


def _inputs(batch: int, shape: VideoShape, seed: int):
    g = torch.Generator().manual_seed(seed)
    f, h, w = shape.latent
    return {"latents": torch.randn(batch, 36, f, h, w, generator=g), "timestep": torch.rand(batch, generator=g) * 1000,
            "text": torch.randn(batch, 512, 32, generator=g), "image": torch.randn(batch, 257, 16, generator=g)}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for mode in ("merged", "separate"):
        out[mode] = root / mode
        export_model(ModelSpec("tiny"), LoraSpec(rank=RANK, mode=mode), ExportSpec(), out[mode], progress=False,
                     acceptance=tensorrt_acceptance)
    return out


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("mode", ["merged", "separate"])
def test_onnx_matches_eager_on_two_shapes(exports, mode):
    import onnxruntime as ort

    base = load_transformer(ModelSpec("tiny"))
    model = apply_lora(load_transformer(ModelSpec("tiny")), synthetic_lora(base, RANK, "all"), mode)
    session = ort.InferenceSession(str(exports[mode] / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, shape, seed in [(1, VideoShape(5, 32, 32), 10), (2, VideoShape(9, 48, 80), 11)]:
        inputs = _inputs(batch, shape, seed)
        ref = _forward(model, inputs)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        assert got.shape == tuple(ref.shape) == (batch, 16, *shape.latent)
        rel = np.abs(got - ref.numpy()).max() / np.abs(ref.numpy()).max()
        assert rel < FP32_TOL, (mode, shape, rel)
        # the LoRA must be in the graph: the base model's output is far from it
        base_rel = (ref - _forward(base, inputs)).abs().max() / ref.abs().max()
        assert base_rel > 100 * FP32_TOL


def test_merged_separate_full_agree_in_eager(tiny_model):
    lora = synthetic_lora(tiny_model, RANK, "all")
    inputs = _inputs(1, VideoShape(5, 32, 32), 3)
    merged = _forward(apply_lora(load_transformer(ModelSpec("tiny")), lora, "merged"), inputs)
    separate = _forward(apply_lora(load_transformer(ModelSpec("tiny")), lora, "separate"), inputs)
    assert (merged - separate).abs().max() < 1e-5
    # full mode with the LoRA's own product as dense delta (file LoRAs) is the same function
    exact = dense_reference(type(lora)(lora.modules, source={"kind": "file"}))
    full = _forward(apply_lora(load_transformer(ModelSpec("tiny")), exact, "full"), inputs)
    assert (full - merged).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------ manifest
@pytest.mark.parametrize("mode", ["merged", "separate"])
def test_manifest_contents(exports, mode):
    d = exports[mode]
    m = json.loads((d / "manifest.json").read_text())
    p = m["payload"]
    assert m["kind"] == "onnx" and m["schema"] == 1
    assert p["sha256"] == sha256_file(d / "model.onnx")
    assert m["specs"]["model"]["source"] == "tiny" and m["specs"]["export"]["opset"] == 23
    assert {"torch", "onnx", "onnxruntime", "diffusers"} <= set(m["versions"])
    assert [i["name"] for i in p["inputs"]] == ["latents", "timestep", "text", "image"]
    assert p["dynamic_axes"]["latents"] == [0, 2, 3, 4]
    assert p["shape_ranges"]["latent"] == {"F": [1, 5], "H": [2, 16], "W": [2, 16]}
    lora = p["lora"]
    assert lora["mode"] == mode and lora["rank"] == RANK and lora["targets"] == "all"
    assert lora["modules"] == 24 and lora["parameters"] > 0
    v = p["validation"]
    assert v["tiers"] == TIERS and len(v["checks"]) == 2 and v["max_rel"] < FP32_TOL
    assert all(c["passed"] for c in v["checks"])
    assert {c["batch"] for c in v["checks"]} == {1, 2}
    graph = onnx.load(str(d / "model.onnx"))
    inits = {i.name: tuple(i.dims) for i in graph.graph.initializer}
    if mode == "separate":
        assert lora["flops_per_token"]["video_token"] > 0
        for module, names in lora["initializers"].items():
            assert inits[names["A"]][1] == RANK and inits[names["B"]][0] == RANK, module
            assert module + ".weight" in inits
    else:
        assert lora["flops_per_token"]["video_token"] == 0
        assert set(lora["merged_weights"].values()) <= set(inits)
        assert not any(n.startswith("lora.") for n in inits)


def test_separate_initializers_hold_the_lora(exports, tiny_model):
    """lora.<m>.A is A^T and lora.<m>.B is scale*B^T: what refit will overwrite by name."""
    from onnx import numpy_helper

    lora = synthetic_lora(tiny_model, RANK, "all")
    graph = onnx.load(str(exports["separate"] / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name, module in lora.modules.items():
        np.testing.assert_allclose(inits[f"lora.{name}.A"], module.down.T.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(inits[f"lora.{name}.B"], (module.scale() * module.up).T.numpy(),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["merged", "separate"])
def test_tensorrt_rtx_parses_export(exports, mode):
    recorded = json.loads((exports[mode] / "manifest.json").read_text())["payload"]["trt_parse"]
    fresh = tensorrt_acceptance(exports[mode] / "model.onnx", "rtx")
    assert fresh["parsed"] and fresh["num_errors"] == 0 and fresh["layers"] > 100
    assert recorded["parsed"] and recorded["layers"] == fresh["layers"]


def test_bf16_export_validates_and_keeps_fp32_modules(tmp_path):
    m = export_model(ModelSpec("tiny"), LoraSpec(rank=RANK, mode="separate"), ExportSpec(dtype="bf16"),
                     tmp_path / "bf16", progress=False, acceptance=tensorrt_acceptance)
    v = m["payload"]["validation"]
    assert v["tiers"] == TIERS and "widened" in v["evaluated_as"] and v["max_rel"] < 2e-2
    from onnx import TensorProto

    types = {i.name: i.data_type for i in onnx.load(str(tmp_path / "bf16" / "model.onnx")).graph.initializer}
    assert types["blocks.0.attn1.to_q.weight"] == TensorProto.BFLOAT16
    assert types["lora.blocks.0.attn1.to_q.A"] == TensorProto.BFLOAT16
    assert types["scale_shift_table"] == TensorProto.FLOAT  # _keep_in_fp32_modules
    assert m["payload"]["trt_parse"]["parsed"] in (True, None)


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import wanrt.export.api as api

    def fail(*args, **kwargs):
        Path(args[2]).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "export_onnx", fail)
    with pytest.raises(KeyboardInterrupt):
        export_model(ModelSpec("tiny"), LoraSpec(rank=RANK), ExportSpec(validate=False), tmp_path / "out",
                     progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ model sources
def test_checkpoint_directory_loads_through_the_same_path(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "pipe" / "transformer")
    inputs = _inputs(1, VideoShape(5, 32, 32), 5)
    loaded = load_transformer(ModelSpec(str(tmp_path / "pipe")))
    assert torch.equal(_forward(loaded, inputs), _forward(tiny_model, inputs))
    sliced = load_transformer(ModelSpec(str(tmp_path / "pipe" / "transformer"), layers=1, dtype="bf16"))
    assert len(sliced.blocks) == 1 and sliced.config.num_layers == 1
    assert sliced.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert sliced.scale_shift_table.dtype == torch.float32


def test_offline_hub_id_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelSourceError, match="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers: HF_HUB_OFFLINE=1 and no cached"):
        load_transformer(ModelSpec("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"))


def test_presets_are_data_and_14b_geometry_is_real():
    """The 14B preset, built by diffusers itself (on the meta device: no memory), has Wan2.1 I2V-14B's layers: a
    misspelled config key would silently fall back to diffusers' default and fail here."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        m = WanTransformer3DModel(**PRESETS["wan2.1-i2v-14b"].config)
    block = m.blocks[0]
    assert len(m.blocks) == 40 and tuple(block.attn1.to_q.weight.shape) == (5120, 5120)  # 40 heads x 128
    assert block.ffn.net[0].proj.out_features == 13824 and block.attn2.add_k_proj.in_features == 5120
    assert m.condition_embedder.text_embedder.linear_1.in_features == 4096  # UMT5
    assert m.condition_embedder.image_embedder.ff.net[0].proj.in_features == 1280  # CLIP ViT-H
    assert m.patch_embedding.in_channels == 36 and m.proj_out.out_features == 16 * 2 * 2
    assert VideoShape(81, 480, 832).tokens() == 32760 and VideoShape(81, 720, 1280).tokens() == 75600


# ------------------------------------------------------------------------------------------------ LoRA tools
def test_targets_groups(tiny_model):
    assert len(resolve_targets(tiny_model, "all")) == 2 * len(TARGET_GROUPS["all"]) == 24
    assert resolve_targets(tiny_model, "image-kv") == [f"blocks.{i}.attn2.{p}" for i in range(2)
                                                        for p in ("add_k_proj", "add_v_proj")]
    assert resolve_targets(tiny_model, "blocks.1.ffn.*") == ["blocks.1.ffn.net.0.proj", "blocks.1.ffn.net.2"]
    with pytest.raises(LoraError, match="matches no Linear"):
        resolve_targets(tiny_model, "blocks.*.attn3.to_q")


def test_synthetic_lora_is_seeded_and_sized(tiny_model):
    a, b = synthetic_lora(tiny_model, 8, "cross-attn", seed=3), synthetic_lora(tiny_model, 8, "cross-attn", seed=3)
    assert all(torch.equal(a.modules[n].down, b.modules[n].down) for n in a.modules)
    for name in a.modules:
        w = tiny_model.get_submodule(name).weight
        assert abs(a.delta(name).norm() / w.norm() - 0.05) < 1e-4
    with pytest.raises(LoraError, match="exceeds"):
        synthetic_lora(tiny_model, 25, "all")


def test_svd_rerank_full_rank_exact_and_energy_monotonic(tiny_model):
    lora = synthetic_lora(tiny_model, 8, "all", seed=1)
    same, energy = rerank(lora, 8)
    for n in lora.modules:
        assert torch.allclose(same.delta(n), lora.delta(n), atol=1e-6)
        assert energy[n] == pytest.approx(1.0)
    previous = {n: 1.0 for n in lora.modules}
    for r in (6, 4, 2, 1):
        lower, e = rerank(lora, r)
        for n in lower.modules:
            s = torch.linalg.svdvals(lora.delta(n).double())
            assert e[n] == pytest.approx(float((s[:r] ** 2).sum() / (s**2).sum()), rel=1e-6)
            assert e[n] <= previous[n] + 1e-12
            assert torch.linalg.matrix_rank(lower.delta(n)) <= r
            previous[n] = e[n]
    with pytest.raises(LoraError, match="only truncates"):
        rerank(lora, 9)


def test_file_lora_reranked_through_export_spec(tmp_path, tiny_model):
    from wanrt.export.lora_formats import save_lora_file

    path = save_lora_file(synthetic_lora(tiny_model, 8, "ffn"), tmp_path / "l.safetensors", "comfyui")
    lora, energy = resolve_lora(tiny_model, LoraSpec(file=str(path), rank=2))
    assert lora.rank == 2 and len(energy) == 4 and all(0 < e < 1 for e in energy.values())


# ------------------------------------------------------------------------------------------------ bad input
def _run(args, tmp_path):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    return result.exit_code, lines


BAD_INPUTS = {
    "missing LoRA file": (["--lora", "{tmp}/nope.safetensors"], "not found"),
    "pickle LoRA": (["--lora", "{tmp}/lora.ckpt"], "pickle"),
    "truncated LoRA": (["--lora", "{tmp}/trunc.safetensors"], "truncated or corrupt"),
    "keys match nothing": (["--lora", "{tmp}/alien.safetensors"], "match"),
    "shape mismatch": (["--lora", "{tmp}/wide.safetensors"], "blocks.0.attn1.to_q"),
    "NaN weights": (["--lora", "{tmp}/nan.safetensors"], "NaN"),
    "rank zero": (["--rank", "0"], "positive"),
    "rank above dims": (["--rank", "64"], "exceeds"),
    "frames not 4k+1": (["--rank", "4", "--max-shape", "8x64x64"], "4k+1"),
    "size not multiple of 16": (["--rank", "4", "--max-shape", "9x40x64"], "multiple of 16"),
    "range past the RoPE table": (["--rank", "4", "--max-shape", "81x480x832"], "rope_max_seq_len"),
    "unknown model": (["--model", "nope", "--rank", "4"], "not a preset"),
    "targets match nothing": (["--rank", "4", "--targets", "blocks.*.attn9.*"], "matches no Linear"),
}


@pytest.fixture
def bad_files(tmp_path, tiny_model):
    from safetensors.torch import save_file

    from wanrt.export.lora_formats import save_lora_file

    good = save_lora_file(synthetic_lora(tiny_model, 4, "self-attn"), tmp_path / "good.safetensors", "diffusers")
    (tmp_path / "lora.ckpt").write_bytes(b"\x80\x04not really")
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"unet.down.0.lora_A.weight": torch.zeros(4, 8), "unet.down.0.lora_B.weight": torch.zeros(8, 4)},
              str(tmp_path / "alien.safetensors"))
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 99),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 4)}, str(tmp_path / "wide.safetensors"))
    nan = torch.zeros(4, 24)
    nan[0, 0] = float("nan")
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": nan,
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 4)}, str(tmp_path / "nan.safetensors"))
    return tmp_path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_written(case, bad_files):
    args, fragment = BAD_INPUTS[case]
    out = bad_files / "out"
    code, lines = _run(["export", *[a.format(tmp=bad_files) for a in args], "-o", str(out)], bad_files)
    assert code == 2, (case, lines)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert fragment.format(tmp=bad_files) in lines[0], lines
    assert not out.exists()
    assert not [p for p in bad_files.iterdir() if p.name.startswith(".out")]


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    code, lines = _run(["export", "--rank", "4", "-o", str(tmp_path / "out")], tmp_path)
    assert code == 2 and "--force" in lines[0]


def test_rank_list_exports_side_by_side(tmp_path):
    code, _ = _run(["export", "--rank", "2,4", "--targets", "cross-attn", "--lora-mode", "separate", "--no-validate",
                    "-o", str(tmp_path / "study")], tmp_path)
    assert code == 0
    for r in (2, 4):
        m = json.loads((tmp_path / "study" / f"r{r}" / "manifest.json").read_text())
        assert m["payload"]["lora"]["rank"] == r and m["payload"]["validation"]["skipped"]


def test_bf16_preset_is_the_fp32_preset_cast():
    """Presets are built block by block in the target dtype (memory); the weights must not change."""
    from wanrt.export.model import cast_keep_fp32

    direct = load_transformer(ModelSpec("tiny", dtype="bf16")).state_dict()
    cast = cast_keep_fp32(load_transformer(ModelSpec("tiny")), torch.bfloat16).state_dict()
    assert direct.keys() == cast.keys()
    for k in direct:
        assert direct[k].dtype == cast[k].dtype and torch.equal(direct[k], cast[k]), k


def test_t2v_checkpoint_exports_without_image_input(tmp_path):
    """Wan2.1 T2V (1.3B-style: no image branch, 16 input channels) loads and exports through the same path."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    t2v = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    t2v.save_pretrained(tmp_path / "t2v")
    m = export_model(ModelSpec(str(tmp_path / "t2v")), LoraSpec(rank=2, targets="cross-attn", mode="separate"),
                     ExportSpec(min_shape=VideoShape(1, 16, 16), max_shape=VideoShape(9, 64, 64)),
                     tmp_path / "out", progress=False)
    assert [i["name"] for i in m["payload"]["inputs"]] == ["latents", "timestep", "text"]
    assert m["payload"]["inputs"][0]["shape"][1] == 16
    assert m["payload"]["validation"]["tiers"] == TIERS
    with pytest.raises(LoraError, match="matches no Linear"):
        resolve_lora(t2v, LoraSpec(rank=2, targets="image-kv"))


def test_external_data_is_one_file_beside_the_graph(tmp_path):
    import onnxruntime as ort

    m = export_model(ModelSpec("tiny"), LoraSpec(rank=RANK, mode="separate"), ExportSpec(external_data=True),
                     tmp_path / "ext", progress=False)
    files = sorted(p.name for p in (tmp_path / "ext").iterdir())
    assert files == ["manifest.json", "model.onnx", "model.onnx.data"]
    assert m["payload"]["external_data"] == "model.onnx.data"
    header = onnx.load(str(tmp_path / "ext" / "model.onnx"), load_external_data=False)
    location = {i.name: i.data_location for i in header.graph.initializer}
    assert location["blocks.0.attn1.to_q.weight"] == onnx.TensorProto.EXTERNAL
    assert location["lora.blocks.0.attn1.to_q.A"] == onnx.TensorProto.EXTERNAL
    ort.InferenceSession(str(tmp_path / "ext" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert m["payload"]["validation"]["tiers"] == TIERS


def test_validation_tiers_raise_typed_errors(exports, tmp_path):
    """A graph whose names, or whose values, differ from PyTorch fails in the right tier."""
    from wanrt.errors import NamesMismatch, ValuesMismatch
    from wanrt.export.model import model_geometry
    from wanrt.dit_io import DitIO, ShapeRange
    from wanrt.export.validate import reference_outputs, validate_onnx

    preset = PRESETS["tiny"]
    base = load_transformer(ModelSpec("tiny"))
    config = DitIO(model_geometry(base), torch.float32, ShapeRange(preset.min_shape, preset.max_shape))
    # the merged export against the base model's outputs: same I/O, different function
    refs = reference_outputs(base, config, [(1, VideoShape(5, 32, 32))])
    with pytest.raises(ValuesMismatch, match="max relative error"):
        validate_onnx(exports["merged"] / "model.onnx", config, refs, "fp32")
    graph = onnx.load(str(exports["merged"] / "model.onnx"))
    graph.graph.input[2].name = "encoder_hidden_states"
    onnx.save(graph, str(tmp_path / "renamed.onnx"))
    with pytest.raises(NamesMismatch, match="encoder_hidden_states"):
        validate_onnx(tmp_path / "renamed.onnx", config, refs, "fp32")
