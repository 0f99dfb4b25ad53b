"""TensorRT engines for exported Wan ONNX graphs: flavour shim (tensorrt / tensorrt_rtx), optimization profiles,
FP8 quantization, build with a content-addressed cache, LoRA refit, and a torch runtime (TRTEngine).

Nothing here imports TensorRT at package import; `wanrt.engines.flavour.load_flavour` does, on first use.
"""
