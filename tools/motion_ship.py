"""Pack a pretrained motion model (tools/train_small.py) and held-out clips into the one file wanrt ships
(runtime/motion.SHIPPED), which `wanrt demo` samples from; prints the sha256 to pin as runtime/motion.SHIPPED_SHA256.

    python -m wanrt.tools.motion_ship --run runs/pretrain --data data/motion \
        -o runtime/data/motion-pretrained.safetensors

The file: `model.*` (the full fp32 state dict), `demo.clips` (the first --clips test clips, uint8
[N, T, H, W, 3]) and `demo.motions` (their motion indices into runtime/motion.MOTIONS); its metadata `wanrt` (JSON)
names the model config, the flow shift, the run's specs and final validation loss, and the clips' generator version
and seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import safetensors.torch

from wanrt.artifacts import load_artifact, sha256_file, write_bytes_atomic
from wanrt.errors import BadInputError, WanrtError
from wanrt.runtime.motion import MOTION_MODELS, load_shipped
from wanrt.tools.motion_clips import KIND as CLIPS_KIND
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
    meta = {"model": specs["preset"], "shift": specs["shift"], "run_specs": specs,
            "final_validation": manifest["payload"]["final_validation"], "clips": clips_specs, "split": "test"}
    write_bytes_atomic(out, safetensors.torch.save(tensors, metadata={"wanrt": json.dumps(meta)}))
    digest = sha256_file(out)
    load_shipped(out, sha256=digest)  # it loads back as the runtime will load it
    return digest


@click.command()
@click.option("--run", required=True, type=click.Path(), help="the pretrained full-weights motion-train run")
@click.option("--data", required=True, type=click.Path(), help="its motion-clips directory (test split)")
@click.option("--clips", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path))
def main(run, data, clips, out):
    """Pack the shipped motion model and its demo clips; print the sha256 to pin."""
    try:
        digest = ship(run, data, clips, out)
    except WanrtError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): sha256 {digest}")


if __name__ == "__main__":
    main()
