"""Sample clips from a trained small motion model (tools/train_small.py): Euler steps of the flow, I2V from a
held-out clip's first frame, decoded by the exact latent map; writes a PNG strip (real clip above, sample below).

    python -m wanrt.tools.motion_sample --run runs/pretrain --data data/motion -o sample.png --clips 3

The sampler integrates dx/ds = v (the model's prediction of noise - x0) from s = 1 (noise) to s = 0 on the shifted
grid s_i = shift u_i / (1 + (shift - 1) u_i), u_i = 1 - i / steps (Wan's flow shift, as in training); no CFG. A LoRA
run is merged onto its --init weights with wanrt's loader (export/lora_formats.py) before sampling.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from wanrt.artifacts import load_artifact, write_bytes_atomic
from wanrt.errors import WanrtError
from wanrt.export.lora import apply_lora
from wanrt.export.lora_formats import load_lora_file
from wanrt.runtime.motion import FlowMatching, check_conditioning, frame_strip_png, sample
from wanrt.tools.train_small import KIND, WEIGHTS, TrainConfig, build_model, load_split


def load_run(run: str | Path) -> tuple[torch.nn.Module, TrainConfig]:
    """The run's model in eval mode: full weights as saved, or a LoRA merged onto its --init."""
    manifest = load_artifact(run, kind=KIND)
    check_conditioning(manifest["payload"], f"--run {run}")
    cfg = TrainConfig(**manifest["specs"])
    if cfg.method == "full":
        model = build_model(replace(cfg, init=str(run)))
    else:
        model = build_model(cfg)
        apply_lora(model, load_lora_file(Path(run) / WEIGHTS, model), "merged")
    return model.eval().requires_grad_(False), cfg


@click.command()
@click.option("--run", required=True, type=click.Path(), help="a motion-train directory")
@click.option("--data", required=True, type=click.Path(), help="a motion-clips directory")
@click.option("--split", default="test", show_default=True)
@click.option("--clips", type=int, default=3, show_default=True, help="first N clips of the split")
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="PNG to write")
def main(run, data, split, clips, steps, seed, out):
    """Sample from a trained run; write real-over-sample frame strips."""
    torch.set_num_threads(1)
    try:
        model, cfg = load_run(run)
        real, motions = load_split(data, split)
        real, motions = real[:clips], motions[:clips]
        fake = sample(FlowMatching(model, cfg.shift), real[:, 0], motions, real.shape[1], steps,
                      torch.Generator().manual_seed(seed))
        rows = [np.asarray(c) for pair in zip(real, fake) for c in pair]
        write_bytes_atomic(out, frame_strip_png(rows, scale=max(1, 128 // real.shape[2])))
    except WanrtError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}: {len(real)} clips of {split}, real above sample, {steps} Euler steps")


if __name__ == "__main__":
    main()
