"""wanrt: compiled inference for the Wan2.1 I2V DiT with LoRA adapters.

Data path (see README, "Design"): ModelSpec -> transformer; LoraSpec -> LoraWeights -> apply(mode);
ExportSpec -> ONNX artifact -> validation; EngineSpec -> engine; Backend.forward; BenchSpec -> results.
"""

__version__ = "0.1.0"
