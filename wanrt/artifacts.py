"""What every wanrt output directory shares: atomic writes, the manifest schema, hashes and versions.

One manifest schema across export, engine and bench outputs (DESIGN.md): `kind`, `wanrt_version`, `created`,
`command` (the argv that made it), `versions` (libraries), `specs` (the frozen dataclasses that describe how it was
made) and a kind-specific `payload`. Loads check the manifest before touching weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from wanrt import __version__
from wanrt.errors import BadInputError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    blob = json.dumps([to_jsonable(s) for s in specs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact; absent ones are left out."""
    from importlib import metadata

    out = {"python": platform.python_version(), "wanrt": __version__}
    for dist in ("torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                 "peft", "tensorrt", "tensorrt-rtx-cu13-bindings", "tensorrt_rtx", "nvidia-modelopt", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
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


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise BadInputError(f"{directory}: no {MANIFEST_NAME}; not a wanrt artifact directory")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: corrupt manifest ({e})") from None
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise BadInputError(f"{path}: manifest schema {manifest.get('schema')!r}, this wanrt reads {MANIFEST_SCHEMA}")
    if kind is not None and manifest.get("kind") != kind:
        raise BadInputError(f"{directory}: a '{manifest.get('kind')}' artifact, expected '{kind}'")
    return manifest


def check_output_dir(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output directory unless force; call before any expensive work."""
    path = Path(path)
    if path.exists() and not force:
        raise BadInputError(f"output directory {path} exists; pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise BadInputError(f"output path {path} exists and is not a directory")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` in one rename.

    An interrupted or failed write leaves only a hidden `.name.tmp-*` directory that is removed on the way out,
    never a directory that looks like a finished artifact.
    """
    path = check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
