"""`wanrt eval` as a newcomer and an attacker meet it: metric weights with one flipped byte (refused, never
scored with), `--json` into a folder that does not exist (refused before any metric), and the one pair of videos
that `wanrt generate` writes by default (per-pair metrics printed, FVD explained, exit 0).

The weight files here are small stand-ins with a weights.json as `wanrt weights fetch` writes it: every check
under test happens before a network is built, so no real weights are needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wanrt.artifacts import sha256_file
from wanrt.commands.main import cli
from wanrt.runtime.metrics import weights as W


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    """A --weights folder as `fetch --weights DIR` leaves it (stand-in tensors, their sha256 in weights.json); the
    default cache and the torch hub cache point at empty folders."""
    from safetensors.numpy import save_file

    monkeypatch.setenv("WANRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    d = tmp_path / "weights"
    d.mkdir()
    files = {}
    for name, filename in W.WEIGHT_FILES.items():
        save_file({"w": np.arange(64, dtype=np.float32)}, str(d / filename))
        files[filename] = {"weights": name, "sha256": sha256_file(d / filename)}
    (d / W.MANIFEST).write_text(json.dumps({"files": files}))
    return d


def _pair(root: Path, frames: int = 17) -> tuple[Path, Path]:
    """One reference and one generated video, 17x32x32 as `wanrt generate` writes by default."""
    from wanrt.runtime.metrics import videos

    rng = np.random.default_rng(0)
    clip = np.repeat(np.repeat(rng.integers(0, 256, (frames, 8, 8, 3), dtype=np.uint8), 4, 1), 4, 2)
    noisy = np.clip(clip.astype(int) + rng.integers(-8, 9, clip.shape), 0, 255).astype(np.uint8)
    for side, video in (("ref", clip), ("gen", noisy)):
        (root / side).mkdir(parents=True)
        videos.write_video(root / side / "video.mp4", video)
    return root / "ref", root / "gen"


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: the file still parses, the numbers differ
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flipped, flags", [("i3d", ["--no-lpips"]), ("lpips-alex", ["--no-fvd"])])
def test_a_flipped_byte_in_the_metric_weights_is_refused(tmp_path, weights_dir, flipped, flags):
    ref, gen = _pair(tmp_path / "v")
    target = weights_dir / W.WEIGHT_FILES[flipped]
    _flip_one_byte(target)
    r = CliRunner().invoke(cli, ["eval", "--ref", str(ref), "--gen", str(gen), "--weights", str(weights_dir), *flags])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "sha256" in lines[0], r.output
    assert f"wanrt weights fetch --weights {weights_dir}" in lines[0] and target.name in lines[0]
    with pytest.raises(Exception, match="sha256"):  # the loaders refuse it too, not only the CLI
        W.load_state_dict(flipped, weights_dir)


def test_json_into_a_missing_folder_is_refused_before_any_metric(tmp_path):
    ref, gen = _pair(tmp_path / "v")
    out = tmp_path / "no-such-dir" / "x.json"
    r = CliRunner().invoke(cli, ["eval", "--ref", str(ref), "--gen", str(gen), "--no-lpips", "--no-fvd",
                                 "--json", str(out)])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "does not exist" in lines[0], r.output  # no "frames 1/1" first
    assert not out.parent.exists()


def test_one_pair_reports_frame_metrics_and_how_to_get_fvd(tmp_path, weights_dir):
    ref, gen = _pair(tmp_path / "v")
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(cli, ["eval", "--ref", str(ref), "--gen", str(gen), "--weights", str(weights_dir),
                                 "--no-lpips", "--json", str(out)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "PSNR (dB)" in text and "SSIM" in text, r.output
    result = json.loads(out.read_text())
    assert result["paired"] and 10 < result["frames"]["psnr"] < 100 and 0 < result["frames"]["ssim"] <= 1
    skipped = result["fvd"]["skipped"]
    assert "at least 2" in skipped and "1 reference and 1 generated" in skipped and "--clip-stride" in skipped
    note = [ln for ln in r.output.splitlines() if ln.startswith("FVD skipped:")]
    assert len(note) == 1 and "at least 2 per set" in note[0] and "--clip-stride 1" in note[0], r.output
