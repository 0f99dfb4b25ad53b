"""The HTTP layers without Ray: the FastAPI app + scheduler + store + an in-process engine (the eager `tiny`
preset, bounded by the server's caps only), behind uvicorn on 127.0.0.1. Every failure class of issue 13's "Why"
gets its status here, plus tokens, 429, cancel and a crash. Engines from a bundle: tests/test_runtime_serve.py."""

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import openai
import pytest

from tests.serve_helpers import openai_client, ThreadedServer, free_port, local_service, png_bytes, wait_for

warnings.filterwarnings("ignore", category=DeprecationWarning)

TINY = {"model": "tiny", "size": "32x32"}
LONG = {"size": "128x128", "frames": "17", "steps": "50"}  # ~100 DiT calls: seconds
# 1980 DiT calls (several seconds even here): a cancel must land long before the end. Shift 1 keeps UniPC's 990
# integer timesteps distinct (at the tiny pipeline's shift 3 they repeat from 334 steps, refused as a bad schedule)
VERY_LONG = {**LONG, "steps": "990", "shift": "1"}


@pytest.fixture(scope="module")
def catalog():
    from wanrt.export.presets import PRESETS
    from wanrt.runtime.serving.catalog import eager_catalog

    return eager_catalog("tiny", PRESETS["tiny"].config)


@pytest.fixture(scope="module")
def worker(catalog):
    from wanrt.runtime.serving.worker import VideoWorker

    return VideoWorker(catalog, threads=1)


@pytest.fixture(scope="module")
def server(catalog, worker, tmp_path_factory):
    from wanrt.runtime.serving.app import build_app
    from wanrt.runtime.serving.limits import Limits

    limits = Limits(max_body_bytes=1 << 20, max_image_bytes=1 << 19, body_timeout_s=1.0)
    service = local_service(catalog, tmp_path_factory.mktemp("store"), limits, worker=worker)
    with ThreadedServer(build_app(service)) as srv:
        srv.service = service
        yield srv




def _raw(url, method, path, body=None, headers=None, timeout=10):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, dict(resp.getheaders()), raw
    finally:
        conn.close()


def _strict(raw):
    """JSON as a standard parser reads it: a bare NaN/Infinity (what the old server answered) fails here."""
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(raw, parse_constant=refuse)


def _error(raw):
    err = _strict(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def _create(client, **extra):
    return client.videos.create(prompt="a cat", input_reference=("in.png", png_bytes(), "image/png"),
                                extra_body=extra, **TINY)


# ------------------------------------------------------------------------------------------------ the client
def test_openai_client_jobs_list_and_delete(server):
    client = openai_client(server.url)
    videos = [client.videos.create_and_poll(prompt=f"a cat {i}", input_reference=("in.png", png_bytes(), "image/png"),
                                            extra_body={"steps": 1, "seed": i}, **TINY)
              for i in range(3)]
    assert all(v.status == "completed" and v.progress == 100 and v.model == "tiny" for v in videos)
    mp4 = client.videos.download_content(videos[0].id).read()
    assert mp4[4:8] == b"ftyp"
    page = client.videos.list(limit=2, order="asc")
    assert [v.id for v in page.data][:2] == [videos[0].id, videos[1].id] and page.has_more
    rest = client.videos.list(limit=2, order="asc", after=page.data[-1].id)
    assert [v.id for v in rest.data] == [videos[2].id] and not rest.has_more
    assert sorted(v.id for v in client.videos.list(limit=10).data) == sorted(v.id for v in videos)  # auto-paging
    deleted = client.videos.delete(videos[1].id)
    assert deleted.deleted and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(videos[1].id)
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(videos[1].id)


def test_json_body_with_a_data_url(server):
    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    status, _, raw = _raw(server.url, "POST", "/v1/videos", {"prompt": "a cat", "input_reference": image,
                                                             "steps": 1, "size": "32x32", "seconds": "0.3"})
    assert status == 200
    job = _strict(raw)
    assert job["object"] == "video" and job["status"] in ("queued", "in_progress") and job["wanrt"]["frames"] == 5
    done = openai_client(server.url).videos.poll(job["id"])
    assert done.status == "completed"


def test_openai_client_job_with_a_4_step_schedule(server, worker):
    """A recipe is one extra field: the replica makes 4 transformer calls (4 steps, no CFG) and the job object says
    the schedule it ran; a schedule that contradicts itself is a 400 naming the field, before a job exists."""
    client = openai_client(server.url)
    before = worker.forwards
    video = client.videos.create_and_poll(prompt="a cat", input_reference=("in.png", png_bytes(), "image/png"),
                                          extra_body={"recipe": "distill-4step", "seed": 1}, **TINY)
    assert video.status == "completed" and video.progress == 100
    assert worker.forwards - before == 4
    ran = video.model_extra["wanrt"]
    assert (ran["steps"], ran["guidance"], ran["timesteps"], ran["shift"], ran["recipe"]) == \
        (4, 1.0, [1000.0, 750.0, 500.0, 250.0], 5.0, "distill-4step")
    jobs = len(client.videos.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as e:
        _create(client, recipe="distill-4step", steps=8)
    assert e.value.body["param"] == "steps" and "disagrees" in e.value.body["message"]
    assert len(client.videos.list(limit=100).data) == jobs


def test_client_errors_are_typed(server):
    client = openai_client(server.url)
    with pytest.raises(openai.NotFoundError) as e:
        _create(client, lora="no-such-lora")
    assert e.value.body["code"] == "lora_not_found"
    with pytest.raises(openai.BadRequestError) as e:  # eager has no profile: the server's pixel cap bounds it
        client.videos.create(prompt="x", input_reference=("in.png", png_bytes(), "image/png"), model="tiny",
                             size="4096x2048")
    assert e.value.body["param"] == "size" and "limit" in e.value.body["message"]
    with pytest.raises(openai.APIStatusError) as e:  # oversize upload: refused from Content-Length, unread
        client.videos.create(prompt="x", input_reference=("big.png", b"\0" * (2 << 20), "image/png"),
                             model="tiny")
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError):
        client.videos.create(prompt="x", model="tiny")  # no input_reference


# ------------------------------------------------------------------------------------------------ "Why"
def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("path,body,status", [
    # a batch-64 latent behind "batch": 1 (was ~8 GB): the tensor's own header is checked
    ("/v1/predict", {"batch": 1, "inputs": {"latents": _npy(np.zeros((64, 36, 2, 4, 4), np.float32))}}, 400),
    ("/v1/predict", {"inputs": {"latents": _npy(np.full((1, 36, 2, 4, 4), np.nan, np.float32))}}, 400),  # NaN
    ("/v1/videos", b'{"prompt": "x", "guidance": 1e999}', 400),
    ("/v1/videos", b'{"prompt": "x", "seed": ' + b"7" * 5000 + b"}", 400),
    ("/v1/videos", b"[" * 50000 + b"]" * 50000, 400),
    ("/v1/videos", {"prompt": "x", "seed": "abc"}, 400),
    ("/v1/videos", {"prompt": "x", "fps": -5}, 400),
    ("/v1/videos", {"prompt": "x", "size": "4096x4096"}, 400),
    ("/v1/videos", {"prompt": "x" * 300_000}, 400),  # fits the 1 MB body, not the prompt caps
    ("/v1/videos", {"prompt": "x", "input_reference": "http://example.com/a.png"}, 400),  # nothing is fetched
])
def test_bad_bodies_get_4xx_json(server, path, body, status):
    t0 = time.monotonic()
    got, headers, raw = _raw(server.url, "POST", path, body)
    assert got == status and headers["content-type"] == "application/json"
    assert _error(raw)["message"]
    assert time.monotonic() - t0 < 5  # refused before any model work


def test_methods_routes_and_lengths(server):
    assert _raw(server.url, "PUT", "/v1/videos", b"{}")[0] == 405
    status, headers, raw = _raw(server.url, "GET", "/nope")
    assert status == 404 and _error(raw)["code"] == "not_found"
    assert _raw(server.url, "POST", "/v1/videos", b"{}", {"Content-Type": "text/plain"})[0] == 415
    status, _, raw = _raw(server.url, "GET", "/v1/videos/video_0000")
    assert status == 404 and _error(raw)["code"] == "video_not_found"
    # a body without Content-Length and not chunked: 411
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
    assert b" 411 " in sock.recv(4096).split(b"\r\n")[0] + b" "
    sock.close()


def _chunked(url, path, payload: bytes, chunk=4096):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, body=(payload[i:i + chunk] for i in range(0, len(payload), chunk)),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_chunked_bodies_are_read_and_capped(server):
    status, raw = _chunked(server.url, "/v1/predict", json.dumps({"seed": 1, "frames": 5, "height": 32,
                                                                  "width": 32}).encode())
    assert status == 200 and json.loads(raw)["shape"] == [1, 16, 2, 4, 4]  # handled, not the default request
    status, raw = _chunked(server.url, "/v1/predict", b'{"pad": "' + b"x" * (2 << 20) + b'"}')
    assert status == 413 and _error(raw)["code"] == "body_too_large"


def test_slow_senders_time_out_without_threads(server):
    port = int(server.url.rsplit(":", 1)[1])
    threads0 = threading.active_count()
    socks = []
    for _ in range(50):  # each promises 1000 bytes and sends 10
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"seed\": 1")
        socks.append(s)
    t0 = time.monotonic()
    assert _raw(server.url, "GET", "/healthz")[0] == 200 and time.monotonic() - t0 < 2  # still answering
    assert threading.active_count() - threads0 < 5  # connections are not threads
    first = socks[0].recv(4096)
    assert b" 408 " in first.split(b"\r\n")[0] + b" " and b"body_timeout" in first
    for s in socks:
        s.close()


# ------------------------------------------------------------------------------------------------ tokens, load
def test_token_required_and_checked(catalog, worker, tmp_path):
    from wanrt.runtime.serving.app import build_app

    service = local_service(catalog, tmp_path / "store", token="s3cret", worker=worker)
    with ThreadedServer(build_app(service)) as srv:
        with pytest.raises(openai.AuthenticationError):
            openai_client(srv.url, token="wrong").videos.list()
        status, _, raw = _raw(srv.url, "GET", "/v1/videos")
        assert status == 401 and _error(raw)["code"] == "missing_token"
        wait_for(lambda: _raw(srv.url, "GET", "/healthz")[0] == 200, timeout=60)  # health needs no token
        assert openai_client(srv.url, token="s3cret").videos.list().data == []
    service.scheduler.store.close()


def test_cancel_running_job_and_queue_full(catalog, worker, tmp_path):
    from wanrt.runtime.serving.app import build_app
    from wanrt.runtime.serving.limits import Limits

    service = local_service(catalog, tmp_path / "store", Limits(max_queue=1, max_steps=990), worker=worker)
    with ThreadedServer(build_app(service)) as srv:
        client = openai_client(srv.url)
        long_job = _create(client, **VERY_LONG)
        wait_for(lambda: client.videos.retrieve(long_job.id).status == "in_progress"
                 and client.videos.retrieve(long_job.id).model_extra["wanrt"]["step"] >= 1)
        queued = _create(client, steps=1)
        with pytest.raises(openai.RateLimitError) as e:  # one queued already: the bounded queue says 429
            _create(client, steps=1)
        assert int(e.value.response.headers["retry-after"]) >= 1
        before = worker.forwards
        assert client.videos.delete(long_job.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(long_job.id)
        done = client.videos.poll(queued.id)  # the engine is free again: the queued job runs
        assert done.status == "completed"
        # the cancelled job stopped at its next DiT call: far fewer than its 1980 calls were made after DELETE
        assert worker.forwards - before < 990
        text = _raw(srv.url, "GET", "/metrics")[2].decode()
        assert 'wanrt_jobs_total{outcome="cancelled"} 1' in text and 'wanrt_rejected_total{reason="queue_full"} 1' \
            in text and "wanrt_job_run_seconds_bucket" in text and "wanrt_queue_depth 0" in text
    service.scheduler.store.close()


def test_job_timeout_fails_the_job_and_frees_the_engine(catalog, worker, tmp_path):
    from wanrt.runtime.serving.app import build_app
    from wanrt.runtime.serving.limits import Limits

    service = local_service(catalog, tmp_path / "store", Limits(job_timeout_s=0.5), worker=worker)
    with ThreadedServer(build_app(service)) as srv:
        client = openai_client(srv.url)
        before = worker.forwards
        job = client.videos.poll(_create(client, **LONG).id)
        assert job.status == "failed" and job.error.code == "timeout"
        wait_for(lambda: not worker.describe()["busy"], timeout=30)
        assert worker.forwards - before < 100  # stopped, not run to the end unseen
    service.scheduler.store.close()


# ------------------------------------------------------------------------------------------------ crash
def _start_server(store, port):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "wanrt", "serve", "--backend", "eager", "--model", "tiny",
                             "--no-ray", "--port", str(port), "--store", str(store), "--threads", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def test_killed_server_loses_no_accepted_job(catalog, worker, tmp_path):
    from wanrt.runtime.serving.app import build_app

    port, store = free_port(), tmp_path / "store"
    url = f"http://127.0.0.1:{port}"
    proc = _start_server(store, port)  # a real `wanrt serve` process, so that it can really die
    try:
        wait_for(lambda: _ok(url), timeout=120, every=0.3)
        client = openai_client(url)
        running = _create(client, **LONG)
        queued = [_create(client, steps=1, seed=i) for i in range(2)]
        wait_for(lambda: client.videos.retrieve(running.id).status == "in_progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no shutdown hook runs
        proc.wait(timeout=30)
    # the restart opens the same store (in this process: the store, not the process, is what must survive)
    service = local_service(catalog, store, worker=worker)
    with ThreadedServer(build_app(service), port=port) as srv:
        client = openai_client(srv.url)
        results = [client.videos.poll(v.id) for v in (running, *queued)]
        assert [v.status for v in results] == ["completed"] * 3
        assert results[0].model_extra["wanrt"]["attempts"] == 2  # the interrupted run was re-run, not dropped
        assert json.loads(_raw(srv.url, "GET", "/healthz")[2])["recovered"]["requeued"] == 1
    service.scheduler.store.close()


def _ok(url):
    try:
        return _raw(url, "GET", "/healthz", timeout=2)[0] == 200
    except OSError:
        return False
