"""Where a bench keeps its ONNX exports and TensorRT engines: the cache root, one entry per spec hash."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from wanrt.artifacts import spec_hash
from wanrt.engines.build import EngineSpec, build_engine_from_onnx_dir
from wanrt.runtime.backends import export_artifact
from wanrt.runtime.bench.spec import BenchSpec


class BenchArtifacts:
    """ONNX exports (and TensorRT engines) per sweep point, cached by spec hash; removed after use unless kept
    or already present before this run."""

    def __init__(self, root: Path, keep: bool):
        self.root, self.keep = root, keep
        self.made: list[Path] = []

    def onnx(self, model_spec, lora_spec, shape_lo, shape_hi) -> tuple[Path, float | None]:
        # same key as backend_from_specs for the preset's own range, so exports are shared with generate/serve
        key = spec_hash(model_spec, lora_spec) if shape_lo is None and shape_hi is None else \
            spec_hash(model_spec, lora_spec, shape_lo, shape_hi)
        path = self.root / "exports" / key
        if (path / "manifest.json").is_file():
            return path, None
        _, seconds = export_artifact(model_spec, lora_spec, path, min_shape=shape_lo, max_shape=shape_hi,
                                     force=True)
        self.made.append(path)
        return path, seconds

    def engine(self, onnx_dir: Path, spec: BenchSpec) -> tuple[Path, float | None]:
        """A TensorRT engine for one ONNX artifact (wanrt.engines.build), built on this run's GPU."""
        precision = spec.precision_of("trt")
        path = self.root / "engines" / f"{onnx_dir.name}-{precision}"
        if (path / "manifest.json").is_file():
            return path, None
        t0 = time.perf_counter()
        build_engine_from_onnx_dir(onnx_dir, EngineSpec(precision=precision, progress=False), path, force=True)
        self.made.append(path)
        return path, time.perf_counter() - t0

    def release(self, path: Path | None) -> None:
        if path is not None and not self.keep and path in self.made:
            shutil.rmtree(path, ignore_errors=True)
            self.made.remove(path)
