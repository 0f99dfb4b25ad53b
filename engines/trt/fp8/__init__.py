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
