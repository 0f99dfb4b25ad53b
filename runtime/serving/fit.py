"""Does every LoRA of a bundle's library fit some engine that can serve it? Decided by `wanrt pack`, before anything
is written, with the same arithmetic and refusals as the swap a replica does at request time
(`engines.lora_weights.swap_weights`: module set, rank budget, a bias delta the graph has a slot for). What it learns,
each LoRA's footprint and each separate-mode engine's branch (runtime/serving/stacks.py), goes into the bundle
manifest, so the ingress decides which engine a stack of LoRAs fits without loading one.

A separate-mode graph carries a `lora.<module>.bias` slot only when the LoRA it was exported with had bias deltas
(`diff_b`, as `wanrt extract` writes them); a synthetic `--rank N` export has none. Such a LoRA packed beside such
an engine used to pass `pack` and `verify` and fail every request that named it; it is refused here, in one line
that says what to pack instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wanrt.artifacts import confined_path
from wanrt.errors import BadInputError, EngineError, LoraError
from wanrt.manifests import EngineManifest, ExportManifest
from wanrt.runtime.serving.catalog import engine_info
from wanrt.runtime.serving.stacks import Footprint, branch_footprint


def swap_section(directory: Path, manifest: ExportManifest | EngineManifest) -> dict[str, Any]:
    """The `lora` section a replica swaps through, for a separate-mode export (ONNX Runtime) or engine (OpenVINO
    swap, TensorRT refit); EngineError when that engine cannot swap."""
    from wanrt.engines.lora_swap import swap_section as export_section  # lazy: onnx, kept out of the serve driver
    from wanrt.engines.onnx_dir import onnx_initializer_info  # lazy: onnx, kept out of the serve driver
    from wanrt.engines.trt.refit import engine_lora  # lazy: torch, kept out of the serve driver

    if isinstance(manifest, ExportManifest):
        onnx = confined_path(directory, manifest.onnx, "ONNX file")
        return export_section(manifest.lora, onnx_initializer_info(onnx))
    return engine_lora(manifest)


def _skeleton(manifest: ExportManifest | EngineManifest):
    """Module names and shapes a LoRA file resolves against, without weights where possible (as the replica's)."""
    import torch

    from wanrt.export.model import exported_model_spec, load_transformer  # lazy: torch, kept out of the serve driver

    model_spec = exported_model_spec(manifest)
    if not model_spec.is_preset and Path(model_spec.source).expanduser().is_dir():
        from wanrt.export.extract import open_base  # lazy: torch, kept out of the serve driver

        return open_base(model_spec)[0]  # a meta-device skeleton from the checkpoint's config
    if model_spec.is_preset:
        with torch.device("meta"):
            return load_transformer(model_spec)
    return load_transformer(model_spec)


def library_fit(engines: list[tuple[str, Path, ExportManifest | EngineManifest]],
                loras: list[tuple[str, Path]]) -> tuple[dict[str, Footprint], dict[str, Footprint]]:
    """({engine: branch}, {LoRA: footprint}) for the bundle manifest, by which the ingress routes stacks; raises
    BadInputError naming the first library LoRA that no separate-mode engine of the bundle can take alone (each
    tried with the replica's own swap arithmetic). With a library, every separate-mode engine must swap: routing
    may pick any of them."""
    from wanrt.engines.lora_weights import swap_weights  # lazy: torch, kept out of the serve driver
    from wanrt.export.lora_formats import load_lora_file  # lazy: torch, kept out of the serve driver

    if not loras:
        return {}, {}
    swappable = [(n, d, m) for n, d, m in engines if engine_info(n, d, m).swappable]
    if not swappable:
        raise BadInputError(f"--lora {loras[0][0]}: no engine of this bundle can swap a LoRA in (none was exported "
                            "with --lora-mode separate); add one, or pack a merged export of this LoRA as "
                            f"--artifact {loras[0][0]}=DIR")
    sections = {}
    for ename, directory, manifest in swappable:
        try:
            sections[ename] = swap_section(directory, manifest)
        except EngineError as e:
            raise BadInputError(f"--artifact {ename}: library LoRAs would be swapped into it, but {e}") from None
    skeletons: dict[str, Any] = {}  # one per model an engine was exported from
    prints = {}
    for lname, path in loras:
        reasons = []
        for ename, _, manifest in swappable:
            key = json.dumps(manifest.export_specs.get("model"), sort_keys=True)
            if key not in skeletons:
                skeletons[key] = _skeleton(manifest)
            try:
                lora = load_lora_file(path, skeletons[key])
                swap_weights(sections[ename], lora)
            except LoraError as e:
                reasons.append(f"'{ename}' ({e})")
                continue
            prints[lname] = Footprint(ranks={n: m.rank for n, m in lora.modules.items()},
                                      bias=frozenset(n for n, m in lora.modules.items() if m.diff_b is not None))
            break
        else:
            raise BadInputError(f"--lora {lname}: fits no engine of this bundle: {'; '.join(reasons)}; export a "
                                f"separate-mode engine from this LoRA (`wanrt export --lora {path} --lora-mode "
                                "separate`: its graph gets the slots and rank this LoRA needs) and pack that, or a "
                                f"merged one as --artifact {lname}=DIR")
    return {ename: branch_footprint(section) for ename, section in sections.items()}, prints
