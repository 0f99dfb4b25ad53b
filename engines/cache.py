"""Content-addressed engine cache: `<root>/<cache key>/` holds an engine directory (plan + manifest).

The key hashes everything that shapes a plan (EngineSpec's plan fields, the ONNX sha256, TensorRT flavour and
version, targets, profiles), so asking for the same engine twice copies (hard-links where the filesystem allows)
instead of rebuilding. Entries are written atomically and checked (plan size + sha256) before reuse.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from wanrt.artifacts import atomic_output_dir, read_manifest, sha256_file
from wanrt.errors import BadInputError


def plan_intact(directory: Path, manifest: dict[str, Any], hash_check: bool = True) -> bool:
    p = manifest.get("payload", {})
    plan = Path(directory) / p.get("engine", "engine.plan")
    if not plan.is_file() or plan.stat().st_size != p.get("plan_bytes"):
        return False
    return not hash_check or sha256_file(plan) == p.get("plan_sha256")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class EngineCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> dict[str, Any] | None:
        entry = self.path(key)
        if not (entry / "manifest.json").is_file():
            return None
        try:
            manifest = read_manifest(entry, kind="engine")
        except BadInputError:
            return None
        if manifest["payload"].get("cache_key") != key or not plan_intact(entry, manifest):
            return None
        return manifest

    def fetch(self, key: str, out_dir: Path, force: bool = False) -> dict[str, Any] | None:
        """Materialize the cached engine at out_dir; None on a miss."""
        manifest = self.lookup(key)
        if manifest is None:
            return None
        entry = self.path(key)
        with atomic_output_dir(out_dir, force=force) as tmp:
            for f in entry.iterdir():
                if f.is_file():
                    _link_or_copy(f, tmp / f.name)
        return manifest

    def store(self, key: str, engine_dir: Path) -> None:
        """Best effort: a full disk or read-only cache never fails a build."""
        if self.lookup(key) is not None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_output_dir(self.path(key), force=True) as tmp:
                for f in Path(engine_dir).iterdir():
                    if f.is_file():
                        _link_or_copy(f, tmp / f.name)
        except OSError:
            pass
