"""A TensorRT engine for the runtime (runtime/backends.EngineBackend): torch CUDA tensors in and out, input shapes
set per call within the engine's profiles, and (cuda_graph=True) one CUDA graph captured per input shape, replayed
with the inputs copied into its static buffers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wanrt.engines.trt.engine import TRTEngine
from wanrt.engines.trt.flavour import BACKEND
from wanrt.errors import BadInputError, EngineError, MissingDependencyError, WanrtError
from wanrt.manifests import EngineManifest


def check_runtime(_device: str | torch.device = "cuda") -> None:
    if not torch.cuda.is_available():
        raise MissingDependencyError(f"backend '{BACKEND}' needs an NVIDIA GPU with CUDA and a CUDA build of torch "
                                     "(this machine has none)")


class TrtRunner:
    def __init__(self, artifact: str | Path, device: torch.device | str = "cuda", cuda_graph: bool = False,
                 verify: bool = False):
        check_runtime(device)
        device = torch.device(device)
        if device.type != "cuda":
            raise BadInputError(f"backend '{BACKEND}' runs on CUDA only; pass --device cuda")
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            self.engine = TRTEngine(artifact, device=index, verify_hash=verify)
        except WanrtError:
            raise
        except Exception as e:  # noqa: BLE001 - TensorRT raises plain RuntimeErrors
            raise EngineError(f"{artifact}: cannot load the engine ({str(e).splitlines()[0]})") from None
        self.manifest: EngineManifest = self.engine.manifest
        self.dtype, self.device = self.engine.dtypes["latents"], torch.device("cuda", index)
        self.dir, self.cuda_graph, self.setup = Path(artifact), cuda_graph, {}
        self._graphs: dict[tuple, tuple[Any, dict[str, torch.Tensor], torch.Tensor] | None] = {}
        self.graph_failures: list[str] = []

    def run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.cuda_graph:
            return self.engine.infer(feed)["prediction"]
        key = tuple((k, tuple(v.shape)) for k, v in feed.items())
        graph = self._graphs.get(key) or self._capture(key, feed)
        if graph is None:  # this shape could not be captured: run it eagerly
            return self.engine.infer(feed)["prediction"]
        g, static, out = graph
        for name, t in feed.items():
            static[name].copy_(t)
        g.replay()
        return out.clone()

    def _capture(self, key, feed):
        """Capture one engine execution for this shape (TensorRT needs one plain run after a shape change)."""
        static = {k: v.clone() for k, v in feed.items()}
        out = self.engine.infer(static)["prediction"]  # shape setup + output shape
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                self.engine.infer(static, out=out)
            torch.cuda.current_stream(self.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.engine.infer(static, out=out)
        except RuntimeError as e:
            self.graph_failures.append(f"{key}: {str(e).splitlines()[0]}")
            self._graphs[key] = None
            return None
        self._graphs[key] = (g, static, out)
        return self._graphs[key]

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"cuda_graph": self.cuda_graph,
                                "graphs": sum(1 for v in self._graphs.values() if v is not None)}
        if self.graph_failures:
            info["graph_failures"] = self.graph_failures
        try:
            info["engine_device_memory_mb"] = self.engine.device_memory_bytes / 2**20
        except Exception:  # noqa: BLE001 - informative only
            pass
        return info

    def close(self) -> None:
        self._graphs.clear()
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
