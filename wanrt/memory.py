"""Giving memory back between the steps of a large job (export, validation, extraction), and reading it: the
process's resident set, and a thread that samples while a block runs (peak RSS, the machine's load)."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from typing import Any, Callable


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps freed arenas resident otherwise, which on a
    14B slice is gigabytes that the next step - ORT loading the graph - would stack on top of)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Sampler:
    """Calls `sample()` every `interval` s in a thread while a `with` block runs."""

    def __init__(self, sample: Callable[[], Any], interval: float):
        self.sample, self.interval = sample, interval
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
