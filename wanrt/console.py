"""Terminal output: one rich console on stderr for progress, tables on stdout."""

from __future__ import annotations

import sys
import time

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

err_console = Console(stderr=True)
# Tables are designed for 80 columns; piped output (CI logs, `| tee`) gets rich's 80, a terminal its own width.
out_console = Console()


def compact_table(title: str, columns: tuple[str, ...], right: tuple[str, ...] = (), **column) -> Table:
    """A summary table sized for 80 columns: a rule under the header, one space between columns, the `right`
    columns right-aligned (numbers)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", **column)
    return table


class StepProgress:
    """A progress bar over the named steps of one long job (load, trace, validate, ...), with per-step times."""

    def __init__(self, title: str, steps: list[str], enabled: bool | None = None, say=None):
        self.steps, self.title = steps, title
        # without a bar (not a terminal, or disabled) `say` still gets one line per step, so a long job that a
        # newcomer pipes or runs in CI is never silent for minutes
        self._say = say
        self.times: dict[str, float] = {}
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                  console=err_console, transient=True, disable=not self.enabled)
        self._task = None
        self._current: str | None = None
        self._t0 = 0.0

    def __enter__(self) -> "StepProgress":
        self._progress.__enter__()
        self._task = self._progress.add_task(self.title, total=len(self.steps))
        return self

    def __exit__(self, *exc) -> None:
        self._finish_current()
        self._progress.__exit__(*exc)

    def _finish_current(self) -> None:
        if self._current is not None:
            self.times[self._current] = self.times.get(self._current, 0.0) + time.perf_counter() - self._t0
            self._progress.advance(self._task)
            self._current = None

    def __call__(self, step: str) -> None:
        """Start `step` (ends the previous one)."""
        self._finish_current()
        self._current, self._t0 = step, time.perf_counter()
        self._progress.update(self._task, description=f"{self.title}: {step}")
        if self._say is not None and not self.enabled:
            self._say(f"{self.title}: {step} ({len(self.times) + 1}/{len(self.steps)})")

    def detail(self, text: str) -> None:
        """Say what the current step is doing (a sub-step such as "tracing"), without ending it."""
        if self._current is not None:
            self._progress.update(self._task, description=f"{self.title}: {self._current}: {text}")
