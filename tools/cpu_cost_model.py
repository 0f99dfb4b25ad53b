"""A roofline cost model of one Wan DiT forward: FLOPs and bytes moved per op, timed against a peak FLOP/s and a
memory bandwidth. Used by tools/bench_cpu_engines.py, which measures both peaks in the same run, checks the model
point by point against the measured CPU latencies, and then evaluates it with published GPU peaks (a prediction,
labelled as such).

Ops per block (tokens L, text T, image I, dim D, FFN F, batch B; `ab`/`wb` bytes per activation/weight element):
  linear in->out over M rows   FLOPs 2 M in out           bytes in*out*wb + M (in + out) ab
  LoRA branch (separate), r    FLOPs 2 M r (in + out)      bytes r (in + out) ab + M (in + 2 r + 2 out) ab
                                (x is read again, x A written and read, the branch output written and added)
  attention L x S (fused)      FLOPs 4 L S D               bytes (2 L + 2 S) D ab
  elementwise (norms, adaLN modulation, gates, residuals, RoPE, qk-norm): ELEMENTWISE_PASSES reads+writes of L x D
  and one of L x F (GELU); FLOPs ignored (no matmul unit runs them)
  LoRA branch, form shared-a    one A GEMM per shared input (attn1 q/k/v of a block; attn2 k/v of every block: the
                                text; add_k/add_v of every block: the image), x read once for sum(r) columns; each
                                module's B GEMM then reads its slice of x A (engines/openvino/lora_form.py)
Each op's time is max(FLOPs / peak, bytes / bandwidth); the forward is their sum (no overlap between ops).

Memory (`activation_bytes`, an estimate of what an engine must hold besides its weights): the largest set of tensors
alive at once in one block of a forward that frees each tensor after its last use and runs attention fused (flash:
no L x S score matrix): the attention phase holds the residual, its modulated norm, Q, K, V and the attention output
(6 L D); the FFN phase the residual, its norm, the FFN hidden before and after GELU and the FFN output (3 L D +
2 L F); plus the text K/V of the cross-attention (2 T D) and the RoPE tables (2 L head_dim, fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wanrt.dit_io import IMAGE_TOKENS, TEXT_TOKENS

ELEMENTWISE_PASSES = 16  # per block, over L x D: 3 norms, 6 modulation ops, 3 gated residuals, RoPE q/k, qk-norms

# Published dense peaks (no sparsity), FLOP/s and bytes/s: NVIDIA H100 SXM5 and H200 SXM datasheets.
GPU_PEAKS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4e12, "fp8": 1978.9e12, "fp32": 66.9e12, "bandwidth": 3.35e12},
    "H200 SXM": {"bf16": 989.4e12, "fp8": 1978.9e12, "fp32": 66.9e12, "bandwidth": 4.8e12},
}
BYTES = {"fp32": (4, 4), "bf16": (2, 2), "fp16": (2, 2), "int8": (1, 2), "fp8": (1, 2)}  # (weight, activation)


@dataclass(frozen=True)
class Op:
    name: str
    kind: str  # linear | lora | attention | elementwise
    flops: float
    bytes: float

    def seconds(self, peak: float, bandwidth: float) -> float:
        return max(self.flops / peak, self.bytes / bandwidth)

    def bound(self, peak: float, bandwidth: float) -> str:
        return "compute" if self.flops / peak >= self.bytes / bandwidth else "memory"


def _linear(name, m, i, o, wb, ab) -> Op:
    return Op(name, "linear", 2.0 * m * i * o, i * o * wb + m * (i + o) * ab)


def _lora(name, m, i, o, r, ab) -> Op:
    return Op(name, "lora", 2.0 * m * r * (i + o), r * (i + o) * ab + m * (i + 2 * r + 2 * o) * ab)


def _lora_a(name, m, i, rs, ab) -> Op:
    """x [m, i] @ Concat(A) [i, sum rs]: x read once, x A written."""
    r = sum(rs)
    return Op(name, "lora", 2.0 * m * r * i, r * i * ab + m * (i + r) * ab)


def _lora_b(name, m, o, r, ab) -> Op:
    """(x A) [m, r] @ B [r, o], added to the base output: x A read, the branch output written, read and added."""
    return Op(name, "lora", 2.0 * m * r * o, r * o * ab + m * (r + 2 * o) * ab)


def shared_groups(config: dict[str, Any]) -> list[tuple[str, ...]]:
    """The module groups that read the same input (what the shared-a form gives one A GEMM)."""
    n = config["num_layers"]
    groups = [tuple(f"blocks.{b}.attn1.to_{x}" for x in "qkv") for b in range(n)]
    groups.append(tuple(f"blocks.{b}.attn2.to_{x}" for b in range(n) for x in "kv"))
    if config.get("image_dim") is not None:
        groups.append(tuple(f"blocks.{b}.attn2.add_{x}_proj" for b in range(n) for x in "kv"))
    return groups


def forward_ops(config: dict[str, Any], tokens: int, batch: int = 1, precision: str = "fp32",
                lora_rank: int | None = None, mode: str = "merged", lora_form: str = "plain") -> list[Op]:
    """The ops of one forward (all batch elements). `config`: a WanTransformer3DModel config (dict). `lora_form`
    (separate mode): plain (one A and B GEMM per module) or shared-a (see the module docstring)."""
    wb, ab = BYTES[precision]
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f, L, T = config["ffn_dim"], tokens * batch, TEXT_TOKENS * batch
    has_image = config.get("image_dim") is not None
    n_img = IMAGE_TOKENS * batch if has_image else 0
    kv_in = config.get("added_kv_proj_dim") or d
    ops: list[Op] = []
    shared = {m: g for g in shared_groups(config) for m in g} if lora_form == "shared-a" else {}
    for b in range(config["num_layers"]):
        p = f"blocks.{b}."
        linears = [("attn1.to_q", L, d, d), ("attn1.to_k", L, d, d), ("attn1.to_v", L, d, d),
                   ("attn1.to_out.0", L, d, d), ("attn2.to_q", L, d, d), ("attn2.to_k", T, d, d),
                   ("attn2.to_v", T, d, d), ("attn2.to_out.0", L, d, d), ("ffn.net.0.proj", L, d, f),
                   ("ffn.net.2", L, f, d)]
        if has_image:
            linears += [("attn2.add_k_proj", n_img, kv_in, d), ("attn2.add_v_proj", n_img, kv_in, d)]
        for name, m, i, o in linears:
            ops.append(_linear(p + name, m, i, o, wb, ab))
            if not (lora_rank and mode == "separate"):
                continue
            group = shared.get(p + name)
            if group is None:
                ops.append(_lora(p + name + ".lora", m, i, o, lora_rank, ab))
                continue
            if group[0] == p + name:  # the group's one A GEMM, at its first module
                ops.append(_lora_a(p + name + ".lora_a_shared", m, i, [lora_rank] * len(group), ab))
            ops.append(_lora_b(p + name + ".lora_b", m, o, lora_rank, ab))
        per = L // batch
        for name, s in (("attn1.sdpa", per), ("attn2.sdpa_text", TEXT_TOKENS), ("attn2.sdpa_image", n_img // batch)):
            if s:
                ops.append(Op(p + name, "attention", batch * 4.0 * per * s * d, batch * (2 * per + 2 * s) * d * ab))
        ops.append(Op(p + "elementwise", "elementwise", 0.0, 2.0 * ab * (ELEMENTWISE_PASSES * L * d + L * f)))
    patch = 1
    for k in config["patch_size"]:
        patch *= k
    ops.append(_linear("patch_embedding", L, config["in_channels"] * patch, d, wb, ab))
    ops.append(_linear("text_embedder", T, config["text_dim"], d, wb, ab))
    ops.append(_linear("text_embedder.2", T, d, d, wb, ab))
    if has_image:
        e = config["image_dim"]
        ops.append(_linear("image_embedder", n_img, e, e, wb, ab))
        ops.append(_linear("image_embedder.2", n_img, e, d, wb, ab))
    ops.append(_linear("proj_out", L, d, config["out_channels"] * patch, wb, ab))
    return ops


def form_predictions(config: dict[str, Any], tokens: int, batch: int = 2, rank: int = 16,
                     forms: tuple[str, ...] = ("plain", "shared-a")) -> list[dict[str, Any]]:
    """PREDICTED overhead of a separate rank-`rank` branch over merged, per GPU, precision and graph form, on
    published peaks (roofline: no per-op launch cost, which is what a CUDA graph or a fused epilogue removes)."""
    rows = []
    for gpu, peaks in GPU_PEAKS.items():
        for precision in ("bf16", "fp8"):
            merged = predict(forward_ops(config, tokens, batch, precision), peaks[precision], peaks["bandwidth"])
            for form in forms:
                ops = forward_ops(config, tokens, batch, precision, rank, "separate", form)
                sep = predict(ops, peaks[precision], peaks["bandwidth"])
                rows.append({"gpu": gpu, "precision": precision, "form": form, "rank": rank, "batch": batch,
                             "tokens": tokens, "merged_s": merged["seconds"], "separate_s": sep["seconds"],
                             "predicted_overhead": sep["seconds"] / merged["seconds"] - 1.0,
                             "lora_s": sep["by_kind_s"].get("lora", 0.0), "label": "PREDICTION"})
    return rows


def predict(ops: list[Op], peak: float, bandwidth: float) -> dict[str, Any]:
    """Roofline seconds of `ops`, with the split by kind and by bound."""
    by_kind: dict[str, float] = {}
    bound_s = {"compute": 0.0, "memory": 0.0}
    for op in ops:
        s = op.seconds(peak, bandwidth)
        by_kind[op.kind] = by_kind.get(op.kind, 0.0) + s
        bound_s[op.bound(peak, bandwidth)] += s
    total = sum(by_kind.values())
    return {"seconds": total, "by_kind_s": by_kind, "bound_s": bound_s,
            "flops": sum(o.flops for o in ops), "bytes": sum(o.bytes for o in ops)}


def gpu_predictions(config: dict[str, Any], tokens: int, batch: int = 2, rank: int = 16) -> list[dict[str, Any]]:
    """Predicted forward latency of the real geometry on published GPU peaks, per precision and LoRA mode."""
    rows = []
    for gpu, peaks in GPU_PEAKS.items():
        for precision in ("bf16", "fp8"):
            for mode in ("merged", "separate"):
                ops = forward_ops(config, tokens, batch, precision, rank, mode)
                pred = predict(ops, peaks[precision], peaks["bandwidth"])
                lora_ops = [o for o in ops if o.kind == "lora"]
                lora = predict(lora_ops, peaks[precision], peaks["bandwidth"]) if lora_ops else None
                rows.append({"gpu": gpu, "precision": precision, "mode": mode, "rank": rank, "batch": batch,
                             "tokens": tokens, "seconds": pred["seconds"], "by_kind_s": pred["by_kind_s"],
                             "lora_s": lora["seconds"] if lora else 0.0,
                             "lora_bound": (None if not lora else
                                            "memory" if lora["bound_s"]["memory"] >= lora["bound_s"]["compute"]
                                            else "compute"),
                             "lora_intensity_flop_per_byte": (lora["flops"] / lora["bytes"]) if lora else None,
                             "ridge_flop_per_byte": peaks[precision] / peaks["bandwidth"]})
    return rows


def activation_bytes(config: dict[str, Any], tokens: int, batch: int = 1, precision: str = "bf16") -> dict[str, Any]:
    """Peak activation bytes of one forward (module docstring, "Memory"): the larger phase and what it holds."""
    ab = BYTES[precision][1]
    d, f = config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"]
    L, T = tokens * batch, TEXT_TOKENS * batch
    phases = {"attention": 6 * L * d, "ffn": 3 * L * d + 2 * L * f}
    phase = max(phases, key=phases.get)
    text_kv = 2 * T * d
    rope = 2 * L * config["attention_head_dim"] * 4 / ab  # fp32 cos/sin, counted in activation elements
    return {"bytes": (phases[phase] + text_kv + rope) * ab, "peak_phase": phase, "tokens": tokens, "batch": batch,
            "precision": precision}
