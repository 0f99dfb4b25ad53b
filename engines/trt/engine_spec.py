"""What an engine build is asked for: `EngineSpec` (written into every engine manifest), the engine directory's
names and the precisions a TensorRT engine takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wanrt.engines.trt.fp8.quantize import Fp8Spec

PLAN_NAME = "engine.plan"  # the serialized TensorRT engine ("plan" in TensorRT's own words), and only that
ENGINE_KIND = "engine"


@dataclass(frozen=True)
class EngineSpec:
    """How an engine is built. Written into every engine manifest; its hash is part of the cache key."""

    flavour: str = "auto"  # auto | tensorrt | rtx
    precision: str | None = None  # fp16 | bf16 | fp8 | fp32; None: the ONNX's dtype (bf16 for Wan exports)
    profiles: tuple[str, ...] = ()  # presets (480p, 720p, export) or MIN:OPT:MAX; () -> the export's range
    frames: str | None = None  # pixel frames for presets: "17..81", "17..49..81", "81"
    batch: str | None = None  # "1..2" (CFG)
    opt_level: int | None = None  # builder optimization level 0-5 (TensorRT default 3)
    workspace_gib: float | None = None  # workspace memory pool limit
    timing_cache: str | None = None  # tactic timing cache file, read and updated (datacenter TensorRT)
    weight_streaming: bool = False
    refit: str = "auto"  # auto (refittable when the ONNX has a LoRA) | yes | no
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX AOT targets ("8.9", "12.0"); () -> this GPU/default
    fp8: Fp8Spec = field(default_factory=Fp8Spec)
    cache: bool = True  # reuse an engine with the same cache key from the cache directory
    cache_dir: str | None = None  # default: wanrt.artifacts.cache_root("engines")
    progress: bool | None = None  # progress bar (None: when stderr is a terminal)

    def key_fields(self) -> dict[str, Any]:
        """The fields that change the built engine (not cache or progress settings, not the timing cache path)."""
        d = {k: getattr(self, k) for k in ("precision", "opt_level", "workspace_gib", "weight_streaming", "refit")}
        if self.precision == "fp8":
            d["fp8"] = {k: getattr(self.fp8, k) for k in ("calib", "keep_blocks", "backend", "seed", "calib_data",
                                                          "calib_shape", "per_channel")}
        return d
