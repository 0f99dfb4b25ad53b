"""LoRA hot-swap by TensorRT refit, in the two shapes an engine can carry its LoRA.

- separate: the engine holds the LoRA branch as its own weights `lora.<module>.A` ([in, r]) and `.B` ([r, out],
  scale folded in) [+ `.bias`], built with only those refittable (REFIT_INDIVIDUAL), so the base weights keep full
  optimization. A new LoRA needs the same targets and a rank <= the engine's; a smaller rank is zero-padded, which
  is exact ((x [A 0]) [B; 0] = x A B). Anything else is a LoraError that says a rebuild is needed.
- merged: the engine holds W + s B A. New weights are always computed from the original base weights (the model
  the ONNX was exported from, reloaded from its ModelSpec) plus the new delta, in fp32 and cast once, exactly as the
  export merged them: never cumulatively, so A -> B -> A gives back A's weights bit for bit.

`refit_weights` (pure, CPU) computes every refittable weight; `apply_refit` hands them to trt.Refitter (GPU);
`refit_engine_dir` does both for an engine directory and rewrites it atomically with the manifest recording which
LoRA is loaded. Refusals (not refittable, wrong rank or targets) happen before anything is loaded on the GPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from wanrt.artifacts import (MANIFEST_NAME, atomic_output_dir, check_output_dir, confined_path, sha256_file,
                             write_manifest)
from wanrt.engines.lora_swap import loaded_identity, record_swap
from wanrt.engines.lora_weights import check_weights, section_weights
from wanrt.engines.trt.engine import TRTEngine, load_engine_manifest, trt_weights_dtype
from wanrt.errors import BadInputError, EngineError, LoraError
from wanrt.export.api import LoraSpec, merge_entries_into, resolve_lora
from wanrt.export.lora_formats import check_lora_exists, check_lora_source
from wanrt.export.model import ModelSpec, load_transformer
from wanrt.manifests import EngineManifest


def engine_lora(manifest: EngineManifest) -> dict[str, Any]:
    """The manifest's lora section; EngineError if the engine is not refittable."""
    lora = manifest.lora
    if not lora.get("refit"):
        asked = (manifest.specs.get("engine") or {}).get("refit", "auto")
        # Name the real cause: with `--refit auto` the build decided (no LoRA, FP8 merged, or no GPU to compile a
        # refittable engine); suggesting `--refit yes` where that is refused would send the user in a circle.
        if not lora.get("mode"):
            why, fix = "the export has no LoRA", "export with --lora/--rank and rebuild"
        elif manifest.precision == "fp8" and lora["mode"] != "separate":
            why, fix = "FP8 engines refit only in separate mode", "export with --lora-mode separate and rebuild"
        elif asked == "no":
            why, fix = "it was built with --refit no", "rebuild it without --refit no"
        elif manifest.section("gpu", "not recorded") is None:  # recorded as built without one
            why = ("it was built without a GPU, where --refit auto makes a non-refittable engine (TensorRT-RTX "
                   "compiles refittable ones only with CUDA)")
            fix = "rebuild it on an NVIDIA GPU (`wanrt build ONNX_DIR`); refitting needs a GPU too"
        else:
            why, fix = "it was built non-refittable", "rebuild it with --refit yes"
        raise EngineError(f"this engine is not refittable: {why}; {fix}")
    return lora


# --------------------------------------------------------------------------------------------- LoRA + base
def onnx_specs(manifest: EngineManifest) -> tuple[Any, Any]:
    """(ModelSpec, LoraSpec) the engine's ONNX was exported with."""
    specs = manifest.export_specs
    model = ModelSpec(**specs["model"]) if "model" in specs else ModelSpec()
    lora = LoraSpec(**specs["lora"]) if "lora" in specs else LoraSpec()
    return model, lora


def load_base_model(manifest: EngineManifest):
    """The transformer the ONNX was exported from, without its swappable LoRA (its `--merge` LoRAs folded in, as
    the export did), in the export dtype."""
    model_spec, lora_spec = onnx_specs(manifest)
    dtype = manifest.dtype or model_spec.dtype
    model = load_transformer(replace(model_spec, dtype=dtype))
    merge_entries_into(model, lora_spec, model_spec.expert)
    return model


def check_new_lora(lora_file: str | None, rank: int | None, scale: float | None, allow_pickle: bool = False,
                   out_dir: str | os.PathLike | None = None, engine_dir: str | os.PathLike | None = None,
                   force: bool = False, stack: tuple = ()) -> None:
    """Every refit input checked before the base model loads (minutes on 14B) or anything is written; shared by
    the TensorRT refit and the OpenVINO swap: a LoRA source (the whole validation pass: tensors, dtypes, finite
    values), a finite scale, and an `-o` directory that may be written."""
    import math

    if lora_file is None and rank is None and not stack:
        raise BadInputError("refit needs --lora FILE or --rank N (synthetic)")
    if scale is not None and not math.isfinite(scale):
        raise LoraError(f"--lora-scale {scale!r}: must be a finite number")
    for file in [lora_file] + [e.file for e in stack]:
        if file is not None:
            check_lora_source(file, allow_pickle)  # a missing file or peft directory first, in its one wording
    if out_dir is not None and Path(out_dir).resolve() != Path(engine_dir or out_dir).resolve():
        check_output_dir(out_dir, force, kind="engine")


def resolve_new_lora(manifest: EngineManifest, model, lora_file: str | None = None, rank: int | None = None,
                     scale: float | None = None, seed: int | None = None, targets: str | None = None,
                     allow_pickle: bool = False, stack: tuple = ()):
    """A LoRA file (optionally re-ranked to `rank`), a synthetic one of `rank`, or a stack (`file`/`rank` first,
    then `stack`'s LoraEntry items at their strengths), on the engine's targets."""
    if lora_file is None and rank is None and not stack:
        raise BadInputError("refit needs --lora FILE or --rank N (synthetic)")
    if lora_file is not None:  # the cheap check; check_new_lora does them all
        check_lora_exists(lora_file)
    _, old = onnx_specs(manifest)
    spec = replace(old, file=lora_file, rank=rank, stack=tuple(stack), targets=targets or old.targets,
                   mode=manifest.lora["mode"], scale=old.scale if scale is None else scale,
                   seed=old.seed if seed is None else seed, allow_pickle=allow_pickle)
    lora, _energy = resolve_lora(model, spec, onnx_specs(manifest)[0].expert)  # a Wan2.2 expert's engine: its part
    return lora


def base_weights_from_model(model, names) -> dict[str, Any]:
    state = dict(model.named_parameters())
    missing = [n for n in names if n not in state]
    if missing:
        raise EngineError(f"the base model lacks {len(missing)} weights the engine refits, e.g. {missing[:3]}")
    return {n: state[n].detach() for n in names}


# --------------------------------------------------------------------------------------------- the weights
def refit_weights(manifest: EngineManifest, lora, base: dict[str, Any] | Callable[[list[str]], dict[str, Any]] | None
                  = None) -> dict[str, Any]:
    """{engine weight name: CPU tensor in the engine's dtype} for every refittable weight, for `lora` (canonical
    LoraWeights; None = remove the LoRA). `base` (merged mode): {"<module>.weight": original tensor, ...} or a
    callable returning it for a list of names. The arithmetic is wanrt.lora_layout's, as in the export."""
    return section_weights(engine_lora(manifest), lora, base)


# --------------------------------------------------------------------------------------------- TensorRT (GPU)
def apply_refit(flavour, engine, weights: dict[str, Any], onnx_path: Path | None = None) -> dict[str, Any]:
    """Refit `engine` (ICudaEngine) with `weights` (torch tensors). Individually refittable engines take exactly
    these weights (uploaded to the GPU, refit from device memory). Engines built with REFIT (every weight
    refittable, for flavours without REFIT_INDIVIDUAL) are refit through OnnxParserRefitter from the ONNX with
    these initializers overridden. Returns timings."""
    trt = flavour.trt
    if not engine.refittable:
        raise EngineError("this engine was not built refittable; rebuild with --refit yes")
    logger = flavour.logger("ERROR")
    refitter = trt.Refitter(engine, logger)
    allowed = set(refitter.get_all_weights())
    unknown = [n for n in weights if n not in allowed]
    if unknown:
        raise EngineError(f"{len(unknown)} weights are not refittable in this engine (e.g. {unknown[:3]}); rebuild")
    t0 = time.perf_counter()
    others = allowed - set(weights)
    if others:
        if onnx_path is None or not flavour.has("onnx_refitter"):
            raise EngineError(f"this engine refits {len(others)} more weights than the LoRA's (built with REFIT, "
                              f"not REFIT_INDIVIDUAL) and its ONNX is not available to supply them")
        host = {n: t.detach().contiguous().cpu() for n, t in weights.items()}
        parser_refitter = trt.OnnxParserRefitter(refitter, logger)
        if not parser_refitter.load_model_proto(Path(onnx_path).read_bytes(), str(onnx_path)):
            raise EngineError(f"cannot load {onnx_path} for refit")
        for name, t in host.items():
            if not parser_refitter.load_initializer(name, t.data_ptr(), t.numel() * t.element_size()):
                raise EngineError(f"TensorRT refused new weights for {name} ({t.dtype}, {tuple(t.shape)})")
        t1 = time.perf_counter()
        ok = parser_refitter.refit_model_proto()
        torch.cuda.synchronize()
        del host
    else:
        keep = []
        for name, tensor in weights.items():
            t = tensor.to("cuda").contiguous()
            keep.append(t)
            w = trt.Weights(trt_weights_dtype(trt, t.dtype), t.data_ptr(), t.numel())
            if not refitter.set_named_weights(name, w, trt.TensorLocation.DEVICE):
                raise EngineError(f"TensorRT refused new weights for {name} ({t.dtype}, {tuple(t.shape)})")
        missing = list(refitter.get_missing_weights())
        if missing:
            raise EngineError(f"refit also needs {len(missing)} other weights (e.g. {missing[:3]})")
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        ok = refitter.refit_cuda_engine()
        torch.cuda.synchronize()
        del keep
    if not ok:
        raise EngineError("TensorRT refit failed (see the TensorRT log)")
    return {"upload_s": t1 - t0, "refit_s": time.perf_counter() - t1, "weights": len(weights)}


def refit_loaded_engine(engine, lora, source: dict[str, Any] | None = None, base=None) -> dict[str, Any]:
    """Hot-swap the LoRA of a loaded TRTEngine in memory; updates its manifest copy. `base`: original weights for
    merged engines (default: reload the base model from the ONNX's ModelSpec)."""
    manifest = engine.manifest
    section = engine_lora(manifest)
    if section["mode"] != "separate" and base is None:
        base = getattr(engine, "_refit_base", None)
        if base is None:  # once per engine: the original weights of the refittable modules
            model = load_base_model(manifest)
            names = [n for e in section["modules"].values() for n in e.values()]
            base = engine._refit_base = base_weights_from_model(model, names)
            del model
    weights = section_weights(section, lora, base)
    check_weights(section, weights)
    timings = apply_refit(engine.flavour, engine.engine, weights)
    section["loaded"] = loaded_identity(lora, source)
    return {**section, "timings": timings}


def refit_source(lora_file: str | None, rank: int | None, stack: tuple = ()) -> dict[str, Any]:
    """What a refit records of where its LoRA came from: the file, a synthetic rank, and the stack's entries."""
    source: dict[str, Any] = {"file": lora_file} if lora_file else {"synthetic_rank": rank} if rank else {}
    return {**source, "stack_entries": [str(e) for e in stack]} if stack else source


# --------------------------------------------------------------------------------------------- engine directory
def prepare_refit(engine_dir: str | os.PathLike, lora_file: str | None = None, rank: int | None = None,
                  scale: float | None = None, seed: int | None = None, allow_pickle: bool = False,
                  model=None, out_dir: str | os.PathLike | None = None,
                  force: bool = False, stack: tuple = ()) -> tuple[EngineManifest, dict[str, Any], Any]:
    """CPU half of a refit: (manifest, new weights, LoRA). Every refusal happens here, the input checks before
    the base model loads."""
    manifest = load_engine_manifest(engine_dir)
    section = engine_lora(manifest)
    check_new_lora(lora_file, rank, scale, allow_pickle, out_dir, engine_dir, force, stack)
    model = model if model is not None else load_base_model(manifest)
    lora = resolve_new_lora(manifest, model, lora_file, rank, scale, seed, allow_pickle=allow_pickle, stack=stack)
    base = None
    if section["mode"] != "separate":
        names = [n for e in section["modules"].values() for n in e.values()]
        base = base_weights_from_model(model, names)
    weights = section_weights(section, lora, base)
    check_weights(section, weights)
    return manifest, weights, lora


def refit_engine_dir(engine_dir: str | os.PathLike, lora_file: str | None = None, rank: int | None = None,
                     scale: float | None = None, seed: int | None = None, allow_pickle: bool = False,
                     out_dir: str | os.PathLike | None = None, force: bool = False,
                     stack: tuple = ()) -> EngineManifest:
    """Refit an engine directory with a new LoRA and write it back (or to out_dir) atomically; returns the new
    manifest. A failure leaves the directory as it was."""
    engine_dir = Path(engine_dir)
    manifest, weights, lora = prepare_refit(engine_dir, lora_file, rank, scale, seed, allow_pickle, out_dir=out_dir,
                                            force=force, stack=stack)
    t0 = time.perf_counter()
    engine = TRTEngine(engine_dir, runtime_cache=None)
    onnx_dir = manifest.onnx.get("dir")
    onnx_path = Path(onnx_dir) / "model.onnx" if onnx_dir and (Path(onnx_dir) / "model.onnx").is_file() else None
    timings = apply_refit(engine.flavour, engine.engine, weights, onnx_path)
    plan = engine.engine.serialize()
    target = Path(out_dir) if out_dir is not None else engine_dir
    with atomic_output_dir(target, force=True, kind="engine") as tmp:
        plan_path = confined_path(tmp, manifest.engine, "payload.engine")
        with open(plan_path, "wb") as f:
            f.write(memoryview(plan))
        for extra in engine_dir.iterdir():  # runtime cache and anything else beside the plan
            if extra.is_file() and extra.name not in (manifest.engine, MANIFEST_NAME):
                (tmp / extra.name).write_bytes(extra.read_bytes())
        record_swap(manifest.lora, lora, refit_source(lora_file, rank, stack))
        sha = sha256_file(plan_path)
        write_manifest(tmp, replace(manifest, plan_bytes=plan_path.stat().st_size, plan_sha256=sha,
                                    cache_key=f"{manifest.cache_key}-refit-{sha[:12]}",  # no longer the built content
                                    refits=[*manifest.refits, {**timings, "total_s": time.perf_counter() - t0}],
                                    ).to_dict())
    del engine, plan
    return EngineManifest.read(target)
