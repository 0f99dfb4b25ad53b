"""The exact pixel <-> latent map and the I2V conditioning of the small motion model (issue 22).

Latent map (`PixelLatentMap`): pixels in [-1, 1], each 2x2 spatial patch of RGB (12 values) times a fixed 16x12
matrix Q with orthonormal columns (QR of a seeded Gaussian) -> 16 latent channels at half the height and width and
every frame (time stride 1). decode = Q^T then depth-to-space, so decode(encode(x)) == x up to float rounding.
What it is NOT: not the Wan VAE (no temporal stride 4, spatial stride 2 not 8, no compression: 16 latents carry 12
pixel values), not learned or perceptual, and not onto: a latent's 4-dimensional component outside Q's range is
dropped by decode, so a model's output there is lost, not wrong pixels.

Conditioning, laid out as Wan I2V's (diffusers WanImageToVideoPipeline): hidden_states = [x_t (16), mask (4),
condition (16)] = 36 channels; mask = 1 on the first latent frame, 0 after (all 4 channels equal: with time stride
1 each latent frame is one pixel frame); condition = encode([first frame, zeros...]). The image embedding stands
in for CLIP: the first frame's 4x4 RGB patches (48 values) times a fixed seeded matrix -> image_dim, one token per
patch; it carries pixels, not semantics. Text: a fixed seeded token block per motion name (TEXT_TOKENS tokens).
"""

from __future__ import annotations

import torch

from wanrt.tools.motion_clips import MOTIONS

LATENT_CHANNELS = 16
PATCH = 2  # spatial stride of the latent map
IMAGE_PATCH = 4  # pixels per side of one image-embedding token
TEXT_TOKENS = 4
MAP_SEED = 2022  # fixed: the map is part of the data definition, never trained


def _seeded_normal(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class PixelLatentMap:
    """encode: uint8 or [-1, 1] video [B, T, H, W, 3] -> [B, 16, T, H/2, W/2]; decode: the inverse on Q's range."""

    def __init__(self) -> None:
        q, _ = torch.linalg.qr(_seeded_normal(MAP_SEED, LATENT_CHANNELS, 3 * PATCH * PATCH))
        self.q = q.float()  # [16, 12], orthonormal columns

    @staticmethod
    def normalize(video: torch.Tensor) -> torch.Tensor:
        return video.float() / 127.5 - 1.0 if video.dtype == torch.uint8 else video.float()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        x = self.normalize(video)
        b, t, h, w, c = x.shape
        patches = x.reshape(b, t, h // PATCH, PATCH, w // PATCH, PATCH, c).permute(0, 1, 2, 4, 3, 5, 6)
        patches = patches.reshape(b, t, h // PATCH, w // PATCH, PATCH * PATCH * c)
        return torch.einsum("lp,bthwp->blthw", self.q, patches)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 16, T, h, w] -> [-1, 1]-scale video [B, T, 2h, 2w, 3] (not clamped)."""
        b, _, t, h, w = latents.shape
        patches = torch.einsum("lp,blthw->bthwp", self.q, latents.float())
        x = patches.reshape(b, t, h, w, PATCH, PATCH, 3).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, t, h * PATCH, w * PATCH, 3)

    @staticmethod
    def to_uint8(video: torch.Tensor) -> torch.Tensor:
        return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def i2v_condition(latent_map: PixelLatentMap, first: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, 20, T, h, w]: mask (4) then the condition latents (16) of [first frame, zeros...] (Wan's layout)."""
    first = latent_map.normalize(first)  # [B, H, W, 3]
    video = torch.zeros(first.shape[0], frames, *first.shape[1:])
    video[:, 0] = first
    condition = latent_map.encode(video)
    mask = torch.zeros(first.shape[0], 4, *condition.shape[2:])
    mask[:, :, 0] = 1.0
    return torch.cat([mask, condition], dim=1)


class FixedEmbeddings:
    """The stand-ins for CLIP (image) and umT5 (text): fixed seeded projections, never trained."""

    def __init__(self, image_dim: int, text_dim: int) -> None:
        self.image_proj = _seeded_normal(MAP_SEED + 1, 3 * IMAGE_PATCH * IMAGE_PATCH, image_dim).float()
        self.image_proj /= (3 * IMAGE_PATCH * IMAGE_PATCH) ** 0.5
        self.text = _seeded_normal(MAP_SEED + 2, len(MOTIONS), TEXT_TOKENS, text_dim).float()

    def image(self, first: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] -> [B, (H/4)(W/4), image_dim]."""
        x = PixelLatentMap.normalize(first)
        b, h, w, c = x.shape
        p = IMAGE_PATCH
        patches = x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
        return patches @ self.image_proj

    def text_tokens(self, motions: torch.Tensor) -> torch.Tensor:
        """int motion indices [B] (into MOTIONS) -> [B, TEXT_TOKENS, text_dim]."""
        return self.text[motions.long()]
