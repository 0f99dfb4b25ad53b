"""Pack a pretrained motion model (tools/train_small.py) and held-out clips into the one file wanrt ships
(runtime/motion.SHIPPED), which `wanrt demo` samples from; prints the sha256 to pin as runtime/motion.SHIPPED_SHA256.

    python -m wanrt.tools.motion_ship --run runs/pretrain --data data/motion \
        -o runtime/data/motion-pretrained.safetensors
    python -m wanrt.tools.motion_ship --score docs/results/motion-shipped.json --data data/motion --clips 32

--score: the shipped model against the first --clips test clips of --data, beside the same network untrained
(seed 0) and frame 0 copied forward (a still): FVD (I3D) to the real clips and LPIPS per clip, as
tools/motion_study.py scores (same sampling seed and upsampling). Each `--candidate RUN` (a motion-train run, e.g.
another width) is scored beside them on the same clips, at its own flow shift, under `candidates`. Each entry also
has `one_step_frame_error`: per frame, the mean |1-step sample - real| in 8-bit levels (the still's: |frame 0 -
frame k|): how precisely the model's conditional mean reproduces each frame.

The file: `model.*` (the full fp32 state dict), `demo.clips` (the first --clips test clips, uint8
[N, T, H, W, 3]) and `demo.motions` (their motion indices into runtime/motion.MOTIONS); its metadata `wanrt` (JSON)
names the model config, the flow shift, the run's specs and final validation loss, and the clips' generator version
and seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import safetensors.torch
import torch
from diffusers import WanTransformer3DModel

from wanrt.artifacts import command_line, cpu_info, load_artifact, sha256_file, write_bytes_atomic, write_json
from wanrt.errors import BadInputError, WanrtError
from wanrt.runtime.metrics.frechet import FVDConfig, fvd_from_features, i3d_features, split_half_floor
from wanrt.runtime.motion import (CONDITIONING, MOTION_MODELS, FlowMatching, check_conditioning, frame_error,
                                  load_shipped, sample)
from wanrt.tools.motion_clips import KIND as CLIPS_KIND
from wanrt.tools.motion_sample import load_run
from wanrt.tools.motion_study import SAMPLE_SEED, score_clips, score_model
from wanrt.tools.train_small import KIND, WEIGHTS, load_split


def ship(run: str, data: str, clips: int, out: Path) -> str:
    """Write the file; return its sha256 after loading it back through runtime/motion.load_shipped."""
    manifest = load_artifact(run, kind=KIND)
    specs = manifest["specs"]
    if specs["method"] != "full" or specs["preset"] not in MOTION_MODELS:
        raise BadInputError(f"--run {run}: a full-weights run of a runtime/motion.MOTION_MODELS config is needed",
                            param="run")
    real, motions = load_split(data, "test")
    if len(real) < clips:
        raise BadInputError(f"--data {data}: {len(real)} test clips, fewer than --clips {clips}", param="clips")
    clips_specs = load_artifact(data, kind=CLIPS_KIND)["specs"]
    tensors = {f"model.{k}": v.contiguous() for k, v in safetensors.torch.load_file(str(Path(run) / WEIGHTS)).items()}
    tensors["demo.clips"] = real[:clips].contiguous()
    tensors["demo.motions"] = motions[:clips].contiguous()
    check_conditioning(manifest["payload"], f"--run {run}")
    meta = {"model": specs["preset"], "shift": specs["shift"], "run_specs": specs, "conditioning": CONDITIONING,
            "final_validation": manifest["payload"]["final_validation"], "clips": clips_specs, "split": "test"}
    write_bytes_atomic(out, safetensors.torch.save(tensors, metadata={"wanrt": json.dumps(meta)}))
    digest = sha256_file(out)
    load_shipped(out, sha256=digest)  # it loads back as the runtime will load it
    return digest


def score_shipped(data: str, clips: int, steps: int, candidates: tuple[str, ...] = ()) -> dict[str, Any]:
    """FVD and LPIPS of the shipped model, the untrained network, a still and each candidate run, on the same test
    clips; and each one's frame error at one step (its conditional mean of the clip; frame 0 is in its input)."""
    shipped = load_shipped()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = WanTransformer3DModel(**MOTION_MODELS[shipped.record["model"]]).eval()
    models = {"shipped": (shipped.model, shipped.shift), "untrained": (untrained, shipped.shift)}
    for run in candidates:
        model, cfg = load_run(run)
        models[run] = (model, cfg.shift)
    real, motions = (t[:clips] for t in load_split(data, "test"))
    real_features, _ = i3d_features(list(real.numpy()), FVDConfig())
    out: dict[str, Any] = {"data": data, "clips": len(real), "sample_steps": steps,
                           "real_split_half_fvd": split_half_floor(real_features, np.arange(len(real)))}
    still = real[:, :1].expand_as(real)  # frame 0 copied forward
    scored, errors = {"still": score_clips(real.numpy(), still.numpy())}, {"still": frame_error(still, real)}
    for name, (model, shift) in models.items():
        scored[name] = score_model(model, shift, data, clips, steps)
        one_step = sample(FlowMatching(model, shift), real[:, 0], motions, real.shape[1], 1,
                          torch.Generator().manual_seed(SAMPLE_SEED))
        errors[name] = frame_error(one_step, real)
    scores = {name: {"fvd": fvd_from_features(real_features, np.asarray(rec["features"])),
                     "lpips": float(np.mean(rec["lpips"])), "one_step_frame_error": errors[name]}
              for name, rec in scored.items()}
    out["candidates"] = {run: scores.pop(run) for run in candidates}
    return {**out, **scores}


@click.command()
@click.option("--run", type=click.Path(), help="the pretrained full-weights motion-train run to pack")
@click.option("--data", required=True, type=click.Path(), help="a motion-clips directory (its test split)")
@click.option("--clips", type=click.IntRange(1, 4096), default=4, show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), help="the file to pack into")
@click.option("--score", type=click.Path(path_type=Path), help="score the shipped model instead; JSON to write")
@click.option("--candidate", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="with --score: a motion-train run to score beside the shipped model (repeatable)")
@click.option("--sample-steps", type=click.IntRange(1, 200), default=12, show_default=True)
def main(run, data, clips, out, score, candidate, sample_steps):
    """Pack the shipped motion model and its demo clips and print the sha256 to pin, or (--score) score it."""
    try:
        if score is not None:
            torch.set_num_threads(2)
            write_json(score, {"command": command_line(),
                               "cpu": cpu_info(), "torch": torch.__version__,
                               **score_shipped(data, clips, sample_steps, candidate)})
            print(f"wrote {score}")
            return
        if run is None or out is None:
            raise BadInputError("--run and -o name what to pack (or --score to score the shipped model)", param="run")
        if candidate:  # packing scores nothing: a --candidate here would be silently ignored
            raise BadInputError("--candidate scores a run beside the shipped model: only with --score",
                                param="candidate")
        digest = ship(run, data, clips, out)
    except WanrtError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): sha256 {digest}")


if __name__ == "__main__":
    main()
