"""Every bound a request is checked against, and the one error type the API answers with.

The limits are data (one frozen dataclass the CLI fills) so the ingress, the tests and the load tool agree on them;
a field nobody can set is not a limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from wanrt.text import MAX_PROMPT_BYTES


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 2**20  # whole request body (multipart image included)
    max_image_bytes: int = 8 * 2**20  # the encoded input_reference
    max_image_pixels: int = 4096 * 4096  # width x height read from the header, before decoding
    max_prompt_bytes: int = MAX_PROMPT_BYTES  # UTF-8 bytes of prompt / negative_prompt
    max_prompt_tokens: int = 512  # the text encoder's length (diffusers' I2V attention hard-codes 512)
    max_frames: int = 81  # the server's cap on top of the engine profile (eager has no profile)
    max_pixels: int = 1280 * 720  # height x width cap on top of the engine profile
    max_steps: int = 50
    max_guidance: float = 30.0
    max_fps: int = 60
    max_lora_scale: float = 4.0
    max_stack: int = 8  # LoRAs in one request's `loras` stack
    max_batch: int = 2  # /v1/predict: CFG's conditional + unconditional
    max_queue: int = 64  # jobs queued (not yet running); beyond it 429 + Retry-After
    max_predict_inflight: int = 4  # concurrent /v1/predict calls; beyond it 429
    body_timeout_s: float = 30.0  # a client must deliver its body within this (slow senders get 408)
    job_timeout_s: float = 3600.0  # one job's run on a replica; past it the job fails with a reason
    predict_timeout_s: float = 120.0
    max_json_depth: int = 16  # nested JSON beyond this is refused before parsing
    max_key_bytes: int = 64  # a parameter or form field name (every name and text passes wanrt.text's rule)
    # the request head, checked by front.py before Ray's proxy (or uvicorn) parses it: request line + headers,
    # header lines, and the time from connect to the blank line (slow header senders get 408 and are dropped)
    max_header_bytes: int = 64 * 2**10
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_connections: int = 1024  # open client connections; beyond it 503 + Retry-After (bounds the front's memory)
    keep_alive_s: int = 5  # the proxy's idle keep-alive (its clients are the front's one-request connections)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class ApiError(Exception):
    """A client-visible failure in the OpenAI error shape {"error": {"message", "type", "param", "code"}}.

    Raised anywhere below the app; the app turns it into one JSON response with `status` (4xx for the client's
    mistakes, 429/503 for load, 500 only for bugs).
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                408: "timeout_error", 409: "invalid_request_error", 411: "invalid_request_error",
                413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error",
                503: "server_error", 507: "server_error"}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)
