"""Giving memory back between the steps of a large job (export, validation, extraction)."""

from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps freed arenas resident otherwise, which on a
    14B slice is gigabytes that the next step - ORT loading the graph - would stack on top of)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
