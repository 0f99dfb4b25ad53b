"""FP8 (E4M3) post-training quantization of an exported Wan ONNX into a Q/DQ graph TensorRT builds strongly typed.

Steps (`quantize_fp8`):
1. A float32 twin of the graph (bf16/fp16 tensors, Casts and constants widened; same node and tensor names), since
   ONNX Runtime on CPU has no bf16 kernels and calibration runs there.
2. Which MatMuls get FP8: those whose weight is `blocks.N.<module>.weight` for a block not in --keep-blocks. Kept in
   the export's precision: embedders (patch/time/text/image), `proj_out`, norms and modulation (not MatMuls),
   attention's activation x activation products (MHA), the LoRA branch (`lora.*`, so separate-mode refit still
   works) and the first/last blocks.
3. Calibration on any iterable of input dicts (seeded random inputs by default, a user .npz set, or inputs captured
   from real denoising steps), then Q/DQ insertion by NVIDIA ModelOpt (`modelopt.onnx.quantization`, max
   calibration, MHA Q/DQ off, only the chosen nodes) or, without ModelOpt, by wanrt's own pass (per-tensor
   activation amax, per-output-channel weight amax, scale = amax / 448).
4. Numerics check before any build: the fp32 Q/DQ graph against the fp32 twin in ONNX Runtime (CPU), relative error
   ||y_fp8 - y_ref|| / ||y_ref|| per output on held-out inputs; over the tolerance -> ValidationError.
5. The Q/DQ graph in the export's own precision: every tensor, Cast and constant gets its original dtype back, and
   each Q/DQ scale the dtype of the tensor it quantizes, so bf16 stays bf16 and the keep-in-fp32 parts stay fp32.

Modules: graph (ONNX plumbing, the float32 twin), selection (which MatMuls), calibration (inputs, ORT sessions,
ranges, error check), qdq (wanrt's Q/DQ pass, simulation, transplant), modelopt (ModelOpt as the inserter),
quantize (`quantize_fp8`, `Fp8Spec`).
"""

from wanrt.engines.trt.fp8.calibration import (calibrate_amax, calibration_session, load_calibration_set,
                                           random_calibration, relative_errors)
from wanrt.engines.trt.fp8.graph import graph_dtype, load_model, save_model, widen_model_to_fp32
from wanrt.engines.trt.fp8.modelopt import modelopt_available
from wanrt.engines.trt.fp8.qdq import FP8_MAX, insert_qdq, make_simulatable, transplant_qdq
from wanrt.engines.trt.fp8.quantize import DEFAULT_TOLERANCE, FP8_BACKENDS, Fp8Spec, quantize_fp8, resolve_backend
from wanrt.engines.trt.fp8.selection import block_count, parse_keep_blocks, select_matmuls, weight_source

__all__ = [
    "DEFAULT_TOLERANCE", "FP8_BACKENDS", "FP8_MAX", "Fp8Spec", "block_count", "calibrate_amax", "calibration_session",
    "graph_dtype", "insert_qdq", "load_calibration_set", "load_model", "make_simulatable", "modelopt_available",
    "parse_keep_blocks", "quantize_fp8", "random_calibration", "relative_errors", "resolve_backend", "save_model",
    "select_matmuls", "transplant_qdq", "weight_source", "widen_model_to_fp32",
]
