"""An OpenVINO engine for the runtime (runtime/backends.EngineBackend): an engine directory from `wanrt build
--flavour openvino`, or an export directory compiled once into the shared engine cache (engines/cache.py) at
`precision` (fp32, bf16, int8). Host torch tensors in and out; OpenVINO owns its device (`ov_device`: CPU, GPU,
GPU.1; no other code per device); `threads` is OpenVINO's inference thread count. `set_lora` swaps a separate-mode
LoRA without recompiling."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import artifact_kind
from wanrt.engines.cache import engine_in_cache
from wanrt.engines.openvino import BACKEND
from wanrt.engines.openvino.engine import OvEngine, OvEngineSpec, build_openvino_engine, cache_key, require_openvino
from wanrt.errors import BadInputError
from wanrt.manifests import EngineManifest


def check_runtime(device: str | torch.device = "cpu") -> None:
    require_openvino()  # MissingDependencyError naming the [openvino] extra
    if torch.device(device).type != "cpu":
        raise BadInputError(f"backend '{BACKEND}' takes host tensors (device cpu); its OpenVINO device is "
                            f"ov_device (CPU, GPU), not --device")


class OvRunner:
    def __init__(self, artifact: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
                 precision: str | None = None, ov_device: str | None = None, verify: bool = False):
        check_runtime(device)
        t0 = time.perf_counter()
        artifact, self.setup = Path(artifact), {}
        engine_dir = artifact
        if artifact_kind(artifact) == "onnx":  # compile the export once into the engine cache, load it from there
            spec = OvEngineSpec(precision=precision or "fp32", device=ov_device or "CPU")
            engine_dir = engine_in_cache(spec.cache_dir, cache_key(artifact, spec),
                                         lambda out: build_openvino_engine(artifact, spec, out, force=True,
                                                                           threads=threads))
            self.setup["build_s"] = time.perf_counter() - t0
        self.engine = OvEngine(engine_dir, device=ov_device, threads=threads, verify_hash=verify)
        self.manifest: EngineManifest = self.engine.manifest
        built = self.manifest.precision
        if precision is not None and built != precision:
            raise BadInputError(f"{artifact}: an OpenVINO {built} engine, asked for {precision}")
        self.dtype, self.device, self.dir, self.threads = torch.float32, torch.device("cpu"), engine_dir, threads

    def run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(self.engine.infer({k: v.numpy() for k, v in feed.items()}))

    def set_lora(self, lora, source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Swap a separate-mode LoRA (same contract as OrtBackend.set_lora); the compiled model is kept."""
        return self.engine.set_lora(lora, source)

    def describe(self) -> dict[str, Any]:
        return {"ov_device": self.engine.device, "threads": self.threads, "openvino": self.manifest.runtime["version"],
                "keep_fp32": (self.manifest.section("precision_report") or {}).get("keep_fp32")}

    def close(self) -> None:
        pass
