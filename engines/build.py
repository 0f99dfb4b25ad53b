"""ONNX export directory -> TensorRT engine directory (`engine.plan` + `manifest.json`), once per content.

Written once against the API `tensorrt` and `tensorrt_rtx` share (engines/flavour.py). Polygraphy does the parts it
has loaders for: the builder config (`CreateConfig` / `CreateConfigRTX`: profiles, optimization level, memory pool
limits, timing cache, progress monitor, weight streaming, refit, AOT compute capabilities) and the build with its
timing-cache merge (`EngineBytesFromNetwork`). wanrt parses the network itself so parser errors come back as one
line, and marks the LoRA weights refittable.

Steps of `build_engine_from_onnx_dir`:
1. read the ONNX manifest; pick the TensorRT flavour; resolve targets (GPU or AOT compute capabilities), precision
   and profiles, and refuse what cannot work before any expensive step;
2. cache key = hash(spec, ONNX sha256, flavour + version, targets): an existing engine with that key is reused;
3. FP8: quantize to a Q/DQ ONNX (engines/fp8.py) and check its numerics in ONNX Runtime;
4. parse strongly typed (precision comes from the ONNX dtypes), mark refittable weights, configure, build;
5. write the engine directory atomically and store it in the content-addressed cache.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanrt.engines.flavour import (
    MIN_CC,
    RTX_DEFAULT_TARGETS,
    Flavour,
    check_precision_supported,
    gpu_info,
    load_flavour,
    polygraphy_trt,
)
from wanrt.engines.fp8 import Fp8Spec
from wanrt.engines.profiles import ProfileSpec, check_against_export, resolve_profiles

from wanrt.artifacts import (
    atomic_output_dir,
    build_manifest,
    check_output_dir,
    read_manifest,
    sha256_file,
    spec_hash,
    write_json,
)
from wanrt.errors import BadInputError, EngineError

PLAN_NAME = "engine.plan"
ENGINE_KIND = "engine"
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")


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
    cache_dir: str | None = None  # default $WANRT_CACHE/engines or ~/.cache/wanrt/engines
    progress: bool | None = None  # progress bar (None: when stderr is a terminal)

    def key_fields(self) -> dict[str, Any]:
        """The fields that change the plan (not cache or progress settings, not the timing cache path)."""
        d = {k: getattr(self, k) for k in ("precision", "opt_level", "workspace_gib", "weight_streaming", "refit")}
        if self.precision == "fp8":
            d["fp8"] = {k: getattr(self.fp8, k) for k in ("calib", "keep_blocks", "backend", "seed", "calib_data",
                                                          "calib_shape", "per_channel")}
        return d


# --------------------------------------------------------------------------------------------- ONNX side
def read_onnx_dir(onnx_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """(manifest, model.onnx path) of an export directory; BadInputError if it is not one."""
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise BadInputError(f"{onnx_dir}: not a directory (expected a `wanrt export` output)")
    manifest = read_manifest(onnx_dir, kind="onnx")
    path = onnx_dir / manifest["payload"].get("onnx", "model.onnx")
    if not path.is_file():
        raise BadInputError(f"{onnx_dir}: manifest names {path.name}, which is missing")
    data = manifest["payload"].get("external_data")
    if data and not (onnx_dir / data).is_file():
        raise BadInputError(f"{onnx_dir}: external weights {data} are missing")
    return manifest, path


def onnx_dtype(manifest: dict[str, Any]) -> str:
    return manifest.get("specs", {}).get("export", {}).get("dtype", "fp32")


def onnx_initializer_info(path: Path) -> dict[str, dict[str, Any]]:
    """{initializer: {shape, dtype}} from the graph proto alone (external weights are not read)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors come as several types
        raise BadInputError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:120]}); re-export") from None
    return {i.name: {"shape": list(i.dims), "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name
                     if i.data_type != onnx.TensorProto.BFLOAT16 else "bfloat16"} for i in model.graph.initializer}


def lora_refit_names(manifest: dict[str, Any], initializers: dict[str, Any]) -> dict[str, Any]:
    """What refit addresses: {mode, modules: {module: {A, B, bias?} | {weight, bias?}}, weights: [names]}."""
    lora = manifest["payload"].get("lora") or {}
    if not lora.get("enabled"):
        return {"mode": None, "modules": {}, "weights": []}
    mode = lora.get("mode")
    modules: dict[str, dict[str, str]] = {}
    if mode == "separate":
        for module, names in lora.get("initializers", {}).items():
            modules[module] = dict(names)
    elif mode in ("merged", "full"):
        for module, weight in lora.get("merged_weights", {}).items():
            entry = {"weight": weight}
            if f"{module}.bias" in initializers:
                entry["bias"] = f"{module}.bias"
            modules[module] = entry
    weights = [n for entry in modules.values() for n in entry.values()]
    missing = [n for n in weights if n not in initializers]
    if missing:
        raise EngineError(f"the ONNX manifest names {len(missing)} LoRA weights that are not initializers of the "
                          f"graph, e.g. {missing[:3]}; re-export")
    return {"mode": mode, "modules": modules, "weights": weights}


# --------------------------------------------------------------------------------------------- TensorRT side
def capturing_logger(flavour: Flavour, severity: str = "WARNING"):
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
                import sys

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
    import sys

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from wanrt.console import err_console

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
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        if gpu_current:
            kwargs["use_gpu"] = True
        elif targets and tuple(targets) != RTX_DEFAULT_TARGETS:
            for cc in targets:
                flavour.compute_capability_enum(cc)  # clear error for a target this version cannot compile
            kwargs["compute_capabilities"] = [tuple(int(v) for v in cc.split(".")) for cc in targets]
        create = CreateConfigRTX(**kwargs)
    else:
        create = ptrt.CreateConfig(**kwargs)

    def post(builder_, network_, config):
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


def build_plan(configured: Configured, timing_cache: str | None = None):
    """Build the serialized engine (Polygraphy EngineBytesFromNetwork; saves/merges the timing cache)."""
    ptrt = polygraphy_trt()
    c = configured
    save_cache = timing_cache if timing_cache and c.flavour.has("timing_cache") else None
    loader = ptrt.EngineBytesFromNetwork((c.builder, c.network, c.parser), c.config, save_timing_cache=save_cache)
    try:
        if c.monitor is not None:
            with c.monitor:
                plan = loader()
        else:
            plan = loader()
    except Exception as e:  # noqa: BLE001 - Polygraphy raises PolygraphyException on a failed build
        if c.monitor is not None and c.monitor.cancelled:
            raise EngineError("engine build cancelled") from None
        detail = (c.logger.errors[-1].splitlines()[0] if c.logger.errors else str(e).splitlines()[0])
        raise EngineError(f"{c.flavour.label} could not build the engine: {detail}") from None
    if plan is None:
        raise EngineError(f"{c.flavour.label} returned no engine")
    return plan


# --------------------------------------------------------------------------------------------- resolution
def resolve_targets(flavour: Flavour, spec: EngineSpec, gpu: dict[str, Any] | None,
                    precision: str = "bf16") -> tuple[list[str], bool]:
    """(compute capabilities the plan will run on, use the current GPU). Datacenter TensorRT builds for the GPU it
    runs on; TensorRT-RTX compiles ahead of time for explicit targets, the current GPU, or its default set (the
    part of it that runs `precision`: FP8 -> 8.9, 12.0, 12.1)."""
    if flavour.name == "tensorrt":
        if spec.compute_capabilities:
            raise EngineError("--compute-capability is a TensorRT-RTX option; datacenter TensorRT builds for the GPU "
                              "it runs on")
        if gpu is None:
            raise EngineError("building with datacenter TensorRT needs an NVIDIA GPU (none is visible); "
                              "--trt rtx builds ahead of time without one")
        return [gpu["compute_capability"]], True
    if spec.compute_capabilities:
        flavour.require("compute_capability")
        return list(spec.compute_capabilities), False
    if gpu is not None:
        if gpu["compute_capability"].split(".")[0] in ("9", "10"):
            raise EngineError(f"{flavour.label} does not support {gpu['name']} (compute capability "
                              f"{gpu['compute_capability']}: Hopper/datacenter Blackwell); use --trt tensorrt "
                              f"(see docs/engines.md)")
        return [gpu["compute_capability"]], True
    need = MIN_CC.get(precision, (0, 0))
    targets = [cc for cc in RTX_DEFAULT_TARGETS if tuple(int(v) for v in cc.split(".")) >= need]
    return targets, False


def resolve_precision(spec: EngineSpec, manifest: dict[str, Any]) -> str:
    dtype = onnx_dtype(manifest)
    precision = spec.precision or dtype
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "fp8" and precision != dtype:
        raise BadInputError(f"--precision {precision}: the ONNX was exported in {dtype}; networks are strongly typed "
                            f"(precision comes from the ONNX dtypes), so re-export with --dtype {precision}")
    return precision


def resolve_refit(spec: EngineSpec, refit_names: dict[str, Any], precision: str, flavour: Flavour,
                  gpu: dict[str, Any] | None = None, dry_run: bool = False) -> str | None:
    """None (not refittable), "individual" (only the LoRA weights) or "all" (REFIT, when individual is missing).
    TensorRT-RTX's ahead-of-time compiler queries CUDA for refittable engines (1.7: Myelin CHECK failure without a
    GPU), so without a GPU `auto` builds a non-refittable engine and `yes` is refused up front."""
    if spec.refit not in ("auto", "yes", "no"):
        raise BadInputError(f"--refit {spec.refit!r}: auto, yes or no")
    has_lora = bool(refit_names["weights"])
    if spec.refit == "no" or (spec.refit == "auto" and not has_lora):
        return None
    if not has_lora:
        raise BadInputError("--refit yes: the ONNX has no LoRA (export with --lora/--rank) so there is nothing to refit")
    if precision == "fp8" and refit_names["mode"] != "separate":
        if spec.refit == "yes":
            raise EngineError("refitting merged weights of an FP8 engine would reuse scales calibrated for the old "
                              "weights; export with --lora-mode separate (the LoRA branch stays bf16) or rebuild")
        return None
    if gpu is None and not dry_run:
        if spec.refit == "yes":
            raise EngineError(f"{flavour.label} needs a GPU to build refittable engines (its compiler queries CUDA "
                              f"for them); build with --refit no here, or on a GPU")
        return None
    if flavour.has("refit_individual"):
        return "individual"
    flavour.require("refit")
    return "all"


def cache_root(spec: EngineSpec) -> Path:
    if spec.cache_dir:
        return Path(spec.cache_dir)
    base = os.environ.get("WANRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wanrt")
    return Path(base) / "engines"


def compute_cache_key(spec: EngineSpec, onnx_sha: str, flavour: Flavour, targets: Sequence[str],
                      profiles: Sequence[ProfileSpec], gpu: dict[str, Any] | None, gpu_current: bool) -> str:
    return spec_hash({"spec": spec.key_fields(), "onnx_sha256": onnx_sha, "trt": flavour.info(),
                      "targets": list(targets), "gpu": gpu["name"] if gpu_current and gpu else None,
                      "profiles": [p.to_json() for p in profiles]})


# --------------------------------------------------------------------------------------------- the build
@dataclass
class BuildPlan:
    """Every decision of a build, made before anything expensive (step 1-2)."""

    spec: EngineSpec
    onnx_dir: Path
    onnx_path: Path
    manifest: dict[str, Any]
    precision: str
    profiles: tuple[ProfileSpec, ...]
    flavour: Flavour
    gpu: dict[str, Any] | None
    targets: list[str]
    gpu_current: bool
    initializers: dict[str, dict[str, Any]]
    refit_names: dict[str, Any]
    refit_kind: str | None
    onnx_sha: str
    key: str


def prepare(onnx_dir: str | os.PathLike, spec: EngineSpec, dry_run: bool = False) -> BuildPlan:
    """Read the export, pick flavour/targets/precision/profiles/refit mode, compute the cache key. `dry_run` lets
    datacenter TensorRT be configured without a GPU (no build)."""
    onnx_dir = Path(onnx_dir)
    manifest, onnx_path = read_onnx_dir(onnx_dir)
    payload = manifest["payload"]
    precision = resolve_precision(spec, manifest)
    shape_ranges = payload.get("shape_ranges")
    profiles = resolve_profiles(spec.profiles, spec.frames, spec.batch, shape_ranges)
    if shape_ranges:
        check_against_export(profiles, shape_ranges)
    flavour = load_flavour(spec.flavour)
    gpu = gpu_info()
    if dry_run and flavour.name == "tensorrt" and gpu is None:
        targets, gpu_current = [], False
    else:
        targets, gpu_current = resolve_targets(flavour, spec, gpu, precision)
    for cc in targets:
        check_precision_supported(precision, cc, flavour)
    initializers = onnx_initializer_info(onnx_path)
    refit_names = lora_refit_names(manifest, initializers)
    refit_kind = resolve_refit(spec, refit_names, precision, flavour, gpu, dry_run)
    onnx_sha = payload.get("sha256") or sha256_file(onnx_path)
    key = compute_cache_key(spec, onnx_sha, flavour, targets, profiles, gpu, gpu_current)
    return BuildPlan(spec, onnx_dir, onnx_path, manifest, precision, profiles, flavour, gpu, targets, gpu_current,
                     initializers, refit_names, refit_kind, onnx_sha, key)


def configure_from_onnx_dir(onnx_dir: str | os.PathLike, spec: EngineSpec,
                            work_dir: str | os.PathLike | None = None) -> tuple[BuildPlan, Configured]:
    """Everything up to the build: parsed strongly typed network, refittable weights marked, builder config with
    profiles (FP8: the Q/DQ ONNX is made in work_dir). What CI checks on machines without a GPU."""
    plan = prepare(onnx_dir, spec, dry_run=True)
    onnx_path = plan.onnx_path
    if plan.precision == "fp8":
        from wanrt.engines.fp8 import quantize_fp8

        work = Path(work_dir or tempfile.mkdtemp(prefix="wanrt-fp8-"))
        onnx_path = work / "model.fp8.onnx"
        quantize_fp8(plan.onnx_path, onnx_path, spec.fp8, shape_ranges=plan.manifest["payload"].get("shape_ranges"))
    configured = configure(plan.flavour, onnx_path, spec, plan.profiles, plan.refit_names, plan.refit_kind,
                           plan.targets, gpu_current=plan.gpu_current, progress=False)
    return plan, configured


def build_engine_from_onnx_dir(onnx_dir: str | os.PathLike, engine_spec: EngineSpec, out_dir: str | os.PathLike,
                               force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the engine for an export directory into `out_dir`; returns the engine manifest.

    An `out_dir` holding the same engine (same cache key, intact plan) is returned as is; one holding another
    engine needs force=True. Nothing is written unless the build succeeds."""
    from wanrt.engines.cache import EngineCache, plan_intact

    spec = engine_spec
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    # 1. inputs and decisions, cheap checks first
    plan = prepare(onnx_dir, spec)
    # 2. the same engine already there / in the cache
    if out_dir.is_dir() and (out_dir / "manifest.json").is_file():
        try:
            existing = read_manifest(out_dir, kind=ENGINE_KIND)
        except BadInputError:
            existing = None
        if existing and existing["payload"].get("cache_key") == plan.key and plan_intact(out_dir, existing):
            return existing
    check_output_dir(out_dir, force)
    cache = EngineCache(cache_root(spec)) if spec.cache else None
    if cache is not None:
        hit = cache.fetch(plan.key, out_dir, force=force)
        if hit is not None:
            return hit
    # 3-5. build into a temporary directory that becomes out_dir in one rename
    shape_ranges = plan.manifest["payload"].get("shape_ranges")
    with atomic_output_dir(out_dir, force=force) as tmp:
        fp8_report = None
        build_onnx = plan.onnx_path
        timings: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="wanrt-build-", dir=tmp) as work:
            if plan.precision == "fp8":
                from wanrt.engines.fp8 import quantize_fp8

                t = time.perf_counter()
                build_onnx = Path(work) / "model.fp8.onnx"
                fp8_report = quantize_fp8(plan.onnx_path, build_onnx, spec.fp8, shape_ranges=shape_ranges)
                timings["fp8_quantize_and_check"] = time.perf_counter() - t
            plan_path = tmp / PLAN_NAME
            if plan.gpu_current:
                io, flags, layers = _configure_and_build(plan, build_onnx, plan_path, timings)
            else:
                io, flags, layers = _build_in_child(plan, build_onnx, plan_path, timings)
        payload_out = engine_payload(plan, plan_path=plan_path, io=io, flags=flags, layers=layers,
                                     fp8_report=fp8_report, timings={**timings, "total": time.perf_counter() - t0})
        engine_manifest = build_manifest(ENGINE_KIND, {"engine": spec, "onnx": plan.manifest.get("specs", {})},
                                         payload_out)
        write_json(tmp / "manifest.json", engine_manifest)
    if cache is not None:
        cache.store(plan.key, out_dir)
    return engine_manifest


def _configure_and_build(plan: BuildPlan, build_onnx: Path, plan_path: Path, timings: dict[str, float]):
    """Steps 4-5: parse + configure, build, write the plan. Returns (io, flags, layer count)."""
    t = time.perf_counter()
    configured = configure(plan.flavour, build_onnx, plan.spec, plan.profiles, plan.refit_names, plan.refit_kind,
                           plan.targets, gpu_current=plan.gpu_current, progress=plan.spec.progress)
    timings["parse_and_configure"] = time.perf_counter() - t
    t = time.perf_counter()
    serialized = build_plan(configured, plan.spec.timing_cache)
    timings["build"] = time.perf_counter() - t
    with open(plan_path, "wb") as f:
        f.write(memoryview(serialized))
    return network_io(configured.network), configured.flags(), configured.network.num_layers


def _child_build(plan: BuildPlan, build_onnx: Path, plan_path: Path, result_path: Path) -> None:
    timings: dict[str, float] = {}
    try:
        io, flags, layers = _configure_and_build(plan, build_onnx, plan_path, timings)
        result = {"io": io, "flags": flags, "layers": layers, "timings": timings}
    except Exception as e:  # noqa: BLE001 - carried to the parent as its one-line message
        result = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    result_path.write_text(json.dumps(result))


def _build_in_child(plan: BuildPlan, build_onnx: Path, plan_path: Path, timings: dict[str, float]):
    """A build with no GPU (TensorRT-RTX compiles ahead of time on the CPU) runs in a child process: TensorRT-RTX
    1.7's CPU-only builder dies with SIGSEGV on some graphs it parses fine (opset-23 Attention, bf16 separate-LoRA
    graphs; docs/engines.md), and a crash must be one clear error, not the end of `wanrt`."""
    import multiprocessing

    result_path = plan_path.with_name(".build-result.json")
    child = multiprocessing.get_context("spawn").Process(target=_child_build,
                                                         args=(plan, build_onnx, plan_path, result_path))
    child.start()
    child.join()
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    result_path.unlink(missing_ok=True)
    if child.exitcode != 0 or result is None:
        how = f"signal {-child.exitcode}" if child.exitcode and child.exitcode < 0 else f"exit {child.exitcode}"
        raise EngineError(f"{plan.flavour.label}'s builder crashed ({how}) building {plan.onnx_path} without a GPU; "
                          f"known for opset-23 and bf16 separate-LoRA graphs on CPU-only builds: export with "
                          f"--opset 18, or build on an NVIDIA GPU")
    if "error" in result:
        raise EngineError(result["error"])
    timings.update(result["timings"])
    return result["io"], result["flags"], result["layers"]


def lora_section(plan: BuildPlan) -> dict[str, Any]:
    """The engine manifest's `lora`: mode, which LoRA is loaded, refit kind, module -> weight names, and the
    refittable weights with shape and dtype (what `wanrt refit` checks a new LoRA against)."""
    lora = plan.manifest["payload"].get("lora") or {}
    refittable = {n: plan.initializers[n] for n in plan.refit_names["weights"]} if plan.refit_kind else {}
    return {
        "mode": plan.refit_names["mode"],
        "loaded": {k: v for k, v in lora.items() if k not in ("initializers", "merged_weights", "retained_energy",
                                                               "flops_per_token")},
        "refit": plan.refit_kind,  # None | individual | all
        "modules": plan.refit_names["modules"],
        "refittable_weights": refittable,
        "history": [],
    }


def engine_payload(plan: BuildPlan, *, plan_path: Path, io, flags, layers, fp8_report, timings) -> dict[str, Any]:
    flavour, gpu, spec = plan.flavour, plan.gpu, plan.spec
    return {
        "engine": PLAN_NAME,
        "plan_bytes": plan_path.stat().st_size,
        "plan_sha256": sha256_file(plan_path),
        "cache_key": plan.key,
        "trt": flavour.info(),
        "gpu": ({"name": gpu["name"], "compute_capability": gpu["compute_capability"]}
                if plan.gpu_current and gpu else None),
        "built_on": gpu["name"] if gpu else "CPU (ahead of time)",
        "targets": list(plan.targets),
        "precision": plan.precision,
        "profiles": [p.to_json() for p in plan.profiles],
        "io": io,
        "layers": layers,
        "flags": flags,
        "onnx": {"dir": str(plan.onnx_dir.resolve()), "sha256": plan.onnx_sha, "dtype": onnx_dtype(plan.manifest),
                 "geometry": plan.manifest["payload"].get("geometry"),
                 "shape_ranges": plan.manifest["payload"].get("shape_ranges")},
        "lora": lora_section(plan),
        "build": {"opt_level": spec.opt_level, "workspace_gib": spec.workspace_gib,
                  "timing_cache": spec.timing_cache if flavour.has("timing_cache") else None,
                  "timing_cache_note": None if flavour.has("timing_cache") or not spec.timing_cache else
                  f"{flavour.label}: timing caches are no-ops; kernels are compiled just in time and kept in the "
                  f"runtime cache (TRTEngine runtime_cache)",
                  "weight_streaming": spec.weight_streaming},
        "fp8": fp8_report,
        "timings_s": timings,
    }


class EngineFromOnnxDir:
    """Lazy twin of build_engine_from_onnx_dir (Polygraphy's habit): builds on first call, then returns the
    manifest."""

    def __init__(self, onnx_dir, engine_spec: EngineSpec, out_dir, force: bool = False):
        self.args = (onnx_dir, engine_spec, out_dir, force)
        self._manifest: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = build_engine_from_onnx_dir(*self.args)
        return self._manifest


def describe_engine(manifest: dict[str, Any]) -> dict[str, Any]:
    """A short summary for tables and logs."""
    p = manifest["payload"]
    return {"trt": p["trt"]["label"], "precision": p["precision"], "targets": p["targets"],
            "profiles": [f"{q['name']}" for q in p["profiles"]], "plan_mib": round(p["plan_bytes"] / 2**20, 1),
            "lora": p["lora"]["mode"], "refit": p["lora"]["refit"], "seconds": round(p["timings_s"]["total"], 1)}

