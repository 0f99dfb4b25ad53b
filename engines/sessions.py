"""Sessions that run one exported stage graph (the VAE's chunk graphs, the text and image encoders). The one seam for
stage graphs: a stage asks `session(backend, path, threads, precision)`, never names a runtime. ONNX Runtime (fp32,
the export as it is) is here; an engine flavour runs stage graphs when its registry entry offers `stage_precisions`
and names a `stage_session` (OpenVINO: engines/openvino/stage.py; the TensorRT flavours offer none yet, so the
VAE and encoders are refused on `trt` in one line, never run elsewhere in its place).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wanrt.engines import registry
from wanrt.errors import BadInputError


class _OrtSession:
    PRECISIONS = ("fp32",)  # ORT's CPU provider runs the fp32 graph as it is

    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort  # lazy: optional backend
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(self.outputs, feeds)


def stage_backends() -> tuple[str, ...]:
    """The runtime backends that run stage graphs: ORT and every flavour backend offering stage sessions."""
    return ("ort", *dict.fromkeys(f.backend for f in registry.flavours() if f.stage_precisions))


def session(backend: str, path: Path, threads: int | None = None, precision: str = "fp32"):
    """A callable {input name: array} -> [outputs] on `backend` (a runtime backend's name, or a flavour's:
    "openvino" is "ov"), at `precision` where that backend runs it (else refused in one line)."""
    flavour = None if backend == "ort" else registry.for_backend(backend) or _flavour_named(backend)
    offered = _OrtSession.PRECISIONS if backend == "ort" else flavour.stage_precisions if flavour else ()
    if not offered:
        raise BadInputError(f"stage backend {backend!r}: choose one of {', '.join(stage_backends())}",
                            param="backend")
    if precision not in offered:
        raise BadInputError(f"--precision {precision}: {backend} stage graphs run {', '.join(offered)}",
                            param="precision")
    if flavour is None:
        return _OrtSession(Path(path), threads)
    return flavour.stage_session(Path(path), threads, precision)


def _flavour_named(name: str):
    return next((f for f in registry.flavours() if f.name == name), None)
