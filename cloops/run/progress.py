"""The live progress view of a build on a terminal: stories done of all, tasks in flight per
service against its limit, spend so far and an ETA, redrawn in place.

Layer: **run**. The reporter (:mod:`cloops.run.reporter`) uses it instead of one line per
task when its output is a terminal and neither ``-v``/``--verbosity`` nor
``CLOOPS_PROGRESS=lines`` asks for the lines; failures, notes (hand edits kept, locks) and the
closing summary are still printed, above the view.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

VERBOSE_FLAGS = ("-v", "--verbosity")


def wants_lines(argv: list[str]) -> bool:
    """True when the command line or environment asks for one line per task: doit's
    ``-v N`` / ``--verbosity N`` (any value), or ``CLOOPS_PROGRESS=lines``."""
    if os.environ.get("CLOOPS_PROGRESS", "").lower() == "lines":
        return True
    return any(a in VERBOSE_FLAGS or a.startswith("--verbosity=") or
               (a.startswith("-v") and a[2:].isdigit()) for a in argv)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LiveView:
    """What the view shows, updated by the reporter and drawn by rich's ``Live`` 4 times a
    second (in its own thread: it only reads these counters).

    ``service_of(task name) -> service or None``; ``limit_of(service) -> (calls in flight or
    None, limit or None, backend name)``; ``spent() -> US dollars this run``.
    """

    def __init__(self, console, stories_total: int, *, service_of: Callable[[str], str | None],
                 limit_of: Callable[[str], tuple[int | None, int | None, str]],
                 spent: Callable[[], float]):
        self.console = console
        self.stories_total = stories_total
        self.service_of = service_of
        self.limit_of = limit_of
        self.spent = spent
        self.t0 = time.monotonic()
        self.running: dict[str, str | None] = {}  # task → service
        self.services: list[str] = []
        self.stories_done: set[str] = set()
        self.stories_failed: set[str] = set()
        self.ran = 0
        self.uptodate = 0
        self.failed = 0
        self._live: Any = None

    def start(self) -> None:
        from rich.live import Live
        self._live = Live(console=self.console, get_renderable=self.render,
                          refresh_per_second=4, transient=True, redirect_stdout=False,
                          redirect_stderr=False)
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------ events

    def started(self, task: str) -> None:
        service = self.service_of(task)
        self.running[task] = service
        if service and service not in self.services:
            self.services.append(service)

    def ended(self, task: str, *, ok: bool, ran: bool = True) -> None:
        self.running.pop(task, None)
        if not ok:
            self.failed += 1
        elif ran:
            self.ran += 1
        else:
            self.uptodate += 1

    def story_done(self, key: str, *, ok: bool = True) -> None:
        (self.stories_done if ok else self.stories_failed).add(key)

    # ------------------------------------------------------------ drawing

    def eta_s(self) -> float | None:
        """Seconds left, from the pace of the stories finished so far (None before one)."""
        done = len(self.stories_done | self.stories_failed)
        if not done or not self.stories_total:
            return None
        left = max(self.stories_total - done, 0)
        return (time.monotonic() - self.t0) / done * left

    def render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        done = len(self.stories_done)
        failed = len(self.stories_failed)
        total = max(self.stories_total, done + failed)
        elapsed = time.monotonic() - self.t0
        head = Table.grid(padding=(0, 1))
        head.add_row(
            Text("stories", style="bold"),
            ProgressBar(total=total or 1, completed=done + failed, width=30),
            Text(f"{done + failed}/{total} done" + (f" ({failed} failed)" if failed else "")),
            Text(f"· ETA {_eta(self.eta_s())} · {_eta(elapsed)} so far", style="dim"))
        tasks = Text(f"tasks: {self.ran} ran, {self.uptodate} up to date, "
                     f"{self.failed} failed, {len(self.running)} running", style="dim")
        rows = Table.grid(padding=(0, 2))
        for service in self.services:
            running = sum(1 for s in self.running.values() if s == service)
            in_flight, limit, backend = self.limit_of(service)
            calls = running if in_flight is None else in_flight
            cap = "no limit" if limit is None else f"limit {limit}"
            rows.add_row(Text(service, style="bold"), Text(f"{calls} in flight / {cap}"),
                         Text(f"{running} tasks running · {backend}", style="dim"))
        spend = Text(f"spent ${self.spent():.4f} this run", style="bold")
        return Group(head, tasks, rows, spend)
