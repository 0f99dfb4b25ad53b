"""Reading videos for the metrics: video files (mp4 and what ffmpeg reads, via imageio-ffmpeg) and frame folders.

A set of videos is a directory holding video files and/or sub-folders of frames (PNG/JPEG/...), taken in natural
name order; a directory that holds only images is itself one video. Frames come back as (T, H, W, 3) uint8.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from wanrt.errors import BadInputError, MissingDependencyError, first_line

VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def natural_key(path: Path) -> list:
    """frame_2.png before frame_10.png."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", path.name)]


def _images(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS), key=natural_key)


def list_videos(directory: str | os.PathLike) -> list[Path]:
    """The videos of a set: video files and frame folders inside `directory`, or `directory` itself."""
    d = Path(directory)
    if not d.is_dir():
        raise BadInputError(f"{d}: not a directory of videos")
    entries = sorted(d.iterdir(), key=natural_key)
    found = [p for p in entries if (p.is_file() and p.suffix.lower() in VIDEO_EXTS) or (p.is_dir() and _images(p))]
    if found:
        return found
    if _images(d):
        return [d]
    raise BadInputError(f"{d}: no videos ({', '.join(sorted(VIDEO_EXTS))}) or frame folders in it")


def _read_frames_dir(path: Path, max_frames: int | None) -> np.ndarray:
    import imageio.v3 as iio

    files = _images(path)[:max_frames]
    frames = []
    for f in files:
        try:
            im = np.asarray(iio.imread(f))
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input
            raise BadInputError(f"{f}: cannot read image ({first_line(e)})") from None
        if im.dtype != np.uint8:
            raise BadInputError(f"{f}: {im.dtype} image; only 8-bit frames are supported")
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=-1)
        if im.ndim != 3 or im.shape[-1] not in (3, 4):
            raise BadInputError(f"{f}: unsupported image shape {im.shape}")
        frames.append(im[..., :3])
    if frames and any(fr.shape != frames[0].shape for fr in frames):
        raise BadInputError(f"{path}: frames differ in size")
    return np.stack(frames)


def _read_video_file(path: Path, max_frames: int | None) -> np.ndarray:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise MissingDependencyError("reading video files needs imageio-ffmpeg: pip install imageio-ffmpeg") from None
    frames = []
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        w, h = meta["size"]
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
        reader.close()
    except (OSError, RuntimeError, StopIteration) as e:
        raise BadInputError(f"{path}: cannot decode video ({first_line(e)})") from None
    if not frames:
        raise BadInputError(f"{path}: no frames decoded")
    return np.stack(frames)


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a video file or frame folder (the first `max_frames` if given)."""
    p = Path(path)
    if p.is_dir():
        if not _images(p):
            raise BadInputError(f"{p}: no image frames in it")
        return _read_frames_dir(p, max_frames)
    if not p.is_file():
        raise BadInputError(f"{p}: no such video")
    return _read_video_file(p, max_frames)


def iter_videos(paths: list[Path], max_frames: int | None = None,
                min_frames: int | None = None) -> Iterator[np.ndarray]:
    """Read videos one at a time (a set of 81-frame 480p videos does not fit in memory at once). `min_frames`:
    a shorter video is refused here, where its file name is known."""
    for p in paths:
        video = read_video(p, max_frames)
        if min_frames is not None and len(video) < min_frames:
            raise BadInputError(f"{p}: {len(video)} frames; FVD clips need at least {min_frames} "
                                "(see --clip-len / --frame-step)")
        yield video


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 16) -> None:
    """Write (T, H, W, 3) uint8 frames as an H.264 mp4 (used by tests and tools to make inputs)."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", quality=None,
                                         pix_fmt_out="yuv444p", output_params=["-crf", "10"], macro_block_size=1)
    writer.send(None)
    for f in frames:
        writer.send(f)
    writer.close()
