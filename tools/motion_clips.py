"""Seeded clips of articulated capsule figures: the human-motion video task of issue 22, drawn with numpy only.

    python -m wanrt.tools.motion_clips -o data/motion --set pretrain --train 64 --validation 16 --test 16
    python -m wanrt.tools.motion_clips -o data/motion-down --set downstream --frames 17 --size 32

A figure is ten capsules (torso, head, two upper arms, forearms, thighs, shins) on a skeleton whose joint angles
follow a parametric gait (walk, run, jump, wave, squat). Each clip draws its limb proportions, clothing and skin
colours, background colour and texture (plain, stripes, checks), gait phase and speed, and camera pan from one RNG
seeded by (dataset seed, set, clip seed), so a clip is the same bytes on every machine. Splits are disjoint ranges
of clip seeds (SPLIT_SEED_BASE). Frames are 4k+1 as Wan wants; frame 0 is the I2V conditioning image.

Declared data (MOTION_SETS): `pretrain` = walk, run, jump; `downstream` = wave, squat (motions the pretrained model
never saw, same appearance distribution). Rendering is 2x supersampled and box-filtered to the output size.

Output directory (a wanrt artifact of kind `motion-clips`, written atomically): `<split>-clips.npy` uint8
[N, T, H, W, 3], `<split>-motions.npy` int16 [N] (index into the manifest's `motions`), and manifest.json with the
generator version, every parameter and the sha256 of each file.
"""

from __future__ import annotations

import io
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from wanrt.artifacts import atomic_output_dir, build_manifest, write_bytes_atomic, write_manifest
from wanrt.errors import BadInputError, WanrtError
from wanrt.runtime.motion import MOTIONS, frame_strip_png

GENERATOR_VERSION = 1  # bump on any change that alters a clip's bytes
KIND = "motion-clips"
MOTION_SETS = {"pretrain": ("walk", "run", "jump"), "downstream": ("wave", "squat")}
SPLITS = ("train", "validation", "test")
SPLIT_SEED_BASE = {"train": 0, "validation": 1_000_000, "test": 2_000_000}  # disjoint while count < 1e6
SUPERSAMPLE = 2
# (segment start joint, end joint, radius as a fraction of body height, colour slot)
BONES = (("hip", "neck", 0.075, "shirt"), ("chin", "head", 0.07, "skin"),
         ("neck", "elbow_l", 0.035, "shirt"), ("elbow_l", "hand_l", 0.03, "skin"),
         ("neck", "elbow_r", 0.035, "shirt"), ("elbow_r", "hand_r", 0.03, "skin"),
         ("hip", "knee_l", 0.045, "pants"), ("knee_l", "foot_l", 0.04, "pants"),
         ("hip", "knee_r", 0.045, "pants"), ("knee_r", "foot_r", 0.04, "pants"))


@dataclass(frozen=True)
class ClipParams:
    """Everything that decides one clip, drawn from its RNG."""

    motion: str
    torso: float  # segment lengths as fractions of the frame height
    upper_arm: float
    forearm: float
    thigh: float
    shin: float
    shirt: tuple[int, int, int]
    pants: tuple[int, int, int]
    skin: tuple[int, int, int]
    background: tuple[int, int, int]
    texture: str  # plain | stripes | checks
    texture_period: float  # in frame widths
    cycles_per_clip: float  # gait cycles over the whole clip
    phase: float
    start_x: float  # hip x as a fraction of the width at frame 0
    speed: float  # hip travel over the clip, fraction of the width (0 for in-place motions)
    pan: float  # camera travel over the clip, fraction of the width (0: static camera)


def clip_seed(split: str, index: int) -> int:
    return SPLIT_SEED_BASE[split] + index


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, size=3))


def draw_params(seed: int, motion_set: str, split: str, index: int, camera_pan: bool) -> ClipParams:
    """The clip's parameters from its own RNG: np.random.default_rng([seed, set, clip seed])."""
    motions = MOTION_SETS[motion_set]
    rng = np.random.default_rng([seed, list(MOTION_SETS).index(motion_set), clip_seed(split, index)])
    motion = motions[index % len(motions)]
    travels = motion in ("walk", "run")
    direction = rng.choice([-1.0, 1.0])
    return ClipParams(
        motion=motion,
        torso=float(rng.uniform(0.2, 0.26)), upper_arm=float(rng.uniform(0.1, 0.14)),
        forearm=float(rng.uniform(0.09, 0.13)), thigh=float(rng.uniform(0.13, 0.17)),
        shin=float(rng.uniform(0.12, 0.16)),
        shirt=_colour(rng, 40, 256), pants=_colour(rng, 20, 200), skin=_colour(rng, 150, 256),
        background=_colour(rng, 0, 120), texture=str(rng.choice(["plain", "stripes", "checks"])),
        texture_period=float(rng.uniform(0.15, 0.4)),
        cycles_per_clip=float(rng.uniform(1.0, 1.6) * (1.5 if motion == "run" else 1.0)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        start_x=float(0.5 - direction * rng.uniform(0.1, 0.2)) if travels else float(rng.uniform(0.4, 0.6)),
        speed=float(direction * rng.uniform(0.15, 0.3) * (1.5 if motion == "run" else 1.0)) if travels else 0.0,
        pan=float(rng.uniform(-0.25, 0.25)) if camera_pan else 0.0,
    )


def joint_angles(motion: str, p: float) -> dict[str, float]:
    """Angles (radians from straight down, positive towards +x) of each bone at gait phase p, and the hip's lift
    (fraction of the frame height) and the torso's lean. Knee and elbow angles are relative to the parent bone."""
    s, c = np.sin(p), np.cos(p)
    if motion == "walk":
        return dict(thigh_l=0.45 * s, thigh_r=-0.45 * s, knee_l=0.5 * max(0.0, -c), knee_r=0.5 * max(0.0, c),
                    arm_l=-0.4 * s, arm_r=0.4 * s, elbow_l=0.3, elbow_r=0.3, lift=0.01 * abs(c), lean=0.05)
    if motion == "run":
        return dict(thigh_l=0.8 * s, thigh_r=-0.8 * s, knee_l=1.2 * max(0.0, -c), knee_r=1.2 * max(0.0, c),
                    arm_l=-0.7 * s, arm_r=0.7 * s, elbow_l=1.3, elbow_r=1.3, lift=0.04 * abs(c), lean=0.25)
    if motion == "jump":
        air = max(0.0, s)  # airborne half of the cycle; crouch in the other half
        crouch = max(0.0, -s)
        return dict(thigh_l=0.7 * crouch, thigh_r=0.7 * crouch, knee_l=-1.3 * crouch, knee_r=-1.3 * crouch,
                    arm_l=-2.6 * air - 0.3 * crouch, arm_r=2.6 * air + 0.3 * crouch, elbow_l=0.1, elbow_r=-0.1,
                    lift=0.18 * air - 0.08 * crouch, lean=0.2 * crouch)
    if motion == "wave":
        return dict(thigh_l=-0.1, thigh_r=0.1, knee_l=0.0, knee_r=0.0, arm_l=-0.2, arm_r=2.4,
                    elbow_l=0.1, elbow_r=0.7 * s, lift=0.0, lean=0.0)
    if motion == "squat":
        down = 0.5 * (1 - c)
        return dict(thigh_l=1.3 * down, thigh_r=1.3 * down, knee_l=-2.2 * down, knee_r=-2.2 * down,
                    arm_l=1.5 * down, arm_r=1.5 * down, elbow_l=0.0, elbow_r=0.0, lift=-0.12 * down,
                    lean=0.3 * down)
    raise BadInputError(f"motion {motion!r}: choose one of {', '.join(MOTIONS)}", param="motion")


def skeleton(params: ClipParams, t: float) -> dict[str, np.ndarray]:
    """Joint positions (x, y in frame fractions, y down) at clip time t in [0, 1], in world coordinates."""
    a = joint_angles(params.motion, params.phase + 2 * np.pi * params.cycles_per_clip * t)
    facing = 1.0 if params.speed >= 0 else -1.0
    leg = params.thigh + params.shin
    hip = np.array([params.start_x + params.speed * t, 0.92 - leg - a["lift"]])

    def step(origin: np.ndarray, angle: float, length: float) -> np.ndarray:
        return origin + length * np.array([np.sin(facing * angle), np.cos(facing * angle)])

    neck = step(hip, np.pi - a["lean"], params.torso)
    joints = {"hip": hip, "neck": neck, "chin": step(neck, np.pi - a["lean"], 0.04),
              "head": step(neck, np.pi - a["lean"], 0.1)}
    for side in ("l", "r"):
        joints[f"elbow_{side}"] = step(neck, a[f"arm_{side}"], params.upper_arm)
        joints[f"hand_{side}"] = step(joints[f"elbow_{side}"], a[f"arm_{side}"] + a[f"elbow_{side}"], params.forearm)
        joints[f"knee_{side}"] = step(hip, a[f"thigh_{side}"], params.thigh)
        joints[f"foot_{side}"] = step(joints[f"knee_{side}"], a[f"thigh_{side}"] + a[f"knee_{side}"], params.shin)
    return joints


def _background(params: ClipParams, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """[h, w, 3] float background at world x (so a pan moves it), with a darker ground band."""
    base = np.asarray(params.background, dtype=np.float32)
    if params.texture == "stripes":
        pattern = (np.floor(xs / params.texture_period) % 2)[None, :] * np.ones_like(ys)[:, None]
    elif params.texture == "checks":
        pattern = (np.floor(xs / params.texture_period)[None, :] + np.floor(ys / params.texture_period)[:, None]) % 2
    else:
        pattern = np.zeros((ys.size, xs.size))
    image = base[None, None, :] * (1.0 - 0.25 * pattern[..., None]) + 30.0 * pattern[..., None]
    ground = (ys > 0.92)[:, None, None]
    return np.where(ground, 0.5 * image, image)


def render_frame(params: ClipParams, t: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One frame (uint8 [H, W, 3]) and the figure's coverage mask (bool [H, W]) at clip time t."""
    h, w = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    aspect = w / h
    cam = params.pan * t
    xs = (np.arange(w) + 0.5) / h + cam + (0.5 - aspect / 2)  # world x, frame heights; the figure is centred
    ys = (np.arange(h) + 0.5) / h
    image = _background(params, xs, ys)
    covered = np.zeros((h, w), dtype=bool)
    joints = skeleton(params, t)
    px, py = xs[None, :], ys[:, None]
    for start, end, radius, slot in BONES:
        (x0, y0), (x1, y1) = joints[start], joints[end]
        dx, dy = x1 - x0, y1 - y0
        u = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        inside = (px - x0 - u * dx) ** 2 + (py - y0 - u * dy) ** 2 <= radius ** 2
        image[inside] = getattr(params, slot)
        covered |= inside
    image = image.reshape(size[0], SUPERSAMPLE, size[1], SUPERSAMPLE, 3).mean(axis=(1, 3))
    mask = covered.reshape(size[0], SUPERSAMPLE, size[1], SUPERSAMPLE).any(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def check_frames(frames: int) -> None:
    if frames < 1 or (frames - 1) % 4:
        raise BadInputError(f"--frames {frames}: must be 4k+1 (5, 9, 17, ...), as Wan's VAE grid wants",
                            param="frames")


def render_clip(params: ClipParams, frames: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [T, H, W, 3] and the figure masks bool [T, H, W]."""
    check_frames(frames)
    out = [render_frame(params, i / max(frames - 1, 1), size) for i in range(frames)]
    return np.stack([f for f, _ in out]), np.stack([m for _, m in out])


def make_split(seed: int, motion_set: str, split: str, count: int, frames: int, size: tuple[int, int],
               camera_pan: bool) -> tuple[np.ndarray, np.ndarray, list[ClipParams]]:
    """(clips uint8 [N, T, H, W, 3], motion index int16 [N] into MOTIONS, params) of one split."""
    if motion_set not in MOTION_SETS:
        raise BadInputError(f"--set {motion_set!r}: choose one of {', '.join(MOTION_SETS)}", param="set")
    if not 0 <= count < 1_000_000:
        raise BadInputError(f"--{split} {count}: 0 to 999999 clips (split seed ranges are 1e6 wide)", param=split)
    check_frames(frames)
    params = [draw_params(seed, motion_set, split, i, camera_pan) for i in range(count)]
    clips = np.zeros((count, frames, *size, 3), dtype=np.uint8)
    for i, p in enumerate(params):
        clips[i] = render_clip(p, frames, size)[0]
    motions = np.array([MOTIONS.index(p.motion) for p in params], dtype=np.int16)
    return clips, motions, params


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_dataset(out: Path, seed: int, motion_set: str, counts: dict[str, int], frames: int,
                  size: tuple[int, int], camera_pan: bool, force: bool = False, still: bool = False) -> dict[str, Any]:
    """The dataset directory, atomically: every split's .npy files, then manifest.json (sha256 of each file).
    `still`: every frame of a clip is its frame 0 (a probe: a model that reproduces frame 0 in every frame carries
    nothing forward, so its error there is the precision of its output alone)."""
    specs = {"generator_version": GENERATOR_VERSION, "seed": seed, "set": motion_set, "counts": counts,
             "frames": frames, "height": size[0], "width": size[1], "camera_pan": camera_pan,
             "split_seed_base": SPLIT_SEED_BASE, "still": still}
    payload: dict[str, Any] = {"motions": list(MOTIONS), "set_motions": list(MOTION_SETS[motion_set]),
                               "conditioning_frame": 0, "layout": "uint8 [N, T, H, W, 3] RGB", "splits": {}}
    with atomic_output_dir(out, force=force, kind=KIND) as tmp:
        for split, count in counts.items():
            clips, motions, params = make_split(seed, motion_set, split, count, frames, size, camera_pan)
            if still:
                clips = np.repeat(clips[:, :1], frames, axis=1)
            write_bytes_atomic(tmp / f"{split}-clips.npy", _npy_bytes(clips))
            write_bytes_atomic(tmp / f"{split}-motions.npy", _npy_bytes(motions))
            payload["splits"][split] = {"clips": f"{split}-clips.npy", "motions": f"{split}-motions.npy",
                                        "clip_seeds": [clip_seed(split, 0), clip_seed(split, count)],
                                        "params": [asdict(p) for p in params]}
        manifest = build_manifest(KIND, specs, payload)
        write_manifest(tmp, manifest)
    return manifest


def write_strip(path: Path, seed: int, motion_set: str, frames: int, size: tuple[int, int],
                camera_pan: bool) -> None:
    """The first train clip of each motion of the set, one row each (the report's picture)."""
    motions = MOTION_SETS[motion_set]
    clips, _, _ = make_split(seed, motion_set, "train", len(motions), frames, size, camera_pan)
    write_bytes_atomic(path, frame_strip_png(list(clips), scale=max(1, 128 // size[0])))


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x")) if "x" in text else (int(text), int(text))
    except ValueError:
        raise BadInputError(f"--size {text!r}: want H or HxW, e.g. 32 or 32x48", param="size") from None
    if h < 8 or w < 8 or h % 8 or w % 8:
        raise BadInputError(f"--size {text}: height and width must be multiples of 8, at least 8", param="size")
    return h, w


@click.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="dataset directory to write")
@click.option("--set", "motion_set", type=click.Choice(list(MOTION_SETS)), default="pretrain", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train", type=int, default=64, show_default=True, help="clips in the train split")
@click.option("--validation", type=int, default=16, show_default=True)
@click.option("--test", type=int, default=16, show_default=True)
@click.option("--frames", type=int, default=17, show_default=True, help="4k+1")
@click.option("--size", default="32", show_default=True, help="H or HxW, multiples of 8")
@click.option("--camera-pan/--no-camera-pan", default=False, show_default=True)
@click.option("--still", is_flag=True, help="every frame is the clip's frame 0 (a precision probe, issue 22)")
@click.option("--force", is_flag=True, help="replace an existing motion-clips directory")
@click.option("--strip", type=click.Path(path_type=Path), default=None,
              help="also write a PNG frame strip: the first train clip of each motion of the set")
def main(out, motion_set, seed, train, validation, test, frames, size, camera_pan, still, force, strip):
    """Write a seeded motion-clips dataset (train / validation / test)."""
    try:
        manifest = write_dataset(out, seed, motion_set, {"train": train, "validation": validation, "test": test},
                                 frames, parse_size(size), camera_pan, force, still)
        if strip is not None:
            write_strip(strip, seed, motion_set, frames, parse_size(size), camera_pan)
    except WanrtError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}: " + ", ".join(f"{k} {v} clips" for k, v in manifest["specs"]["counts"].items()))


if __name__ == "__main__":
    main()
