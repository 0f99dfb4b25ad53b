"""VideoWorker: a bundle's engines in one process, one job at a time (a Ray replica holds one; `--no-ray` too).

A job runs exactly what `wanrt generate` runs (`generate_video` + `encode_mp4` on the same backend kind, image,
GenerateSpec and tiny-pipeline seed), so the mp4 a server returns equals the CLI's for the same settings.

LoRA per request: a merged engine serves its own LoRA; a separate-mode engine swaps the requested stack in with
`backend.set_loras([LoraWeights at their strengths])` (one branch of the summed rank: ORT/OpenVINO weight swap,
TensorRT refit) only when it differs from the stack loaded; a Wan2.2 experts engine loads as its ExpertPair and
swaps each expert's stack on that expert's backend. Each library LoRA is loaded once and cached; a strength
is set per request on a copy. The scheduler and Ray's multiplexed routing send same-stack jobs to the same replica
so swaps stay rare.
Progress (step i of N) and cancellation ride on the DiT calls: the pipeline calls the transformer once per step
(twice with CFG), so a wrapper counts calls and stops the job at the next call once it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from wanrt.runtime.serving.catalog import Catalog, EngineInfo
from wanrt.runtime.serving.requests import PredictRequest, VideoRequest, predict_shapes
from wanrt.runtime.serving.stacks import Stack, expert_stack, stack_label, stack_objects, stack_of

from wanrt.engines import registry
from wanrt.errors import BadInputError, EngineError, LoraError, MissingDependencyError, WanrtError
from wanrt.manifests import EngineManifest, ExportManifest, read_any

log = logging.getLogger("wanrt.serve")


class JobCancelled(Exception):
    """Raised inside the pipeline (at the next DiT call) once a job is cancelled or timed out."""


class _Watched:
    """A backend seen through a per-job hook on every forward (progress + cancellation); everything else is the
    backend's own (config, dtype, device, shape_ranges, ...)."""

    def __init__(self, backend):
        self._backend = backend
        self.on_forward: Callable[[], None] | None = None

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def forward(self, latents, timestep, text, image=None):
        if self.on_forward is not None:
            self.on_forward()
        return self._backend.forward(latents, timestep, text, image)

    __call__ = forward


class _Lru(OrderedDict):
    def __init__(self, size: int, on_evict: Callable[[Any], None] | None = None):
        super().__init__()
        self.size, self.on_evict = size, on_evict

    def take(self, key, make: Callable[[], Any]):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            _, old = self.popitem(last=False)
            if self.on_evict:
                self.on_evict(old)
        return value


class VideoWorker:
    def __init__(self, catalog: Catalog, device: str = "cpu", threads: int | None = None, max_engines: int = 2,
                 verify: bool = False):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.catalog, self.device, self.threads, self.verify = catalog, device, threads, verify
        self._engines = {e.name: e for e in catalog.engines}
        self._backends = _Lru(max_engines, on_evict=lambda w: w.close())
        self._pipes = _Lru(4)
        self._loras = _Lru(8)
        self._loaded: dict[str, Stack] = {}  # engine -> the stack swapped in
        self._base_models: dict[str, Any] = {}
        self._lock = threading.Lock()  # one job at a time: a backend and its pipeline are not re-entrant
        self.swaps = 0
        self.forwards = 0  # DiT calls made by jobs (a cancelled job stops adding to it)
        self.warm_s: float | None = None  # the warm-up job's seconds, once it ran

    # ---------------------------------------------------------------------------------------------- loading
    def backend(self, engine: EngineInfo):
        """The engine's backend, watched (_Watched); an experts engine's is the ExpertPair of its watched
        members, which the pipeline and generate take as Wan2.2's two transformers."""
        return self._backends.take(engine.name, lambda: self._load_pair(engine) if engine.experts
                                   else _Watched(self._load_backend(engine)))

    def _load_pair(self, engine: EngineInfo):
        from wanrt.runtime.experts import ExpertPair  # lazy: torch: replicas load it, the Ray driver imports this

        members: dict[str, _Watched] = {}
        try:
            for expert, member in engine.experts:
                members[expert] = _Watched(self._load_backend(member))
            return ExpertPair(members["high"], members["low"], engine.boundary_ratio)
        except BaseException:  # the first expert's sessions are not left open when the second fails
            for m in members.values():
                m.close()
            raise

    def _load_backend(self, engine: EngineInfo):
        from wanrt.runtime import backends as B  # lazy: torch: replicas load it, the Ray driver imports this module

        if engine.backend == "eager":
            from wanrt.export.model import ModelSpec  # lazy: torch: in the replica only

            return B.backend_from_specs("eager", ModelSpec(engine.model_source), None, device=self.device)
        options: dict[str, Any] = {"verify": self.verify}
        flavour = registry.for_backend(engine.backend)  # None: ort
        if flavour is None or "threads" in flavour.runtime_options:
            options["threads"] = self.threads
        on_gpu = flavour is not None and flavour.runtime_device == "cuda"
        device = "cuda" if on_gpu and not self.device.startswith("cuda") else self.device
        return B.create_backend(engine.backend, artifact=engine.path, device=device, **options)

    def _base_model(self, engine: EngineInfo):
        """The transformer the engine was exported from, with its weights, loaded once."""
        if engine.name not in self._base_models:
            from wanrt.export.model import exported_model_spec, load_transformer  # lazy: torch: in the replica only

            self._base_models[engine.name] = load_transformer(exported_model_spec(self._manifest(engine)))
        return self._base_models[engine.name]

    def _skeleton(self, engine: EngineInfo):
        """What a LoRA file resolves against: module names and shapes. For a preset that is the model built on the
        meta device (no weights, no memory); a checkpoint is loaded for real (a 14B replica pays this once)."""
        import torch

        from wanrt.export.model import exported_model_spec, load_transformer  # lazy: torch: in the replica only

        model_spec = exported_model_spec(self._manifest(engine))
        if not model_spec.is_preset:
            return self._base_model(engine)
        with torch.device("meta"):
            return load_transformer(model_spec)

    def _manifest(self, engine: EngineInfo) -> ExportManifest | EngineManifest:
        return read_any(engine.path, ExportManifest, EngineManifest)

    def lora_weights(self, engine: EngineInfo, name: str, scale: float | None):
        """LoraWeights of a library LoRA at strength `scale` (loaded once, the strength set on a copy that shares
        its tensors), or of the engine's own exported LoRA (None: at its exported scale)."""
        from wanrt.export.api import LoraSpec, resolve_lora  # lazy: torch: in the replica only

        if name in self.catalog.loras:
            def load():
                spec = LoraSpec(file=self.catalog.loras[name]["abspath"], mode="separate")
                return resolve_lora(self._skeleton(engine), spec)[0]

            return replace(self._loras.take((engine.name, name), load), lora_scale=1.0 if scale is None else scale)

        def own():  # as exported (a synthetic one is scaled to the real weights' norms)
            spec = LoraSpec(**self._manifest(engine).export_specs["lora"])
            spec = replace(spec, scale=spec.scale if scale is None else scale)
            return resolve_lora(self._base_model(engine), spec)[0]

        return self._loras.take((engine.name, name, scale), own)

    def select_loras(self, engine: EngineInfo, backend, stack: Stack) -> None:
        """Swap `stack` into a separate-mode engine unless it is already loaded there (a fresh engine holds its own
        exported LoRA); an empty stack zeroes the branch (the base model). An experts engine: each expert gets its
        own entries and those naming no expert, on its own backend."""
        if not engine.swappable:
            return
        if engine.experts:
            for expert, member in engine.experts:
                self.select_loras(member, backend.experts()[expert], expert_stack(stack, expert))
            return
        stack = tuple(stack)
        if self._loaded.get(engine.name, ((engine.name, None),)) == stack:
            return
        if getattr(backend._backend, "set_lora", None) is None:
            raise WanrtError(f"backend '{engine.backend}' cannot swap LoRAs in this install; pack merged engines "
                             "per LoRA instead")
        backend._backend.set_loras([self.lora_weights(engine, name, scale) for name, scale in stack],
                                   [name for name, _ in stack])
        self._loaded[engine.name] = stack
        self.swaps += 1

    def pipeline(self, engine: EngineInfo, backend: _Watched, seed: int):
        """The diffusers pipeline around `backend`. The tiny built-in pipeline's encoders are seeded by the
        generation seed (as `wanrt generate` builds them), so it is cached per seed."""
        from wanrt.runtime.pipeline import build_pipeline  # lazy: torch: in the replica only

        key = (engine.name, seed if self.catalog.pipeline is None else None)
        return self._pipes.take(key, lambda: build_pipeline(backend, checkpoint=self.catalog.pipeline, seed=seed))

    # ---------------------------------------------------------------------------------------------- jobs
    def generate(self, req: VideoRequest, image: bytes, progress: Callable[[int, int], None],
                 cancelled: threading.Event, on_start: Callable[[], None] | None = None) -> bytes:
        """One job: image bytes + checked request -> mp4 bytes. Raises JobCancelled or a WanrtError. `on_start`
        is called once the job has this worker (the previous job has stopped): its run time starts there."""
        from PIL import Image
        from wanrt.runtime.generate import GenerateSpec, generate_video  # lazy: torch + ORT: in the replica only
        from wanrt.runtime.pipeline import encode_mp4  # lazy: torch: in the replica only

        engine = self._engines[req.engine]
        with self._lock:
            if cancelled.is_set():  # given up while it waited for the worker
                raise JobCancelled()
            if on_start is not None:
                on_start()
            backend = self.backend(engine)
            self.select_loras(engine, backend, req.loras)
            watched = list(backend.experts().values()) if engine.experts else [backend]
            with Image.open(io.BytesIO(image)) as im:
                picture = im.convert("RGB")
            spec = GenerateSpec(prompt=req.prompt, negative_prompt=req.negative_prompt, frames=req.frames,
                                height=req.height, width=req.width, schedule=req.schedule(), seed=req.seed,
                                fps=req.fps)
            per_step = spec.schedule.forwards_per_step  # diffusers runs CFG as two transformer calls per step
            calls = [0]

            def on_forward():
                if cancelled.is_set():
                    raise JobCancelled()
                if calls[0] % per_step == 0:
                    progress(calls[0] // per_step, req.steps)
                calls[0] += 1
                self.forwards += 1

            pipe = self.pipeline(engine, backend, req.seed)
            for w in watched:
                w.on_forward = on_forward
            try:
                frames, _ = generate_video(backend, picture, spec, pipe=pipe)
            finally:
                for w in watched:
                    w.on_forward = None
            if cancelled.is_set():  # cancelled during the last step or the VAE decode: do not encode
                raise JobCancelled()
            progress(req.steps, req.steps)
        with tempfile.TemporaryDirectory(prefix="wanrt-job-") as tmp:
            path = os.path.join(tmp, "video.mp4")
            encode_mp4(frames, path, fps=spec.fps)
            with open(path, "rb") as f:
                return f.read()

    def predict(self, req: PredictRequest) -> dict[str, Any] | bytes:
        """One DiT forward on given (base64 .npy) or seeded inputs: stats JSON or the prediction as .npy."""
        import base64

        import numpy as np
        import torch

        engine = self._engines[req.engine]
        shapes = predict_shapes(engine, req.batch, req.frames, req.height, req.width)
        gen = torch.Generator().manual_seed(req.seed)
        tensors: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            if name in req.inputs:
                try:  # the header was checked at the ingress; the data (length, base64 tail) only here
                    arr = np.load(io.BytesIO(base64.b64decode(req.inputs[name], validate=True)), allow_pickle=False)
                except (ValueError, EOFError) as e:  # binascii.Error is a ValueError
                    raise _ClientError(f"inputs.{name}: not a readable .npy array ({str(e)[:120]})",
                                       "invalid_input") from None
                if not np.isfinite(arr).all():
                    raise _ClientError(f"inputs.{name} holds NaN or infinite values", "non_finite_input")
                tensors[name] = torch.from_numpy(arr.astype(np.float32, copy=False))
            elif name == "timestep":
                tensors[name] = torch.full(shape, req.timestep)
            else:
                tensors[name] = torch.randn(shape, generator=gen)
        with self._lock:
            backend = self.backend(engine)
            self.select_loras(engine, backend, req.loras)
            if engine.experts:  # the expert diffusers runs at this timestep
                backend = backend.high if req.timestep >= engine.boundary_ratio * 1000 else backend.low
            t0 = time.perf_counter()
            out = backend.forward(tensors["latents"], tensors["timestep"], tensors["text"], tensors.get("image"))
            backend.synchronize()
            latency = time.perf_counter() - t0
        out = out.float().cpu()
        if req.format == "npy":
            buf = io.BytesIO()
            np.save(buf, out.numpy(), allow_pickle=False)
            return buf.getvalue()
        finite = bool(torch.isfinite(out).all())

        def stat(v):  # JSON has no NaN: a non-finite result says so (finite: false) instead
            return float(v) if finite else None

        return {"shape": list(out.shape), "dtype": str(backend.dtype).replace("torch.", ""), "finite": finite,
                "mean": stat(out.mean()), "std": stat(out.std()), "min": stat(out.min()), "max": stat(out.max()),
                "latency_ms": latency * 1e3, "engine": engine.name, "lora": stack_label(req.loras),
                "loras": stack_objects(req.loras)}

    def warm(self) -> float:
        """Load the engines this worker keeps and run one 1-step job at the first engine's default shape and
        seed 0 (the API's default), so no client's job pays the start-up (pipeline build, first-call allocations).
        Returns that job's seconds: the first measure of a job's time."""
        from PIL import Image

        for engine in self.catalog.engines[:self._backends.size]:
            self.backend(engine)
        engine = self.catalog.engines[0]
        frames, height, width = engine.default_shape
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (128, 128, 128)).save(buf, format="PNG")
        req = VideoRequest(prompt="warm-up", negative_prompt="", model=self.catalog.model, engine=engine.name,
                           loras=((engine.name, None),) if engine.swappable and not engine.experts else (),
                           frames=frames,
                           height=height, width=width, steps=1, guidance=5.0, seed=0, fps=16,
                           seconds=f"{frames / 16:g}", size=f"{width}x{height}")
        t0 = time.perf_counter()
        self.generate(req, buf.getvalue(), lambda _step, _steps: None, threading.Event())
        self.warm_s = time.perf_counter() - t0
        return self.warm_s

    def describe(self) -> dict[str, Any]:
        return {"engines_loaded": list(self._backends), "loras_loaded": dict(self._loaded), "swaps": self.swaps,
                "forwards": self.forwards, "busy": self._lock.locked(), "warm_s": self.warm_s, "pid": os.getpid()}


class _ClientError(WanrtError):
    """A request the replica finds bad (e.g. NaN in given tensors): reported as the client's fault."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def _error_codes():
    return ((LoraError, "lora_error"), (EngineError, "engine_error"), (MissingDependencyError, "missing_dependency"),
            (BadInputError, "invalid_request"))


def failure(e: BaseException) -> dict[str, Any]:
    """An exception from a job as the job's error record: WanrtErrors are their one line; others are bugs (logged
    with the traceback here, reported as internal_error)."""
    if isinstance(e, _ClientError):
        return {"code": e.code, "message": str(e), "client": True}
    if isinstance(e, WanrtError):
        code = next((c for t, c in _error_codes() if isinstance(e, t)), "wanrt_error")
        return {"code": code, "message": str(e).splitlines()[0] if str(e) else type(e).__name__}
    log.exception("job failed with an unexpected error")
    return {"code": "internal_error", "message": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


async def run_job(worker: VideoWorker, request: dict[str, Any], image: bytes,
                  where: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
    """A job as an async stream of events: {"replica": {pid, ...}} once the worker takes it, {"step", "steps"} ...,
    then {"video": bytes} or {"error": {...}}.

    The blocking pipeline runs in a thread; cancelling the consumer (DELETE, timeout, a Ray response cancel) sets
    the job's event so the thread stops at its next DiT call instead of running to the end unseen, and the stream
    ends only once it has stopped."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    req = VideoRequest.from_dict(request)

    def progress(step: int, steps: int) -> None:
        loop.call_soon_threadsafe(events.put_nowait, {"step": step, "steps": steps})

    def started() -> None:
        loop.call_soon_threadsafe(events.put_nowait, {"replica": {"pid": os.getpid(), **(where or {})}})

    task = loop.run_in_executor(None, worker.generate, req, image, progress, cancelled, started)
    try:
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            break
        while not events.empty():
            yield events.get_nowait()
        try:
            yield {"video": task.result()}
        except Exception as e:  # noqa: BLE001 - reported as the job's error, never as a crash of the stream
            yield {"error": failure(e)}
    finally:
        if not task.done():
            cancelled.set()  # the consumer went away: stop the pipeline at its next DiT call
            # and return only once it has stopped: the engine is free when the caller hears the job ended, so the
            # next job neither waits behind a timed-out one unseen nor has its clock run meanwhile
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)


def predict_safe(worker: VideoWorker, request: dict[str, Any]) -> dict[str, Any]:
    """{"result": stats dict | npy bytes} or {"error": {...}}: one shape across Ray and in-process calls."""
    try:
        return {"result": worker.predict(PredictRequest(**{**request, "loras": stack_of(request)}))}
    except Exception as e:  # noqa: BLE001 - see failure()
        return {"error": failure(e)}


class LocalEngine:
    """The engine client for one in-process worker (`wanrt serve --no-ray`, and the tests of the HTTP layers)."""

    slots = 1

    def __init__(self, worker: VideoWorker):
        self.worker = worker

    def generate(self, request: dict[str, Any], image: bytes) -> AsyncIterator[dict[str, Any]]:
        return run_job(self.worker, request, image)

    async def warm(self) -> float:
        return await asyncio.get_running_loop().run_in_executor(None, self.worker.warm)

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, predict_safe, self.worker, request)

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", **self.worker.describe()}
