"""Fréchet Video Distance with the TF-Hub I3D Kinetics-400 network (ported in i3d.py).

Protocol (defaults follow the common fvd-2048 / StyleGAN-V setup; every choice that moves the score is a field of
FVDConfig and is recorded with each result, see docs/metrics.md):
  * clips of `clip_len`=16 consecutive frames (`frame_step` 1); one clip per video starting at `clip_start` 0,
    or, with `clip_stride`, every window start clip_start, clip_start + stride, ... that fits (at most
    `max_clips_per_video`);
  * frames to [-1, 1], then to 224x224: `resize`="bilinear" (whole frame, aspect not kept, half-pixel centres, no
    antialias: torch.nn.functional.interpolate / StyleGAN-V), "bilinear-tf1" (TF1 `tf.image.resize_bilinear`, the
    legacy corner-aligned-to-origin sampling of the original google-research FVD code) or "center-crop" (shorter
    side to 224 with bilinear, then the central 224x224);
  * feature: the 400 logits averaged over time; covariance unbiased (N-1, as np.cov and TF-GAN) unless
    `unbiased_cov`=False;
  * Fréchet distance in float64 with the symmetric square root (eigendecomposition), see frechet_distance.

The noise floor is the FVD between two reference runs that differ only in their seed, at the same N: a measured FVD
below it is noise. `fvd()` reports it next to every score.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from wanrt.choices import ResizeMode
from wanrt.errors import BadInputError
from wanrt.runtime.metrics.i3d import INPUT_SIZE, load_i3d

RESIZE_MODES = ResizeMode.values()


@dataclasses.dataclass(frozen=True)
class FVDConfig:
    clip_len: int = 16
    frame_step: int = 1  # take every frame_step-th frame inside a clip
    clip_start: int = 0  # first frame of the first clip
    clip_stride: int | None = None  # None: one clip per video; else the step between window starts
    max_clips_per_video: int | None = None
    resize: str = "bilinear"
    unbiased_cov: bool = True
    batch_size: int = 4  # clips per I3D forward (speed and memory, not the score)

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise BadInputError(f"FVD resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.clip_len < 9:  # I3D's time axis shrinks by 8; the final 2-frame average pool needs at least 2
            raise BadInputError(f"FVD clip_len must be at least 9 (the I3D protocol uses 16), got {self.clip_len}")
        for name in ("frame_step", "batch_size"):
            if getattr(self, name) < 1:
                raise BadInputError(f"FVD {name} must be >= 1")
        if self.clip_start < 0 or (self.clip_stride is not None and self.clip_stride < 1):
            raise BadInputError("FVD clip_start must be >= 0 and clip_stride >= 1")
        if self.max_clips_per_video is not None and self.max_clips_per_video < 1:
            raise BadInputError("FVD max_clips_per_video must be >= 1")

    @property
    def span(self) -> int:
        """Frames covered by one clip."""
        return (self.clip_len - 1) * self.frame_step + 1

    def frames_needed(self) -> int | None:
        """How many leading frames a video must be read for (None: all of them)."""
        return self.clip_start + self.span if self.clip_stride is None else None


@dataclasses.dataclass
class FVDResult:
    fvd: float
    noise_floor: float | None
    floor_kind: str | None  # "seed-pair" (a second reference run at the same N) or "split-half" (N/2 vs N/2)
    n_ref_videos: int
    n_gen_videos: int
    n_ref_clips: int
    n_gen_clips: int
    config: FVDConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def clip_starts(num_frames: int, config: FVDConfig) -> list[int]:
    last = num_frames - config.span
    if last < config.clip_start:
        raise BadInputError(f"video has {num_frames} frames; an FVD clip needs {config.clip_start + config.span} "
                            f"(clip_start {config.clip_start}, clip_len {config.clip_len}, step {config.frame_step})")
    if config.clip_stride is None:
        return [config.clip_start]
    starts = list(range(config.clip_start, last + 1, config.clip_stride))
    return starts[: config.max_clips_per_video] if config.max_clips_per_video else starts


def _resize_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 tf.image.resize_bilinear (align_corners=False, half_pixel_centers=False): src = dst * in / out."""
    def axis(n_in: int):
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, (src - i0).to(x.dtype)

    y0, y1, dy = axis(x.shape[-2])
    x0, x1, dx = axis(x.shape[-1])
    top, bottom = x[..., y0, :], x[..., y1, :]
    rows = top + (bottom - top) * dy.view(-1, 1)
    left, right = rows[..., x0], rows[..., x1]
    return left + (right - left) * dx


def preprocess_clip(clip: Any, resize: str = "bilinear") -> torch.Tensor:
    """(T, H, W, 3) uint8 or [0, 1] float -> (3, T, 224, 224) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(clip)) if not isinstance(clip, torch.Tensor) else clip.detach().cpu()
    if t.ndim != 4 or t.shape[-1] != 3:
        raise BadInputError(f"expected (T, H, W, 3) frames, got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 127.5 - 1.0  # the same float32 ops as the reference inputs
    elif t.is_floating_point():
        t = t.float() * 2.0 - 1.0
    else:
        raise BadInputError(f"frames must be uint8 or float in [0, 1], got {t.dtype}")
    t = t.permute(0, 3, 1, 2)  # T, 3, H, W
    h, w = t.shape[-2:]
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        if resize == "bilinear":
            t = F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        elif resize == "bilinear-tf1":
            t = _resize_tf1(t, INPUT_SIZE)
        elif resize == "center-crop":
            scale = INPUT_SIZE / min(h, w)
            nh, nw = max(INPUT_SIZE, round(h * scale)), max(INPUT_SIZE, round(w * scale))
            t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)
            top, left = (nh - INPUT_SIZE) // 2, (nw - INPUT_SIZE) // 2
            t = t[..., top : top + INPUT_SIZE, left : left + INPUT_SIZE]
        else:
            raise BadInputError(f"unknown resize mode {resize!r}")
    return t.permute(1, 0, 2, 3).contiguous()


def video_clips(video: Any, config: FVDConfig) -> list[torch.Tensor]:
    """The preprocessed (3, clip_len, 224, 224) clips of one (T, H, W, 3) video."""
    n = len(video)
    return [preprocess_clip(video[s : s + config.span : config.frame_step], config.resize)
            for s in clip_starts(n, config)]


def i3d_features(videos: Iterable[Any], config: FVDConfig = FVDConfig(), weights: str | os.PathLike | None = None,
                 model: torch.nn.Module | None = None, progress: Callable[[int], None] | None = None,
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """I3D features of every clip of every video: (features (n_clips, 400) float64, video index per clip).

    `videos` may be a lazy iterable (e.g. videos.iter_videos), read one at a time. `progress(n_clips_done)`.
    `device`: where I3D runs; on CUDA in true float32 (TF32 off), since the reference is float32.
    """
    model = (model if model is not None else load_i3d(weights)).to(device)
    feats: list[np.ndarray] = []
    owners: list[int] = []
    batch: list[torch.Tensor] = []

    def flush():
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            feats.append(model(torch.stack(batch).to(device)).double().cpu().numpy())
        batch.clear()
        if progress is not None:
            progress(sum(len(f) for f in feats))

    for vi, video in enumerate(videos):
        for clip in video_clips(video, config):
            batch.append(clip)
            owners.append(vi)
            if len(batch) == config.batch_size:
                flush()
    if batch:
        flush()
    if not feats:
        raise BadInputError("no videos to compute FVD features from")
    return np.concatenate(feats), np.asarray(owners)


def gaussian_stats(features: np.ndarray, unbiased: bool = True) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise BadInputError(f"FVD needs at least 2 clips per set, got {f.shape[0] if f.ndim == 2 else f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1 if unbiased else 0)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), in float64.

    tr((S1 S2)^1/2) equals the trace of the square root of the symmetric PSD matrix S1^1/2 S2 S1^1/2, whose
    eigenvalues are real and non-negative: two eigendecompositions, negative round-off clipped to 0, no complex
    parts to discard (unlike scipy.linalg.sqrtm(S1 @ S2) on the non-symmetric product).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise BadInputError("Fréchet distance: mean/covariance shapes do not match")
    root1 = _sqrt_psd(s1)
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)  # round-off can make identical sets land a hair below zero


def fvd_from_features(ref: np.ndarray, gen: np.ndarray, unbiased: bool = True) -> float:
    return frechet_distance(*gaussian_stats(ref, unbiased), *gaussian_stats(gen, unbiased))


def split_half_floor(features: np.ndarray, owners: np.ndarray, unbiased: bool = True) -> float:
    """FVD between the even- and odd-numbered videos of one set (a floor at N/2 when no second run exists)."""
    even = features[owners % 2 == 0]
    odd = features[owners % 2 == 1]
    return fvd_from_features(even, odd, unbiased)


def noise_floor(run_a: Iterable[Any], run_b: Iterable[Any], config: FVDConfig = FVDConfig(),
                weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> float:
    """FVD between two reference (eager) runs with different seeds at the same N."""
    fa, _ = i3d_features(run_a, config, weights, device=device)
    fb, _ = i3d_features(run_b, config, weights, device=device)
    return fvd_from_features(fa, fb, config.unbiased_cov)


def fvd(ref_videos: Iterable[Any], gen_videos: Iterable[Any], config: FVDConfig = FVDConfig(),
        floor_videos: Iterable[Any] | None = None, weights: str | os.PathLike | None = None,
        progress: Callable[[str, int], None] | None = None, device: str | torch.device = "cpu") -> FVDResult:
    """FVD of `gen_videos` against `ref_videos` with its noise floor.

    Videos: (T, H, W, 3) uint8 or [0, 1] float arrays (or a lazy iterable of them). `floor_videos`: a second
    reference run (other seed, same N): the floor is FVD(ref, floor). Without it the floor is the split-half FVD of
    the reference set (N/2 vs N/2; needs >= 2 clips on each side), or None when the set is too small.
    """
    def prog(tag):
        return (lambda n: progress(tag, n)) if progress else None

    ref, ref_owner = i3d_features(ref_videos, config, weights, progress=prog("ref"), device=device)
    gen, gen_owner = i3d_features(gen_videos, config, weights, progress=prog("gen"), device=device)
    score = fvd_from_features(ref, gen, config.unbiased_cov)
    if floor_videos is not None:
        other, _ = i3d_features(floor_videos, config, weights, progress=prog("floor"), device=device)
        if len(other) != len(ref):
            raise BadInputError(f"noise-floor set has {len(other)} clips, the reference {len(ref)}: the floor must "
                                "be measured at the same N")
        floor, kind = fvd_from_features(ref, other, config.unbiased_cov), "seed-pair"
    elif min((ref_owner % 2 == 0).sum(), (ref_owner % 2 == 1).sum()) >= 2:
        floor, kind = split_half_floor(ref, ref_owner, config.unbiased_cov), "split-half"
    else:
        floor, kind = None, None
    return FVDResult(fvd=score, noise_floor=floor, floor_kind=kind,
                     n_ref_videos=int(ref_owner.max()) + 1, n_gen_videos=int(gen_owner.max()) + 1,
                     n_ref_clips=len(ref), n_gen_clips=len(gen), config=config)


__all__ = ["FVDConfig", "FVDResult", "RESIZE_MODES", "clip_starts", "preprocess_clip", "video_clips", "i3d_features",
           "gaussian_stats", "frechet_distance", "fvd_from_features", "split_half_floor", "noise_floor", "fvd"]
