"""Backends behind one small interface: a DiT forward (latents, timestep, text, image) -> noise prediction.

    eager    PyTorch as diffusers runs it (fp32/bf16/fp16, SDPA attention): the reference
    compile  torch.compile of the repeated transformer block (regional) or of the whole model
    ort      ONNX Runtime on an exported artifact (CPU EP; CUDA EP with I/O bound to torch tensors)
    and one backend per engine flavour's runtime (engines/registry.py: trt for TensorRT and TensorRT-RTX, ov for
    OpenVINO), each an EngineBackend around the flavour's runner

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

from wanrt.artifacts import cache_root, spec_hash, writable_cache
from wanrt.engines.lora_swap import loaded_identity, overridable_onnx, swap_section
from wanrt.engines.lora_weights import swap_weights
from wanrt.engines.onnx_dir import onnx_initializer_info, read_onnx_dir
from wanrt.engines import registry
from wanrt.engines.trt.acceptance import tensorrt_acceptance
from wanrt.errors import BadInputError, EngineError, MissingDependencyError, WanrtError
from wanrt.export.api import LoraSpec, export_model, merge_entries_into, resolve_lora
from wanrt.export.lora import apply_lora, stack_loras
from wanrt.export.model import load_transformer
from wanrt.export.onnx_export import ExportSpec
from wanrt.manifests import EngineManifest

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

    def set_loras(self, loras, labels=None) -> dict[str, Any]:
        """Swap in a stack: `loras` (LoraWeights, each at its strength as its `lora_scale`) become one branch
        (wanrt.export.lora.stack_loras) on backends that swap LoRAs (`set_lora`); an empty list removes the LoRA.
        A new strength is a new stack of the same files: the same branch, new weights."""
        set_lora = getattr(self, "set_lora", None)
        if set_lora is None:
            raise EngineError(f"backend '{self.name}' cannot swap LoRAs: use ort, or an engine built from a "
                              f"separate-mode export")
        return set_lora(stack_loras(loras, labels) if loras else None)

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
                 providers: list | None = None,
                 verify: bool = False,  # noqa: ARG002 - every load checks each listed file's sha256 (read_onnx_dir)
                 optimization: str = "all", lora_form: str = "plain"):
        ort = _require_ort()
        t0 = time.perf_counter()
        artifact = Path(artifact)
        manifest, onnx_path = read_onnx_dir(artifact)
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
        config = _config_from_geometry(manifest.geometry)
        super().__init__(io_dtype, device, config)
        self.manifest, self.artifact, self.threads = manifest, artifact, threads
        self.shape_ranges = manifest.shape_ranges
        self.providers = self.session.get_providers()
        self.out_channels = config.get("out_channels", 16)
        # LoRA hot-swap (issue 12): the session is rebuilt once with the LoRA initializers overridable
        self._session_args = (onnx_path, opts, providers)
        self._lora_feeds: dict[str, torch.Tensor] = {}
        self._lora_section: dict[str, Any] | None = None
        self.lora_form = lora_form  # the LoRA branch's graph form in the swappable session (lora_swap.shared_a_onnx)
        if lora_form != "plain":  # a rewritten graph is the swappable one: build it now (EngineError unless separate)
            self._make_swappable()
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
                "threads": self.threads, "sha256": self.manifest.sha256}

    def set_lora(self, lora, source: dict[str, Any] | None = None) -> dict[str, Any]:
        """Swap the LoRA of a separate-mode export without reloading its weights (see notes in
        wanrt.engines.lora_swap): `lora` is a LoraWeights of the same module set with rank <= the exported one
        (zero-padded), None removes it. The first call rebuilds the session once with the LoRA initializers
        overridable (setup['swap_session_s']); later calls only bind new tensors."""
        t0 = time.perf_counter()
        if self._lora_section is None:
            self._make_swappable()
        weights = swap_weights(self._lora_section, lora)  # refusals happen here, before any state changes
        self._lora_feeds = {n: t.to(device=self.device, dtype=self._lora_types[n]).contiguous()
                            for n, t in weights.items()}
        self._lora_section["loaded"] = loaded_identity(lora, source)
        return {"swap_s": time.perf_counter() - t0, "weights": len(weights), "loaded": self._lora_section["loaded"]}

    def _make_swappable(self) -> None:
        ort = _require_ort()
        onnx_path, opts, providers = self._session_args
        # EngineError: not separate mode
        section = swap_section(self.manifest.lora, onnx_initializer_info(onnx_path))
        t0 = time.perf_counter()
        # the proto is loaded without its weights; ORT finds external data beside the original file
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(onnx_path.parent))
        proto = overridable_onnx(onnx_path, list(section["refittable_weights"]), self.lora_form)
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


# ------------------------------------------------------------------------------------------------ engines
class EngineBackend(BackendBase):
    """An engine of any registered flavour (engines/registry.py): the flavour's runner loads it (an engine
    directory, or for flavours that compile on load an export, built once into the shared engine cache) and runs
    torch tensors; this class adds what every backend shares. `set_lora` exists where the flavour swaps LoRAs as
    data."""

    def __init__(self, flavour, artifact: str | Path, device: torch.device | str = "cpu", **options: Any):
        t0 = time.perf_counter()
        self.name = flavour.backend
        self.engine = flavour.runner(artifact, device, **options)
        self.manifest: EngineManifest = self.engine.manifest
        super().__init__(self.engine.dtype, self.engine.device, _config_from_geometry(self.manifest.geometry))
        self.precision, self.artifact = self.manifest.precision, Path(self.engine.dir)
        self.shape_ranges = self.manifest.shape_ranges  # the engine's profiles may be narrower; the engine checks
        if hasattr(self.engine, "set_lora"):
            self.set_lora = self.engine.set_lora
        self.setup.update(self.engine.setup)
        self.setup["load_s"] = time.perf_counter() - t0

    def forward(self, latents, timestep, text, image=None) -> torch.Tensor:
        latents, timestep, text, image = self.prepare(latents, timestep, text, image)
        feed = {"latents": latents, "timestep": timestep, "text": text}
        if image is not None:
            feed["image"] = image
        return self.engine.run(feed)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "artifact": str(self.artifact), "precision": self.precision,
                **self.engine.describe()}

    def close(self) -> None:
        self.engine.close()


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


REGISTRY: dict[str, BackendEntry] = {
    "eager": BackendEntry("eager", "PyTorch eager (diffusers, SDPA): the reference", "model", _check_eager),
    "compile": BackendEntry("compile", "torch.compile, regional (repeated block)", "model", _check_compile),
    "ort": BackendEntry("ort", "ONNX Runtime on the exported ONNX (CPU EP / CUDA EP + I/O binding)", "artifact",
                        _check_ort),
    # every engine flavour's backend, as the registry names it
    **{b: BackendEntry(b, registry.for_backend(b).backend_description, "artifact",
                       registry.for_backend(b).check_runtime) for b in registry.backends()},
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
    return EngineBackend(registry.for_backend(name), artifact, device=device, **options)


# ------------------------------------------------------------------------------------------------ models
def build_transformer(model_spec, lora_spec=None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """ModelSpec + LoraSpec -> transformer with the LoRA applied, built exactly as the exporter builds it
    (wanrt.export.api.resolve_lora + apply_lora), so eager and an artifact of the same specs are one function.
    Returns (model, LoRA summary)."""
    model = load_transformer(model_spec)
    if lora_spec is None:
        return model, {}
    merge_entries_into(model, lora_spec, model_spec.expert)
    lora, _ = resolve_lora(model, lora_spec, model_spec.expert)
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
                       progress: Callable[[str], None] | None = None, precision: str | None = None) -> BackendBase:
    """The CLI's way to a backend: eager/compile build the model from specs; ort loads `engine` (an export
    directory) or exports the specs once into the cache; trt loads `engine` (an engine directory). `precision`:
    for a flavour that compiles exports on load (OpenVINO), the engine's (its runner refuses what it cannot)."""
    say = progress or (lambda _m: None)
    check_backend(name, device)
    lora_spec = lora_spec if lora_spec is not None else LoraSpec()  # none given: the base model, on every path
    if precision not in (None, "fp32") and registry.for_backend(name) is None:  # before any export
        raise BadInputError(f"--precision {precision}: backend '{name}' runs fp32 (the model or its export as is)")
    if REGISTRY[name].needs == "model":
        if engine is not None:
            raise BadInputError(f"--artifact is for backends ort/trt; '{name}' builds the model from --model")
        expert = f", {model_spec.expert} expert" if model_spec.expert else ""
        say(f"building {model_spec.source} ({model_spec.dtype}{expert})")
        model, _ = build_transformer(model_spec, lora_spec)
        return create_backend(name, model=model, device=device, **(compile_options or {}))
    flavour = registry.for_backend(name)
    if flavour is not None and not flavour.loads_exports:
        if engine is None:
            raise BadInputError(f"backend '{name}' needs an engine directory: build one with 'wanrt build', "
                                "then pass --artifact DIR")
        return create_backend(name, artifact=engine, device=device, cuda_graph=cuda_graph)
    export_s = None
    if engine is None:
        key = spec_hash(model_spec, lora_spec)
        engine = (cache_dir or cache_root()) / "exports" / key
        if not (Path(engine) / "manifest.json").is_file():
            engine = writable_cache("exports", cache_dir) / key  # read-only cache: a temporary, with a warning
            say(f"exporting {model_spec.source} to ONNX ({engine})")
            _, export_s = export_artifact(model_spec, lora_spec, Path(engine), force=True)
    options = {"precision": precision} if precision is not None and flavour is not None else {}
    backend = create_backend(name, artifact=engine, device=device, threads=threads, **options)  # ort, or an engine
    # compiled from the export by its flavour (at `precision`, else its default)
    if export_s is not None:
        backend.setup["export_s"] = export_s
    return backend
