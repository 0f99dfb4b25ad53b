"""tools/motion_clips.py: seeded clips of moving capsule figures (issue 22's video task)."""

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from wanrt.artifacts import load_artifact
from wanrt.errors import BadInputError
from wanrt.tools import motion_clips as mc

SIZE = (16, 16)
COUNTS = {"train": 3, "validation": 2, "test": 2}


def test_dataset_bytes_are_a_function_of_the_seed(tmp_path):
    a = mc.write_dataset(tmp_path / "a", 5, "pretrain", COUNTS, 5, SIZE, camera_pan=True)
    mc.write_dataset(tmp_path / "b", 5, "pretrain", COUNTS, 5, SIZE, camera_pan=True)
    mc.write_dataset(tmp_path / "c", 6, "pretrain", COUNTS, 5, SIZE, camera_pan=True)
    names = sorted(a["contents"])
    assert names == sorted(f"{s}-{k}.npy" for s in COUNTS for k in ("clips", "motions"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train-clips.npy").read_bytes() != (tmp_path / "c" / "train-clips.npy").read_bytes()
    manifest = load_artifact(tmp_path / "a", kind=mc.KIND)  # sha256 of every file checked
    assert manifest["specs"]["generator_version"] == mc.GENERATOR_VERSION
    clips = np.load(tmp_path / "a" / "train-clips.npy")
    assert clips.shape == (3, 5, *SIZE, 3) and clips.dtype == np.uint8



def test_still_clips_hold_frame_0_in_every_frame(tmp_path):
    moving = mc.write_dataset(tmp_path / "m", 5, "pretrain", COUNTS, 5, SIZE, camera_pan=True)
    still = mc.write_dataset(tmp_path / "s", 5, "pretrain", COUNTS, 5, SIZE, camera_pan=True, still=True)
    assert still["specs"]["still"] and not moving["specs"]["still"]
    m, s = (np.load(tmp_path / d / "train-clips.npy") for d in ("m", "s"))
    assert (s == s[:, :1]).all() and np.array_equal(s[:, 0], m[:, 0]) and not (m == m[:, :1]).all()

def test_splits_are_disjoint_seed_ranges_and_distinct_clips():
    seeds = {s: {mc.clip_seed(s, i) for i in range(999_999)} for s in mc.SPLITS}
    assert not (seeds["train"] & seeds["validation"] or seeds["train"] & seeds["test"]
                or seeds["validation"] & seeds["test"])
    clips = {s: mc.make_split(0, "downstream", s, 4, 5, SIZE, False)[0] for s in mc.SPLITS}
    flat = [c.tobytes() for s in mc.SPLITS for c in clips[s]]
    assert len(set(flat)) == len(flat)


def test_motion_sets_declare_disjoint_motions():
    clips, motions, params = mc.make_split(0, "downstream", "train", 4, 5, SIZE, False)
    assert {mc.MOTIONS[m] for m in motions} == set(mc.MOTION_SETS["downstream"]) == {p.motion for p in params}
    assert not set(mc.MOTION_SETS["pretrain"]) & set(mc.MOTION_SETS["downstream"])


@pytest.mark.parametrize("frames", [0, 4, 6, 16])
def test_frames_must_be_4k_plus_1(frames):
    with pytest.raises(BadInputError, match="4k\\+1"):
        mc.make_split(0, "pretrain", "train", 1, frames, SIZE, False)


@pytest.mark.parametrize("motion", mc.MOTIONS)
def test_figure_moves_and_static_camera_keeps_background_still(motion):
    params = replace(mc.draw_params(1, "pretrain", "train", 0, camera_pan=False), motion=motion, texture="checks")
    frames, masks = mc.render_clip(params, 9, (32, 32))
    assert frames.shape == (9, 32, 32, 3) and masks.any(axis=(1, 2)).all()
    figure = masks.any(axis=0)  # every pixel the figure touches in any frame
    moving = np.abs(np.diff(frames.astype(int), axis=0)).sum(axis=-1)
    assert moving[:, figure].sum(axis=1).min() > 0  # every frame-to-frame step changes the figure's region
    assert (masks[1:] != masks[:-1]).any(axis=(1, 2)).sum() >= 4  # the silhouette itself changes, not only colours
    assert moving[:, ~figure].max() == 0  # the background never changes without a pan


def test_camera_pan_moves_the_background():
    params = replace(mc.draw_params(1, "pretrain", "train", 0, camera_pan=True), texture="stripes", pan=0.3)
    frames, masks = mc.render_clip(params, 5, (32, 32))
    background = ~masks.any(axis=0)
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int))[background].sum() > 0


def test_cli_refuses_bad_frames_in_one_line_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(mc.main, ["-o", str(tmp_path / "d"), "--frames", "8"])
    assert result.exit_code != 0 and "4k+1" in result.output.strip().splitlines()[-1]
    assert not (tmp_path / "d").exists()
