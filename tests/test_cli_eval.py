"""`wanrt eval` on what `wanrt generate` writes: too-short videos get PSNR/SSIM and a note on how to get FVD (not an
error after the work); FVD from a few clips comes with a small-sample warning. Frame folders, no LPIPS: seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _videos(root: Path, n: int, frames: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for v in range(n):
        d = root / f"v{v}"
        d.mkdir(parents=True)
        for f in range(frames):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{f:03d}.png")
    return root


def _eval(ref: Path, gen: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wanrt", "eval", "--ref", str(ref), "--gen", str(gen), "--no-lpips"],
                          capture_output=True, text=True, timeout=300, check=False)


def test_short_videos_report_frames_and_how_to_get_fvd(tmp_path):
    ref, gen = _videos(tmp_path / "ref", 2, 5, 0), _videos(tmp_path / "gen", 2, 5, 1)
    r = _eval(ref, gen)
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout and "SSIM" in r.stdout
    fvd = " ".join(line for line in r.stdout.splitlines() if "FVD" in line or "skipped" in line or "shape" in line)
    assert "skipped" in fvd and "5 frames" in fvd and "17x" in " ".join(r.stdout.split()), r.stdout


def test_fvd_from_few_clips_is_flagged(tmp_path):
    ref, gen = _videos(tmp_path / "ref", 2, 17, 0), _videos(tmp_path / "gen", 2, 17, 1)
    r = _eval(ref, gen)
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning: FVD")]
    assert len(warning) == 1 and "2 vs 2 clips" in warning[0] and "noise floor" in warning[0], r.stderr
