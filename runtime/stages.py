"""Per-stage seconds of one pipeline run, and the compiled stages as drop-ins for the pipeline's calls.

Stages are timed at the calls WanImageToVideoPipeline already makes, by wrapping them on the instance for one run
(restored after): `encode_image` (CLIP), `vae.encode` (the conditioning frame), the DiT's denoise loop (from the
first transformer forward to the start of the VAE decode: every step's forwards and scheduler updates, plus the
latents' de-normalisation, a few element-wise ops) and `vae.decode`. The text encoder and the mp4 writer are wanrt's
own calls, timed where they are made (runtime/pipeline.run_pipeline, runtime/generate.generate).

The compiled stages replace only those calls: diffusers still normalises the encoded latents and de-normalises them
(latents_mean/std) before the decode, prepares the image for CLIP and the prompt's tokens, and runs its video
processor after the decode, so pre- and post-processing are diffusers' own on every backend.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import cache_root, spec_hash, writable_cache
from wanrt.engines.vae import TileSpec, VaeDecoder, VaeEncoder
from wanrt.export.vae import export_vae_decoder, export_vae_encoder

_UNSET = object()
STAGES = ("text", "image", "vae_encode", "dit", "vae", "mp4")  # in the order a video goes through them


class StageClock:
    """Seconds per stage, summed over calls (CFG encodes the text twice: both count as "text")."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.dit_start: float | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def timed(self, name: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)
        return run

    def end_dit(self) -> None:
        if self.dit_start is not None:
            self.seconds["dit"] = self.seconds.get("dit", 0.0) + time.perf_counter() - self.dit_start
            self.dit_start = None

    def ordered(self) -> dict[str, float]:
        return {k: self.seconds[k] for k in STAGES if k in self.seconds}


def weights_key(module, config: dict[str, Any]) -> str:
    """The cache key of a module's export: its config and the sha256 of its weights (fp32, as the graphs are)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())  # no copy for CPU fp32 weights
    config = {k: v for k, v in config.items() if not k.startswith("_")}  # "_use_default_values": set order
    return spec_hash({"config": config, "weights_sha256": digest.hexdigest()})


def cached_export(module, name: str, what: str, export: Callable[[Any, Path], Any], cache_dir: Path | None = None,
                  say: Callable[[str], None] = lambda _m: None) -> Path:
    """exports/NAME in wanrt's cache, made once by `export(module, dir)`. The graphs are fp32 CPU ones: a module on
    another device or in another dtype is exported from an fp32 CPU copy, leaving the pipeline's as it is."""
    out = (cache_dir or cache_root()) / "exports" / name
    if not (out / "manifest.json").is_file():
        out = writable_cache("exports", cache_dir) / name  # read-only cache: a temporary, with a warning
        say(f"exporting the {what} to ONNX ({out})")
        on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in module.parameters())
        export(module if on_cpu_fp32 else copy.deepcopy(module).to("cpu", torch.float32), out)
    return out


VAE_PARTS = {"decoder": ("vae", export_vae_decoder), "encoder": ("vae-enc", export_vae_encoder)}  # cache prefix


def vae_export_dir(vae, cache_dir: Path | None = None, say: Callable[[str], None] = lambda _m: None,
                   part: str = "decoder", key: str | None = None) -> Path:
    """The VAE decoder's (or encoder's) export in wanrt's cache (exports/vae-KEY, vae-enc-KEY); `key`:
    weights_key of the VAE, when the caller has it (hashing the real VAE's weights takes a second)."""
    prefix, export = VAE_PARTS[part]
    key = key or weights_key(vae, dict(vae.config))
    return cached_export(vae, f"{prefix}-{key}", f"VAE {part}", lambda m, out: export(m, out, force=True),
                         cache_dir, say)


class CompiledVaeDecode:
    """`vae.decode(z, return_dict=False)` on a VaeDecoder: tiled when diffusers would tile (`vae.use_tiling`, with
    the VAE's own tile sizes), clamped to [-1, 1] as diffusers' decode is; a float32 tensor on the latents' device."""

    def __init__(self, decoder: VaeDecoder, vae):
        self.decoder = decoder
        self.tile = TileSpec(vae.tile_sample_min_height, vae.tile_sample_min_width, vae.tile_sample_stride_height,
                             vae.tile_sample_stride_width) if getattr(vae, "use_tiling", False) else None

    def __call__(self, z: torch.Tensor, return_dict: bool = True):
        video = torch.from_numpy(self.decoder.decode(z.detach().to("cpu", torch.float32).numpy(), tile=self.tile))
        video = video.to(z.device)
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput  # lazy: diffusers, a heavy import

            return DecoderOutput(sample=video)
        return (video,)


class CompiledVaeEncode:
    """`vae.encode(video)` on a VaeEncoder, returning diffusers' own output type around the moments (so the
    pipeline's `retrieve_latents(..., "argmax")` takes their mean as it does from diffusers' encode). Untiled only:
    a tiling VAE's encode stays diffusers' (runtime/generate.compiled_stages)."""

    def __init__(self, encoder: VaeEncoder):
        self.encoder = encoder

    def __call__(self, x: torch.Tensor, return_dict: bool = True):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # lazy: diffusers, a heavy import
        from diffusers.models.modeling_outputs import AutoencoderKLOutput

        moments = torch.from_numpy(self.encoder.encode(x.detach().to("cpu", torch.float32).numpy())).to(x.device)
        posterior = DiagonalGaussianDistribution(moments.to(x.dtype))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)


@dataclass(frozen=True)
class CompiledStages:
    """Drop-ins for the pipeline's calls, each None where diffusers' own runs: the VAE's decode and encode
    (`vae_encode` None also for a tiling VAE, whose tiled encode is not exported), CLIP's `encode_image` and the
    text encoder wanrt's `encode_prompt` calls (runtime/encoders.py)."""

    vae_decode: Callable | None = None
    vae_encode: Callable | None = None
    image: Callable | None = None
    text: Callable | None = None


@contextlib.contextmanager
def timed_stages(pipe, clock: StageClock, compiled: CompiledStages | None = None) -> Iterator[None]:
    """Within: the pipeline's CLIP encode, VAE encode, DiT loop and VAE decode timed into `clock`, each drop-in of
    `compiled` in place of its call. The instance attributes are removed after (the methods come back)."""
    vae, compiled = pipe.vae, compiled or CompiledStages()
    decode = compiled.vae_decode or vae.decode  # bound methods, taken before the instance attributes shadow them
    encode = compiled.vae_encode or vae.encode
    encode_image = compiled.image or pipe.encode_image
    transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]

    def first_forward(fn):
        def run(*args, **kwargs):
            if clock.dit_start is None:
                clock.dit_start = time.perf_counter()
            return fn(*args, **kwargs)
        return run

    def decode_after_loop(*args, **kwargs):
        clock.end_dit()
        return clock.timed("vae", decode)(*args, **kwargs)

    patched = [(pipe, "encode_image", clock.timed("image", encode_image)),
               (vae, "encode", clock.timed("vae_encode", encode)), (vae, "decode", decode_after_loop),
               *[(t, "forward", first_forward(t.forward)) for t in transformers]]
    before = [(obj, name, obj.__dict__.get(name, _UNSET)) for obj, name, _ in patched]
    for obj, name, fn in patched:
        object.__setattr__(obj, name, fn)
    try:
        yield
        clock.end_dit()  # output_type "latent": no decode ends the loop
    finally:
        for obj, name, was in before:  # an instance attribute someone else set comes back too
            if was is _UNSET:
                obj.__dict__.pop(name, None)
            else:
                object.__setattr__(obj, name, was)
