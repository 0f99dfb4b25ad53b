"""Wan2.2's two experts at run time: a pair of backends (high, low) and the boundary where diffusers switches.

`expert_pair` makes one from an experts artifact (`wanrt export` of a two-expert model: exports for ort/ov; `wanrt
build` of it: engines for their flavour's backend) or from specs (eager/compile build each expert's transformer with
its own LoRA stack; ort/ov export each expert once into the cache), each expert through `backend_from_specs` as a
one-transformer model's backend is made. The pipeline drop-in (runtime/pipeline.py) installs `high` as
`pipe.transformer`, `low` as `pipe.transformer_2` and sets `boundary_ratio`, so WanImageToVideoPipeline runs the high
expert for timesteps >= boundary_ratio x 1000 and the low one after, as it does with its own transformers.

Residency (`resident`): "both" (the default) loads both experts up front and keeps them; "one" keeps one expert's
backend alive at any moment, for a budget that does not hold two (two 14B engines in bf16 are 2 x 26.6 GiB of
weights; docs/results/experts-cpu.md). With "one" the pair loads high when it is made (its config stands for both),
and a forward of the other expert closes and frees the open backend, then loads its own. diffusers runs the high
expert's steps first and contiguously, so a video switches once: the first video costs one more load (low), every
later one two (high again, then low: low is what the previous video left open). No order saves a load within one
video; only running several videos expert-major would (not done). Every load is counted and timed (`ExpertLoader`).
"""

from __future__ import annotations

import gc
import os
import time
import weakref
from dataclasses import dataclass, replace
from functools import partial
from types import SimpleNamespace
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
RESIDENT = ("both", "one")  # experts kept loaded: both up front, or one at a time (module docstring)


def check_one_model(high, low) -> None:
    """The two experts are one Wan2.2 model: same shared geometry and dtype, or a one-line refusal."""
    differ = [k for k in _SHARED_CONFIG if high.config.get(k) != low.config.get(k)]
    if differ or high.dtype != low.dtype:
        raise BadInputError(f"the two experts differ in {', '.join(differ) or 'dtype'}: not one Wan2.2 model")


class ExpertLoader:
    """Makes an expert's backend on demand, timing each load; counts the expert backends alive by weak reference
    (a backend is alive until it is garbage, not merely closed), so `peak_alive` is what memory actually held."""

    def __init__(self, makers: dict[str, Callable[[], BackendBase]]):
        self.makers = makers
        self.loads: list[dict[str, Any]] = []  # {expert, seconds}, in order
        self.peak_alive = 0
        self._refs: list[weakref.ref] = []

    def alive(self) -> int:
        return sum(ref() is not None for ref in self._refs)

    def load(self, expert: str) -> BackendBase:
        t0 = time.perf_counter()
        backend = self.makers[expert]()
        # an ort backend made from specs exports once into the cache first: that is not a load
        seconds = time.perf_counter() - t0 - backend.setup.get("export_s", 0.0)
        self.loads.append({"expert": expert, "seconds": seconds})
        self._refs.append(weakref.ref(backend))
        self.peak_alive = max(self.peak_alive, self.alive())
        return backend

    def summary(self, since: int = 0) -> dict[str, Any]:
        """The loads from index `since` on: count, seconds in all, each load."""
        loads = self.loads[since:]
        return {"count": len(loads), "seconds": sum(x["seconds"] for x in loads), "loads": loads,
                "peak_alive": self.peak_alive}


class OneResident:
    """The one expert backend of a pair loaded one expert at a time: asking for the other expert closes and frees
    the open backend before loading it."""

    def __init__(self, loader: ExpertLoader):
        self.loader = loader
        self.expert: str | None = None
        self.backend: BackendBase | None = None
        self.first: SimpleNamespace | None = None  # what the first load looked like: every later one must match

    def get(self, expert: str) -> BackendBase:
        if expert != self.expert:
            self.release()
            backend = self.loader.load(expert)
            try:
                if self.first is not None:
                    check_one_model(self.first, backend)
            except BadInputError:
                backend.close()
                raise
            self.expert, self.backend = expert, backend
            if self.first is None:  # a copy of what the pipeline reads, never the backend: that would stay alive
                self.first = SimpleNamespace(name=backend.name, dtype=backend.dtype, device=backend.device,
                                             config=dict(backend.config), shape_ranges=backend.shape_ranges)
        return self.backend

    def release(self) -> None:
        if self.backend is None:
            return
        backend, self.backend, self.expert = self.backend, None, None
        backend.close()
        del backend
        gc.collect()  # freed now, before the next expert's weights arrive


class SwappedExpert(BackendBase):
    """One expert of a pair with one expert resident: looks like its backend (the first load's config, dtype,
    device and range) and runs it through the shared `OneResident`, which loads it when the other is open."""

    def __init__(self, slot: OneResident, expert: str, like: SimpleNamespace):
        super().__init__(like.dtype, like.device, like.config)
        self.name, self.shape_ranges = like.name, like.shape_ranges
        self.slot, self.expert = slot, expert

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        return self.slot.get(self.expert).forward(latents, timestep, text, image)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "expert": self.expert, "resident": "one"}

    def close(self) -> None:
        self.slot.release()


@dataclass
class ExpertPair:
    """The high- and low-noise experts' backends and the boundary; looks like one backend where the pipeline and
    generate ask one (config, dtype, device, shape range, describe, close)."""

    high: BackendBase
    low: BackendBase
    boundary_ratio: float
    resident: str = "both"
    loader: ExpertLoader | None = None  # None: backends made elsewhere (serving), loads not counted

    def __post_init__(self):
        check_one_model(self.high, self.low)

    def load(self, expert: str) -> BackendBase:
        """The expert's own backend, loaded now if another one is resident (so a caller can time the load apart
        from the forwards)."""
        backend = self.experts()[expert]
        return backend.slot.get(expert) if isinstance(backend, SwappedExpert) else backend

    def loads(self, since: int = 0) -> dict[str, Any] | None:
        """Expert loads from index `since` on (ExpertLoader.summary) with the residency; None when not counted."""
        return None if self.loader is None else {"resident": self.resident, **self.loader.summary(since)}

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
        return {"backend": self.name, "boundary_ratio": self.boundary_ratio, "resident": self.resident,
                "experts": {name: b.describe() for name, b in self.experts().items()}}

    def close(self) -> None:
        for backend in self.experts().values():
            backend.close()


def is_experts_artifact(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_dir() and artifact_kind(path) == ExpertsManifest.KIND


def expert_pair(name: str, model_spec=None, lora_specs: dict[str, Any] | None = None,
                artifact: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                cache_dir: Path | None = None, threads: int | None = None, cuda_graph: bool = False,
                progress: Callable[[str], None] | None = None, resident: str = "both") -> ExpertPair:
    """Both experts' backends: from `artifact` (an experts export or engines; the specs are not used) or from
    `model_spec` (a two-expert model) with `lora_specs` ({expert: LoraSpec}, an expert left out: no LoRA).
    `resident` "one": one expert's backend alive at a time (module docstring)."""
    if resident not in RESIDENT:
        raise BadInputError(f"--experts-resident {resident!r}: choose from {', '.join(RESIDENT)}",
                            param="experts_resident")
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
    loader = ExpertLoader({e: partial(backend_from_specs, name, **make[e], **options) for e in names})
    if resident == "one":
        slot = OneResident(loader)
        slot.get("high")  # the first steps are high's; its config, dtype and device stand for both
        return ExpertPair(SwappedExpert(slot, "high", slot.first), SwappedExpert(slot, "low", slot.first), ratio,
                          resident, loader)
    backends: dict[str, BackendBase] = {}
    try:
        for e in names:
            backends[e] = loader.load(e)
        return ExpertPair(backends["high"], backends["low"], ratio, resident, loader)
    except BaseException:  # the first expert's sessions or engines are not left open when the second fails
        for b in backends.values():
            b.close()
        raise
