"""The export directory as the engines read it: manifest + model.onnx, dtype, initializers, LoRA weight names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx

from wanrt.artifacts import check_artifact_files, confined_path, sha256_file
from wanrt.engines.cache import onnx_content_sha256
from wanrt.errors import BadInputError, EngineError
from wanrt.manifests import ExportManifest


def read_onnx_dir(onnx_dir: str | os.PathLike) -> tuple[ExportManifest, Path]:
    """(manifest, model.onnx path) of an export directory; BadInputError if it is not one."""
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise BadInputError(f"{onnx_dir}: not a directory (expected a `wanrt export` output)")
    manifest = ExportManifest.read(onnx_dir)
    path = confined_path(onnx_dir, manifest.onnx, "payload.onnx")
    if not path.is_file():
        raise BadInputError(f"{onnx_dir}: manifest names {path.name}, which is "
                            f"{'not a regular file' if path.exists() else 'missing'}")
    data = manifest.external_data
    if data and not confined_path(onnx_dir, data, "payload.external_data").is_file():
        raise BadInputError(f"{onnx_dir}: external weights {data} are missing or not a regular file")
    check_artifact_files(onnx_dir, manifest.document)  # a model.onnx or external data swapped under it is refused
    return manifest, path


def export_digests(onnx_dir: str | os.PathLike, manifest: ExportManifest, onnx_path: Path) -> tuple[str, str]:
    """(sha256 of model.onnx, sha256 over model.onnx and its external data): what an engine manifest records, and
    what its cache key hashes (the bytes that go in, never the sha256 the export manifest records)."""
    data = manifest.external_data
    external = [confined_path(onnx_dir, data, "payload.external_data")] if data else []
    onnx_sha = sha256_file(onnx_path)
    return onnx_sha, onnx_content_sha256(onnx_path, external, onnx_sha=onnx_sha)


def onnx_initializer_info(path: Path) -> dict[str, dict[str, Any]]:
    """{initializer: {shape, dtype}} from the graph proto alone (external weights are not read)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors come as several types
        raise BadInputError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:120]}); re-export") from None
    return {i.name: {"shape": list(i.dims), "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name
                     if i.data_type != onnx.TensorProto.BFLOAT16 else "bfloat16"} for i in model.graph.initializer}


def lora_refit_names(lora: dict[str, Any], initializers: dict[str, Any]) -> dict[str, Any]:
    """What refit addresses in an export with this `lora` section: {mode, modules: {module: {A, B, bias?} |
    {weight, bias?}}, weights: [names]}."""
    if not lora.get("enabled"):
        return {"mode": None, "modules": {}, "weights": []}
    mode = lora.get("mode")
    modules: dict[str, dict[str, str]] = {}
    if mode == "separate":
        for module, names in lora.get("initializers", {}).items():
            modules[module] = dict(names)
    elif mode in ("merged", "full"):
        for module, weight in lora.get("merged_weights", {}).items():
            entry = {"weight": weight}
            if f"{module}.bias" in initializers:
                entry["bias"] = f"{module}.bias"
            modules[module] = entry
    weights = [n for entry in modules.values() for n in entry.values()]
    missing = [n for n in weights if n not in initializers]
    if missing:
        raise EngineError(f"the ONNX manifest names {len(missing)} LoRA weights that are not initializers of the "
                          f"graph, e.g. {missing[:3]}; re-export")
    return {"mode": mode, "modules": modules, "weights": weights}
