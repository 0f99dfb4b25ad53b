"""Commands for the tests that signal a wanrt child process.

A child inherits its parent's ignored signals and signal mask. A pytest worker's state there is not the test's to
choose (in two fresh-clone CI runs one worker's children never saw SIGINT, and ran to the end), so these children
start with SIGINT at its default handler and both signals unblocked: the tests then check what wanrt does on
Ctrl-C and SIGTERM, not what the runner left behind. wanrt's own unblocking is tested without this wrapper."""

from __future__ import annotations

import sys

_RUN_WANRT = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM}); sys.argv[0] = 'wanrt'; "
              "runpy.run_module('wanrt', run_name='__main__', alter_sys=True)")


def wanrt_command(*args: str) -> list[str]:
    """`python -m wanrt ARGS`, started with SIGINT at its default and SIGINT/SIGTERM unblocked."""
    return [sys.executable, "-c", _RUN_WANRT, *args]
