"""Backends behind one small interface: a DiT forward (latents, timestep, text, image) -> noise prediction.

    eager    PyTorch as diffusers runs it (fp32/bf16/fp16, SDPA attention): the reference
    compile  torch.compile of the repeated transformer block (regional) or of the whole model
    ort      ONNX Runtime on an exported artifact (CPU EP; CUDA EP with I/O bound to torch tensors)
    trt      a TensorRT engine through wanrt.engines.runtime (torch CUDA tensors, shapes per call, CUDA graphs)

All take and return torch tensors. Inputs are cast to the backend's dtype and moved to its device; `timestep` is
float32 [B]. Backends are selected by name (`create_backend`); a missing optional dependency raises
MissingDependencyError naming what to install, and `available_backends()` lists why each one is off.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from wanrt.artifacts import (artifact_kind, cache_root, check_artifact_files, confined_path, read_manifest,
                             spec_hash, writable_cache)
from wanrt.engines import runtime as engine_runtime
from wanrt.engines.acceptance import tensorrt_acceptance
from wanrt.errors import BadInputError, EngineError, MissingDependencyError, WanrtError
from wanrt.export.api import export_model, resolve_lora
from wanrt.export.lora import apply_lora
from wanrt.export.model import load_transformer
from wanrt.export.onnx_export import ExportSpec

# ONNX TensorProto element types (onnx.TensorProto.*), for ORT I/O binding without importing onnx.
_ONNX_ELEM = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}
_ORT_TYPE = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16}


# ------------------------------------------------------------------------------------------------ interface
@runtime_checkable
class Backend(Protocol):
    name: str
    dtype: torch.dtype  # what latents/text/image are cast to
    device: torch.device

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                image: torch.Tensor | None) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


class BackendBase:
    """Shared plumbing: input casting, device sync, a callable face, setup timings."""

    name = "base"

    def __init__(self, dtype: torch.dtype, device: torch.device | str, config: dict[str, Any]):
        self.dtype = dtype
        self.device = torch.device(device)
        self.config = dict(config)  # the transformer config (patch_size, image_dim, ...)
        self.setup: dict[str, float] = {}  # seconds: load_s, compile_s, export_s, build_s
        self.shape_ranges: dict[str, Any] | None = None  # artifacts: the exported range (payload shape_ranges)

    # one forward ---------------------------------------------------------------------------------------------
    def prepare(self, latents, timestep, text, image):
        dev, dt = self.device, self.dtype
        latents = latents.to(device=dev, dtype=dt)
        if timestep.ndim == 0:
            timestep = timestep.expand(latents.shape[0])
        timestep = timestep.to(device=dev, dtype=torch.float32)
        text = text.to(device=dev, dtype=dt)
        image = None if image is None else image.to(device=dev, dtype=dt)
        if self.config.get("image_dim") is not None and image is None:
            raise BadInputError("this I2V model needs an image embedding input")
        return latents.contiguous(), timestep.contiguous(), text.contiguous(), \
            None if image is None else image.contiguous()

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, latents, timestep, text, image=None) -> torch.Tensor:
        return self.forward(latents, timestep, text, image)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "setup_s": dict(self.setup)}

    def close(self) -> None:  # release sessions/engines
        pass


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The transformer's compute dtype (patch embedding), not a keep-in-fp32 module's."""
    emb = getattr(model, "patch_embedding", None)
    if emb is not None:
        return emb.weight.dtype
    return next(model.parameters()).dtype


# ------------------------------------------------------------------------------------------------ eager
class EagerBackend(BackendBase):
    """The diffusers WanTransformer3DModel as is (SDPA attention): the reference every other backend meets."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu"):
        t0 = time.perf_counter()
        model = model.to(device).eval().requires_grad_(False)
        super().__init__(_model_dtype(model), device, dict(model.config))
        self.model = model
        self.setup["load_s"] = time.perf_counter() - t0

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        latents, timestep, text, image = self.prepare(latents, timestep, text, image)
        with torch.inference_mode():
            return self.model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                              encoder_hidden_states_image=image, return_dict=False)[0]


class CompileBackend(EagerBackend):
    """torch.compile: the repeated WanTransformerBlock compiled once and reused by every block (regional), or
    the whole model with regional=False. Compilation happens lazily on the first call of each shape;
    `setup['compile_s']` records the first call's time."""

    name = "compile"

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu", regional: bool = True,
                 mode: str | None = None, backend: str = "inductor", dynamic: bool | None = False,
                 fullgraph: bool = True):
        super().__init__(model, device)
        self.options = {"regional": regional, "mode": mode, "compile_backend": backend, "dynamic": dynamic,
                        "fullgraph": fullgraph}
        kwargs = {"mode": mode, "backend": backend, "dynamic": dynamic, "fullgraph": fullgraph}
        if backend == "inductor" and self.device.type == "cpu" and not _has_cxx():
            raise MissingDependencyError("backend 'compile' (inductor on CPU) needs a C++ compiler (g++/clang++)")
        if regional and hasattr(self.model, "compile_repeated_blocks"):
            self.model.compile_repeated_blocks(**kwargs)
        elif regional:
            for block in self.model.blocks:
                block.compile(**kwargs)
        else:
            self.model.compile(**kwargs)
        self._seen: set[tuple] = set()

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        key = (tuple(latents.shape), latents.dtype)
        if key in self._seen:
            return super().forward(latents, timestep, text, image)
        t0 = time.perf_counter()
        out = super().forward(latents, timestep, text, image)
        self.synchronize()
        self._seen.add(key)
        self.setup["compile_s"] = self.setup.get("compile_s", 0.0) + time.perf_counter() - t0
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.options}


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


# ------------------------------------------------------------------------------------------------ ORT
def _require_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependencyError(f"backend 'ort' needs onnxruntime (pip install onnxruntime, or "
                                     f"onnxruntime-gpu for CUDA): {e}") from None
    return ort


class OrtBackend(BackendBase):
    """ONNX Runtime on an exported artifact directory (model.onnx + manifest.json).

    I/O goes through IOBinding with the torch tensors' own buffers on both EPs: inputs are bound in place and the
    output is written into a torch tensor allocated per call (CUDA EP: on the GPU, no host round trip).
    """

    name = "ort"

    def __init__(self, artifact: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
                 providers: list | None = None, verify: bool = False, optimization: str = "all"):
        ort = _require_ort()
        t0 = time.perf_counter()
        artifact = Path(artifact)
        manifest, onnx_path = load_onnx_artifact(artifact, verify=verify)
        device = torch.device(device)
        if providers is None:
            if device.type == "cuda":
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    raise MissingDependencyError("backend 'ort' on CUDA needs onnxruntime-gpu (pip install "
                                                 "onnxruntime-gpu; uninstall the CPU 'onnxruntime' first)")
                providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
            else:
                providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        threads = threads if threads is not None else torch.get_num_threads()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise BadInputError(f"{onnx_path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        io_dtype = _ORT_TYPE.get(self.inputs["latents"].type)
        if io_dtype is None:
            raise BadInputError(f"{onnx_path}: latents input type {self.inputs['latents'].type} is not supported")
        if io_dtype == torch.bfloat16 and device.type == "cpu":
            raise BadInputError(f"{artifact}: a bf16 graph needs the CUDA EP (ORT's CPU EP has no bf16 kernels); "
                                "export fp32 or fp16 for CPU")
        self.out_dtype = _ORT_TYPE[self.session.get_outputs()[0].type]
        geometry = manifest.get("payload", {}).get("geometry", {})
        config = _config_from_geometry(geometry)
        super().__init__(io_dtype, device, config)
        self.manifest, self.artifact, self.threads = manifest, artifact, threads
        self.shape_ranges = manifest.get("payload", {}).get("shape_ranges")
        self.providers = self.session.get_providers()
        self.out_channels = config.get("out_channels", 16)
        # LoRA hot-swap (issue 12): the session is rebuilt once with the LoRA initializers overridable
        self._session_args = (onnx_path, opts, providers)
        self._lora_feeds: dict[str, torch.Tensor] = {}
        self._lora_section: dict[str, Any] | None = None
        self.setup["load_s"] = time.perf_counter() - t0

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        latents, timestep, text, image = self.prepare(latents, timestep, text, image)
        feeds = {"latents": latents, "timestep": timestep, "text": text}
        if "image" in self.inputs:
            feeds["image"] = image
        out = torch.empty((latents.shape[0], self.out_channels, *latents.shape[2:]), dtype=self.out_dtype,
                          device=self.device)
        dev_type = "cuda" if self.device.type == "cuda" else "cpu"
        dev_id = (self.device.index or 0) if dev_type == "cuda" else 0
        binding = self.session.io_binding()
        for name, t in {**feeds, **self._lora_feeds}.items():
            binding.bind_input(name, dev_type, dev_id, _ONNX_ELEM[t.dtype], list(t.shape), t.data_ptr())
        binding.bind_output(self.output_name, dev_type, dev_id, _ONNX_ELEM[out.dtype], list(out.shape),
                            out.data_ptr())
        if dev_type == "cuda":
            # torch's work on the inputs must be done before ORT's stream reads them
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        if dev_type == "cuda":
            binding.synchronize_outputs()
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "artifact": str(self.artifact), "providers": self.providers,
                "threads": self.threads, "sha256": self.manifest.get("payload", {}).get("sha256")}

    def set_lora(self, lora, source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Swap the LoRA of a separate-mode export without reloading its weights (see notes in
        wanrt.engines.lora_swap): `lora` is a LoraWeights of the same module set with rank <= the exported one
        (zero-padded), None removes it. The first call rebuilds the session once with the LoRA initializers
        overridable (setup['swap_session_s']); later calls only bind new tensors."""
        from wanrt.engines.lora_swap import loaded_identity, swap_weights

        t0 = time.perf_counter()
        if self._lora_section is None:
            self._make_swappable()
        weights = swap_weights(self._lora_section, lora)  # refusals happen here, before any state changes
        self._lora_feeds = {n: t.to(device=self.device, dtype=self._lora_types[n]).contiguous()
                            for n, t in weights.items()}
        self._lora_section["loaded"] = loaded_identity(lora, source)
        return {"swap_s": time.perf_counter() - t0, "weights": len(weights), "loaded": self._lora_section["loaded"]}

    def _make_swappable(self) -> None:
        from wanrt.engines.onnx_dir import onnx_initializer_info
        from wanrt.engines.lora_swap import overridable_onnx, swap_section

        ort = _require_ort()
        onnx_path, opts, providers = self._session_args
        section = swap_section(self.manifest, onnx_initializer_info(onnx_path))  # EngineError: not separate mode
        t0 = time.perf_counter()
        # the proto is loaded without its weights; ORT finds external data beside the original file
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(onnx_path.parent))
        proto = overridable_onnx(onnx_path, list(section["refittable_weights"]))
        try:
            self.session = ort.InferenceSession(proto, sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineError(f"{onnx_path}: ONNX Runtime cannot load it with swappable LoRA weights "
                              f"({str(e).splitlines()[0]})") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        # ORT lists initializers-with-defaults apart from the required inputs
        self._lora_types = {i.name: _ORT_TYPE[i.type] for i in self.session.get_overridable_initializers()}
        missing = [n for n in section["refittable_weights"] if n not in self._lora_types]
        if missing:
            raise EngineError(f"{onnx_path}: ONNX Runtime does not expose {missing[:2]} as overridable; re-export")
        self._lora_section = section
        self.setup["swap_session_s"] = time.perf_counter() - t0


def load_onnx_artifact(directory: Path, verify: bool = False) -> tuple[dict[str, Any], Path]:  # noqa: ARG001
    """Check an export directory's manifest (kind onnx) and the sha256 of every file it lists before touching
    weights. `verify` is kept for callers; the check no longer depends on it."""
    if not directory.is_dir():
        raise BadInputError(f"{directory}: not a directory (want an export directory with model.onnx)")
    manifest = read_manifest(directory, kind="onnx")
    payload = manifest.get("payload", {})
    onnx_path = confined_path(directory, payload.get("onnx", "model.onnx"), "payload.onnx")
    if not onnx_path.is_file():
        raise BadInputError(f"{onnx_path}: missing (the manifest names it)")
    external = payload.get("external_data")
    if external and not confined_path(directory, external, "payload.external_data").is_file():
        raise BadInputError(f"{directory / str(external)}: external data file missing")
    # always, not only with verify: what runs is what the manifest describes (hashed once per process)
    check_artifact_files(directory, manifest)
    return manifest, onnx_path


def _config_from_geometry(geometry: dict[str, Any]) -> dict[str, Any]:
    """The transformer-config keys the pipeline reads, from a manifest's `geometry`."""
    if not geometry:
        return {"patch_size": (1, 2, 2), "image_dim": None, "out_channels": 16, "in_channels": 36}
    heads, head_dim = geometry.get("heads"), geometry.get("head_dim")
    return {
        "patch_size": tuple(geometry.get("patch_size", (1, 2, 2))),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": geometry.get("in_channels", 36),
        "out_channels": geometry.get("out_channels", 16),
        "text_dim": geometry.get("text_dim"),
        "image_dim": geometry.get("image_dim"),
        "added_kv_proj_dim": (heads * head_dim) if (heads and head_dim and geometry.get("image_dim")) else None,
        "ffn_dim": geometry.get("ffn_dim"),
        "num_layers": geometry.get("num_layers"),
        "freq_dim": geometry.get("freq_dim", 256),
    }


# ------------------------------------------------------------------------------------------------ TensorRT
def _require_trt_runtime():
    if not torch.cuda.is_available():
        raise MissingDependencyError("backend 'trt' needs an NVIDIA GPU with CUDA and a CUDA build of torch "
                                     "(this machine has none)")
    return engine_runtime


class TrtBackend(BackendBase):
    """A TensorRT engine directory through wanrt.engines.runtime.TRTEngine: torch CUDA tensors in and out, input
    shapes set per call within the engine's profiles, and (cuda_graph=True) one CUDA graph captured per input
    shape, replayed with the inputs copied into its static buffers."""

    name = "trt"

    def __init__(self, artifact: str | Path, device: torch.device | str = "cuda", cuda_graph: bool = False,
                 verify: bool = False):
        runtime = _require_trt_runtime()
        t0 = time.perf_counter()
        device = torch.device(device)
        if device.type != "cuda":
            raise BadInputError("backend 'trt' runs on CUDA only; pass --device cuda")
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            self.engine = runtime.TRTEngine(artifact, device=index, verify_hash=verify)
        except WanrtError:
            raise
        except Exception as e:  # noqa: BLE001 - TensorRT raises plain RuntimeErrors
            raise EngineError(f"{artifact}: cannot load the engine ({str(e).splitlines()[0]})") from None
        self.manifest = self.engine.manifest
        payload = self.manifest.get("payload", {})
        onnx = payload.get("onnx", {})
        super().__init__(self.engine.dtypes["latents"], torch.device("cuda", index),
                         _config_from_geometry(onnx.get("geometry") or {}))
        self.precision = payload.get("precision")
        self.shape_ranges = onnx.get("shape_ranges")  # the engine's profiles may be narrower; TRTEngine checks
        self.artifact, self.cuda_graph = Path(artifact), cuda_graph
        self._graphs: dict[tuple, tuple[Any, dict[str, torch.Tensor], torch.Tensor]] = {}
        self.graph_failures: list[str] = []
        self.setup["load_s"] = time.perf_counter() - t0

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        latents, timestep, text, image = self.prepare(latents, timestep, text, image)
        feed = {"latents": latents, "timestep": timestep, "text": text}
        if image is not None:
            feed["image"] = image
        if not self.cuda_graph:
            return self.engine.infer(feed)["prediction"]
        key = tuple((k, tuple(v.shape)) for k, v in feed.items())
        graph = self._graphs.get(key) or self._capture(key, feed)
        if graph is None:  # this shape could not be captured: run it eagerly
            return self.engine.infer(feed)["prediction"]
        g, static, out = graph
        for name, t in feed.items():
            static[name].copy_(t)
        g.replay()
        return out.clone()

    def _capture(self, key, feed):
        """Capture one engine execution for this shape (TensorRT needs one plain run after a shape change)."""
        static = {k: v.clone() for k, v in feed.items()}
        out = self.engine.infer(static)["prediction"]  # shape setup + output shape
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                self.engine.infer(static, out=out)
            torch.cuda.current_stream(self.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.engine.infer(static, out=out)
        except RuntimeError as e:
            self.graph_failures.append(f"{key}: {str(e).splitlines()[0]}")
            self._graphs[key] = None
            return None
        self._graphs[key] = (g, static, out)
        return self._graphs[key]

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "artifact": str(self.artifact), "cuda_graph": self.cuda_graph,
                "precision": self.precision, "graphs": sum(1 for v in self._graphs.values() if v is not None)}
        if self.graph_failures:
            info["graph_failures"] = self.graph_failures
        try:
            info["engine_device_memory_mb"] = self.engine.device_memory_bytes / 2**20
        except Exception:  # noqa: BLE001 - informative only
            pass
        return info

    def close(self) -> None:
        self._graphs.clear()
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


# ------------------------------------------------------------------------------------------------ OpenVINO
def _require_openvino():
    from wanrt.engines.openvino import require_openvino  # MissingDependencyError naming the [openvino] extra

    return require_openvino()


class OvBackend(BackendBase):
    """An OpenVINO engine (wanrt.engines.openvino): an engine directory from `wanrt build --flavour openvino`, or
    an export directory compiled once into the engine cache at `precision` (fp32, bf16, int8). Host tensors in and
    out; OpenVINO owns its device (`ov_device`: CPU, GPU, GPU.1; no other code per device); `threads` is
    OpenVINO's inference thread count. `set_lora` swaps a separate-mode LoRA without recompiling."""

    name = "ov"

    def __init__(self, artifact: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
                 precision: str | None = None, ov_device: str | None = None, verify: bool = False):
        _require_openvino()
        from wanrt.engines.openvino import OvEngine, OvEngineSpec, build_openvino_engine

        t0 = time.perf_counter()
        if torch.device(device).type != "cpu":
            raise BadInputError("backend 'ov' takes host tensors; choose the OpenVINO device with ov_device "
                                "(CPU, GPU), not --device")
        artifact = Path(artifact)
        build_s = None
        if artifact_kind(artifact) == "onnx":  # compile the export once, reuse it from the engine cache after
            spec = OvEngineSpec(precision=precision or "fp32", device=ov_device or "CPU")
            name = f"ov-{spec_hash(str(artifact.resolve()), spec.key_fields())}"
            engine_dir = cache_root("engines") / name
            if not (engine_dir / "manifest.json").is_file():  # a read-only cache still serves what it holds
                engine_dir = writable_cache("engines") / name
            build_openvino_engine(artifact, spec, engine_dir, force=True, threads=threads)
            build_s = time.perf_counter() - t0
        else:
            engine_dir = artifact
        self.engine = OvEngine(engine_dir, device=ov_device, threads=threads, verify_hash=verify)
        payload = self.engine.manifest["payload"]
        super().__init__(torch.float32, "cpu", _config_from_geometry(payload["onnx"].get("geometry") or {}))
        if precision is not None and payload["precision"] != precision:
            raise BadInputError(f"{artifact}: an OpenVINO {payload['precision']} engine, asked for {precision}")
        self.precision, self.threads, self.artifact = payload["precision"], threads, engine_dir
        self.shape_ranges = payload["onnx"].get("shape_ranges")
        if build_s is not None:
            self.setup["build_s"] = build_s
        self.setup["load_s"] = time.perf_counter() - t0

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        latents, timestep, text, image = self.prepare(latents, timestep, text, image)
        feeds = {"latents": latents.numpy(), "timestep": timestep.numpy(), "text": text.numpy()}
        if image is not None:
            feeds["image"] = image.numpy()
        return torch.from_numpy(self.engine.infer(feeds))

    def set_lora(self, lora, source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Swap a separate-mode LoRA (same contract as OrtBackend.set_lora); the compiled model is kept."""
        return self.engine.set_lora(lora, source)

    def describe(self) -> dict[str, Any]:
        p = self.engine.manifest["payload"]
        return {**super().describe(), "artifact": str(self.artifact), "precision": self.precision,
                "ov_device": self.engine.device, "threads": self.threads, "openvino": p["openvino"]["version"],
                "keep_fp32": (p.get("precision_report") or {}).get("keep_fp32")}


def _check_ov(device: torch.device) -> None:
    _require_openvino()
    if device.type != "cpu":
        raise BadInputError("backend 'ov' takes host tensors (device cpu); its OpenVINO device is ov_device")


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class BackendEntry:
    name: str
    description: str
    needs: str  # "model" (a torch transformer) or "artifact" (an export/engine directory)
    check: Callable[[torch.device], None] = field(repr=False)


def _check_eager(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("--device cuda: this torch build has no CUDA (torch.version.cuda is None)")


def _check_compile(device: torch.device) -> None:
    _check_eager(device)
    if device.type == "cpu" and not _has_cxx():
        raise MissingDependencyError("backend 'compile' (inductor on CPU) needs a C++ compiler (g++/clang++)")


def _check_ort(device: torch.device) -> None:
    ort = _require_ort()
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MissingDependencyError("backend 'ort' on CUDA needs onnxruntime-gpu (pip install onnxruntime-gpu)")


def _check_trt(_device: torch.device) -> None:
    _require_trt_runtime()


REGISTRY: dict[str, BackendEntry] = {
    "eager": BackendEntry("eager", "PyTorch eager (diffusers, SDPA): the reference", "model", _check_eager),
    "compile": BackendEntry("compile", "torch.compile, regional (repeated block)", "model", _check_compile),
    "ort": BackendEntry("ort", "ONNX Runtime on the exported ONNX (CPU EP / CUDA EP + I/O binding)", "artifact",
                        _check_ort),
    "trt": BackendEntry("trt", "TensorRT engine (wanrt.engines.runtime), CUDA only", "artifact", _check_trt),
    "ov": BackendEntry("ov", "OpenVINO engine (CPU / Intel GPU; fp32, bf16, int8)", "artifact", _check_ov),
}


def check_backend(name: str, device: torch.device | str = "cpu") -> None:
    """Raise BadInputError for an unknown name, MissingDependencyError when its dependency is missing."""
    if name not in REGISTRY:
        raise BadInputError(f"--backend {name!r}: choose one of {', '.join(REGISTRY)}")
    REGISTRY[name].check(torch.device(device))


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """{name: None if usable on `device`, else the reason it is disabled}."""
    out = {}
    for name in REGISTRY:
        try:
            check_backend(name, device)
            out[name] = None
        except WanrtError as e:
            out[name] = str(e)
    return out


def create_backend(name: str, *, model: torch.nn.Module | None = None, artifact: str | Path | None = None,
                   device: torch.device | str = "cpu", **options: Any) -> BackendBase:
    """A backend by name. eager/compile take `model` (a WanTransformer3DModel with its LoRA applied);
    ort/trt take `artifact` (an export or engine directory). Options go to the backend's constructor."""
    check_backend(name, device)
    entry = REGISTRY[name]
    if entry.needs == "model" and model is None:
        raise BadInputError(f"backend '{name}' needs a PyTorch transformer (model=...)")
    if entry.needs == "artifact" and artifact is None:
        kind = "an export directory (wanrt export)" if name == "ort" else "an engine directory (wanrt build)"
        raise BadInputError(f"backend '{name}' needs {kind}; pass --artifact DIR")
    if name == "eager":
        return EagerBackend(model, device=device, **options)
    if name == "compile":
        return CompileBackend(model, device=device, **options)
    if name == "ort":
        return OrtBackend(artifact, device=device, **options)
    if name == "ov":
        return OvBackend(artifact, device=device, **options)
    return TrtBackend(artifact, device=device, **options)


# ------------------------------------------------------------------------------------------------ models
def build_transformer(model_spec, lora_spec=None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """ModelSpec + LoraSpec -> transformer with the LoRA applied, built exactly as the exporter builds it
    (wanrt.export.api.resolve_lora + apply_lora), so eager and an artifact of the same specs are one function.
    Returns (model, LoRA summary)."""
    model = load_transformer(model_spec)
    if lora_spec is None:
        return model, {}
    lora, _ = resolve_lora(model, lora_spec)
    if lora is None:
        return model, {}
    apply_lora(model, lora, lora_spec.mode)
    return model, {**lora.summary(), "mode": lora_spec.mode, "targets": lora_spec.targets}


def export_artifact(model_spec, lora_spec, out_dir: Path, dtype: str | None = None, max_shape=None,
                    min_shape=None, force: bool = False) -> tuple[Path, float]:
    """Export (model, LoRA) to ONNX through wanrt.export.api.export_model; returns (dir, seconds)."""
    kwargs: dict[str, Any] = {"dtype": dtype or model_spec.dtype, "validate": False}
    if max_shape is not None:
        kwargs["max_shape"] = max_shape
    if min_shape is not None:
        kwargs["min_shape"] = min_shape
    spec = ExportSpec(**kwargs)
    t0 = time.perf_counter()
    export_model(model_spec, lora_spec, spec, out_dir, force=force, progress=False, acceptance=tensorrt_acceptance)
    return Path(out_dir), time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ from specs
def backend_from_specs(name: str, model_spec=None, lora_spec=None, engine: str | Path | None = None,
                       device: torch.device | str = "cpu", cache_dir: Path | None = None, threads: int | None = None,
                       cuda_graph: bool = False, compile_options: dict[str, Any] | None = None,
                       progress: Callable[[str], None] | None = None) -> BackendBase:
    """The CLI's way to a backend: eager/compile build the model from specs; ort loads `engine` (an export
    directory) or exports the specs once into the cache; trt loads `engine` (an engine directory)."""
    say = progress or (lambda _m: None)
    check_backend(name, device)
    if REGISTRY[name].needs == "model":
        if engine is not None:
            raise BadInputError(f"--artifact is for backends ort/trt; '{name}' builds the model from --model")
        say(f"building {model_spec.source} ({model_spec.dtype})")
        model, _ = build_transformer(model_spec, lora_spec)
        return create_backend(name, model=model, device=device, **(compile_options or {}))
    if name == "trt":
        if engine is None:
            raise BadInputError("backend 'trt' needs an engine directory: build one with 'wanrt build', "
                                "then pass --artifact DIR")
        return create_backend("trt", artifact=engine, device=device, cuda_graph=cuda_graph)
    export_s = None
    if engine is None:
        key = spec_hash(model_spec, lora_spec)
        engine = (cache_dir or cache_root()) / "exports" / key
        if not (Path(engine) / "manifest.json").is_file():
            engine = writable_cache("exports", cache_dir) / key  # read-only cache: a temporary, with a warning
            say(f"exporting {model_spec.source} to ONNX ({engine})")
            _, export_s = export_artifact(model_spec, lora_spec, Path(engine), force=True)
    backend = create_backend(name, artifact=engine, device=device, threads=threads)  # ort, or ov (fp32)
    if export_s is not None:
        backend.setup["export_s"] = export_s
    return backend
