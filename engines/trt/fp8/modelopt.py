"""NVIDIA ModelOpt as the Q/DQ inserter (optional: `modelopt` is imported lazily and quietly)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any

from onnxruntime.quantization import CalibrationDataReader


def import_modelopt():
    """Import modelopt.onnx.quantization quietly: it logs to stdout at import (e.g. "Failed to get GPU count" on
    machines without NVML), which would mix into wanrt's tables. Its handlers then write errors to stderr."""
    with contextlib.redirect_stdout(io.StringIO()):
        import modelopt.onnx.quantization as mq
    log = logging.getLogger("modelopt.onnx")
    log.setLevel(logging.ERROR)
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    return mq


def modelopt_available() -> bool:
    try:
        import_modelopt()
        return True
    except Exception:  # noqa: BLE001 - ImportError or its optional deps failing
        return False


def modelopt_quantize(twin_path: Path, out_path: Path, chosen: dict[str, Any], samples, eps: list[str]) -> None:
    """Q/DQ by ModelOpt's ONNX PTQ (max calibration, MHA Q/DQ off) on exactly the chosen MatMul nodes."""
    mq = import_modelopt()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

        def get_first(self):  # ModelOpt's readers have it (a test run before calibration)
            return samples[0]

        def rewind(self):
            self._it = iter(samples)

    try:  # ModelOpt's graph surgery logs through onnx-graphsurgeon's own logger
        from onnx_graphsurgeon.logger import G_LOGGER as GS_LOGGER

        GS_LOGGER.severity = GS_LOGGER.ERROR
    except ImportError:
        pass
    mq.quantize(str(twin_path), quantize_mode="fp8", calibration_data_reader=Reader(), calibration_method="max",
                calibration_eps=eps, nodes_to_quantize=[f"^{re.escape(n)}$" for n in chosen],
                op_types_to_quantize=["MatMul", "Gemm"], high_precision_dtype="fp32", disable_mha_qdq=True,
                output_path=str(out_path), log_level="ERROR", use_external_data_format=needs_external_data(twin_path))


def needs_external_data(path: Path) -> bool:
    """The graph is over protobuf's 2 GB or already carries an external data file."""
    return path.stat().st_size > 2**31 - 2**26 or Path(str(path) + ".data").exists()
