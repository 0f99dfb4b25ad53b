"""`wanrt generate --vae-backend`: the tiny pipeline's video (5x32x32, 2 steps, CFG) with its VAE decode on the
exported chunk graphs (ORT, OpenVINO) against diffusers' own decode of the same run, and the per-stage seconds.
Gate, the VAE tests' (tests/test_vae.py): every frame's PSNR >= 35 dB and max |out - ref| / max |ref| <= 1e-4 on
the [0, 1] frames (fp32 on both sides; only the decoder's arithmetic order differs)."""

import copy
import functools
import re
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from wanrt.commands.main import cli
from wanrt.engines.sessions import stage_backends
from wanrt.engines.vae import TileSpec, VaeDecoder
from wanrt.export.api import LoraSpec
from wanrt.export.model import ModelSpec
from wanrt.runtime import backends as B
from wanrt.runtime.generate import GenerateSpec, compiled_stages, generate_video
from wanrt.runtime.metrics.frames import psnr
from wanrt.runtime.pipeline import build_pipeline, encode_prompt
from wanrt.runtime.schedule import Schedule
from wanrt.runtime.stages import STAGES, CompiledVaeDecode, CompiledVaeEncode, vae_export_dir

REL_ERR = 1e-4
PSNR_DB = 35.0
SPEC = GenerateSpec(prompt="a red fox in the snow", frames=5, height=32, width=32,
                    schedule=Schedule(steps=2, guidance=5.0), seed=3)
IMAGE = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(cache):
    """One eager tiny backend and pipeline (its parts seeded as the CLI's default --noise-seed 0 seeds them, so the
    CLI test reuses the VAE export); the exports go to a private cache. Yields: VAE backend -> (frames, info)."""
    backend = B.backend_from_specs("eager", ModelSpec("tiny"), LoraSpec())
    pipe = build_pipeline(backend, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANRT_CACHE_DIR", str(cache))
        frames = functools.cache(lambda vae_backend, encoders_backend="eager": generate_video(
            backend, IMAGE, SPEC, pipe=pipe, vae_backend=vae_backend, encoders_backend=encoders_backend))
        frames.pipe = pipe
        yield frames


@pytest.mark.parametrize("vae_backend", list(stage_backends()))
def test_compiled_vae_video_equals_eager(run, vae_backend):
    ref, ref_info = run("eager")
    out, info = run(vae_backend)
    assert out.shape == ref.shape == (5, 32, 32, 3)
    rel = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert rel <= REL_ERR and min(psnr(ref, out)) >= PSNR_DB, (rel, psnr(ref, out))
    assert info["vae_backend"] == vae_backend and info["dit_calls"] == ref_info["dit_calls"] == 4
    assert list(info["stages"]) == [s for s in STAGES if s != "mp4"]  # mp4: the command's, not the video's
    assert sum(info["stages"].values()) <= info["generate_s"]


def test_cli_prints_stages_summing_to_the_total(run, cache, tmp_path, monkeypatch):
    run(list(stage_backends())[-1])  # the export this run finds in the cache
    monkeypatch.setenv("WANRT_CACHE_DIR", str(cache))
    IMAGE.save(tmp_path / "in.png")
    res = CliRunner().invoke(cli, ["generate", "--image", str(tmp_path / "in.png"), "--prompt", "a fox", "--shape",
                                   "5x32x32", "--vae-backend", list(stage_backends())[-1], "-o",
                                   str(tmp_path / "out.mp4")])
    assert res.exit_code == 0, res.output
    assert "exporting the VAE decoder" not in res.output  # the cache key is the VAE's config and weights
    line = re.search(r"stages: (.*?) \(total ([\d.]+) s\)", " ".join(res.output.split()))
    assert line, res.output
    stages = dict(re.findall(r"([a-z0-9-]+) ([\d.]+) s", line.group(1)))
    assert list(stages) == [s.replace("_", "-") for s in STAGES]
    assert sum(float(v) for v in stages.values()) <= float(line.group(2))
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_bad_vae_backend_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["generate", "--image", "x.png", "--prompt", "a", "--vae-backend", "tensorrt",
                                   "-o", str(tmp_path / "o.mp4")])
    assert res.exit_code == 2 and "--vae-backend" in res.output and "'tensorrt' is not one of" in res.output
    assert not (tmp_path / "o.mp4").exists()


def test_tiled_vae_pipeline_decodes_tiled(run, cache):
    """A VAE with tiling on (diffusers' `enable_tiling`) is decoded tiled with its own tile sizes: here 16 px tiles
    at an 8 px stride over the 32x32 frames, against diffusers' tiled decode of the same latents."""
    run("ort")  # the export, in the cache
    vae = copy.deepcopy(run.pipe.vae)
    vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8,
                      tile_sample_stride_width=8)
    decode = CompiledVaeDecode(VaeDecoder(vae_export_dir(vae, cache), "ort"), vae)
    assert decode.tile == TileSpec(16, 16, 8, 8)
    z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(z, return_dict=False)[0]
        untiled = copy.deepcopy(run.pipe.vae).decode(z, return_dict=False)[0]
    out = decode(z, return_dict=False)[0]
    assert out.shape == ref.shape == (1, 3, 5, 32, 32) and out.dtype == torch.float32
    assert float((out - ref).abs().max() / ref.abs().max()) <= REL_ERR
    assert float((untiled - ref).abs().max()) > 1e-3  # the tiles' blend is visible: the check can tell them apart


@pytest.mark.parametrize("backend", list(stage_backends()))
def test_compiled_encoders_video_equals_eager(run, backend):
    """UMT5 and CLIP on their graphs too (--encoders-backend): the same video within the gate, every stage timed."""
    ref, _ = run("eager")
    out, info = run(backend, backend)
    rel = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert rel <= REL_ERR and min(psnr(ref, out)) >= PSNR_DB, (rel, psnr(ref, out))
    assert info["encoders_backend"] == backend and set(info["stages"]) >= {"text", "image", "vae_encode"}


def test_text_and_image_drop_ins_equal_the_modules(run, cache, monkeypatch):
    """The encoders' drop-ins give what the modules give: the prompt's embeddings (rows past it zero) and CLIP's
    penultimate hidden state for one image and for a list of two (first and last frame)."""
    monkeypatch.setenv("WANRT_CACHE_DIR", str(cache))
    pipe = run.pipe
    stages = compiled_stages(pipe, encoders_backend="ort")
    assert stages.vae_decode is None and stages.vae_encode is None  # --vae-backend eager
    ref = encode_prompt(pipe, "a red fox in the snow")
    got = encode_prompt(pipe, "a red fox in the snow", text_encoder=stages.text)
    assert got.shape == ref.shape and float((got - ref).abs().max() / ref.abs().max()) <= REL_ERR
    assert float(got[0, 30:].abs().max()) == 0.0  # 21 bytes + </s>: zero past the prompt, as diffusers makes it
    with torch.no_grad():
        for images in (IMAGE, [IMAGE, IMAGE.rotate(90)]):
            ref = pipe.encode_image(images, torch.device("cpu"))
            got = stages.image(images, torch.device("cpu"))
            assert got.shape == ref.shape and float((got - ref).abs().max() / ref.abs().max()) <= REL_ERR


def test_compiled_vae_encodes_too_except_when_tiling(run, cache, monkeypatch):
    """Both VAE stages run on the graphs (the video-equality test above covers the encode's parity through the
    whole pipeline); a tiling VAE keeps diffusers' encode, whose tiled form is not exported."""
    monkeypatch.setenv("WANRT_CACHE_DIR", str(cache))
    vae = copy.deepcopy(run.pipe.vae)
    both = compiled_stages(types.SimpleNamespace(vae=vae), "ort")
    assert isinstance(both.vae_encode, CompiledVaeEncode) and isinstance(both.vae_decode, CompiledVaeDecode)
    assert both.text is None and both.image is None  # --encoders-backend eager
    x = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode()
    got = both.vae_encode(x).latent_dist.mode()
    assert float((got - ref).abs().max() / ref.abs().max()) <= REL_ERR
    vae.enable_tiling()
    assert compiled_stages(types.SimpleNamespace(vae=vae), "ort").vae_encode is None
