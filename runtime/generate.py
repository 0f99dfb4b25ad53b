"""`wanrt generate`: image + prompt -> mp4 through WanImageToVideoPipeline with any backend as its transformer."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.errors import BadInputError


@dataclass(frozen=True)
class GenerateSpec:
    prompt: str
    negative_prompt: str = ""
    frames: int = 5
    height: int = 32
    width: int = 32
    steps: int = 2
    guidance: float = 5.0
    seed: int = 0
    fps: int = 16


def load_image(path: str | os.PathLike):
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise BadInputError(f"--image {path}: not a readable image ({e})") from None


def check_shape(spec: GenerateSpec, backend) -> None:
    """The request fits the VAE/patching grid and, for artifacts, the exported shape range."""
    from wanrt.export.onnx_export import check_video_shape

    shape = check_video_shape(spec.frames, spec.height, spec.width)
    ranges = (getattr(backend, "shape_ranges", None) or {}).get("latent")
    if ranges:
        for axis, value in zip("FHW", shape.latent):
            lo, hi = ranges.get(axis, (value, value))
            if not lo <= value <= hi:
                raise BadInputError(f"{shape}: latent {axis}={value} is outside the artifact's range {lo}..{hi}")
    if spec.steps < 1:
        raise BadInputError(f"--steps {spec.steps}: must be at least 1")


def generate_video(backend, image, spec: GenerateSpec, pipeline: str | None = None, pipe=None,
                   progress: bool = False):
    """Frames [F, H, W, 3] float in [0, 1] (numpy) and timings. `pipe` reuses an already built pipeline."""
    from wanrt.runtime.pipeline import build_pipeline, run_pipeline

    check_shape(spec, backend)
    t0 = time.perf_counter()
    if pipe is None:
        pipe = build_pipeline(backend, checkpoint=pipeline, seed=spec.seed, progress=progress)
    t1 = time.perf_counter()
    calls0 = pipe.transformer.calls
    frames = run_pipeline(pipe, image, spec.prompt, spec.negative_prompt, frames=spec.frames, height=spec.height,
                          width=spec.width, steps=spec.steps, guidance=spec.guidance, seed=spec.seed)
    t2 = time.perf_counter()
    return frames, {"pipeline_s": t1 - t0, "generate_s": t2 - t1, "dit_calls": pipe.transformer.calls - calls0}


def generate(image_path: str | os.PathLike, spec: GenerateSpec, backend_name: str, output: str | os.PathLike,
             model_spec=None, lora_spec=None, engine: str | None = None, device: str = "cpu",
             pipeline: str | None = None, force: bool = False, threads: int | None = None,
             cuda_graph: bool = False, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole command: load image, make backend, run the pipeline, write the mp4 atomically."""
    from wanrt.runtime.backends import backend_from_specs
    from wanrt.runtime.pipeline import write_video

    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise BadInputError(f"-o {output}: the output is an .mp4 file")
    if output.exists() and not force:
        raise BadInputError(f"{output} exists; pass --force to replace it")
    image = load_image(image_path)
    if threads:
        torch.set_num_threads(threads)
    backend = backend_from_specs(backend_name, model_spec, lora_spec, engine=engine, device=device,
                                 threads=threads, cuda_graph=cuda_graph, progress=say)
    try:
        frames, timing = generate_video(backend, image, spec, pipeline=pipeline)
    finally:
        backend.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    try:
        write_video(frames, tmp, fps=spec.fps)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"output": str(output), "frames": int(frames.shape[0]), "height": int(frames.shape[1]),
            "width": int(frames.shape[2]), "backend": backend.describe(), **timing}
