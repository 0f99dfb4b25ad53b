"""Video shapes in pixel space (`VideoShape`, the VAE/patch grid check, the FRAMESxHxW parser): torch-free, so the
command line can declare and check its options without importing torch (`wanrt CMD --help` stays instant).
`wanrt.dit_io` re-exports all of it as part of the DiT's I/O contract."""

from __future__ import annotations

from dataclasses import dataclass

from wanrt.errors import BadInputError

VAE_STRIDE = (4, 8, 8)  # frames, height, width: pixel frames are 4k+1; sizes are multiples of 16 (8 x patch 2)


@dataclass(frozen=True)
class VideoShape:
    """A video request in pixel space: `frames` = 4k+1, `height`/`width` multiples of 16."""

    frames: int
    height: int
    width: int

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
        raise BadInputError(f"frames {frames}: must be 4k+1 (1, 5, 9, ..., 81) for the Wan VAE's temporal stride 4")
    for name, v in (("height", height), ("width", width)):
        if v < 16 or v % 16:
            raise BadInputError(f"{name} {v}: must be a positive multiple of 16 (VAE stride 8 x patch 2)")
    return VideoShape(frames, height, width)


def parse_video_shape(text: str, what: str) -> VideoShape:
    """'FRAMESxHEIGHTxWIDTH' in pixels (e.g. 81x480x832) -> a checked VideoShape; `what` names the flag."""
    try:
        frames, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInputError(f"{what} {text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 81x480x832") from None
    return check_video_shape(frames, height, width)
