"""tools/stage_cost_model.py: the FLOPs it counts on the meta device equal the closed forms of the architectures, the
VAE's scale with the video, and a video's prediction is the sum of its stages with the schedule's multiplicities."""

import pytest

from wanrt.tools.stage_cost_model import CONFIGS, predict_video, stage_flops


@pytest.fixture(scope="module")
def small_video():
    return stage_flops(5, 64, 64, i2v=True)


def test_encoder_flops_equal_their_closed_forms(small_video):
    # UMT5-XXL, 512 tokens, 24 layers: q/k/v/o 4 D^2 (64 heads x 64 = D) and the gated FFN 3 D F, plus QK^T and AV
    d, layers, t, f = 4096, 24, 512, 10240
    text = 2 * t * (4 * d * d + 3 * d * f) * layers + 4 * t * t * d * layers
    assert small_video["text"]["flops"] == pytest.approx(text, rel=1e-9)
    # CLIP ViT-H/14, 257 tokens, 32 layers of 12 D^2 each, attention, and the 14x14 patch embedding of 256 patches
    d, layers, n = 1280, 32, 257
    image = 2 * n * 12 * d * d * layers + 4 * n * n * d * layers + 2 * 256 * 3 * 14 * 14 * d
    assert small_video["image"]["flops"] == pytest.approx(image, rel=1e-9)


def test_vae_flops_scale_with_the_video(small_video):
    """Convolutions: 4x the pixels, 4x the FLOPs (the same frames), plus a little: the mid-block's attention over
    each frame's latent pixels grows with their square. T2V runs no image or VAE encode."""
    bigger = stage_flops(5, 128, 128, i2v=False)
    assert set(bigger) == {"text", "vae_decode"}
    ratio = bigger["vae_decode"]["flops"] / small_video["vae_decode"]["flops"]
    assert 4.0 < ratio < 4.0 * 1.001, ratio


def test_prediction_sums_stages_with_the_schedule(small_video):
    spec = CONFIGS["wan2.1-i2v-480p"]
    rows = predict_video("wan2.1-i2v-480p", spec, small_video)
    assert {r["schedule"] for r in rows} == {"wan-40step-cfg", "distill-4step"}
    for r in rows:
        assert r["label"].startswith("PREDICTION") and r["tokens"] == 32760
        assert r["video_s"] == pytest.approx(sum(r["stages_s"].values()))
    by = {(r["gpu"], r["schedule"]): r for r in rows}
    gpu = rows[0]["gpu"]
    cfg, fast = by[(gpu, "wan-40step-cfg")]["stages_s"], by[(gpu, "distill-4step")]["stages_s"]
    assert cfg["dit"] == pytest.approx(20 * fast["dit"])  # 80 forwards against 4
    assert cfg["text"] == pytest.approx(2 * fast["text"]) and cfg["vae_decode"] == fast["vae_decode"]
