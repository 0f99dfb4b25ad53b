"""The runtime backends by name, torch-free: the CLI offers them in --help without loading torch, and
runtime/backends.py's REGISTRY has exactly these keys (tests/test_layers.py checks it)."""

from __future__ import annotations

from wanrt.choices import choice
from wanrt.engines import registry, vae

# backends that run a PyTorch model or the exported ONNX itself; the engine flavours bring the rest
MODEL_BACKENDS = ("eager", "compile", "ort")
Backend = choice("Backend", "The runtime backends.", *MODEL_BACKENDS, *registry.backends(), module=__name__)
# the VAE decoder's: diffusers' own (eager), or the exported chunk graphs on a session engines/vae.py runs
VaeBackend = choice("VaeBackend", "Where the pipeline's VAE decode runs.", "eager", *vae.RUNTIME_BACKENDS,
                    module=__name__)
