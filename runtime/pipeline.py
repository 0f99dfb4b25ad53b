"""A Backend as `pipe.transformer` of diffusers' WanImageToVideoPipeline, and a complete tiny pipeline.

What WanImageToVideoPipeline (diffusers 0.42) reads from `pipe.transformer`:
  - `config.patch_size` (height/width rounding) and `config.image_dim` (is it an I2V model: encode the image);
  - `dtype` (prompt/image embeddings and latent model input are cast to it);
  - `cache_context(name)` around each call ("cond"/"uncond"; a no-op here);
  - `__call__(hidden_states=, timestep=, encoder_hidden_states=, encoder_hidden_states_image=,
    attention_kwargs=, return_dict=False)[0]`;
  - being a torch.nn.Module with a `device` (the pipeline's `_execution_device`/`device` walk its components).
Wan2.2's two experts (an ExpertPair, runtime/experts.py): the high one becomes `pipe.transformer`, the low one
`pipe.transformer_2`, and `boundary_ratio` is set in the pipeline's config, so diffusers switches at its own boundary
step; a one-transformer backend leaves both None. `expand_timesteps` stays False (Wan2.2's 5B TI2V is not covered).

The built-in pipeline (`build_pipeline` with no checkpoint) builds every other component inline from seeded random
weights (runtime/components.py: tiny ones sized to the transformer's text/image dims, or Wan2.1's real geometries):
AutoencoderKLWan, a byte-level tokenizer + UMT5 encoder, a CLIP ViT (224 px, patch 14 -> 257 image tokens) with
its processor, and the Wan UniPC flow scheduler. Nothing is downloaded, so `wanrt generate` runs end to end on CPU
for any preset.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import warnings
from typing import Any

import numpy as np
import torch

from wanrt.errors import BadInputError, MissingDependencyError, ModelSourceError
from wanrt.io_contract import VideoShape
from wanrt.runtime.components import build_components, tiny_scheduler
from wanrt.runtime.experts import ExpertPair
from wanrt.runtime.schedule import Schedule
from wanrt.runtime.stages import CompiledStages, StageClock, timed_stages

class BackendTransformer(torch.nn.Module):
    """Makes any Backend look like `WanTransformer3DModel` to the pipeline (see module docstring)."""

    def __init__(self, backend):
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        self.backend = backend
        config = dict(backend.config)
        config.setdefault("patch_size", (1, 2, 2))
        config.setdefault("image_dim", None)
        self.config = FrozenDict(config)
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @contextlib.contextmanager
    def cache_context(self, name: str):  # noqa: ARG002 - diffusers' cache hooks; nothing to cache here
        yield

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                return_dict: bool = True, attention_kwargs: dict[str, Any] | None = None):
        if attention_kwargs and attention_kwargs.get("scale", 1.0) != 1.0:
            raise BadInputError("attention_kwargs['scale'] (runtime LoRA scale) is not supported by compiled "
                                "backends; bake the scale in at export (--lora-scale)")
        self.calls += 1
        out = self.backend.forward(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)


def install_backend(pipe, backend) -> BackendTransformer:
    """Replace `pipe.transformer` with `backend` (an ExpertPair: also `pipe.transformer_2` and the boundary),
    keeping scheduler, VAE and encoders. Returns the drop-in of `pipe.transformer`."""
    high, low, ratio = (backend.high, backend.low, backend.boundary_ratio) if isinstance(backend, ExpertPair) \
        else (backend, None, None)
    drop_in = high if isinstance(high, BackendTransformer) else BackendTransformer(high)
    pipe.transformer = drop_in
    if low is not None:
        pipe.transformer_2 = low if isinstance(low, BackendTransformer) else BackendTransformer(low)
        pipe.register_to_config(boundary_ratio=ratio)
    elif getattr(pipe, "transformer_2", None) is not None or getattr(pipe.config, "boundary_ratio", None):
        raise BadInputError("this pipeline is Wan2.2's two-expert one (transformer_2, boundary_ratio): run it with "
                            "a two-expert artifact (wanrt export --model of a Wan2.2 checkpoint)")
    return drop_in


def dit_calls(pipe) -> dict[str, int]:
    """DiT forwards so far, per drop-in: {"high": n, "low": n} for two experts, else {"transformer": n}."""
    low = getattr(pipe, "transformer_2", None)
    if low is None:
        return {"transformer": pipe.transformer.calls}
    return {"high": pipe.transformer.calls, "low": low.calls}


def expert_steps(schedule: Schedule, boundary_ratio: float, scheduler=None) -> dict[str, int]:
    """Steps each of Wan2.2's experts runs for `schedule` on `scheduler` (default: the tiny pipeline's), as
    WanImageToVideoPipeline splits them: high at timesteps >= boundary_ratio x num_train_timesteps, low after."""
    probe = _probe(scheduled(scheduler or tiny_scheduler(), schedule))
    probe.set_timesteps(schedule.steps)
    high = int(sum(float(t) >= boundary_ratio * probe.config.num_train_timesteps for t in probe.timesteps))
    return {"high": high, "low": len(probe.timesteps) - high}


def _probe(scheduler):
    """A fresh copy of `scheduler` (with the schedule's sigmas a `scheduled` copy carries), to set timesteps on."""
    probe = type(scheduler).from_config(scheduler.config)
    if isinstance(scheduler.set_timesteps, functools.partial):  # the schedule's sigmas ride on the partial
        probe.set_timesteps = functools.partial(probe.set_timesteps, **scheduler.set_timesteps.keywords)
    return probe


def build_pipeline(backend, checkpoint: str | None = None, seed: int = 0, progress: bool = False,
                   components: str = "tiny", text_layers: int | None = None):
    """A WanImageToVideoPipeline whose transformer is `backend` (an ExpertPair: both of Wan2.2's experts).

    checkpoint None: the built-in pipeline, its other parts from seeded weights (runtime/components.py): `tiny`
    sized to the backend's text/image dims, or `wan2.1`'s real geometries (UMT5 sliced to `text_layers`).
    Otherwise a diffusers Wan I2V pipeline directory or hub id: its scheduler, VAE and encoders are loaded in
    float32 (text encoder and CLIP in the backend's dtype on GPU) and its own transformers are never loaded.
    """
    from diffusers import WanImageToVideoPipeline

    config = backend.config
    if checkpoint is None:
        text_dim, image_dim = config.get("text_dim"), config.get("image_dim")
        if text_dim is None:
            raise BadInputError("the backend does not say its text_dim (manifest geometry missing)")
        parts = build_components(int(text_dim), None if image_dim is None else int(image_dim), seed, components,
                                 text_layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = WanImageToVideoPipeline(transformer=None, **parts)
    else:
        try:
            pipe = WanImageToVideoPipeline.from_pretrained(checkpoint, transformer=None, transformer_2=None,
                                                           torch_dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ModelSourceError(f"--pipeline {checkpoint!r}: cannot load ({str(e).splitlines()[0]})") from None
    device = backend.device
    for name in ("vae", "text_encoder", "image_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)
    install_backend(pipe, backend)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def _clean_prompt(text: str) -> str:
    """diffusers' Wan prompt_clean (ftfy when installed, then HTML unescape and whitespace folding)."""
    import html
    import re

    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def encode_prompt(pipe, prompt: str, max_sequence_length: int = 512, text_encoder=None) -> torch.Tensor:
    """UMT5 embeddings exactly as the pipeline makes them ([1, 512, text_dim], zero past the prompt's length),
    without requiring ftfy (diffusers' Wan pipelines import it only when installed, then call it). `text_encoder`:
    a drop-in for `pipe.text_encoder` (runtime/encoders.CompiledTextEncoder)."""
    inputs = pipe.tokenizer([_clean_prompt(prompt)], padding="max_length", max_length=max_sequence_length,
                            truncation=True, add_special_tokens=True, return_attention_mask=True,
                            return_tensors="pt")
    ids, mask = inputs.input_ids, inputs.attention_mask
    encoder = text_encoder or pipe.text_encoder
    device = text_encoder.device if text_encoder is not None else next(pipe.text_encoder.parameters()).device
    with torch.inference_mode():
        hidden = encoder(ids.to(device), mask.to(device)).last_hidden_state
    length = int(mask.gt(0).sum())
    out = torch.zeros_like(hidden)
    out[:, :length] = hidden[:, :length]
    return out.to(device=pipe.transformer.device, dtype=pipe.transformer.dtype)


def scheduled(scheduler, schedule: Schedule):
    """The pipeline's flow scheduler set up for `schedule`: a copy with the schedule's flow shift, whose
    `set_timesteps` takes the schedule's timesteps as unshifted sigmas (the scheduler shifts them, as it shifts its
    own spacing). WanImageToVideoPipeline calls `scheduler.set_timesteps(steps, device=...)` and passes neither, so
    the copy carries them. A schedule with neither returns `scheduler` itself: the default run is unchanged."""
    chosen = scheduler if schedule.shift is None and schedule.timesteps is None else _with_schedule(scheduler, schedule)
    _check_distinct_timesteps(chosen, schedule)
    return chosen


def _with_schedule(scheduler, schedule: Schedule):
    config, name = scheduler.config, type(scheduler).__name__
    # UniPC/DPM-Solver on flow sigmas spell the shift flow_shift; FlowMatchEulerDiscreteScheduler spells it shift
    key = "flow_shift" if config.get("use_flow_sigmas") else "shift" if "shift" in config else None
    if key is None or config.get("use_dynamic_shifting"):
        what = "fixed flow shift" if schedule.shift is not None else "flow-matching sigmas"
        raise BadInputError(f"the pipeline's {name} has no {what} (a flow scheduler on fixed shift is needed)",
                            param="shift" if schedule.shift is not None else "timesteps")
    if schedule.sigmas is not None and "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise BadInputError(f"timesteps: the pipeline's {name} takes no explicit sigmas (UniPC and "
                            "FlowMatchEuler do)", param="timesteps")
    copy = type(scheduler).from_config(config, **({key: schedule.shift} if schedule.shift is not None else {}))
    if schedule.sigmas is not None:  # an array: UniPC shifts them with array arithmetic (a list fails there)
        copy.set_timesteps = functools.partial(copy.set_timesteps, sigmas=np.array(schedule.sigmas))
    return copy


def _check_distinct_timesteps(scheduler, schedule: Schedule) -> None:
    """Refuse a schedule the scheduler rounds to a repeated timestep. UniPC keeps integer timesteps, so with many
    steps at a high shift the first ones collide (shift 3: from 334 steps, shift 5: from 201); its step index then
    starts one late and the last step fails an assertion after the whole run. Probed on a fresh copy, so the
    pipeline's own scheduler is untouched."""
    probe = _probe(scheduler)
    probe.set_timesteps(schedule.steps)
    ts = [float(t) for t in probe.timesteps]
    repeated = sorted({t for t in ts if ts.count(t) > 1}, reverse=True)
    if repeated:
        shift = probe.config.get("flow_shift", probe.config.get("shift"))
        what, fix = ("timesteps", "space them further apart") if schedule.timesteps else ("steps", "use fewer steps")
        raise BadInputError(f"{what} ({schedule.steps} steps): the pipeline's {type(scheduler).__name__} (shift "
                            f"{shift:g}) rounds them to a repeated timestep ({repeated[0]:g}); {fix}", param=what)


def run_pipeline(pipe, image, prompt: str, negative_prompt: str = "", frames: int = 5, height: int = 32,
                 width: int = 32, schedule: Schedule = Schedule(steps=2, guidance=5.0), seed: int = 0,
                 output_type: str = "np", clock: StageClock | None = None, compiled: CompiledStages | None = None):
    """Generate one video; returns float frames [F, H, W, 3] in [0, 1] (numpy) and the timesteps the scheduler
    ran (read back from it); output_type "latent": the denoised latents [C, F, H, W] (torch) instead of frames.
    Without CFG the negative prompt is not encoded: the pipeline never uses it. `clock` collects the stages'
    seconds (runtime/stages.py); `compiled`'s drop-ins run in place of the pipeline's calls (runtime/stages.py)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise BadInputError("image must be a PIL image")
    image = image.convert("RGB").resize((width, height))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # latents drawn on CPU so every backend/device starts from the same noise
    shape = (1, 16, *VideoShape(frames, height, width).latent)  # 16: the Wan VAE's latent channels
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(pipe.transformer.device)
    base = pipe.scheduler
    pipe.scheduler = scheduled(base, schedule)
    clock = clock or StageClock()
    try:
        with torch.inference_mode(), timed_stages(pipe, clock, compiled):
            with clock.stage("text"):
                text = compiled.text if compiled else None
                prompt_embeds = encode_prompt(pipe, prompt, text_encoder=text)
                negative_embeds = encode_prompt(pipe, negative_prompt or "", text_encoder=text) if schedule.cfg \
                    else None
            out = pipe(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                       height=height, width=width, num_frames=frames, num_inference_steps=schedule.steps,
                       guidance_scale=schedule.guidance, latents=latents,
                       generator=torch.Generator(device="cpu").manual_seed(seed), output_type=output_type)
        ran = [float(t) for t in pipe.scheduler.timesteps]
    finally:
        pipe.scheduler = base  # a cached pipeline's next job starts from its own scheduler
    return out.frames[0], ran


def encode_mp4(frames, path, fps: int = 16) -> None:
    """Float frames [F, H, W, 3] in [0, 1] -> H.264 mp4 (yuv420p, playable everywhere)."""
    import numpy as np

    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401 - the writer's ffmpeg binary
    except ImportError:
        raise MissingDependencyError("writing mp4 needs imageio and imageio-ffmpeg "
                                     "(pip install 'wanrt[video]')") from None
    data = (np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    h, w = data.shape[1:3]
    # yuv420p needs even sizes; macro_block_size 16 would rescale small test videos, so pad instead
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        data = np.pad(data, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp unless this is set: Python code run between fork and
    # exec in a threaded process (a Ray replica, torch's pools) can deadlock or abort the child, and the new
    # process group hides ffmpeg from whoever stops ours. Without it, Popen takes its vfork/exec path.
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                                output_params=["-movflags", "+faststart"])
    try:
        for frame in data:
            writer.append_data(frame)
    except BaseException:
        # interrupted (Ctrl-C also reaches ffmpeg now): the interruption is the error to report, not the broken pipe
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()
