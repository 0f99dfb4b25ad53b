"""The engine flavours, in one registry: build, bench, generate and serve ask here (names, CLI options, the
precisions a flavour offers on this machine, build, load, refit, the runtime backend that runs its engines)
instead of spelling a flavour's name.

Adding a flavour is two files: its module, holding an object that satisfies `EngineFlavour`, and one line in
`FLAVOURS` (docs/architecture.md, "Adding a flavour"). A flavour module is imported when the registry is first
asked and must stay light (no TensorRT, OpenVINO or torch at import): `wanrt --help` lists its options.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from importlib import import_module
from typing import Any, ClassVar, Protocol

from wanrt.artifacts import record_versions_of
from wanrt.errors import BadInputError
from wanrt.manifests import EngineManifest

AUTO = "auto"  # --flavour auto: the first registered flavour picks among its installed kin (TensorRT vs RTX)

# "module:attribute" of each flavour object, in --flavour order; the first is what `auto` builds with
FLAVOURS = (
    "wanrt.engines.trt.plugin:TENSORRT",
    "wanrt.engines.trt.plugin:RTX",
    "wanrt.engines.openvino.plugin:OPENVINO",
)


class EngineFlavour(Protocol):
    name: str  # --flavour value and the manifest's payload.flavour
    label: str  # for people: "TensorRT", "OpenVINO"
    backend: str  # the runtime backend (--backend) that runs its engines
    backend_description: str  # one line for `wanrt backends` and --help
    distributions: tuple[str, ...]  # package names whose versions an artifact records
    modules: tuple[str, ...]  # importable modules; none installed -> the extra's hint
    extra: str  # `pip install 'wanrt[EXTRA]'`
    offered: tuple[str, ...]  # every precision it can build somewhere (`precisions()`: on this machine)
    options: tuple[Callable, ...]  # click decorators of its own `wanrt build` options (commands/build.py)
    runtime_options: tuple[str, ...]  # the keyword options its runner takes (threads, cuda_graph, precision, ...)
    runtime_device: str  # the torch device its runner takes tensors on ("cuda", "cpu")
    loads_exports: bool  # its runner compiles an export directory itself (else it needs `wanrt build` first)
    first_run_compiles: bool  # the first run sets up shapes or compiles kernels: bench warms up at least once
    kernel: str  # the GEMM family its MatMuls run (runtime/bench/peaks.py)
    stage_precisions: tuple[str, ...]  # the precisions its stage sessions run (VAE, encoders); () for none

    def available(self) -> str | None:
        """None when it can build here, else the one-line reason."""

    def precisions(self) -> tuple[str, ...]:
        """The engine precisions it offers on this machine."""

    def default_precision(self, dtype: str) -> str:
        """What an engine of an export in `dtype` runs at when no --precision is given."""

    def refusal(self, precision: str) -> str | None:
        """None when it builds `precision` here, else one line saying why and what it offers instead."""

    def build(self, onnx_dir: str | os.PathLike, spec: Any, out: str | os.PathLike,
              force: bool = False) -> EngineManifest:
        """Build (or fetch from the shared engine cache) an engine of an export; returns its manifest."""

    def load(self, engine_dir: str | os.PathLike, **options: Any) -> Any:
        """A loaded engine: `infer(feeds)` (and `set_lora(lora)` where it swaps LoRAs as data)."""

    def check_runtime(self, device: Any) -> None:
        """MissingDependencyError / BadInputError when its runtime backend cannot run on `device` here."""

    def runner(self, artifact: str | os.PathLike, device: Any, **options: Any) -> Any:
        """The engine as runtime/backends.EngineBackend runs it: `run({name: torch tensor}) -> torch tensor`,
        `dtype`, `device`, `manifest` (an EngineManifest), `dir`, `setup`, `describe()`, `close()`, and `set_lora`
        where it swaps."""

    def refit(self, engine_dir: str | os.PathLike, **options: Any) -> EngineManifest:
        """Swap the LoRA of an engine directory; returns the new manifest."""

    def stage_session(self, path: os.PathLike, threads: int | None, precision: str) -> Any:
        """One exported stage graph loaded to run: {input name: array} -> [outputs] (engines/sessions.py)."""

    def refit_dry_run(self, engine_dir: str | os.PathLike, **options: Any) -> dict[str, str]:
        """What a refit would do, computed without a GPU: {column: value}."""

    def spec_for(self, precision: str | None) -> Any:
        """Its build spec at `precision` with every other setting at its default (bench, runtimes)."""

    def spec(self, options: dict[str, Any]) -> Any:
        """Its build spec from `wanrt build` options (refusing other flavours' options it cannot honour)."""

    def dry_run(self, onnx_dir: str | os.PathLike, spec: Any) -> list[tuple[str, str]]:
        """What a build would do here, without building: (setting, value) rows."""

    summary_columns: tuple[str, ...]  # its `wanrt build` table

    def summary_row(self, out: str, manifest: EngineManifest) -> tuple[str, ...]: ...

    def summary_caption(self, manifests: list[EngineManifest]) -> str | None: ...

    def describe(self, manifest: EngineManifest) -> str:
        """What built an engine, for people: "TensorRT-RTX 1.2", "OpenVINO 2025.1"."""


class LazyHooks:
    """The calls every flavour makes the same way (build, load, check_runtime, runner, refit, stage_session): each
    imports the function its flavour names in `hooks` ("module:attribute") when it is first called, so TensorRT,
    OpenVINO and torch stay out of `wanrt --help`."""

    hooks: ClassVar[dict[str, str]] = {}

    def _hook(self, name: str) -> Callable:
        return _imported(self.hooks[name])

    def build(self, onnx_dir, spec, out, force: bool = False, **options: Any) -> EngineManifest:
        return self._hook("build")(onnx_dir, spec, out, force=force, **options)

    def load(self, engine_dir, **options: Any):
        return self._hook("load")(engine_dir, **options)

    def check_runtime(self, device) -> None:
        self._hook("check_runtime")(device)

    def runner(self, artifact, device, **options: Any):
        return self._hook("runner")(artifact, device, **options)

    def refit(self, engine_dir, **options: Any) -> EngineManifest:
        return self._hook("refit")(engine_dir, **options)

    def stage_session(self, path, threads, precision):
        return self._hook("stage_session")(path, threads, precision)


def _imported(entry: str) -> Any:
    """The object a "module:attribute" entry names, its module imported now."""
    module, attr = entry.split(":")
    return getattr(import_module(module), attr)


@cache
def flavours() -> tuple[EngineFlavour, ...]:
    out = tuple(_imported(entry) for entry in FLAVOURS)
    record_versions_of(*(d for f in out for d in f.distributions))  # every artifact records them
    return out


def names() -> tuple[str, ...]:
    return tuple(f.name for f in flavours())


def choices() -> tuple[str, ...]:
    """What --flavour takes."""
    return (AUTO, *names())


def precision_choices() -> tuple[str, ...]:
    """Every precision some flavour builds (what --precision takes; each flavour refuses the rest in one line)."""
    return tuple(dict.fromkeys(p for f in flavours() for p in f.offered))


def backends() -> tuple[str, ...]:
    """The runtime backends that run engines, once each, in registry order."""
    return tuple(dict.fromkeys(f.backend for f in flavours()))


def export_backends() -> tuple[str, ...]:
    """The flavour backends that also run an export directory (compiled on load into the engine cache)."""
    return tuple(dict.fromkeys(f.backend for f in flavours() if f.loads_exports))


def get(name: str) -> EngineFlavour:
    """The flavour called `name` (`auto`: the first registered); BadInputError naming the choices otherwise."""
    for f in flavours():
        if name in (f.name, AUTO):
            return f
    raise BadInputError(f"--flavour {name!r}: choose one of {', '.join(choices())}")


def for_backend(backend: str) -> EngineFlavour | None:
    """The (first) flavour whose engines `backend` runs; None for a backend that runs no engine (eager, ort)."""
    return next((f for f in flavours() if f.backend == backend), None)


def distributions() -> tuple[str, ...]:
    """Every flavour's packages (artifacts record their versions)."""
    return tuple(dict.fromkeys(d for f in flavours() for d in f.distributions))


def of_engine_dir(engine_dir: str | os.PathLike) -> EngineFlavour:
    """The flavour of an engine directory; one whose manifest cannot be read goes to the first flavour, whose
    loader says why in its own words."""
    try:
        return get(EngineManifest.read(engine_dir).flavour)
    except BadInputError:
        return flavours()[0]
