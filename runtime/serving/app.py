"""The HTTP face: the OpenAI videos API (+ wanrt's extras) as a FastAPI app around a Scheduler.

    POST   /v1/videos                 multipart (the openai client) or JSON -> job object (status "queued")
    GET    /v1/videos/{id}            job object: status, progress (and wanrt.step/steps), error
    GET    /v1/videos/{id}/content    the mp4 (variant=video)
    GET    /v1/videos                 list: after, limit, order -> {object: list, data, first_id, last_id, has_more}
    DELETE /v1/videos/{id}            cancels a queued/running job and deletes it and its output
    GET    /v1/loras                  the LoRA library: each LoRA's rank, targets and the engines it fits
    POST   /v1/predict                one DiT forward (engine testing)
    GET    /healthz, GET /metrics     readiness (200 ok; 503 starting | degraded, with the problems); Prometheus text

Two ASGI layers run before any route: `Guard` (bearer token, body size from Content-Length or counted while a
chunked body streams in, a deadline for the whole body: a slow or lying sender gets 408/413 instead of pinning a
worker) and the error handlers (every failure is {"error": {message, type, param, code}}; 500 only for bugs; a
store that cannot write is 507 (full) or 503, with Retry-After). Responses are ASCII JSON, so no stored text can
make one unencodable.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from wanrt.runtime.serving.bodies import read_video_body
from wanrt.runtime.serving.catalog import Catalog
from wanrt.runtime.serving.limits import ApiError, Limits, bad_request
from wanrt.runtime.serving.scheduler import Scheduler
from wanrt.runtime.serving.stacks import stack_label, stack_objects, stack_of
from wanrt.runtime.serving.job_store import StoreUnavailable
from wanrt.runtime.serving.requests import (
    check_image,
    parse_json_object,
    parse_predict_request,
    parse_video_request,
)

log = logging.getLogger("wanrt.serve")
OPEN_PATHS = {"/healthz"}  # liveness probes carry no token


@dataclass
class Service:
    catalog: Catalog
    limits: Limits
    scheduler: Scheduler
    token: str | None = None
    poll_after_ms: int = 500
    _started: bool = False

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.scheduler.start()

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.scheduler.stop()


# ------------------------------------------------------------------------------------------------ ASGI guard
class Guard:
    """Auth and body bounds as plain ASGI, so nothing reaches FastAPI's parsers unbounded."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits, metrics = self.service.limits, self.service.scheduler.metrics
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        started, status = [False], [0]

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                started[0], status[0] = True, message["status"]
            await send(message)

        err = self._check_headers(scope, headers, limits)
        if err is not None:
            metrics.reject(err.code or str(err.status))
            await _send_error(send_tracked, err)
        else:
            deadline = time.monotonic() + limits.body_timeout_s
            received = [0]

            async def bounded_receive():
                # raised as ApiError inside whatever parser is reading, so the route's handler answers 408/413
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
                except asyncio.TimeoutError:
                    metrics.reject("body_timeout")
                    raise ApiError(408, f"the body did not arrive within {limits.body_timeout_s:g} s",
                                   code="body_timeout") from None
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > limits.max_body_bytes:
                        metrics.reject("body_too_large")
                        raise ApiError(413, f"the body exceeds {limits.max_body_bytes} bytes", code="body_too_large")
                return message

            try:
                await self.app(scope, bounded_receive, send_tracked)
            except Exception:  # noqa: BLE001 - the app's handlers answered already; never let a bug drop a reply
                if not started[0]:
                    await _send_error(send_tracked, ApiError(500, "internal error; this is a wanrt bug",
                                                             code="internal_error", type="server_error"))
        key = (_route_label(scope.get("path", "")), status[0])
        metrics.requests[key] = metrics.requests.get(key, 0) + 1

    def _check_headers(self, scope, headers: dict[bytes, bytes], limits: Limits) -> ApiError | None:
        token = self.service.token
        if token and scope.get("path") not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not given:
                return ApiError(401, "missing bearer token (Authorization: Bearer ...)", code="missing_token")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return ApiError(401, "invalid bearer token", code="invalid_api_key")
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                return ApiError(400, "invalid Content-Length", code="invalid_content_length")
            if int(length) > limits.max_body_bytes:
                return ApiError(413, f"the body ({int(length)} bytes) exceeds {limits.max_body_bytes} bytes",
                                code="body_too_large")
        elif scope["method"] in ("POST", "PUT", "PATCH") and not chunked:
            return ApiError(411, "a body needs Content-Length or Transfer-Encoding: chunked", code="length_required")
        return None


_ROUTES = ("/v1/videos", "/v1/loras", "/v1/predict", "/healthz", "/metrics")


def _route_label(path: str) -> str:
    """A bounded label set for the request counter (arbitrary paths must not grow /metrics)."""
    path = re.sub(r"/video_[0-9A-Za-z]+", "/{id}", path)
    return path if path.startswith(_ROUTES) and len(path) < 40 else "other"


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: valid for any str, a lone surrogate from an older store included."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(err: ApiError) -> JSONResponse:
    return AsciiJSONResponse(err.body(), status_code=err.status, headers=err.headers)


# ------------------------------------------------------------------------------------------------ objects
def video_object(row: dict[str, Any]) -> dict[str, Any]:
    """A job row as OpenAI's Video object, with wanrt's details under `wanrt`."""
    req = json.loads(row["request"])
    steps = row["steps"] or req["steps"]
    status = row["status"]
    progress = 100 if status == "completed" else min(99, int(100 * row["step"] / steps)) if steps else 0
    error = {"code": row["error_code"], "message": row["error_message"]} if status == "failed" else None
    return {"id": row["id"], "object": "video", "created_at": int(row["created_at"]), "status": status,
            "model": req["model"], "progress": progress, "seconds": req["seconds"], "size": req["size"],
            "prompt": req["prompt"], "completed_at": int(row["completed_at"]) if row["completed_at"] else None,
            "expires_at": int(row["expires_at"]) if row["expires_at"] else None, "error": error,
            "remixed_from_video_id": None,
            "wanrt": {"step": row["step"], "steps": steps, "lora": stack_label(stack_of(req)),
                      "loras": stack_objects(stack_of(req)), "engine": req["engine"],
                      "frames": req["frames"], "height": req["height"], "width": req["width"], "seed": req["seed"],
                      "guidance": req["guidance"], "timesteps": req.get("timesteps"), "shift": req.get("shift"),
                      "recipe": req.get("recipe"), "fps": req["fps"], "attempts": row["attempts"],
                      "queue_s": row["started_at"] - row["created_at"] if row["started_at"] else None,
                      "run_s": row["run_s"], "replica": json.loads(row["replica"]) if row["replica"] else None}}


# ------------------------------------------------------------------------------------------------ the app
def build_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="wanrt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=AsciiJSONResponse)
    sched, limits, catalog = service.scheduler, service.limits, service.catalog

    @app.exception_handler(ApiError)
    async def _api_error(_request, err: ApiError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
        return error_response(bad_request(f"{param or 'request'}: {first.get('msg', 'invalid')}", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return error_response(ApiError(err.status_code, str(err.detail), code=code))

    @app.exception_handler(StoreUnavailable)
    async def _storage(_request, err: StoreUnavailable):
        # recorded by the scheduler where it was raised; the client may retry once the store writes again
        return error_response(ApiError(507 if err.full else 503, f"the server cannot store this now ({err}); "
                                       "retry later", code="insufficient_storage" if err.full else "storage_error",
                                       headers={"Retry-After": str(sched.storage_retry_after_s())}))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_request, _err: ClientDisconnect):
        # the client (or the front, refusing its body's framing) closed before the body arrived: nobody reads a
        # reply, and it is not a wanrt bug to log with a traceback
        return error_response(ApiError(400, "the client closed the connection before the body arrived",
                                       code="client_disconnected"))

    @app.exception_handler(Exception)
    async def _bug(_request, err: Exception):
        log.exception("unhandled error")
        return error_response(ApiError(500, f"internal error ({type(err).__name__}); this is a wanrt bug",
                                       code="internal_error", type="server_error"))

    def job_or_404(video_id: str) -> dict[str, Any]:
        row = sched.store.get(video_id) if len(video_id) < 64 else None
        if row is None:
            raise ApiError(404, f"no video job {video_id[:64]!r}", param="video_id", code="video_not_found")
        return row

    @app.post("/v1/videos")
    async def create_video(request: Request):
        await service.start()
        fields, image = await read_video_body(request, limits)
        req = parse_video_request(fields, catalog, limits)
        if image is None:
            raise bad_request("input_reference (the conditioning image) is required: Wan2.1 I2V generates from an "
                              "image", "input_reference", "missing_required_parameter")
        await asyncio.to_thread(check_image, image, limits)
        row = sched.submit(req, image)
        return AsciiJSONResponse(video_object(row), headers={"openai-poll-after-ms": str(service.poll_after_ms)})

    @app.get("/v1/videos")
    async def list_videos(after: str | None = None, limit: int = 20, order: str = "desc"):
        if not 1 <= limit <= 100:
            raise bad_request("limit must be 1..100", "limit")
        if order not in ("asc", "desc"):
            raise bad_request("order must be asc or desc", "order")
        if after is not None:
            job_or_404(after)
        rows, has_more = sched.store.list(after=after, limit=limit, order=order)
        data = [video_object(r) for r in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": has_more}

    @app.get("/v1/videos/{video_id}")
    async def get_video(video_id: str):
        obj = video_object(job_or_404(video_id))
        headers = {"openai-poll-after-ms": str(service.poll_after_ms)} if obj["status"] in ("queued",
                                                                                            "in_progress") else {}
        return AsciiJSONResponse(obj, headers=headers)

    @app.get("/v1/videos/{video_id}/content")
    async def get_content(video_id: str, variant: str = "video"):
        row = job_or_404(video_id)
        if variant != "video":
            raise bad_request(f"variant {variant[:32]!r}: this server has only 'video'", "variant")
        if row["status"] != "completed":
            raise ApiError(409, f"video {video_id} is {row['status']}, not completed", code="video_not_ready")
        path = sched.store.video_path(video_id)
        if not path.is_file():
            raise ApiError(404, f"the output of {video_id} has expired", code="video_expired")
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")

    @app.delete("/v1/videos/{video_id}")
    async def delete_video(video_id: str):
        job_or_404(video_id)
        await sched.cancel(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/loras")
    async def list_loras():
        return {"object": "list", "data": catalog.lora_objects()}

    @app.post("/v1/predict")
    async def predict(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "POST /v1/predict takes application/json", code="unsupported_media_type")
        req = parse_predict_request(parse_json_object(await request.body(), limits), catalog, limits)
        out = await sched.predict(req.to_dict())
        if "error" in out:
            err = out["error"]
            # the client's fault -> 400; a bug -> 500; the engine's own failure (load, LoRA file, missing
            # dependency) -> 503, not a 400 that tells the client to change a request that was valid
            code = err.get("code")
            status = (400 if err.get("client") or code == "invalid_request" else 500 if code == "internal_error"
                      else 503)
            raise ApiError(status, err.get("message", ""), code=code)
        result = out["result"]
        if isinstance(result, bytes):
            return Response(result, media_type="application/octet-stream")
        return result

    @app.get("/healthz")
    async def healthz():
        await service.start()
        health = sched.health()
        body = {"status": health["status"], "model": catalog.model, "queue_depth": sched.queue_depth,
                "running": sched.running, "slots": sched.engine.slots, "expected_wait_s": round(health["wait_s"], 3),
                "problems": health["problems"], "recovered": sched.recovered}
        # 503 until the engine is warm and while degraded: a load balancer sends nothing that would be refused
        return AsciiJSONResponse(body, status_code=200 if health["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics():
        text = sched.metrics.render(sched.queue_depth, sched.running, sched.store.counts(), sched.health())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    wrapped = Guard(app, service)
    wrapped.fastapi = app  # for tests and Ray's wrapper
    return wrapped
