"""Where a bench keeps its ONNX exports and engines: the cache root, one entry per spec hash."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from wanrt.artifacts import spec_hash
from wanrt.engines import registry
from wanrt.runtime.backends import export_artifact
from wanrt.runtime.bench.spec import BenchSpec


class BenchArtifacts:
    """ONNX exports (and engines) per sweep point, cached by spec hash; removed after use unless kept
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

    def engine(self, onnx_dir: Path, spec: BenchSpec, backend: str) -> tuple[Path, float | None]:
        """An engine of `backend`'s flavour for one ONNX artifact, built on this run's machine."""
        flavour, precision = registry.for_backend(backend), spec.precision_of(backend)
        path = self.root / "engines" / f"{onnx_dir.name}-{flavour.name}-{precision}"
        if (path / "manifest.json").is_file():
            return path, None
        t0 = time.perf_counter()
        flavour.build(onnx_dir, flavour.spec_for(precision), path, force=True)
        self.made.append(path)
        return path, time.perf_counter() - t0

    def release(self, path: Path | None) -> None:
        if path is not None and not self.keep and path in self.made:
            shutil.rmtree(path, ignore_errors=True)
            self.made.remove(path)
