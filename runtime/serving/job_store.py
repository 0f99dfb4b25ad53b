"""Durable jobs: a SQLite index plus files written atomically, in one store directory.

    STORE/jobs.sqlite        one row per job (request, status, progress, error, timestamps, attempts)
    STORE/inputs/<id>.img    the conditioning image as uploaded (kept until the job ends, so a restart can re-run it)
    STORE/videos/<id>.mp4    the result

Order of writes makes a crash at any point recoverable: the image is on disk before the row that names it is
committed, the mp4 is renamed into place before the row says `completed`. `recover()` at start-up turns every job
a dead server left `in_progress` back into `queued` (or `failed` with the reason once it has been tried
`max_attempts` times), so no accepted job is lost silently. Ended jobs expire after a TTL (`expire()`).

A store that cannot write (full disk, quota, read-only or failing device) raises `StoreUnavailable` (a
StorageError: one line, `full` set for ENOSPC/EDQUOT/SQLITE_FULL) from every write, with nothing half-written left
behind: the caller decides whether to refuse (a submission) or keep the write for later (a finished job).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from wanrt.artifacts import atomic_path, sweep_stale_temps
from wanrt.errors import BadInputError, StorageError, os_error_line

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,              -- queued | in_progress | completed | failed
    request TEXT NOT NULL,             -- the checked VideoRequest as JSON
    lora TEXT,                         -- the LoRA stack's label (stacks.stack_label); the stack is in `request`
    step INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    completed_at REAL,
    expires_at REAL,
    error_code TEXT,
    error_message TEXT,
    run_s REAL,
    replica TEXT                       -- where it ran (node, pid) as JSON
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS probe (k INTEGER PRIMARY KEY, t REAL);  -- a write that tests the disk (probe())
"""
ACTIVE = ("queued", "in_progress")
ENDED = ("completed", "failed")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# SQLite's errors that mean the disk, not the SQL: the names (3.11+) or, before, the messages they print
_SQLITE_STORAGE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")
_SQLITE_STORAGE_TEXT = ("disk is full", "disk i/o error", "readonly database", "unable to open")


class StoreUnavailable(StorageError):
    """The job store could not write; `full`: for lack of space (clients are told 507, else 503)."""

    def __init__(self, message: str, full: bool):
        super().__init__(message)
        self.full = full


def write_atomic(path: Path, data: bytes) -> None:
    """wanrt's temp-then-rename (readers see the old file or the whole new one), with an fsync of the data before
    the rename: a job the store calls completed must survive a power cut, not only a process crash."""
    try:
        with atomic_path(path) as tmp:
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:  # caught here, where the errno is still known (the temp file is removed)
                raise StoreUnavailable(os_error_line(e, f"writing {path}"), full=e.errno in _FULL_ERRNOS) from None
    except StoreUnavailable:
        raise
    except (StorageError, OSError) as e:  # the rename into place
        raise StoreUnavailable(str(e) if isinstance(e, StorageError) else os_error_line(e, f"writing {path}"),
                               full=False) from None


def _sqlite_storage_error(e: sqlite3.Error) -> StoreUnavailable | None:
    name = getattr(e, "sqlite_errorname", "")
    if name.startswith(_SQLITE_STORAGE) or any(t in str(e).lower() for t in _SQLITE_STORAGE_TEXT):
        return StoreUnavailable(f"job store database: {e}", full=name == "SQLITE_FULL" or "full" in str(e))
    return None


class JobStore:
    def __init__(self, root: str | os.PathLike, ttl_s: float = 24 * 3600.0, max_attempts: int = 2):
        self.root = Path(root)
        self.ttl_s, self.max_attempts = float(ttl_s), int(max_attempts)
        (self.root / "inputs").mkdir(parents=True, exist_ok=True)
        (self.root / "videos").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._claim = self._claim_store()
        self._db = sqlite3.connect(self.root / "jobs.sqlite", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed job survives a power cut, not just a crash
        self._db.executescript(SCHEMA)

    def _claim_store(self) -> int:
        """One server per store: recovery re-queues `in_progress` jobs, which is only right when no other
        process is running them."""
        import fcntl

        fd = os.open(self.root / ".serve.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInputError(f"job store {self.root} is in use by another wanrt server; give this one its own "
                                "--store") from None
        return fd

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._claim)

    # ---------------------------------------------------------------------------------------------- paths
    def image_path(self, job_id: str) -> Path:
        return self.root / "inputs" / f"{job_id}.img"

    def video_path(self, job_id: str) -> Path:
        return self.root / "videos" / f"{job_id}.mp4"

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, args)
            except sqlite3.Error as e:
                err = _sqlite_storage_error(e)
                if err is None:
                    raise
                raise err from None

    # ---------------------------------------------------------------------------------------------- writes
    def add(self, request: dict[str, Any], image: bytes, lora: str | None) -> dict[str, Any]:
        """A queued job: `request` as JSON, `lora` its stack's label (None: no LoRA)."""
        job_id = "video_" + secrets.token_hex(12)
        write_atomic(self.image_path(job_id), image)
        try:
            self._exec("INSERT INTO jobs (id, created_at, status, request, lora, steps) VALUES (?, ?, 'queued', ?, ?, "
                       "?)", (job_id, time.time(), json.dumps(request), lora, int(request.get("steps", 0))))
        except BaseException:
            self.image_path(job_id).unlink(missing_ok=True)  # not accepted: leave nothing of it behind
            raise
        return self.get(job_id)

    def start(self, job_id: str) -> bool:
        """queued -> in_progress (False if it was deleted). An `in_progress` row is taken too: the one server of
        this store (see _claim_store) runs it again after a run whose end could not be written (a full disk)."""
        cur = self._exec("UPDATE jobs SET status='in_progress', started_at=?, attempts=attempts+1, step=0 "
                         "WHERE id=? AND status IN ('queued', 'in_progress')", (time.time(), job_id))
        return cur.rowcount == 1

    def probe(self, nbytes: int = 4096) -> None:
        """A real write of `nbytes` (file, fsynced, then removed) and of one database row: raises
        StoreUnavailable while the disk cannot take a write that size."""
        path = self.root / "videos" / ".probe"
        try:
            write_atomic(path, b"\0" * max(1, nbytes))
        finally:
            path.unlink(missing_ok=True)
        self._exec("INSERT OR REPLACE INTO probe (k, t) VALUES (1, ?)", (time.time(),))

    def progress(self, job_id: str, step: int, steps: int) -> None:
        self._exec("UPDATE jobs SET step=?, steps=? WHERE id=? AND status='in_progress'", (step, steps, job_id))

    def ran_on(self, job_id: str, replica: dict[str, Any]) -> None:
        self._exec("UPDATE jobs SET replica=? WHERE id=?", (json.dumps(replica), job_id))

    def complete(self, job_id: str, video: bytes, run_s: float) -> bool:
        if self.get(job_id) is None:  # deleted while running: do not resurrect its output
            return False
        write_atomic(self.video_path(job_id), video)
        now = time.time()
        try:
            cur = self._exec("UPDATE jobs SET status='completed', step=steps, completed_at=?, expires_at=?, run_s=? "
                             "WHERE id=? AND status='in_progress'", (now, now + self.ttl_s, run_s, job_id))
        except StoreUnavailable:
            self.video_path(job_id).unlink(missing_ok=True)  # the row does not say completed: no file either
            raise
        if cur.rowcount != 1:
            self.video_path(job_id).unlink(missing_ok=True)
            return False
        self.image_path(job_id).unlink(missing_ok=True)
        return True

    def fail(self, job_id: str, code: str, message: str, run_s: float | None = None) -> None:
        now = time.time()
        self._exec("UPDATE jobs SET status='failed', completed_at=?, expires_at=?, error_code=?, error_message=?, "
                   "run_s=? WHERE id=? AND status IN ('queued', 'in_progress')",
                   (now, now + self.ttl_s, code, message[:1000], run_s, job_id))
        self.image_path(job_id).unlink(missing_ok=True)

    def requeue(self, job_id: str) -> None:
        self._exec("UPDATE jobs SET status='queued', step=0 WHERE id=? AND status='in_progress'", (job_id,))

    def delete(self, job_id: str) -> bool:
        cur = self._exec("DELETE FROM jobs WHERE id=?", (job_id,))
        self.image_path(job_id).unlink(missing_ok=True)
        self.video_path(job_id).unlink(missing_ok=True)
        return cur.rowcount == 1

    # ---------------------------------------------------------------------------------------------- reads
    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._exec("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return dict(row) if row else None

    def list(self, after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[dict], bool]:
        """A page in creation order; `after` is the last id of the previous page. Returns (rows, has_more)."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        args: tuple = ()
        where = ""
        if after:
            seq = self._exec("SELECT seq FROM jobs WHERE id=?", (after,)).fetchone()
            if seq is None:
                return [], False
            where, args = f"WHERE seq {op} ?", (seq[0],)
        rows = self._exec(f"SELECT * FROM jobs {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1))
        rows = [dict(r) for r in rows.fetchall()]
        return rows[:limit], len(rows) > limit

    def queued(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._exec("SELECT * FROM jobs WHERE status='queued' ORDER BY seq").fetchall()]

    def counts(self) -> dict[str, int]:
        rows = self._exec("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in (*ACTIVE, *ENDED)} | {r[0]: r[1] for r in rows}

    # ---------------------------------------------------------------------------------------------- lifecycle
    def recover(self) -> dict[str, int]:
        """After a restart or crash: what was running goes back to the queue, or fails with the reason once it
        has used its attempts (a job that kills its replica must not kill every next server too)."""
        failed = self._exec(
            "UPDATE jobs SET status='failed', completed_at=?, expires_at=?, error_code='server_restarted', "
            "error_message='the server stopped while this job was running, ' || attempts || ' time(s); not retried "
            "again' WHERE status='in_progress' AND attempts >= ?",
            (time.time(), time.time() + self.ttl_s, self.max_attempts)).rowcount
        requeued = self._exec("UPDATE jobs SET status='queued', step=0 WHERE status='in_progress'").rowcount
        for row in self._exec("SELECT id FROM jobs WHERE status='failed'").fetchall():
            self.image_path(row[0]).unlink(missing_ok=True)
        swept = self._sweep_orphans()
        return {"requeued": requeued, "failed": failed, "orphans_removed": swept}

    def _sweep_orphans(self) -> int:
        """Files no row names (a crash between the file and the row) and dead writers' temp files; only names
        this store creates are touched."""
        known = {r[0] for r in self._exec("SELECT id FROM jobs").fetchall()}
        removed = 0
        for sub, suffix in (("inputs", ".img"), ("videos", ".mp4")):
            removed += len(sweep_stale_temps(self.root / sub))
            for p in (self.root / sub).glob(f"video_*{suffix}"):
                if p.name[:-len(suffix)] not in known:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

    def expire(self, now: float | None = None) -> int:
        """Delete ended jobs (row and files) whose expires_at has passed."""
        now = time.time() if now is None else now
        ids = [r[0] for r in self._exec("SELECT id FROM jobs WHERE status IN ('completed', 'failed') AND "
                                        "expires_at IS NOT NULL AND expires_at < ?", (now,)).fetchall()]
        for job_id in ids:
            self.delete(job_id)
        return len(ids)
