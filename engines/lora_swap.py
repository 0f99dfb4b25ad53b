"""LoRA hot-swap without rebuilding, for graphs that keep the LoRA as its own branch (separate-mode exports).

A separate-mode export names its branch weights `lora.<module>.A` ([in, r]), `.B` ([r, out], scale folded in) and
`.bias` (engines/trt/refit.py; export/api.py writes the names into the manifest). TensorRT swaps them by refit. The
CPU runtimes swap them as data:

- ONNX Runtime: an initializer that is also listed as a graph input is an *overridable initializer* (ONNX IR >= 4):
  the file's value is the default, a value fed for that input replaces it for that run. `overridable_onnx` lists the
  LoRA initializers as inputs in a copy of the graph proto (the weights stay where they are, external data
  included), and the backend binds the current LoRA tensors on every run. Only the small LoRA MatMuls lose ORT's
  constant pre-packing; the base weights stay constants.
- OpenVINO: the LoRA Constants become Parameters before compiling (engines/openvino/engine.py); the tensors are set on
  the infer request once per swap.

The weights for a new LoRA come from `engines.lora_weights.swap_weights`: one place for the branch layout (A^T,
scale * B^T, bias), the zero-padding of a smaller rank (exact: (x [A 0]) [B; 0] = x A B), and the refusals (other
module set, larger rank, a bias the graph has no weight for), each one LoraError line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from wanrt.engines.onnx_dir import lora_refit_names
from wanrt.errors import BadInputError, EngineError

SWAP_KIND = "swap"  # the `refit` value of a lora section whose weights are swapped as data (not TensorRT refit)


def check_swappable(mode: str | None) -> None:
    """EngineError (one line) unless a LoRA in `mode` (None: no LoRA) can be swapped as data."""
    if not mode:
        raise EngineError("this artifact has no LoRA to swap; export with --rank/--lora --lora-mode separate")
    if mode != "separate":
        raise EngineError(f"this artifact's LoRA is {mode} into the weights; hot-swap needs its own branch: export "
                          f"with --lora-mode separate (or rebuild for the new LoRA)")


def swap_section(lora: dict[str, Any], initializers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The engine-manifest style `lora` section (mode, refit, modules, refittable_weights) of a separate-mode
    export, from its `lora` section and {initializer: {shape, dtype}}. EngineError if the export cannot hot-swap."""
    check_swappable(lora.get("mode") if lora.get("enabled") else None)
    names = lora_refit_names(lora, initializers)  # EngineError if the graph lacks a named weight
    return {"mode": "separate", "refit": SWAP_KIND, "modules": names["modules"], "loaded": loaded_from_export(lora),
            "refittable_weights": {n: initializers[n] for n in names["weights"]}, "history": []}


def loaded_from_export(lora: dict[str, Any]) -> dict[str, Any]:
    """What an engine manifest records of the LoRA its export carried (`loaded`): the export's lora section less
    the per-weight names and costs."""
    return {k: v for k, v in lora.items()
            if k not in ("initializers", "merged_weights", "retained_energy", "flops_per_token")}


def loaded_identity(lora, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a manifest records of the LoRA now loaded (`loaded`): its summary and where it came from."""
    if lora is None:
        return {"enabled": False}
    return {"enabled": True, **lora.summary(), **(source or {})}


def record_swap(section: dict[str, Any], lora, source: dict[str, Any]) -> None:
    """A refit's record in an engine's `lora` section: the LoRA it replaced joins `history`, `loaded` names the new."""
    section.setdefault("history", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "previous": section.get("loaded")})
    section["loaded"] = loaded_identity(lora, source)


def overridable_onnx(onnx_path: Path, names: list[str], lora_form: str = "plain") -> bytes:
    """The graph proto of `onnx_path` with `names` (initializers) also listed as graph inputs, serialized, in
    LoRA graph form `lora_form` (shared_a_onnx; engines/openvino/lora_form.py has the OpenVINO twin).
    External weights are not read: the session loads them from the export directory (see ort_session_options)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if lora_form == "shared-a":
        shared_a_onnx(model)
    elif lora_form != "plain":
        raise BadInputError(f"lora_form {lora_form!r}: choose plain or shared-a")
    inits = {i.name: i for i in model.graph.initializer}
    present = {i.name for i in model.graph.input}
    for name in names:
        if name in present:
            continue
        init = inits.get(name)
        if init is None:
            raise EngineError(f"{onnx_path.name} has no initializer {name}; re-export")
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    if model.ir_version < 4:  # before IR 4 every initializer had to be an input anyway
        model.ir_version = 4
    return model.SerializeToString()



def shared_a_onnx(model) -> int:
    """Rewrite `model` (an onnx ModelProto, in place) so the LoRA A MatMuls that read the same tensor are one
    MatMul of x with Concat(A_1..A_n) along N, then a Split into each module's x A_i: the swap layout (initializers
    `lora.<module>.A/B`) is unchanged and the Concat runs per inference on the fed weights. Returns how many A
    MatMuls it removed."""
    import onnx

    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    nodes = list(model.graph.node)
    groups: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        if n.op_type == "MatMul" and n.input[1].startswith("lora.") and n.input[1].endswith(".A") \
                and len(dims.get(n.input[1], ())) == 2:
            groups.setdefault(n.input[0], []).append(k)
    replace: dict[int, list] = {}
    drop: set[int] = set()
    for x, ks in groups.items():
        if len(ks) < 2:
            continue
        a_names = [nodes[k].input[1] for k in ks]
        tag = f"wanrt.shared_a.{a_names[0]}"
        sizes = onnx.numpy_helper.from_array(np.array([dims[a][1] for a in a_names], "int64"),
                                             f"{tag}.split")
        model.graph.initializer.append(sizes)
        replace[ks[0]] = [onnx.helper.make_node("Concat", a_names, [f"{tag}.cat"], axis=-1, name=f"{tag}.concat"),
                          onnx.helper.make_node("MatMul", [x, f"{tag}.cat"], [f"{tag}.xa"], name=f"{tag}.matmul"),
                          onnx.helper.make_node("Split", [f"{tag}.xa", sizes.name],
                                                [nodes[k].output[0] for k in ks], axis=-1, name=f"{tag}.split")]
        drop.update(ks)
    out = []
    for k, n in enumerate(nodes):  # the group's nodes where its first A MatMul was: x and the A's exist there
        out.extend(replace.get(k, []) if k in drop else [n])
    del model.graph.node[:]
    model.graph.node.extend(out)
    return len(drop) - len(replace)
