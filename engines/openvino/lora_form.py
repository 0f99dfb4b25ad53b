"""Graph forms of a separate LoRA branch on the OpenVINO model, chosen at build time (issue 20).

A separate-mode export computes each adapted projection's branch as its own pair of small GEMMs,
`x @ A_m` ([tokens, in] x [in, r]) then `@ B_m`, added to the base output. The small GEMMs are cheap in FLOPs but
each re-reads the full activation `x`: at rank 16 the branch costs ~3x its FLOP share (issue 20). Projections that
read the same activation (attn1 to_q/to_k/to_v: the video tokens; attn2 to_k/to_v: the text; attn2
add_k_proj/add_v_proj: the image tokens) can share that read:

    plain     x @ A_q, x @ A_k, x @ A_v             (one GEMM per module, as exported)
    shared-a  VariadicSplit(x @ Concat(A_q, A_k, A_v))  (one GEMM of N = sum r per shared input)

The swap layout does not change: `lora.<module>.A/B` stay Parameters of the compiled model (engines/openvino/
engine.py binds them per swap), and the Concat of those Parameters runs inside the graph on every inference (in x
sum(r) floats: a copy of a few hundred KiB at most), so a swap is still `set_tensor` and nothing is recompiled.
The branches are found by graph structure: a MatMul whose second input is the Parameter `lora.<module>.A`,
grouped by the exact tensor feeding its first input.

In every form the factors are bound in the precision the branch runs in (`narrow_lora_inputs`): a bf16 compile
otherwise converts each fp32 factor to bf16 on every inference.
"""

from __future__ import annotations

from typing import Any

from wanrt.errors import BadInputError

FORMS = ("plain", "shared-a")
DEFAULT_FORM = "plain"


def check_form(form: str) -> str:
    if form not in FORMS:
        raise BadInputError(f"--lora-form {form}: choose one of {', '.join(FORMS)}")
    return form


def a_matmuls(model) -> dict[str, Any]:
    """{module: the MatMul x @ lora.<module>.A} for every LoRA A Parameter of `model` feeding a plain MatMul."""
    out = {}
    for param in model.get_parameters():
        name = param.get_friendly_name()
        if not (name.startswith("lora.") and name.endswith(".A")):
            continue
        for target in param.output(0).get_target_inputs():
            node = target.get_node()
            attrs = node.get_attributes() if node.get_type_name() == "MatMul" else {}
            if target.get_index() == 1 and not attrs.get("transpose_a") and not attrs.get("transpose_b"):
                out[name[len("lora."):-len(".A")]] = node
    return out


def shared_input_groups(model) -> list[list[tuple[str, Any]]]:
    """Groups (>= 2) of (module, A MatMul) that read the same activation tensor, in module order."""
    by_input: dict[tuple[str, int], list[tuple[str, Any]]] = {}
    for module, mm in sorted(a_matmuls(model).items()):
        src = mm.input(0).get_source_output()
        by_input.setdefault((src.get_node().get_name(), src.get_index()), []).append((module, mm))
    return [g for g in by_input.values() if len(g) > 1]


def apply_form(model, form: str) -> tuple[Any, dict[str, Any]]:
    """`model` in graph form `form` (rewritten in place) and the manifest's record of what changed."""
    check_form(form)
    if form == "plain":
        return model, {"form": form, "groups": []}
    from openvino import opset13 as ops

    groups = shared_input_groups(model)
    for group in groups:
        mms = [mm for _, mm in group]
        a_params = [mm.input(1).get_source_output() for mm in mms]
        ranks = [int(a.get_partial_shape()[1].get_length()) for a in a_params]
        x = mms[0].input(0).get_source_output()
        shared = ops.matmul(x, ops.concat(a_params, axis=-1), transpose_a=False, transpose_b=False)
        parts = ops.variadic_split(shared, ops.constant(-1), ops.constant(ranks))
        shared.set_friendly_name(f"lora.shared_a.{group[0][0]}")
        for i, mm in enumerate(mms):
            mm.output(0).replace(parts.output(i))
    model.validate_nodes_and_infer_types()
    return model, {"form": form, "groups": [[m for m, _ in g] for g in groups],
                   "a_matmuls_removed": sum(len(g) - 1 for g in groups)}


def bf16_bits(values):
    """fp32 values (numpy) as bf16 bit patterns (numpy uint16), rounded to nearest even as OpenVINO's own
    conversion does. torch's cast, not numpy bit arithmetic: 0.38 against 1.27 ms per 1.5M values on 2 cores, and a
    swap runs it on every factor (lazy import: a swap loads torch anyway)."""
    import numpy as np
    import torch

    values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def bound_factor(values, element_type):
    """(the array to keep alive, the ov.Tensor sharing it) for one LoRA factor bound as an input of `element_type`
    (the compiled input's: bf16 after narrow_lora_inputs, else f32)."""
    import numpy as np
    import openvino as ov

    if element_type == ov.Type.bf16:
        bits = bf16_bits(values)
        return bits, ov.Tensor(bits, bits.shape, ov.Type.bf16)
    values = np.ascontiguousarray(values, dtype=np.float32)
    return values, ov.Tensor(values, shared_memory=True)


def narrow_lora_inputs(model, precision: str, capabilities: list[str]) -> str:
    """The LoRA factors' input type, set on `model` in place: "bf16" when the compile runs the branch in bf16 (a
    `precision` other than fp32 on a device whose `capabilities`, engine.device_capabilities, include BF16), else
    "f32".

    Why: a bf16 compile converts an f32 Parameter to bf16 on every inference, one Reorder per factor: 96 on `small`
    (2 factors x 48 adapted projections), 0.55 ms of an 81 ms forward by OpenVINO's PERF_COUNT; in a one-off A/B of
    40 interleaved rounds the separate branch's overhead went from +10.3% to +8.0%. Taken as bf16, the factor is
    converted once, at the swap (OvEngine._bind_lora through `bf16_bits`). The Convert back to f32 keeps the graph's
    types valid; the plugin folds it (a compiled bf16 engine has merged's Reorder count: bench_lora_forms
    --graph-look)."""
    if precision == "fp32" or "BF16" not in capabilities:
        return "f32"
    import openvino as ov
    from openvino import opset13 as ops

    for param in model.get_parameters():
        if not param.get_friendly_name().startswith("lora."):
            continue
        targets = list(param.output(0).get_target_inputs())
        param.set_element_type(ov.Type.bf16)
        param.validate_and_infer_types()
        widened = ops.convert(param, ov.Type.f32)
        for target in targets:
            target.replace_source_output(widened.output(0))
    model.validate_nodes_and_infer_types()
    return "bf16"
