"""One processor for the interpreter's threads: where a build's Python runs.

Layer: **core**.

Only one thread runs Python at a time (the interpreter lock), so a build's dispatching thread
and its task threads hand the interpreter to each other several times a task. When the kernel
puts them on different processors, every hand-off wakes the other processor and moves the
interpreter's working set between two caches. On a virtual machine a sleeping processor is a
halted virtual CPU, and waking it is a trip through the hypervisor. Measured on the 2-core
benchmark machine (``benchmarks/README.md``, issue 24): a 300-story build against instant fakes
took 21.8 s with 24 task threads spread over both processors and 13.4 s with the same threads
on one, as fast as doit's serial runner (14.0 s) with none.

:func:`pin` puts the calling thread, and every thread it starts afterwards (they inherit it), on
the one processor it is running on. Work that is not Python and runs on many processors -
FFmpeg, a render's frame pool, piper's onnxruntime - runs inside :func:`unpinned`, and what it
starts inherits every processor the process may use. :meth:`Pin.check`, called now and then by the
thread that pinned, moves the pinned threads to another processor when something outside the
process keeps theirs busy (another build on the same machine, say).

Linux only (``os.sched_setaffinity`` on a thread id); elsewhere, with one processor, or with
``CLOOPS_PIN=0`` every function here does nothing.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

CHECK_EVERY_S = 1.0  # how often Pin.check looks at the processors' use
BUSY_ELSEWHERE = 0.3  # share of the pinned processor used by others that makes the threads move


def _cpu_now() -> int | None:
    """The processor the calling thread runs on (``/proc/thread-self/stat``, field 39), or
    None where that file is not."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing parenthesis
    return int(stat[stat.rindex(b")") + 2:].split()[36])


def _busy_times() -> dict[int, tuple[int, int]]:
    """``{cpu: (busy, total)}`` in clock ticks since boot, from ``/proc/stat``."""
    out: dict[int, tuple[int, int]] = {}
    try:
        with open("/proc/stat", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        if not line.startswith(b"cpu") or line[3:4] == b" ":
            continue
        name, *fields = line.split()
        ticks = [int(x) for x in fields[:8]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


class Pin:
    """The processor this process's Python threads share, chosen by :func:`pin`.

    Attributes:
        cpu: the processor they run on now.
        allowed: every processor the process may use (what :func:`unpinned` gives back).
        moves: how many times :meth:`check` moved them.
    """

    def __init__(self, cpu: int, allowed: set[int]):
        self.cpu = cpu
        self.allowed = allowed
        self.moves = 0
        self._pinned = {cpu}  # every processor used so far: threads on one of them follow
        self._next_check = time.monotonic() + CHECK_EVERY_S
        self._last: tuple[dict[int, tuple[int, int]], float] | None = None

    def check(self, now: float | None = None) -> None:
        """Move the pinned threads when, since the last look (at most every
        :data:`CHECK_EVERY_S`), others used more than :data:`BUSY_ELSEWHERE` of their
        processor and another allowed processor was idler. Cheap to call often: it returns at
        once between looks. Called on the thread that pinned."""
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        times, ours = _busy_times(), sum(os.times()[:2])
        last, self._last = self._last, (times, ours)
        if last is None or self.cpu not in times:
            return
        before, ours_before = last
        hz = os.sysconf("SC_CLK_TCK")

        def used(cpu: int) -> float:
            b0, t0 = before.get(cpu, (0, 0))
            b1, t1 = times.get(cpu, (0, 0))
            return (b1 - b0) / (t1 - t0) if t1 > t0 else 1.0

        span = (times[self.cpu][1] - before[self.cpu][1]) / hz
        if span <= 0:
            return
        # what this process used counts as ours wherever it ran: a low bound of the others' use
        others = used(self.cpu) - (ours - ours_before) / span
        if others <= BUSY_ELSEWHERE:
            return
        idlest = min(self.allowed, key=used)
        if idlest != self.cpu and used(idlest) < others:
            self._move(idlest)

    def _move(self, cpu: int) -> None:
        """Put every thread now on one of the processors pinned so far on ``cpu``."""
        for tid in _threads():
            try:
                mask = os.sched_getaffinity(tid)
                if len(mask) == 1 and next(iter(mask)) in self._pinned:
                    os.sched_setaffinity(tid, {cpu})
            except OSError:
                continue  # the thread ended meanwhile
        self._pinned.add(cpu)
        self.cpu = cpu
        self.moves += 1


def _threads() -> list[int]:
    """The ids of this process's threads (``/proc/self/task``)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


_PIN: list[Pin | None] = []  # [the pin] once pin() was called: None when it did nothing


def pin() -> Pin | None:
    """Put the calling thread (and the threads it starts later) on the processor it runs on,
    the first time it is called in a process; return the same :class:`Pin` afterwards.

    Returns None when nothing was done: not Linux, one processor allowed, or ``CLOOPS_PIN=0``.
    Called by doit's thread runner before it starts its workers
    (:func:`cloops.run.dispatch.install_inline`).
    """
    if _PIN:
        return _PIN[0]
    _PIN.append(None)
    if os.environ.get("CLOOPS_PIN", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    cpu = _cpu_now()
    if len(allowed) < 2 or cpu is None or cpu not in allowed:
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None  # the processor went away meanwhile: the kernel places the threads
    _PIN[0] = Pin(cpu, set(allowed))
    return _PIN[0]


def current() -> Pin | None:
    """The process's :class:`Pin`, or None when there is none."""
    return _PIN[0] if _PIN else None


@contextmanager
def unpinned() -> Iterator[None]:
    """Run the block on every processor the process may use: child processes and threads
    started in it inherit them. Does nothing when the process is not pinned or the calling
    thread is not on a single processor (a processor that went away meanwhile: the block runs
    where the kernel lets it)."""
    held = current()
    mine: set[int] = set()
    if held is not None:
        try:
            mine = os.sched_getaffinity(0)
            if len(mine) == 1:
                os.sched_setaffinity(0, held.allowed)
        except OSError:
            mine = set()
    if len(mine) != 1:
        yield
        return
    try:
        yield
    finally:
        try:
            os.sched_setaffinity(0, {held.cpu})
        except OSError:
            pass
