"""TensorRT and TensorRT-RTX engines: the flavour shim, build, runtime, refit and FP8 (registered in
engines/trt/plugin.py). Nothing here imports TensorRT at package import."""
