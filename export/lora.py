"""LoRA weights in one canonical form, the ways to get them, and the three ways to apply them.

Canonical form (`LoraWeights`): {transformer module name: LoraModule(down A [r,in], up B [out,r], alpha, diff_b)},
module names as in diffusers' WanTransformer3DModel ("blocks.0.attn2.to_k"). File formats are converted into it by
`wanrt.export.lora_formats`; this module owns targets, synthetic LoRAs, SVD re-ranking and application.

Applied output of a LoRA module on x: base(x) + scale * (x A^T B^T) + lora_scale * diff_b,
scale = lora_scale * alpha / r
(alpha None means scale = lora_scale, as in peft/diffusers when no alpha is stored).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from wanrt import lora_layout
from wanrt.choices import LoraMode
from wanrt.errors import LoraError
from wanrt.export.targets import TARGET_GROUPS  # re-exported: its torch-free home lets the CLI name the groups

# Synthetic deltas are scaled to this fraction of the base weight's Frobenius norm: the size of a trained
# style/motion LoRA's update, large enough that a missing or wrong branch shows in every parity check.
SYNTHETIC_RELATIVE_NORM = 0.05


@dataclass
class LoraModule:
    down: torch.Tensor  # A: [r, in]
    up: torch.Tensor  # B: [out, r]
    alpha: float | None = None
    diff_b: torch.Tensor | None = None  # bias delta [out] (ComfyUI/Kijai ".diff_b")

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def scale(self, lora_scale: float = 1.0) -> float:
        return lora_scale * (self.alpha / self.rank if self.alpha is not None else 1.0)

    def delta(self, lora_scale: float = 1.0) -> torch.Tensor:
        """scale * B @ A in fp32 ([out, in])."""
        return self.scale(lora_scale) * (self.up.float() @ self.down.float())


@dataclass
class LoraWeights:
    modules: dict[str, LoraModule]
    lora_scale: float = 1.0
    # identity for manifests: path, sha256, format, synthetic seed, re-rank energies...
    source: dict[str, Any] = field(default_factory=dict)
    # "full" references carry dense deltas instead of low-rank factors
    dense: dict[str, torch.Tensor] | None = None

    @property
    def ranks(self) -> set[int]:
        return {m.rank for m in self.modules.values()}

    @property
    def rank(self) -> int | None:
        ranks = self.ranks
        return ranks.pop() if len(ranks) == 1 else None

    def names(self) -> list[str]:
        return list(self.dense if self.dense is not None else self.modules)

    def delta(self, name: str) -> torch.Tensor:
        if self.dense is not None:
            return self.dense[name].float()
        return self.modules[name].delta(self.lora_scale)

    def parameter_count(self) -> int:
        if self.dense is not None:
            return sum(d.numel() for d in self.dense.values())
        return sum(m.down.numel() + m.up.numel() for m in self.modules.values())

    def summary(self) -> dict[str, Any]:
        alphas = {m.alpha for m in self.modules.values()}
        return {
            **self.source,
            "modules": len(self.names()),
            "rank": "full" if self.dense is not None else (self.rank if self.rank is not None else sorted(self.ranks)),
            "alpha": alphas.pop() if len(alphas) == 1 else "per-module",
            "lora_scale": self.lora_scale,
            "parameters": self.parameter_count(),
            "has_diff_b": any(m.diff_b is not None for m in self.modules.values()),
        }


# --------------------------------------------------------------------------------------------------- targets
def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def resolve_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Group names (`all`, `self-attn`, `cross-attn`, `image-kv`, `ffn`) or fnmatch patterns over module names
    (`blocks.*.attn2.to_k`, `blocks.0.*`), comma-separated; in model order."""
    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    if not items:
        raise LoraError("--targets is empty")
    linears = linear_modules(model)
    block_linears = [n for n in linears if re.match(r"blocks\.\d+\.", n)]
    chosen: set[str] = set()
    for item in items:
        if item in TARGET_GROUPS:
            suffixes = TARGET_GROUPS[item]
            hits = [n for n in block_linears if n.split(".", 2)[2] in suffixes]
        else:
            hits = [n for n in linears if fnmatch.fnmatchcase(n, item)]
        if not hits:
            groups = ", ".join(TARGET_GROUPS)
            raise LoraError(f"--targets {item!r} matches no Linear module (groups: {groups}; or a pattern "
                            f"like 'blocks.*.attn2.to_k')")
        chosen.update(hits)
    return [n for n in linears if n in chosen]


def check_rank(name: str, layer: nn.Linear, rank: int) -> None:
    if rank <= 0:
        raise LoraError(f"rank {rank}: must be a positive integer")
    limit = min(layer.in_features, layer.out_features)
    if rank > limit:
        raise LoraError(f"rank {rank} exceeds {name} ({layer.out_features}x{layer.in_features}): at most {limit}")


# ------------------------------------------------------------------------------------------------ synthetic
def synthetic_lora(model: nn.Module, rank: int, targets: str = "all", seed: int = 0,
                   relative_norm: float = SYNTHETIC_RELATIVE_NORM) -> LoraWeights:
    """A seeded random LoRA of `rank` on `targets`: how users study rank without training one.

    A ~ N(0, 1/in), B ~ N(0, 1) rescaled so ||B A||_F = relative_norm * ||W||_F for each module (alpha = rank).
    """
    linears = linear_modules(model)
    names = resolve_targets(model, targets)
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name in names:
        layer = linears[name]
        check_rank(name, layer, rank)
        down = torch.randn(rank, layer.in_features, generator=gen) / math.sqrt(layer.in_features)
        up = torch.randn(layer.out_features, rank, generator=gen)
        # ||B A||_F^2 = trace((B^T B)(A A^T)): r x r work instead of materialising the out x in product
        product_norm = torch.trace((up.T @ up) @ (down @ down.T)).clamp_min(1e-24).sqrt()
        weight_norm = torch.linalg.vector_norm(layer.weight, dtype=torch.float32)  # no fp32 copy of W
        ratio = relative_norm * weight_norm / product_norm
        modules[name] = LoraModule(down=down, up=up * ratio, alpha=float(rank))
    return LoraWeights(modules, source={"kind": "synthetic", "seed": seed, "targets": targets,
                                        "relative_norm": relative_norm})


def dense_reference(lora: LoraWeights, seed: int = 0) -> LoraWeights:
    """A "full fine-tune" on the same targets: a dense (full-rank) delta per module with the LoRA's norm.

    For a file LoRA the dense delta is the LoRA's own product (same function, dense cost); for a synthetic one it
    is a seeded full-rank matrix of the same Frobenius norm, so quality and cost compare like for like.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    dense = {}
    for name in lora.names():
        delta = lora.delta(name)
        if lora.source.get("kind") == "synthetic":
            noise = torch.randn(delta.shape, generator=gen)
            delta = noise * (delta.norm() / noise.norm())
        dense[name] = delta
    return LoraWeights({}, lora_scale=1.0, source={**lora.source, "full_reference": True}, dense=dense)


# ------------------------------------------------------------------------------------------------ re-rank
def rerank(lora: LoraWeights, rank: int) -> tuple[LoraWeights, dict[str, float]]:
    """Truncated SVD of each scale*B@A to `rank`; returns the new LoRA (alpha = rank, so scale = lora_scale)
    and the retained energy (sum of kept squared singular values / total) per module.

    Works on the small factors: B = Qb Rb, A^T = Qa Ra, so B A = Qb (Rb Ra^T) Qa^T and only an r x r SVD is needed.
    """
    if rank <= 0:
        raise LoraError(f"rank {rank}: must be a positive integer")
    modules, energy = {}, {}
    for name, m in lora.modules.items():
        if rank > m.rank:
            raise LoraError(f"--rank {rank} is above the LoRA's rank {m.rank} at {name}; re-ranking only truncates")
        qb, rb = torch.linalg.qr(m.up.double())
        qa, ra = torch.linalg.qr(m.down.double().T)
        u, s, vh = torch.linalg.svd(rb @ ra.T)
        s = s * m.scale(1.0)  # lora_scale stays a separate, user-facing knob
        root = s[:rank].sqrt()
        up = (qb @ u[:, :rank]) * root
        down = root[:, None] * (vh[:rank] @ qa.T)
        total = (s**2).sum()
        energy[name] = float((s[:rank] ** 2).sum() / total) if total > 0 else 1.0
        modules[name] = LoraModule(down=down.float(), up=up.float(), alpha=float(rank), diff_b=m.diff_b)
    src = {**lora.source, "reranked_from": sorted(lora.ranks), "rerank": rank,
           "retained_energy_min": min(energy.values()) if energy else 1.0,
           "retained_energy_mean": sum(energy.values()) / len(energy) if energy else 1.0}
    return replace(lora, modules=modules, source=src), energy


# ------------------------------------------------------------------------------------------------ stacks
def stack_loras(loras: Sequence[LoraWeights], labels: Sequence[str] | None = None) -> LoraWeights:
    """Several LoRAs, each at its own strength (its `lora_scale`), as one LoRA: per module, rank r = sum r_i.

        sum_i s_i B_i A_i = [s_1 B_1 ... s_n B_n] [A_1; ...; A_n],   s_i = strength_i * alpha_i / r_i

    the A factors stacked as rows, each scale folded into its B columns (alpha None, lora_scale 1: the stack's scale
    is 1), bias deltas summed at their strengths. A module only some LoRAs adapt gets only their rows. Merged, this
    is the one fp32 sum W + sum_i s_i B_i A_i cast once; separate, one branch per module, so a new strength or a
    different stack is a weight swap of the same branch (zero-padded to its rank: `pad_rank`).
    """
    if not loras:
        raise LoraError("an empty LoRA stack")
    if any(lora.dense is not None for lora in loras):
        raise LoraError("a full fine-tune (dense delta) cannot be stacked with LoRAs; merge it into the base")
    labels = list(labels) if labels is not None else [str(i) for i in range(len(loras))]
    parts: dict[str, list[tuple[LoraModule, float]]] = {}
    for lora in loras:
        for name, m in lora.modules.items():
            parts.setdefault(name, []).append((m, lora.lora_scale))
    modules = {}
    for name, entries in parts.items():
        down = torch.cat([m.down.float() for m, _ in entries])
        up = torch.empty(entries[0][0].up.shape[0], down.shape[0])  # each LoRA's scaled B written in place, once
        offset = 0
        for m, strength in entries:
            torch.mul(m.up.float(), m.scale(strength), out=up[:, offset:offset + m.rank])
            offset += m.rank
        biases = [strength * m.diff_b.float() for m, strength in entries if m.diff_b is not None]
        modules[name] = LoraModule(down=down, up=up, diff_b=sum(biases) if biases else None)
    entries = [{"label": label, "strength": lora.lora_scale, **{k: v for k, v in lora.summary().items()
                                                                  if k not in ("lora_scale", "modules")}}
               for label, lora in zip(labels, loras)]
    return LoraWeights(modules, lora_scale=1.0, source={"kind": "stack", "stack": entries})


def pad_rank(lora: LoraWeights, rank: int) -> LoraWeights:
    """Every module zero-padded to `rank` (exact: [A; 0] and [B 0] give the same B A), so a separate branch keeps
    room for a larger stack; a module above `rank` is refused in one line."""
    modules = {}
    for name, m in lora.modules.items():
        if m.rank > rank:
            raise LoraError(f"{name}: LoRA rank {m.rank} exceeds --max-rank {rank}; raise --max-rank or drop a LoRA")
        pad = rank - m.rank
        scale = m.scale(1.0)  # folded into B, so alpha / r stays right at the padded rank
        modules[name] = LoraModule(down=torch.cat([m.down.float(), m.down.new_zeros(pad, m.down.shape[1]).float()]),
                                   up=torch.cat([scale * m.up.float(), m.up.new_zeros(m.up.shape[0], pad).float()],
                                                dim=1),
                                   diff_b=m.diff_b)
    return replace(lora, modules=modules, source={**lora.source, "max_rank": rank})


# ------------------------------------------------------------------------------------------------ apply
class LoraLinear(nn.Linear):
    """A Linear with its LoRA kept as a separate branch: y = x W^T + b + (x A^T)(s B^T) [+ diff_b].

    The base parameters keep the Linear's names (`<module>.weight/.bias`); the branch is stored ready for MatMul in
    wanrt.lora_layout's layout (`lora_A` = A^T [in, r], `lora_B` = s B^T [r, out], scale folded in) so the exported
    graph is two MatMuls on named initializers that the ONNX export renames to `lora.<module>.A/.B/.bias`.
    """

    def __init__(self, base: nn.Linear, module: LoraModule, lora_scale: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        branch = lora_layout.branch_weights(module, lora_scale, base.weight.dtype)
        self.lora_A = nn.Parameter(branch["A"], requires_grad=False)
        self.lora_B = nn.Parameter(branch["B"], requires_grad=False)
        self.lora_bias = nn.Parameter(branch["bias"], requires_grad=False) if "bias" in branch else None

    @property
    def rank(self) -> int:
        return self.lora_A.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias) + (x @ self.lora_A) @ self.lora_B
        return y if self.lora_bias is None else y + self.lora_bias


def check_fits(model: nn.Module, lora: LoraWeights) -> dict[str, nn.Linear]:
    """Every LoRA module exists in the model and its shapes fit; returns {name: Linear}."""
    linears = linear_modules(model)
    missing = [n for n in lora.names() if n not in linears]
    if missing:
        raise LoraError(f"{len(missing)} LoRA modules are not Linear layers of this model, e.g. {missing[:3]}")
    for name in lora.names():
        layer = linears[name]
        if lora.dense is not None:
            shape = tuple(lora.dense[name].shape)
            if shape != tuple(layer.weight.shape):
                raise LoraError(f"{name}: dense delta {shape} does not fit weight {tuple(layer.weight.shape)}")
            continue
        m = lora.modules[name]
        want_down, want_up = (m.rank, layer.in_features), (layer.out_features, m.rank)
        if tuple(m.down.shape) != want_down or tuple(m.up.shape) != want_up:
            raise LoraError(f"{name}: LoRA A {tuple(m.down.shape)} / B {tuple(m.up.shape)} do not fit Linear "
                            f"{layer.out_features}x{layer.in_features} (want A {want_down}, B {want_up})")
        if m.diff_b is not None and tuple(m.diff_b.shape) != (layer.out_features,):
            raise LoraError(f"{name}: diff_b {tuple(m.diff_b.shape)} does not fit bias ({layer.out_features},)")
    return {n: linears[n] for n in lora.names()}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def merge_into(layer: nn.Linear, delta: torch.Tensor, diff_b: torch.Tensor | None = None,
               base_weight: torch.Tensor | None = None, base_bias: torch.Tensor | None = None) -> None:
    """W' = W + delta in fp32, cast once (DESIGN: merge in fp32). With base_* given, merge onto those (refit:
    always from the original base, never cumulatively)."""
    weight = (base_weight if base_weight is not None else layer.weight).float() + delta
    layer.weight.data = weight.to(layer.weight.dtype)
    if diff_b is not None:
        _add_bias_delta(layer, diff_b, base_bias)


def _add_bias_delta(layer: nn.Linear, diff_b: torch.Tensor, base_bias: torch.Tensor | None = None) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype), requires_grad=False)
    bias = (base_bias if base_bias is not None else layer.bias).float() + diff_b.float()
    layer.bias.data = bias.to(layer.bias.dtype)


MERGE_ROWS = 2048  # rows of W merged at a time: bounds the fp32 temporaries to a slice, not the whole matrix


@torch.no_grad()
def merge_lowrank_into(layer: nn.Linear, module: LoraModule, lora_scale: float = 1.0) -> None:
    """W' = W + s B A, in fp32 row blocks cast once each (same arithmetic as merge_into, without an out x in
    fp32 delta and fp32 copy of W at once: on a 14B FFN that is 0.6 GB of temporaries per layer)."""
    scaled_up = module.scale(lora_scale) * module.up.float()
    down = module.down.float()
    weight = layer.weight.data
    for start in range(0, weight.shape[0], MERGE_ROWS):
        rows = slice(start, start + MERGE_ROWS)
        weight[rows] = (weight[rows].float() + scaled_up[rows] @ down).to(weight.dtype)
    if module.diff_b is not None:
        _add_bias_delta(layer, lora_scale * module.diff_b.float())


@torch.no_grad()
def apply_lora(model: nn.Module, lora: LoraWeights, mode: str) -> nn.Module:
    """Apply in place. merged: W += s B A (fp32, cast once); separate: swap in LoraLinear; full: W += dense delta."""
    LoraMode.parse(mode, "--lora-mode", LoraError)
    if (mode == "full") != (lora.dense is not None):
        raise LoraError("mode 'full' takes a dense reference (dense_reference()), other modes low-rank factors")
    layers = check_fits(model, lora)
    for name, layer in layers.items():
        if mode == "separate":
            _set_submodule(model, name, LoraLinear(layer, lora.modules[name], lora.lora_scale))
        elif lora.dense is not None:
            merge_into(layer, lora.delta(name))
        else:
            m = lora.modules[name]
            merge_lowrank_into(layer, m, lora.lora_scale)
    return model


def lora_flops_per_token(lora: LoraWeights, mode: str, model: nn.Module) -> dict[str, int]:
    """Extra multiply-adds x2 per token of each LoRA branch (separate mode); merged/full add none.

    Per-token counts are for modules fed by video tokens; image/text K/V projections run over the
    encoder tokens, reported apart because their cost does not scale with video length.
    """
    if mode != "separate":
        return {"video_token": 0, "encoder_token_text": 0, "encoder_token_image": 0}
    linears = linear_modules(model)
    out = {"video_token": 0, "encoder_token_text": 0, "encoder_token_image": 0}
    key = {"video": "video_token", "text": "encoder_token_text", "image": "encoder_token_image"}
    for name, m in lora.modules.items():
        layer = linears.get(name) or model.get_submodule(name)
        flops = lora_layout.branch_flops_per_token(layer.in_features, layer.out_features, m.rank, m.diff_b is not None)
        out[key[lora_layout.token_stream(name)]] += flops
    return out
