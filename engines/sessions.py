"""Sessions that run one exported stage graph (the VAE's chunk graphs, the text and image encoders) on the CPU:
ONNX Runtime or OpenVINO, fp32. The one seam for stage graphs: a stage asks `session(backend, path, threads)`,
never names a runtime. (The DiT's engines go through engines/registry.py: they build, refit and swap LoRAs; a
stage graph only loads and runs.)

OpenVINO's CPU plugin is pinned to f32: on bf16-capable CPUs its default inference precision is bf16, and these
graphs are held to fp32 parity with diffusers/transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wanrt.engines.openvino import BACKEND as OV_BACKEND
from wanrt.errors import BadInputError, MissingDependencyError

STAGE_BACKENDS = ("ort", "openvino")
# the same sessions under the runtime backends' names (`wanrt generate --vae-backend`): ort, and OpenVINO's "ov"
RUNTIME_BACKENDS = {"ort": "ort", OV_BACKEND: "openvino"}


class _OrtSession:
    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort  # lazy: optional backend
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(self.outputs, feeds)


class _OvSession:
    def __init__(self, path: Path, threads: int | None):
        try:
            import openvino as ov  # lazy: optional backend
        except ImportError as e:
            raise MissingDependencyError(f"the openvino stage backend needs OpenVINO ({e})") from None
        props = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(path), "CPU", props)
        self.request = self.compiled.create_infer_request()
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer(feeds)
        # copies: the request reuses its output buffers on the next call, and the caches are fed back into it
        return [np.array(res[self.compiled.output(n)]) for n in self.outputs]


SESSIONS = {"ort": _OrtSession, "openvino": _OvSession}


def session(backend: str, path: Path, threads: int | None = None):
    """A callable {input name: array} -> [outputs] on `backend` (a stage name or a runtime backend's name)."""
    name = RUNTIME_BACKENDS.get(backend, backend)
    if name not in SESSIONS:
        raise BadInputError(f"stage backend {backend!r}: choose one of {', '.join(STAGE_BACKENDS)}",
                            param="backend")
    return SESSIONS[name](Path(path), threads)
