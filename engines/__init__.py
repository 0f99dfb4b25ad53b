"""Engines for exported Wan ONNX graphs, one flavour per folder behind one registry (`registry.py`): TensorRT and
TensorRT-RTX (`trt/`: flavour shim, profiles, FP8, build, runtime, refit), OpenVINO (`openvino/`); shared by all:
the content-addressed engine cache, reading an export directory, and LoRA swap as data.

Nothing here imports TensorRT or OpenVINO at package import; a flavour does, on first use.
"""
