"""TensorRT acceptance of an exported ONNX: parse it, strongly typed, with whichever TensorRT flavour is installed
(`tensorrt` or `tensorrt_rtx`), and report the layer count and parser errors. Parsing needs no GPU.

The export layer cannot import engines, so callers above it hand this function to `export_model(acceptance=...)`
(the export CLI, the runtime's export for ort/trt backends); the export manifest records its report as `trt_parse`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wanrt.engines.trt.network import parse_network
from wanrt.engines.trt.flavour import load_flavour
from wanrt.errors import EngineError, MissingDependencyError


def tensorrt_acceptance(path: Path, flavour: str = "auto") -> dict[str, Any]:
    """{"parsed": True/False, flavour, version, layers, errors, num_errors}, or {"parsed": None, "reason"} when no
    TensorRT flavour is installed (export works without one)."""
    try:
        loaded = load_flavour(flavour)
    except MissingDependencyError as e:
        return {"parsed": None, "reason": str(e)}
    report = {"flavour": loaded.name, "version": loaded.version}
    try:
        _, network, _, _ = parse_network(loaded, Path(path))
    except EngineError as e:
        errors = getattr(e, "parser_errors", None) or [str(e)]
        return {**report, "parsed": False, "layers": 0, "errors": errors[:10], "num_errors": len(errors)}
    return {**report, "parsed": True, "layers": network.num_layers, "errors": [], "num_errors": 0}
