"""`wanrt serve` (on Ray) stopped as a user stops it: SIGTERM exits 143 (dies of the signal, as every wanrt
command does), Ctrl-C exits 130, with no stack dump and no process it started left running (Ray's agents, Serve's
replicas, ffmpeg). Issue 16, items 10 (the front before Ray's proxy), 11 and 25."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import psutil

from tests.serve_helpers import RAY_TEST_ENV, free_port, wait_for
from tests.test_trust2_serve_headers import _healthy, _is_openai_error, raw


def _serve(bundle, tmp_path, port, ray_tmp):
    env = {**os.environ, **RAY_TEST_ENV, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp}
    return subprocess.Popen([sys.executable, "-m", "wanrt", "serve", str(bundle), "--port", str(port), "--store",
                             str(tmp_path / "store"), "--replica-cpus", "0", "--threads", "1", "--no-verify"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _stop(serve_artifacts, tmp_path, sig) -> tuple[int, str, list]:
    """Start, wait for /healthz, note every process it started, send `sig`; (exit status, stderr, survivors)."""
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="wrt", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    proc = _serve(serve_artifacts["bundle"], tmp_path, port, ray_tmp)
    started = []
    try:
        wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=60, every=0.3)
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:]
        if sig == signal.SIGTERM:  # the Ray proxy has the same front: a huge header never reaches it
            status, body, _ = raw(port, [b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (8 * 2**20) + b"\r\n\r\n"])
            assert status == 431 and _is_openai_error(body, "headers_too_large")
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in started)  # the walk sees Ray's processes
        proc.send_signal(sig)
        rc = proc.wait(timeout=45)
        _, survivors = psutil.wait_procs(started, timeout=5)
        return rc, proc.stderr.read().decode(errors="replace"), survivors
    finally:  # whatever happened above: nothing of this test outlives it (by pid, start time checked)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in started:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_sigterm_exits_143_and_leaves_nothing(serve_artifacts, tmp_path):
    rc, err, survivors = _stop(serve_artifacts, tmp_path, signal.SIGTERM)
    assert rc == -signal.SIGTERM, err[-2000:]  # the shell's 143
    assert survivors == [], [p.info for p in survivors]
    assert "SIGTERM received" not in err and "Traceback" not in err, err[-2000:]  # no C++ stack dump


def test_ctrl_c_exits_130_and_leaves_nothing(serve_artifacts, tmp_path):
    rc, err, survivors = _stop(serve_artifacts, tmp_path, signal.SIGINT)
    assert rc == 130, err[-2000:]
    assert survivors == [], [p.info for p in survivors]
    assert "Traceback" not in err and "error: interrupted" in err, err[-2000:]
