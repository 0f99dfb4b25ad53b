"""`quantize_fp8`: the FP8 pass end to end (see the package docstring for its steps)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wanrt.engines.trt.fp8.calibration import (calibrate_amax, calibration_session, check_inputs, load_calibration_set,
                                           random_calibration, relative_errors, to_numpy)
from wanrt.engines.trt.fp8.graph import copy_model, graph_dtype, load_model, save_model, widen_model_to_fp32
from wanrt.engines.trt.fp8.modelopt import modelopt_available, modelopt_quantize
from wanrt.engines.trt.fp8.qdq import insert_qdq, make_simulatable, transplant_qdq
from wanrt.engines.trt.fp8.selection import block_count, parse_keep_blocks, select_matmuls
from wanrt.choices import Fp8Backend
from wanrt.errors import BadInputError, MissingDependencyError, ValuesMismatch

DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Fp8Spec:
    """How FP8 Q/DQ is made and checked."""

    calib: int = 8  # calibration samples
    keep_blocks: str = "1"  # N: first N and last N blocks stay high precision; or a comma list of block indices
    backend: str = "auto"  # auto | modelopt | wanrt
    tolerance: float = DEFAULT_TOLERANCE  # max relative error per output in the ORT check
    seed: int = 0
    calib_data: str | None = None  # .npz file or directory of .npz files with input dicts
    calib_shape: str | None = None  # FRAMESxHxW of random calibration inputs (default: small, in range)
    check: bool = True
    per_channel: bool = True  # wanrt backend: weight scales per output channel (ModelOpt: per tensor)


def resolve_backend(name: str) -> str:
    Fp8Backend.parse(name, "--fp8-backend")
    if name == "auto":
        return "modelopt" if modelopt_available() else "wanrt"
    if name == "modelopt" and not modelopt_available():
        raise MissingDependencyError("--fp8-backend modelopt: nvidia-modelopt is not importable; pip install "
                                     "nvidia-modelopt onnx-graphsurgeon onnxslim onnxconverter-common lief "
                                     "(not the [onnx] extra, which pulls onnxruntime-gpu and cupy), or use "
                                     "--fp8-backend wanrt")
    return name


def quantize_fp8(src: str | os.PathLike, dst: str | os.PathLike, spec: Fp8Spec = Fp8Spec(),
                 calibration: Iterable[dict[str, Any]] | None = None, shape_ranges: dict[str, Any] | None = None,
                 calibration_eps: list[str] | None = None) -> dict[str, Any]:
    """ONNX (fp32/fp16/bf16) -> FP8 Q/DQ ONNX at `dst`, checked in ONNX Runtime first. Returns the report.

    `calibration`: any iterable of {input name: array or torch tensor}; None -> spec.calib_data or seeded random
    inputs. ValuesMismatch when the FP8 graph's relative error exceeds spec.tolerance (nothing written then)."""
    src, dst = Path(src), Path(dst)
    backend = resolve_backend(spec.backend)
    source = load_model(src)
    dtype = graph_dtype(source)
    num_blocks = block_count(source)
    keep = parse_keep_blocks(spec.keep_blocks, num_blocks)
    twin = widen_model_to_fp32(source) if dtype != "fp32" else source
    chosen, kept = select_matmuls(twin, keep)
    if not chosen:
        raise BadInputError(f"FP8: no MatMul left to quantize ({num_blocks} blocks, --keep-blocks "
                            f"{spec.keep_blocks} keeps {sorted(keep)}); lower --keep-blocks")
    samples = _calibration_samples(twin, spec, calibration, shape_ranges)
    check_samples = random_calibration(twin, 2, spec.seed + 1000, spec.calib_shape, shape_ranges, batch=1)
    with tempfile.TemporaryDirectory(prefix="wanrt-fp8-") as tmp:
        twin_path = Path(tmp) / "twin32.onnx"
        save_model(twin, twin_path)
        q32, report_extra = _insert_qdq(backend, spec, twin, twin_path, Path(tmp) / "q32.onnx", chosen, samples,
                                        calibration_eps)
        n_q = sum(1 for n in q32.graph.node if n.op_type == "QuantizeLinear")
        report: dict[str, Any] = {"backend": backend, "source_dtype": dtype, "blocks": num_blocks,
                                  "keep_blocks": sorted(keep), "quantized_matmuls": len(chosen),
                                  "quantize_nodes": n_q,
                                  "quantized_modules": sorted({c["module"] for c in chosen.values()}),
                                  "kept_high_precision": {k: len(v) for k, v in kept.items()},
                                  "calibration": {"samples": len(samples), "method": "max",
                                                  "source": "given" if spec.calib_data else "random (seeded)"},
                                  "tolerance": spec.tolerance, **report_extra}
        if spec.check:
            report["check"] = _check_numerics(q32, twin_path, check_samples, dtype, spec.tolerance)
        out, pairs = transplant_qdq(q32, source)
        report["qdq_pairs"] = pairs
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_model(out, dst)
    report["onnx"] = dst.name
    return report


def _calibration_samples(twin, spec: Fp8Spec, calibration, shape_ranges) -> list[dict[str, Any]]:
    """fp32 numpy samples: the given iterable, else spec.calib_data, else seeded dummy inputs; at most spec.calib."""
    if calibration is None:
        calibration = (load_calibration_set(spec.calib_data, spec.calib) if spec.calib_data else
                       random_calibration(twin, spec.calib, spec.seed, spec.calib_shape, shape_ranges))
    samples = [{k: to_numpy(v) for k, v in s.items()} for s, _ in zip(calibration, range(max(spec.calib, 1)))]
    if not samples:
        raise BadInputError("FP8 calibration got no samples (--calib N with N >= 1)")
    check_inputs(samples, twin)
    return samples


def _insert_qdq(backend: str, spec: Fp8Spec, twin, twin_path: Path, q32_path: Path, chosen, samples,
                calibration_eps) -> tuple[Any, dict[str, Any]]:
    """The float32 Q/DQ graph by ModelOpt or by wanrt's pass, and what the report says about its weight scales."""
    if backend == "modelopt":
        modelopt_quantize(twin_path, q32_path, chosen, samples, calibration_eps or ["cpu"])
        return load_model(q32_path), {"weight_scales": "per-tensor"}
    acts = sorted({c["activation"] for c in chosen.values()})
    amax = calibrate_amax(twin, acts, samples)
    q32 = insert_qdq(load_model(twin_path), chosen, amax, per_channel=spec.per_channel)
    return q32, {"weight_scales": "per-channel" if spec.per_channel else "per-tensor"}


def _check_numerics(q32, twin_path: Path, samples, dtype: str, tolerance: float) -> dict[str, Any]:
    """fp32 Q/DQ graph against the fp32 twin in ONNX Runtime; ValuesMismatch over the tolerance."""
    sim_model, rewrites = make_simulatable(copy_model(q32))
    errors = relative_errors(calibration_session(twin_path), calibration_session(sim_model), samples)
    check = {"runtime": "onnxruntime CPU", "reference": f"{dtype} graph widened to fp32",
             "relative_error": errors, "simulation_rewrites": rewrites,
             "passed": all(e <= tolerance for e in errors.values())}
    if not check["passed"]:
        worst = max(errors, key=errors.get)
        raise ValuesMismatch(f"FP8 check failed: relative error {errors[worst]:.3g} on '{worst}' exceeds "
                             f"--fp8-tolerance {tolerance} (keep more blocks with --keep-blocks, "
                             f"calibrate on more or real inputs with --calib/--calib-data)")
    return check
