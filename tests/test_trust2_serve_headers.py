"""Request heads as an attacker sends them, over raw sockets to a real `wanrt serve` process on 127.0.0.1: huge
headers and request lines, a slow header sender, a bad Content-Length. Each gets the OpenAI error shape within its
bound, and the server's memory does not grow by what was sent (issue 16, item 10).

The server here is `--no-ray` (one process, seconds to start); the Ray server has the same front before its proxy
(test_trust2_serve_process.py sends it a huge header too)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.serve_helpers import free_port, wait_for
from wanrt.runtime.serving.limits import Limits


LIMITS = Limits()


def raw(port: int, chunks, timeout: float = 30.0, pause: float = 0.0) -> tuple[int, dict, float]:
    """Send `chunks` from a thread (the server may answer and close before all is sent) and read the reply:
    (status, JSON body, seconds from connect to the end of the reply)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()

    def send():
        try:
            for c in chunks:
                sock.sendall(c)
                time.sleep(pause)
        except OSError:
            pass  # refused and closed: the reply is what the test reads

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except ConnectionResetError:
        pass
    finally:
        elapsed = time.monotonic() - t0
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:  # not JSON: Ray Serve's own proxy answers in chunked plain text before the app's routes exist
        parsed = {"text": body.decode("utf-8", "replace")}
    return status, parsed, elapsed


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    store = tmp_path_factory.mktemp("headers-store")
    proc = subprocess.Popen([sys.executable, "-m", "wanrt", "serve", "--backend", "eager", "--model", "tiny",
                             "--no-ray", "--port", str(port), "--store", str(store), "--threads", "1"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=120, every=0.3)
        assert proc.poll() is None, "wanrt serve exited at start-up"
        yield port, proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _healthy(port: int) -> bool:
    try:
        return raw(port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], timeout=2)[0] == 200
    except OSError:
        return False


def _is_openai_error(body: dict, code: str) -> bool:
    return set(body.get("error", {})) == {"message", "type", "param", "code"} and body["error"]["code"] == code


def test_huge_headers_are_refused_without_growing_the_server(server):
    port, proc = server
    rss = psutil.Process(proc.pid).memory_info().rss
    big = 16 * 2**20
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    results = []
    threads = [threading.Thread(target=lambda: results.append(raw(port, [header] + [b"a" * 2**20] * (big // 2**20))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3
    for status, body, elapsed in results:
        assert status == 431 and _is_openai_error(body, "headers_too_large"), (status, body)
        assert elapsed < 10
    grown = psutil.Process(proc.pid).memory_info().rss - rss
    assert grown < big, f"the server grew by {grown / 2**20:.0f} MiB for three {big >> 20} MiB headers"
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(LIMITS.max_headers + 1))
    status, body, _ = raw(port, [b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n"])
    assert status == 431 and _is_openai_error(body, "too_many_headers")
    assert _healthy(port)


def test_huge_request_line_and_bad_lengths_get_the_error_shape(server):
    port, _ = server
    status, body, _ = raw(port, [b"GET /" + b"a" * (LIMITS.max_header_bytes + 10) + b" HTTP/1.1\r\n\r\n"])
    assert status == 414 and _is_openai_error(body, "uri_too_long")
    for length in (b"abc", b"-1", b"1, 2", b"9" * 40):
        status, body, _ = raw(port, [b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Length: " + length
                                     + b"\r\n\r\n{}"])
        assert status == 400 and _is_openai_error(body, "invalid_content_length"), (length, status, body)
    status, body, _ = raw(port, [b"POST /v1/videos HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked"
                                 b"\r\n\r\n{}"])
    assert status == 400 and _is_openai_error(body, "invalid_content_length")
    status, body, _ = raw(port, [b"GARBAGE\r\n\r\n"])
    assert status == 400 and _is_openai_error(body, "invalid_request_line")


def test_slow_header_sender_is_cut_off(server):
    port, _ = server
    # one header byte every 0.2 s: it would take minutes to finish; the head must arrive within header_timeout_s
    status, body, elapsed = raw(port, [b"GET /healthz HTTP/1.1\r\n"] + [b"X"] * 600, pause=0.2)
    assert status == 408 and _is_openai_error(body, "header_timeout")
    assert LIMITS.header_timeout_s - 1 < elapsed < LIMITS.header_timeout_s + 5


def test_requests_pass_the_front_unchanged(server):
    port, _ = server
    status, body, _ = raw(port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"])
    assert status == 200 and body["status"] == "ok"
    chunked = b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
              b"Transfer-Encoding: chunked\r\n\r\n"
    payload = json.dumps({"prompt": "x", "steps": 0}).encode()
    status, body, _ = raw(port, [chunked, b"%x\r\n" % len(payload), payload, b"\r\n0\r\n\r\n"])
    assert status == 400 and body["error"]["param"] == "steps"  # the app read the whole chunked body
