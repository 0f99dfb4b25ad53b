"""TensorRT acceptance of an exported ONNX: parse it with whichever TensorRT flavour imports (datacenter
`tensorrt` or `tensorrt_rtx`), strongly typed, and report the layer count and parser errors. Parsing needs no GPU."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

FLAVOURS = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx_bindings"}


def import_tensorrt(flavour: str = "auto"):
    """(module, flavour name) for `tensorrt`, `rtx` or the first that imports; (None, None) if none does."""
    order = list(FLAVOURS) if flavour == "auto" else [flavour]
    for name in order:
        try:
            return importlib.import_module(FLAVOURS[name]), name
        except ImportError:
            continue
    return None, None


def parse_onnx(path: Path, flavour: str = "auto") -> dict[str, Any]:
    trt, name = import_tensorrt(flavour)
    if trt is None:
        return {"parsed": None, "reason": "no TensorRT flavour installed (pip install 'wanrt[rtx]')"}
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    return {"parsed": bool(ok) and not errors, "flavour": name, "version": getattr(trt, "__version__", "?"),
            "layers": network.num_layers, "errors": errors[:10], "num_errors": len(errors)}
