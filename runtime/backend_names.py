"""The runtime backends by name, torch-free: the CLI offers them in --help without loading torch, and
runtime/backends.py's REGISTRY has exactly these keys (tests/test_layers.py checks it)."""

from __future__ import annotations

from wanrt.choices import choice
from wanrt.engines import registry, sessions

# backends that run a PyTorch model or the exported ONNX itself; the engine flavours bring the rest
MODEL_BACKENDS = ("eager", "compile", "ort")
Backend = choice("Backend", "The runtime backends.", *MODEL_BACKENDS, *registry.backends(), module=__name__)
# the pipeline's other stages (VAE, text and image encoders): diffusers' own (eager), or their exported graphs on a
# stage session (engines/sessions.py)
StageBackend = choice("StageBackend", "Where a pipeline stage other than the DiT runs.", "eager",
                      *sessions.stage_backends(), module=__name__)
