"""The Wan VAE decoder as ONNX chunk graphs (export/vae.py) run by engines/vae.py on ORT and OpenVINO, against
diffusers' `AutoencoderKLWan.decode` fp32 on a CI-sized config (base_dim 8, z_dim 4; the real geometry is measured
by tools/bench_vae.py). Gate: every frame's PSNR >= 35 dB and max |out - ref| / max |ref| <= 1e-4 (fp32: the same
arithmetic re-ordered; measured ~2e-6)."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from wanrt.engines.vae import TileSpec, VaeDecoder
from wanrt.errors import BadInputError, WanrtError
from wanrt.export.vae import STEP_NAME, export_vae_decoder
from wanrt.manifests import VaeDecoderManifest
from wanrt.tools.bench_vae import latents, parity

REL_ERR = 1e-4
PSNR_DB = 35.0
SMALL = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])


@pytest.fixture(scope="module")
def small_vae(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**SMALL).eval()
    export_dir, geometry = export_vae_decoder(vae, tmp_path_factory.mktemp("vae") / "dec", latent_hw=(4, 4))
    return vae, export_dir, geometry


def _reference(vae, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return vae.decode(torch.from_numpy(z)).sample.numpy()


def _gate(ref: np.ndarray, out: np.ndarray) -> None:
    assert out.shape == ref.shape
    q = parity(ref, out)
    assert q["rel_err"] <= REL_ERR and q["psnr_min_db"] >= PSNR_DB, q


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_chunked_decode_matches_diffusers(small_vae, backend):
    vae, export_dir, geometry = small_vae
    # 3 latent frames (first graph once, step graph twice: the cache carried across), traced at 4x4, run at 5x6
    z = latents(4, 3, 5, 6)
    out = VaeDecoder(export_dir, backend).decode(z)
    assert out.shape == (1, 3, 9, 40, 48)
    _gate(_reference(vae, z), out)
    assert all(len(s) == 5 and s[2] == 2 for s in geometry.cache_shapes)  # every cache holds 2 frames


def test_cache_is_what_carries_the_past(small_vae):
    """Feeding the step graph a zero cache instead of the first graph's changes the frames: the cache is live."""
    _, export_dir, geometry = small_vae
    dec = VaeDecoder(export_dir, "ort")
    z = latents(4, 2, 4, 4)
    _, *cache = dec.first({"z": z[:, :, :1]})
    zeros = {f"cache.in.{i}": np.zeros_like(c) for i, c in enumerate(cache)}
    with_cache = dec.step({"z": z[:, :, 1:2], **{f"cache.in.{i}": c for i, c in enumerate(cache)}})[0]
    without = dec.step({"z": z[:, :, 1:2], **zeros})[0]
    assert with_cache.shape == (1, 3, 4, 32, 32)
    assert np.abs(with_cache - without).max() > 1e-3
    assert (export_dir / STEP_NAME).is_file() and geometry.n_cache == len(cache)


def test_tiled_decode_matches_diffusers_tiling(small_vae):
    vae, export_dir, _ = small_vae
    tile = TileSpec(min_height=32, min_width=32, stride_height=24, stride_width=24)
    z = latents(4, 2, 5, 6)  # 40x48 px: 2x2 tiles of 4x4 latents at stride 3, edge tiles smaller (2 and 3 rows)
    vae.enable_tiling(tile.min_height, tile.min_width, tile.stride_height, tile.stride_width)
    try:
        ref = _reference(vae, z)
    finally:
        vae.use_tiling = False
    out = VaeDecoder(export_dir, "ort").decode(z, tile=tile)
    _gate(ref, out)
    untiled = _reference(vae, z)
    assert np.abs(untiled - ref).max() > 1e-4  # tiling changes the video: the tiled path was the one compared


def test_bad_input_is_one_line(small_vae):
    _, export_dir, _ = small_vae
    with pytest.raises(BadInputError, match="latents must be") as e:
        VaeDecoder(export_dir, "ort").decode(np.zeros((1, 16, 2, 4, 4), np.float32))
    assert e.value.param == "latents"
    with pytest.raises(BadInputError, match="stage backend 'tensorrt-nope': choose one of ort, ov"):
        VaeDecoder(export_dir, "tensorrt-nope")
    # the TensorRT flavours offer no stage sessions (registry: stage_precisions ()): refused, never run elsewhere
    with pytest.raises(BadInputError, match="stage backend 'trt': choose one of ort, ov"):
        VaeDecoder(export_dir, "trt")
    with pytest.raises(BadInputError, match="--precision bf16: ort stage graphs run fp32"):
        VaeDecoder(export_dir, "ort", precision="bf16")


def test_wan22_residual_vae_is_refused(tmp_path):
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, is_residual=True)
    with pytest.raises(BadInputError, match="Wan2.1 VAE layout"):
        export_vae_decoder(vae, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_manifest_is_typed_and_files_are_checked(small_vae, tmp_path):
    _, export_dir, geometry = small_vae
    m = VaeDecoderManifest.read(export_dir)
    assert (m.z_dim, m.n_cache, m.first, m.step) == (4, geometry.n_cache, "first.onnx", "step.onnx")
    assert [tuple(s) for s in m.cache_shapes] == list(geometry.cache_shapes)
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    with open(copy / m.step, "ab") as f:  # a step graph that is not the one the manifest recorded
        f.write(b"\0")
    with pytest.raises(WanrtError, match="step.onnx"):
        VaeDecoder(copy, "ort")


def test_export_leaves_the_vae_as_it_was(small_vae):
    vae, _, _ = small_vae
    upsamplers = [m for m in vae.decoder.modules() if getattr(m, "mode", None) == "upsample3d"]
    assert upsamplers and not any(m._forward_pre_hooks for m in upsamplers)
    assert {m.mode for m in vae.decoder.modules() if isinstance(m, torch.nn.Upsample)} == {"nearest-exact"}
