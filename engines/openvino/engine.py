"""OpenVINO engines: the CPU (and Intel GPU) counterpart of a TensorRT plan, same manifest, cache and CLI.

`wanrt build EXPORT --flavour openvino --precision fp32|bf16|int8` compiles an export directory's ONNX into an
engine directory:

    model.blob          CompiledModel.export_model(): the compiled graph for one device, precision and CPU
    lora.safetensors    separate-mode exports only: the LoRA branch currently loaded (fed to the graph's LoRA
                        Parameters); `wanrt refit` replaces this file, the blob stays as it is
    manifest.json       kind "engine", payload.flavour "openvino": OpenVINO version, device, CPU model and ISA flags,
                        precision hint and the nodes kept in fp32, int8 quantized nodes, ONNX sha256, LoRA section

Loading (`OvEngine`) checks the manifest against the running OpenVINO and CPU before the blob is imported: a blob
only loads in the OpenVINO version that compiled it, and a bf16/int8 blob uses ISA the CPU must have; each mismatch
is one EngineError line that says to rebuild. Precision decisions (what stays fp32 under a bf16 hint, NNCF int8)
live in engines/openvino/precision.py.

LoRA hot-swap: OpenVINO folds ONNX initializers into Constants. Before compiling, each `lora.<module>.A/B/bias`
Constant is replaced by a Parameter of the same name, shape and type, so the branch weights are inputs of the
compiled model: a swap is `set_tensor` on the infer request (no recompile), and the tensors stay bound across runs.
Parameters rather than OpenVINO's stateful Variables (what openvino.genai's LoRA adapters use): they survive
export_model/import_model unchanged, need no ReadValue/Assign ops, and NNCF leaves them alone (they are not weights
it could compress), so the branch stays at the precision of its activations.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wanrt.artifacts import (
    MANIFEST_NAME,
    cpu_info,
    atomic_output_dir,
    atomic_path,
    build_manifest,
    check_artifact_files,
    confined_path,
    sha256_file,
    spec_hash,
    write_manifest,
)
from wanrt.engines.cache import EngineCache, engine_cache_dir, same_engine
from wanrt.engines.openvino import CAPABILITY, FLAVOUR, INSTALL_HINT, PRECISIONS
from wanrt.engines.openvino import precision as ov_precision
from wanrt.engines.openvino.lora_form import (DEFAULT_FORM, apply_form, bound_factor, check_form,
                                              narrow_lora_inputs)
from wanrt.engines.onnx_dir import export_digests, onnx_initializer_info, read_onnx_dir
from wanrt.engines.lora_swap import (SWAP_KIND, check_swappable, loaded_from_export, loaded_identity, record_swap,
                                    swap_section)
from wanrt.errors import BadInputError, EngineError, MissingDependencyError, first_line
from wanrt.manifests import EngineManifest, ExportManifest

BLOB_NAME = "model.blob"
TIME_BLOB_NAME = "time.blob"  # bf16/int8: the timestep embedding, compiled fp32 (engines/openvino/precision.py)
LORA_NAME = "lora.safetensors"
# Bumped when a change here or in precision.py changes what a build produces (part of the cache key).
BUILD_REVISION = 4


def require_openvino():
    """The openvino module, or MissingDependencyError naming the extra."""
    try:
        import openvino as ov
    except ImportError as e:
        raise MissingDependencyError(f"the openvino flavour needs OpenVINO ({e}); {INSTALL_HINT}") from None
    return ov


def openvino_version() -> str:
    return require_openvino().__version__.split("-")[0]


# Narrows (never widens) what OpenVINO reports, e.g. FP32,INT8: how a test or a user sees, on a CPU with BF16,
# exactly what wanrt does on one without (build, bench and tools refuse or skip bf16 with the same line).
CAPABILITIES_ENV = "WANRT_OV_CAPABILITIES"


def device_capabilities(core, device: str) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of `device`, narrowed by $WANRT_OV_CAPABILITIES: the one reader every
    precision decision goes through (build, the ov backend, bench, tools/bench_cpu_engines, the tests)."""
    try:
        caps = [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError as e:
        raise BadInputError(f"OpenVINO device {device!r} is not available here ({str(e).splitlines()[0][:100]}); "
                            f"devices: {', '.join(core.available_devices)}") from None
    limit = os.environ.get(CAPABILITIES_ENV)
    if limit is not None:
        allowed = {c.strip().upper() for c in limit.split(",") if c.strip()}
        caps = [c for c in caps if c.upper() in allowed]
    return caps


def precision_refusal(core, device: str, precision: str) -> str | None:
    """None when `device` runs `precision` natively, else the one-line reason naming what it offers."""
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision {precision}: the openvino flavour builds {', '.join(PRECISIONS)}")
    caps = device_capabilities(core, device)
    if CAPABILITY[precision] in caps:
        return None
    offered = [p for p in PRECISIONS if CAPABILITY[p] in caps]
    return (f"OpenVINO {device} has no {CAPABILITY[precision]} support on this machine ({cpu_info()['model']}; "
            f"capabilities {', '.join(caps) or 'none'}): use --precision {' or '.join(offered) or 'fp32'}, or run on "
            f"a CPU with {'avx512_bf16 or AMX' if precision == 'bf16' else 'VNNI or AMX'}")


def supported_precisions(device: str = "CPU") -> dict[str, str | None]:
    """{precision: None if `device` runs it, else why not}, for callers that measure what the machine has."""
    core = require_openvino().Core()
    return {p: precision_refusal(core, device, p) for p in PRECISIONS}


def check_precision_supported(core, device: str, precision: str) -> list[str]:
    """EngineError when `device` cannot run `precision` natively; returns its capabilities."""
    why = precision_refusal(core, device, precision)
    if why is not None:
        raise EngineError(why)
    return device_capabilities(core, device)


@dataclass(frozen=True)
class OvEngineSpec:
    """How an OpenVINO engine is compiled. Written into the manifest; its key fields are part of the cache key."""

    precision: str = "fp32"  # fp32 | bf16 | int8 (weights) | w8a8 (weights and activations)
    device: str = "CPU"  # an OpenVINO device name: CPU, GPU, GPU.1
    keep_fp32: str = "wan"  # bf16/int8/w8a8: which nodes stay fp32 (engines/openvino/precision.KEEP_POLICIES)
    calib: int = 8  # w8a8: calibration samples (calibration_feeds)
    lora_form: str = DEFAULT_FORM  # separate LoRA: the branch's graph form (engines/openvino/lora_form.FORMS)
    cache: bool = True
    cache_dir: str | None = None

    def key_fields(self) -> dict[str, Any]:
        d: dict[str, Any] = {"precision": self.precision, "device": self.device}
        if self.precision != "fp32":
            d["keep_fp32"] = self.keep_fp32
        if self.precision == "w8a8":
            d["calib"] = self.calib
        if self.lora_form != "plain":  # plain is what every engine built before the forms: its keys stay
            d["lora_form"] = self.lora_form
        return d


def calibration_feeds(export_manifest: ExportManifest, n: int, defaults: dict[str, Any], seed: int = 0,
                      shift: float = 5.0) -> list[dict[str, Any]]:
    """`n` inputs from the DiT's own distribution as a video run visits it: the timesteps of an n-step flow-matching
    schedule with Wan's 480p shift (t = 1000 s' where s' = shift s / (1 + (shift - 1) s), s from 1 down to 1/n),
    seeded N(0,1) latents and embeddings at a typical in-range shape, batch 1, the LoRA branch at its exported
    weights (`defaults`)."""
    import numpy as np
    import torch

    from wanrt.dit_io import DitIO, ShapeRange, VideoShape  # lazy: torch, which only a w8a8 build needs here

    shapes = ShapeRange.from_manifest(export_manifest.shape_ranges, ShapeRange(VideoShape(1, 16, 16),
                                                                               VideoShape(81, 1280, 1280)))
    io = DitIO(export_manifest.geometry, shapes=shapes)
    gen = torch.Generator().manual_seed(seed)
    feeds = []
    for i in range(n):
        s = 1.0 - i / n
        t = 1000.0 * shift * s / (1.0 + (shift - 1.0) * s)
        sample = io.dummy_inputs(1, shapes.example_shape(), timestep=t, generator=gen)
        feeds.append({**{k: v.numpy().astype(np.float32) for k, v in sample.items()}, **defaults})
    return feeds


# ------------------------------------------------------------------------------------------------ the graph
def read_with_lora_inputs(core, onnx_path: Path, lora_names: list[str]):
    """(ov.Model, {name: default numpy value}) with every LoRA Constant turned into a Parameter of the same name."""
    from openvino import opset13 as ops

    try:
        model = core.read_model(str(onnx_path))
    except RuntimeError as e:  # a damaged or foreign file: OpenVINO's parser says why in its first line
        raise BadInputError(f"{onnx_path}: OpenVINO cannot read it ({first_line(e)}); re-export it with "
                            f"`wanrt export`") from None
    wanted = set(lora_names)
    params, defaults = [], {}
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name in wanted and op.get_type_name() == "Constant":
            param = ops.parameter(op.get_output_partial_shape(0), op.get_output_element_type(0), name=name)
            param.output(0).get_tensor().set_names({name})
            defaults[name] = op.get_data().copy()
            op.output(0).replace(param.output(0))
            params.append(param)
    missing = sorted(wanted - set(defaults))
    if missing:
        raise EngineError(f"OpenVINO's graph of {onnx_path.name} has no constant for {len(missing)} LoRA weights "
                          f"(e.g. {missing[:2]}); re-export")
    if params:
        model.add_parameters(params)
        model.validate_nodes_and_infer_types()
    return model, defaults


def compile_properties(precision: str, threads: int | None = None) -> dict[str, Any]:
    """Compile-time properties: the inference precision hint (int8 runs its non-quantized ops in bf16 where the
    CPU has it, like TensorRT's mixed FP8/BF16) and the thread count."""
    props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                             "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return props


# ------------------------------------------------------------------------------------------------ build
def _lora_section(export_manifest: ExportManifest, onnx_path: Path) -> dict[str, Any] | None:
    lora = export_manifest.lora
    if not lora.get("enabled"):
        return None
    if lora.get("mode") != "separate":
        return {"mode": lora.get("mode"), "refit": None, "modules": {}, "loaded": loaded_from_export(lora),
                "refittable_weights": {}, "history": []}
    return swap_section(lora, onnx_initializer_info(onnx_path))


def engine_cache_key(spec: OvEngineSpec, onnx_sha: str, version: str, cpu: dict[str, Any]) -> str:
    return spec_hash({"flavour": FLAVOUR, "revision": BUILD_REVISION, "spec": spec.key_fields(),
                      "onnx_sha256": onnx_sha, "openvino": version,
                      "cpu": cpu["model"], "isa": cpu["isa"]})


def _cache(spec: OvEngineSpec):
    return EngineCache(engine_cache_dir(spec)) if spec.cache else None


def _resolve(onnx_dir: str | os.PathLike, spec: OvEngineSpec):
    """Every decision before the compile: (export manifest, ONNX path, Core, device capabilities, CPU, ONNX sha256,
    cache key). Refuses a non-fp32 export and a precision the device lacks."""
    check_form(spec.lora_form)
    export_manifest, onnx_path = read_onnx_dir(onnx_dir)
    if (export_manifest.dtype or "fp32") != "fp32":
        raise BadInputError(f"{onnx_dir}: the openvino flavour compiles an fp32 export (precision comes from "
                            f"--precision, like TensorRT's weakly typed mode); re-export with --dtype fp32")
    core = require_openvino().Core()
    caps = check_precision_supported(core, spec.device, spec.precision)
    cpu = cpu_info()
    # the bytes compiled (model.onnx and its external data), not the recorded hash: a replaced file is a new engine
    onnx_sha, content_sha = export_digests(onnx_dir, export_manifest, onnx_path)
    key = engine_cache_key(spec, content_sha, openvino_version(), cpu)
    return export_manifest, onnx_path, core, caps, cpu, onnx_sha, key


def cache_key(onnx_dir: str | os.PathLike, spec: OvEngineSpec) -> str:
    """The engine cache key a build of `onnx_dir` at `spec` gets (hashes the ONNX bytes; compiles nothing)."""
    return _resolve(onnx_dir, spec)[-1]


def build_openvino_engine(onnx_dir: str | os.PathLike, spec: OvEngineSpec, out_dir: str | os.PathLike,
                          force: bool = False, threads: int | None = None) -> EngineManifest:
    """Compile an export directory for OpenVINO into `out_dir` (or reuse the same engine from the cache);
    returns the engine manifest. Nothing is written unless the compile succeeds."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    export_manifest, onnx_path, core, caps, cpu, onnx_sha, key = _resolve(onnx_dir, spec)
    existing = same_engine(out_dir, key)
    if existing is not None:
        return existing
    cache = _cache(spec)
    if cache is not None:
        hit = cache.fetch(key, out_dir, force=force)
        if hit is not None:
            return hit
    section = _lora_section(export_manifest, onnx_path)
    lora_names = list(section["refittable_weights"]) if section and section["refit"] else []
    with atomic_output_dir(out_dir, force=force, kind="engine") as tmp:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        model, defaults = read_with_lora_inputs(core, onnx_path, lora_names)
        model, form_report = apply_form(model, spec.lora_form)
        timings["read"] = time.perf_counter() - t
        with tempfile.TemporaryDirectory(prefix="wanrt-ov-", dir=tmp) as work:
            t = time.perf_counter()
            calibration = calibration_feeds(export_manifest, spec.calib, defaults) if spec.precision == "w8a8" \
                else None
            model, time_model, precision_report = ov_precision.apply(model, spec, Path(work), defaults, core,
                                                                     calibration)
            timings["precision"] = time.perf_counter() - t
            form_report["lora_inputs"] = narrow_lora_inputs(model, spec.precision, caps)
            t = time.perf_counter()
            compiled = core.compile_model(model, spec.device, compile_properties(spec.precision, threads))
            if time_model is not None:  # the timestep embedding, fp32 (engines/openvino/precision.split_time_path)
                time_blob = _blob(core.compile_model(time_model, spec.device, compile_properties("fp32", threads)))
                (tmp / TIME_BLOB_NAME).write_bytes(time_blob)
            timings["compile"] = time.perf_counter() - t
            del model, time_model
        blob = _blob(compiled)
        (tmp / BLOB_NAME).write_bytes(blob)
        time_file = tmp / TIME_BLOB_NAME
        if defaults:
            _save_lora(tmp / LORA_NAME, defaults)
        payload = {
            "flavour": FLAVOUR,
            "engine": BLOB_NAME,
            "plan_bytes": len(blob),
            "plan_sha256": sha256_file(tmp / BLOB_NAME),
            "lora_weights": LORA_NAME if defaults else None,
            "time_engine": ({"file": TIME_BLOB_NAME, "bytes": time_file.stat().st_size,
                             "sha256": sha256_file(time_file), "precision": "fp32"} if time_file.exists() else None),
            "cache_key": key,
            "openvino": {"version": openvino_version(), "device": spec.device, "capabilities": caps,
                         "properties": {k: str(v) for k, v in compile_properties(spec.precision).items()}},
            "cpu": cpu,
            "precision": spec.precision,
            "precision_report": precision_report,
            "lora_form": form_report,
            "io": {i["name"]: i for i in export_manifest.inputs},
            "onnx": {"dir": str(Path(onnx_dir).resolve()), "sha256": onnx_sha, "dtype": "fp32",
                     "geometry": export_manifest.geometry, "shape_ranges": export_manifest.shape_ranges},
            "lora": section or {"mode": None, "refit": None, "modules": {}, "refittable_weights": {}},
            "timings_s": {**timings, "total": time.perf_counter() - t0},
        }
        manifest = build_manifest("engine", {"engine": spec, "onnx": export_manifest.specs}, payload)
        write_manifest(tmp, manifest)
    if cache is not None:
        cache.store(key, out_dir)
    return EngineManifest.from_dict(manifest, out_dir / MANIFEST_NAME)


def _blob(compiled) -> bytes:
    blob = compiled.export_model()
    return blob.getvalue() if isinstance(blob, io.BytesIO) else bytes(blob)


def _save_lora(path: Path, tensors: dict[str, Any]) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:  # the one file writer: the user's umask, not safetensors' 0600
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))


def _load_lora(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise EngineError(f"{path}: unreadable LoRA weights ({str(e).splitlines()[0][:100]}); rebuild or refit") \
            from None


# ------------------------------------------------------------------------------------------------ load
def load_openvino_manifest(engine_dir: str | os.PathLike) -> EngineManifest:
    """The manifest of an OpenVINO engine directory, with the blob and LoRA weights as built: checked before
    OpenVINO reads them."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise BadInputError(f"{engine_dir}: not an engine directory")
    manifest = EngineManifest.read(engine_dir)
    if manifest.flavour != FLAVOUR:
        raise BadInputError(f"{engine_dir}: a TensorRT engine, not an OpenVINO one (load it with backend 'trt')")
    for k in (FLAVOUR, "cpu"):
        if manifest.section(k) is None:
            raise EngineError(f"{engine_dir}/manifest.json lacks '{k}'; rebuild the engine")
    check_artifact_files(engine_dir, manifest.document)  # blob and LoRA weights as built, before OpenVINO reads them
    return manifest


def check_compatibility(manifest: EngineManifest, version: str, cpu: dict[str, Any], device: str) -> None:
    """EngineError (one line) when the blob was compiled by another OpenVINO or for a CPU this one is not."""
    built, built_cpu = manifest.runtime, manifest.section("cpu")
    if built.get("version") != version:
        raise EngineError(f"this engine was compiled by OpenVINO {built.get('version')}; installed is {version}: "
                          f"blobs load only in the version that compiled them; rebuild with `wanrt build "
                          f"--flavour openvino`")
    if built.get("device", "CPU") != device:
        raise EngineError(f"this engine was compiled for OpenVINO device {built.get('device')}, asked to run on "
                          f"{device}: rebuild for {device}")
    if device.startswith("CPU"):
        missing = sorted(set(built_cpu.get("isa", [])) - set(cpu["isa"]))
        if built_cpu.get("model") != cpu["model"] or missing:
            why = f"lacks {', '.join(missing)}" if missing else "is another model"
            raise EngineError(f"this engine was compiled on {built_cpu.get('model')}; this CPU ({cpu['model']}) "
                              f"{why}: rebuild here with `wanrt build --flavour openvino`")


def check_blob(engine_dir: Path, manifest: EngineManifest, verify_hash: bool = False,
               entry: dict[str, Any] | None = None) -> Path:
    """The blob (or `entry`'s: the time engine) exists with the recorded size, and sha256 when asked (every load
    checks the sha256 of what the manifest lists already: load_openvino_manifest)."""
    name, size, sha = (manifest.engine, manifest.plan_bytes, manifest.plan_sha256) if entry is None else \
        (entry.get("file"), entry.get("bytes"), entry.get("sha256"))
    blob = confined_path(engine_dir, name, "engine blob")
    if not blob.is_file():
        raise EngineError(f"{blob}: missing; rebuild with `wanrt build --flavour openvino`")
    if blob.stat().st_size != size or (verify_hash and sha256_file(blob) != sha):
        raise EngineError(f"{blob}: differs from the manifest (truncated or replaced); rebuild with `wanrt build`")
    return blob


class OvEngine:
    """A loaded OpenVINO engine directory: `infer({name: numpy})` -> numpy prediction; `set_lora(LoraWeights)`
    swaps a separate-mode LoRA in place (no recompile)."""

    def __init__(self, engine_dir: str | os.PathLike, device: str | None = None, threads: int | None = None,
                 verify_hash: bool = False):
        ov = require_openvino()
        self.dir = Path(engine_dir)
        self.manifest = m = load_openvino_manifest(self.dir)
        self.device = device or m.runtime.get("device", "CPU")
        check_compatibility(self.manifest, openvino_version(), cpu_info(), self.device)
        blob = check_blob(self.dir, self.manifest, verify_hash)
        core = ov.Core()
        # import_model must be given the compile-time precision hint again: without it OpenVINO 2026.4 applies the
        # device default (bf16 on a BF16-capable CPU) to the imported fp32 graph (7% error on tiny, measured)
        config = compile_properties(m.precision, threads)
        t0 = time.perf_counter()
        self.compiled = _import_blob(core, blob, self.device, config)
        self.time_compiled = None
        if m.section("time_engine"):
            time_blob = check_blob(self.dir, m, verify_hash, entry=m.section("time_engine"))
            self.time_compiled = _import_blob(core, time_blob, self.device, compile_properties("fp32", threads))
        self.load_s = time.perf_counter() - t0
        _check_inputs(self.dir, self.manifest, self.compiled, self.time_compiled)
        self.request = self.compiled.create_infer_request()
        self.time_request = self.time_compiled.create_infer_request() if self.time_compiled is not None else None
        self.section = m.lora
        self.lora_names = list(self.section.get("refittable_weights", {})) if self.section.get("refit") else []
        self._lora_tensors: dict[str, Any] = {}
        self._lora_types = {i.get_any_name(): i.get_element_type() for i in self.compiled.inputs}
        if self.lora_names:
            stored = _load_lora(confined_path(self.dir, m.section("lora_weights") or LORA_NAME, "LoRA weights"))
            self._bind_lora(stored)
        self.threads = threads

    def _bind_lora(self, tensors: dict[str, Any]) -> None:
        missing = [n for n in self.lora_names if n not in tensors]
        if missing:
            raise EngineError(f"{self.dir}: LoRA weights lack {missing[:2]}; refit or rebuild the engine")
        held = {}
        for name in self.lora_names:
            # bf16 inputs (lora_form.narrow_lora_inputs) are converted here, once per swap
            held[name], tensor = bound_factor(tensors[name], self._lora_types[name])
            self.request.set_tensor(name, tensor)  # it reads held[name] on every run: kept alive above
        self._lora_tensors = held

    def set_lora(self, lora, source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Swap the LoRA branch (LoraWeights of the same module set, rank <= the engine's; None removes it)."""
        if not self.lora_names:
            check_swappable(self.section.get("mode"))  # raises the one-line reason
        from wanrt.engines.lora_weights import swap_weights  # lazy: torch, at a swap

        t0 = time.perf_counter()
        weights = swap_weights(self.section, lora)
        self._bind_lora({n: t.numpy() for n, t in weights.items()})
        self.section["loaded"] = loaded_identity(lora, source)
        return {"swap_s": time.perf_counter() - t0, "weights": len(weights), "loaded": self.section["loaded"]}

    def infer(self, feeds: dict[str, Any]):
        """{input name: numpy array} -> prediction (numpy, a copy)."""
        for name, value in feeds.items():
            if name == "timestep" and self.time_request is not None:
                self.time_request.set_tensor(name, _ov_tensor(value))
                self.time_request.infer()
                for i, out in enumerate(self.time_compiled.outputs):  # the fp32 time path feeds the main graph
                    self.request.set_tensor(out.get_any_name(), self.time_request.get_output_tensor(i))
            else:
                self.request.set_tensor(name, _ov_tensor(value))
        try:
            self.request.infer()
        except RuntimeError as e:  # e.g. a shape outside what the engine was compiled for
            raise EngineError(f"{self.dir}: OpenVINO inference failed ({first_line(e)})") from None
        return self.request.get_output_tensor(0).data.copy()


def _check_inputs(engine_dir: Path, manifest: EngineManifest, compiled, time_compiled) -> None:
    """The imported graph takes the inputs its manifest names (video inputs, LoRA weights, the time engine's
    outputs): a manifest edited or copied from another engine is refused at load, not at the first inference."""
    names = {n for i in compiled.inputs for n in i.get_names()}
    lora = manifest.lora
    wanted = set(manifest.io) | set(lora.get("refittable_weights") or {} if lora.get("refit") else ())
    if time_compiled is not None:
        wanted = (wanted - {"timestep"}) | {n for o in time_compiled.outputs for n in o.get_names()}
    missing = sorted(wanted - names)
    if missing:
        raise EngineError(f"{engine_dir}: the blob does not take inputs its manifest names ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}); rebuild with `wanrt build --flavour openvino`")


def _import_blob(core, blob: Path, device: str, config: dict[str, Any]):
    try:
        with open(blob, "rb") as f:
            return core.import_model(io.BytesIO(f.read()), device, config)
    except RuntimeError as e:
        raise EngineError(f"{blob}: OpenVINO cannot import it ({str(e).splitlines()[0][:120]}); rebuild") from None


def _ov_tensor(value):
    import numpy as np
    import openvino as ov

    return ov.Tensor(np.ascontiguousarray(value), shared_memory=True)


# ------------------------------------------------------------------------------------------------ refit
def refit_openvino_engine_dir(engine_dir: str | os.PathLike, lora_file: str | None = None, rank: int | None = None,
                              scale: float | None = None, seed: int | None = None, allow_pickle: bool = False,
                              out_dir: str | os.PathLike | None = None, force: bool = False,
                              model=None, stack: tuple = ()) -> EngineManifest:
    """`wanrt refit` for OpenVINO engines: compute the new branch weights (same layout and refusals as TensorRT
    refit), check them against the engine by loading it, and rewrite its LoRA weights + manifest atomically. The
    compiled blob is copied as is: nothing is recompiled."""
    from wanrt.engines.lora_weights import swap_weights  # lazy: torch, with a LoRA
    from wanrt.engines.trt.refit import (check_new_lora, load_base_model, refit_source,  # torch: with a LoRA
                                          resolve_new_lora)

    engine_dir = Path(engine_dir)
    manifest = load_openvino_manifest(engine_dir)
    section = manifest.lora
    if not section.get("mode"):
        raise EngineError("this OpenVINO engine has no LoRA to swap; build it from an export with --rank/--lora "
                          "--lora-mode separate")
    if section.get("refit") != SWAP_KIND:
        raise EngineError(f"this OpenVINO engine holds a {section.get('mode')} LoRA folded into its weights; only "
                          f"separate-mode engines swap LoRAs: export with --lora-mode separate, or rebuild")
    check_new_lora(lora_file, rank, scale, allow_pickle, out_dir, engine_dir, force, stack)  # before the model
    t0 = time.perf_counter()
    model = model if model is not None else load_base_model(manifest)
    lora = resolve_new_lora(manifest, model, lora_file, rank, scale, seed, allow_pickle=allow_pickle, stack=stack)
    weights = swap_weights(section, lora)
    t_weights = time.perf_counter() - t0
    target = Path(out_dir) if out_dir is not None else engine_dir
    in_place = target.resolve() == engine_dir.resolve()
    lora_name = manifest.section("lora_weights") or LORA_NAME  # the file the engine loads its branch from
    with atomic_output_dir(target, force=force or in_place, kind="engine") as tmp:
        for f in engine_dir.iterdir():
            if f.is_file() and f.name not in (MANIFEST_NAME, lora_name):
                shutil.copy2(f, tmp / f.name)  # a copy, never a hard link: engines do not share inodes
        _save_lora(confined_path(tmp, lora_name, "LoRA weights"), {n: t.numpy() for n, t in weights.items()})
        record_swap(section, lora, refit_source(lora_file, rank, stack))
        refit = {"weights_s": t_weights, "total_s": time.perf_counter() - t0, "recompiled": False}
        write_manifest(tmp, replace(manifest, refits=[*manifest.refits, refit]).to_dict())
    return EngineManifest.read(target)
