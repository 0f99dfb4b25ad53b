"""The DiT's I/O contract, torch half: one declaration read by export, validation, engines, FP8 calibration, every
runtime backend, bench, generate and the tests.

optimum's `OnnxConfig` is the model: `DitIO` declares the component's input/output names, shapes, dtypes and dynamic
axes, and generates seeded dummy inputs for any shape inside the exported range. Names, shapes, video shapes, the
VAE grid and the range check are torch-free (`wanrt.io_contract`, which the serving ingress reads) and re-exported
here; this module adds what needs torch: the dtype map, dummy inputs, torch.export's dynamic axes.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

# the torch-free half, re-exported: callers of the contract import one module
from wanrt.io_contract import (IMAGE_TOKENS, INPUT_NAMES, OUTPUT_NAMES, TEXT_TOKENS, VAE_STRIDE,  # noqa: F401
                               FIXED_INPUT_DTYPES, DitSignature, ShapeRange, VideoShape, check_latent_range,
                               check_video_shape, parse_video_shape)

# wanrt's dtype names (wanrt.choices.Dtype) as torch dtypes: the one map (models, extracted factors, bench peaks)
TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DitIO(DitSignature):
    """The exported component: `DitSignature`'s names and shapes, plus the graph's torch dtype, dynamic axes and
    dummy inputs."""

    def __init__(self, geometry: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                 shapes: ShapeRange | None = None):
        super().__init__(geometry)
        self.dtype, self.shapes = dtype, shapes

    @classmethod
    def from_graph_inputs(cls, inputs: Mapping[str, tuple[int, ...]], shapes: ShapeRange | None = None) -> "DitIO":
        """The contract of an existing graph from its input shapes ({name: dims}; symbolic dims as anything):
        channels and embedding widths are the static dims of latents, text and image."""
        geometry = {"in_channels": inputs["latents"][1], "text_dim": inputs["text"][2],
                    "image_dim": inputs["image"][2] if "image" in inputs else None}
        return cls(geometry, torch.float32, shapes)

    def input_dtype(self, name: str) -> torch.dtype:
        """timestep is always float32 (the time embedder runs in fp32); the rest in the graph's dtype."""
        return TORCH_DTYPES[FIXED_INPUT_DTYPES[name]] if name in FIXED_INPUT_DTYPES else self.dtype

    def dummy_inputs(self, batch: int, shape: VideoShape, seed: int = 0, *, timestep: float | None = None,
                     uncond: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Seeded CPU inputs at the real statistics' scale: N(0,1) latents and embeddings, timesteps uniform in
        (0.5, 999.5) or the fixed `timestep`. `uncond` adds `text_uncond` (the second text of a CFG step).
        Drawn in the order latents, timestep, text, text_uncond, image from `generator` (else one seeded by
        `seed`), so the same arguments always give the same tensors."""
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        shapes = self.input_shapes(batch, shape)
        out: dict[str, torch.Tensor] = {"latents": torch.randn(shapes["latents"], generator=gen).to(self.dtype)}
        out["timestep"] = (torch.full((batch,), float(timestep)) if timestep is not None
                           else torch.rand((batch,), generator=gen) * 999.0 + 0.5)
        out["text"] = torch.randn(shapes["text"], generator=gen).to(self.dtype)
        if uncond:
            out["text_uncond"] = torch.randn(shapes["text"], generator=gen).to(self.dtype)
        if self.has_image:
            out["image"] = torch.randn(shapes["image"], generator=gen).to(self.dtype)
        return out

    def cfg_feeds(self, inputs: Mapping[str, torch.Tensor]) -> list[tuple]:
        """The two positional forwards of one CFG step (conditional, unconditional) from dummy_inputs(uncond=True);
        `image` is None for T2V models."""
        image = inputs.get("image")
        return [(inputs["latents"], inputs["timestep"], inputs["text"], image),
                (inputs["latents"], inputs["timestep"], inputs["text_uncond"], image)]

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        """torch.export dims per input (needs `shapes`): batch, latent frames, and latent H/W as 2 x an integer
        so the graph knows the 2x2 patching divides them."""
        if self.shapes is None:
            raise ValueError("DitIO.dynamic_shapes needs the exported ShapeRange")
        lat = self.shapes.latent
        Dim = torch.export.Dim
        batch = Dim("batch", min=1, max=self.shapes.max_batch)
        frames = Dim("latent_frames", min=lat["F"][0], max=lat["F"][1])
        half_h = Dim("latent_half_height", min=lat["H"][0] // 2, max=lat["H"][1] // 2)
        half_w = Dim("latent_half_width", min=lat["W"][0] // 2, max=lat["W"][1] // 2)
        axes = {"latents": {0: batch, 2: frames, 3: 2 * half_h, 4: 2 * half_w}, "timestep": {0: batch},
                "text": {0: batch}}
        if self.has_image:
            axes["image"] = {0: batch}
        return axes

    def trace_shape(self) -> VideoShape:
        """The example shape torch.export traces with (see ShapeRange.example_shape)."""
        if self.shapes is None:
            raise ValueError("DitIO.trace_shape needs the exported ShapeRange")
        return self.shapes.example_shape()
