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

The weights for a new LoRA come from `engines.trt.refit.refit_weights`: one place for the branch layout (A^T,
scale * B^T, bias), the zero-padding of a smaller rank (exact: (x [A 0]) [B; 0] = x A B), and the refusals (other
module set, larger rank, a bias the graph has no weight for), each one LoraError line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wanrt.engines.onnx_dir import lora_refit_names
from wanrt.errors import EngineError

SWAP_KIND = "swap"  # the `refit` value of a lora section whose weights are swapped as data (not TensorRT refit)


def swap_section(export_manifest: dict[str, Any], initializers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The engine-manifest style `lora` section (mode, refit, modules, refittable_weights) for a separate-mode
    export, from its manifest and {initializer: {shape, dtype}}. EngineError if the export cannot hot-swap."""
    lora = export_manifest.get("payload", {}).get("lora") or {}
    if not lora.get("enabled"):
        raise EngineError("this artifact has no LoRA to swap; export with --rank/--lora --lora-mode separate")
    if lora.get("mode") != "separate":
        raise EngineError(f"this artifact's LoRA is {lora.get('mode')} into the weights; hot-swap needs its own "
                          f"branch: export with --lora-mode separate (or rebuild for the new LoRA)")
    names = lora_refit_names(export_manifest, initializers)  # EngineError if the graph lacks a named weight
    return {"mode": "separate", "refit": SWAP_KIND, "modules": names["modules"], "loaded": loaded_from_export(lora),
            "refittable_weights": {n: initializers[n] for n in names["weights"]}, "history": []}


def loaded_from_export(lora: dict[str, Any]) -> dict[str, Any]:
    """What an engine manifest records of the LoRA its export carried (`loaded`): the export's lora section less
    the per-weight names and costs."""
    return {k: v for k, v in lora.items()
            if k not in ("initializers", "merged_weights", "retained_energy", "flops_per_token")}


def swap_weights(section: dict[str, Any], lora) -> dict[str, Any]:
    """{weight name: contiguous CPU torch tensor} for `lora` (LoraWeights; None = no LoRA, all zeros) in the
    graph's layout and dtype. LoraError (one line) for a wrong module set or a larger rank."""
    from wanrt.engines.trt.refit import check_weights_against_manifest, refit_weights  # lazy: torch, at a swap

    manifest = {"payload": {"lora": section, "precision": "fp32"}}
    weights = refit_weights(manifest, lora)
    check_weights_against_manifest(manifest, weights)
    return {n: t.contiguous() for n, t in weights.items()}


def loaded_identity(lora, source: dict[str, Any] | None = None) -> dict[str, Any]:
    if lora is None:
        return {"enabled": False}
    return {"enabled": True, **lora.summary(), **(source or {})}


def overridable_onnx(onnx_path: Path, names: list[str]) -> bytes:
    """The graph proto of `onnx_path` with `names` (initializers) also listed as graph inputs, serialized.
    External weights are not read: the session loads them from the export directory (see ort_session_options)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
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

