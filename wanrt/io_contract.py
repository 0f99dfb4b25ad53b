"""The torch-free half of the DiT's I/O contract: video shapes and the VAE/patch grid, the exported range and its
check, input/output names, shapes and dtypes as data. The command line declares its options with it at import time
(`wanrt CMD --help` stays instant) and the serving ingress checks requests with it without loading torch;
`wanrt.dit_io` adds the torch half (dummy inputs, dynamic axes) on top.

Every refusal is a BadInputError whose `param` names the axis in the user's units (frames, height, width), so a
caller maps it to its own field name instead of parsing the message.

The graph's signature: (latents [B, C_in, F, H, W], timestep [B] float32, text [B, 512, text_dim],
image [B, 257, image_dim] (I2V only)) -> prediction [B, C_out, F, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from wanrt.errors import BadInputError

VAE_STRIDE = (4, 8, 8)  # frames, height, width: pixel frames are 4k+1; sizes are multiples of 16 (8 x patch 2)
AXES = ("frames", "height", "width")  # pixel-space names of the latent axes F, H, W

# Fixed by the real encoders: UMT5 text is padded to 512 tokens (diffusers' I2V attention hard-codes it) and the
# CLIP ViT-H image encoder yields 257 tokens (256 patches + class token).
TEXT_TOKENS = 512
IMAGE_TOKENS = 257

INPUT_NAMES = ("latents", "timestep", "text", "image")
OUTPUT_NAMES = ("prediction",)
# inputs whose dtype is fixed whatever the graph's (the time embedder runs in fp32); the rest take the graph's
FIXED_INPUT_DTYPES = {"timestep": "fp32"}


@dataclass(frozen=True)
class VideoShape:
    """A video request in pixel space: `frames` = 4k+1, `height`/`width` multiples of 16."""

    frames: int
    height: int
    width: int

    @classmethod
    def from_latent(cls, latent: tuple[int, int, int]) -> VideoShape:
        """The pixel-space video of a latent (frames, height, width) grid (the inverse of `latent`)."""
        f, h, w = latent
        return cls((f - 1) * VAE_STRIDE[0] + 1, h * VAE_STRIDE[1], w * VAE_STRIDE[2])

    @property
    def latent(self) -> tuple[int, int, int]:
        return ((self.frames - 1) // VAE_STRIDE[0] + 1, self.height // VAE_STRIDE[1], self.width // VAE_STRIDE[2])

    def tokens(self, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
        f, h, w = self.latent
        return (f // patch[0]) * (h // patch[1]) * (w // patch[2])

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def check_video_shape(frames: int, height: int, width: int) -> VideoShape:
    """Pixel-space request -> VideoShape, refusing what the VAE/patching cannot represent."""
    if frames < 1 or (frames - 1) % VAE_STRIDE[0]:
        raise BadInputError(f"frames {frames}: must be 4k+1 (1, 5, 9, ..., 81) for the Wan VAE's temporal stride 4",
                            param="frames")
    for name, v in (("height", height), ("width", width)):
        if v < 16 or v % 16:
            raise BadInputError(f"{name} {v}: must be a positive multiple of 16 (VAE stride 8 x patch 2)", param=name)
    return VideoShape(frames, height, width)


def parse_video_shape(text: str, what: str) -> VideoShape:
    """'FRAMESxHEIGHTxWIDTH' in pixels (e.g. 81x480x832) -> a checked VideoShape; `what` names the flag."""
    try:
        frames, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInputError(f"{what} {text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 81x480x832", param=what) from None
    return check_video_shape(frames, height, width)


def pixel_range(latent_ranges: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """An artifact's latent range ({"F": (lo, hi), "H": ..., "W": ...}) in the user's units: {"frames": (lo, hi),
    "height": ..., "width": ...} in pixel frames and pixels."""
    lo = VideoShape.from_latent(tuple(latent_ranges[a][0] for a in "FHW"))
    hi = VideoShape.from_latent(tuple(latent_ranges[a][1] for a in "FHW"))
    return {name: (getattr(lo, name), getattr(hi, name)) for name in AXES}


def check_latent_range(shape: VideoShape, latent_ranges: Mapping[str, Any] | None) -> None:
    """`shape` fits an artifact's exported range (`shape_ranges["latent"]` of its manifest: {"F": (lo, hi), "H": ...,
    "W": ...}); None means no range to check (eager backends)."""
    if not latent_ranges:
        return
    full = {axis: latent_ranges.get(axis, (value, value)) for axis, value in zip("FHW", shape.latent)}
    for axis, name, value in zip("FHW", AXES, shape.latent):
        lo, hi = full[axis]
        if not lo <= value <= hi:
            # in the user's units (pixels, pixel frames), as they typed --shape; the latent grid is an internal
            plo, phi = pixel_range(full)[name]
            raise BadInputError(f"{shape}: {name} {getattr(shape, name)} is outside the artifact's range "
                                f"{plo}..{phi} {'frames' if axis == 'F' else 'pixels'}", param=name)


@dataclass(frozen=True)
class ShapeRange:
    """The shapes a graph is exported for: pixel-space min/max video and the largest batch."""

    min_shape: VideoShape
    max_shape: VideoShape
    max_batch: int = 2

    @classmethod
    def from_manifest(cls, shape_ranges: Mapping[str, Any] | None, default: ShapeRange) -> ShapeRange:
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


class DitSignature:
    """The exported component's names and shapes from the model's geometry (`in_channels`, `text_dim`,
    `image_dim`: a model config or an export manifest's `geometry`); `DitIO` adds dtypes as torch types."""

    def __init__(self, geometry: Mapping[str, Any]):
        self.geometry = dict(geometry)
        self.has_image = self.geometry.get("image_dim") is not None  # T2V models (1.3B) have no image branch

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
