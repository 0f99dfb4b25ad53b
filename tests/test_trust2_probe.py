"""A wider probe, as a new user and an attacker would try it (issue 16, second pass): each test is one class of
finding the probe turned up, asserted through the CLI or over HTTP against a real `wanrt serve --no-ray`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.serve_helpers import free_port, wait_for
from tests.test_trust2_serve_headers import _healthy, _is_openai_error, raw

pytest.importorskip("uvicorn")


SERVER_LOG: dict = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    store = tmp_path_factory.mktemp("probe-store")
    SERVER_LOG["path"] = store.parent / "probe-server.log"
    proc = subprocess.Popen([sys.executable, "-m", "wanrt", "serve", "--backend", "eager", "--model", "tiny",
                             "--no-ray", "--port", str(port), "--store", str(store), "--threads", "1"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=SERVER_LOG["path"].open("wb"), start_new_session=True)
    try:
        wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=120, every=0.3)
        assert proc.poll() is None, "wanrt serve exited at start-up"
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _post(headers: bytes, body: bytes = b"") -> list[bytes]:
    return [b"POST /v1/videos HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body]


@pytest.mark.parametrize("head, code", [
    (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n", "invalid_request_line"),
    (b"GET v1/videos HTTP/1.1\r\nHost: x\r\n\r\n", "invalid_request_line"),
    (b"FOO /v1/videos HTTP/1.1\r\nHost: x\r\n\r\n", "method_not_allowed"),
])
def test_odd_request_lines_get_the_error_shape(server, head, code):
    status, body, _ = raw(server, [head])
    assert status in (400, 405) and _is_openai_error(body, code), (status, body)


@pytest.mark.parametrize("body, what", [
    (b"zz\r\n{}\r\n0\r\n\r\n", "chunk-size"),
    (b"ffffffffffffffffff\r\n{}\r\n0\r\n\r\n", "chunk-size"),
    (b"2\r\n{}XX0\r\n\r\n", "CRLF"),
])
def test_malformed_chunked_bodies_get_the_error_shape(server, body, what):
    status, reply, _ = raw(server, _post(b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n", body))
    assert status == 400 and _is_openai_error(reply, "invalid_chunked_body"), (status, reply)
    assert what in reply["error"]["message"]
    # the app saw its body cut short by the front: a client gone, not a bug logged with a traceback
    time.sleep(0.5)
    assert b"Traceback" not in SERVER_LOG["path"].read_bytes()


def test_a_repeated_content_length_value_reaches_the_app_as_one_number(server):
    status, body, _ = raw(server, _post(b"Content-Length: 2, 2\r\nContent-Type: application/json\r\n", b"{}"))
    assert status == 400 and body["error"]["param"] == "prompt", (status, body)  # the app read the body


def test_an_overlong_multipart_boundary_is_a_client_error(server):
    head = b"Content-Length: 2\r\nContent-Type: multipart/form-data; boundary=" + b"a" * 300 + b"\r\n"
    status, body, _ = raw(server, _post(head, b"{}"))
    assert status == 400 and _is_openai_error(body, "invalid_multipart"), (status, body)


def _wanrt(*args, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wanrt", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("argv", [
    ("export", "--lora", "{fifo}", "-o", "out"),
    ("export", "--lora", "{dir}", "-o", "out"),
    ("extract", "--finetuned", "{fifo}", "--rank", "4", "-o", "out"),
    ("extract", "--finetuned", "{dir}", "--rank", "4", "-o", "out"),
    ("generate", "--image", "{fifo}", "--prompt", "a", "-o", "v.mp4"),
])
def test_a_fifo_named_as_an_input_is_refused_not_read(tmp_path, argv):
    """A FIFO opened for reading blocks until a writer comes: every input file is checked to be a regular file."""
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    folder = tmp_path / "dir"
    folder.mkdir()
    os.mkfifo(folder / "w.safetensors")
    r = _wanrt(*(a.format(fifo=fifo, dir=folder) for a in argv), cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "not a regular file" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["--no-ray", "ray"])
def test_a_port_in_use_is_one_line_exit_2_before_any_work(server, tmp_path, mode):
    """The port a user gave is input: refused in one line (exit 2) before Ray or a model starts, and never after a
    'serving on ...' line that was not true."""
    if mode == "ray":
        pytest.importorskip("ray")
    extra = ["--no-ray"] if mode == "--no-ray" else []
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "wanrt", "serve", "--backend", "eager", "--model", "tiny", *extra,
                        "--port", str(server), "--store", str(tmp_path / "store")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and f"--port {server}" in lines[-1] and "in use" in lines[-1], r.stderr
    assert not list(tmp_path.glob("ray*"))  # no Ray session was started (RAY_TMPDIR)


def test_contradicting_replica_flags_are_refused_before_any_work(tmp_path):
    r = _wanrt("serve", "--backend", "eager", "--no-ray", "--min-replicas", "3", "--max-replicas", "1",
               "--port", str(free_port()), "--store", tmp_path / "store", cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "error: --min-replicas 3 is above --max-replicas 1", r.stderr


@pytest.mark.parametrize("flag", ["--weights", "--cache-dir"])  # --cache-dir: the old spelling, one warning line
def test_weights_fetch_into_a_folder_that_cannot_be_made_is_bad_input(tmp_path, flag):
    """README's exit table: a path you gave that cannot be written is 2 (checked before any work), not 4."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = _wanrt("weights", "fetch", flag, blocker / "weights", cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: --weights ") and "not a directory" in r.stderr
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("flag, value, why", [
    ("--prompt", b"a cat \xff", "not valid UTF-8"),
    ("--negative-prompt", b"\xed\xa0\x80", "not valid UTF-8"),  # an encoded surrogate
    ("--prompt", b"a\x1b[31m", "control character U+001B"),
    ("--prompt", b"a" * 5000, "the limit is 4096"),
])
def test_generate_checks_prompt_text_like_the_server(tmp_path, flag, value, why):
    """Invalid UTF-8 on the command line ended in the tokenizer's TypeError traceback (exit 1)."""
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    args = [b"generate", b"--image", b"in.png", b"-o", b"v.mp4", b"--steps", b"1"]
    args += [b"--prompt", b"a"] if flag != "--prompt" else []
    r = subprocess.run([sys.executable, "-m", "wanrt", *args, flag.encode(), value], cwd=tmp_path,
                       capture_output=True, timeout=120)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and why in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "v.mp4").exists()


def test_an_output_name_that_is_not_utf8_is_one_line_before_any_work(tmp_path):
    """TensorRT's parser took the path as str and ended in a 43-line TypeError traceback (exit 1) after the export."""
    r = subprocess.run([sys.executable, "-m", "wanrt", "export", "--rank", "4", "--layers", "1", "--no-validate",
                        "-o", b"out\xff"], cwd=tmp_path, capture_output=True, timeout=120)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and "not valid UTF-8" in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def test_a_folder_of_the_users_is_not_offered_to_force(tmp_path):
    """`-o` at a folder that is not a wanrt artifact: the advice is another -o, never '--force' (which refuses it)."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    r = _wanrt("export", "--rank", "4", "-o", "mine", cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "not a wanrt artifact" in r.stderr and "pass --force" not in r.stderr, r.stderr
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


@pytest.mark.parametrize("backends, precision, why", [
    ("eager,ort", "fp8", "only the engine backends"),  # ran at fp32 into bench-results/...-fp8-...
    ("eager,ov", "fp8", "builds fp32, bf16, int8"),  # ov silently ran fp32
    ("ov", "fp16", "builds fp32, bf16, int8"),
])
def test_bench_refuses_a_precision_no_backend_of_the_sweep_runs(tmp_path, backends, precision, why):
    r = _wanrt("bench", "--layers", "1", "--ranks", "4", "--lora-modes", "merged", "--backends", backends,
               "--precision", precision, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "bench-results").exists()
