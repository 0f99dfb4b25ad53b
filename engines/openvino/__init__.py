"""OpenVINO engines for CPUs and Intel GPUs (registered in engines/openvino/plugin.py). Nothing here imports
OpenVINO at package import; these names are what the light plugin and the engine module share."""

FLAVOUR = "openvino"  # --flavour and the engine manifest's payload.flavour
BACKEND = "ov"  # the runtime backend that runs its engines (engines/openvino/runner.py)
# what it builds, each with the OpenVINO capability it needs (Core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
PRECISIONS = ("fp32", "bf16", "int8", "w8a8")  # int8: weights only; w8a8: weights and activations (calibrated)
CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8", "w8a8": "INT8"}
INSTALL_HINT = "pip install 'wanrt[openvino]' (openvino + nncf from PyPI)"
