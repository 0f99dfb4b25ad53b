"""The job queue between the API and the engines: bounded, durable, grouped by LoRA, cancellable.

One Scheduler lives in the ingress (one process, one asyncio loop). Accepted jobs are in the JobStore before the
client hears "queued"; at start-up the store's `recover()` puts what a dead server was running back in the queue.
Up to `slots` jobs run at once on the engine client (a Ray deployment handle or an in-process worker); the next job
is the oldest one whose LoRA is already running or was just run (no swap), unless the oldest job has waited
`group_wait_s` (no starvation). A full queue answers 429 with Retry-After from the measured run time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from wanrt.runtime.serving.limits import ApiError, Limits
from wanrt.runtime.serving.store import JobStore
from wanrt.runtime.serving.validate import VideoRequest

log = logging.getLogger("wanrt.serve")

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)


class EngineClient(Protocol):
    slots: int

    def generate(self, request: dict[str, Any], image: bytes) -> AsyncIterator[dict[str, Any]]: ...

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]: ...


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def lines(self, name: str, help_text: str) -> list[str]:
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """Counters the /metrics endpoint renders in Prometheus' text format."""

    def __init__(self):
        self.queue_wait, self.run_time = Histogram(), Histogram()
        self.jobs: dict[str, int] = {"completed": 0, "failed": 0, "cancelled": 0}
        self.failures: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.requests: dict[tuple[str, int], int] = {}

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def render(self, queue_depth: int, running: int, counts: dict[str, int]) -> str:
        lines = ["# HELP wanrt_queue_depth Jobs accepted and waiting for an engine.", "# TYPE wanrt_queue_depth gauge",
                 f"wanrt_queue_depth {queue_depth}", "# HELP wanrt_jobs_running Jobs on an engine now.",
                 "# TYPE wanrt_jobs_running gauge", f"wanrt_jobs_running {running}",
                 "# HELP wanrt_jobs_stored Jobs in the store by status.", "# TYPE wanrt_jobs_stored gauge"]
        lines += [f'wanrt_jobs_stored{{status="{s}"}} {n}' for s, n in sorted(counts.items())]
        lines += ["# HELP wanrt_jobs_total Jobs ended since start, by outcome.", "# TYPE wanrt_jobs_total counter"]
        lines += [f'wanrt_jobs_total{{outcome="{k}"}} {v}' for k, v in sorted(self.jobs.items())]
        lines += ["# HELP wanrt_job_failures_total Failed jobs by error code.",
                  "# TYPE wanrt_job_failures_total counter"]
        lines += [f'wanrt_job_failures_total{{code="{k}"}} {v}' for k, v in sorted(self.failures.items())]
        lines += ["# HELP wanrt_rejected_total Requests refused before queueing, by reason.",
                  "# TYPE wanrt_rejected_total counter"]
        lines += [f'wanrt_rejected_total{{reason="{k}"}} {v}' for k, v in sorted(self.rejected.items())]
        lines += ["# HELP wanrt_http_requests_total HTTP requests by route and status.",
                  "# TYPE wanrt_http_requests_total counter"]
        lines += [f'wanrt_http_requests_total{{route="{r}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())]
        lines += self.queue_wait.lines("wanrt_job_queue_seconds", "Time from accepted to started on an engine.")
        lines += self.run_time.lines("wanrt_job_run_seconds", "Time on an engine, per completed job.")
        return "\n".join(lines) + "\n"


class Scheduler:
    def __init__(self, store: JobStore, engine: EngineClient, limits: Limits, group_wait_s: float = 30.0,
                 expire_every_s: float = 60.0):
        self.store, self.engine, self.limits = store, engine, limits
        self.group_wait_s, self.expire_every_s = group_wait_s, expire_every_s
        self.metrics = Metrics()
        self._queue: deque[dict[str, Any]] = deque()  # {id, lora, created_at}
        self._running: dict[str, tuple[asyncio.Task, str | None]] = {}
        self._recent: deque[str | None] = deque(maxlen=4)  # LoRAs most recently dispatched
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._predicts = 0
        self.recovered: dict[str, int] = {}

    # ---------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.recovered = self.store.recover()
        for row in self.store.queued():
            self._queue.append({"id": row["id"], "lora": row["lora"], "created_at": row["created_at"]})
        if self.recovered.get("requeued") or self.recovered.get("failed"):
            log.warning("recovered the job store: %s", self.recovered)
        self._tasks = [asyncio.create_task(self._dispatch_loop()), asyncio.create_task(self._expire_loop())]

    async def stop(self) -> None:
        """Stop dispatching; running jobs are left `in_progress` in the store, so the next start re-runs them."""
        for t in self._tasks:
            t.cancel()
        for task, _ in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *(t for t, _ in self._running.values()), return_exceptions=True)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def retry_after_s(self) -> int:
        """Seconds until a queue slot is likely free: the mean run time x jobs ahead per slot."""
        mean = self.metrics.run_time.sum / self.metrics.run_time.count if self.metrics.run_time.count else 5.0
        return max(1, math.ceil(mean * max(1, self.queue_depth - self.limits.max_queue + 1) /
                                max(1, self.engine.slots)))

    # ---------------------------------------------------------------------------------------------- API side
    def submit(self, req: VideoRequest, image: bytes) -> dict[str, Any]:
        if len(self._queue) >= self.limits.max_queue:
            self.metrics.reject("queue_full")
            raise ApiError(429, f"the queue is full ({self.limits.max_queue} jobs waiting); retry later",
                           code="queue_full", headers={"Retry-After": str(self.retry_after_s())})
        row = self.store.add(req.to_dict(), image, req.lora)
        self._queue.append({"id": row["id"], "lora": req.lora, "created_at": row["created_at"]})
        self._wake.set()
        return row

    async def cancel(self, job_id: str) -> bool:
        """DELETE: a queued job leaves the queue, a running one is cancelled on its engine; both are deleted."""
        for item in list(self._queue):
            if item["id"] == job_id:
                self._queue.remove(item)
        running = self._running.get(job_id)
        deleted = self.store.delete(job_id)
        if running is not None:
            running[0].cancel()
            self.metrics.jobs["cancelled"] += 1
        return deleted

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._predicts >= self.limits.max_predict_inflight:
            self.metrics.reject("predict_busy")
            raise ApiError(429, "too many /v1/predict calls in flight; retry later", code="busy",
                           headers={"Retry-After": "1"})
        self._predicts += 1
        try:
            return await asyncio.wait_for(self.engine.predict(request), self.limits.predict_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the engine did not answer within {self.limits.predict_timeout_s:g} s",
                           code="timeout", type="server_error") from None
        except Exception as e:  # noqa: BLE001 - the transport (a dead replica), as _run treats it: 503, not a bug
            log.warning("predict: engine failure (%s)", e)
            raise ApiError(503, f"the engine is unavailable ({type(e).__name__}); retry later",
                           code="engine_unavailable", type="server_error", headers={"Retry-After": "1"}) from None
        finally:
            self._predicts -= 1

    # ---------------------------------------------------------------------------------------------- engine side
    def _pick(self) -> dict[str, Any]:
        oldest = self._queue[0]
        if time.time() - oldest["created_at"] < self.group_wait_s:
            warm = {lora for _, lora in self._running.values()} | set(self._recent)
            for item in self._queue:
                if item["lora"] in warm:
                    self._queue.remove(item)
                    return item
        return self._queue.popleft()

    async def _dispatch_loop(self) -> None:
        while True:
            while not self._queue or len(self._running) >= self.engine.slots:
                self._wake.clear()
                await self._wake.wait()
            item = self._pick()
            if not self.store.start(item["id"]):  # deleted meanwhile
                continue
            self._recent.append(item["lora"])
            self.metrics.queue_wait.observe(max(0.0, time.time() - item["created_at"]))
            task = asyncio.create_task(self._run(item["id"]))
            self._running[item["id"]] = (task, item["lora"])

    async def _run(self, job_id: str) -> None:
        t0 = time.perf_counter()
        try:
            row = self.store.get(job_id)
            if row is None:
                return
            image = self.store.image_path(job_id).read_bytes()
            await asyncio.wait_for(self._consume(job_id, row, image, t0), self.limits.job_timeout_s)
        except asyncio.TimeoutError:
            self._fail(job_id, "timeout", f"the job ran longer than {self.limits.job_timeout_s:g} s", t0)
        except asyncio.CancelledError:
            pass  # DELETE (row already gone) or shutdown (row stays in_progress: re-run after restart)
        except Exception as e:  # noqa: BLE001 - an engine/transport failure: put the job back or fail it
            row = self.store.get(job_id)
            if row is not None and row["attempts"] < self.store.max_attempts:
                log.warning("job %s: engine failure (%s); re-queued", job_id, e)
                self.store.requeue(job_id)
                self._queue.appendleft({"id": job_id, "lora": row["lora"], "created_at": row["created_at"]})
            else:
                self._fail(job_id, "engine_unavailable", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                           if str(e) else type(e).__name__, t0)
        finally:
            self._running.pop(job_id, None)
            self._wake.set()

    async def _consume(self, job_id: str, row: dict[str, Any], image: bytes, t0: float) -> None:
        import json

        async for event in self.engine.generate(json.loads(row["request"]), image):
            if "step" in event:
                self.store.progress(job_id, event["step"], event["steps"])
            elif "replica" in event:
                self.store.ran_on(job_id, event["replica"])
            elif "video" in event:
                run_s = time.perf_counter() - t0
                if self.store.complete(job_id, event["video"], run_s):
                    self.metrics.run_time.observe(run_s)
                    self.metrics.jobs["completed"] += 1
                return
            elif "error" in event:
                err = event["error"]
                self._fail(job_id, err.get("code", "error"), err.get("message", ""), t0)
                return
        self._fail(job_id, "engine_unavailable", "the engine ended the job without a result", t0)

    def _fail(self, job_id: str, code: str, message: str, t0: float) -> None:
        self.store.fail(job_id, code, message, time.perf_counter() - t0)
        self.metrics.jobs["failed"] += 1
        self.metrics.failures[code] = self.metrics.failures.get(code, 0) + 1

    async def _expire_loop(self) -> None:
        while True:
            try:
                removed = self.store.expire()
                if removed:
                    log.info("expired %d ended jobs", removed)
            except Exception:
                log.exception("job expiry failed")
            await asyncio.sleep(self.expire_every_s)
