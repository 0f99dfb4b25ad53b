"""The small motion model of issue 22 at inference: its exact pixel <-> latent map, Wan's I2V conditioning, the
flow-matching velocity and sampler, and the trained weights wanrt ships (tools/train_small.py trains them).

Latent map (`PixelLatentMap`): pixels in [-1, 1], each 2x2 spatial patch of RGB (12 values) times a fixed 16x12
matrix Q with orthonormal columns (QR of a seeded Gaussian) -> 16 latent channels at half the height and width and
every frame (time stride 1). decode = Q^T then depth-to-space, so decode(encode(x)) == x up to float rounding.
What it is NOT: not the Wan VAE (no temporal stride 4, spatial stride 2 not 8, no compression: 16 latents carry 12
pixel values), not learned or perceptual, and not onto: a latent's 4-dimensional component outside Q's range is
dropped by decode, so a model's output there is lost, not wrong pixels.

Conditioning, laid out as Wan I2V's (diffusers WanImageToVideoPipeline): hidden_states = [x_t (16), mask (4),
condition (16)] = 36 channels; mask = 1 on the first latent frame, 0 after (all 4 channels equal: with time stride
1 each latent frame is one pixel frame); condition = encode([first frame, zeros...]). The image embedding stands
in for CLIP ViT-H's 257 tokens: a class token (the patches' mean), then one token per 2x2 RGB patch of the first
frame (12 values) through a fixed 12 -> image_dim map with orthonormal rows, so no pixel value is lost: 257 tokens
at 32x32 (1 + 16 x 16, as CLIP's), carrying pixels, not semantics. Text: a fixed seeded block of PROMPT_TOKENS
tokens per motion name, zero-padded to Wan's 512 as the pipeline pads umT5's output (diffusers' WanAttnProcessor
takes the last 512 context tokens as text and the rest as image: with fewer, the image branch would read nothing;
CONDITIONING below).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F

from wanrt.artifacts import sha256_file
from wanrt.errors import BadInputError
from wanrt.export.presets import PRESETS
from wanrt.io_contract import TEXT_TOKENS

# The conditioning's version, recorded with every trained model (tools/train_small.py's manifest, the shipped file's
# metadata) and checked wherever one is loaded. Version 1 (2026-12-03..07) passed 4 text and 64 image tokens;
# diffusers' WanAttnProcessor splits the context at len - 512, so the image branch (add_k/add_v) read no token and
# the image tokens went through the text cross-attention. Version 2 passes Wan's 512 text + 257 image tokens.
CONDITIONING = 2


MOTIONS = ("walk", "run", "jump", "wave", "squat")  # a clip's motion index points here (tools/motion_clips.py)
LATENT_CHANNELS = 16
PATCH = 2  # spatial stride of the latent map
PROMPT_TOKENS = 4  # a motion name's own text tokens; the rest of Wan's 512 are zeros
MAP_SEED = 2022  # fixed: the map is part of the data definition, never trained


def _seeded_normal(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def patches(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, 3] -> [B, T, H/2, W/2, 12]: each 2x2 RGB patch flattened (row, column, channel); the latent map
    and the image tokens read the same patches."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // PATCH, PATCH, w // PATCH, PATCH, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h // PATCH, w // PATCH, PATCH * PATCH * c)


class PixelLatentMap:
    """encode: uint8 or [-1, 1] video [B, T, H, W, 3] -> [B, 16, T, H/2, W/2]; decode: the inverse on Q's range."""

    def __init__(self) -> None:
        q, _ = torch.linalg.qr(_seeded_normal(MAP_SEED, LATENT_CHANNELS, 3 * PATCH * PATCH))
        self.q = q.float()  # [16, 12], orthonormal columns

    @staticmethod
    def normalize(video: torch.Tensor) -> torch.Tensor:
        return video.float() / 127.5 - 1.0 if video.dtype == torch.uint8 else video.float()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return torch.einsum("lp,bthwp->blthw", self.q, patches(self.normalize(video)))

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
        if image_dim < 3 * PATCH * PATCH:
            raise BadInputError(f"image_dim {image_dim}: the image tokens carry 12 pixel values, so at least 12")
        q, _ = torch.linalg.qr(_seeded_normal(MAP_SEED + 1, image_dim, 3 * PATCH * PATCH))
        self.image_proj = q.T.float()  # [12, image_dim]: orthonormal rows, so no pixel value is lost
        self.text = _seeded_normal(MAP_SEED + 2, len(MOTIONS), PROMPT_TOKENS, text_dim).float()

    def image(self, first: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] -> [B, 1 + (H/2)(W/2), image_dim]: the class token (the patches' mean), then the patches."""
        tokens = patches(PixelLatentMap.normalize(first)[:, None])[:, 0].flatten(1, 2) @ self.image_proj
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)

    def text_tokens(self, motions: torch.Tensor) -> torch.Tensor:
        """int motion indices [B] (into MOTIONS) -> [B, 512, text_dim]: the motion's block, then zeros."""
        prompt = self.text[motions.long()]
        return F.pad(prompt, (0, 0, 0, TEXT_TOKENS - PROMPT_TOKENS))


def check_conditioning(recorded: dict[str, Any], where: str) -> None:
    """Refuse a model trained under another conditioning: its inputs would mean something else to it."""
    version = recorded.get("conditioning", 1)  # version 1 did not record itself
    if version != CONDITIONING:
        raise BadInputError(f"{where}: trained under motion conditioning v{version}, this wanrt feeds "
                            f"v{CONDITIONING} (runtime/motion.CONDITIONING); retrain it")


# The default model: the tiny preset's I2V config at width 128 (4 heads x 32), FFN 256. The tiny preset itself
# (width 24) is narrower than one token's output (patch 1x2x2 x 16 channels = 64 values), so it cannot even carry a
# token through; trained 400 steps here its samples stayed noise (docs/results/motion-task.md).
# `motion4`: the same at 4 blocks, for the pretrained weights wanrt ships (docs/results/motion-study.md).
# `motion-wide`: width 256 (8 heads x 32), every width doubled: issue 22's probe of whether the velocity's precision,
# not depth, limits the samples (docs/results/motion-study/width.json).
_MOTION = {**PRESETS["tiny"].config, "num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 256,
           "added_kv_proj_dim": 128}
MOTION_MODELS = {"motion": _MOTION, "motion4": {**_MOTION, "num_layers": 4},
                 "motion-wide": {**_MOTION, "num_attention_heads": 8, "ffn_dim": 512, "added_kv_proj_dim": 256}}


class FlowMatching:
    """Wan's rectified-flow loss on a batch of clips, with the I2V inputs built from each clip's first frame."""

    def __init__(self, model: torch.nn.Module, shift: float):
        config = model.config
        self.model, self.shift = model, shift
        self.latents = PixelLatentMap()
        self.embeddings = FixedEmbeddings(config.image_dim, config.text_dim)

    def shifted(self, u: torch.Tensor) -> torch.Tensor:
        return self.shift * u / (1 + (self.shift - 1) * u)

    def velocity(self, x_t: torch.Tensor, s: torch.Tensor, clips: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """The model's noise - x0 at x_t, flow time s [B]; only each clip's first frame is read (I2V)."""
        condition = i2v_condition(self.latents, clips[:, 0], clips.shape[1])
        return self.model(hidden_states=torch.cat([x_t, condition], dim=1), timestep=1000 * s,
                          encoder_hidden_states=self.embeddings.text_tokens(motions),
                          encoder_hidden_states_image=self.embeddings.image(clips[:, 0]), return_dict=False)[0]

    def loss(self, clips: torch.Tensor, motions: torch.Tensor, noise: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        x0 = self.latents.encode(clips)
        s = self.shifted(u)
        x_t = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        return F.mse_loss(self.velocity(x_t, s, clips, motions), noise - x0)

    def draw(self, clips: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h, w, _ = clips.shape
        noise = torch.randn(b, LATENT_CHANNELS, t, h // PATCH, w // PATCH, generator=generator)
        return noise, torch.rand(b, generator=generator)


@torch.no_grad()
def sample(fm: FlowMatching, first: torch.Tensor, motions: torch.Tensor, frames: int, steps: int,
           generator: torch.Generator) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] sampled from the first frames [B, H, W, 3] and motion indices [B]."""
    if steps < 1:
        raise BadInputError(f"--steps {steps}: at least 1", param="steps")
    b, h, w, _ = first.shape
    clips = torch.zeros(b, frames, h, w, 3, dtype=torch.uint8)
    clips[:, 0] = first  # only frame 0 reaches the model (condition and image embedding)
    x = torch.randn(b, LATENT_CHANNELS, frames, h // PATCH, w // PATCH, generator=generator)
    grid = fm.shifted(torch.linspace(1.0, 0.0, steps + 1))
    for s, s_next in zip(grid[:-1], grid[1:]):
        x = x + (s_next - s) * fm.velocity(x, s.expand(b), clips, motions)
    return fm.latents.to_uint8(fm.latents.decode(x))


def movement(clips: torch.Tensor) -> float:
    """Mean absolute change of frames 1.. from frame 0, in 8-bit levels (uint8 [B, T, H, W, 3]): 0 for a still."""
    x = clips.float()
    return float((x[:, 1:] - x[:, :1]).abs().mean())


def frame_error(fake: torch.Tensor, real: torch.Tensor) -> list[float]:
    """Per frame, the mean |fake - real| in 8-bit levels over clips, pixels and channels (uint8 [B, T, H, W, 3])."""
    return (fake.float() - real.float()).abs().mean(dim=(0, 2, 3, 4)).tolist()


def frame_strip_png(clips: list[np.ndarray], scale: int = 2) -> bytes:
    """One row per clip, its frames left to right, nearest-neighbour upscaled `scale` times; PNG bytes."""
    from PIL import Image  # lazy: Pillow only for the picture, not for the data

    rows = np.concatenate([np.concatenate(list(clip), axis=1) for clip in clips], axis=0)
    image = Image.fromarray(rows.repeat(scale, axis=0).repeat(scale, axis=1))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ shipped weights
# The pretrained motion model wanrt ships, with held-out test clips to start from: trained by tools/train_small.py,
# packed with its clips by tools/motion_ship.py; how it was made and scored: docs/results/motion-study.md.
SHIPPED = Path(__file__).parent / "data" / "motion-pretrained.safetensors"
# what tools/motion_ship.py printed when it wrote SHIPPED; a file that does not match is refused
SHIPPED_SHA256 = "d091a01c98d8db2490e0dd394da6f99f6f135cb801a6fa84c841708edcc398db"


class ShippedMotion:
    """The shipped model (eval, frozen), its flow shift and the demo clips (uint8 [N, T, H, W, 3], motions [N])."""

    def __init__(self, model: torch.nn.Module, shift: float, clips: torch.Tensor, motions: torch.Tensor,
                 record: dict[str, Any]):
        self.model, self.shift, self.clips, self.motions, self.record = model, shift, clips, motions, record

    def sample(self, steps: int, seed: int = 0) -> torch.Tensor:
        """uint8 clips sampled from the demo clips' first frames."""
        return sample(FlowMatching(self.model, self.shift), self.clips[:, 0], self.motions, self.clips.shape[1],
                      steps, torch.Generator().manual_seed(seed))


def load_shipped(path: str | Path = SHIPPED, sha256: str | None = None) -> ShippedMotion:
    """The shipped file after its sha256 check (the pinned SHIPPED_SHA256 for the packaged file)."""
    from diffusers import WanTransformer3DModel  # lazy: tools/motion_clips reads MOTIONS here without diffusers

    path = Path(path)
    expected = sha256 or (SHIPPED_SHA256 if path == SHIPPED else None)
    if not path.is_file():
        raise BadInputError(f"{path}: no shipped motion weights there")
    if expected is None or sha256_file(path) != expected:
        raise BadInputError(f"{path}: sha256 does not match the pinned {expected}; not the shipped file")
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), "pt") as f:  # the metadata: config name, shift, the training record
        meta = json.loads(f.metadata()["wanrt"])
    check_conditioning(meta, str(path))
    model = WanTransformer3DModel(**MOTION_MODELS[meta["model"]])
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return ShippedMotion(model.eval().requires_grad_(False), meta["shift"], tensors["demo.clips"],
                         tensors["demo.motions"], meta)
