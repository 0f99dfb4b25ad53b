"""The job queue between the API and the engines: bounded, durable, grouped by LoRA stack, cancellable.

One Scheduler lives in the ingress (one process, one asyncio loop). Accepted jobs are in the JobStore before the
client hears "queued"; at start-up the store's `recover()` puts what a dead server was running back in the queue.
Up to `slots` jobs run at once on the engine client (a Ray deployment handle or an in-process worker); the next job
is the oldest one whose LoRA stack (names and scales) is already running or was just run (no swap), unless the
oldest job has waited `group_wait_s` (no starvation). A full queue answers 429 with Retry-After from the measured
wait (jobs queued x measured job time / slots).

Nothing here dies silently: the dispatcher and the engine warm-up run under `_supervise` (an error is recorded,
logged, shown on /healthz and /metrics, and retried after a doubling back-off). A store that cannot write (a full
disk) puts the server in a degraded state: submissions are refused (507/503 + Retry-After), a finished job's
result is kept in memory until it can be written, nothing new is dispatched, and a probe write every back-off
clears the state by itself once space returns. Readiness is the engine's own: /healthz says ok only after a
warm-up job ran on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from wanrt.runtime.serving.limits import ApiError, Limits
from wanrt.runtime.serving.job_store import JobStore, StoreUnavailable
from wanrt.runtime.serving.requests import VideoRequest
from wanrt.runtime.serving.stacks import Stack, stack_label, stack_of

log = logging.getLogger("wanrt.serve")

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)
BACKOFF_S = (0.25, 10.0)  # a failing loop or store is retried after 0.25 s, doubling up to 10 s
MAX_RETRY_AFTER_S = 900  # the bound on a Retry-After computed from the measured wait
JOB_TIME_SMOOTHING = 0.3  # weight of the newest job in the running estimate of a job's time


class EngineClient(Protocol):
    slots: int

    def generate(self, request: dict[str, Any], image: bytes) -> AsyncIterator[dict[str, Any]]:
        """Events of one job: {"replica": {...}} once an engine has taken it (its run starts then), {"step",
        "steps"} ..., then {"video": bytes} or {"error": {...}}. Closing the stream stops the job; a local engine
        returns only once the job has stopped."""

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]: ...

    async def warm(self) -> float:
        """Once the engine can take a job: load it and run one short job; returns that job's seconds."""

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
        self.storage_errors = 0  # store writes that failed (full disk, I/O error)
        self.loop_errors: dict[str, int] = {}  # supervised loops' failures, by loop

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def render(self, queue_depth: int, running: int, counts: dict[str, int], health: dict[str, Any]) -> str:
        lines = ["# HELP wanrt_queue_depth Jobs accepted and waiting for an engine.", "# TYPE wanrt_queue_depth gauge",
                 f"wanrt_queue_depth {queue_depth}", "# HELP wanrt_jobs_running Jobs on an engine now.",
                 "# TYPE wanrt_jobs_running gauge", f"wanrt_jobs_running {running}",
                 "# HELP wanrt_ready 1 once the engine has run its warm-up job and nothing is degraded.",
                 "# TYPE wanrt_ready gauge", f"wanrt_ready {int(health['status'] == 'ok')}",
                 "# HELP wanrt_degraded 1 while a problem is recorded (storage, or a loop that failed).",
                 "# TYPE wanrt_degraded gauge"]
        lines += [f"wanrt_degraded {int(bool(health['problems']))}", "# HELP wanrt_problem_info A recorded problem.",
                  "# TYPE wanrt_problem_info gauge"]
        lines += [f'wanrt_problem_info{{problem="{k}"}} 1' for k in sorted(health["problems"])]
        lines += ["# HELP wanrt_expected_wait_seconds Queued jobs x measured job time / engine slots.",
                  "# TYPE wanrt_expected_wait_seconds gauge", f"wanrt_expected_wait_seconds {health['wait_s']:.3f}",
                  "# HELP wanrt_storage_errors_total Job store writes that failed (full disk, I/O).",
                  "# TYPE wanrt_storage_errors_total counter", f"wanrt_storage_errors_total {self.storage_errors}",
                  "# HELP wanrt_loop_errors_total Failures of the supervised loops (each retried after a back-off).",
                  "# TYPE wanrt_loop_errors_total counter"]
        lines += [f'wanrt_loop_errors_total{{loop="{k}"}} {v}' for k, v in sorted(self.loop_errors.items())]
        lines += ["# HELP wanrt_jobs_stored Jobs in the store by status.", "# TYPE wanrt_jobs_stored gauge"]
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
        self._queue: deque[dict[str, Any]] = deque()  # {id, stack, created_at}
        self._running: dict[str, tuple[asyncio.Task, Stack]] = {}
        self._cancelled: set[str] = set()  # DELETEd while running (see _consume)
        self._run_started: dict[str, float] = {}  # job -> when an engine took it (monotonic; dispatch until then)
        self._recent: deque[Stack] = deque(maxlen=4)  # LoRA stacks most recently dispatched
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._predicts = 0
        self.recovered: dict[str, int] | None = None
        self.ready = False  # the engine ran its warm-up job
        self._warm_tried = False  # the dispatcher waits for one warm-up attempt (a failed one leaves jobs their error)
        self._job_s: float | None = None  # running estimate of one job's time on an engine (warm-up, then jobs)
        self.faults: dict[str, str] = {}  # supervised loop -> its last error (cleared by its next success)
        self.storage_error: StoreUnavailable | None = None  # the store's last failed write, until a probe passes
        self._storage_need = 4096  # bytes the failed write needed: what the probe writes
        self._deferred: deque[tuple[str, Callable[[], None]]] = deque()  # job results kept until the store takes them
        self._backoff_s = BACKOFF_S[0]

    # ---------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise("dispatcher", self._dispatch_step)),
                       asyncio.create_task(self._supervise("warm-up", self._warm_step)),
                       asyncio.create_task(self._expire_loop())]

    async def stop(self) -> None:
        """Stop dispatching; running jobs are left `in_progress` in the store, so the next start re-runs them."""
        for t in self._tasks:
            t.cancel()
        for task, _ in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *(t for t, _ in self._running.values()), return_exceptions=True)

    async def _supervise(self, name: str, step: Callable[[], Awaitable[bool]]) -> None:
        """Run `step` until it returns True. An exception is recorded (health: degraded; /metrics counts it),
        logged and retried after a back-off doubling to 10 s; a step that succeeds clears it. Only cancellation
        ends the loop otherwise: a failure never stops the server's work silently."""
        delay = BACKOFF_S[0]
        while True:
            try:
                if await step():
                    self.faults.pop(name, None)
                    return
                self.faults.pop(name, None)
                delay = BACKOFF_S[0]
                continue
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as e:
                self.storage_failed(e)
            except Exception as e:  # recorded, logged with its traceback, retried
                log.exception("%s failed; retrying in %.2g s", name, delay)
                self.faults[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                self.metrics.loop_errors[name] = self.metrics.loop_errors.get(name, 0) + 1
            self._backoff_s = delay
            await asyncio.sleep(delay)
            delay = min(2 * delay, BACKOFF_S[1])

    # ---------------------------------------------------------------------------------------------- health
    def storage_failed(self, e: StoreUnavailable, nbytes: int = 0) -> None:
        """Record a failed store write: degraded until a probe write of the same size passes."""
        if self.storage_error is None:
            log.error("job store cannot write (%s): refusing new jobs and holding results until it can", e)
        self.storage_error = e
        self._storage_need = max(self._storage_need, nbytes)
        self.metrics.storage_errors += 1
        self._wake.set()

    def storage_retry_after_s(self) -> int:
        return max(1, math.ceil(self._backoff_s))

    def _heal_storage(self) -> None:
        """While degraded: a probe write, then the results held in memory; raises StoreUnavailable until both
        pass, then clears the state."""
        self.store.probe(self._storage_need)
        while self._deferred:
            job_id, write = self._deferred[0]
            write()
            self._deferred.popleft()
            log.info("job %s: its result is stored now", job_id)
        if self.storage_error is not None:
            log.warning("job store writes again: dispatching resumes")
        self.storage_error, self._storage_need = None, 4096

    def _persist(self, job_id: str, write: Callable[[], None], nbytes: int = 0) -> None:
        """A job's end (result or failure) into the store; while the store cannot take it, kept for `_heal_storage`
        (the row stays in_progress meanwhile, and a restart re-runs the job: never lost)."""
        if self.storage_error is None:
            try:
                write()
                return
            except StoreUnavailable as e:
                self.storage_failed(e, nbytes)
        self._deferred.append((job_id, write))

    def health(self) -> dict[str, Any]:
        problems = dict(self.faults)
        if self.storage_error is not None or self._deferred:
            held = f" ({len(self._deferred)} job result(s) held until it writes)" if self._deferred else ""
            problems["storage"] = f"{self.storage_error or 'the job store cannot write'}{held}"
        status = "degraded" if problems else "ok" if self.ready else "starting"
        return {"status": status, "problems": problems, "ready": self.ready, "wait_s": self.expected_wait_s()}

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def job_seconds(self) -> float:
        """A job's time on an engine as measured: a running mean of finished jobs' times, seeded by the warm-up
        job's, and at least as long as the running jobs have run so far."""
        now = time.monotonic()
        return max([self._job_s or 1.0] + [now - t for t in self._run_started.values()])

    def _elapsed(self, job_id: str) -> float:
        return time.monotonic() - self._run_started.get(job_id, time.monotonic())

    def expected_wait_s(self) -> float:
        """Seconds until the jobs queued now have all started: queue length x measured job time / slots."""
        return len(self._queue) * self.job_seconds() / max(1, self.engine.slots)

    def retry_after_s(self) -> int:
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(self.expected_wait_s()))))

    def _measured(self, seconds: float) -> None:
        self._job_s = seconds if self._job_s is None else \
            (1 - JOB_TIME_SMOOTHING) * self._job_s + JOB_TIME_SMOOTHING * seconds

    # ---------------------------------------------------------------------------------------------- API side
    def submit(self, req: VideoRequest, image: bytes) -> dict[str, Any]:
        if len(self._queue) >= self.limits.max_queue:
            self.metrics.reject("queue_full")
            raise ApiError(429, f"the queue is full ({self.limits.max_queue} jobs waiting); retry later",
                           code="queue_full", headers={"Retry-After": str(self.retry_after_s())})
        try:
            row = self.store.add(req.to_dict(), image, stack_label(req.loras))
        except StoreUnavailable as e:
            self.storage_failed(e, len(image) + 4096)
            self.metrics.reject("storage_full" if e.full else "storage_error")
            raise
        self._queue.append({"id": row["id"], "stack": req.loras, "created_at": row["created_at"]})
        self._wake.set()
        return row

    async def cancel(self, job_id: str) -> bool:
        """DELETE: a queued job leaves the queue, a running one is cancelled on its engine; both are deleted."""
        try:
            deleted = self.store.delete(job_id)
        except StoreUnavailable as e:
            self.storage_failed(e)
            raise
        for item in list(self._queue):
            if item["id"] == job_id:
                self._queue.remove(item)
        self._deferred = deque(d for d in self._deferred if d[0] != job_id)
        running = self._running.get(job_id)
        if running is not None:
            self._cancelled.add(job_id)
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
    async def _warm_step(self) -> bool:
        try:
            seconds = await self.engine.warm()
        finally:
            self._warm_tried = True  # a failed warm-up still lets queued jobs run and fail with the engine's error
            self._wake.set()
        if self._job_s is None:
            self._job_s = float(seconds)
        self.ready = True
        log.info("engine warm (warm-up job %.2f s): ready", seconds)
        return True

    def _pick(self) -> dict[str, Any]:
        oldest = self._queue[0]
        if time.time() - oldest["created_at"] < self.group_wait_s:
            warm = {stack for _, stack in self._running.values()} | set(self._recent)
            for item in self._queue:
                if item["stack"] in warm:
                    self._queue.remove(item)
                    return item
        return self._queue.popleft()

    def _recover(self) -> None:
        self.recovered = self.store.recover()
        known = {item["id"] for item in self._queue}
        for row in self.store.queued():
            if row["id"] not in known:
                self._queue.append(_queued(row))
        if self.recovered.get("requeued") or self.recovered.get("failed"):
            log.warning("recovered the job store: %s", self.recovered)

    async def _dispatch_step(self) -> bool:
        """Start one job when the engine is warm (or its warm-up failed), a slot is free and the store writes;
        returns False (never done)."""
        if self.recovered is None:
            self._recover()
        if self.storage_error is not None:
            self._heal_storage()
        while (not self._warm_tried or not self._queue or len(self._running) >= self.engine.slots) \
                and self.storage_error is None:
            self._wake.clear()
            await self._wake.wait()
        if self.storage_error is not None:
            return False
        item = self._pick()
        try:
            started = self.store.start(item["id"])
        except BaseException:
            self._queue.appendleft(item)  # not started: it stays first in line
            raise
        if started:  # False: deleted meanwhile
            self._recent.append(item["stack"])
            self.metrics.queue_wait.observe(max(0.0, time.time() - item["created_at"]))
            self._run_started[item["id"]] = time.monotonic()
            self._running[item["id"]] = (asyncio.create_task(self._run(item["id"])), item["stack"])
        return False

    async def _run(self, job_id: str) -> None:
        try:
            row = self.store.get(job_id)
            if row is None:
                return
            image = self.store.image_path(job_id).read_bytes()
            await self._consume(job_id, row, image)
        except asyncio.CancelledError:
            pass  # DELETE (row already gone) or shutdown (row stays in_progress: re-run after restart)
        except Exception as e:  # noqa: BLE001 - an engine/transport failure: put the job back or fail it
            self._engine_failed(job_id, e)
        finally:
            self._running.pop(job_id, None)
            self._cancelled.discard(job_id)
            self._run_started.pop(job_id, None)
            self._wake.set()

    def _engine_failed(self, job_id: str, e: Exception) -> None:
        row = self.store.get(job_id)
        if row is not None and row["attempts"] < self.store.max_attempts:
            log.warning("job %s: engine failure (%s); re-queued", job_id, e)
            # best effort: a row left in_progress is started again all the same (store.start), while a deferred
            # requeue could land after the job was started again
            self._best_effort(self.store.requeue, job_id)
            self._queue.appendleft(_queued(row))
        else:
            self._fail(job_id, "engine_unavailable", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                       if str(e) else type(e).__name__)

    async def _consume(self, job_id: str, row: dict[str, Any], image: bytes) -> None:
        """The job's events. Its timeout runs from when an engine takes it (the "replica" event), so a job that
        waited behind another one's wind-down still gets its full time; waiting for an engine is bounded by the
        same time. A timeout closes the stream, which stops the job on its engine."""
        loop = asyncio.get_running_loop()
        timeout = self.limits.job_timeout_s
        deadline, started = loop.time() + timeout, False
        events = self.engine.generate(json.loads(row["request"]), image)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(anext(events), max(deadline - loop.time(), 0.0))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    self._fail(job_id, "timeout", f"the job ran longer than {timeout:g} s" if started else
                               f"no engine took the job within {timeout:g} s")
                    return
                if job_id in self._cancelled:
                    # the task's cancel can be lost: before 3.12, wait_for returns an event that completes as the
                    # cancel lands and drops the CancelledError (bpo-42130), and the job ran on to its end
                    # (test_cancel_running_job_on_a_replica: all 1980 DiT calls after a DELETE, 1 run in 4 here).
                    # So a DELETE is also a flag, checked after every event.
                    raise asyncio.CancelledError
                if "replica" in event:
                    started, deadline = True, loop.time() + timeout
                    self._run_started[job_id] = time.monotonic()  # its run time starts here
                    self._best_effort(self.store.ran_on, job_id, event["replica"])
                elif "step" in event:
                    self._best_effort(self.store.progress, job_id, event["step"], event["steps"])
                elif "video" in event:
                    self._persist(job_id, lambda video=event["video"], run_s=self._elapsed(job_id):
                                  self._completed(job_id, video, run_s), len(event["video"]))
                    return
                elif "error" in event:
                    err = event["error"]
                    self._fail(job_id, err.get("code", "error"), err.get("message", ""))
                    return
            self._fail(job_id, "engine_unavailable", "the engine ended the job without a result")
        finally:
            await events.aclose()

    def _best_effort(self, write: Callable[..., None], *args: Any) -> None:
        """A write nothing depends on (progress, where it ran): a store that cannot take it only marks the
        server degraded."""
        try:
            write(*args)
        except StoreUnavailable as e:
            self.storage_failed(e)

    def _completed(self, job_id: str, video: bytes, run_s: float) -> None:
        if self.store.complete(job_id, video, run_s):
            self.metrics.run_time.observe(run_s)
            self.metrics.jobs["completed"] += 1
            self._measured(run_s)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        run_s = self._elapsed(job_id)

        def write():
            self.store.fail(job_id, code, message, run_s)
            self.metrics.jobs["failed"] += 1
            self.metrics.failures[code] = self.metrics.failures.get(code, 0) + 1

        self._persist(job_id, write)

    async def _expire_loop(self) -> None:
        while True:
            try:
                removed = self.store.expire()
                if removed:
                    log.info("expired %d ended jobs", removed)
            except StoreUnavailable as e:
                self.storage_failed(e)
            except Exception:
                log.exception("job expiry failed")
            await asyncio.sleep(self.expire_every_s)


def _queued(row: dict[str, Any]) -> dict[str, Any]:
    """A stored job as a queue item: its stack from the request it was accepted with (survives a restart)."""
    return {"id": row["id"], "stack": stack_of(json.loads(row["request"])), "created_at": row["created_at"]}
