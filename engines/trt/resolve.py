"""Every decision of a build before anything expensive: flavour, targets, precision, profiles, refit kind, cache key
(`prepare` -> `ResolvedBuild`), and what a CPU-only builder cannot do."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wanrt.artifacts import spec_hash
from wanrt.choices import Precision, Refit
from wanrt.engines.trt.engine_spec import EngineSpec
from wanrt.engines.trt.flavour import (MIN_CC, PRECISIONS, RTX_DEFAULT_TARGETS, Flavour, check_precision_supported,
                                       gpu_info, load_flavour)
from wanrt.engines.onnx_dir import export_digests, lora_refit_names, onnx_initializer_info, read_onnx_dir
from wanrt.engines.trt.profiles import ProfileSpec, check_against_export, resolve_profiles
from wanrt.errors import BadInputError, EngineError
from wanrt.manifests import ExportManifest


def resolve_targets(flavour: Flavour, spec: EngineSpec, gpu: dict[str, Any] | None,
                    precision: str = "bf16") -> tuple[list[str], bool]:
    """(compute capabilities the engine will run on, use the current GPU). Datacenter TensorRT builds for the GPU it
    runs on; TensorRT-RTX compiles ahead of time for explicit targets, the current GPU, or its default set (the
    part of it that runs `precision`: FP8 -> 8.9, 12.0, 12.1)."""
    if flavour.name == "tensorrt":
        if spec.compute_capabilities:
            raise EngineError("--compute-capability is a TensorRT-RTX option; datacenter TensorRT builds for the GPU "
                              "it runs on")
        if gpu is None:
            raise EngineError("building with datacenter TensorRT needs an NVIDIA GPU (none is visible); "
                              "--flavour rtx builds ahead of time without one")
        return [gpu["compute_capability"]], True
    if spec.compute_capabilities:
        flavour.require("compute_capability")
        for cc in spec.compute_capabilities:
            flavour.compute_capability_enum(cc)  # a target this version cannot compile: refused before any work
        return list(spec.compute_capabilities), False
    if gpu is not None:
        if gpu["compute_capability"].split(".")[0] in ("9", "10"):
            raise EngineError(f"{flavour.label} does not support {gpu['name']} (compute capability "
                              f"{gpu['compute_capability']}: Hopper/datacenter Blackwell); use --flavour tensorrt "
                              f"(see docs/engines.md)")
        return [gpu["compute_capability"]], True
    need = MIN_CC.get(precision, (0, 0))
    targets = [cc for cc in RTX_DEFAULT_TARGETS if tuple(int(v) for v in cc.split(".")) >= need]
    return targets, False


def resolve_precision(spec: EngineSpec, manifest: ExportManifest) -> str:
    dtype = manifest.dtype or "fp32"
    precision = spec.precision or dtype
    Precision.parse(precision, "--precision")
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision {precision}: TensorRT engines take {', '.join(PRECISIONS)} "
                            f"(--flavour openvino builds int8)")
    if precision != "fp8" and precision != dtype:
        raise BadInputError(f"--precision {precision}: the ONNX was exported in {dtype}; networks are strongly typed "
                            f"(precision comes from the ONNX dtypes), so re-export with --dtype {precision}")
    return precision


def resolve_refit(spec: EngineSpec, refit_names: dict[str, Any], precision: str, flavour: Flavour,
                  gpu: dict[str, Any] | None = None, dry_run: bool = False) -> str | None:
    """None (not refittable), "individual" (only the LoRA weights) or "all" (REFIT, when individual is missing).
    TensorRT-RTX's ahead-of-time compiler queries CUDA for refittable engines (1.7: Myelin CHECK failure without a
    GPU), so without a GPU `auto` builds a non-refittable engine and `yes` is refused up front."""
    Refit.parse(spec.refit, "--refit")
    has_lora = bool(refit_names["weights"])
    if spec.refit == "no" or (spec.refit == "auto" and not has_lora):
        return None
    if not has_lora:
        raise BadInputError("--refit yes: the ONNX has no LoRA (export with --lora/--rank) so there is nothing "
                            "to refit")
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


def compute_cache_key(spec: EngineSpec, onnx_sha: str, flavour: Flavour, targets: Sequence[str],
                      profiles: Sequence[ProfileSpec], gpu: dict[str, Any] | None, gpu_current: bool) -> str:
    return spec_hash({"spec": spec.key_fields(), "onnx_sha256": onnx_sha, "trt": flavour.info(),
                      "targets": list(targets), "gpu": gpu["name"] if gpu_current and gpu else None,
                      "profiles": [p.to_json() for p in profiles]})


@dataclass
class ResolvedBuild:
    """Every decision of a build, made before anything expensive (step 1-2)."""

    spec: EngineSpec
    onnx_dir: Path
    onnx_path: Path
    manifest: ExportManifest
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


def prepare(onnx_dir: str | os.PathLike, spec: EngineSpec, dry_run: bool = False) -> ResolvedBuild:
    """Read the export, pick flavour/targets/precision/profiles/refit mode, compute the cache key. `dry_run` lets
    datacenter TensorRT be configured without a GPU (no build)."""
    onnx_dir = Path(onnx_dir)
    manifest, onnx_path = read_onnx_dir(onnx_dir)
    precision = resolve_precision(spec, manifest)
    shape_ranges = manifest.shape_ranges
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
    refit_names = lora_refit_names(manifest.lora, initializers)
    refit_kind = resolve_refit(spec, refit_names, precision, flavour, gpu, dry_run)
    # the key hashes the bytes that go in (model.onnx + external data), never the sha256 the manifest records
    onnx_sha, content = export_digests(onnx_dir, manifest, onnx_path)
    key = compute_cache_key(spec, content, flavour, targets, profiles, gpu, gpu_current)
    return ResolvedBuild(spec, onnx_dir, onnx_path, manifest, precision, profiles, flavour, gpu, targets, gpu_current,
                     initializers, refit_names, refit_kind, onnx_sha, key)


def cpu_build_blocker(resolved: ResolvedBuild) -> str | None:
    """Why this build cannot run on this machine's CPU-only builder, said before any work (None: it can, or a GPU
    builds it). TensorRT-RTX 1.7 compiles without a GPU but crashes on opset-23 Attention and on bf16 separate-LoRA
    graphs (docs/engines.md); the child-process guard below still catches crashes nobody has seen yet."""
    if resolved.gpu_current or resolved.flavour.name != "rtx":
        return None
    export = resolved.manifest.specs.get("export", {})
    lora = resolved.manifest.specs.get("lora") or {}
    if (export.get("opset") or 0) >= 23:
        return (f"{resolved.onnx_dir} is opset {export['opset']}, which {resolved.flavour.label}'s CPU-only builder "
                f"cannot compile (no GPU here): re-export with --opset 18 (what `wanrt export` picks on a machine like "
                f"this one), or build on an NVIDIA GPU")
    if resolved.precision == "bf16" and lora.get("mode") == "separate" and lora.get("rank"):
        return (f"{resolved.onnx_dir} is a bf16 separate-LoRA graph, which {resolved.flavour.label}'s CPU-only builder "
                f"cannot compile (no GPU here): export with --lora-mode merged or --dtype fp16, or build on an "
                f"NVIDIA GPU")
    return None
