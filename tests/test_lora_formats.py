"""LoRA file formats: every format loads to the same deltas as the peft adapter it was written from; bad files fail
with one clear LoraError."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from wanrt.errors import LoraError
from wanrt.export.lora import LoraLinear, LoraModule, LoraWeights, apply_lora, dense_reference
from wanrt.export.lora_formats import load_lora_file, lora_state_dict, save_lora_file
from wanrt.export.model import ModelSpec, load_transformer
from wanrt.export.presets import PRESETS


RANK, ALPHA = 4, 8
BLOCK_TARGETS = (r"blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0|add_k_proj|"
                 r"add_v_proj)|ffn\.net\.(0\.proj|2))")
T2V_TARGETS = (r"blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0)|"
               r"ffn\.net\.(0\.proj|2))")
DELTA_TOL = 1e-6
OUTPUT_TOL = 1e-5  # fp32 forward of the tiny model: merged / separate / peft eager


def _peft_model(targets=BLOCK_TARGETS, lora_bias=False, seed=0, wrap=False):
    """The tiny transformer with a peft adapter of random non-zero A and B (and lora_B bias)."""
    model = load_transformer(ModelSpec("tiny"))
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, lora_bias=lora_bias)
    model = peft.get_peft_model(model, cfg) if wrap else peft.inject_adapter_in_model(cfg, model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoraLayer):
                layer.lora_A["default"].weight.copy_(torch.randn(layer.lora_A["default"].weight.shape, generator=gen))
                layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=gen)
                                                     * 0.1)
                if lora_bias:
                    layer.lora_B["default"].bias.copy_(torch.randn(layer.lora_B["default"].bias.shape, generator=gen))
    return model, cfg


def _peft_deltas(model):
    prefix = "base_model.model."
    return {n.removeprefix(prefix): m.get_delta_weight("default") for n, m in model.named_modules()
            if isinstance(m, LoraLayer)}


def _peft_state_dict(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about 1-D lora_B.bias tensors (ZeRO-3 heuristic)
        return peft.get_peft_model_state_dict(model)


def _write_diffusers(model, cfg, path):
    """What diffusers' save_lora_adapter writes: `transformer.` keys + the peft config as metadata."""
    sd = {f"transformer.{k}": v.contiguous() for k, v in _peft_state_dict(model).items()}
    meta = json.dumps(cfg.to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o))
    save_file(sd, str(path), metadata={"format": "pt", "lora_adapter_metadata": meta})
    return path


def _inputs(model, seed=0):
    c = model.config
    f, h, w = PRESETS["tiny"].default_shape.latent
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, c.in_channels, f, h, w, generator=gen),
                timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 512, c.text_dim, generator=gen),
                encoder_hidden_states_image=torch.randn(1, 257, c.image_dim, generator=gen),
                return_dict=False)


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def _assert_deltas(lora, expected):
    assert set(lora.modules) == set(expected)
    for name, want in expected.items():
        got = lora.delta(name)
        assert (got - want).abs().max().item() <= DELTA_TOL, name


@pytest.fixture(scope="module")
def adapter():
    model, cfg = _peft_model()
    return model, cfg, _peft_deltas(model)


@pytest.fixture(scope="module")
def diffusers_file(adapter, tmp_path_factory):
    model, cfg, _ = adapter
    return _write_diffusers(model, cfg, tmp_path_factory.mktemp("lora") / "pytorch_lora_weights.safetensors")


# ------------------------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("fmt", ["diffusers", "peft", "comfyui", "comfyui-updown", "kohya", "diffusers-rewritten"])
def test_every_format_gives_the_peft_deltas(fmt, adapter, diffusers_file, tiny_model, tmp_path):
    model, cfg, deltas = adapter
    if fmt == "diffusers":
        path = diffusers_file
    elif fmt == "peft":  # peft's own writer: adapter_model.safetensors + adapter_config.json
        wrapped, _ = _peft_model(wrap=True)
        wrapped.save_pretrained(str(tmp_path / "peft"))
        path = tmp_path / "peft"
    else:
        canonical = load_lora_file(diffusers_file, tiny_model)
        kind, _, updown = fmt.partition("-")
        path = save_lora_file(canonical, tmp_path / "out.safetensors", kind,
                              comfyui_keys="lora_down" if updown == "updown" else "lora_A")
    lora = load_lora_file(path, tiny_model)
    expected_format = {"diffusers-rewritten": "diffusers", "comfyui-updown": "comfyui"}.get(fmt, fmt)
    assert lora.source["format"] == expected_format
    assert lora.source["keys_unmatched"] == 0 and len(lora.source["sha256"]) == 64
    assert lora.rank == RANK
    assert {m.alpha for m in lora.modules.values()} == {float(ALPHA)}
    _assert_deltas(lora, deltas)


def test_file_key_names(adapter, diffusers_file, tiny_model, tmp_path):
    """The written names are the ones ComfyUI/Kijai and musubi files use."""
    lora = load_lora_file(diffusers_file, tiny_model)
    comfy = lora_state_dict(lora, "comfyui", comfyui_keys="lora_down")
    for key in ("diffusion_model.blocks.0.self_attn.q.lora_down.weight", "diffusion_model.blocks.1.self_attn.o.alpha",
                "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight", "diffusion_model.blocks.0.ffn.0.alpha",
                "diffusion_model.blocks.1.ffn.2.lora_down.weight"):
        assert key in comfy
    kohya = lora_state_dict(lora, "kohya")
    assert "lora_unet_blocks_0_cross_attn_v_img.lora_down.weight" in kohya
    assert "lora_unet_blocks_1_self_attn_o.alpha" in kohya


def test_comfyui_and_kohya_agree_with_diffusers_converters(adapter, diffusers_file, tiny_model, tmp_path):
    """diffusers' own converters (alpha baked into the factors) as an independent oracle for the name mapping."""
    from diffusers.loaders.lora_conversion_utils import (_convert_musubi_wan_lora_to_diffusers,
                                                         _convert_non_diffusers_wan_lora_to_diffusers)

    _, _, deltas = adapter
    lora = load_lora_file(diffusers_file, tiny_model)
    for fmt, convert in (("comfyui", _convert_non_diffusers_wan_lora_to_diffusers),
                         ("kohya", _convert_musubi_wan_lora_to_diffusers)):
        # clones: the ComfyUI converter scales cross-attention/FFN factors in place
        converted = convert({k: v.clone() for k, v in lora_state_dict(lora, fmt).items()})
        for name, want in deltas.items():
            a = converted[f"transformer.{name}.lora_A.weight"]
            b = converted[f"transformer.{name}.lora_B.weight"]
            assert (b @ a - want).abs().max().item() <= DELTA_TOL, (fmt, name)


def test_non_block_modules_map(tiny_model, tmp_path):
    """text/time embedding, time projection, head and image embedder keys (Wan names) reach their Linears."""
    names = {"text_embedding.0": "condition_embedder.text_embedder.linear_1",
             "time_embedding.2": "condition_embedder.time_embedder.linear_2",
             "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out",
             "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2"}
    layers = dict(tiny_model.named_modules())
    sd = {}
    for wan, ours in names.items():
        w = layers[ours].weight
        sd[f"diffusion_model.{wan}.lora_down.weight"] = torch.randn(2, w.shape[1])
        sd[f"diffusion_model.{wan}.lora_up.weight"] = torch.randn(w.shape[0], 2)
    save_file(sd, str(tmp_path / "g.safetensors"))
    lora = load_lora_file(tmp_path / "g.safetensors", tiny_model)
    assert set(lora.modules) == set(names.values())


def test_alpha_and_scale(diffusers_file, tiny_model, tmp_path):
    lora = load_lora_file(diffusers_file, tiny_model, lora_scale=0.5)
    name = "blocks.0.attn1.to_q"
    m = lora.modules[name]
    assert m.scale(lora.lora_scale) == pytest.approx(0.5 * ALPHA / RANK)
    # no alpha anywhere (diffusers file without metadata): alpha None, scale = lora_scale
    sd = {k: v for k, v in load_file(str(diffusers_file)).items()}
    save_file(sd, str(tmp_path / "noalpha.safetensors"))
    bare = load_lora_file(tmp_path / "noalpha.safetensors", tiny_model)
    assert bare.modules[name].alpha is None and bare.modules[name].scale(1.0) == 1.0
    # per-module alpha and rank survive a diffusers round trip (rank_pattern / alpha_pattern)
    mods = dict(lora.modules)
    mods[name] = LoraModule(down=m.down[:2].clone(), up=m.up[:, :2].clone(), alpha=3.0)
    mods["blocks.0.attn1.to_k"] = LoraModule(down=mods["blocks.0.attn1.to_k"].down, up=mods["blocks.0.attn1.to_k"].up)
    mixed = LoraWeights(mods)
    for fmt in ("diffusers", "peft", "comfyui", "kohya"):
        back = load_lora_file(save_lora_file(mixed, tmp_path / fmt / "x.safetensors" if fmt != "peft"
                                             else tmp_path / "peftdir", fmt), tiny_model)
        for n in mods:
            assert (back.delta(n) - mixed.delta(n)).abs().max().item() <= DELTA_TOL, (fmt, n)
        assert back.modules[name].alpha == 3.0 and back.modules[name].rank == 2


# ------------------------------------------------------------------------------------------------ application
def test_merged_separate_and_peft_eager_agree(adapter, diffusers_file):
    model, _, _ = adapter
    inputs = _inputs(model)
    want = _run(model, inputs)
    base = _run(load_transformer(ModelSpec("tiny")), inputs)
    assert (want - base).abs().max().item() > 1e-3  # the adapter visibly changes the output
    for mode in ("merged", "separate"):
        target = load_transformer(ModelSpec("tiny"))
        apply_lora(target, load_lora_file(diffusers_file, target), mode)
        got = _run(target, inputs)
        assert (got - want).abs().max().item() <= OUTPUT_TOL, mode


def test_peft_lora_bias_is_scaled_like_peft(tmp_path):
    """peft's lora_B.bias is applied times alpha/r: loads as diff_b = bias * alpha/r, matches peft eager."""
    model, cfg = _peft_model(lora_bias=True)
    path = _write_diffusers(model, cfg, tmp_path / "b.safetensors")
    inputs = _inputs(model)
    want = _run(model, inputs)
    target = load_transformer(ModelSpec("tiny"))
    lora = load_lora_file(path, target)
    bias = dict(model.named_modules())["blocks.0.attn1.to_q"].lora_B["default"].bias
    assert torch.allclose(lora.modules["blocks.0.attn1.to_q"].diff_b, bias * ALPHA / RANK)
    apply_lora(target, lora, "merged")
    assert (_run(target, inputs) - want).abs().max().item() <= OUTPUT_TOL


@pytest.mark.parametrize("mode", ["merged", "separate"])
def test_comfyui_diff_b_is_a_bias_delta(mode, tmp_path):
    base = load_transformer(ModelSpec("tiny"))
    layers = dict(base.named_modules())
    gen = torch.Generator().manual_seed(3)
    sd = {}
    for wan in ("blocks.0.self_attn.q", "blocks.1.ffn.2"):
        w = layers[{"blocks.0.self_attn.q": "blocks.0.attn1.to_q", "blocks.1.ffn.2": "blocks.1.ffn.net.2"}[wan]].weight
        sd[f"diffusion_model.{wan}.lora_A.weight"] = torch.randn(RANK, w.shape[1], generator=gen)
        sd[f"diffusion_model.{wan}.lora_B.weight"] = torch.randn(w.shape[0], RANK, generator=gen) * 0.1
        sd[f"diffusion_model.{wan}.alpha"] = torch.tensor(float(ALPHA))
        sd[f"diffusion_model.{wan}.diff_b"] = torch.randn(w.shape[0], generator=gen)
    sd["diffusion_model.blocks.0.cross_attn.o.diff_b"] = torch.randn(24, generator=gen)  # bias only, no A/B
    sd["diffusion_model.blocks.0.norm3.diff_b"] = torch.zeros(24)  # zeroed norm diff: skipped
    sd["diffusion_model.blocks.0.norm3.diff"] = torch.zeros(24)
    save_file(sd, str(tmp_path / "k.safetensors"))
    lora = load_lora_file(tmp_path / "k.safetensors", base)
    assert lora.source["keys_zero_diff_skipped"] == 2 and lora.source["bias_only_modules"] == 1
    assert torch.equal(lora.modules["blocks.1.ffn.net.2"].diff_b, sd["diffusion_model.blocks.1.ffn.2.diff_b"])

    # reference by hand: W += alpha/r B A, b += diff_b
    ref = load_transformer(ModelSpec("tiny"))
    with torch.no_grad():
        for name, m in lora.modules.items():
            layer = ref.get_submodule(name)
            layer.weight += ALPHA / RANK * (m.up @ m.down)  # bias-only module: zero factors
            layer.bias += m.diff_b
    inputs = _inputs(base)
    apply_lora(base, lora, mode)
    if mode == "separate":
        assert isinstance(base.get_submodule("blocks.0.attn2.to_out.0"), LoraLinear)
    assert (_run(base, inputs) - _run(ref, inputs)).abs().max().item() <= OUTPUT_TOL


def test_t2v_lora_on_i2v_model_leaves_image_kv_untouched(tmp_path):
    model, cfg = _peft_model(targets=T2V_TARGETS)
    path = _write_diffusers(model, cfg, tmp_path / "t2v.safetensors")
    canonical = load_lora_file(path, load_transformer(ModelSpec("tiny")))
    comfy = save_lora_file(canonical, tmp_path / "t2v_comfy.safetensors", "comfyui")
    target = load_transformer(ModelSpec("tiny"))
    before = {n: p.clone() for n, p in target.named_parameters()}
    lora = load_lora_file(comfy, target)
    assert lora.source["image_kv_untouched"] == 4 and lora.source["t2v_lora_on_i2v"]
    apply_lora(target, lora, "merged")
    after = dict(target.named_parameters())
    for i in range(2):
        for proj in ("add_k_proj", "add_v_proj"):
            assert torch.equal(after[f"blocks.{i}.attn2.{proj}.weight"], before[f"blocks.{i}.attn2.{proj}.weight"])
        assert not torch.equal(after[f"blocks.{i}.attn2.to_k.weight"], before[f"blocks.{i}.attn2.to_k.weight"])


def test_i2v_lora_on_t2v_model_is_refused(diffusers_file, tmp_path):
    from diffusers import WanTransformer3DModel

    config = {**PRESETS["tiny"].config, "image_dim": None, "added_kv_proj_dim": None, "in_channels": 16}
    t2v = WanTransformer3DModel(**config).eval()
    canonical = load_lora_file(diffusers_file, load_transformer(ModelSpec("tiny")))
    for fmt in ("diffusers", "comfyui"):
        path = save_lora_file(canonical, tmp_path / f"{fmt}.safetensors", fmt)
        with pytest.raises(LoraError, match="image"):
            load_lora_file(path, t2v)


# ------------------------------------------------------------------------------------------------ bad input
def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def _comfy(tmp_path, edit, name="bad.safetensors"):
    """A two-module ComfyUI LoRA for the tiny model, edited by `edit(sd)`."""
    sd = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(RANK, 24),
          "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(24, RANK),
          "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(8.0),
          "diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.randn(RANK, 24),
          "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.randn(32, RANK)}
    edit(sd)
    save_file(sd, str(tmp_path / name))
    return tmp_path / name


def _set(key, value):
    return lambda sd: sd.__setitem__(key, value)


def _pop(key):
    return lambda sd: sd.pop(key)


Q = "diffusion_model.blocks.0.self_attn.q"


@pytest.mark.parametrize("edit, fragment", [
    (_set(f"{Q}.lora_B.weight", torch.randn(32, RANK)), r"blocks\.0\.attn1\.to_q: LoRA A \(4, 24\) / B \(32, 4\)"),
    (_set(f"{Q}.lora_B.weight", torch.randn(24, 3)), "inconsistent rank"),
    (_set(f"{Q}.lora_A.weight", torch.full((RANK, 24), float("nan"))), f"'{Q}.lora_A.weight' contains NaN"),
    (_set(f"{Q}.alpha", torch.tensor(float("inf"))), f"'{Q}.alpha' contains Inf"),
    (_pop(f"{Q}.lora_B.weight"), "no lora_B/up"),
    (_set("diffusion_model.blocks.0.self_attn.k.diff", torch.ones(24, 24)), "full weight diff"),
    (_set(f"{Q}.dora_scale", torch.ones(1, 24)), "DoRA"),
    (_set("diffusion_model.blocks.0.norm3.diff_b", torch.ones(24)), "non-Linear"),
])
def test_bad_tensors(edit, fragment, tiny_model, tmp_path):
    with pytest.raises(LoraError, match=fragment) as e:
        load_lora_file(_comfy(tmp_path, edit), tiny_model)
    _one_line(e)


def test_missing_file(tiny_model, tmp_path):
    with pytest.raises(LoraError, match="not found") as e:
        load_lora_file(tmp_path / "nope.safetensors", tiny_model)
    _one_line(e)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(damage, tiny_model, tmp_path):
    good = _comfy(tmp_path, lambda _: None).read_bytes()
    path = tmp_path / "c.safetensors"
    path.write_bytes({"truncate": good[: len(good) // 2], "garbage": b"\x00not safetensors" * 8, "empty": b""}[damage])
    with pytest.raises(LoraError, match="truncated or corrupt") as e:
        load_lora_file(path, tiny_model)
    _one_line(e)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth"])
def test_pickle_refused_unless_allowed(suffix, tiny_model, tmp_path):
    sd = load_file(str(_comfy(tmp_path, lambda _: None)))
    path = tmp_path / f"lora{suffix}"
    torch.save(sd, path)
    with pytest.raises(LoraError, match="pickle") as e:
        load_lora_file(path, tiny_model)
    _one_line(e)
    lora = load_lora_file(path, tiny_model, allow_pickle=True)
    assert lora.source["format"] == "comfyui" and len(lora.modules) == 2


def test_pickle_with_code_is_refused_even_when_allowed(tiny_model, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": LoraModule}, path)  # a class reference: weights_only refuses it
    with pytest.raises(LoraError, match="weights_only") as e:
        load_lora_file(path, tiny_model, allow_pickle=True)
    _one_line(e)


def test_no_matching_keys_lists_them(tiny_model, tmp_path):
    sd = {f"lora_te_text_model_encoder_layers_{i}_mlp_fc1.lora_down.weight": torch.randn(4, 8) for i in range(7)}
    save_file(sd, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(LoraError, match="none of its 7 keys") as e:
        load_lora_file(tmp_path / "sd15.safetensors", tiny_model)
    msg = _one_line(e)
    assert msg.count("lora_te_text_model") == 5


def test_partial_match_warns_and_loads(tiny_model, tmp_path):
    path = _comfy(tmp_path, _set("diffusion_model.blocks.7.self_attn.q.lora_A.weight", torch.randn(4, 24)))
    with pytest.warns(UserWarning, match="1 of 6 keys match no Linear module"):
        lora = load_lora_file(path, tiny_model)
    assert len(lora.modules) == 2 and lora.source["keys_unmatched"] == 1


def test_zero_diff_keys_are_skipped(tiny_model, tmp_path):
    path = _comfy(tmp_path, _set("diffusion_model.blocks.0.self_attn.norm_q.diff", torch.zeros(24)))
    lora = load_lora_file(path, tiny_model)
    assert lora.source["keys_zero_diff_skipped"] == 1 and lora.source["keys_unmatched"] == 0


def test_save_refuses_dense_and_unknown_format(tiny_model, tmp_path):
    lora = load_lora_file(_comfy(tmp_path, lambda _: None), tiny_model)
    with pytest.raises(LoraError, match="choose one of"):
        save_lora_file(lora, tmp_path / "x.safetensors", "lycoris")
    with pytest.raises(LoraError, match="dense"):
        save_lora_file(dense_reference(lora), tmp_path / "x.safetensors", "diffusers")
