"""`wanrt serve`: one prebuilt artifact (ONNX export or TensorRT engine directory, or an eager preset) behind a
small stdlib HTTP server.

    GET  /healthz       {"status": "ok", "backend", "identity": {kind, sha256, specs, created, wanrt_version}, ...}
    POST /v1/predict    JSON {"frames", "height", "width", "batch", "seed", "timestep", "format": "stats"|"npy",
                        "inputs": {"latents"|"text"|"image"|"timestep": base64 .npy}?}
                        -> stats JSON {shape, dtype, mean, std, min, max, latency_ms} or the prediction as .npy bytes
    POST /v1/generate   JSON {"prompt", "negative_prompt", "image": base64 PNG/JPEG?, "frames", "height", "width",
                        "steps", "guidance", "seed", "fps"} -> video/mp4 bytes (the tiny pipeline, or --pipeline)

Requests are bounded: body size (--max-body-mb), shapes inside the artifact's exported range and --max-frames, at
most --max-steps; one model call at a time (a lock), so a burst queues instead of exhausting memory. Errors are
JSON {"error": "..."} with 400 (bad input), 404, 405, 413 (too large) or 500.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from wanrt.errors import BadInputError, WanrtError


class ServeState:
    """The loaded backend plus what requests are checked against."""

    def __init__(self, backend, identity: dict[str, Any], max_body: int = 32 * 2**20, max_frames: int = 33,
                 max_steps: int = 50, pipeline: str | None = None):
        self.backend, self.identity = backend, identity
        self.max_body, self.max_frames, self.max_steps = max_body, max_frames, max_steps
        self.pipeline_source = pipeline
        self.lock = threading.Lock()
        self.pipe = None
        self.requests = 0

    def ranges(self) -> dict[str, Any] | None:
        return getattr(self.backend, "shape_ranges", None)


def identity_of(manifest: dict[str, Any] | None, backend) -> dict[str, Any]:
    if not manifest:
        return {"kind": "eager", "specs": getattr(backend, "specs", None)}
    payload = manifest.get("payload", {})
    return {"kind": manifest.get("kind"), "sha256": payload.get("sha256"), "created": manifest.get("created"),
            "wanrt_version": manifest.get("wanrt_version"), "specs": manifest.get("specs")}


def _shape(state: ServeState, req: dict[str, Any], default=(5, 32, 32)):
    from wanrt.export.onnx_export import check_video_shape

    try:
        frames = int(req.get("frames", default[0]))
        height = int(req.get("height", default[1]))
        width = int(req.get("width", default[2]))
    except (TypeError, ValueError):
        raise BadInputError("frames/height/width must be integers") from None
    shape = check_video_shape(frames, height, width)
    if frames > state.max_frames:
        raise BadInputError(f"frames {frames} exceeds this server's limit {state.max_frames}")
    ranges = state.ranges()
    if ranges and ranges.get("latent"):
        for axis, v in zip("FHW", shape.latent):
            lo, hi = ranges["latent"][axis]
            if not lo <= v <= hi:
                raise BadInputError(f"{shape}: latent {axis}={v} outside the artifact's range {lo}..{hi}")
    return shape


def _npy_decode(text: str, name: str) -> torch.Tensor:
    import numpy as np

    try:
        arr = np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any decoding problem is the client's
        raise BadInputError(f"inputs.{name}: not a base64 .npy array ({e})") from None
    if arr.dtype.kind != "f":
        raise BadInputError(f"inputs.{name}: float array expected, got {arr.dtype}")
    return torch.from_numpy(arr.astype("float32", copy=False))


def predict(state: ServeState, req: dict[str, Any]) -> tuple[dict[str, Any] | None, bytes | None]:
    """One DiT forward on given or seeded inputs."""
    from wanrt.export.presets import IMAGE_TOKENS, TEXT_TOKENS

    config = state.backend.config
    batch = int(req.get("batch", 1))
    if batch not in (1, 2):
        raise BadInputError("batch must be 1 or 2")
    fmt = req.get("format", "stats")
    if fmt not in ("stats", "npy"):
        raise BadInputError("format must be 'stats' or 'npy'")
    given = req.get("inputs") or {}
    if not isinstance(given, dict):
        raise BadInputError("inputs must be an object of base64 .npy arrays")
    unknown = set(given) - {"latents", "timestep", "text", "image"}
    if unknown:
        raise BadInputError(f"unknown inputs: {', '.join(sorted(unknown))}")
    tensors = {k: _npy_decode(v, k) for k, v in given.items()}
    if "latents" in tensors:
        lat = tensors["latents"]
        if lat.ndim != 5 or lat.shape[1] != config.get("in_channels", 36):
            raise BadInputError(f"inputs.latents: want [B, {config.get('in_channels', 36)}, F, H, W]")
        batch = lat.shape[0]
        f, h, w = lat.shape[2:]
        _shape(state, {"frames": (f - 1) * 4 + 1, "height": h * 8, "width": w * 8})
    else:
        shape = _shape(state, req)
        f, h, w = shape.latent
    gen = torch.Generator().manual_seed(int(req.get("seed", 0)))
    latents = tensors.get("latents", None)
    if latents is None:
        latents = torch.randn(batch, config.get("in_channels", 36), f, h, w, generator=gen)
    timestep = tensors.get("timestep", torch.full((batch,), float(req.get("timestep", 500.0))))
    text = tensors.get("text")
    if text is None:
        text = torch.randn(batch, TEXT_TOKENS, config["text_dim"], generator=gen)
    image = tensors.get("image")
    if image is None and config.get("image_dim") is not None:
        image = torch.randn(batch, IMAGE_TOKENS, config["image_dim"], generator=gen)
    expect = {"timestep": (batch,), "text": (batch, TEXT_TOKENS, config["text_dim"])}
    if config.get("image_dim") is not None:
        expect["image"] = (batch, IMAGE_TOKENS, config["image_dim"])
    for name, want in expect.items():
        got = {"timestep": timestep, "text": text, "image": image}[name]
        if tuple(got.shape) != want:
            raise BadInputError(f"inputs.{name}: shape {tuple(got.shape)}, want {want}")
    with state.lock:
        t0 = time.perf_counter()
        out = state.backend(latents, timestep, text, image)
        state.backend.synchronize()
        latency = time.perf_counter() - t0
    out = out.float().cpu()
    if fmt == "npy":
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, out.numpy(), allow_pickle=False)
        return None, buf.getvalue()
    return {"shape": list(out.shape), "dtype": str(state.backend.dtype).replace("torch.", ""),
            "mean": float(out.mean()), "std": float(out.std()), "min": float(out.min()), "max": float(out.max()),
            "finite": bool(torch.isfinite(out).all()), "latency_ms": latency * 1e3}, None


def generate(state: ServeState, req: dict[str, Any]) -> bytes:
    """Prompt (+ optional image) -> mp4 bytes through the pipeline around the served backend."""
    import os
    import tempfile

    from PIL import Image, UnidentifiedImageError

    from wanrt.runtime.generate import GenerateSpec, generate_video
    from wanrt.runtime.pipeline import build_pipeline, write_video

    prompt = req.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInputError("prompt (a non-empty string) is required")
    shape = _shape(state, req)
    steps = int(req.get("steps", 2))
    if not 1 <= steps <= state.max_steps:
        raise BadInputError(f"steps must be 1..{state.max_steps}")
    if req.get("image"):
        try:
            image = Image.open(io.BytesIO(base64.b64decode(req["image"], validate=True))).convert("RGB")
        except (ValueError, UnidentifiedImageError, OSError) as e:
            raise BadInputError(f"image: not a base64 PNG/JPEG ({e})") from None
    else:
        from wanrt.runtime.bench import bench_image

        image = bench_image(shape.height, shape.width, int(req.get("seed", 0)))
    spec = GenerateSpec(prompt=prompt, negative_prompt=str(req.get("negative_prompt", "")), frames=shape.frames,
                        height=shape.height, width=shape.width, steps=steps,
                        guidance=float(req.get("guidance", 5.0)), seed=int(req.get("seed", 0)),
                        fps=int(req.get("fps", 16)))
    with state.lock:
        if state.pipe is None:
            state.pipe = build_pipeline(state.backend, checkpoint=state.pipeline_source)
        frames, _ = generate_video(state.backend, image, spec, pipe=state.pipe)
    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        write_video(frames, tmp, fps=spec.fps)
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp)


class Handler(BaseHTTPRequestHandler):
    server_version = "wanrt-serve"
    protocol_version = "HTTP/1.1"
    state: ServeState  # set on the subclass by make_server

    def log_message(self, format, *args):  # noqa: A002 - quiet by default; --verbose turns it on
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") in ("/healthz", "/v1/healthz"):
            st = self.state
            self._json(200, {"status": "ok", "backend": st.backend.describe(), "identity": st.identity,
                             "requests": st.requests})
        elif self.path.startswith("/v1/"):
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.path}: use POST"})
        else:
            self._json(404, {"error": f"{self.path}: not found"})

    def do_POST(self):  # noqa: N802
        st = self.state
        route = self.path.rstrip("/")
        if route not in ("/v1/predict", "/v1/generate"):
            self._json(404 if route != "/healthz" else 405, {"error": f"{self.path}: not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._json(400, {"error": "bad Content-Length"})
            return
        if length > st.max_body:
            self.close_connection = True
            self._json(413, {"error": f"body of {length} bytes exceeds {st.max_body}"})
            return
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(req, dict):
                raise BadInputError("the body must be a JSON object")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._json(400, {"error": f"invalid JSON: {e}"})
            return
        except BadInputError as e:
            self._json(400, {"error": str(e)})
            return
        st.requests += 1
        try:
            if route == "/v1/predict":
                stats, raw = predict(st, req)
                if raw is not None:
                    self._send(200, raw, "application/octet-stream")
                else:
                    self._json(200, stats)
            else:
                self._send(200, generate(st, req), "video/mp4")
        except WanrtError as e:
            self._json(400 if e.exit_code == 2 else 500, {"error": str(e)})
        except (RuntimeError, ValueError, TypeError) as e:
            self._json(500, {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


def make_server(state: ServeState, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False):
    """A ThreadingHTTPServer bound to (host, port); port 0 picks a free one (server.server_address)."""
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.verbose = verbose
    return server


def load_state(backend_name: str, engine: str | None, model_spec, lora_spec, device: str = "cpu",
               verify: bool = True, cuda_graph: bool = False, **limits) -> ServeState:
    """Load what `wanrt serve` serves: an artifact directory (manifest checked, sha256 verified for ONNX) or an
    eager/compile preset built from specs."""
    from wanrt.runtime import backends as B

    if engine is not None and backend_name in ("ort", "trt"):
        options = {"verify": verify} if backend_name == "ort" else {"verify": verify, "cuda_graph": cuda_graph}
        backend = B.create_backend(backend_name, artifact=engine, device=device, **options)
        manifest = backend.manifest
    elif engine is not None:
        raise BadInputError(f"--engine is for backends ort/trt, not '{backend_name}'")
    else:
        if backend_name not in ("eager", "compile"):
            raise BadInputError(f"backend '{backend_name}' serves a prebuilt directory: pass --engine DIR")
        backend = B.backend_from_specs(backend_name, model_spec, lora_spec, device=device)
        backend.specs = {"model": model_spec, "lora": lora_spec}
        manifest = None
    from wanrt.artifacts import to_jsonable

    return ServeState(backend, to_jsonable(identity_of(manifest, backend)), **limits)
