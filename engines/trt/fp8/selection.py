"""Which MatMuls get FP8: those whose weight is `blocks.N.<module>.weight` of a block not kept (--keep-blocks)."""

from __future__ import annotations

import re
from typing import Any

from wanrt.engines.trt.fp8.graph import producers_of
from wanrt.errors import BadInputError

BLOCK_WEIGHT = re.compile(r"^blocks\.(\d+)\.(.+)\.weight$")
_PASS_THROUGH = ("Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze")


def block_count(model) -> int:
    idx = [int(m.group(1)) for i in model.graph.initializer if (m := BLOCK_WEIGHT.match(i.name))]
    return max(idx) + 1 if idx else 0


def parse_keep_blocks(text: str | int | None, num_blocks: int) -> set[int]:
    """'N' -> the first N and last N blocks; '0,1,39' -> those; '' or 0 -> none."""
    if text is None or str(text).strip() in ("", "0"):
        return set()
    text = str(text).strip()
    try:
        if "," not in text:
            n = int(text)
            if n < 0:
                raise ValueError
            return set(range(min(n, num_blocks))) | set(range(max(num_blocks - n, 0), num_blocks))
        values = {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        raise BadInputError(f"--keep-blocks {text!r}: expected N (first and last N blocks) or a list like "
                            "0,1,39") from None
    bad = sorted(v for v in values if not 0 <= v < num_blocks)
    if bad:
        raise BadInputError(f"--keep-blocks: block(s) {bad} do not exist (the model has {num_blocks})")
    return values


def weight_source(model, tensor: str, producers=None, initializers=None) -> tuple[str | None, list[Any]]:
    """Follow a MatMul's B input up through Transpose/Reshape/Cast/Identity to an initializer; returns
    (initializer name or None, the pass-through nodes from the initializer down)."""
    producers = producers if producers is not None else producers_of(model)
    initializers = initializers if initializers is not None else {i.name for i in model.graph.initializer}
    chain = []
    while tensor not in initializers:
        node = producers.get(tensor)
        if node is None or node.op_type not in _PASS_THROUGH:
            return None, []
        chain.append(node)
        tensor = node.input[0]
    return tensor, chain[::-1]


def select_matmuls(model, keep: set[int]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """{MatMul node name: {activation, weight_input, weight, module, block}} to quantize, plus what was kept and why."""
    producers = producers_of(model)
    initializers = {i.name for i in model.graph.initializer}
    chosen: dict[str, dict[str, Any]] = {}
    kept: dict[str, list[str]] = {"keep_blocks": [], "lora": [], "mha": [], "outside_blocks": []}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            continue  # Wan's dynamo export has none; per-channel axis would differ
        weight, _ = weight_source(model, node.input[1], producers, initializers)
        if weight is None:
            kept["mha"].append(node.name)
            continue
        if weight.startswith("lora."):
            kept["lora"].append(weight)
            continue
        m = BLOCK_WEIGHT.match(weight)
        if m is None:
            kept["outside_blocks"].append(weight)
            continue
        block = int(m.group(1))
        if block in keep:
            kept["keep_blocks"].append(weight)
            continue
        chosen[node.name] = {"activation": node.input[0], "weight_input": node.input[1], "weight": weight,
                             "module": weight[: -len(".weight")], "block": block}
    return chosen, kept
