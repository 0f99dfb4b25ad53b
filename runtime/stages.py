"""Per-stage seconds of one pipeline run, and the compiled VAE decoder as a drop-in for `pipe.vae.decode`.

Stages are timed at the calls WanImageToVideoPipeline already makes, by wrapping them on the instance for one run
(restored after): `encode_image` (CLIP), `vae.encode` (the conditioning frame), the DiT's denoise loop (from the
first transformer forward to the start of the VAE decode: every step's forwards and scheduler updates, plus the
latents' de-normalisation, a few element-wise ops) and `vae.decode`. The text encoder and the mp4 writer are wanrt's
own calls, timed where they are made (runtime/pipeline.run_pipeline, runtime/generate.generate).

The compiled decode replaces only `vae.decode`: diffusers still de-normalises the latents (latents_mean/std) before
it and runs its video processor after it, so the post-processing is diffusers' own on either backend.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from wanrt.artifacts import cache_root, spec_hash, writable_cache
from wanrt.engines.vae import TileSpec, VaeDecoder
from wanrt.export.vae import export_vae_decoder

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


def vae_weights_key(vae) -> str:
    """The cache key of a VAE's export: its config and the sha256 of its weights (fp32, as the graphs are)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())  # no copy for a CPU fp32 VAE
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}  # "_use_default_values": set order
    return spec_hash({"vae_config": config, "weights_sha256": digest.hexdigest()})


def vae_export_dir(vae, cache_dir: Path | None = None, say: Callable[[str], None] = lambda _m: None) -> Path:
    """The VAE decoder's export in wanrt's cache (exports/vae-KEY), exported there once. The graphs are fp32 CPU
    ones: a VAE on another device or in another dtype is exported from an fp32 CPU copy, leaving the pipeline's as
    it is (the export casts the VAE it is given to fp32)."""
    key = f"vae-{vae_weights_key(vae)}"
    out = (cache_dir or cache_root()) / "exports" / key
    if not (out / "manifest.json").is_file():
        out = writable_cache("exports", cache_dir) / key  # read-only cache: a temporary, with a warning
        say(f"exporting the VAE decoder to ONNX ({out})")
        on_cpu_fp32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in vae.parameters())
        export_vae_decoder(vae if on_cpu_fp32 else copy.deepcopy(vae).to("cpu", torch.float32), out, force=True)
    return out


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


@contextlib.contextmanager
def timed_stages(pipe, clock: StageClock, decode: Callable | None = None) -> Iterator[None]:
    """Within: the pipeline's CLIP encode, VAE encode, DiT loop and VAE decode timed into `clock`; `decode`, when
    given, runs in place of `pipe.vae.decode`. The instance attributes are removed after (the methods come back)."""
    vae = pipe.vae
    decode = decode or vae.decode  # the bound method, taken before the instance attribute shadows it
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

    patched = [(pipe, "encode_image", clock.timed("image", pipe.encode_image)),
               (vae, "encode", clock.timed("vae_encode", vae.encode)), (vae, "decode", decode_after_loop),
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
