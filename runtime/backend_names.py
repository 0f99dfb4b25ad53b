"""The runtime backends by name, torch-free: the CLI offers them in --help without loading torch, and
runtime/backends.py's REGISTRY has exactly these keys (tests/test_layers.py checks it)."""

from __future__ import annotations

from wanrt.choices import Choice
from wanrt.engines import registry

# backends that run a PyTorch model or the exported ONNX itself; the engine flavours bring the rest
MODEL_BACKENDS = ("eager", "compile", "ort")
Backend = Choice("Backend", [(n.upper(), n) for n in (*MODEL_BACKENDS, *registry.backends())])
