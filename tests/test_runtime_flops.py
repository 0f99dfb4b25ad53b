"""The analytic FLOP counter against a hand count and against torch's FlopCounterMode."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from wanrt.export.lora import apply_lora, synthetic_lora
from wanrt.export.presets import PRESETS
from wanrt.runtime.flops import block_flops, branches_from_model, forward_flops, lora_branches

TINY = PRESETS["tiny"].config  # dim 24 (2 heads x 12), ffn 32, text_dim 32, image_dim 16


def _counted(fn) -> tuple[int, bool]:
    with FlopCounterMode(display=False) as fc:
        fn()
    counts = fc.get_flop_counts()["Global"]
    return fc.get_total_flops(), any("scaled_dot_product" in str(k) for k in counts)


def test_block_matches_hand_count():
    L, T, I, D, Fd = 8, 512, 257, 24, 32  # 5x32x32 video -> latent 2x4x4 -> 2*2*2 tokens
    hand = {
        "self_attn_proj": 4 * 2 * L * D * D,  # q, k, v, o
        "self_attn_sdpa": 2 * 2 * L * L * D,  # Q K^T and P V
        "cross_attn_proj": 2 * 2 * L * D * D,  # q, o
        "cross_attn_kv_text": 2 * 2 * T * D * D,
        "cross_attn_kv_image": 2 * 2 * I * D * D,
        "cross_attn_sdpa_text": 2 * 2 * L * T * D,
        "cross_attn_sdpa_image": 2 * 2 * L * I * D,
        "ffn": 2 * 2 * L * D * Fd,
    }
    got = block_flops(TINY, L)
    assert {k: got[k] for k in hand} == hand
    assert got["total"] == sum(hand.values()) == 2_448_384


def test_block_matches_flop_counter(tiny_model):
    """One real block: FlopCounterMode counts its Linears (and SDPA where torch registers it)."""
    block = tiny_model.blocks[0]
    L, D = 8, 24
    x = torch.randn(1, L, D)
    enc = torch.randn(1, 257 + 512, D)  # image tokens first, then text, as the model concatenates them
    temb = torch.randn(1, 6, D)
    rope = tiny_model.rope(torch.randn(1, 36, 2, 4, 4))
    total, has_sdpa = _counted(lambda: block(x, enc, temb, rope))
    parts = block_flops(TINY, L)
    sdpa = parts["self_attn_sdpa"] + parts["cross_attn_sdpa_text"] + parts["cross_attn_sdpa_image"]
    assert total + (0 if has_sdpa else sdpa) == parts["total"]


def test_forward_and_separate_lora_match_flop_counter(tiny_model):
    x = torch.randn(1, 36, 2, 4, 4)
    t, txt, img = torch.tensor([500.0]), torch.randn(1, 512, 32), torch.randn(1, 257, 16)
    base = forward_flops(tiny_model.config, (2, 4, 4))
    sdpa = 2 * sum(base["per_block"][k] for k in ("self_attn_sdpa", "cross_attn_sdpa_text", "cross_attn_sdpa_image"))
    total, has_sdpa = _counted(lambda: tiny_model(x, t, txt, img))
    assert total + (0 if has_sdpa else sdpa) == base["total"]

    lora = synthetic_lora(tiny_model, 4, "all")
    apply_lora(tiny_model, lora, "separate")
    sep = forward_flops(tiny_model.config, (2, 4, 4), lora=branches_from_model(tiny_model), mode="separate")
    assert lora_branches(lora) == branches_from_model(tiny_model)
    total2, _ = _counted(lambda: tiny_model(x, t, txt, img))
    assert total2 - total == sep["lora"] > 0
    assert sep["lora_share"] == sep["lora"] / sep["base"]
    # merged and full fold into W: no extra FLOPs; batch scales linearly
    assert forward_flops(tiny_model.config, (2, 4, 4), lora=branches_from_model(tiny_model), mode="merged")["lora"] == 0
    assert forward_flops(tiny_model.config, (2, 4, 4), batch=2)["total"] == 2 * base["total"]
