"""LoRA target groups, torch-free: the command line names them in its help without importing torch;
`wanrt.export.lora` re-exports them."""

from __future__ import annotations

# Target groups: the Linear layers of each Wan block a LoRA may adapt (suffixes after "blocks.N.").
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "self-attn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"),
    "cross-attn": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "image-kv": ("attn2.add_k_proj", "attn2.add_v_proj"),
    "ffn": ("ffn.net.0.proj", "ffn.net.2"),
}
TARGET_GROUPS["all"] = tuple(s for g in ("self-attn", "cross-attn", "image-kv", "ffn") for s in TARGET_GROUPS[g])
