"""Run an engine directory with torch CUDA tensors: `TRTEngine(engine_dir)(latents, timestep, text, image)`.

Loading checks, in order and before the plan is deserialized: the manifest (kind, TensorRT flavour and version
against the running one, GPU compute capability against the plan's targets), the plan file (size, and sha256 when
asked), and TensorRT-RTX's header check (`Runtime.get_engine_validity`). Each failure is one EngineError that says
what to rebuild; a corrupt or truncated plan never reaches the deserializer. Inputs outside every optimization
profile are refused with the allowed ranges (`check_input_shapes`, pure Python, also used without a GPU).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from wanrt.engines.trt.flavour import (
    LABELS,
    RTX_DEFAULT_TARGETS,
    Flavour,
    gpu_info,
    load_flavour,
    polygraphy_trt,
)
from wanrt.engines.trt.profiles import ProfileSpec, select_profile

from wanrt.artifacts import confined_path, write_bytes_atomic
from wanrt.errors import BadInputError, EngineError
from wanrt.manifests import EngineManifest

RUNTIME_CACHE_NAME = "runtime.cache"


# --------------------------------------------------------------------------------------------- checks (no GPU)
def load_engine_manifest(engine_dir: str | os.PathLike) -> EngineManifest:
    """The manifest of a TensorRT engine directory, with the plan (and all it lists) as built: checked before the
    plan is deserialized."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise BadInputError(f"{engine_dir}: not an engine directory")
    manifest = EngineManifest.read(engine_dir, check_files=True)
    for key in ("trt", "targets", "profiles", "io"):
        if manifest.section(key) is None:
            raise EngineError(f"{engine_dir}/manifest.json lacks '{key}'; rebuild the engine")
    return manifest


def check_compatibility(manifest: EngineManifest, flavour_info: dict[str, Any], gpu: dict[str, Any] | None) -> None:
    """EngineError when the plan was built by another TensorRT (flavour or version) or for another GPU."""
    built = manifest.section("trt")
    if built["flavour"] != flavour_info["flavour"]:
        raise EngineError(f"this engine was built with {built['label']}; the loaded runtime is "
                          f"{LABELS[flavour_info['flavour']]} {flavour_info['version']}: load it with --flavour "
                          f"{built['flavour']} or rebuild")
    if built["version"] != flavour_info["version"]:
        raise EngineError(f"this engine was built with {built['label']}; installed is {flavour_info['label']}: "
                          f"plans only load in the version that built them; rebuild with `wanrt build`")
    if gpu is None:
        raise EngineError("running a TensorRT engine needs an NVIDIA GPU; none is visible to torch")
    cc = gpu["compute_capability"]
    targets = list(manifest.section("targets"))
    if built["flavour"] == "rtx" and targets == list(RTX_DEFAULT_TARGETS):
        ok = cc in targets or (int(cc.split(".")[0]) >= 12)
    else:
        ok = cc in targets
    if not ok:
        raise EngineError(f"this engine targets compute capability {', '.join(targets)}; {gpu['name']} is {cc}: "
                          f"rebuild on this GPU (or --compute-capability {cc} with TensorRT-RTX)")
    built_gpu = (manifest.section("gpu") or {}).get("name")
    if built_gpu and built_gpu != gpu["name"]:
        warnings.warn(f"engine built on {built_gpu}, running on {gpu['name']} (same compute capability {cc}); "
                      f"TensorRT may run slower than a plan built here", stacklevel=3)


def check_input_shapes(manifest: EngineManifest, shapes: dict[str, tuple[int, ...]]) -> int:
    """The optimization profile index for these input shapes; BadInputError naming what is wrong otherwise."""
    inputs = {n: v for n, v in manifest.io.items() if v["mode"] == "input"}
    missing = [n for n in inputs if n not in shapes]
    extra = [n for n in shapes if n not in inputs]
    if missing or extra:
        raise BadInputError(f"engine inputs are {list(inputs)}; got {list(shapes)}")
    for name, v in inputs.items():
        want, got = v["shape"], tuple(shapes[name])
        if len(want) != len(got):
            raise BadInputError(f"input {name}: rank {len(got)} {got}, the engine takes {want} (-1 = dynamic)")
        for axis, (w, g) in enumerate(zip(want, got)):
            if w >= 0 and w != g:
                raise BadInputError(f"input {name}: axis {axis} is {g}, the engine takes {w} ({want})")
    latents = tuple(shapes["latents"])
    batches = {tuple(shapes[n])[0] for n in inputs}
    if len(batches) != 1:
        raise BadInputError(f"inputs disagree on the batch size: { {n: tuple(shapes[n])[0] for n in inputs} }")
    profiles = [ProfileSpec.from_json(q) for q in manifest.section("profiles")]
    return select_profile(profiles, latents[0], latents[2:5])


# --------------------------------------------------------------------------------------------- dtypes
def torch_dtype(dtype):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}
    if hasattr(torch, "float8_e4m3fn"):
        table["FP8"] = torch.float8_e4m3fn
    name = dtype.name
    if name not in table:
        raise EngineError(f"engine tensor dtype {name} has no torch equivalent")
    return table[name]


def trt_weights_dtype(trt, torch_dt):
    import torch

    table = {torch.float32: trt.DataType.FLOAT, torch.float16: trt.DataType.HALF, torch.bfloat16: trt.DataType.BF16}
    return table[torch_dt]


# --------------------------------------------------------------------------------------------- the engine
class TRTEngine:
    """A deserialized engine and one execution context, driven with torch CUDA tensors on torch's stream.

    `engine_dir`: a `wanrt build` output, every file's size and sha256 checked on load (`load_engine_manifest`;
    `verify_hash` adds nothing since). `runtime_cache`: TensorRT-RTX JIT kernel cache file ("auto":
    engine_dir/runtime.cache, None: off).
    `weight_streaming_budget`: bytes of weights kept on the GPU for engines built with weight streaming."""

    def __init__(self, engine_dir: str | os.PathLike, device: int | None = None,
                 verify_hash: bool = False,  # noqa: ARG002 - the hash is always checked (load_engine_manifest)
                 runtime_cache: str | None = "auto", weight_streaming_budget: int | None = None):
        import torch

        self.engine_dir = Path(engine_dir)
        self.manifest = load_engine_manifest(self.engine_dir)
        self.flavour: Flavour = load_flavour(self.manifest.flavour)
        if device is not None:
            torch.cuda.set_device(device)
        self.gpu = gpu_info()
        check_compatibility(self.manifest, self.flavour.info(), self.gpu)
        plan_path = confined_path(self.engine_dir, self.manifest.engine, "payload.engine")  # size, sha256: checked
        trt = self.flavour.trt
        self.logger = self.flavour.logger("ERROR")
        self.runtime = trt.Runtime(self.logger)
        plan = plan_path.read_bytes()
        if self.flavour.has("engine_validity"):
            validity, diagnostics = self.runtime.get_engine_validity(plan[: max(self.runtime.engine_header_size, 64)])
            if validity == trt.EngineValidity.INVALID:
                raise EngineError(f"{plan_path}: {self.flavour.label} rejects this plan "
                                  f"({_diagnostics(trt, diagnostics)}); "
                                  f"rebuild with `wanrt build`")
        ptrt = polygraphy_trt()
        try:
            self.engine = ptrt.EngineFromBytes(plan, runtime=self.runtime)()
        except Exception as e:  # noqa: BLE001 - PolygraphyException on a plan TensorRT refuses
            raise EngineError(f"{plan_path}: {self.flavour.label} cannot deserialize it "
                              f"({str(e).splitlines()[0]}); rebuild with `wanrt build`") from None
        del plan
        if weight_streaming_budget is not None:
            if not self.manifest.section("build", {}).get("weight_streaming"):
                raise BadInputError("weight_streaming_budget: this engine was built without --weight-streaming")
            self.engine.weight_streaming_budget_v2 = int(weight_streaming_budget)
        # TensorRT-RTX: kernels are compiled just in time; keep them in a runtime cache file across runs
        self.runtime_cache_path = None
        self._runtime_cache = None
        runtime_config = None
        if runtime_cache is not None and self.flavour.has("runtime_cache"):
            self.runtime_cache_path = (self.engine_dir / RUNTIME_CACHE_NAME if runtime_cache == "auto"
                                       else Path(runtime_cache))
            runtime_config = self.engine.create_runtime_config()
            self._runtime_cache = runtime_config.create_runtime_cache()
            if self.runtime_cache_path.is_file():
                self._runtime_cache.deserialize(self.runtime_cache_path.read_bytes())  # False: stale, recompiled
            runtime_config.set_runtime_cache(self._runtime_cache)
        self.context = (self.engine.create_execution_context(runtime_config) if runtime_config is not None
                        else self.engine.create_execution_context())
        if self.context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        self.inputs = [n for n, v in self.manifest.io.items() if v["mode"] == "input"]
        self.outputs = [n for n, v in self.manifest.io.items() if v["mode"] == "output"]
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in [*self.inputs, *self.outputs]}
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._profile = 0

    # ------------------------------------------------------------------ running
    def __call__(self, latents, timestep, text, image=None, out=None):
        feed = {"latents": latents, "timestep": timestep, "text": text}
        if image is not None or "image" in self.inputs:
            feed["image"] = image
        return self.infer(feed, out=out)["prediction"]

    def infer(self, feed: dict[str, Any], out=None) -> dict[str, Any]:
        """Run on torch's current stream; returns {output name: tensor} (valid once the stream reaches it)."""
        import torch

        if any(v is None for v in feed.values()):
            raise BadInputError(f"engine inputs {self.inputs} are all required; got None for "
                                f"{[k for k, v in feed.items() if v is None]}")
        profile = check_input_shapes(self.manifest, {k: tuple(v.shape) for k, v in feed.items()})
        stream = torch.cuda.current_stream(self.device)
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, stream.cuda_stream)
            self._profile = profile
        keep = []
        for name in self.inputs:
            t = feed[name]
            if not isinstance(t, torch.Tensor):
                t = torch.as_tensor(t)
            t = t.to(device=self.device, dtype=self.dtypes[name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise BadInputError(f"input {name} {tuple(t.shape)} refused by the engine (profile {profile})")
            self.context.set_tensor_address(name, t.data_ptr())
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if out is not None and name == "prediction":
                if tuple(out.shape) != shape or out.dtype != self.dtypes[name] or not out.is_cuda:
                    raise BadInputError(f"out: need {shape} {self.dtypes[name]} on CUDA, got {tuple(out.shape)} "
                                        f"{out.dtype}")
                buf = out
            else:
                buf = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, buf.data_ptr())
            results[name] = buf
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed (see the TensorRT log above)")
        self._keepalive = keep  # inputs must outlive the enqueue
        return results

    # ------------------------------------------------------------------ housekeeping
    def save_runtime_cache(self) -> Path | None:
        if self._runtime_cache is None or self.runtime_cache_path is None:
            return None
        blob = self._runtime_cache.serialize()
        try:  # a cache is an optimisation: failing to save it never fails the run
            write_bytes_atomic(self.runtime_cache_path, memoryview(blob))
        except OSError:
            return None
        return self.runtime_cache_path

    def close(self) -> None:
        self.save_runtime_cache()
        for attr in ("context", "engine", "runtime"):
            if hasattr(self, attr):
                delattr(self, attr)

    def __enter__(self) -> TRTEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def device_memory_bytes(self) -> int:
        try:
            return int(self.engine.device_memory_size_v2)
        except AttributeError:
            return 0


def _diagnostics(trt, bits: int) -> str:
    names = []
    members = getattr(trt, "EngineInvalidityDiagnostics", type("E", (), {"__members__": {}})).__members__
    for name, value in members.items():
        if bits & int(value):
            names.append(name)
    return ", ".join(names) or f"diagnostics {bits}"
