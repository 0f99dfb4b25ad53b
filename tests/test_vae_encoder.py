"""The Wan VAE encoder as ONNX chunk graphs (export/vae.py `export_vae_encoder`, engines/vae.py `VaeEncoder`) on ORT
and OpenVINO against diffusers' `AutoencoderKLWan` fp32 on a CI-sized config, and its drop-in for `vae.encode`.
Gate: max |out - ref| / max |ref| <= 1e-4 on the moments (fp32: the same arithmetic re-ordered; measured ~5e-7)."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from wanrt.engines.vae import VaeDecoder, VaeEncoder
from wanrt.errors import BadInputError
from wanrt.export.vae import export_vae_encoder
from wanrt.manifests import VaeEncoderManifest
from wanrt.runtime.stages import CompiledVaeEncode
from tests.test_vae import SMALL  # the decoder tests' CI-sized VAE config

REL_ERR = 1e-4


@pytest.fixture(scope="module")
def small_encoder(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**SMALL).eval()
    export_dir, geometry = export_vae_encoder(vae, tmp_path_factory.mktemp("vae") / "enc", latent_hw=(4, 4))
    return vae, export_dir, geometry


def _video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, frames, height, width)).astype(np.float32)


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_chunked_encode_matches_diffusers(small_encoder, backend):
    vae, export_dir, geometry = small_encoder
    # 9 frames: the first graph once, the step graph twice (the cache carried across); traced at 32x32, run at 40x48
    x = _video(9, 40, 48)
    out = VaeEncoder(export_dir, backend).encode(x)
    with torch.no_grad():
        ref = vae._encode(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (1, 8, 3, 5, 6)  # moments: 2 x z_dim; 1 + 8 / 4 latent frames
    assert _rel(out, ref) <= REL_ERR
    assert all(s[2] == 2 for s in geometry.cache_shapes)  # every entry 2 frames, downsamplers' included


def test_the_cache_carries_the_past(small_encoder):
    """The second chunk's moments change when its cache is zeroed: the step graph reads the past."""
    _, export_dir, _ = small_encoder
    enc = VaeEncoder(export_dir, "ort")
    x = _video(5, 32, 32)
    _, *cache = enc.first({"x": x[:, :, :1]})
    live = enc.step({"x": x[:, :, 1:5], **dict(zip(enc.cache_in, cache))})[0]
    cold = enc.step({"x": x[:, :, 1:5], **{n: np.zeros_like(c) for n, c in zip(enc.cache_in, cache)}})[0]
    assert np.abs(live - cold).max() > 1e-3


def test_drop_in_gives_diffusers_latents(small_encoder):
    """The pipeline takes `retrieve_latents(vae.encode(v), sample_mode="argmax")`: the Gaussian's mode (its mean)."""
    vae, export_dir, _ = small_encoder
    x = torch.from_numpy(_video(5, 32, 32, seed=1))
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode().numpy()
    got = CompiledVaeEncode(VaeEncoder(export_dir, "openvino"))(x).latent_dist.mode().numpy()
    assert got.shape == ref.shape and _rel(got, ref) <= REL_ERR
    (posterior,) = CompiledVaeEncode(VaeEncoder(export_dir, "ort"))(x, return_dict=False)
    assert _rel(posterior.mode().numpy(), ref) <= REL_ERR


def test_bad_input_and_manifest_kind(small_encoder):
    _, export_dir, _ = small_encoder
    enc = VaeEncoder(export_dir, "ort")
    with pytest.raises(BadInputError, match=r"1 \+ 4k frames"):
        enc.encode(_video(4, 32, 32))
    assert VaeEncoderManifest.read(export_dir).KIND == "vae-encoder"
    with pytest.raises(BadInputError, match="kind 'vae-encoder', expected 'vae-decoder'"):
        VaeDecoder(export_dir, "ort")
