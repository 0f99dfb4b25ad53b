"""What a server can run, read from a bundle manifest (or an eager preset) without loading anything heavy.

The ingress validates requests against it (shape ranges per engine, LoRA names) and the replicas route with it:
a merged engine serves exactly its own LoRA, a separate-mode engine serves any LoRA of the library by swapping its
branch weights (`backend.set_lora`), and `lora: null` goes to an engine without a LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanrt.engines import registry
from wanrt.export.presets import PRESETS
from wanrt.io_contract import AXES, pixel_range
from wanrt.manifests import EngineManifest, ExportManifest
from wanrt.runtime.serving.limits import ApiError

# The shape a request gets when it names none: the preset's own default, else Wan's 480p/81 frames clipped to the
# engine's range.
WAN_DEFAULT = (81, 480, 832)


@dataclass(frozen=True)
class EngineInfo:
    """One engine of a bundle as the router sees it."""

    name: str
    path: str | None  # absolute directory; None for an eager preset
    backend: str  # ort | ov | trt | eager
    lora: str | None  # the LoRA a merged engine serves (its name); None: base or separate
    lora_mode: str | None  # merged | separate | full | None (no LoRA)
    rank: int | None
    lora_scale: float
    latent: dict[str, tuple[int, int]] | None  # the exported/profiled range; None: server caps only (eager)
    geometry: dict[str, Any] = field(default_factory=dict)
    default_shape: tuple[int, int, int] = (5, 32, 32)
    model_source: str | None = None

    @property
    def swappable(self) -> bool:
        return self.lora_mode == "separate"


@dataclass
class Catalog:
    model: str  # the name clients pass as `model` (the bundle's name)
    engines: list[EngineInfo]
    loras: dict[str, dict[str, Any]]  # library: name -> {path, sha256, rank, ...}
    pipeline: str | None = None  # diffusers pipeline for VAE/encoders; None: the tiny built-in one
    bundle: str | None = None  # the bundle directory

    def lora_names(self) -> list[str]:
        merged = [e.lora for e in self.engines if e.lora]
        own = [e.name for e in self.engines if e.swappable]
        return sorted(set(self.loras) | set(merged) | set(own))

    def route(self, lora: str | None) -> EngineInfo:
        """The engine that serves `lora` (merged engines first: no swap), ApiError 404 for an unknown name."""
        if lora is None:
            for e in self.engines:
                if e.lora_mode is None:
                    return e
            for e in self.engines:  # a separate-mode engine runs the base model with its branch zeroed
                if e.swappable:
                    return e
            raise ApiError(400, "this bundle has no engine without a LoRA; name one in `lora` (GET /v1/loras)",
                           param="lora", code="lora_required")
        for e in self.engines:
            if e.lora == lora or (e.swappable and e.name == lora):
                return e
        if lora in self.loras:
            for e in self.engines:
                if e.swappable:
                    return e
        raise ApiError(404, f"LoRA {lora!r} is not in this server's library (GET /v1/loras lists "
                            f"{', '.join(self.lora_names()) or 'none'})", param="lora", code="lora_not_found")

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "bundle": self.bundle, "pipeline": self.pipeline,
                "engines": [{"name": e.name, "backend": e.backend, "lora": e.lora, "lora_mode": e.lora_mode,
                             "rank": e.rank, "latent_range": e.latent} for e in self.engines]}

    def lora_objects(self) -> list[dict[str, Any]]:
        """GET /v1/loras: what each name is and which engine serves it."""
        out = []
        for name in self.lora_names():
            engine = self.route(name)
            info = self.loras.get(name, {})
            out.append({"id": name, "object": "lora", "engine": engine.name,
                        "served_as": "merged" if engine.lora == name else "swap",
                        "rank": info.get("rank", engine.rank), "sha256": info.get("sha256")})
        return out


def _default_shape(source: str | None, latent: dict[str, Any] | None) -> tuple[int, int, int]:
    if source in PRESETS:
        s = PRESETS[source].default_shape
        shape = (s.frames, s.height, s.width)
    else:
        shape = WAN_DEFAULT
    if latent:  # clip into the range, in pixel units
        bounds = pixel_range(latent)
        shape = tuple(min(max(v, bounds[axis][0]), bounds[axis][1]) for v, axis in zip(shape, AXES))
    return shape


def engine_info(name: str, directory: Path, manifest: ExportManifest | EngineManifest,
                lora: str | None = None) -> EngineInfo:
    """EngineInfo from an export or engine manifest (an engine's export record sits in its `onnx` section)."""
    if isinstance(manifest, EngineManifest):
        backend = registry.get(manifest.flavour).backend
        export_lora = manifest.onnx.get("lora") or {}
    else:
        backend, export_lora = "ort", manifest.lora
    mode = export_lora.get("mode") if export_lora.get("enabled") else None
    latent = {k: (int(v[0]), int(v[1])) for k, v in (manifest.shape_ranges.get("latent") or {}).items()} or None
    source = (manifest.export_specs.get("model") or {}).get("source")
    return EngineInfo(name=name, path=str(directory), backend=backend, lora=(lora or name) if mode in ("merged", "full")
                      else None, lora_mode=mode, rank=export_lora.get("rank") if mode else None,
                      lora_scale=float(export_lora.get("lora_scale", 1.0)), latent=latent,
                      geometry=manifest.geometry or {}, default_shape=_default_shape(source, latent),
                      model_source=source)


def eager_catalog(model_source: str, geometry: dict[str, Any]) -> Catalog:
    """An eager preset: no engine range, so only the server's caps bound a request."""
    info = EngineInfo(name="eager", path=None, backend="eager", lora=None, lora_mode=None, rank=None,
                      lora_scale=1.0, latent=None, geometry=geometry,
                      default_shape=_default_shape(model_source, None), model_source=model_source)
    return Catalog(model=model_source, engines=[info], loras={})
