"""The one bounded JSON reader and the one JSON writer for manifests, metadata and wanrt's own documents.

A manifest, a LoRA's safetensors metadata or a peft `adapter_config.json` is input: it may be huge, nested 100k
deep (json.loads recurses and dies in RecursionError), a FIFO that blocks any open() forever, or not UTF-8. Every
reader goes through `loads`/`read_json`: the size is bounded before parsing, the depth is checked by a linear
scan without recursion, only regular files are opened, and every failure is one `BadInputError` line naming the
file. The writer (`dumps`) refuses NaN/Infinity, which are not JSON and which other parsers reject.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from typing import Any

from wanrt.errors import BadInputError, StorageError, os_error_line

MAX_JSON_BYTES = 16 << 20  # a bundle manifest of thousands of files is well under 1 MiB
MAX_JSON_DEPTH = 64  # wanrt's deepest document nests about 8 levels

# strings (skipped whole, escapes included) or one bracket: the depth scan visits only these tokens
_DEPTH_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def depth_ok(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True when no array/object nests deeper than `max_depth`; a linear scan, so 100k brackets cost no stack."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return True
    depth = 0
    for m in _DEPTH_TOKENS.finditer(raw):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return False
        elif c in (b"]", b"}"):
            depth -= 1
    return True


def loads(data: str | bytes, what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON from `what` (a file name or a description, used in the error line) within the bounds."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise BadInputError(f"{what}: {len(raw) / 2**20:.1f} MiB of JSON, more than wanrt reads "
                            f"({max_bytes / 2**20:.0f} MiB); not a document wanrt wrote")
    if not depth_ok(raw, max_depth):
        raise BadInputError(f"{what}: JSON nested deeper than {max_depth} levels; not a document wanrt wrote")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadInputError(f"{what}: not valid JSON ({str(e).splitlines()[0][:120]})") from None


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of `path`, refused (BadInputError) unless it is a regular file. Opened non-blocking
    so a FIFO or a device cannot hang the open itself, then checked with fstat (no race between a check and the
    open). A missing or unreadable path raises the OSError as it is (callers word it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInputError(f"{path}: not a regular file (a FIFO, device, socket or directory); refusing to read it")
    os.set_blocking(fd, True)
    return fd


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`loads` of a file: regular files only, at most `max_bytes` read (a larger file is refused unread)."""
    try:
        fd = open_regular(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        raise BadInputError(f"{path}: {e.strerror or e}") from None
    except OSError as e:
        raise StorageError(os_error_line(e, "reading")) from None
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise BadInputError(f"{path}: {size / 2**20:.1f} MiB, more than wanrt reads as JSON "
                                f"({max_bytes / 2**20:.0f} MiB); not a document wanrt wrote")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise StorageError(os_error_line(e, f"reading {path}")) from None
    finally:
        os.close(fd)
    return loads(raw, str(path), max_bytes, max_depth)


def _non_finite_path(obj: Any) -> str | None:
    """Where the first NaN/Infinity is in `obj` ('payload.runs[3].psnr'), found without recursion."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return where or "the document"
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
    return None


def dumps(obj: Any, what: str = "JSON", allow_nan: bool = False, **kw: Any) -> str:
    """json.dumps that refuses NaN/Infinity (not JSON: other parsers reject the file) in one line naming the key.
    `allow_nan`: only for a measurement document whose readers take Infinity back as a measured value."""
    try:
        return json.dumps(obj, allow_nan=allow_nan, **kw)
    except ValueError:
        where = _non_finite_path(obj)
        if where is None:
            raise
        raise BadInputError(f"{what}: {where} is not a finite number; refusing to write NaN/Infinity") from None
