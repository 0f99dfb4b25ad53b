"""Per-frame metrics between two videos of the same shape: PSNR, SSIM (no weights) and LPIPS.

Frames are (T, H, W, 3) uint8 (0..255) or float in [0, 1], numpy or torch. PSNR and SSIM are computed in float64
on the [0, 1] scale, which for uint8 input equals the usual 255-scale definitions.

SSIM follows Wang et al. 2004 with the convention of scikit-image's `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)`: an 11-tap Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, the SSIM map averaged over the window-valid region, per RGB channel, then over channels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wanrt.errors import BadInputError
from wanrt.runtime.metrics.lpips import lpips_distance

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image's truncate=3.5 -> an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def as_frames(video: Any, name: str = "video") -> torch.Tensor:
    """Validate (T, H, W, 3) uint8 or [0, 1] float frames (numpy or torch) and return them as a CPU tensor.

    The conversion to float64 happens a frame at a time (`_frame`): a whole 81-frame 480p video in float64 would
    take ~0.8 GB.
    """
    t = torch.from_numpy(np.asarray(video)) if not isinstance(video, torch.Tensor) else video.detach().cpu()
    if t.ndim == 3:  # a single frame
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise BadInputError(f"{name}: expected (T, H, W, 3) frames, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise BadInputError(f"{name}: frames must be uint8 or float in [0, 1], got {t.dtype}")
    return t


def _frame(t: torch.Tensor, i: int, dtype=torch.float64) -> torch.Tensor:
    """Frame i of an as_frames tensor as (1, 3, H, W) in [0, 1]."""
    f = t[i].to(dtype)
    if t.dtype == torch.uint8:
        f = f / 255.0
    return f.permute(2, 0, 1)[None]


def psnr(ref: Any, gen: Any) -> list[float]:
    """Per-frame PSNR in dB (inf for identical frames)."""
    a, b = as_frames(ref, "ref"), as_frames(gen, "gen")
    _same_shape(a, b)
    mse = [float(((_frame(a, i) - _frame(b, i)) ** 2).mean()) for i in range(a.shape[0])]
    return [math.inf if m == 0 else -10.0 * math.log10(m) for m in mse]


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' region only, per channel. x: (N, C, H, W)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim(ref: Any, gen: Any) -> list[float]:
    """Per-frame SSIM (mean over the valid region and the three channels)."""
    a, b = as_frames(ref, "ref"), as_frames(gen, "gen")
    _same_shape(a, b)
    if min(a.shape[1:3]) < 2 * SSIM_RADIUS + 1:
        raise BadInputError(f"SSIM needs frames of at least {2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1}")
    g = _gaussian_window()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    out = []
    for i in range(a.shape[0]):  # frame by frame: five float64 maps of a 480x832 frame stay small
        x, y = _frame(a, i), _frame(b, i)
        mx, my = _filter(x, g), _filter(y, g)
        vx = _filter(x * x, g) - mx * mx
        vy = _filter(y * y, g) - my * my
        cxy = _filter(x * y, g) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(float(s.mean()))
    return out


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise BadInputError(f"ref and gen differ in shape: {tuple(a.shape)} vs {tuple(b.shape)} (T, H, W, 3)")


def lpips_frames(ref: Any, gen: Any, net: str = "alex", weights=None, batch_size: int = 8) -> list[float]:
    """Per-frame LPIPS at the frames' own resolution."""
    a, b = as_frames(ref, "ref"), as_frames(gen, "gen")
    _same_shape(a, b)
    out = []
    for i in range(0, a.shape[0], batch_size):  # to [-1, 1] a chunk at a time: float32 copies stay small
        idx = range(i, min(i + batch_size, a.shape[0]))
        x = torch.cat([_frame(a, j, torch.float32) for j in idx]) * 2 - 1
        y = torch.cat([_frame(b, j, torch.float32) for j in idx]) * 2 - 1
        out += lpips_distance(x, y, net=net, weights=weights, batch_size=batch_size).tolist()
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def compare_videos(ref: Any, gen: Any, lpips: bool = True, lpips_net: str = "alex", weights=None) -> dict:
    """Per-frame PSNR/SSIM (and LPIPS) of `gen` against `ref`, both (T, H, W, 3) uint8 or [0, 1] float.

    Returns {"frames", "psnr", "ssim", "lpips" (lists per frame), "psnr_mean", "ssim_mean", "lpips_mean"};
    the LPIPS entries are None when lpips=False. Used by `wanrt bench` and `wanrt eval`.
    """
    out: dict[str, Any] = {"frames": int(as_frames(ref, "ref").shape[0]), "psnr": psnr(ref, gen),
                           "ssim": ssim(ref, gen)}
    out["lpips"] = lpips_frames(ref, gen, net=lpips_net, weights=weights) if lpips else None
    out["lpips_net"] = lpips_net if lpips else None
    out["psnr_mean"] = _mean(out["psnr"])
    out["ssim_mean"] = _mean(out["ssim"])
    out["lpips_mean"] = _mean(out["lpips"]) if lpips else None
    return out
