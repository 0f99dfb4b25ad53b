"""Does every LoRA of a bundle's library fit the engine that will serve it? Decided by `wanrt pack`, before anything
is written, with the same arithmetic and refusals as the swap a replica does at request time
(`engines.lora_weights.swap_weights`: module set, rank budget, a bias delta the graph has a slot for).

A separate-mode graph carries a `lora.<module>.bias` slot only when the LoRA it was exported with had bias deltas
(`diff_b`, as `wanrt extract` writes them); a synthetic `--rank N` export has none. Such a LoRA packed beside such
an engine used to pass `pack` and `verify` and fail every request that named it; it is refused here, in one line
that says what to pack instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wanrt.artifacts import confined_path
from wanrt.errors import BadInputError, EngineError, LoraError
from wanrt.manifests import EngineManifest, ExportManifest
from wanrt.runtime.serving.catalog import engine_info


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


def check_library_fits(engines: list[tuple[str, Path, ExportManifest | EngineManifest]],
                       loras: list[tuple[str, Path]]) -> None:
    """BadInputError naming the first library LoRA no engine of the bundle can serve. A library LoRA is served by
    the first separate-mode engine (Catalog.route), so that is the engine it must fit."""
    from wanrt.engines.lora_weights import swap_weights  # lazy: torch, kept out of the serve driver
    from wanrt.export.lora_formats import load_lora_file  # lazy: torch, kept out of the serve driver

    if not loras:
        return
    swappable = [(n, d, m) for n, d, m in engines if engine_info(n, d, m).swappable]
    if not swappable:
        raise BadInputError(f"--lora {loras[0][0]}: no engine of this bundle can swap a LoRA in (none was exported "
                            "with --lora-mode separate); add one, or pack a merged export of this LoRA as "
                            f"--artifact {loras[0][0]}=DIR")
    ename, directory, manifest = swappable[0]
    try:
        section = swap_section(directory, manifest)
    except EngineError as e:
        raise BadInputError(f"--artifact {ename}: library LoRAs would be swapped into it, but {e}") from None
    model = _skeleton(manifest)
    for lname, path in loras:
        try:
            swap_weights(section, load_lora_file(path, model))
        except LoraError as e:
            raise BadInputError(f"--lora {lname}: cannot be swapped into '{ename}' ({e}); export a separate-mode "
                                f"engine from this LoRA (`wanrt export --lora {path} --lora-mode separate`: its "
                                "graph gets the slots this LoRA needs) and pack that, or a merged one as "
                                f"--artifact {lname}=DIR") from None
