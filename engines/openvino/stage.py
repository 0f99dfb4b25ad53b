"""OpenVINO's stage session: one exported stage graph (the VAE's chunk graphs, the text and image encoders) compiled
for the CPU plugin, as engines/sessions.py asks the flavour registry for it.

Pinned to f32 by default: on bf16-capable CPUs the plugin's own default inference precision is bf16, and these graphs
are held to fp32 parity with diffusers/transformers. bf16 only where the CPU runs it natively (the DiT engines' check).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wanrt.errors import BadInputError, MissingDependencyError

class OvStageSession:
    """One stage graph compiled for OpenVINO's CPU plugin: {input name: array} -> [outputs] (copies)."""

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
