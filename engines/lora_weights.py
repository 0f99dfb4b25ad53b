"""The new weights of a LoRA, in the layout and dtype of the graph that holds it: for an engine's or a separate-mode
graph's `lora` section, the one arithmetic behind TensorRT refit (engines/trt/refit.py), the ONNX Runtime and
OpenVINO swaps (engines/lora_swap.py) and a bundle's fit check (runtime/serving/fit.py). The maths is
wanrt.lora_layout's, as in the export; every refusal is one LoraError line that says what to rebuild."""

from __future__ import annotations

from typing import Any

import torch

from wanrt import lora_layout
from wanrt.errors import EngineError, LoraError


def _torch_dtype(name: str) -> torch.dtype:
    """A manifest's dtype name (torch's spelling, e.g. "bfloat16") as a torch dtype."""
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def section_weights(section: dict[str, Any], lora, base=None) -> dict[str, Any]:
    """refit_weights for a refittable `lora` section (an engine's, or the swap section of a separate-mode graph)."""
    mode = section["mode"]
    modules: dict[str, dict[str, str]] = section["modules"]
    lora_modules = {} if lora is None else (lora.modules if lora.dense is None else None)
    if lora_modules is None:
        raise LoraError("a dense (full fine-tune) delta cannot be refit as a LoRA; merge it and rebuild")
    lora_scale = 1.0 if lora is None else lora.lora_scale
    extra = sorted(set(lora_modules) - set(modules))
    if extra:
        raise LoraError(f"the LoRA adapts {len(extra)} modules this engine cannot refit (e.g. {extra[:3]}); "
                        f"its targets are outside the engine's branch: rebuild the engine with targets that cover "
                        f"them")
    if mode == "separate":  # a module the LoRA (or a smaller stack) leaves out gets a zero branch: exact
        return _separate_weights(section, lora_modules, lora_scale)
    if mode in ("merged", "full"):
        if base is None:
            raise EngineError("merged-mode refit needs the original base weights")
        names = [n for entry in modules.values() for n in entry.values()]
        return _merged_weights(section, lora_modules, lora_scale, base(names) if callable(base) else base)
    raise EngineError(f"unknown LoRA mode {mode!r} in the engine manifest")


def _separate_weights(section: dict[str, Any], lora_modules: dict[str, Any], lora_scale: float) -> dict[str, Any]:
    """Branch tensors lora.<module>.A/B[/bias] at the engine's rank (a smaller LoRA rank zero-padded; a module
    the LoRA leaves out gets zeros, i.e. no branch)."""
    info: dict[str, dict[str, Any]] = section["refittable_weights"]
    out: dict[str, Any] = {}
    for module, names in section["modules"].items():
        a_info, b_info = info[names["A"]], info[names["B"]]
        engine_rank, dtype = a_info["shape"][1], _torch_dtype(a_info["dtype"])
        in_f, out_f = a_info["shape"][0], b_info["shape"][1]
        m = lora_modules.get(module)
        if m is None:
            out[names["A"]] = torch.zeros(in_f, engine_rank, dtype=dtype)
            out[names["B"]] = torch.zeros(engine_rank, out_f, dtype=dtype)
        else:
            if m.rank > engine_rank:
                raise LoraError(f"{module}: LoRA rank {m.rank} exceeds the engine's rank {engine_rank}; "
                                f"separate-mode engines take rank <= {engine_rank} (zero-padded): rebuild for "
                                f"rank {m.rank}")
            if tuple(m.down.shape) != (m.rank, in_f) or tuple(m.up.shape) != (out_f, m.rank):
                raise LoraError(f"{module}: LoRA A {tuple(m.down.shape)} / B {tuple(m.up.shape)} do not fit "
                                f"{out_f}x{in_f}")
            branch = lora_layout.branch_weights(m, lora_scale, dtype, rank=engine_rank, with_bias=False)
            out[names["A"]], out[names["B"]] = branch["A"], branch["B"]
        if "bias" in names:
            bias_info = info[names["bias"]]
            out[names["bias"]] = lora_layout.branch_bias(m, lora_scale, bias_info["shape"][0],
                                                         _torch_dtype(bias_info["dtype"]))
        elif m is not None and m.diff_b is not None:
            raise LoraError(f"{module}: the LoRA has a bias delta (diff_b) and the engine has no LoRA bias "
                            f"weight to refit; rebuild the engine for this LoRA")
    return out


def _merged_weights(section: dict[str, Any], lora_modules: dict[str, Any], lora_scale: float,
                    base_map: dict[str, Any]) -> dict[str, Any]:
    """W + s B A and b + lora_scale diff_b from the original base weights, never cumulatively."""
    info: dict[str, dict[str, Any]] = section["refittable_weights"]
    out: dict[str, Any] = {}
    for module, entry in section["modules"].items():
        w_name = entry["weight"]
        m = lora_modules.get(module)
        delta = m.delta(lora_scale) if m is not None else None
        out[w_name] = lora_layout.merged_weight(base_map[w_name], delta, _torch_dtype(info[w_name]["dtype"]))
        if "bias" in entry:
            b_name = entry["bias"]
            out[b_name] = lora_layout.merged_bias(base_map[b_name], m, lora_scale, info[b_name]["shape"][0],
                                                  _torch_dtype(info[b_name]["dtype"]))
        elif m is not None and m.diff_b is not None:
            raise LoraError(f"{module}: the LoRA has a bias delta and {module} has no bias in the engine; "
                            f"rebuild the engine for this LoRA")
    return out


def check_weights(section: dict[str, Any], weights: dict[str, Any]) -> None:
    """The last gate before new weights reach an engine (TensorRT refit, the ORT/OpenVINO swap, a server's swap),
    against its `lora` section: names and shapes the engine has, and finite values in the engine's dtype (a large
    scale or alpha overflows fp16/bf16 even when every input was finite)."""
    info = section["refittable_weights"]
    for name, t in weights.items():
        if name not in info:
            raise EngineError(f"{name} is not a refittable weight of this engine")
        if list(t.shape) != list(info[name]["shape"]):
            raise EngineError(f"{name}: new weights {list(t.shape)}, the engine has {info[name]['shape']}")
        # one reduction (its sum is finite only if every value is; overflow of the sum alone falls through to the
        # exact check): a swap checks hundreds of small tensors, and this is what its time was going to
        if not bool(torch.isfinite(t.sum(dtype=torch.float32))) and not bool(torch.isfinite(t).all()):
            raise LoraError(f"{name}: the new LoRA weights are not finite in {info[name]['dtype']} (NaN in the "
                            f"LoRA, or its scale/alpha overflows); nothing was changed")


def swap_weights(section: dict[str, Any], lora) -> dict[str, Any]:
    """{weight name: contiguous CPU torch tensor} for `lora` (LoraWeights; None = no LoRA, all zeros) in the
    graph's layout and dtype, checked (check_weights). LoraError (one line) for a wrong module set or a larger rank."""
    weights = section_weights(section, lora)
    check_weights(section, weights)
    return {n: t.contiguous() for n, t in weights.items()}
