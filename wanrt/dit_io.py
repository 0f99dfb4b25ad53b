"""The DiT's I/O contract: one declaration read by export, validation, engines, FP8 calibration, every runtime
backend, bench, generate, serve and the tests.

optimum's `OnnxConfig` is the model: `DitIO` declares the component's input/output names, shapes, dtypes and dynamic
axes, and generates seeded dummy inputs for any shape inside the exported range. Video shapes live here too
(`VideoShape`, the VAE/patch grid check, `ShapeRange` and the range check), because they are what the contract's
dynamic axes are made of.

The graph's signature: (latents [B, C_in, F, H, W], timestep [B] float32, text [B, 512, text_dim],
image [B, 257, image_dim] (I2V only)) -> prediction [B, C_out, F, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from wanrt.errors import BadInputError
# torch-free so the CLI can use them at import time; re-exported here as part of the contract
from wanrt.video_shape import VAE_STRIDE, VideoShape, check_video_shape, parse_video_shape  # noqa: F401

# Fixed by the real encoders: UMT5 text is padded to 512 tokens (diffusers' I2V attention hard-codes it) and the
# CLIP ViT-H image encoder yields 257 tokens (256 patches + class token).
TEXT_TOKENS = 512
IMAGE_TOKENS = 257

INPUT_NAMES = ("latents", "timestep", "text", "image")
OUTPUT_NAMES = ("prediction",)


def check_latent_range(shape: VideoShape, latent_ranges: Mapping[str, Any] | None) -> None:
    """`shape` fits an artifact's exported range (`shape_ranges["latent"]` of its manifest: {"F": (lo, hi), "H": ...,
    "W": ...}); None means no range to check (eager backends)."""
    if not latent_ranges:
        return
    names = {"F": ("frames", lambda n: (n - 1) * VAE_STRIDE[0] + 1), "H": ("height", lambda n: n * VAE_STRIDE[1]),
             "W": ("width", lambda n: n * VAE_STRIDE[2])}
    for axis, value in zip("FHW", shape.latent):
        lo, hi = latent_ranges.get(axis, (value, value))
        if not lo <= value <= hi:
            # in the user's units (pixels, pixel frames), as they typed --shape; the latent grid is an internal
            name, to_pixels = names[axis]
            raise BadInputError(f"{shape}: {name} {getattr(shape, name)} is outside the artifact's range "
                                f"{to_pixels(lo)}..{to_pixels(hi)} {'frames' if axis == 'F' else 'pixels'}")


@dataclass(frozen=True)
class ShapeRange:
    """The shapes a graph is exported for: pixel-space min/max video and the largest batch."""

    min_shape: VideoShape
    max_shape: VideoShape
    max_batch: int = 2

    @classmethod
    def from_manifest(cls, shape_ranges: Mapping[str, Any] | None, default: "ShapeRange") -> "ShapeRange":
        """An export manifest's `shape_ranges` ({"min": {...}, "max": {...}, "batch": [1, n]}), else `default`."""
        if not shape_ranges:
            return default
        batch = shape_ranges.get("batch") or (1, default.max_batch)
        return cls(VideoShape(**shape_ranges["min"]), VideoShape(**shape_ranges["max"]), batch[1])

    @property
    def latent(self) -> dict[str, tuple[int, int]]:
        lo, hi = self.min_shape.latent, self.max_shape.latent
        return {"F": (lo[0], hi[0]), "H": (lo[1], hi[1]), "W": (lo[2], hi[2])}

    def example_shape(self) -> VideoShape:
        """A small shape strictly inside the range with no axis equal to 1 (5 frames, 32x32 where the range
        allows): torch.export specialises sizes 0 and 1, and calibration wants a cheap but typical shape."""
        lo, hi = self.min_shape, self.max_shape
        return VideoShape(min(max(lo.frames, 5), hi.frames), min(max(lo.height, 32), hi.height),
                          min(max(lo.width, 32), hi.width))


class DitIO:
    """The exported component: names, shapes, dtypes, dynamic axes and dummy inputs, from the model's geometry
    (`in_channels`, `text_dim`, `image_dim`: a model config or an export manifest's `geometry`)."""

    def __init__(self, geometry: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                 shapes: ShapeRange | None = None):
        self.geometry, self.dtype, self.shapes = dict(geometry), dtype, shapes
        self.has_image = self.geometry.get("image_dim") is not None  # T2V models (1.3B) have no image branch

    @classmethod
    def from_graph_inputs(cls, inputs: Mapping[str, tuple[int, ...]], shapes: ShapeRange | None = None) -> "DitIO":
        """The contract of an existing graph from its input shapes ({name: dims}; symbolic dims as anything):
        channels and embedding widths are the static dims of latents, text and image."""
        geometry = {"in_channels": inputs["latents"][1], "text_dim": inputs["text"][2],
                    "image_dim": inputs["image"][2] if "image" in inputs else None}
        return cls(geometry, torch.float32, shapes)

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES if self.has_image else INPUT_NAMES[:3]

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES

    def input_shapes(self, batch: int, shape: VideoShape) -> dict[str, tuple[int, ...]]:
        return self.latent_input_shapes(batch, shape.latent)

    def latent_input_shapes(self, batch: int, latent: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
        """Input shapes for a latent (frames, height, width) grid, e.g. one read from a request's tensors."""
        g = self.geometry
        shapes = {"latents": (batch, int(g["in_channels"]), *latent), "timestep": (batch,),
                  "text": (batch, TEXT_TOKENS, int(g["text_dim"]))}
        if self.has_image:
            shapes["image"] = (batch, IMAGE_TOKENS, int(g["image_dim"]))
        return shapes

    def input_dtype(self, name: str) -> torch.dtype:
        """timestep is always float32 (the time embedder runs in fp32); the rest in the graph's dtype."""
        return torch.float32 if name == "timestep" else self.dtype

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
