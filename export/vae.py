"""The Wan VAE decoder (diffusers `AutoencoderKLWan`) as two ONNX graphs whose causal cache is explicit.

diffusers decodes latent frame by latent frame; each `WanCausalConv3d` keeps the last two frames it saw in a Python
list (`feat_cache`), and the first frame is special (no cache yet; the temporal upsamplers are skipped, so it yields
1 video frame where every later latent frame yields 4). Exported as:

    first.onnx   z[:, :, :1]            -> frames (1), cache.out.0..N-1
    step.onnx    z[:, :, i:i+1], cache.in.0..N-1 -> frames (4), cache.out.0..N-1

Every cache tensor has 2 frames. diffusers stores 1 frame after the first chunk and "Rep" for the upsamplers; both
are written here as their exact equivalent with zero frames in front: a causal conv zero-pads its 2 past frames, so
[0, x0] as cache gives the same window [0, x0, x1] diffusers builds from [x0] and one zero of padding, and [0, 0]
at an upsampler gives the zero padding diffusers applies on the "Rep" pass. The step graph is diffusers' own
decoder traced with a list of tensors as its cache, so it is the same arithmetic; `engines/vae.py` runs the loop.
Latent height and width are dynamic axes (tiled decode feeds edge tiles of other sizes through the same graphs).
The frames come out unclamped: diffusers clamps to [-1, 1] after blending tiles, so the runner clamps last.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from wanrt.artifacts import atomic_output_dir, build_manifest, write_manifest
from wanrt.errors import BadInputError
from wanrt.io_contract import VAE_STRIDE
from wanrt.manifests import VaeDecoderManifest, VaeEncoderManifest

FIRST_NAME = VaeDecoderManifest.first
STEP_NAME = VaeDecoderManifest.step
CACHE_FRAMES = 2  # diffusers' CACHE_T: the past frames a 3-tap causal conv needs
OPSET = 18


@dataclass(frozen=True)
class VaeGeometry:
    """What the graphs need to know of the VAE: its config and the cache layout (one entry per causal conv)."""

    z_dim: int
    cache_shapes: tuple[tuple[int, ...], ...]  # at the export's latent (h, w); h, w scale with the input

    @property
    def n_cache(self) -> int:
        return len(self.cache_shapes)


def _check_supported(vae) -> None:
    cfg = vae.config
    if getattr(cfg, "is_residual", False) or getattr(cfg, "patch_size", None) is not None:
        raise BadInputError("VAE export supports the Wan2.1 VAE layout (is_residual false, no patch_size); "
                            "this config is the Wan2.2 residual VAE", param="vae")


class _FirstChunk(torch.nn.Module):
    """Latent frame 0 -> its video frame and the uniform 2-frame cache (zeros where diffusers has none yet)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.n = vae._cached_conv_counts["decoder"]
        self._upsampler_inputs: list[torch.Tensor] = []
        self._hooks = [m.register_forward_pre_hook(self._record) for m in vae.decoder.modules()
                       if getattr(m, "mode", None) == "upsample3d"]

    def remove_hooks(self) -> None:
        """The caller's VAE is left as it came (the hooks would keep every upsampler input of later decodes)."""
        for h in self._hooks:
            h.remove()

    def _record(self, _module, args):
        self._upsampler_inputs.append(args[0])

    def forward(self, z0):
        self._upsampler_inputs.clear()
        feat: list = [None] * self.n
        x = self.vae.post_quant_conv(z0)
        used = [0]
        out = self.vae.decoder(x, feat_cache=feat, feat_idx=used, first_chunk=True)
        upsampler_inputs = iter(self._upsampler_inputs)
        caches = []
        for c in feat[:used[0]]:  # diffusers counts every causal conv, post_quant_conv's too; the loop uses fewer
            if isinstance(c, str):  # "Rep": the upsampler's time conv has seen nothing; its input's shape, zeros
                ref = next(upsampler_inputs)[:, :, :1]
                caches.append(torch.cat([torch.zeros_like(ref)] * CACHE_FRAMES, dim=2))
            else:
                if isinstance(c, torch.Tensor) and c.shape[2] < CACHE_FRAMES:
                    c = torch.cat([torch.zeros_like(c)] * (CACHE_FRAMES - c.shape[2]) + [c], dim=2)
                caches.append(c)
        return (out, *caches)


class _StepChunk(torch.nn.Module):
    """Latent frame i > 0 and the cache -> its 4 video frames and the next cache (diffusers' decoder as is)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.n = vae._cached_conv_counts["decoder"]

    def forward(self, zi, *cache):
        feat = list(cache) + [None] * (self.n - len(cache))
        x = self.vae.post_quant_conv(zi)
        out = self.vae.decoder(x, feat_cache=feat, feat_idx=[0])
        return (out, *feat[:len(cache)])


def _uniform(cache: torch.Tensor) -> torch.Tensor:
    """A cache entry as CACHE_FRAMES frames, zeros in front (what a causal conv's zero padding would supply)."""
    if cache.shape[2] >= CACHE_FRAMES:
        return cache
    return torch.cat([torch.zeros_like(cache[:, :, :1])] * (CACHE_FRAMES - cache.shape[2]) + [cache], dim=2)


class _EncodeChunk(torch.nn.Module):
    """diffusers' `_encode` loop body: pixel frame 0 (first) or the next 4 (a step) and the cache -> the chunk's
    moments (quant_conv applied: a 1x1x1 conv, so per chunk equals over the concatenation) and the next cache.

    diffusers keeps 1-frame entries where a conv has seen one frame (every causal conv after frame 0; each temporal
    downsampler, which keeps only its last input frame). Both graphs write every entry as 2 frames, zeros in front:
    a causal conv pads a 1-frame cache with one zero frame, so [0, x] is the same window, a downsampler reads only
    the last frame, and "prepend the last cached frame" reads the same frame from [0, x] as from [x]."""

    def __init__(self, vae, first: bool):
        super().__init__()
        self.vae, self.first = vae, first
        self.n = vae._cached_conv_counts["encoder"]

    def forward(self, x, *cache):
        feat = [None] * self.n if self.first else list(cache)
        used = [0]
        out = self.vae.quant_conv(self.vae.encoder(x, feat_cache=feat, feat_idx=used))
        return (out, *[_uniform(c) for c in feat[:used[0]]])


@contextlib.contextmanager
def _nearest_upsampling(vae) -> Iterator[None]:
    """The TorchScript exporter has no `nearest-exact`; at diffusers' integer 2x scale it picks the same source
    pixel as `nearest` (floor((d + 0.5) / 2) == floor(d / 2)), so the export traces `nearest`. Restored after."""
    ups = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Upsample) and m.mode == "nearest-exact"]
    if any(tuple(float(f) for f in m.scale_factor) != (2.0, 2.0) for m in ups):
        raise BadInputError("VAE export: an upsampler with a scale other than 2x2", param="vae")
    for m in ups:
        m.mode = "nearest"
    try:
        yield
    finally:
        for m in ups:
            m.mode = "nearest-exact"


def cache_names(n: int, direction: str) -> list[str]:
    return [f"cache.{direction}.{i}" for i in range(n)]


def _dummy_latents(vae, height: int, width: int, frames: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, vae.config.z_dim, frames, height, width, generator=g)


def _dynamic_axes(names_in: list[str], names_out: list[str]) -> dict[str, dict[int, str]]:
    # Every tensor's last two axes scale with the latent's h, w (by 1, 2, 4 or 8): one symbol each per tensor.
    return {n: {3: f"{n}.h", 4: f"{n}.w"} for n in names_in + names_out}


def export_vae_decoder(vae, out_dir: str | Path, latent_hw: tuple[int, int] = (8, 8), force: bool = False,
                       ) -> tuple[Path, VaeGeometry]:
    """Write first.onnx, step.onnx and a manifest into `out_dir` (atomically); returns it and the cache layout.

    `latent_hw` is only the trace shape: height and width are dynamic axes.
    """
    _check_supported(vae)
    vae = vae.eval().float()  # the graphs are fp32, as the parity reference is
    first, step = _FirstChunk(vae), _StepChunk(vae)
    z = _dummy_latents(vae, *latent_hw)
    try:
        return _export_graphs(vae, first, step, z[:, :, :1], z[:, :, 1:2], VaeDecoderManifest.KIND, Path(out_dir),
                              latent_hw, force)
    finally:
        first.remove_hooks()


def export_vae_encoder(vae, out_dir: str | Path, latent_hw: tuple[int, int] = (8, 8), force: bool = False,
                       ) -> tuple[Path, VaeGeometry]:
    """The encoder's first.onnx (pixel frame 0) and step.onnx (the next 4 pixel frames) and a manifest, as the
    decoder's (`_EncodeChunk` says how its cache is made uniform). Returns the directory and cache layout."""
    _check_supported(vae)
    vae = vae.eval().float()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, vae.config.in_channels, 5, *(VAE_STRIDE[1] * d for d in latent_hw), generator=g) * 2 - 1
    return _export_graphs(vae, _EncodeChunk(vae, first=True), _EncodeChunk(vae, first=False), x[:, :, :1], x[:, :, 1:5],
                          VaeEncoderManifest.KIND, Path(out_dir), latent_hw, force, input_name="x",
                          output_name="moments")


def _export_graphs(vae, first, step, first_in: torch.Tensor, step_in: torch.Tensor, kind: str, out_dir: Path,
                   latent_hw: tuple[int, int], force: bool, input_name: str = "z", output_name: str = "frames",
                   ) -> tuple[Path, VaeGeometry]:
    with torch.no_grad():
        _, *cache = first(first_in)
    n = len(cache)
    geometry = VaeGeometry(z_dim=vae.config.z_dim, cache_shapes=tuple(tuple(c.shape) for c in cache))
    outs = cache_names(n, "out")
    with (atomic_output_dir(out_dir, force=force) as tmp, torch.no_grad(), warnings.catch_warnings(),
          _nearest_upsampling(vae)):
        warnings.simplefilter("ignore")  # tracer warnings on diffusers' shape-dependent Python branches (constant here)
        torch.onnx.export(first, (first_in,), tmp / FIRST_NAME, input_names=[input_name],
                          output_names=[output_name, *outs], dynamic_axes=_dynamic_axes([input_name],
                                                                                        [output_name, *outs]),
                          opset_version=OPSET, dynamo=False)
        ins = cache_names(n, "in")
        torch.onnx.export(step, (step_in, *cache), tmp / STEP_NAME, input_names=[input_name, *ins],
                          output_names=[output_name, *outs],
                          dynamic_axes=_dynamic_axes([input_name, *ins], [output_name, *outs]),
                          opset_version=OPSET, dynamo=False)
        payload = {"z_dim": geometry.z_dim, "n_cache": n,
                   "cache_shapes": [list(s) for s in geometry.cache_shapes], "trace_latent_hw": list(latent_hw),
                   "vae_config": dict(vae.config), "opset": OPSET}
        write_manifest(tmp, build_manifest(kind, {"latent_hw": list(latent_hw)}, payload))
    return out_dir, geometry
