"""Run the exported Wan VAE decoder (export/vae.py) on ORT or OpenVINO: diffusers' chunk loop and tiled decode.

`VaeDecoder(dir, backend).decode(latents)` equals `AutoencoderKLWan.decode(latents).sample` (fp32): latent frame 0
through first.onnx, every later frame through step.onnx with the cache the previous call returned, frames
concatenated, then clamped to [-1, 1] (last, as diffusers does: after blending tiles). `tile=TileSpec(...)` decodes
overlapping spatial tiles one after the other, each with its own cache, and blends them as diffusers'
`tiled_decode` does (same tile sizes, strides and linear blend), so peak memory is bounded by the tile, not the
frame. Both backends run fp32 (OpenVINO's CPU plugin is pinned to f32: on bf16-capable CPUs its default is bf16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wanrt.engines.openvino import BACKEND as OV_BACKEND
from wanrt.errors import BadInputError, MissingDependencyError
from wanrt.io_contract import VAE_STRIDE
from wanrt.manifests import VaeDecoderManifest

VAE_BACKENDS = ("ort", "openvino")
# the same sessions under the runtime backends' names (`wanrt generate --vae-backend`): ort, and OpenVINO's "ov"
RUNTIME_BACKENDS = {"ort": "ort", OV_BACKEND: "openvino"}


@dataclass(frozen=True)
class TileSpec:
    """diffusers' AutoencoderKLWan tiling defaults, in pixels."""

    min_height: int = 256
    min_width: int = 256
    stride_height: int = 192
    stride_width: int = 192


class _OrtSession:
    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort  # lazy: optional backend
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(self.outputs, feeds)


class _OvSession:
    def __init__(self, path: Path, threads: int | None):
        try:
            import openvino as ov  # lazy: optional backend
        except ImportError as e:
            raise MissingDependencyError(f"the openvino VAE backend needs OpenVINO ({e})") from None
        props = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(path), "CPU", props)
        self.request = self.compiled.create_infer_request()
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer(feeds)
        # copies: the request reuses its output buffers on the next call, and the caches are fed back into it
        return [np.array(res[self.compiled.output(n)]) for n in self.outputs]


SESSIONS = {"ort": _OrtSession, "openvino": _OvSession}


class VaeDecoder:
    def __init__(self, export_dir: str | os.PathLike, backend: str = "ort", threads: int | None = None):
        backend = RUNTIME_BACKENDS.get(backend, backend)
        if backend not in SESSIONS:
            raise BadInputError(f"VAE backend {backend!r}: choose one of {', '.join(VAE_BACKENDS)}", param="backend")
        export_dir = Path(export_dir)
        manifest = VaeDecoderManifest.read(export_dir, check_files=True)  # every file's size and sha256 too
        self.n_cache, self.z_dim = manifest.n_cache, manifest.z_dim
        self.first = SESSIONS[backend](export_dir / manifest.first, threads)
        self.step = SESSIONS[backend](export_dir / manifest.step, threads)
        self.cache_in = [f"cache.in.{i}" for i in range(self.n_cache)]

    def _check(self, z: np.ndarray) -> np.ndarray:
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise BadInputError(f"VAE latents must be (batch, {self.z_dim}, frames, h, w), got {tuple(z.shape)}",
                                param="latents")
        return np.ascontiguousarray(z, dtype=np.float32)

    def _decode_one(self, z: np.ndarray) -> np.ndarray:
        """One sample (batch 1), whole frame: diffusers' `_decode` loop."""
        frames, *cache = self.first({"z": z[:, :, :1]})
        out = [frames]
        for i in range(1, z.shape[2]):
            feeds = {"z": np.ascontiguousarray(z[:, :, i:i + 1]), **dict(zip(self.cache_in, cache, strict=True))}
            frames, *cache = self.step(feeds)
            out.append(frames)
        return np.concatenate(out, axis=2)

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
