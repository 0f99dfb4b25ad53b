"""The terminal view of a bench while it runs: a rich progress bar on a terminal, and on every output one line
per finished run (point, backend, median step time, relative error, verdict), so a bench logging to a file (CI,
nohup, a notebook) reports as it goes. The results table itself is printed once, by the CLI."""

from __future__ import annotations

from typing import Any

from wanrt.console import err_console


def verdict(run: dict[str, Any]) -> str:
    """The one-word verdict every view shows for a run (table, progress lines, report)."""
    if run.get("status") != "ok":
        return run.get("status", "failed")
    text = "equal" if run.get("equal_quality") else "NOT EQUAL"
    if run.get("interference", {}).get("disturbed"):
        text += ", disturbed"  # the load probe saw other work during timing, even after the retries
    return text


class BenchUi:
    """rich progress bar over timed steps (terminal only), a status line, and per-run lines (always)."""

    def __init__(self, console, enabled: bool | None, total: int, points: int = 0, done: int = 0):
        self.console = console or err_console
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.total = total
        self.points, self.done = points, done
        self._seen: set[str] = set()
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                                      transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def say(self, text: str) -> None:
        # soft_wrap: a log line stays one line in a file, whatever width rich assumes for it
        self.console.print(text, soft_wrap=True, highlight=False)

    def plan(self, todo: int, resumed: int) -> None:
        extra = f" ({resumed} already done, resumed)" if resumed else ""
        self.say(f"bench: {todo} sweep point(s) to run{extra}; estimate after the first point")

    def estimate(self, first_s: float, remaining: int) -> None:
        if remaining <= 0:
            return
        total = first_s * (remaining + 1)
        self.say(f"bench: first point took {first_s:.0f} s; estimate ~{_duration(total)} for all "
                 f"{remaining + 1} (points differ: separate and high ranks take longer)")

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def log_run(self, run: dict[str, Any]) -> None:
        self._seen.add(run["point"])
        where = f"[{self.done + len(self._seen)}/{self.points}] {run['point']:<24} {run['backend']:<7}"
        if run.get("status") == "ok":
            self.say(f"{where} {run['latency']['step']['median_ms']:9.1f} ms/step  rel err "
                     f"{run['quality']['rel_err_max']:.1e}  {verdict(run)}")
        else:
            self.say(f"{where} {run.get('status', 'failed')}: {run.get('reason', '')}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
