"""Content-addressed engine cache: `<root>/<cache key>/` holds an engine directory (plan + manifest).

The key hashes everything that shapes a plan (EngineSpec's plan fields, the bytes of the ONNX and its external
data, TensorRT flavour and version, targets, profiles), so asking for the same engine twice copies instead of
rebuilding. The bytes are hashed, not the sha256 a manifest records: a `model.onnx` edited after export is
another input and must not get the old engine.

An entry is trusted only as far as it can be checked: its files are read-only, their sha256 are recorded in
`cache-entry.json` when stored and verified on every lookup, and they are copied (reflinked where the file
system can) into output directories, never hard-linked, so editing or truncating an output cannot reach the
cache or a sibling output. A tampered or damaged entry is evicted with one line on stderr and rebuilt.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from wanrt.artifacts import (
    MANIFEST_NAME,
    _remove,
    atomic_output_dir,
    cache_root,
    confined_path,
    sha256_file,
    writable_cache,
    write_json,
)
from wanrt.errors import BadInputError, WanrtError, os_error_line
from wanrt.jsonio import read_json
from wanrt.manifests import EngineManifest

ENTRY_INDEX = "cache-entry.json"  # {key, files: {name: sha256}}; stays in the cache, not copied out
_FICLONE = 0x40049409  # linux/fs.h: share the blocks copy-on-write (btrfs, xfs); a plain copy elsewhere


def plan_intact(directory: Path, manifest: EngineManifest, hash_check: bool = True) -> bool:
    try:
        plan = confined_path(directory, manifest.engine, "engine plan")
    except BadInputError:
        return False
    if not plan.is_file() or plan.stat().st_size != manifest.plan_bytes:
        return False
    return not hash_check or sha256_file(plan) == manifest.plan_sha256


def same_engine(out_dir: Path, key: str) -> EngineManifest | None:
    """The manifest of the engine already at `out_dir` when it is the one `key` names (its plan intact): a build
    asked twice returns it instead of building again; None for anything else there (or nothing)."""
    if not (out_dir / MANIFEST_NAME).is_file():
        return None
    try:
        existing = EngineManifest.read(out_dir)
    except BadInputError:
        return None
    return existing if existing.cache_key == key and plan_intact(out_dir, existing) else None


def onnx_content_sha256(onnx_path: Path, external: Iterable[Path] = (), onnx_sha: str | None = None) -> str:
    """One sha256 over the bytes of model.onnx and its external data files (name + length + bytes of each, so
    moving bytes between files changes it too). `onnx_sha`: model.onnx's sha256 when the caller has it already."""
    import hashlib

    h = hashlib.sha256()
    onnx_path = Path(onnx_path)
    for f in (onnx_path, *sorted(Path(e) for e in external)):
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        h.update(bytes.fromhex(onnx_sha if onnx_sha and f == onnx_path else sha256_file(f)))
    return h.hexdigest()


def engine_cache_from_root(cache_root_option: str | os.PathLike | None) -> str | None:
    """`--cache-dir ROOT` is the cache root in every subcommand (exports/, engines/, ...): the engine cache of
    every flavour is ROOT/engines. None: the default root's (engine_cache_dir)."""
    return str(Path(cache_root_option) / "engines") if cache_root_option else None


def engine_cache_dir(spec: Any) -> Path:
    """Where built engines are cached (TensorRT and OpenVINO): --cache-dir, else the one cache root's engines/
    ($WANRT_CACHE_DIR)."""
    return Path(spec.cache_dir) if spec.cache_dir else cache_root("engines")


def engine_in_cache(cache_dir: str | os.PathLike | None, key: str, build: Callable[[Path], Any]) -> Path:
    """The engine directory of `key` in the shared engine cache, built first on a miss (`build(out)` writes the
    engine to `out` and stores it under its key, as every flavour's build does): what a runtime handed an export
    instead of an engine loads, read-only and in place, so `wanrt build`, bench and the runtime share one copy per
    key. A cache that cannot be written leaves the build where it was made (a private folder removed at exit)."""
    cache = EngineCache(Path(cache_dir) if cache_dir else cache_root("engines"))
    if cache.lookup(key) is not None:
        return cache.path(key)
    out = writable_cache("engines") / f".runtime-{key}"
    build(out)
    if cache.lookup(key) is None:
        return out
    _remove(out)
    return cache.path(key)


def copy_out(src: Path, dst: Path) -> None:
    """A private copy of `src` at `dst` (reflink when the file system shares blocks copy-on-write), writable by
    its new owner whatever the cache entry's read-only mode."""
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        try:
            fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
            return
        except OSError:
            pass
        shutil.copyfileobj(fs, fd, 1 << 22)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


class EngineCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def _verify(self, key: str) -> tuple[EngineManifest | None, str]:
        """(manifest, "") for an intact entry, (None, why) otherwise."""
        entry = self.path(key)
        try:
            index = read_json(entry / ENTRY_INDEX)  # bounded: size, depth, regular files only
            files = index["files"]
            if index.get("key") != key or not isinstance(files, dict) or "manifest.json" not in files:
                return None, "its index does not describe it"
        except (WanrtError, KeyError, TypeError):
            return None, f"no readable {ENTRY_INDEX}"
        present = {f.name for f in entry.iterdir() if f.is_file()} - {ENTRY_INDEX}
        if present != set(files):
            return None, f"files {sorted(present ^ set(files))} added or missing"
        for name, digest in files.items():
            if sha256_file(entry / name) != digest:
                return None, f"{name} changed since it was stored (sha256 differs)"
        try:
            manifest = EngineManifest.read(entry)
        except BadInputError as e:
            return None, str(e)
        if manifest.cache_key != key or not plan_intact(entry, manifest, hash_check=False):
            return None, "its manifest does not match its key or plan"
        return manifest, ""

    def evict(self, key: str) -> None:
        _remove(self.path(key))

    def lookup(self, key: str) -> EngineManifest | None:
        """The manifest of an intact entry, None on a miss. A damaged or tampered entry is evicted (one line)."""
        if not self.path(key).is_dir():
            return None
        manifest, why = self._verify(key)
        if manifest is None:
            try:
                self.evict(key)
            except (OSError, WanrtError):  # a read-only cache: the entry stays, unused; the build goes on
                _warn(f"engine cache entry {self.path(key)} failed verification ({why}); not used, rebuilding")
                return None
            _warn(f"engine cache entry {self.path(key)} failed verification ({why}); evicted, rebuilding")
        return manifest

    def fetch(self, key: str, out_dir: Path, force: bool = False) -> EngineManifest | None:
        """Materialize the cached engine at out_dir (private copies); None on a miss."""
        manifest = self.lookup(key)
        if manifest is None:
            return None
        entry = self.path(key)
        with atomic_output_dir(out_dir, force=force, kind="engine") as tmp:
            for f in entry.iterdir():
                if f.is_file() and f.name != ENTRY_INDEX:
                    copy_out(f, tmp / f.name)
        return manifest

    def store(self, key: str, engine_dir: Path) -> None:
        """Best effort: the engine at engine_dir is complete already, so a full disk or a read-only cache never
        fails a build: one warning line, exit 0."""
        try:
            if self.lookup(key) is not None:
                return
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_output_dir(self.path(key), force=True, kind="engine") as tmp:
                files = {}
                for f in Path(engine_dir).iterdir():
                    if f.is_file() and f.name != ENTRY_INDEX:
                        copy_out(f, tmp / f.name)
                        files[f.name] = sha256_file(tmp / f.name)
                write_json(tmp / ENTRY_INDEX, {"key": key, "files": files})
                # read-only: a stray write (or a tool following a path out of a manifest) cannot change an entry
                for f in tmp.iterdir():
                    os.chmod(f, 0o444)
                os.chmod(tmp, 0o555)
        except (OSError, WanrtError) as e:  # StorageError (ENOSPC, EROFS) from the atomic write, or the OSError
            why = os_error_line(e) if isinstance(e, OSError) else str(e)
            _warn(f"engine not cached in {self.root} ({why}); the engine in {engine_dir} is complete")
