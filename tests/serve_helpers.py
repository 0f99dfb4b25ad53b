"""Shared pieces of the serve tests: tiny artifacts built once per session, a bundle, a real HTTP server on
127.0.0.1 in a thread, and the Ray environment that keeps every address on loopback."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

# Ray reads these when it starts: loopback node address, no token file, no usage report (see issue 13's facts).
# The GCS port wait goes from Ray's 30 s to 120 s, still bounded: in CI on 2026-12-07 the cluster test's head node
# missed the 30 s (the one error in 718 tests; here a head starts in 2-4 s even with both cores busy). The proxy's
# ready check as `wanrt serve` sets it (ray_app.LOCAL_RAY_ENV), also for the cluster test's own head node.
RAY_TEST_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_LOG_TO_STDERR": "0",
                "RAY_gcs_server_port_wait_time_s": "120", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}
LORA_A_SEED, LORA_B_SEED = 11, 22


def _tiny():
    from wanrt.export.model import ModelSpec

    return ModelSpec("tiny", layers=1)  # one block: half the export time, the same code paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(width: int = 32, height: int = 32, seed: int = 0) -> bytes:
    """A seeded RGB gradient + noise PNG (numpy + PIL only: no torch import for the HTTP-only tests)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 7.0)], -1)
    img = np.clip(img * 0.8 + 0.2 * rng.random((height, width, 3)), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _lora_file(path: Path, seed: int, rank: int = 4, targets: str = "all") -> Path:
    from wanrt.export.lora import synthetic_lora
    from wanrt.export.lora_formats import save_lora_file
    from wanrt.export.model import load_transformer

    return save_lora_file(synthetic_lora(load_transformer(_tiny()), rank, targets, seed), path)


def _export(out: Path, lora_file: Path | None, mode: str) -> Path:
    from wanrt.export.api import LoraSpec, export_model
    from wanrt.export.onnx_export import ExportSpec

    lora = LoraSpec(file=str(lora_file), mode=mode) if lora_file else LoraSpec(rank=4, mode=mode, seed=0)
    export_model(_tiny(), lora, ExportSpec(validate=False), out)
    return out


@pytest.fixture(scope="session")
def serve_artifacts(tmp_path_factory):
    """Two LoRA files, a merged export of LoRA a, a separate-mode export (rank 4), and a bundle of them
    (engines: `style-a` merged, `sep` separate; library: `style-b`). Built once per session (~20 s)."""
    root = tmp_path_factory.mktemp("serve-artifacts")
    lora_a = _lora_file(root / "style-a.safetensors", LORA_A_SEED)
    lora_b = _lora_file(root / "style-b.safetensors", LORA_B_SEED)
    merged_a = _export(root / "export-style-a", lora_a, "merged")
    separate = _export(root / "export-sep", None, "separate")
    from wanrt.runtime.serving.bundle import pack_bundle

    bundle = root / "bundle"
    pack_bundle(bundle, [("style-a", str(merged_a)), ("sep", str(separate))], [("style-b", str(lora_b))],
                name="wan-tiny")
    return {"root": root, "lora_a": lora_a, "lora_b": lora_b, "merged_a": merged_a, "separate": separate,
            "bundle": bundle}


@pytest.fixture(scope="session")
def stack_artifacts(serve_artifacts):
    """A bundle named `bundle` for LoRA stacks, around serve_artifacts' rank-4 separate export (engine `sep`):
    library `distill` (rank 2, every target) and `style` (rank 2, self-attention), which stack inside the branch
    (2 + 2 <= 4), and `style-b` (rank 4, every target), which with `distill` needs rank 6. Adds ~2 s."""
    from wanrt.runtime.serving.bundle import pack_bundle

    root = serve_artifacts["root"]
    distill = _lora_file(root / "distill.safetensors", 33, rank=2)
    style = _lora_file(root / "style.safetensors", 44, rank=2, targets="self-attn")
    bundle = root / "stack-bundle"
    pack_bundle(bundle, [("sep", str(serve_artifacts["separate"]))],
                [("distill", str(distill)), ("style", str(style)), ("style-b", str(serve_artifacts["lora_b"]))],
                name="bundle")
    return {**serve_artifacts, "distill": distill, "style": style, "stack_bundle": bundle}


class ThreadedServer:
    """The FastAPI app under uvicorn on 127.0.0.1 in a thread: the real HTTP stack, one process."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    timeout_keep_alive=5, timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)


def local_service(catalog, store_dir, limits=None, token=None, ttl_s=3600.0, worker=None):
    """Service with the in-process engine: the same scheduler/store/app code as under Ray."""
    from wanrt.runtime.serving.app import Service
    from wanrt.runtime.serving.limits import Limits
    from wanrt.runtime.serving.scheduler import Scheduler
    from wanrt.runtime.serving.job_store import JobStore
    from wanrt.runtime.serving.worker import LocalEngine, VideoWorker

    limits = limits or Limits()
    worker = worker or VideoWorker(catalog, threads=1)
    scheduler = Scheduler(JobStore(store_dir, ttl_s=ttl_s), LocalEngine(worker), limits)
    return Service(catalog, limits, scheduler, token=token, poll_after_ms=100)


def openai_client(url: str, token: str = "unused", timeout: float = 120):
    """The official client against a test server: no retries, so a refusal is seen as the server gave it."""
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=timeout)


def wait_for(predicate, timeout: float = 60.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def ray_log_tails(ray_dir: Path, lines: int = 15) -> str:
    """The last lines of the GCS and raylet logs under set_ray_env's folder: what a failed start leaves to read."""
    tails = []
    for log in sorted(ray_dir.glob("session_*/logs/*")):
        if log.name.startswith(("gcs_server", "raylet")) and log.is_file():
            tails.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(tails) or f"no GCS or raylet log under {ray_dir}"


_RAY_ROOT: list[Path] = []  # this process's own Ray temp root, made once by mkdtemp


def set_ray_env() -> Path:
    """Call before `import ray` (Ray reads these at import): loopback, no auth token, and a short temp root that
    this process made itself (socket paths are length-limited). The root is never taken from the environment: the
    module fixtures delete what Ray leaves under it, and a RAY_TMPDIR the user set (even "" = the working
    directory, which once cost a checkout) is theirs. Returns `root/ray`, the only folder a fixture may remove."""
    if not _RAY_ROOT:
        _RAY_ROOT.append(Path(tempfile.mkdtemp(prefix="wrt", dir="/tmp")))
        atexit.register(shutil.rmtree, _RAY_ROOT[0], True)
    for k, v in RAY_TEST_ENV.items():
        os.environ[k] = v
    os.environ["RAY_TMPDIR"] = str(_RAY_ROOT[0])
    (_RAY_ROOT[0] / "ray").mkdir(exist_ok=True)
    return _RAY_ROOT[0] / "ray"
