"""TensorRT network and builder config: parse the ONNX strongly typed, mark refittable weights, configure the builder
(Polygraphy CreateConfig[RTX]), and build the serialized engine. No GPU needed up to the build."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from wanrt.console import err_console
from wanrt.engines.trt.engine_spec import EngineSpec
from wanrt.engines.trt.flavour import RTX_DEFAULT_TARGETS, Flavour, polygraphy_trt
from wanrt.engines.trt.profiles import ProfileSpec
from wanrt.errors import BadInputError, EngineError


def capturing_logger(flavour: Flavour):
    """A TensorRT logger that keeps the error messages (for one-line EngineErrors) and prints nothing else
    unless WANRT_TRT_VERBOSE is set."""
    trt = flavour.trt
    verbose = bool(os.environ.get("WANRT_TRT_VERBOSE"))

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, sev, msg):
            if sev in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))
            elif sev == trt.ILogger.Severity.WARNING:
                self.warnings.append(str(msg))
            if verbose:
                print(f"[TRT] {msg}", file=sys.stderr)

    return Logger()


def parse_network(flavour: Flavour, onnx_path: Path, logger=None):
    """(builder, network, parser, logger): strongly typed network parsed from the ONNX file; EngineError with the
    parser's first errors otherwise. Parsing needs no GPU."""
    flavour.require("strongly_typed", "wanrt takes precision from the ONNX dtypes")
    trt = flavour.trt
    logger = logger or capturing_logger(flavour)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok or errors:
        first = errors[0].splitlines()[0] if errors else (logger.errors[:1] or ["unknown parser failure"])[0]
        error = EngineError(f"{flavour.label} cannot parse {onnx_path.name}: {len(errors)} error(s), first: {first}")
        error.parser_errors = errors  # all of them, for reports (wanrt export records them in its manifest)
        raise error
    return builder, network, parser, logger


def network_io(network) -> dict[str, dict[str, Any]]:
    inputs = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        inputs[t.name] = {"shape": list(t.shape), "dtype": t.dtype.name, "mode": "input"}
    for i in range(network.num_outputs):
        t = network.get_output(i)
        inputs[t.name] = {"shape": list(t.shape), "dtype": t.dtype.name, "mode": "output"}
    return inputs


def mark_refittable(network, names: Sequence[str]) -> list[str]:
    """Mark `names` refittable (REFIT_INDIVIDUAL); returns the names the network has no weights for."""
    return [n for n in names if not network.mark_weights_refittable(n)]


def _polygraphy_profiles(profiles: Sequence[ProfileSpec], network):
    ptrt = polygraphy_trt()
    templates = {k: v["shape"] for k, v in network_io(network).items() if v["mode"] == "input"}
    out = []
    for p in profiles:
        prof = ptrt.Profile()
        for name, (lo, opt, hi) in p.input_shapes(templates).items():
            prof.add(name, lo, opt, hi)
        out.append(prof)
    return out


def make_progress_monitor(flavour: Flavour, enabled: bool | None = None):
    """A trt.IProgressMonitor that draws TensorRT's build phases as rich progress bars; Ctrl-C cancels the build
    cleanly (step_complete returns False)."""
    if not flavour.has("progress_monitor"):
        return None
    trt = flavour.trt
    show = sys.stderr.isatty() if enabled is None else enabled

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                                     "{task.total}"), TimeElapsedColumn(), console=err_console, transient=True,
                                     disable=not show)
            self.tasks: dict[str, Any] = {}
            self.phases: list[str] = []
            self.steps = 0
            self.cancelled = False

        def __enter__(self):
            self.progress.__enter__()
            return self

        def __exit__(self, *exc):
            self.progress.__exit__(*exc)

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                depth = 0 if parent_phase is None else self.phases.count(parent_phase) + 1
                self.phases.append(phase_name)
                self.tasks[phase_name] = self.progress.add_task("  " * depth + phase_name, total=max(num_steps, 1))
            except KeyboardInterrupt:
                self.cancelled = True

        def step_complete(self, phase_name, step):
            try:
                self.steps += 1
                task = self.tasks.get(phase_name)
                if task is not None:
                    self.progress.update(task, completed=step + 1)
            except KeyboardInterrupt:
                self.cancelled = True
            return not self.cancelled

        def phase_finish(self, phase_name):
            try:
                task = self.tasks.pop(phase_name, None)
                if task is not None:
                    self.progress.remove_task(task)
            except KeyboardInterrupt:
                self.cancelled = True

    return Monitor()


@dataclass
class Configured:
    """A parsed network with its builder configuration, ready to build (or to inspect on CPU)."""

    flavour: Flavour
    builder: Any
    network: Any
    parser: Any
    config: Any
    logger: Any
    refit: dict[str, Any]
    profiles: tuple[ProfileSpec, ...]
    targets: list[str]
    monitor: Any = None

    def flags(self) -> dict[str, bool]:
        trt = self.flavour.trt
        return {name: bool(self.config.get_flag(getattr(trt.BuilderFlag, name)))
                for name in ("REFIT", "REFIT_INDIVIDUAL", "WEIGHT_STREAMING", "STRIP_PLAN", "FP16", "BF16", "FP8")
                if hasattr(trt.BuilderFlag, name)}


def configure(flavour: Flavour, onnx_path: Path, spec: EngineSpec, profiles: Sequence[ProfileSpec],
              refit_names: dict[str, Any], refit_kind: str | None, targets: Sequence[str],
              gpu_current: bool = False, progress: bool | None = False) -> Configured:
    """Parse, mark refittable weights and create the builder config (Polygraphy CreateConfig[RTX]); no GPU needed."""
    trt = flavour.trt
    builder, network, parser, logger = parse_network(flavour, onnx_path)
    # refittable weights: only the LoRA's (REFIT_INDIVIDUAL) so the base keeps full optimization
    if refit_kind == "individual":
        missing = mark_refittable(network, refit_names["weights"])
        if missing:
            raise EngineError(f"{len(missing)} LoRA weights named in the manifest are not weights of the parsed "
                              f"network (e.g. {missing[:3]}); cannot make them refittable")
    ptrt = polygraphy_trt()
    kwargs: dict[str, Any] = {"profiles": _polygraphy_profiles(profiles, network)}
    if spec.opt_level is not None:
        flavour.require("builder_optimization_level")
        if not 0 <= spec.opt_level <= 5:
            raise BadInputError(f"--opt-level {spec.opt_level}: 0..5")
        kwargs["builder_optimization_level"] = spec.opt_level
    if spec.workspace_gib is not None:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(spec.workspace_gib * 2**30)}
    if spec.timing_cache and flavour.has("timing_cache"):
        kwargs["load_timing_cache"] = spec.timing_cache  # missing file: Polygraphy starts an empty cache
    if spec.weight_streaming:
        flavour.require("weight_streaming")
        kwargs["weight_streaming"] = True
    if refit_kind == "all":
        flavour.require("refit")
        kwargs["refittable"] = True
    monitor = make_progress_monitor(flavour, progress) if progress is not False else None
    if monitor is not None:
        kwargs["progress_monitor"] = monitor
    if flavour.name == "rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX  # optional: the [rtx] extra

        if gpu_current:
            kwargs["use_gpu"] = True
        elif targets and tuple(targets) != RTX_DEFAULT_TARGETS:
            for cc in targets:
                flavour.compute_capability_enum(cc)  # clear error for a target this version cannot compile
            kwargs["compute_capabilities"] = [tuple(int(v) for v in cc.split(".")) for cc in targets]
        create = CreateConfigRTX(**kwargs)
    else:
        create = ptrt.CreateConfig(**kwargs)

    def post(_builder, _network, config):
        if refit_kind == "individual":
            flavour.require("refit_individual")
            config.set_flag(trt.BuilderFlag.REFIT_INDIVIDUAL)

    try:
        config = ptrt.PostprocessConfig(create, post)(builder, network)
    except EngineError:
        raise
    except Exception as e:  # noqa: BLE001 - Polygraphy reports with PolygraphyException
        raise EngineError(f"cannot configure the {flavour.label} builder: {str(e).splitlines()[0]}") from None
    return Configured(flavour, builder, network, parser, config, logger, refit_names, tuple(profiles),
                      list(targets), monitor)


def build_serialized_engine(configured: Configured, timing_cache: str | None = None):
    """Build the serialized engine (Polygraphy EngineBytesFromNetwork; saves/merges the timing cache)."""
    ptrt = polygraphy_trt()
    c = configured
    save_cache = timing_cache if timing_cache and c.flavour.has("timing_cache") else None
    loader = ptrt.EngineBytesFromNetwork((c.builder, c.network, c.parser), c.config, save_timing_cache=save_cache)
    try:
        if c.monitor is not None:
            with c.monitor:
                serialized = loader()
        else:
            serialized = loader()
    except Exception as e:  # noqa: BLE001 - Polygraphy raises PolygraphyException on a failed build
        if c.monitor is not None and c.monitor.cancelled:
            raise EngineError("engine build cancelled") from None
        detail = (c.logger.errors[-1].splitlines()[0] if c.logger.errors else str(e).splitlines()[0])
        raise EngineError(f"{c.flavour.label} could not build the engine: {detail}") from None
    if serialized is None:
        raise EngineError(f"{c.flavour.label} returned no engine")
    return serialized
