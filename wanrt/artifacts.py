"""What every wanrt output directory shares: the manifest schema, hashes and versions, and the ONE place for
atomic writes, output-directory claiming, stale-temp sweeping, manifest-path confinement and the cache root.

One manifest schema across export, engine and bench outputs (DESIGN.md): `kind`, `wanrt_version`, `created`,
`command` (the argv that made it), `versions` (libraries), `specs` (the frozen dataclasses that describe how it was
made) and a kind-specific `payload`. Loads check the manifest before touching weights.

Writes: every file or directory wanrt produces is first written under a hidden temporary name beside its target,
`.NAME.tmp-<pid>-<token>`, then renamed in one step (`atomic_output_dir`, `atomic_path`, `write_bytes_atomic`,
`write_json`). Temporaries are created with the user's umask (not mkdtemp's 0700), removed on failure, SIGINT
and SIGTERM, and swept by the next run when a SIGKILL left them (`sweep_stale_temps`: the owning pid is gone or is
a newer process). An output directory is claimed with an exclusive lock (`claim_output_dir`; a SIGKILLed
holder's lock file is swept), and `--force` replaces only a wanrt artifact of the same kind holding nothing its
manifest does not list (`foreign_entries`: dot-names are the user's too); anything else is refused in one line.

Sealing and loading: `write_manifest`, every writer's last step, lists every file of the artifact with its size
and sha256 (`contents`); `load_artifact` / `check_artifact_files` check them before an artifact is run. Manifests
are read through the one bounded JSON reader (wanrt.jsonio).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wanrt import __version__
from wanrt.errors import BadInputError, StorageError, os_error_line
from wanrt.jsonio import dumps, open_regular, read_json

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1


# file identity -> (size, mtime_ns, ctime_ns) and sha256: any write, truncation or replacement moves one of them
# (ctime cannot be set back from user space), so a file is hashed once per process however often it is loaded
_digests: dict[tuple[int, int], tuple[tuple[int, int, int], str]] = {}
_digests_lock = threading.Lock()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a regular file; a FIFO, device or socket is refused (BadInputError) without blocking on it.
    Remembered per file identity, so checking an artifact on every load costs one read per process."""
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        key, stamp = (st.st_dev, st.st_ino), (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with _digests_lock:
            hit = _digests.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        h = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=False) as f:
            while block := f.read(chunk):
                h.update(block)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == stamp:  # not written to while we read
            with _digests_lock:
                _digests[key] = (stamp, h.hexdigest())
        return h.hexdigest()
    finally:
        os.close(fd)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and numpy/torch scalars to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def spec_hash(*specs: Any) -> str:
    """A stable short hash of specs (cache keys, config identity)."""
    blob = dumps([to_jsonable(s) for s in specs], "spec", sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The distributions whose versions every artifact records. Engine flavours add theirs when the registry loads them
# (engines/registry.py calls record_versions_of): core cannot name them.
RECORDED_DISTRIBUTIONS = ["torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime",
                          "onnxruntime-gpu", "peft", "nvidia-modelopt", "numpy"]


def record_versions_of(*dists: str) -> None:
    RECORDED_DISTRIBUTIONS.extend(d for d in dists if d not in RECORDED_DISTRIBUTIONS)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact; absent ones are left out."""
    from importlib import metadata

    out = {"python": platform.python_version(), "wanrt": __version__}
    for dist in RECORDED_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# CPU flags recorded with every result and in OpenVINO engine manifests (part of their cache key): the ones
# OpenVINO's CPU kernels and torch's CPU kernels dispatch on for fp32/bf16/int8.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """CPU model and its ISA_FLAGS (Linux /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags]}


def machine_info() -> dict[str, Any]:
    cpu = cpu_info()  # one read of /proc/cpuinfo for the model and the flags
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "cpu_isa": cpu["isa"]}
    if cpu["model"] != "unknown":
        info["cpu"] = cpu["model"]
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = p.name
            info["gpu_compute_capability"] = f"{p.major}.{p.minor}"
            info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001 - machine info is best effort
        pass
    return info


def command_line(argv: list[str] | None = None, module: str | None = None) -> str:
    """The command that ran, shell-quoted so it can be pasted back: `python -m MODULE ARGS` for a module run with
    -m (`module`, else __main__'s own), else the script's name (`wanrt ...`); `argv` replaces sys.argv[1:]."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = module or (spec.name.removesuffix(".__main__") if spec is not None and spec.name else None)
    prog = ["python", "-m", module] if module else [Path(sys.argv[0]).name if sys.argv else "python"]
    return shlex.join([*prog, *(sys.argv[1:] if argv is None else argv)])


def build_manifest(kind: str, specs: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "kind": kind,
        "wanrt_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_info(),
        "versions": library_versions(),
        "specs": to_jsonable(specs),
        "payload": to_jsonable(payload),
    }


# ------------------------------------------------------------------------------------------------ cache root

CACHE_SUBDIRS = ("exports", "engines", "weights", "serve")
# Variables older wanrt read for parts of the cache; ignored now (one root), with one warning so nobody is surprised.
_RETIRED_CACHE_ENV = ("WANRT_CACHE", "WANRT_WEIGHTS_DIR")
_warned_env: set[str] = set()


def cache_root(sub: str | None = None) -> Path:
    """The one cache root: `$WANRT_CACHE_DIR`, else `$XDG_CACHE_HOME/wanrt`, else `~/.cache/wanrt`; with `sub`, one of
    its subfolders (exports/, engines/, weights/, serve/). Nothing is created here."""
    for name in _RETIRED_CACHE_ENV:
        if os.environ.get(name) and name not in _warned_env:
            _warned_env.add(name)
            print(f"warning: ${name} is no longer read; wanrt keeps every cache under $WANRT_CACHE_DIR "
                  f"(default ~/.cache/wanrt)", file=sys.stderr)
    env = os.environ.get("WANRT_CACHE_DIR")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "wanrt"
    if sub is None:
        return root
    if sub not in CACHE_SUBDIRS:
        raise ValueError(f"cache subfolder {sub!r} is not one of {CACHE_SUBDIRS}")
    return root / sub


_scratch: dict[str, Path] = {}


def writable_cache(sub: str, root: Path | None = None) -> Path:
    """`root/sub` (default: cache_root(sub)) when wanrt can write there; else, with one warning line, a private
    folder removed at exit. A cache is an optimisation: a read-only or unwritable one means working without it
    (StorageError, exit 4, only when no temporary folder can be made either), never bad input."""
    path = Path(root) / sub if root is not None else cache_root(sub)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = _temp_sibling(path / "probe")
        probe.mkdir()
        probe.rmdir()
        return path
    except OSError as e:
        why = os_error_line(e)
    if sub not in _scratch:
        import atexit
        import tempfile

        try:
            _scratch[sub] = Path(tempfile.mkdtemp(prefix=f"wanrt-{sub}-"))
        except OSError as e:
            raise StorageError(f"cache {path} cannot be written ({why}) and no temporary folder can be made "
                               f"({os_error_line(e)})") from None
        atexit.register(shutil.rmtree, _scratch[sub], True)
        if len(_scratch) == 1:  # one line per run, however many of the cache's folders are needed
            print(f"warning: cache {path.parent} cannot be written ({why}); working without it this run "
                  f"(nothing is kept)", file=sys.stderr)
    return _scratch[sub]


# --------------------------------------------------------------------------------- temporaries and sweeping

# `.NAME.tmp-<pid>-<token>` (work in progress) and `.NAME.old-<pid>-<token>` (a replaced artifact being deleted).
# The pid lets the next run tell a dead writer's leftovers from a live writer's work; the token keeps names unique.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})(\.[A-Za-z0-9]{1,8})?$")
_LOCK_RE = re.compile(r"^\.(?P<name>.+)\.lock$")  # claim_output_dir's `.NAME.lock`
_live_temps: set[Path] = set()
_live_lock = threading.Lock()
_sigterm_installed = False
_previous_sigterm: Any = None


def _temp_sibling(target: Path, what: str = "tmp", suffix: str = "") -> Path:
    return target.with_name(f".{target.name}.{what}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start of `pid` from /proc (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(pid: int, temp_mtime: float) -> bool:
    """True while the process that made a temporary may still be writing it: the pid exists and it started before
    the temporary was last touched (a younger process under the same pid is a reuse, not the writer)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    started = _process_start_time(pid)
    return started is None or started <= temp_mtime + 2.0  # btime has 1 s resolution


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, onerror=_make_writable_and_retry)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _make_writable_and_retry(func, path, _exc):
    # read-only cache entries (0555 dirs) must be made writable by their owner before their files can go
    try:
        os.chmod(os.path.dirname(path), 0o700)
        func(path)
    except OSError:
        pass


def sweep_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove wanrt temporaries in `directory` whose writer is gone (killed with SIGKILL, a crashed machine):
    only names of wanrt's own pattern, only when the owning pid is dead or younger than the temporary.
    Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if _LOCK_RE.match(entry.name):
            _sweep_lock(Path(entry.path), removed)
            continue
        m = _TEMP_RE.match(entry.name)
        if m is None:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if not _owner_alive(int(m["pid"]), mtime):
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def _sweep_lock(lock: Path, removed: list[Path]) -> None:
    """Remove a `.NAME.lock` that no process holds (its writer was SIGKILLed: the kernel dropped the flock, the
    file stayed). Taken with flock first, so a live holder's lock is never touched; a claimer that opened the file
    just before the unlink notices the changed inode and locks the new one (claim_output_dir)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size > 32:
            return  # not a lock wanrt wrote (a pid)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(lock).st_ino:
            os.unlink(lock)
            removed.append(lock)
    except OSError:
        pass
    finally:
        os.close(fd)


def _on_sigterm(signum, frame):
    """Remove this process's unfinished outputs, then die of SIGTERM as if wanrt had no handler (or hand over to
    the handler that was there before ours)."""
    with _live_lock:
        live = list(_live_temps)
    for p in live:
        _remove(p)
    if callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
        return
    if live:
        print(f"wanrt: terminated; removed {len(live)} unfinished output(s)", file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _register_temp(path: Path) -> None:
    global _sigterm_installed, _previous_sigterm
    with _live_lock:
        _live_temps.add(path)
    # Python delivers signals to the main thread only, and only its handler can be replaced from there
    if not _sigterm_installed and threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_IGN:
            _previous_sigterm = previous if callable(previous) else None
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True


def _unregister_temp(path: Path) -> None:
    with _live_lock:
        _live_temps.discard(path)


# ---------------------------------------------------------------------------------------------- atomic files

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def storage_error(e: OSError, action: str) -> StorageError:
    return StorageError(os_error_line(e, action))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that takes a file name (safetensors, onnx, imageio); on
    success it becomes `path` in one rename, on failure or signal it is removed. Created files get the umask.
    `keep_suffix`: the temporary ends in path's suffix too (writers that pick the format from it: ffmpeg)."""
    path = Path(path)
    with _temporary(_temp_sibling(path, suffix=path.suffix if keep_suffix else ""), path) as tmp:
        yield tmp
        _apply_umask(tmp)
        os.replace(tmp, path)


def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path) -> None:
    """A file a library created with its own mode (safetensors writes 0600) gets the mode every other output has:
    0666 less the umask."""
    try:
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~_umask())
    except OSError:
        pass


@contextlib.contextmanager
def _temporary(tmp: Path, path: Path) -> Iterator[Path]:
    """`tmp` (a file or directory that will become `path`) is removed on any exit that did not rename it, also on
    SIGTERM (registered); an OSError of a full, read-only or failing disk becomes one StorageError line."""
    _register_temp(tmp)
    try:
        yield tmp
    except OSError as e:
        if e.errno in _STORAGE_ERRNOS:
            raise storage_error(e, f"writing {path}") from None
        raise
    finally:
        if tmp.exists():
            _remove(tmp)
        _unregister_temp(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, allow_nan: bool = False) -> None:
    """Write JSON atomically (temp file + rename); NaN/Infinity are refused in one line before anything is written
    (they are not JSON, and other parsers reject the whole file). `allow_nan`: see jsonio.dumps."""
    write_text_atomic(path, dumps(to_jsonable(obj), str(path), allow_nan, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------------------------ manifests


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise BadInputError(f"{directory}: no {MANIFEST_NAME}; not a wanrt artifact directory")
    try:
        manifest = read_json(path)  # bounded: size, depth, regular files only
    except BadInputError as e:
        raise BadInputError(f"corrupt manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise BadInputError(f"{path}: corrupt manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise BadInputError(f"{path}: manifest schema {manifest.get('schema')!r}, this wanrt reads {MANIFEST_SCHEMA}")
    if kind is not None and manifest.get("kind") != kind:
        raise BadInputError(f"{directory} holds an artifact of kind '{manifest.get('kind')}', expected '{kind}'")
    if not isinstance(manifest.get("payload"), dict):
        raise BadInputError(f"{path}: corrupt manifest ('payload' is {type(manifest.get('payload')).__name__}, "
                            "not an object)")
    if CONTENTS_KEY in manifest and not _contents_ok(manifest[CONTENTS_KEY]):
        raise BadInputError(f"{path}: corrupt manifest ('{CONTENTS_KEY}' is not {{file: {{bytes, sha256}}}})")
    return manifest


# ------------------------------------------------------------------------------------- sealing and checking

# The manifest's own list of what its directory holds, {relpath: {"bytes", "sha256"}}: written last by
# `write_manifest` (every writer's final step), it is what makes a file wanrt's (the "is this ours" rule of
# `foreign_entries`) and what every load checks (`check_artifact_files`).
CONTENTS_KEY = "contents"


def _contents_ok(contents: Any) -> bool:
    return isinstance(contents, dict) and all(
        isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("bytes"), int)
        and isinstance(v.get("sha256"), str) for k, v in contents.items())


def _is_wanrt_scratch(name: str, siblings: set[str] | frozenset[str] = frozenset()) -> bool:
    """wanrt's own temporaries (`.NAME.tmp-<pid>-<token>`, `.NAME.old-...`) and the lock of a sibling output
    (`.NAME.lock` beside NAME); a `.x.lock` of the user's with no `x` beside it is the user's."""
    m = _LOCK_RE.match(name)
    return bool(_TEMP_RE.match(name) or (m and m["name"] in siblings))


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any], name: str = MANIFEST_NAME,
                   allow_nan: bool = False) -> None:
    """Write `directory`/`name` with `contents`: every file under `directory` (dot-names included) with its size
    and sha256. Call it last, when everything else is written: what it does not list is not wanrt's."""
    directory = Path(directory)
    contents = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not _is_wanrt_scratch(d))
        for f in sorted(files):
            p = Path(root) / f
            rel = p.relative_to(directory).as_posix()
            if rel == name or _is_wanrt_scratch(f) or p.is_symlink():
                continue
            contents[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    manifest[CONTENTS_KEY] = contents
    write_json(directory / name, manifest, allow_nan)


def _listed_paths(manifest: dict[str, Any]) -> set[str]:
    """The relative paths a manifest lists: its `contents`; for a manifest written before `contents` existed, the
    relative names its payload holds (model.onnx, engine.plan, a bundle's file list)."""
    contents = manifest.get(CONTENTS_KEY)
    if isinstance(contents, dict):
        return set(contents)
    names: set[str] = set()
    stack: list[Any] = [manifest.get("payload")]
    while stack and len(names) < 100_000:
        v = stack.pop()
        if isinstance(v, dict):
            names.update(k for k in v if isinstance(k, str))
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            names.add(v)
    return {n for n in names if n and not n.startswith("/") and ".." not in Path(n).parts}


def _manifest_doc(directory: Path) -> dict[str, Any] | None:
    """The manifest of an artifact directory (manifest.json, or a bench's results.json), None if it has none or
    it is not one."""
    for name in (MANIFEST_NAME, "results.json"):  # results.json: bench outputs carry the manifest there
        f = directory / name
        if f.is_file():
            try:
                doc = read_json(f)
            except (BadInputError, StorageError):
                return None
            ok = isinstance(doc, dict) and doc.get("schema") == MANIFEST_SCHEMA and isinstance(doc.get("kind"), str)
            return {**doc, "_name": name} if ok else None
    return None


def foreign_entries(directory: str | os.PathLike, limit: int = 3) -> list[str]:
    """The entries of an artifact directory that are the user's, not wanrt's (at most `limit`). One rule: every
    entry, dot-names included, is the user's unless the artifact's manifest lists it; only the manifest itself and
    wanrt's temporaries and locks are wanrt's without being listed. A directory without a manifest is wanrt's only
    as a folder of artifacts (export --rank 4,8: r4/, r8/). Symlinks are never followed."""
    directory = Path(directory)
    doc = _manifest_doc(directory)
    found: list[str] = []
    if doc is None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return ["(unreadable)"]
        names = {e.name for e in entries}
        for e in entries:
            if _is_wanrt_scratch(e.name, names):
                continue
            if not e.is_dir(follow_symlinks=False) or _manifest_doc(Path(e.path)) is None:
                found.append(e.name)
            else:
                found += [f"{e.name}/{x}" for x in foreign_entries(e.path, limit - len(found))]
            if len(found) >= limit:
                break
        return found[:limit]
    listed = _listed_paths(doc)
    prefixes = {p for rel in listed for p in Path(rel).parents if str(p) != "."}
    stack = [(directory, "")]
    while stack and len(found) < limit:
        d, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            found.append(prefix or "(unreadable)")
            continue
        names = {e.name for e in entries}
        for e in entries:
            rel = f"{prefix}{e.name}"
            if (not prefix and e.name == doc["_name"]) or _is_wanrt_scratch(e.name, names):
                continue
            if e.is_dir(follow_symlinks=False) and Path(rel) in prefixes:
                stack.append((Path(e.path), f"{rel}/"))
            elif rel not in listed or e.is_dir(follow_symlinks=False):
                found.append(rel)
    return found[:limit]


def check_artifact_files(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Before an artifact is used: every file its manifest lists has the recorded size and sha256 (a swapped
    model.onnx, external data or plan is refused in one line). A manifest from before `contents` has its main
    file's recorded sha256 checked. Hashes are remembered per file identity, so this costs one read per process."""
    directory = Path(directory)
    contents = manifest.get(CONTENTS_KEY)
    if not isinstance(contents, dict):
        p = manifest.get("payload") or {}
        main = {"onnx": (p.get("onnx", "model.onnx"), p.get("sha256")),
                "engine": (p.get("engine"), p.get("plan_sha256"))}.get(manifest.get("kind"))
        contents = {main[0]: {"sha256": main[1]}} if main and isinstance(main[1], str) else {}
    for rel, want in contents.items():
        path = confined_path(directory, rel, "listed file")
        what = f"{directory / rel}"
        try:
            st = path.lstat()
        except OSError:
            raise BadInputError(f"{what}: missing (its manifest lists it); the artifact is incomplete") from None
        if want.get("bytes") is not None and st.st_size != want["bytes"]:
            raise BadInputError(f"{what}: {st.st_size} bytes, its manifest says {want['bytes']} (truncated or "
                                "replaced); refusing to run it, re-create the artifact")
        if sha256_file(path) != want.get("sha256"):
            raise BadInputError(f"{what}: sha256 does not match its manifest (changed or replaced since it was "
                                "written); refusing to run it, re-create the artifact")


def load_artifact(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """The manifest of an artifact about to be run, after `check_artifact_files`: the one load-time check."""
    manifest = read_manifest(directory, kind)
    check_artifact_files(directory, manifest)
    return manifest


def confined_path(directory: str | os.PathLike, relpath: Any, what: str = "payload file",
                  source: str | os.PathLike | None = None) -> Path:
    """The file a manifest names, guaranteed inside its artifact directory (symlinks resolved): a manifest is
    input, and `../../etc/passwd` or an absolute path in it must not make wanrt open a file elsewhere. `source`:
    the file that named it, for the error line (default: the directory's manifest.json)."""
    source = source if source is not None else Path(directory) / MANIFEST_NAME
    if not isinstance(relpath, str) or not relpath or "\x00" in relpath:
        raise BadInputError(f"{source}: {what} must be a relative file name, got {relpath!r}")
    base = Path(directory).resolve()
    full = (base / relpath).resolve()
    if Path(relpath).is_absolute() or (full != base and base not in full.parents):
        raise BadInputError(f"{source}: {what} {relpath!r} points outside the artifact directory {Path(directory)}; "
                            "refusing to open it")
    return full


def artifact_kind(directory: str | os.PathLike) -> str | None:
    """The kind of wanrt artifact `directory` is ('onnx', 'engine', 'bench', ...), None if it is not one.
    A directory of per-rank exports (out/r4, out/r8) is the kind of its members; any other entry in it, dot-names
    included (wanrt's own temporaries and locks excepted), makes it not an artifact."""
    directory = Path(directory)
    doc = _manifest_doc(directory)
    if doc is not None:
        return doc["kind"]
    if any((directory / n).is_file() for n in (MANIFEST_NAME, "results.json")):
        return None  # a manifest that is not one
    try:
        names = {e.name for e in directory.iterdir()}
    except OSError:
        return None
    members = [directory / n for n in names if not _is_wanrt_scratch(n, names)]
    kinds = {artifact_kind(e) if e.is_dir() and not e.is_symlink() else None for e in members}
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


# ------------------------------------------------------------------------------------------ output directories


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, before any work, if `path` (a file or directory to be created) cannot be written: its nearest
    existing ancestor must be a directory where a file can be created (probed, since root ignores mode bits but
    not a read-only mount)."""
    path = Path(path)
    anc = _nearest_existing(path.parent if path.name else path)
    if not anc.is_dir():
        raise BadInputError(f"{what} {path}: {anc} is not a directory")
    probe = _temp_sibling(anc / "probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadInputError(f"{what} {path} cannot be written ({anc}: {e.strerror or e})") from None
    return path


def check_output_dir(path: str | os.PathLike, force: bool, kind: str | None = None) -> Path:
    """Refuse an output directory wanrt must not replace; call before any expensive work.

    Without force an existing path is refused. With force, only a wanrt artifact of the same `kind` (any kind
    when None) is replaced: a directory of the user's own files is never deleted. The current directory and its
    ancestors are refused outright, and the location must be writable."""
    path = Path(path)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8: ONNX, TensorRT and safetensors refuse them
        raise BadInputError(f"output directory {path}: the name is not valid UTF-8, which the ONNX, TensorRT and "
                            "safetensors libraries need; choose another -o") from None
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise BadInputError(f"output directory {path} is the current directory or holds it; choose a new "
                            "directory for -o")
    if path.exists() and not path.is_dir():
        raise BadInputError(f"output path {path} exists and is not a directory")
    if path.exists():
        found = artifact_kind(path)
        if not force:
            raise BadInputError(f"output directory {path} exists; pass --force to replace it" if found is not None
                                else f"output directory {path} exists and is not a wanrt artifact; choose another "
                                "-o (--force replaces only wanrt's own outputs)")
        if found is None:
            raise BadInputError(f"{path} exists and is not a wanrt artifact; --force replaces only wanrt's own "
                                "outputs, so it is left untouched (remove it yourself or choose another -o)")
        if kind is not None and found != kind:
            raise BadInputError(f"{path} holds a wanrt '{found}' artifact, not '{kind}'; --force will not replace "
                                "it with another kind")
        foreign = foreign_entries(path)
        if foreign:
            raise BadInputError(f"{path} holds {', '.join(repr(f) for f in foreign)}, which its manifest does not "
                                "list; --force replaces only wanrt's own files, so nothing was touched (move them "
                                "out or choose another -o)")
    check_writable(path, "output directory")
    return path


@contextlib.contextmanager
def claim_output_dir(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on output `path` (`.NAME.lock` beside it) so that two wanrt processes never write the
    same directory: the second gets one line and exit 2 instead of a silent last-writer-wins."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        except OSError as e:
            raise BadInputError(f"output directory {path} cannot be claimed ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise BadInputError(f"output directory {path} is being written by another wanrt process (pid {holder}); "
                                "wait for it or choose another -o") from None
        try:  # the holder before us may have unlinked the file it locked: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _register_temp(lock)  # a SIGTERM removes it with the temporaries (the kernel drops the lock itself)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        _unregister_temp(lock)
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, force: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` in one rename.

    The output is claimed (exclusive lock) for the whole write, stale temporaries of killed runs are swept first,
    and an interrupted or failed write (exception, SIGINT, SIGTERM) leaves nothing behind, never a directory that
    looks like a finished artifact. `force` and `kind` as in check_output_dir.
    """
    path = check_output_dir(path, force, kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, f"creating {path.parent}") from None
    with claim_output_dir(path):
        path = check_output_dir(path, force, kind)  # again under the lock: another run may have finished since
        sweep_stale_temps(path.parent)
        with _temporary(_temp_sibling(path), path) as tmp:
            os.mkdir(tmp, 0o777)  # not mkdtemp: its 0700 would make artifacts unreadable to a service account
            yield tmp
            if path.exists():
                check_output_dir(path, force, kind)
                old = _temp_sibling(path, "old")
                _register_temp(old)
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
                _unregister_temp(old)
            else:
                os.replace(tmp, path)
