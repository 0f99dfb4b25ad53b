"""Wan2.2's two experts at run time: a pair of backends (high, low) and the boundary where diffusers switches.

`expert_pair` makes one from an experts artifact (`wanrt export` of a two-expert model: exports for ort/ov; `wanrt
build` of it: engines for their flavour's backend) or from specs (eager/compile build each expert's transformer with
its own LoRA stack; ort/ov export each expert once into the cache), each expert through `backend_from_specs` as a
one-transformer model's backend is made. The pipeline drop-in (runtime/pipeline.py) installs `high` as
`pipe.transformer`, `low` as `pipe.transformer_2` and sets `boundary_ratio`, so WanImageToVideoPipeline runs the high
expert for timesteps >= boundary_ratio x 1000 and the low one after, as it does with its own transformers.

Both experts stay loaded: two 14B engines in bf16 are 2 x 26.6 GiB of weights (docs/results/experts-cpu.md has the
per-engine memory, what fits one GPU, and what loading one expert at a time would cost).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from wanrt.artifacts import artifact_kind
from wanrt.errors import BadInputError
from wanrt.export.model import model_experts
from wanrt.manifests import ExpertsManifest
from wanrt.runtime.backends import BackendBase, backend_from_specs

# what the two experts must share for one pipeline to run them (the rest of the config may differ)
_SHARED_CONFIG = ("patch_size", "in_channels", "out_channels", "text_dim", "image_dim")


@dataclass
class ExpertPair:
    """The high- and low-noise experts' backends and the boundary; looks like one backend where the pipeline and
    generate ask one (config, dtype, device, shape range, describe, close)."""

    high: BackendBase
    low: BackendBase
    boundary_ratio: float

    def __post_init__(self):
        differ = [k for k in _SHARED_CONFIG if self.high.config.get(k) != self.low.config.get(k)]
        if differ or self.high.dtype != self.low.dtype:
            raise BadInputError(f"the two experts differ in {', '.join(differ) or 'dtype'}: not one Wan2.2 model")

    @property
    def name(self) -> str:
        return self.high.name

    @property
    def config(self) -> dict[str, Any]:
        return self.high.config

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    @property
    def device(self) -> torch.device:
        return self.high.device

    @property
    def shape_ranges(self) -> dict[str, Any] | None:
        """The high expert's exported range (both are exported together, over one range)."""
        return self.high.shape_ranges

    def experts(self) -> dict[str, BackendBase]:
        return {"high": self.high, "low": self.low}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "boundary_ratio": self.boundary_ratio,
                "experts": {name: b.describe() for name, b in self.experts().items()}}

    def close(self) -> None:
        for backend in self.experts().values():
            backend.close()


def is_experts_artifact(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_dir() and artifact_kind(path) == ExpertsManifest.KIND


def expert_pair(name: str, model_spec=None, lora_specs: dict[str, Any] | None = None,
                artifact: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                cache_dir: Path | None = None, threads: int | None = None, cuda_graph: bool = False,
                progress: Callable[[str], None] | None = None) -> ExpertPair:
    """Both experts' backends: from `artifact` (an experts export or engines; the specs are not used) or from
    `model_spec` (a two-expert model) with `lora_specs` ({expert: LoraSpec}, an expert left out: no LoRA)."""
    options = {"device": device, "cache_dir": cache_dir, "threads": threads, "cuda_graph": cuda_graph,
               "progress": progress}
    if artifact is not None:
        manifest = ExpertsManifest.read(artifact, check_files=True)
        names, ratio = tuple(manifest.experts), manifest.boundary_ratio
        make = {e: {"engine": manifest.member_dir(artifact, e)} for e in names}
    else:
        experts = model_experts(model_spec)
        if not experts.names:
            raise BadInputError(f"--model {model_spec.source} has one transformer, not Wan2.2's two experts")
        names, ratio = experts.names, experts.boundary_ratio
        make = {e: {"model_spec": replace(model_spec, expert=e), "lora_spec": (lora_specs or {}).get(e)}
                for e in names}
    backends: dict[str, BackendBase] = {}
    try:
        for e in names:
            backends[e] = backend_from_specs(name, **make[e], **options)
        return ExpertPair(backends["high"], backends["low"], ratio)
    except BaseException:  # the first expert's sessions or engines are not left open when the second fails
        for b in backends.values():
            b.close()
        raise
