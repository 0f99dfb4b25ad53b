"""tools/train_small.py + runtime/motion.py: the exact latent map, Wan's I2V inputs, and the training loop
(full fine-tune and LoRA) on a few tiny clips."""

import json
import math
from dataclasses import replace

import pytest
import torch

from wanrt.errors import BadInputError
from wanrt.export.lora_formats import load_lora_file
from wanrt.tools import motion_clips as mc
from wanrt.tools import motion_sample
from wanrt.tools import train_small as ts
from wanrt.artifacts import write_manifest
from wanrt.runtime.motion import CONDITIONING, PROMPT_TOKENS, FixedEmbeddings, PixelLatentMap, i2v_condition


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips") / "pretrain"
    mc.write_dataset(out, 0, "pretrain", {"train": 6, "validation": 4, "test": 0}, 5, (16, 16), camera_pan=False)
    return out


def test_latent_map_is_exact_on_pixels():
    latents = PixelLatentMap()
    assert torch.allclose(latents.q.T @ latents.q, torch.eye(12), atol=1e-6)
    video = torch.randint(0, 256, (2, 5, 16, 24, 3), dtype=torch.uint8)
    z = latents.encode(video)
    assert z.shape == (2, 16, 5, 8, 12)
    back = latents.decode(z)
    assert (back - PixelLatentMap.normalize(video)).abs().max() < 1e-5
    assert torch.equal(PixelLatentMap.to_uint8(back), video)


def test_i2v_inputs_have_wan_channels():
    latents = PixelLatentMap()
    first = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    cond = i2v_condition(latents, first, 5)
    assert cond.shape == (2, 20, 5, 8, 8)  # 4 mask + 16 condition; with x_t's 16: in_channels 36
    assert (cond[:, :4, 0] == 1).all() and (cond[:, :4, 1:] == 0).all()
    assert torch.allclose(latents.decode(cond[:, 4:, :1])[:, 0], PixelLatentMap.normalize(first), atol=1e-5)
    assert (cond[:, 4:, 1:] == 0).all()
    emb = FixedEmbeddings(image_dim=16, text_dim=32)
    image = emb.image(first)
    assert image.shape == (2, 1 + 8 * 8, 16)  # a class token, then one per 2x2 patch (257 at 32x32, as CLIP ViT-H)
    assert torch.allclose(image[:, 0], image[:, 1:].mean(dim=1))
    assert torch.allclose(emb.image_proj @ emb.image_proj.T, torch.eye(12), atol=1e-6)  # no pixel value lost
    text = emb.text_tokens(torch.tensor([0, 3]))
    assert text.shape == (2, 512, 32) and (text[:, PROMPT_TOKENS:] == 0).all()  # padded as Wan pads umT5's output
    assert (text[:, :PROMPT_TOKENS] != 0).all() and not torch.equal(text[0], text[1])


def test_the_image_branch_reads_the_image_tokens_and_the_text_attention_the_text():
    """diffusers' WanAttnProcessor takes the context's last 512 tokens as text and the rest as image. Conditioning
    v1 passed 4 + 64 tokens, so add_k_proj read none and the image went through the text attention: the I2V path
    was not intact. Checked on the motion model's own layers: each reads exactly its own tokens."""
    model = ts.build_model(ts.TrainConfig(data="", preset="motion", layers=1)).eval()
    seen = {}
    for name in ("blocks.0.attn2.to_k", "blocks.0.attn2.add_k_proj"):
        model.get_submodule(name).register_forward_hook(
            lambda _module, args, _out, name=name: seen.__setitem__(name, args[0].detach().clone()))
    fm = ts.FlowMatching(model, 3.0)
    clips = torch.randint(0, 256, (2, 5, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        fm.velocity(torch.randn(2, 16, 5, 16, 16), torch.tensor([0.5, 0.9]), clips, torch.tensor([0, 1]))
        text = model.condition_embedder.text_embedder(fm.embeddings.text_tokens(torch.tensor([0, 1])))
        image = model.condition_embedder.image_embedder(fm.embeddings.image(clips[:, 0]))
    assert seen["blocks.0.attn2.to_k"].shape == (2, 512, 128)
    assert seen["blocks.0.attn2.add_k_proj"].shape == (2, 257, 128)
    assert torch.allclose(seen["blocks.0.attn2.to_k"], text, atol=1e-5)
    assert torch.allclose(seen["blocks.0.attn2.add_k_proj"], image, atol=1e-5)


def test_a_model_of_another_conditioning_is_refused(data, tmp_path):
    cfg = ts.TrainConfig(data=str(data), preset="tiny", steps=1, batch=2, val_every=1, val_clips=2)
    model, names, record = ts.train(cfg, log=lambda _: None)
    ts.save_run(tmp_path / "run", cfg, model, names, record)
    manifest = tmp_path / "run" / "manifest.json"
    doc = json.loads(manifest.read_text())
    assert doc["payload"]["conditioning"] == CONDITIONING
    del doc["payload"]["conditioning"]  # as version 1 wrote it
    write_manifest(tmp_path / "run", doc)
    for load in (lambda: motion_sample.load_run(tmp_path / "run"),
                 lambda: ts.build_model(replace(cfg, init=str(tmp_path / "run")))):
        with pytest.raises(BadInputError, match="conditioning v1, this wanrt feeds v2"):
            load()


def test_full_fine_tune_lowers_validation_loss_and_lora_starts_from_it(data, tmp_path):
    torch.set_num_threads(1)
    cfg = ts.TrainConfig(data=str(data), preset="tiny", steps=30, batch=2, lr=3e-3, val_every=30, val_clips=4)
    model, names, record = ts.train(cfg, log=lambda _: None)
    (_, before), (_, after) = record["validation"]
    assert names is None and after < 0.9 * before, record["validation"]
    ts.save_run(tmp_path / "full", cfg, model, names, record)
    # a LoRA run on --init starts exactly at the full run's end (B = 0), and only the branch trains
    lora_cfg = replace(cfg, init=str(tmp_path / "full"), method="lora", rank=4, targets="cross-attn", steps=3)
    lora_model, lora_names, lora_record = ts.train(lora_cfg, log=lambda _: None)
    assert lora_record["validation"][0][1] == pytest.approx(after, rel=1e-5)
    assert lora_names and all(".attn2." in n for n in lora_names)
    base = ts.build_model(lora_cfg).state_dict()
    for key, value in lora_model.state_dict().items():
        if ".lora_" not in key:
            assert torch.equal(value, base[key.replace(".base_layer", "")]), key
    # the saved LoRA reads back through wanrt's loader and, merged, reproduces the peft model's output
    ts.save_run(tmp_path / "lora", lora_cfg, lora_model, lora_names, lora_record)
    lora = load_lora_file(tmp_path / "lora" / ts.WEIGHTS, ts.build_model(lora_cfg))
    assert sorted(lora.modules) == sorted(lora_names) and lora.rank == 4
    merged, _ = motion_sample.load_run(tmp_path / "lora")  # merged onto its --init by wanrt's loader
    clips, motions = ts.load_split(data, "validation")
    fm_peft, fm_merged = ts.FlowMatching(lora_model.eval(), 3.0), ts.FlowMatching(merged, 3.0)
    noise, u = fm_peft.draw(clips, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert fm_peft.loss(clips, motions, noise, u).item() == pytest.approx(
            fm_merged.loss(clips, motions, noise, u).item(), rel=1e-4)
    with pytest.raises(BadInputError, match="full weights"):
        ts.build_model(replace(cfg, init=str(tmp_path / "lora")))
    # sampling: I2V from the validation first frames, uint8 clips, a function of the seed
    fm = ts.FlowMatching(motion_sample.load_run(tmp_path / "full")[0], 3.0)
    draws = [motion_sample.sample(fm, clips[:2, 0], motions[:2], 5, 4, torch.Generator().manual_seed(s))
             for s in (0, 0, 1)]
    assert draws[0].shape == (2, 5, 16, 16, 3) and draws[0].dtype == torch.uint8
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_bad_settings_are_refused(data):
    with pytest.raises(BadInputError, match="--method"):
        ts.train(ts.TrainConfig(data=str(data), method="dora"))
    with pytest.raises(BadInputError, match="positive"):
        ts.train(ts.TrainConfig(data=str(data), steps=0))
    with pytest.raises(BadInputError, match="--lr-decay 'linear'"):
        ts.train(ts.TrainConfig(data=str(data), lr_decay="linear"))
    with pytest.raises(BadInputError, match="no test clips"):
        ts.load_split(data, "test")


@pytest.mark.parametrize("decay, factors", [("none", [1, 1, 1, 1]), ("cosine", [1, 0.8536, 0.5, 0.1464])])
def test_lr_decay_sets_each_steps_rate(data, decay, factors):
    """--lr-decay cosine: step k of n runs at lr (1 + cos(pi k / n)) / 2, falling toward 0 at the last step."""
    torch.set_num_threads(1)
    cfg = ts.TrainConfig(data=str(data), preset="tiny", steps=4, batch=2, lr=1e-3, lr_decay=decay, val_every=4,
                         val_clips=2)
    _, _, record = ts.train(cfg, log=lambda _: None)
    assert record["lr"] == pytest.approx([1e-3 * f for f in factors], rel=1e-3)


@pytest.mark.parametrize("name, width, params", [("motion", 128, 664_432), ("motion4", 128, 1_129_840),
                                                  ("motion-wide", 256, 2_508_144)])
def test_motion_models_are_the_widths_the_reports_name(data, name, width, params):
    """The configs docs/results/motion-study names by these sizes; one training step on each lowers nothing to NaN."""
    from wanrt.runtime.motion import MOTION_MODELS

    cfg = ts.TrainConfig(data=str(data), preset=name, steps=1, batch=2, val_every=1, val_clips=2)
    model = ts.build_model(cfg)
    assert MOTION_MODELS[name]["num_attention_heads"] * MOTION_MODELS[name]["attention_head_dim"] == width
    assert sum(p.numel() for p in model.parameters()) == params
    _, _, record = ts.train(cfg, log=lambda _: None)
    assert all(math.isfinite(v) for _, v in record["validation"])
