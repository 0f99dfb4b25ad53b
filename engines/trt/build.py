"""ONNX export directory -> TensorRT engine directory (`engine.plan` + `manifest.json`), once per content.

Written once against the API `tensorrt` and `tensorrt_rtx` share (engines/trt/flavour.py). Polygraphy does the parts it
has loaders for: the builder config (`CreateConfig` / `CreateConfigRTX`: profiles, optimization level, memory pool
limits, timing cache, progress monitor, weight streaming, refit, AOT compute capabilities) and the build with its
timing-cache merge (`EngineBytesFromNetwork`). wanrt parses the network itself so parser errors come back as one
line, and marks the LoRA weights refittable.

Steps of `build_engine_from_onnx_dir`:
1. read the ONNX manifest; pick the TensorRT flavour; resolve targets (GPU or AOT compute capabilities), precision
   and profiles, and refuse what cannot work before any expensive step;
2. cache key = hash(spec, ONNX sha256, flavour + version, targets): an existing engine with that key is reused;
3. FP8: quantize to a Q/DQ ONNX (engines/trt/fp8/) and check its numerics in ONNX Runtime;
4. parse strongly typed (precision comes from the ONNX dtypes), mark refittable weights, configure, build;
5. write the engine directory atomically and store it in the content-addressed cache.

Modules: engine_spec (EngineSpec), onnx_dir (reading the export), resolve (step 1-2 decisions: `prepare` ->
`ResolvedBuild`), network (parse, configure, build the serialized engine), this one (steps 3-5 and the manifest).
"plan" always means the serialized engine (`engine.plan`), as in TensorRT.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from wanrt.artifacts import (MANIFEST_NAME, atomic_output_dir, build_manifest, check_output_dir, sha256_file,
                             write_manifest)
from wanrt.engines.cache import EngineCache, engine_cache_dir, same_engine
from wanrt.engines.trt.engine_spec import ENGINE_KIND, PLAN_NAME, EngineSpec
from wanrt.engines.trt.fp8.quantize import quantize_fp8
from wanrt.engines.lora_swap import loaded_from_export
from wanrt.engines.trt.network import Configured, build_serialized_engine, configure, network_io
from wanrt.engines.trt.resolve import ResolvedBuild, cpu_build_blocker, prepare
from wanrt.errors import EngineError
from wanrt.manifests import EngineManifest


def configure_from_onnx_dir(onnx_dir: str | os.PathLike, spec: EngineSpec,
                            work_dir: str | os.PathLike | None = None) -> tuple[ResolvedBuild, Configured]:
    """Everything up to the build: parsed strongly typed network, refittable weights marked, builder config with
    profiles (FP8: the Q/DQ ONNX is made in work_dir). What CI checks on machines without a GPU."""
    resolved = prepare(onnx_dir, spec, dry_run=True)
    with contextlib.ExitStack() as stack:
        onnx_path = resolved.onnx_path
        if resolved.precision == "fp8":
            # the Q/DQ graph is only read by the parser below: without a work_dir it lives in a temporary directory
            work = Path(work_dir) if work_dir else Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="wanrt-fp8-")))
            onnx_path = work / "model.fp8.onnx"
            quantize_fp8(resolved.onnx_path, onnx_path, spec.fp8, shape_ranges=resolved.manifest.shape_ranges)
        configured = configure(resolved.flavour, onnx_path, spec, resolved.profiles, resolved.refit_names,
                               resolved.refit_kind, resolved.targets, gpu_current=resolved.gpu_current,
                               progress=False)
    return resolved, configured


def build_engine_from_onnx_dir(onnx_dir: str | os.PathLike, engine_spec: EngineSpec, out_dir: str | os.PathLike,
                               force: bool = False) -> EngineManifest:
    """Build (or reuse) the engine for an export directory into `out_dir`; returns the engine manifest.

    An `out_dir` holding the same engine (same cache key, intact plan file) is returned as is; one holding another
    engine needs force=True. Nothing is written unless the build succeeds."""
    spec = engine_spec
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    # 1. inputs and decisions, cheap checks first
    resolved = prepare(onnx_dir, spec)
    # 2. the same engine already there / in the cache
    existing = same_engine(out_dir, resolved.key)
    if existing is not None:
        return existing
    check_output_dir(out_dir, force, kind=ENGINE_KIND)
    blocker = cpu_build_blocker(resolved)
    if blocker is not None:
        raise EngineError(blocker)
    cache = EngineCache(engine_cache_dir(spec)) if spec.cache else None
    if cache is not None:
        hit = cache.fetch(resolved.key, out_dir, force=force)
        if hit is not None:
            return hit
    # 3-5. build into a temporary directory that becomes out_dir in one rename
    shape_ranges = resolved.manifest.shape_ranges
    with atomic_output_dir(out_dir, force=force, kind=ENGINE_KIND) as tmp:
        fp8_report = None
        build_onnx = resolved.onnx_path
        timings: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="wanrt-build-", dir=tmp) as work:
            if resolved.precision == "fp8":
                t = time.perf_counter()
                build_onnx = Path(work) / "model.fp8.onnx"
                fp8_report = quantize_fp8(resolved.onnx_path, build_onnx, spec.fp8, shape_ranges=shape_ranges)
                timings["fp8_quantize_and_check"] = time.perf_counter() - t
            plan_path = tmp / PLAN_NAME
            if resolved.gpu_current:
                io, flags, layers = _configure_and_build(resolved, build_onnx, plan_path, timings)
            else:
                io, flags, layers = _build_in_child(resolved, build_onnx, plan_path, timings)
        payload_out = engine_payload(resolved, plan_path=plan_path, io=io, flags=flags, layers=layers,
                                     fp8_report=fp8_report, timings={**timings, "total": time.perf_counter() - t0})
        engine_manifest = build_manifest(ENGINE_KIND, {"engine": spec, "onnx": resolved.manifest.specs}, payload_out)
        write_manifest(tmp, engine_manifest)
    if cache is not None:
        cache.store(resolved.key, out_dir)
    return EngineManifest.from_dict(engine_manifest, out_dir / MANIFEST_NAME)


def _configure_and_build(resolved: ResolvedBuild, build_onnx: Path, plan_path: Path, timings: dict[str, float]):
    """Steps 4-5: parse + configure, build, write the plan file. Returns (io, flags, layer count)."""
    t = time.perf_counter()
    configured = configure(resolved.flavour, build_onnx, resolved.spec, resolved.profiles, resolved.refit_names,
                           resolved.refit_kind, resolved.targets, gpu_current=resolved.gpu_current,
                           progress=resolved.spec.progress)
    timings["parse_and_configure"] = time.perf_counter() - t
    t = time.perf_counter()
    serialized = build_serialized_engine(configured, resolved.spec.timing_cache)
    timings["build"] = time.perf_counter() - t
    with open(plan_path, "wb") as f:
        f.write(memoryview(serialized))
    return network_io(configured.network), configured.flags(), configured.network.num_layers


def _child_build(resolved: ResolvedBuild, build_onnx: Path, plan_path: Path, result_path: Path) -> None:
    timings: dict[str, float] = {}
    try:
        io, flags, layers = _configure_and_build(resolved, build_onnx, plan_path, timings)
        result = {"io": io, "flags": flags, "layers": layers, "timings": timings}
    except Exception as e:  # noqa: BLE001 - carried to the parent as its one-line message
        result = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    result_path.write_text(json.dumps(result))


def _build_in_child(resolved: ResolvedBuild, build_onnx: Path, plan_path: Path, timings: dict[str, float]):
    """A build with no GPU (TensorRT-RTX compiles ahead of time on the CPU) runs in a child process: TensorRT-RTX
    1.7's CPU-only builder dies with SIGSEGV on some graphs it parses fine (opset-23 Attention, bf16 separate-LoRA
    graphs; docs/engines.md), and a crash must be one clear error, not the end of `wanrt`."""
    result_path = plan_path.with_name(".build-result.json")
    child = multiprocessing.get_context("spawn").Process(target=_child_build,
                                                         args=(resolved, build_onnx, plan_path, result_path))
    child.start()
    child.join()
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    result_path.unlink(missing_ok=True)
    if child.exitcode != 0 or result is None:
        how = f"signal {-child.exitcode}" if child.exitcode and child.exitcode < 0 else f"exit {child.exitcode}"
        raise EngineError(f"{resolved.flavour.label}'s builder crashed ({how}) building {resolved.onnx_path} "
                          f"without a GPU; "
                          f"known for opset-23 and bf16 separate-LoRA graphs on CPU-only builds: export with "
                          f"--opset 18, or build on an NVIDIA GPU")
    if "error" in result:
        raise EngineError(result["error"])
    timings.update(result["timings"])
    return result["io"], result["flags"], result["layers"]


def lora_section(resolved: ResolvedBuild) -> dict[str, Any]:
    """The engine manifest's `lora`: mode, which LoRA is loaded, refit kind, module -> weight names, and the
    refittable weights with shape and dtype (what `wanrt refit` checks a new LoRA against)."""
    refittable = {n: resolved.initializers[n] for n in resolved.refit_names["weights"]} if resolved.refit_kind else {}
    return {
        "mode": resolved.refit_names["mode"],
        "loaded": loaded_from_export(resolved.manifest.lora),
        "refit": resolved.refit_kind,  # None | individual | all
        "modules": resolved.refit_names["modules"],
        "refittable_weights": refittable,
        "history": [],
    }


def engine_payload(resolved: ResolvedBuild, *, plan_path: Path, io, flags, layers, fp8_report,
                   timings) -> dict[str, Any]:
    """The engine manifest's payload: the plan file, what it was built for and from, LoRA/refit, FP8, timings."""
    flavour, gpu, spec = resolved.flavour, resolved.gpu, resolved.spec
    return {
        "engine": PLAN_NAME,
        "plan_bytes": plan_path.stat().st_size,
        "plan_sha256": sha256_file(plan_path),
        "cache_key": resolved.key,
        "trt": flavour.info(),
        "gpu": ({"name": gpu["name"], "compute_capability": gpu["compute_capability"]}
                if resolved.gpu_current and gpu else None),
        "built_on": gpu["name"] if gpu else "CPU (ahead of time)",
        "targets": list(resolved.targets),
        "precision": resolved.precision,
        "profiles": [p.to_json() for p in resolved.profiles],
        "io": io,
        "layers": layers,
        "flags": flags,
        "onnx": {"dir": str(resolved.onnx_dir.resolve()), "sha256": resolved.onnx_sha,
                 "dtype": resolved.manifest.dtype or "fp32", "geometry": resolved.manifest.geometry,
                 "shape_ranges": resolved.manifest.shape_ranges},
        "lora": lora_section(resolved),
        "build": {"opt_level": spec.opt_level, "workspace_gib": spec.workspace_gib,
                  "timing_cache": spec.timing_cache if flavour.has("timing_cache") else None,
                  "timing_cache_note": None if flavour.has("timing_cache") or not spec.timing_cache else
                  f"{flavour.label}: timing caches are no-ops; kernels are compiled just in time and kept in the "
                  f"runtime cache (TRTEngine runtime_cache)",
                  "weight_streaming": spec.weight_streaming},
        "fp8": fp8_report,
        "timings_s": timings,
    }
