"""The Ray Serve application: one ingress replica (FastAPI app, scheduler, job store) and N engine replicas.

    HTTP -> front (front.py: request-head bounds) -> Ray's proxy (head node, loopback) -> `api` (ingress: app.py +
    scheduler.py + store.py, on the node that runs `wanrt serve`, so the store directory is local to it)
    -> `engine` replicas (worker.py), one job each at a time

Requests reach an engine replica through a deployment handle with `multiplexed_model_id` = the job's LoRA stack
(its label): Ray routes a stack to a replica that already has it loaded, so separate-mode engines swap rarely, and
progress events stream back (`stream=True`); cancelling the stream stops the job at its next DiT call.

Loopback by default: a local Ray instance is started with every address on 127.0.0.1 (Ray takes the network
interface's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set before it starts), the front binds 127.0.0.1
unless --host says otherwise, and the HTTP proxy behind it only ever binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from wanrt.errors import BadInputError
from wanrt.runtime.serving.catalog import Catalog
from wanrt.runtime.serving.front import Front, free_loopback_port
from wanrt.runtime.serving.job_store import JobStore
from wanrt.runtime.serving.limits import Limits
from wanrt.runtime.serving.scheduler import Scheduler
from wanrt.runtime.serving.stacks import stack_label, stack_of
from wanrt.runtime.serving.worker import VideoWorker, predict_safe, run_job

BASE_MODEL_ID = "__base__"  # the multiplexed id of "no LoRA"
# A local Ray's settings (a user's env wins): its node address on 127.0.0.1, no usage stats, and 30 s (Ray: 5 s)
# for Serve's HTTP proxy to answer its first ready check. With both cores busy the proxy's worker took longer
# than 5 s to start, Serve killed it before it ran and `serve.start` failed (the serve tests, 2026-12-07).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                 "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}
_front: Front | None = None  # the running front of this process's server (start_ray -> shutdown)


@dataclass(frozen=True)
class ReplicaSpec:
    """How engine replicas are placed and scaled."""

    min_replicas: int = 1
    max_replicas: int = 1
    num_cpus: float = 1.0  # Ray's CPU reservation per replica (0 lets replicas share a small machine)
    num_gpus: float = 0.0  # 1 for TensorRT engines: one replica per GPU
    threads: int | None = None  # torch / ONNX Runtime / OpenVINO threads inside a replica
    max_replicas_per_node: int | None = None
    max_engines: int = 2  # engines (merged LoRAs) kept loaded per replica
    device: str = "cpu"

    @property
    def autoscaling(self) -> dict[str, Any] | None:
        if self.min_replicas == self.max_replicas:
            return None
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": 1, "upscale_delay_s": 5, "downscale_delay_s": 120}


def _model_id(request: dict[str, Any]) -> str:
    """Ray's multiplexed model id of a job or predict call: its LoRA stack's label."""
    return stack_label(stack_of(request)) or BASE_MODEL_ID


def local_ray_env() -> None:
    """Before a local Ray starts (its processes inherit this process's environment): LOCAL_RAY_ENV."""
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)


class RayEngine:
    """The scheduler's engine client over a Serve deployment handle."""

    def __init__(self, handle, slots: int):
        self.handle, self.slots = handle, slots

    async def generate(self, request: dict[str, Any], image: bytes) -> AsyncIterator[dict[str, Any]]:
        stream = self.handle.options(stream=True, multiplexed_model_id=_model_id(request))
        response = stream.generate.remote(request, image)
        finished = False
        try:
            async for event in response:
                yield event
            finished = True
        finally:
            if not finished:
                response.cancel()  # DELETE/timeout: the replica's job stops at its next DiT call

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        handle = self.handle.options(multiplexed_model_id=_model_id(request))
        return await handle.predict.remote(request)

    async def warm(self) -> float:
        """Answered by a replica only once its __init__ (the warm-up job) is done: Ray routes to no replica before."""
        return await self.handle.warm.remote()

    def describe(self) -> dict[str, Any]:
        return {"kind": "ray", "slots": self.slots}


def _engine_deployment():
    from ray import serve

    class EngineReplica:
        def __init__(self, catalog: Catalog, spec: ReplicaSpec, verify: bool):
            self.worker = VideoWorker(catalog, device=spec.device, threads=spec.threads,
                                      max_engines=spec.max_engines, verify=verify)
            # loaded and one warm-up job run before Ray routes traffic here (not on the first client's job)
            self.warm_s = self.worker.warm()

        def warm(self) -> float:
            return self.warm_s

        @serve.multiplexed(max_num_models_per_replica=4)
        async def _lora(self, model_id: str) -> str:
            return model_id  # the swap itself happens per job (worker.select_loras); this registers the id

        async def generate(self, request: dict[str, Any], image: bytes):
            await self._lora(serve.get_multiplexed_model_id() or BASE_MODEL_ID)
            import ray

            where = {"node": ray.get_runtime_context().get_node_id()[:12]}
            async for event in run_job(self.worker, request, image, where):
                yield event

        async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
            await self._lora(serve.get_multiplexed_model_id() or BASE_MODEL_ID)
            return await asyncio.get_running_loop().run_in_executor(None, predict_safe, self.worker, request)

        def describe(self) -> dict[str, Any]:
            return self.worker.describe()

    return EngineReplica


def _ingress_deployment():
    from ray import serve
    from wanrt.runtime.serving.app import Service, build_app  # lazy: fastapi, as ray.serve above

    @serve.ingress()
    class Api:
        def __init__(self, engine, catalog: Catalog, limits: Limits, store: str, ttl_s: float, token: str | None,
                     slots: int, poll_after_ms: int):
            scheduler = Scheduler(JobStore(store, ttl_s=ttl_s), RayEngine(engine, slots), limits)
            self.service = Service(catalog, limits, scheduler, token=token, poll_after_ms=poll_after_ms)

        def __serve_build_asgi_app__(self):
            return build_app(self.service)

    return Api


def build_application(catalog: Catalog, limits: Limits, replicas: ReplicaSpec, store: str, ttl_s: float,
                      token: str | None, verify: bool = False, poll_after_ms: int = 500,
                      graceful_shutdown_s: float = 5.0):
    """The bound Serve application (ingress + engines), ready for `serve.run`."""
    import ray
    from ray import serve

    engine_options: dict[str, Any] = {"num_cpus": replicas.num_cpus}
    if replicas.num_gpus:
        engine_options["num_gpus"] = replicas.num_gpus
    engine_kwargs: dict[str, Any] = {"ray_actor_options": engine_options, "max_ongoing_requests": 1,
                                     "graceful_shutdown_timeout_s": graceful_shutdown_s,
                                     "health_check_period_s": 10, "health_check_timeout_s": 60}
    if replicas.autoscaling:
        engine_kwargs["autoscaling_config"] = replicas.autoscaling
    else:
        engine_kwargs["num_replicas"] = replicas.max_replicas
    if replicas.max_replicas_per_node:
        engine_kwargs["max_replicas_per_node"] = replicas.max_replicas_per_node
    engine = serve.deployment(_engine_deployment(), name="engine", **engine_kwargs)
    # the ingress owns the store directory: pin it to the node that runs `wanrt serve` (the store is local there)
    here = ray.util.get_node_ip_address()
    api = serve.deployment(_ingress_deployment(), name="api", num_replicas=1, max_ongoing_requests=1000,
                           graceful_shutdown_timeout_s=graceful_shutdown_s,
                           ray_actor_options={"num_cpus": 0, "resources": {f"node:{here}": 0.001}})
    return api.bind(engine.bind(catalog, replicas, verify), catalog, limits, store, ttl_s, token,
                    replicas.max_replicas, poll_after_ms)


def start_ray(address: str | None, host: str, port: int, temp_dir: str | None = None,
              num_cpus: int | None = None, quiet: bool = True, limits: Limits | None = None,
              after_init: Callable[[], None] | None = None) -> dict[str, Any]:
    """Join `address`, or start a local Ray on 127.0.0.1; then Serve's HTTP proxy on a loopback port of the head
    node and wanrt's bounded front (front.py) on host:port before it. `quiet=False` forwards the replicas' logs
    (errors included) to this process's terminal. `after_init` runs right after `ray.init` (which replaces the
    SIGTERM handler: the caller puts its own back)."""
    global _front
    if address is None:
        local_ray_env()
    import ray
    from ray import serve

    limits = limits or Limits()
    front = Front(host, port, free_loopback_port(), limits)
    front.start()  # binds host:port first: a port in use is one line before Ray or Serve starts anything
    try:
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": not quiet,
                                      "configure_logging": False}
            if address is None:
                kwargs.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
                if temp_dir:
                    kwargs["_temp_dir"] = temp_dir
            ray.init(**kwargs)
        if after_init is not None:
            after_init()
        if address is not None and not _on_head_node():
            raise BadInputError("run `wanrt serve` on the Ray head node: Serve's HTTP proxy runs there, behind "
                                "wanrt's request-head limits on --host/--port")
        # the proxy's own bounds from the same Limits: idle keep-alive, and an end-to-end backstop above the app's
        # body and predict deadlines (the app answers those itself, in the OpenAI error shape)
        serve.start(http_options={"host": "127.0.0.1", "port": front.upstream_port,
                                  "keep_alive_timeout_s": limits.keep_alive_s,
                                  "request_timeout_s": limits.body_timeout_s + limits.predict_timeout_s + 60},
                    proxy_location="HeadOnly")
    except BaseException:
        front.stop()
        raise
    _front = front
    return {"ray": ray.__version__, "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "resources": ray.cluster_resources()}


def _on_head_node() -> bool:
    import ray

    here = ray.get_runtime_context().get_node_id()
    return any(n.get("NodeID") == here and "node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes())


def run_application(app, name: str = "wanrt") -> None:
    from ray import serve

    serve.run(app, name=name, route_prefix="/", blocking=False)


def shutdown(stop_ray: bool = True) -> None:
    """The front first (no new requests), then Serve (replicas drain), then Ray: each layer stops before the one
    it runs on, so no task fails for a missing raylet."""
    global _front
    import ray
    from ray import serve

    started = _descendants() if stop_ray else []
    try:
        if _front is not None:
            _front.stop()
            _front = None
        if ray.is_initialized():  # serve.shutdown() without Ray would start one, only to find nothing to stop
            serve.shutdown()
    finally:
        if stop_ray and ray.is_initialized():
            started += _descendants()  # replicas restarted during the drain
            ray.shutdown()
        _reap(started)


def _descendants() -> list:
    import psutil

    return psutil.Process().children(recursive=True)


def _reap(procs: list, grace_s: float = 5.0) -> None:
    """End what this process started and `ray.shutdown` left behind (Ray's agents outlive their raylet and ignore
    SIGTERM; a replica's ffmpeg): only the processes seen as our descendants, matched by pid and start time, so
    a reused pid is never touched; SIGKILL after `grace_s`."""
    import psutil

    alive = [p for p in procs if p.is_running()]  # is_running compares the start time too
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
