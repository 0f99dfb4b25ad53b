"""Built-in model presets, as data. Each is a `WanTransformer3DModel` config plus the default video shape.

`tiny` mirrors diffusers' own Wan tests (2 layers, 2 heads x 12) with the I2V image branch; `small` is sized for CPU
benchmarks; `wan2.1-i2v-14b` is the real 14B geometry (use --layers N to keep the first N blocks). Weights are
random and seeded, so everything runs with no download; real checkpoints load through the same code path.

Wan2.2's A14B models are two transformers of one geometry (`experts`): a high-noise expert for the steps at or above
the boundary timestep (`boundary_ratio` x 1000) and a low-noise one after it (diffusers' `transformer` and
`transformer_2`). `tiny-wan2.2` is tiny's geometry twice, CI-sized; `wan2.2-i2v-a14b` the real one. Wan2.2's I2V
has no CLIP image branch (its diffusers config: image_dim and added_kv_proj_dim null): the image enters only as
the 20 condition channels of the 36 input channels, so both presets have none either. Each expert's weights come
from the seed plus its own offset, so the two differ as the real experts do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wanrt.choices import Expert
from wanrt.io_contract import VideoShape  # torch-free: the CLI lists presets at import time

# Seed offset of each expert's weights: the high expert is the preset's seed, the low one a prime away, so the low
# expert of --seed N is no small seed's high expert.
EXPERT_SEEDS = {Expert.HIGH.value: 0, Expert.LOW.value: 7919}


@dataclass(frozen=True)
class Preset:
    name: str
    config: dict[str, Any]
    default_shape: VideoShape  # what bench and demo run at
    # two different small shapes that validation compares ONNX and PyTorch on
    validate_shapes: tuple[VideoShape, VideoShape]
    # shape range the ONNX graph is exported for: (min, max) in pixel space
    min_shape: VideoShape
    max_shape: VideoShape
    description: str = ""
    # two-expert models (Wan2.2): expert name -> seed offset of its weights, and the boundary; empty: one transformer
    expert_seeds: dict[str, int] = field(default_factory=dict)
    boundary_ratio: float | None = None

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(self.expert_seeds)


def _i2v_config(heads: int, head_dim: int, ffn: int, layers: int, text_dim: int, image_dim: int | None,
                rope_max_seq_len: int = 1024) -> dict[str, Any]:
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 36,  # 16 noisy latents + 4 mask + 16 image-condition latents
        "out_channels": 16,
        "text_dim": text_dim,
        "freq_dim": 256,
        "ffn_dim": ffn,
        "num_layers": layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": image_dim,
        "added_kv_proj_dim": heads * head_dim if image_dim is not None else None,  # the image K/V projections
        "rope_max_seq_len": rope_max_seq_len,
    }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="tiny",
            config=_i2v_config(heads=2, head_dim=12, ffn=32, layers=2, text_dim=32, image_dim=16, rope_max_seq_len=32),
            default_shape=VideoShape(5, 32, 32),
            validate_shapes=(VideoShape(5, 32, 32), VideoShape(9, 48, 64)),
            min_shape=VideoShape(1, 16, 16),
            max_shape=VideoShape(17, 128, 128),
            description="tests: 2 blocks, 2 heads x 12, seconds on CPU",
        ),
        Preset(
            name="small",
            config=_i2v_config(heads=8, head_dim=64, ffn=1536, layers=4, text_dim=512, image_dim=256),
            default_shape=VideoShape(17, 128, 224),
            validate_shapes=(VideoShape(5, 64, 64), VideoShape(9, 96, 160)),
            min_shape=VideoShape(1, 32, 32),
            max_shape=VideoShape(33, 256, 256),
            description="CPU benchmarks: 4 blocks, 8 heads x 64 (dim 512), FFN 1536",
        ),
        Preset(
            name="wan2.1-i2v-14b",
            config=_i2v_config(heads=40, head_dim=128, ffn=13824, layers=40, text_dim=4096, image_dim=1280),
            default_shape=VideoShape(81, 480, 832),
            validate_shapes=(VideoShape(1, 32, 32), VideoShape(5, 32, 48)),
            min_shape=VideoShape(1, 32, 32),
            max_shape=VideoShape(81, 720, 1280),
            description="the real Wan2.1 I2V-14B geometry (40 blocks, 40 heads x 128, FFN 13824); --layers N slices",
        ),
        Preset(
            name="tiny-wan2.2",
            config=_i2v_config(heads=2, head_dim=12, ffn=32, layers=2, text_dim=32, image_dim=None,
                               rope_max_seq_len=32),
            default_shape=VideoShape(5, 32, 32),
            validate_shapes=(VideoShape(5, 32, 32), VideoShape(9, 48, 64)),
            min_shape=VideoShape(1, 16, 16),
            max_shape=VideoShape(17, 128, 128),
            description="tests: two tiny experts (high, low; boundary 0.9), Wan2.2 I2V without the image branch",
            expert_seeds=dict(EXPERT_SEEDS),
            boundary_ratio=0.9,  # Wan2.2 I2V (diffusers' WanImageToVideoPipeline); T2V uses 0.875
        ),
        Preset(
            name="wan2.2-i2v-a14b",
            config=_i2v_config(heads=40, head_dim=128, ffn=13824, layers=40, text_dim=4096, image_dim=None),
            default_shape=VideoShape(81, 480, 832),
            validate_shapes=(VideoShape(1, 32, 32), VideoShape(5, 32, 48)),
            min_shape=VideoShape(1, 32, 32),
            max_shape=VideoShape(81, 720, 1280),
            description="the real Wan2.2 I2V-A14B geometry: two experts of Wan2.1-14B's blocks (no image branch), "
                        "boundary 0.9; --layers N slices both",
            expert_seeds=dict(EXPERT_SEEDS),
            boundary_ratio=0.9,
        ),
    ]
}
