"""Issue 9, output directories: --force never deletes what wanrt did not make (item 1), one writer per directory
(4), killed runs leave nothing that looks valid and are swept by the next run (5, fault test), OS errors and bad
paths are one line (8), artifacts get the umask (13), one cache root (16)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wanrt.artifacts import (
    artifact_kind,
    atomic_output_dir,
    build_manifest,
    cache_root,
    check_output_dir,
    claim_output_dir,
    read_manifest,
    sweep_stale_temps,
    write_json,
)
from wanrt.errors import BadInputError
from tests.process_helpers import wanrt_command

EXPORT = ["export", "--rank", "4", "--no-validate"]


def wanrt(*args, cwd=None, env=None, timeout=120, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "wanrt", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout, preexec_fn=preexec_fn, check=False)


def one_error_line(r) -> str:
    """The run failed with exactly one `error:` line and no traceback; returns it."""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def _artifact(path: Path, kind: str = "onnx") -> Path:
    path.mkdir(parents=True)
    write_json(path / "manifest.json", build_manifest(kind, {}, {"marker": str(path)}))
    return path


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str):
    """A small tmpfs (read-only, or full after a few KB) where the test runs as root; skipped elsewhere."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("platform: mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"platform: cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def read_only_dir(where: Path):
    """A read-only mount as root (root ignores mode bits), a 0555 directory otherwise."""
    if os.geteuid() == 0:
        with mounted_tmpfs(where, "ro,size=64k") as d:
            yield d
        return
    where.mkdir()
    os.chmod(where, 0o555)
    try:
        yield where
    finally:
        os.chmod(where, 0o755)


# ----------------------------------------------------------------------------------------------- item 1


def test_force_refuses_a_directory_that_is_not_a_wanrt_artifact(tmp_path):
    """`wanrt export --force -o mine` on the user's own directory: one line, exit 2, every file untouched."""
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("x")
    r = wanrt(*EXPORT, "--force", "-o", str(mine), timeout=60)
    assert r.returncode == 2
    assert "not a wanrt artifact" in one_error_line(r)
    assert (mine / "notes.txt").read_text() == "x" and (mine / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_force_replaces_only_the_same_kind(tmp_path):
    engine = _artifact(tmp_path / "engine", "engine")
    with pytest.raises(BadInputError, match="'engine' artifact, not 'onnx'"):
        check_output_dir(engine, force=True, kind="onnx")
    old = _artifact(tmp_path / "export", "onnx")
    with atomic_output_dir(old, force=True, kind="onnx") as tmp:
        write_json(tmp / "manifest.json", build_manifest("onnx", {}, {"marker": "new"}))
    assert read_manifest(old)["payload"] == {"marker": "new"}
    ranks = tmp_path / "ranks"  # export --rank 4,8 -o ranks: a directory of per-rank exports is that kind too
    _artifact(ranks / "r4")
    _artifact(ranks / "r8")
    assert artifact_kind(ranks) == "onnx"
    (ranks / "mine.txt").write_text("x")
    assert artifact_kind(ranks) is None


def test_output_inside_or_above_the_cwd_is_refused(tmp_path):
    """`-o . --force` used to fail only after the whole export."""
    _artifact(tmp_path / "work")
    r = wanrt(*EXPORT, "--force", "-o", ".", cwd=tmp_path / "work", timeout=60)
    assert r.returncode == 2 and "current directory" in one_error_line(r)
    with pytest.raises(BadInputError, match="current directory"):
        check_output_dir(Path.cwd().parent, force=True)


# ----------------------------------------------------------------------------------------------- item 4


def test_a_second_writer_is_refused_while_the_first_holds_the_directory(tmp_path):
    out = tmp_path / "out"
    with claim_output_dir(out):  # flock locks are per open file: a second claim conflicts even in one process
        with pytest.raises(BadInputError, match="being written by another wanrt process"):
            with atomic_output_dir(out, kind="onnx"):
                pass
        r = wanrt(*EXPORT, "-o", str(out), timeout=60)
        assert r.returncode == 2 and f"pid {os.getpid()}" in one_error_line(r)
    assert not out.exists()


def test_two_exports_into_one_directory_one_wins_one_is_refused(tmp_path):
    """Both used to exit 0 (last writer wins) without --force."""
    out = tmp_path / "out"
    cmd = wanrt_command(*EXPORT, "-o", str(out))
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "being written by another wanrt process" in loser or "exists; pass --force" in loser
    assert read_manifest(out, kind="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------------------------- item 5


def _kill_export_at(parent: Path, stage: str, sig: int) -> tuple[int, list[str]]:
    """Start an export into parent/out, send `sig` once `stage` is reached, return (exit status, what is left)."""
    out = parent / "out"
    p = subprocess.Popen(wanrt_command(*EXPORT, "-o", str(out)), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and p.poll() is None:
            temps = list(parent.glob(f".out.tmp-{p.pid}-*"))  # this run's own, not a dead one's
            if stage == "temp dir" and temps:
                break
            if stage == "model.onnx written" and any((t / "model.onnx").is_file() for t in temps):
                break
            time.sleep(0.01)
        assert p.poll() is None, f"export ended before {stage}: {p.stderr.read()[-2000:]}"
        os.kill(p.pid, sig)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    return rc, sorted(x.name for x in parent.iterdir())


def test_killed_exports_leave_nothing_valid_and_the_next_run_sweeps(tmp_path):
    """SIGKILL and SIGTERM, each while the model loads (temp dir just made) and after model.onnx is written."""
    rc, left = _kill_export_at(tmp_path, "temp dir", signal.SIGINT)  # Ctrl-C: one line, exit 130, nothing left
    assert rc == 130 and left == [], left
    rc, left = _kill_export_at(tmp_path, "temp dir", signal.SIGTERM)  # temporary and lock file removed
    assert rc == -signal.SIGTERM and left == [], left
    for stage in ("temp dir", "model.onnx written"):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            before = {n for n in os.listdir(tmp_path) if ".tmp-" in n}
            rc, left = _kill_export_at(tmp_path, stage, sig)
            assert rc == -sig, (stage, sig, rc)
            assert "out" not in left  # nothing that looks like a finished artifact
            assert all(name.startswith(".out.") for name in left), left
            assert not any((tmp_path / name / "manifest.json").exists() for name in left)
            new = {n for n in left if ".tmp-" in n} - before
            # SIGTERM: the handler removed its temporary before dying of the signal; SIGKILL cannot, so one is left
            # (older ones were swept as this run started: their writers are dead)
            assert len(new) == (1 if sig == signal.SIGKILL else 0), (stage, sig, left)
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n], "the last SIGKILL left a temporary to sweep"
    # the next run sweeps what dead writers left, before it loads anything (stopped here once it has its own temp)
    rc, left = _kill_export_at(tmp_path, "temp dir", signal.SIGTERM)
    assert rc == -signal.SIGTERM and left == [], left  # the dead writers' temporaries and lock file are gone


def test_an_inherited_blocked_sigint_is_unblocked():
    """A parent that forks with SIGINT/SIGTERM blocked passes the mask on; wanrt unblocks both as it starts, so Ctrl-C
    and SIGTERM still stop it (otherwise they stay pending until the work is over: exit 0, a finished output)."""
    probe = ("import atexit, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}); "
             "atexit.register(lambda: print('blocked', sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, "
             "set()) & {signal.SIGINT, signal.SIGTERM}))); sys.argv = ['wanrt', '--version']; "
             "from wanrt.commands.main import main; main()")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "blocked []" in out.stdout, out.stdout + out.stderr


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".x.tmp-{dead_pid}-0123abcd"
    live = tmp_path / f".y.tmp-{os.getpid()}-0123abcd"
    foreign = tmp_path / ".z.tmp-notapid"
    for d in (stale, live, foreign):
        d.mkdir()
    assert sweep_stale_temps(tmp_path) == [stale]
    assert live.is_dir() and foreign.is_dir() and not stale.exists()


# ----------------------------------------------------------------------------------------------- item 8


def test_read_only_output_fails_before_any_work(tmp_path):
    with read_only_dir(tmp_path / "ro") as ro:
        t = time.monotonic()
        r = wanrt(*EXPORT, "-o", str(ro / "x"), timeout=60)
        assert r.returncode == 2 and "cannot be written" in one_error_line(r)
        assert time.monotonic() - t < 30  # refused up front, not after the export


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path):
    """ENOSPC while the export writes (the tiny model.onnx is 1.2 MB; a 256 KB tmpfs as root, else RLIMIT_FSIZE,
    whose EFBIG takes the same path): exit 4, one line (was a 68-line traceback), nothing left."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    with contextlib.ExitStack() as stack:
        try:
            where, preexec, reason = stack.enter_context(mounted_tmpfs(tmp_path / "full", "size=256k")), None, \
                "No space left on device"
        except pytest.skip.Exception:
            where, preexec, reason = tmp_path / "full", limit, "File too large"
        r = wanrt(*EXPORT, "-o", str(where / "x"), timeout=300, preexec_fn=preexec)
        assert r.returncode == 4, r.stderr[-2000:]
        assert reason in one_error_line(r)
        assert os.listdir(where) == []


def test_manifest_payload_must_be_an_object(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    m = build_manifest("onnx", {}, {})
    m["payload"] = []
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BadInputError, match="'payload' is list"):
        read_manifest(d, kind="onnx")
    (d / "manifest.json").write_text("[]")
    with pytest.raises(BadInputError, match="not an object"):
        read_manifest(d)
    r = wanrt("build", str(d), "-o", str(tmp_path / "engine"), "--trt", "rtx", timeout=60)
    assert r.returncode == 2 and "not an object" in one_error_line(r)


# ----------------------------------------------------------------------------------------------- item 13


def test_artifacts_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "a", kind="onnx") as tmp:
            write_json(tmp / "manifest.json", build_manifest("onnx", {}, {}))
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755  # mkdtemp made it 0700
    assert (tmp_path / "a" / "manifest.json").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------------------------- item 16


def test_one_cache_root(tmp_path, monkeypatch, capsys):
    from wanrt.engines.trt.engine_spec import EngineSpec
    from wanrt.engines.cache import engine_cache_dir
    from wanrt.runtime.metrics import weights as W

    monkeypatch.setenv("WANRT_CACHE_DIR", str(tmp_path / "one"))
    monkeypatch.setenv("WANRT_CACHE", str(tmp_path / "old"))
    monkeypatch.setenv("WANRT_WEIGHTS_DIR", str(tmp_path / "old-weights"))
    assert cache_root() == tmp_path / "one"
    assert engine_cache_dir(EngineSpec()) == cache_root("engines") == tmp_path / "one" / "engines"
    assert W.default_cache_dir() == cache_root("weights") == tmp_path / "one" / "weights"
    assert {cache_root(s).name for s in ("exports", "engines", "weights", "serve")} == \
        {"exports", "engines", "weights", "serve"}
    monkeypatch.delenv("WANRT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root("engines") == tmp_path / "xdg" / "wanrt" / "engines"
