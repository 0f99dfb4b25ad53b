"""The trained motion model wanrt ships (runtime/motion.py): pinned by sha256, refused when altered, and trained:
its samples start from the input frame and land far closer to the real clips than the same network untrained."""

import json
import shutil

import pytest
import safetensors
import safetensors.torch
import torch
from click.testing import CliRunner
from diffusers import WanTransformer3DModel

from wanrt.commands.export import demo_motion
from wanrt.artifacts import sha256_file
from wanrt.errors import BadInputError
from wanrt.runtime import motion


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    return motion.load_shipped()


def test_the_shipped_file_is_pinned_and_an_altered_copy_is_refused(shipped, tmp_path):
    assert shipped.clips.dtype == torch.uint8 and tuple(shipped.clips.shape[1:]) == (17, 32, 32, 3)
    assert shipped.record["model"] in motion.MOTION_MODELS and shipped.record["final_validation"] < 0.1
    copy = tmp_path / "motion.safetensors"
    shutil.copyfile(motion.SHIPPED, copy)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # one bit of one demo clip's pixel
    copy.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="sha256"):
        motion.load_shipped(copy, sha256=motion.SHIPPED_SHA256)
    with pytest.raises(BadInputError, match="sha256"):
        motion.load_shipped(copy)  # no pin for a file other than the shipped one: refused, never trusted


def test_a_file_of_another_conditioning_is_refused(tmp_path):
    """The shipped file records its conditioning version; one without it (version 1, whose image branch read no
    token) is refused even when its sha256 is pinned: its inputs would mean something else to it."""
    tensors = safetensors.torch.load_file(str(motion.SHIPPED))
    with safetensors.safe_open(str(motion.SHIPPED), "pt") as f:
        meta = json.loads(f.metadata()["wanrt"])
    assert meta["conditioning"] == motion.CONDITIONING
    del meta["conditioning"]
    old = tmp_path / "v1.safetensors"
    old.write_bytes(safetensors.torch.save(tensors, metadata={"wanrt": json.dumps(meta)}))
    with pytest.raises(BadInputError, match="conditioning v1, this wanrt feeds v2"):
        motion.load_shipped(old, sha256=sha256_file(old))


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


def test_trained_samples_follow_the_input_frame_unlike_the_untrained_network(shipped):
    # measured (4 clips, 20 steps, seeds 0-2; the model shipped 2026-12-08): frame 0 off by 4.2-4.4 levels, whole
    # clip 13.3-14.5 levels from the real one; the untrained network: 103-105 and 103. (Copying frame 0 forward
    # scores 12.1: the motion is not learnt well enough yet; docs/results/motion-study.md.)
    real = shipped.clips
    fake = shipped.sample(20)
    torch.manual_seed(0)
    untrained = motion.ShippedMotion(WanTransformer3DModel(**motion.MOTION_MODELS[shipped.record["model"]]).eval(),
                                     shipped.shift, real, shipped.motions, {}).sample(20)
    assert mean_abs(fake[:, 0], real[:, 0]) < 8 < 60 < mean_abs(untrained[:, 0], real[:, 0])
    assert mean_abs(fake, real) < 0.2 * mean_abs(untrained, real)
    assert motion.movement(fake) > 0.5 * motion.movement(real)  # the frames change; a still would be 0


def test_demo_motion_writes_the_strip_and_says_how_far_frames_move(tmp_path):
    from PIL import Image

    line = demo_motion(tmp_path / "motion.png", steps=2)
    image = Image.open(tmp_path / "motion.png")
    assert image.size == (17 * 32 * 4, 8 * 32 * 4)  # 17 frames wide; 4 clips x (real, sample) high; 4x upscaled
    assert "from the real clips" in line and "copied forward" in line and "motion.png" in line


def test_score_puts_a_candidate_run_beside_the_shipped_model(shipped, tmp_path):
    """`motion_ship --score --candidate RUN`: the shipped weights saved as a motion-train run score exactly as the
    shipped model (same clips, sampling seed and shift), and a run that is not one is a one-line refusal."""
    from wanrt.tools import motion_clips, motion_ship, train_small

    data = tmp_path / "clips"
    motion_clips.write_dataset(data, 0, "pretrain", {"train": 1, "validation": 1, "test": 4}, 17, (32, 32), False)
    run = tmp_path / "shipped-run"
    cfg = train_small.TrainConfig(**shipped.record["run_specs"])
    train_small.save_run(run, cfg, shipped.model, None, {"trainable_parameters": 0, "validation": [[0, 0.0]]})
    scores = motion_ship.score_shipped(str(data), 4, 1, (str(run),))
    assert scores["candidates"] == {str(run): scores["shipped"]}
    assert scores["shipped"]["fvd"] < scores["untrained"]["fvd"] and 0 < scores["shipped"]["lpips"] < 1
    errors = {k: scores[k]["one_step_frame_error"] for k in ("shipped", "untrained", "still")}
    assert all(len(e) == 17 for e in errors.values()) and errors["still"][0] == 0 < errors["still"][16]
    assert errors["shipped"][0] < 20 < errors["untrained"][0]  # frame 0 is in the input; untrained: ~100 levels
    result = CliRunner().invoke(motion_ship.main, ["--score", str(tmp_path / "s.json"), "--data", str(data),
                                                   "--candidate", str(data)])
    assert result.exit_code != 0 and "error:" in result.output and not (tmp_path / "s.json").exists()
    result = CliRunner().invoke(motion_ship.main, ["--run", str(run), "--data", str(data), "-o",
                                                   str(tmp_path / "m.safetensors"), "--candidate", str(run)])
    assert result.exit_code != 0 and "only with --score" in result.output
    assert not (tmp_path / "m.safetensors").exists()
