"""Sessions that run one exported stage graph (the VAE's chunk graphs, the text and image encoders) on the CPU:
ONNX Runtime or OpenVINO, fp32. The one seam for stage graphs: a stage asks `session(backend, path, threads)`,
never names a runtime. (The DiT's engines go through engines/registry.py: they build, refit and swap LoRAs; a
stage graph only loads and runs.)

OpenVINO's CPU plugin is pinned to f32 by default: on bf16-capable CPUs its own default inference precision is bf16,
and these graphs are held to fp32 parity with diffusers/transformers. `precision="bf16"` asks for bf16 where the CPU
runs it natively (the same check as the DiT's OpenVINO engines); ORT runs fp32 only.
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
    PRECISIONS = ("fp32",)  # ORT's CPU provider runs the fp32 graph as it is

    def __init__(self, path: Path, threads: int | None, precision: str = "fp32"):  # noqa: ARG002 - checked by session()
        import onnxruntime as ort  # lazy: optional backend
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(self.outputs, feeds)


class _OvSession:
    PRECISIONS = ("fp32", "bf16")  # the inference precision hint; weights stay as exported (fp32)

    def __init__(self, path: Path, threads: int | None, precision: str = "fp32"):
        try:
            import openvino as ov  # lazy: optional backend
        except ImportError as e:
            raise MissingDependencyError(f"the openvino stage backend needs OpenVINO ({e})") from None
        from wanrt.engines.openvino.engine import precision_refusal  # lazy: imports onnx, with OpenVINO

        core = ov.Core()
        why = precision_refusal(core, "CPU", precision)  # a CPU without avx512_bf16/AMX: refused, never emulated
        if why is not None:
            raise BadInputError(why, param="precision")
        props = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16"}
        if threads:
            props["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(path), "CPU", props)
        self.request = self.compiled.create_infer_request()
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer(feeds)
        # copies: the request reuses its output buffers on the next call, and the caches are fed back into it
        return [np.array(res[self.compiled.output(n)]) for n in self.outputs]


SESSIONS = {"ort": _OrtSession, "openvino": _OvSession}


def session(backend: str, path: Path, threads: int | None = None, precision: str = "fp32"):
    """A callable {input name: array} -> [outputs] on `backend` (a stage name or a runtime backend's name), at
    `precision` where that backend runs it (else refused in one line)."""
    name = RUNTIME_BACKENDS.get(backend, backend)
    if name not in SESSIONS:
        raise BadInputError(f"stage backend {backend!r}: choose one of {', '.join(STAGE_BACKENDS)}",
                            param="backend")
    if precision not in SESSIONS[name].PRECISIONS:
        offered = ", ".join(SESSIONS[name].PRECISIONS)
        raise BadInputError(f"--precision {precision}: {backend} stage graphs run {offered}", param="precision")
    return SESSIONS[name](Path(path), threads, precision)
