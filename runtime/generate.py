"""`wanrt generate`: image + prompt -> mp4 through WanImageToVideoPipeline with any backend as its transformer."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.dit_io import check_latent_range, check_video_shape
from wanrt.artifacts import atomic_path, check_writable
from wanrt.errors import BadInputError, StorageError, os_error_line
from wanrt.engines.vae import VaeDecoder, VaeEncoder
from wanrt.runtime.backend_names import StageBackend
from wanrt.runtime.backends import backend_from_specs
from wanrt.runtime.experts import ExpertPair, expert_pair, is_experts_artifact
from wanrt.runtime.pipeline import build_pipeline, dit_calls, encode_mp4, run_pipeline
from wanrt.runtime.schedule import Schedule
from wanrt.runtime.encoders import CompiledImageEncode, CompiledTextEncoder, encoder_session
from wanrt.runtime.stages import (CompiledStages, CompiledVaeDecode, CompiledVaeEncode, StageClock, vae_export_dir,
                                  weights_key)


@dataclass(frozen=True)
class GenerateSpec:
    prompt: str
    negative_prompt: str = ""
    frames: int = 5
    height: int = 32
    width: int = 32
    schedule: Schedule = Schedule(steps=2, guidance=5.0)  # steps, timesteps, shift, guidance (runtime/schedule.py)
    seed: int = 0
    fps: int = 16


# The largest conditioning image decoded (8K x 8K): Wan resizes to <= 1280 px anyway, and a PNG that declares more
# is a decompression bomb (a few KB on disk, gigabytes once decoded).
MAX_IMAGE_PIXELS = 8192 * 8192


def load_image(path: str | os.PathLike):
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"--image {path}: no such file")
    if not path.is_file():
        raise BadInputError(f"--image {path}: not a regular file (a directory, FIFO, device or socket)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:  # from the header, before decoding
                    raise BadInputError(f"--image {path}: {im.width}x{im.height} pixels, more than the "
                                        f"{MAX_IMAGE_PIXELS:,} this reads (a decompression bomb?)")
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInputError(f"--image {path}: refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # PIL raises all of these on bad files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadInputError(f"--image {path}: not a readable image ({first})") from None


def check_shape(spec: GenerateSpec, backend) -> None:
    """The request fits the VAE/patching grid and, for artifacts, the exported shape range."""
    shape = check_video_shape(spec.frames, spec.height, spec.width)
    check_latent_range(shape, (getattr(backend, "shape_ranges", None) or {}).get("latent"))


def compiled_stages(pipe, vae_backend: str = "eager", encoders_backend: str = "eager", threads: int | None = None,
                    say: Callable[[str], None] | None = None, precision: str = "fp32") -> CompiledStages | None:
    """None when every stage is diffusers' own ("eager"); else the VAE's decoder and encoder (`vae_backend`) and
    the text and image encoders (`encoders_backend`) exported once into wanrt's cache (keyed by config and weights)
    and run on that backend's sessions. A tiling VAE keeps diffusers' encode (the tiled encode is not exported);
    its decode tiles on the graphs. `precision`: the sessions' (engines/sessions.py: OpenVINO bf16 where the CPU
    runs it)."""
    vae_on = StageBackend.parse(vae_backend, "--vae-backend") != StageBackend.EAGER
    enc_on = StageBackend.parse(encoders_backend, "--encoders-backend") != StageBackend.EAGER
    if not (vae_on or enc_on):
        return None
    say = say or (lambda _m: None)
    parts: dict[str, Any] = {}
    if vae_on:
        key = weights_key(pipe.vae, dict(pipe.vae.config))
        parts["vae_decode"] = CompiledVaeDecode(VaeDecoder(vae_export_dir(pipe.vae, say=say, key=key), vae_backend,
                                                           threads, precision), pipe.vae)
        if not getattr(pipe.vae, "use_tiling", False):
            encoder_dir = vae_export_dir(pipe.vae, say=say, part="encoder", key=key)
            parts["vae_encode"] = CompiledVaeEncode(VaeEncoder(encoder_dir, vae_backend, threads, precision))
    if enc_on:
        parts["text"] = CompiledTextEncoder(encoder_session("text", pipe.text_encoder, encoders_backend, threads,
                                                            say=say, precision=precision))
        if pipe.image_encoder is not None:
            parts["image"] = CompiledImageEncode(encoder_session("image", pipe.image_encoder, encoders_backend,
                                                                 threads, say=say, precision=precision),
                                                 pipe.image_processor)
    return CompiledStages(**parts)


def generate_video(backend, image, spec: GenerateSpec, pipeline: str | None = None, pipe=None,
                   progress: bool = False, vae_backend: str = "eager", threads: int | None = None,
                   say: Callable[[str], None] | None = None, encoders_backend: str = "eager",
                   compiled: CompiledStages | None = None, components: str = "tiny",
                   text_layers: int | None = None):
    """Frames [F, H, W, 3] float in [0, 1] (numpy) and what the run did: timings (`stages`: seconds per stage of
    the video, runtime/stages.py), the transformer calls it made (`dit_calls`, counted at the drop-in) and the
    timesteps the scheduler ran. `pipe` reuses a built pipeline; `vae_backend` other than eager encodes the
    conditioning frame and decodes through the exported VAE graphs, `encoders_backend` the text and image encoders
    (exports and session loads count in `pipeline_s`). `compiled`: stage drop-ins built once by the caller
    (`compiled_stages`; a loop of videos: LoadGen, a bench) instead of those two. `components`/`text_layers`: the
    built-in pipeline's encoders and VAE (runtime/components.py), when `pipe` is built here without `pipeline`."""
    check_shape(spec, backend)
    t0 = time.perf_counter()
    parts = components if pipe is None and pipeline is None else None  # what this call built, if it built them
    if pipe is None:
        pipe = build_pipeline(backend, checkpoint=pipeline, seed=spec.seed, progress=progress,
                              components=components, text_layers=text_layers)
    if compiled is None:
        compiled = compiled_stages(pipe, vae_backend, encoders_backend, threads, say)
    t1 = time.perf_counter()
    calls0 = dit_calls(pipe)
    loads0 = len(backend.loader.loads) if isinstance(backend, ExpertPair) and backend.loader else 0
    clock = StageClock()
    frames, timesteps = run_pipeline(pipe, image, spec.prompt, spec.negative_prompt, frames=spec.frames,
                                     height=spec.height, width=spec.width, schedule=spec.schedule, seed=spec.seed,
                                     clock=clock, compiled=compiled)
    t2 = time.perf_counter()
    calls = {k: n - calls0[k] for k, n in dit_calls(pipe).items()}
    timing = {"pipeline_s": t1 - t0, "generate_s": t2 - t1, "dit_calls": sum(calls.values()),
              "timesteps": timesteps, "schedule": spec.schedule.to_dict(), "vae_backend": vae_backend,
              "encoders_backend": encoders_backend, "components": parts,
              "stages": clock.ordered()}
    if len(calls) > 1:  # Wan2.2: the forwards each expert ran (the switch is at diffusers' boundary step)
        timing["dit_calls_by_expert"] = calls
    if isinstance(backend, ExpertPair) and backend.loader:  # resident "one": the loads inside generate_s
        timing["expert_loads_in_video"] = backend.loads(loads0)
    return frames, timing


def generate(image_path: str | os.PathLike, spec: GenerateSpec, backend_name: str, output: str | os.PathLike,
             model_spec=None, lora_spec=None, engine: str | None = None, device: str = "cpu",
             pipeline: str | None = None, force: bool = False, threads: int | None = None,
             cuda_graph: bool = False, say: Callable[[str], None] | None = None,
             expert_loras: dict[str, Any] | None = None, experts_resident: str = "both",
             vae_backend: str = "eager", encoders_backend: str = "eager", components: str = "tiny",
             text_layers: int | None = None) -> dict[str, Any]:
    """The whole command: load image, make backend, run the pipeline, write the mp4 atomically. Wan2.2 (an
    experts artifact as `engine`, or a two-expert model with `expert_loras` {expert: LoraSpec}): both experts,
    kept loaded together or one at a time (`experts_resident`); `expert_loads` counts every load the command made.
    `stages` (seconds: text, image, vae_encode, dit, vae, mp4) sum to at most `total_s`, the whole command's time."""
    t0 = time.perf_counter()
    StageBackend.parse(vae_backend, "--vae-backend")  # before any work
    StageBackend.parse(encoders_backend, "--encoders-backend")
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise BadInputError(f"-o {output}: the output is an .mp4 file")
    if output.exists() and not force:
        raise BadInputError(f"{output} exists; pass --force to replace it")
    if output.is_dir():
        raise BadInputError(f"-o {output} is a directory")
    check_writable(output, "-o")  # before the model loads and the video is generated, not after
    image = load_image(image_path)
    if threads:
        torch.set_num_threads(threads)
    if expert_loras is not None or is_experts_artifact(engine):
        backend = expert_pair(backend_name, model_spec, expert_loras, artifact=engine, device=device,
                              threads=threads, cuda_graph=cuda_graph, progress=say, resident=experts_resident)
    else:
        backend = backend_from_specs(backend_name, model_spec, lora_spec, engine=engine, device=device,
                                     threads=threads, cuda_graph=cuda_graph, progress=say)
    try:
        frames, timing = generate_video(backend, image, spec, pipeline=pipeline, vae_backend=vae_backend,
                                        threads=threads, say=say, encoders_backend=encoders_backend,
                                        components=components, text_layers=text_layers)
    finally:
        backend.close()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(os_error_line(e, "creating the output folder")) from None
    t_mp4 = time.perf_counter()
    with atomic_path(output, keep_suffix=True) as tmp:
        encode_mp4(frames, tmp, fps=spec.fps)
    timing["stages"]["mp4"] = time.perf_counter() - t_mp4
    timing["total_s"] = time.perf_counter() - t0
    loads = {"expert_loads": backend.loads()} if isinstance(backend, ExpertPair) and backend.loader else {}
    return {"output": str(output), "frames": int(frames.shape[0]), "height": int(frames.shape[1]),
            "width": int(frames.shape[2]), "backend": backend.describe(), **timing, **loads}
