"""Story status changes of a run, written to the backlog together.

Layer: **run**.

A story's status changes twice in a run (``in_progress`` when its first task starts, then
``completed``, ``pending`` or ``failed``), and each change used to re-read, splice, rewrite
and re-index the whole backlog file under its lock: ~5 ms at 1,000 stories, one new file and
one deleted file each time, 10 s of a 1,000-story build against instant fakes (issue 24). A
:class:`StatusWriter` holds the changes of a JSON backlog for at most :data:`DELAY_S` and
writes all of them at once (:func:`cloops.data.backlog.set_statuses`): the file shows every
change within half a second, in the order it happened, and is written whole or not at all,
as before. The run's end (the reporter's summary) and the interpreter's exit write what is
left. What a kill -9 can lose is the last half second of status changes: those stories are
then ``in_progress`` or ``pending`` with every target built and recorded, and the next run
finds them up to date and settles their status.

A Firestore backlog (a network write the app reads) and a CSV backlog are written at once,
as is every change made outside the process that started the writer (doit's process mode).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ..core.errors import CloopsError
from ..data import backlog as backlog_mod
from ..graph.completion import record_completed, record_completed_many

DELAY_S = 0.5  # the longest a status change waits before its backlog is written


class StatusWriter:
    """Backlog status changes held for at most ``delay_s`` seconds, then written together.

    Thread-safe; one per process (:data:`WRITER`). ``errors`` keeps the message of a write that
    failed (the backlog became invalid JSON, a story was removed from it): its changes stay
    held and are tried again at the next write, and the run's summary prints the message.
    """

    def __init__(self, delay_s: float = DELAY_S):
        self.delay_s = delay_s
        self.errors: dict[str, str] = {}  # backlog file -> why its last write failed
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards _held and _timer
        self._write_lock = threading.Lock()  # one write at a time
        self._held: dict[tuple[str, str], list[tuple[str, str, str | None, str | None]]] = {}
        self._completions: list[tuple[Any, str, str, dict]] = []  # (project, template, id, input)
        self._timer: threading.Timer | None = None

    def _now(self, path: Path | str) -> bool:
        """True when a change to backlog ``path`` is written at once, not held: a backlog
        :func:`~cloops.data.backlog.set_statuses` cannot write together, or a call from
        another process (whose held changes would die with it)."""
        return not backlog_mod.batchable(path) or os.getpid() != self._pid

    def complete(self, proj: Any, template: str, story_id: str, story_input: dict,
                 path: Path | str) -> None:
        """Record a story's completion (``completed.json``: the state it was completed in,
        :func:`cloops.graph.completion.record_completed`) and set it ``completed`` in backlog
        ``path``: both written within :attr:`delay_s`, the record first.

        Raises:
            As :meth:`set` and ``record_completed`` when written now.
        """
        if self._now(path):
            record_completed(proj, template, story_id, story_input)
            self.set(proj.root, path, story_id, "completed")
            return
        with self._lock:
            self._completions.append((proj, template, story_id, story_input))
        self.set(proj.root, path, story_id, "completed")

    def set(self, root: Path, path: Path | str, story_id: str, status: str, *,
            error: str | None = None) -> None:
        """Set a story's status as :func:`cloops.data.backlog.set_status` does, written within
        :attr:`delay_s` (a Firestore or CSV backlog, or a call from another process: now).

        Raises:
            ValueError: ``status`` is not a backlog status.
            InputError, EditedMeanwhile: only when written now, as ``set_status`` raises them.
        """
        if status not in backlog_mod.STATUSES:
            raise ValueError(status)
        if self._now(path):
            backlog_mod.set_status(root, path, story_id, status, error=error)
            return
        at = backlog_mod.now_iso() if status == "completed" else None
        with self._lock:
            self._held.setdefault((str(root), str(path)), []).append(
                (story_id, status, error, at))
            if self._timer is None:
                self._timer = threading.Timer(self.delay_s, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> int:
        """Write every held change, one write per backlog file; return how many were written.

        A write that fails keeps its changes held (tried again at the next flush) and its
        message in :attr:`errors`; nothing raises.
        """
        with self._write_lock:
            with self._lock:
                held, self._held = self._held, {}
                completions, self._completions = self._completions, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            written = 0
            groups: dict[tuple[int, str], list] = {}
            for proj, template, story_id, story_input in completions:
                groups.setdefault((id(proj), template), []).append(
                    (proj, story_id, story_input))
            for (_proj, template), stories in groups.items():
                proj = stories[0][0]
                try:  # the records first: a story the backlog calls completed has one
                    record_completed_many(proj, template, [(i, inp) for _p, i, inp in stories])
                except (CloopsError, OSError) as exc:  # held again, like a status
                    self.errors[f"{template} completed.json"] = str(exc)
                    with self._lock:
                        self._completions[:0] = [(p, template, i, inp) for p, i, inp in stories]
                    continue
                self.errors.pop(f"{template} completed.json", None)
            for (root, path), changes in held.items():
                try:
                    _changed, missing = backlog_mod.set_statuses(Path(root), Path(path), changes)
                except (CloopsError, OSError) as exc:
                    self.errors[path] = str(exc)
                    with self._lock:
                        self._held[(root, path)] = changes + self._held.get((root, path), [])
                    continue
                self.errors.pop(path, None)
                written += len(changes)
                if missing:
                    self.errors[path] = (f"{path}: the stories {', '.join(sorted(set(missing)))} "
                                         "are no longer in the backlog; their status was not "
                                         "written.")
            return written

    def held(self) -> int:
        """How many changes wait to be written."""
        with self._lock:
            return sum(len(v) for v in self._held.values())


WRITER = StatusWriter()


def report_errors(print_line=lambda text: print(text, file=sys.stderr)) -> None:
    """Print (and forget) why status writes failed, one line per backlog file."""
    errors, WRITER.errors = WRITER.errors, {}
    for message in errors.values():
        print_line(f"could not write a story status: {message}")


def _flush_at_exit() -> None:
    if WRITER.held():
        WRITER.flush()
    report_errors()


atexit.register(_flush_at_exit)
