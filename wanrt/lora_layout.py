"""How a LoRA lives in a graph and an engine: initializer names, the branch weight layout, merged weights, FLOPs.

Read by `LoraLinear` (the separate branch in PyTorch), the ONNX export (names), the export manifest, TensorRT
refit and the ORT/OpenVINO weight swap (new weights in the same layout), runtime/flops.py and the bench.

A LoRA module is its factors down A [r, in], up B [out, r], a scale s = lora_scale * alpha / r, and an optional bias
delta diff_b [out]; its output on x is x A^T (s B^T) + lora_scale * diff_b.

- separate: the branch is stored ready for MatMul as three named tensors:
      lora.<module>.A     = A^T            [in, r]
      lora.<module>.B     = s B^T          [r, out]   (scale folded in)
      lora.<module>.bias  = lora_scale * diff_b   [out]   (only when the LoRA carries one)
  A smaller rank fits a larger branch by zero-padding, which is exact: (x [A^T 0]) [s B^T; 0] = x A^T s B^T.
- merged: W' = W + s B A and b' = b + lora_scale * diff_b, summed in fp32 from the original base and cast once.
"""

from __future__ import annotations

import re
from typing import Protocol

import torch

LORA_PREFIX = "lora."
BRANCH_PARTS = ("A", "B", "bias")
_PARAMETER = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B|bias)$")
_INITIALIZER = re.compile(r"^lora\.(?P<module>.+)\.(?P<part>A|B|bias)$")

# Which token stream a target reads (suffixes after "blocks.N."): K/V over the text or over the image tokens;
# everything else reads the video tokens.
TEXT_STREAM = ("attn2.to_k", "attn2.to_v")
IMAGE_STREAM = ("attn2.add_k_proj", "attn2.add_v_proj")


class LowRankModule(Protocol):
    """What the layout needs of a LoRA module (wanrt.export.lora.LoraModule)."""

    down: torch.Tensor
    up: torch.Tensor
    diff_b: torch.Tensor | None

    @property
    def rank(self) -> int: ...

    def scale(self, lora_scale: float = 1.0) -> float: ...


# ------------------------------------------------------------------------------------------------ names
def initializer_name(module: str, part: str) -> str:
    """`lora.<module>.<part>`: the name a separate-mode branch tensor carries in ONNX, engines and manifests."""
    if part not in BRANCH_PARTS:
        raise ValueError(f"LoRA branch part {part!r}: one of {BRANCH_PARTS}")
    return f"{LORA_PREFIX}{module}.{part}"


def initializer_names(module: str, has_bias: bool) -> dict[str, str]:
    """{"A": ..., "B": ... [, "bias": ...]} for one module (what the export manifest lists)."""
    parts = BRANCH_PARTS if has_bias else BRANCH_PARTS[:2]
    return {part: initializer_name(module, part) for part in parts}


def parse_initializer_name(name: str) -> tuple[str, str] | None:
    """`lora.<module>.<part>` -> (module, part); None for any other initializer."""
    m = _INITIALIZER.match(name)
    return (m["module"], m["part"]) if m else None


def initializer_name_of_parameter(param_name: str) -> str:
    """State-dict name -> ONNX initializer name: base weights keep diffusers' names; LoraLinear parameters
    `<module>.lora_A|lora_B|lora_bias` become `lora.<module>.A|B|bias`."""
    m = _PARAMETER.match(param_name)
    return initializer_name(m["module"], m["part"]) if m else param_name


# ------------------------------------------------------------------------------------------------ weights
def branch_weights(module: LowRankModule, lora_scale: float, dtype: torch.dtype, rank: int | None = None,
                   with_bias: bool | None = None) -> dict[str, torch.Tensor]:
    """{"A": A^T [in, R], "B": s B^T [R, out] [, "bias": lora_scale * diff_b [out]]} in `dtype`, each computed in
    fp32 and cast once. `rank` R >= module.rank zero-pads (exact); `with_bias` forces a bias part (zeros when the
    LoRA has none) or drops it (None: only when the LoRA carries one)."""
    r = module.rank
    rank = r if rank is None else rank
    if rank < r:
        raise ValueError(f"rank {r} does not fit a branch of rank {rank}")
    down, up = module.down, module.up
    # each output written once (a swap's time is memory traffic): the values, then only the pad's zeros
    a_t = torch.empty(down.shape[1], rank, dtype=dtype)
    b_t = torch.empty(rank, up.shape[0], dtype=dtype)
    a_t[:, :r] = down.T
    scale = module.scale(lora_scale)
    if up.dtype == dtype == torch.float32:
        torch.mul(up.T, scale, out=b_t[:r])
    else:
        b_t[:r] = scale * up.float().T  # the fp32 product, cast once
    a_t[:, r:].zero_()
    b_t[r:].zero_()
    out = {"A": a_t, "B": b_t}
    if with_bias is None:
        with_bias = module.diff_b is not None
    if with_bias:
        out["bias"] = branch_bias(module, lora_scale, up.shape[0], dtype)
    return out


def branch_bias(module: LowRankModule | None, lora_scale: float, out_features: int,
                dtype: torch.dtype) -> torch.Tensor:
    """The branch's bias part: lora_scale * diff_b (it scales with the LoRA's strength, as in ComfyUI and peft),
    zeros when the module (or its bias delta) is absent."""
    if module is None or module.diff_b is None:
        return torch.zeros(out_features, dtype=dtype)
    return (lora_scale * module.diff_b.float()).to(dtype)


def merged_weight(base: torch.Tensor, delta: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W + delta in fp32, cast once to `dtype` (default: the base's); delta None gives the base back."""
    weight = base.float() if delta is None else base.float() + delta.float()
    return weight.to(dtype or base.dtype)


def merged_bias(base: torch.Tensor | None, module: LowRankModule | None, lora_scale: float, out_features: int,
                dtype: torch.dtype) -> torch.Tensor:
    """b + lora_scale * diff_b in fp32, cast once (a missing base bias counts as zeros)."""
    bias = torch.zeros(out_features) if base is None else base.float()
    if module is not None and module.diff_b is not None:
        bias = bias + lora_scale * module.diff_b.float()
    return bias.to(dtype)


# ------------------------------------------------------------------------------------------------ cost
def branch_flops_per_token(in_features: int, out_features: int, rank: int, bias: bool = False) -> int:
    """FLOPs (2 x multiply-adds) of one separate-mode branch per token: x A^T then (.) s B^T, plus the bias add."""
    return 2 * rank * (in_features + out_features) + (out_features if bias else 0)


def token_stream(module: str) -> str:
    """"text", "image" or "video": the tokens a target Linear runs over (and so what its branch cost scales with)."""
    if module.endswith(TEXT_STREAM):
        return "text"
    if module.endswith(IMAGE_STREAM):
        return "image"
    return "video"
