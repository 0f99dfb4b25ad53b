"""Quality metrics with the standard networks, offline: PSNR/SSIM, LPIPS v0.1 and FVD (TF-Hub I3D), in PyTorch.

The Python API used by `wanrt bench` and `wanrt eval` (see docs/metrics.md):

    compare_videos(ref, gen) -> {"psnr": [...], "ssim": [...], "lpips": [...], "psnr_mean", ...}   # per frame
    fvd(ref_videos, gen_videos, FVDConfig(), floor_videos=None) -> FVDResult(fvd, noise_floor, ...)
    noise_floor(eager_seed_a, eager_seed_b, FVDConfig()) -> float

Names are imported lazily, so `import wanrt.runtime.metrics` (and the CLI) stays cheap and torch-free until used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compare_videos": "frames", "psnr": "frames", "ssim": "frames", "lpips_frames": "frames",
    "LPIPS": "lpips", "load_lpips": "lpips", "lpips_distance": "lpips",
    "InceptionI3d": "i3d", "load_i3d": "i3d",
    "FVDConfig": "frechet", "FVDResult": "frechet", "RESIZE_MODES": "frechet", "fvd": "frechet",
    "noise_floor": "frechet", "i3d_features": "frechet", "frechet_distance": "frechet",
    "fvd_from_features": "frechet", "gaussian_stats": "frechet",
    "read_video": "videos", "list_videos": "videos", "iter_videos": "videos", "write_video": "videos",
    "MissingWeightsError": "weights", "UnsafePickleError": "weights", "fetch": "weights", "resolve": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
