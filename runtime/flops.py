"""Analytic FLOPs of one Wan I2V DiT forward, from the config alone (plus the LoRA branch shapes).

Counts matrix-multiply work only (2 x multiply-adds): every Linear, the patch-embedding Conv3d, and the two
products inside each scaled-dot-product attention (Q K^T and P V). Norms, RoPE, modulation, softmax and GELU are
left out: they are a few percent of the total and no matmul unit runs them, so MFU is computed on this count.

Token streams of one forward with batch B, latent F x H x W and patch (pt, ph, pw):
  L = F/pt * H/ph * W/pw video tokens, T = 512 text tokens, I = 257 image tokens (CLIP), all per batch element.

Per block (D = heads x head_dim, Fd = ffn_dim):
  self-attn   q,k,v,o: 4 * 2 L D^2          attention: 2 * 2 L^2 D
  cross-attn  q,o:     2 * 2 L D^2          k,v over text: 2 * 2 T D^2      k,v over image: 2 * 2 I D^2
              attention over text: 2 * 2 L T D                attention over image: 2 * 2 L I D
  ffn         2 * 2 L D Fd
A separate-mode LoRA branch on a Linear (in -> out) of rank r adds 2 r (in + out) per token of the stream that
Linear reads (video tokens, or the text/image tokens for attn2.to_k/to_v and add_k/add_v_proj), plus `out` when it
carries a bias delta. Merged and full-rank ("full") LoRAs are folded into the weights and add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from wanrt import lora_layout
from wanrt.dit_io import IMAGE_TOKENS, TEXT_TOKENS


@dataclass(frozen=True)
class LoraBranch:
    """Shape of one separate-mode LoRA branch: in/out features, rank, and whether it adds a bias delta."""

    in_features: int
    out_features: int
    rank: int
    bias: bool = False

    def flops_per_token(self) -> int:
        return lora_layout.branch_flops_per_token(self.in_features, self.out_features, self.rank, self.bias)


def _cfg(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A WanTransformer3DModel config (FrozenDict, dict, model.config or a model) as a plain dict."""
    if hasattr(config, "config") and not isinstance(config, Mapping):
        config = config.config
    return dict(config)


def video_tokens(config: Mapping[str, Any] | Any, latent: tuple[int, int, int]) -> int:
    c = _cfg(config)
    pt, ph, pw = c["patch_size"]
    f, h, w = latent
    return (f // pt) * (h // ph) * (w // pw)


def block_flops(config: Mapping[str, Any] | Any, tokens: int, text_tokens: int = TEXT_TOKENS,
                image_tokens: int = IMAGE_TOKENS) -> dict[str, int]:
    """Matmul FLOPs of one transformer block for one batch element, by part."""
    c = _cfg(config)
    d = c["num_attention_heads"] * c["attention_head_dim"]
    ffn = c["ffn_dim"]
    L, T = tokens, text_tokens
    image = c.get("image_dim") is not None and c.get("added_kv_proj_dim") is not None
    I = image_tokens if image else 0
    kv_in = c.get("added_kv_proj_dim") or d
    parts = {
        "self_attn_proj": 4 * 2 * L * d * d,
        "self_attn_sdpa": 2 * 2 * L * L * d,
        "cross_attn_proj": 2 * 2 * L * d * d,
        "cross_attn_kv_text": 2 * 2 * T * d * d,
        "cross_attn_kv_image": 2 * 2 * I * kv_in * d,
        "cross_attn_sdpa_text": 2 * 2 * L * T * d,
        "cross_attn_sdpa_image": 2 * 2 * L * I * d,
        "ffn": 2 * 2 * L * d * ffn,
    }
    parts["total"] = sum(parts.values())
    return parts


def embed_flops(config: Mapping[str, Any] | Any, tokens: int, text_tokens: int = TEXT_TOKENS,
                image_tokens: int = IMAGE_TOKENS) -> dict[str, int]:
    """Matmul FLOPs outside the blocks for one batch element: patch embedding, condition embedders, proj_out."""
    c = _cfg(config)
    d = c["num_attention_heads"] * c["attention_head_dim"]
    patch = 1
    for p in c["patch_size"]:
        patch *= p
    parts = {
        "patch_embed": 2 * tokens * c["in_channels"] * patch * d,
        "time_embed": 2 * (c["freq_dim"] * d + d * d + d * 6 * d),
        "text_embed": 2 * text_tokens * (c["text_dim"] * d + d * d),
        "image_embed": 0,
        "proj_out": 2 * tokens * d * c["out_channels"] * patch,
    }
    if c.get("image_dim") is not None:
        e = c["image_dim"]
        parts["image_embed"] = 2 * image_tokens * (e * e + e * d)  # FeedForward(e -> e -> d), mult=1
    parts["total"] = sum(parts.values())
    return parts


def lora_flops(branches: Mapping[str, LoraBranch], tokens: int, text_tokens: int = TEXT_TOKENS,
               image_tokens: int = IMAGE_TOKENS) -> int:
    """Extra FLOPs of separate-mode LoRA branches for one batch element (module name -> branch shape)."""
    stream_tokens = {"video": tokens, "text": text_tokens, "image": image_tokens}
    return sum(stream_tokens[lora_layout.token_stream(name)] * b.flops_per_token() for name, b in branches.items())


def lora_branches(lora: Any) -> dict[str, LoraBranch]:
    """Branch shapes of a LoraWeights (low-rank modules; a dense "full" reference has none)."""
    if getattr(lora, "dense", None) is not None:
        return {}
    return {name: LoraBranch(m.down.shape[1], m.up.shape[0], m.rank, m.diff_b is not None)
            for name, m in lora.modules.items()}


def branches_from_model(model: Any) -> dict[str, LoraBranch]:
    """Branch shapes of the LoraLinear modules already inside a (separate-mode) transformer."""
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "lora_B"):
            out[name] = LoraBranch(mod.lora_A.shape[0], mod.lora_B.shape[1], mod.lora_A.shape[1],
                                   getattr(mod, "lora_bias", None) is not None)
    return out


def forward_flops(config: Mapping[str, Any] | Any, latent: tuple[int, int, int], batch: int = 1,
                  lora: Mapping[str, LoraBranch] | None = None, mode: str = "merged",
                  text_tokens: int = TEXT_TOKENS, image_tokens: int = IMAGE_TOKENS) -> dict[str, Any]:
    """FLOPs of one DiT forward (all batch elements) with a breakdown.

    `lora` maps module names to branch shapes; it only counts in mode "separate" (merged/full fold into W).
    Returns {"total", "base", "lora", "lora_share" (lora / base), "tokens", "per_block", "embed", "batch"}.
    """
    c = _cfg(config)
    L = video_tokens(c, latent)
    blk = block_flops(c, L, text_tokens, image_tokens)
    emb = embed_flops(c, L, text_tokens, image_tokens)
    base = batch * (c["num_layers"] * blk["total"] + emb["total"])
    extra = batch * lora_flops(lora, L, text_tokens, image_tokens) if (lora and mode == "separate") else 0
    return {
        "total": base + extra,
        "base": base,
        "lora": extra,
        "lora_share": extra / base if base else 0.0,
        "tokens": L,
        "batch": batch,
        "per_block": blk,
        "embed": emb,
    }
