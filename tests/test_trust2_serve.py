"""Issue 16's server items as a user or an attacker meets them: a full disk under the job store (a real tmpfs,
filled until the kernel says ENOSPC), text that is not text, hostile field values, a job timeout followed by more
jobs, readiness and Retry-After right after start, and the README's openai snippet run as printed."""

import base64
import errno
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import openai
import pytest

from tests.serve_helpers import ThreadedServer, free_port, local_service, png_bytes, wait_for

warnings.filterwarnings("ignore", category=DeprecationWarning)

LONG = {"size": "128x128", "frames": "17", "steps": "50"}  # ~100 DiT calls: about a second
IMAGE_URL = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def _raw(url, method, path, body=None, headers=None, timeout=30):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _error(raw):
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _create(client, **extra):
    return client.videos.create(prompt="a cat", model="tiny", input_reference=("in.png", png_bytes(), "image/png"),
                                extra_body=extra)


@pytest.fixture(scope="module")
def catalog():
    from wanrt.export.presets import PRESETS
    from wanrt.runtime.serving.catalog import eager_catalog

    return eager_catalog("tiny", PRESETS["tiny"].config)


@pytest.fixture(scope="module")
def server(catalog, tmp_path_factory):
    from wanrt.runtime.serving.app import build_app

    service = local_service(catalog, tmp_path_factory.mktemp("store"))
    with ThreadedServer(build_app(service)) as srv:
        srv.service = service
        wait_for(lambda: _raw(srv.url, "GET", "/healthz")[0] == 200, timeout=120)
        yield srv
    service.scheduler.store.close()


# ------------------------------------------------------------------------------------------------ a full disk
def _mount_works(tmp_path) -> bool:
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fill(directory: Path) -> Path:
    """Write zeros until the file system refuses: the disk is really full, ENOSPC from the kernel."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_full_disk_refuses_cleanly_and_resumes_without_restart(tmp_path):
    """`wanrt serve` with its store on a small tmpfs (its own mount namespace): fill it while a job runs, get 507 +
    Retry-After and a degraded /healthz, free it, and the same process finishes the running job and takes new ones;
    no accepted job lost, nothing half-written."""
    if not _mount_works(tmp_path):
        pytest.skip("platform: cannot mount a tmpfs here (unshare -rm + mount: user namespaces disabled)")
    store, port = tmp_path / "store", free_port()
    store.mkdir()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"  # the server's stderr: shown if this fails
    serve = [sys.executable, "-m", "wanrt", "serve", "--backend", "eager", "--model", "tiny", "--no-ray", "--port",
             str(port), "--store", str(store), "--threads", "1", "--max-steps", "200"]
    proc = subprocess.Popen(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"',
                             str(store), *serve], stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    view = Path(f"/proc/{proc.pid}/root{store}")  # the store as the server sees it: on its tmpfs
    try:
        wait_for(lambda: _health(url)[0] == 200, timeout=240, every=0.5)
        client = _client(url)
        running = _create(client, size="128x128", frames="17", steps=200)  # ~400 DiT calls: seconds
        wait_for(lambda: client.videos.retrieve(running.id).status == "in_progress")
        filler = _fill(view)

        with pytest.raises(openai.APIStatusError) as e:  # the upload cannot be stored: 507, not a 500
            _create(client, steps=1)
        assert e.value.status_code == 507 and int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.body["code"] == "insufficient_storage" and e.value.body["type"] == "server_error"
        status, health = _health(url)
        assert status == 503 and health["status"] == "degraded" and "storage" in health["problems"]
        metrics = _raw(url, "GET", "/metrics")[2].decode()
        assert "wanrt_degraded 1" in metrics and not re.search(r"wanrt_storage_errors_total 0\b", metrics)
        # the running job ends while the disk is full: its result is held, the job is not failed or lost
        wait_for(lambda: "held" in _health(url)[1]["problems"].get("storage", ""), timeout=120)
        assert client.videos.retrieve(running.id).status == "in_progress"
        assert len(client.videos.list(limit=100).data) == 1  # the refused job left no row

        filler.unlink()  # space returns; nothing restarts the server
        done = client.videos.poll(running.id, poll_interval_ms=200)
        assert done.status == "completed", done.error
        wait_for(lambda: _health(url)[0] == 200, timeout=60)
        again = client.videos.poll(_create(client, steps=1).id, poll_interval_ms=200)  # new jobs run again
        assert again.status == "completed"
        for job in (done, again):
            assert client.videos.download_content(job.id).read()[4:8] == b"ftyp"
        assert proc.poll() is None  # the same process throughout
        leftovers = [p.name for p in (view / "inputs").iterdir()] + [p.name for p in (view / "videos").iterdir()
                                                                     if not p.name.startswith("video_")]
        assert leftovers == []  # no image of a refused job, no temporary file
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        print(log.read_text(errors="replace")[-4000:])


def _health(url):
    try:
        status, _, raw = _raw(url, "GET", "/healthz", timeout=5)
        return status, json.loads(raw)
    except OSError:
        return 0, {}


# ------------------------------------------------------------------------------------------------ text
def _multipart(fields: list[tuple[bytes, bytes]], image: bytes) -> tuple[bytes, str]:
    boundary = b"wanrt-test-boundary"
    out = b""
    for name, value in fields:
        out += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
    out += (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="input_reference"; filename="in.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--" + boundary + b"--\r\n")
    return out, "multipart/form-data; boundary=" + boundary.decode()


@pytest.mark.parametrize("body,param", [
    (b'{"prompt": "a \\ud800 cat"}', "prompt"),  # a lone surrogate, as JSON escapes it
    (b'{"prompt": "a cat", "negative_prompt": "\\udfff"}', "negative_prompt"),
    (b'{"prompt": "a cat", "pr\\ud800mpt": "x"}', "pr\\ud800mpt"),  # in a parameter name
    (b'{"prompt": "a cat\\u0000"}', "prompt"),
    (b'{"prompt": "a \\u001b[31m cat"}', "prompt"),  # a terminal escape
])
def test_json_text_that_is_not_text_is_refused_before_a_job(server, body, param):
    before = len(_client(server.url).videos.list(limit=100).data)
    data = json.loads(body)
    data["input_reference"] = IMAGE_URL
    raw_body = json.dumps(data).encode()  # json.dumps escapes the surrogate back as \ud800
    status, headers, raw = _raw(server.url, "POST", "/v1/videos", raw_body)
    assert status == 400 and headers["content-type"] == "application/json"
    err = _error(raw)
    assert err["param"] == param and err["code"] == "invalid_text"
    client = _client(server.url)
    assert len(client.videos.list(limit=100).data) == before  # nothing stored, nothing run
    assert _raw(server.url, "GET", "/v1/videos?limit=100")[0] == 200


@pytest.mark.parametrize("fields,param", [
    ([(b"prompt", b"a \xff\xfe cat")], "prompt"),  # not UTF-8 (was accepted as Latin-1)
    ([(b"prompt", b"a \xed\xa0\x80 cat")], "prompt"),  # a surrogate encoded as UTF-8 (CESU)
    ([(b"prompt", b"a cat"), (b"negative_prompt", b"\xc3")], "negative_prompt"),  # truncated sequence
    ([(b"prompt", b"a cat"), (b"pr\xffmpt", b"x")], "pr\\xffmpt"),  # in a field name
])
def test_multipart_text_that_is_not_utf8_is_refused(server, fields, param):
    body, ctype = _multipart(fields, png_bytes())
    status, _, raw = _raw(server.url, "POST", "/v1/videos", body, {"Content-Type": ctype})
    assert status == 400
    err = _error(raw)
    assert err["param"] == param and err["code"] == "invalid_text"


def test_real_unicode_round_trips(server):
    prompt = "un chat 🐱 sur une planche,\r\nvague géante\tà Nazaré"
    body, ctype = _multipart([(b"prompt", prompt.encode()), (b"steps", b"1"), (b"size", b"32x32")], png_bytes())
    status, _, raw = _raw(server.url, "POST", "/v1/videos", body, {"Content-Type": ctype})
    assert status == 200
    job = json.loads(raw)
    client = _client(server.url)
    assert client.videos.poll(job["id"], poll_interval_ms=100).status == "completed"
    assert client.videos.retrieve(job["id"]).prompt == prompt
    assert prompt in [v.prompt for v in client.videos.list(limit=100).data]


# ------------------------------------------------------------------------------------------------ hostile values
def _video(**fields):
    return {"prompt": "a cat", "input_reference": IMAGE_URL, "size": "32x32", "steps": 1, **fields}


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/videos", _video(seed=10**30)),
    ("POST", "/v1/videos", _video(seed=-1)),
    ("POST", "/v1/videos", _video(steps=1e308)),
    ("POST", "/v1/videos", _video(steps=[1])),
    ("POST", "/v1/videos", _video(steps=True)),
    ("POST", "/v1/videos", _video(size={"w": 32})),
    ("POST", "/v1/videos", _video(size="-32x32")),
    ("POST", "/v1/videos", _video(size="0x0")),
    ("POST", "/v1/videos", _video(size="99999x99999")),
    ("POST", "/v1/videos", _video(frames=-1)),
    ("POST", "/v1/videos", _video(frames="4")),
    ("POST", "/v1/videos", _video(fps=0)),
    ("POST", "/v1/videos", _video(guidance="nan")),
    ("POST", "/v1/videos", _video(guidance=-1)),
    ("POST", "/v1/videos", _video(lora_scale="inf")),
    ("POST", "/v1/videos", _video(seconds="1e999")),
    ("POST", "/v1/videos", _video(seconds=-3)),
    ("POST", "/v1/videos", _video(prompt=5)),
    ("POST", "/v1/videos", _video(prompt=None)),
    ("POST", "/v1/videos", _video(prompt={"text": "a cat"})),
    ("POST", "/v1/videos", _video(model=["tiny"])),
    ("POST", "/v1/videos", _video(lora={"name": "x"})),
    ("POST", "/v1/videos", _video(input_reference={"image_url": 5})),
    ("POST", "/v1/videos", _video(input_reference="data:image/png;base64,AAAA")),
    ("POST", "/v1/videos", _video(unknown_field=1)),
    ("POST", "/v1/videos", b'{"prompt": "a cat", "guidance": NaN}'),
    ("POST", "/v1/videos", b'{"prompt": "a cat", "guidance": -Infinity}'),
    ("POST", "/v1/videos", b'{"prompt": "a cat", "steps": 1e999}'),
    ("POST", "/v1/videos", b'["prompt"]'),
    ("POST", "/v1/videos", b'"a cat"'),
    ("POST", "/v1/videos", b'{"prompt": "a cat"'),
    ("POST", "/v1/videos", b"\xff\xfe{}"),
    ("POST", "/v1/predict", {"batch": -1}),
    ("POST", "/v1/predict", {"height": 10**20}),
    ("POST", "/v1/predict", {"timestep": "nan"}),
    ("POST", "/v1/predict", {"inputs": []}),
    ("POST", "/v1/predict", {"inputs": {"latents": 5}}),
    ("POST", "/v1/predict", {"inputs": {"latents\ud800": "x"}}),
    ("POST", "/v1/predict", {"format": ["npy"]}),
    ("GET", "/v1/videos?limit=abc", None),
    ("GET", "/v1/videos?limit=100000000000000000000000", None),
    ("GET", "/v1/videos?order=%ED%A0%80", None),
    ("GET", "/v1/videos?after=%ED%A0%80", None),
    ("GET", "/v1/videos/%ED%A0%80", None),
    ("GET", "/v1/videos/%00", None),
    ("DELETE", "/v1/videos/" + "x" * 5000, None),
])
def test_hostile_values_get_4xx_in_the_error_shape(server, method, path, body):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    status, headers, raw = _raw(server.url, method, path, data)
    assert 400 <= status < 500, (status, raw[:300])
    assert headers["content-type"] == "application/json" and _error(raw)["message"]


# ------------------------------------------------------------------------------------------------ job timeout
def test_a_timed_out_job_frees_the_engine_for_the_next_ones(catalog, tmp_path):
    """A cold engine and a 1 s --job-timeout: the long job fails with `timeout` and stops on the engine, and the jobs
    queued behind it all complete (they used to time out in a cascade behind its wind-down)."""
    from wanrt.runtime.serving.app import build_app
    from wanrt.runtime.serving.limits import Limits
    from wanrt.runtime.serving.worker import VideoWorker

    worker = VideoWorker(catalog, threads=1)  # cold: nothing loaded, no pipeline built
    service = local_service(catalog, tmp_path / "store", Limits(job_timeout_s=1.0), worker=worker)
    with ThreadedServer(build_app(service)) as srv:
        client = _client(srv.url)
        long_job = _create(client, **LONG, seed=1)
        quick = [_create(client, size="32x32", steps=1) for _ in range(3)]
        failed = client.videos.poll(long_job.id, poll_interval_ms=100)
        assert failed.status == "failed" and failed.error.code == "timeout"
        forwards = worker.forwards
        done = [client.videos.poll(v.id, poll_interval_ms=100) for v in quick]
        assert [v.status for v in done] == ["completed"] * 3, [v.error for v in done]
        assert all(v.model_extra["wanrt"]["run_s"] < 1.0 for v in done)
        assert worker.forwards - forwards <= 3 * 2 + 2  # the timed-out job made at most one more call after it failed
    service.scheduler.store.close()


# ------------------------------------------------------------------------------------------------ readiness
def test_ready_only_once_warm_and_retry_after_from_the_measured_wait(catalog, tmp_path):
    from wanrt.runtime.serving.app import build_app
    from wanrt.runtime.serving.limits import Limits
    from wanrt.runtime.serving.worker import VideoWorker

    worker = VideoWorker(catalog, threads=1)  # cold
    service = local_service(catalog, tmp_path / "store", Limits(max_queue=2), worker=worker)
    with ThreadedServer(build_app(service)) as srv:
        status, health = _health(srv.url)
        assert status == 503 and health["status"] == "starting"  # up, but the engine has not run a job yet
        assert "wanrt_ready 0" in _raw(srv.url, "GET", "/metrics")[2].decode()
        wait_for(lambda: _health(srv.url)[0] == 200, timeout=120)
        assert worker.describe()["warm_s"] is not None  # ready means the warm-up job ran on the engine
        client = _client(srv.url)
        first = client.videos.poll(_create(client, **LONG).id, poll_interval_ms=100)
        measured = first.model_extra["wanrt"]["run_s"]
        jobs = [_create(client, **LONG)]
        wait_for(lambda: client.videos.retrieve(jobs[0].id).status == "in_progress")
        jobs += [_create(client, **LONG) for _ in range(2)]  # one runs, two wait: the queue is full
        with pytest.raises(openai.RateLimitError) as e:
            _create(client, **LONG)
        retry_after = int(e.value.response.headers["retry-after"])
        # two queued jobs x the measured time of one, on one slot: not a constant (this machine's noise allowed)
        assert max(1, math.floor(2 * measured * 0.5)) <= retry_after <= math.ceil(2 * measured * 3) + 1
        for v in jobs:
            assert client.videos.poll(v.id, poll_interval_ms=100).status == "completed"
    service.scheduler.store.close()


# ------------------------------------------------------------------------------------------------ the README
def _readme_snippet() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    snippet = next(b for b in blocks if "client.videos.create_and_poll" in b)
    assert 'base_url="http://127.0.0.1:8000/v1"' in snippet
    return snippet


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_readme_openai_snippet_as_printed(serve_artifacts, tmp_path, monkeypatch, capsys, outcome):
    """The README's serve steps (pack a bundle named `bundle`, LoRA `other` swapped into a separate engine) and its
    Python snippet run unchanged but for the port: the video is written only when the job completed; a failed job
    prints its error and leaves no file."""
    from wanrt.runtime.serving.app import build_app
    from wanrt.runtime.serving.bundle import load_catalog, pack_bundle
    from wanrt.runtime.serving.limits import Limits

    bundle = tmp_path / "bundle"
    pack_bundle(bundle, [("style", str(serve_artifacts["merged_a"])), ("swap", str(serve_artifacts["separate"]))],
                [("other", str(serve_artifacts["lora_b"]))])
    # a failure as a user meets one: a job that runs past the server's --job-timeout
    limits = Limits(job_timeout_s=1e-3) if outcome == "failed" else Limits()
    service = local_service(load_catalog(bundle), tmp_path / "store", limits)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(png_bytes())
    with ThreadedServer(build_app(service)) as srv:
        exec(_readme_snippet().replace("http://127.0.0.1:8000", srv.url), {})  # the README's code, as printed
    out = capsys.readouterr().out
    if outcome == "completed":
        assert (tmp_path / "cat.mp4").read_bytes()[4:8] == b"ftyp" and out == ""
    else:
        assert not (tmp_path / "cat.mp4").exists() and " failed: timeout: " in out
    service.scheduler.store.close()
