"""Run the exported Wan VAE (export/vae.py) on ORT or OpenVINO: diffusers' chunk loops and tiled decode.

`VaeDecoder(dir, backend).decode(latents)` equals `AutoencoderKLWan.decode(latents).sample` (fp32): latent frame 0
through first.onnx, every later frame through step.onnx with the cache the previous call returned, frames
concatenated, then clamped to [-1, 1] (last, as diffusers does: after blending tiles). `tile=TileSpec(...)` decodes
overlapping spatial tiles one after the other, each with its own cache, and blends them as diffusers'
`tiled_decode` does (same tile sizes, strides and linear blend), so peak memory is bounded by the tile, not the
frame. `VaeEncoder(dir, backend).encode(video)` is diffusers' untiled `_encode` the same way (frame 0, then 4 pixel
frames a chunk), returning the moments diffusers wraps in its Gaussian. Both backends run fp32 (OpenVINO's CPU
plugin is pinned to f32: on bf16-capable CPUs its default is bf16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wanrt.engines.sessions import session
from wanrt.errors import BadInputError
from wanrt.io_contract import VAE_STRIDE
from wanrt.manifests import VaeDecoderManifest, VaeEncoderManifest

@dataclass(frozen=True)
class TileSpec:
    """diffusers' AutoencoderKLWan tiling defaults, in pixels."""

    min_height: int = 256
    min_width: int = 256
    stride_height: int = 192
    stride_width: int = 192


class _ChunkGraphs:
    """The first/step graph pair of an export (decoder or encoder), each on a session of `backend`."""

    MANIFEST: type[VaeDecoderManifest] = VaeDecoderManifest

    def __init__(self, export_dir: str | os.PathLike, backend: str = "ort", threads: int | None = None,
                 precision: str = "fp32"):
        export_dir = Path(export_dir)
        manifest = self.MANIFEST.read(export_dir, check_files=True)  # every file's size and sha256 too
        self.n_cache, self.z_dim = manifest.n_cache, manifest.z_dim
        self.in_channels = manifest.vae_config.get("in_channels", 3)
        self.first = session(backend, export_dir / manifest.first, threads, precision)
        self.step = session(backend, export_dir / manifest.step, threads, precision)
        self.cache_in = [f"cache.in.{i}" for i in range(self.n_cache)]

    def _run(self, name: str, chunks: list[np.ndarray]) -> np.ndarray:
        """The chunk loop: the first chunk through first.onnx, each later one through step.onnx with the cache the
        previous call returned; the outputs concatenated along time."""
        out, *cache = self.first({name: chunks[0]})
        outs = [out]
        for chunk in chunks[1:]:
            out, *cache = self.step({name: np.ascontiguousarray(chunk), **dict(zip(self.cache_in, cache, strict=True))})
            outs.append(out)
        return np.concatenate(outs, axis=2)


class VaeEncoder(_ChunkGraphs):
    """`encode(video)` equals diffusers' `AutoencoderKLWan._encode(video)` (untiled, fp32): the moments (mean and
    log-variance, 2 x z_dim channels) of (B, 3, 1 + 4k, H, W) pixels in [-1, 1]."""

    MANIFEST = VaeEncoderManifest

    def encode(self, video) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(video), dtype=np.float32)
        if x.ndim != 5 or x.shape[1] != self.in_channels or (x.shape[2] - 1) % VAE_STRIDE[0]:
            raise BadInputError(f"VAE encoder input must be (batch, {self.in_channels}, 1 + 4k frames, H, W), got "
                                f"{tuple(x.shape)}", param="video")
        return np.concatenate([self._encode_one(x[b:b + 1]) for b in range(x.shape[0])], axis=0)

    def _encode_one(self, x: np.ndarray) -> np.ndarray:
        """One sample: diffusers' `_encode` loop, pixel frame 0 and then 4 frames a chunk."""
        return self._run("x", [x[:, :, :1]] + [x[:, :, i:i + VAE_STRIDE[0]] for i in range(1, x.shape[2], 4)])


class VaeDecoder(_ChunkGraphs):

    def _check(self, z: np.ndarray) -> np.ndarray:
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise BadInputError(f"VAE latents must be (batch, {self.z_dim}, frames, h, w), got {tuple(z.shape)}",
                                param="latents")
        return np.ascontiguousarray(z, dtype=np.float32)

    def _decode_one(self, z: np.ndarray) -> np.ndarray:
        """One sample (batch 1), whole frame: diffusers' `_decode` loop, one latent frame a chunk."""
        return self._run("z", [z[:, :, i:i + 1] for i in range(z.shape[2])])

    def decode(self, latents, tile: TileSpec | None = None) -> np.ndarray:
        """(B, z_dim, T, h, w) latents -> (B, 3, 1 + 4(T-1), 8h, 8w) video in [-1, 1], float32 numpy."""
        z = self._check(np.asarray(latents))
        one = self._decode_one if tile is None else (lambda s: self._tiled_one(s, tile))
        video = np.concatenate([one(z[b:b + 1]) for b in range(z.shape[0])], axis=0)
        return np.clip(video, -1.0, 1.0, out=video)  # in place: an 81-frame 480p video is 390 MB

    def _tiled_one(self, z: np.ndarray, tile: TileSpec) -> np.ndarray:
        """diffusers' `tiled_decode` (used when the latent exceeds the tile), over the same chunk graphs."""
        h, w = z.shape[3:]
        ratio = VAE_STRIDE[1]  # pixels per latent, spatially
        lh, lw = tile.min_height // ratio, tile.min_width // ratio
        if h <= lh and w <= lw:
            return self._decode_one(z)
        sh, sw = tile.stride_height // ratio, tile.stride_width // ratio
        blend_h, blend_w = tile.min_height - tile.stride_height, tile.min_width - tile.stride_width
        rows = [[self._decode_one(np.ascontiguousarray(z[:, :, :, i:i + lh, j:j + lw])) for j in range(0, w, sw)]
                for i in range(0, h, sh)]
        result_rows = []
        for i, row in enumerate(rows):
            parts = []
            for j, t in enumerate(row):
                if i > 0:
                    t = _blend(rows[i - 1][j], t, blend_h, axis=3)
                if j > 0:
                    t = _blend(row[j - 1], t, blend_w, axis=4)
                row[j] = t  # diffusers blends in place: the next tile blends against the blended one
                parts.append(t[:, :, :, :tile.stride_height, :tile.stride_width])
            result_rows.append(np.concatenate(parts, axis=4))
        return np.concatenate(result_rows, axis=3)[:, :, :, :h * ratio, :w * ratio]


def _blend(a: np.ndarray, b: np.ndarray, extent: int, axis: int) -> np.ndarray:
    """diffusers' blend_v (axis 3) / blend_h (axis 4): b's first `extent` rows fade in from a's last ones."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent == 0:
        return b
    b = b.copy()
    ramp = (np.arange(extent, dtype=np.float64) / extent).astype(np.float32)
    shape = [1] * b.ndim
    shape[axis] = extent
    ramp = ramp.reshape(shape)
    a_tail = np.take(a, range(a.shape[axis] - extent, a.shape[axis]), axis=axis)
    idx = [slice(None)] * b.ndim
    idx[axis] = slice(0, extent)
    b[tuple(idx)] = a_tail * (1 - ramp) + b[tuple(idx)] * ramp
    return b
