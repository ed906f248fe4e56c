"""Turns at the interpreter: how many task threads run Python at once.

Layer: **core**.

A run has many worker threads (doit's ``num_process``, 24 by default) so that many paid calls
can wait on the network at once. While they wait they cost nothing. When answers come back
fast (the response cache, offline drafts, a fast endpoint), every thread is runnable at once
and they take the one interpreter lock from each other at every system call: a build against
instant fakes made ~100 context switches a task, a fifth of its CPU (issue 24; ``CLOOPS_JOBS=2``
made it 0.8 of the time, ``benchmarks/README.md``), and doit's main thread - which starts every
task and records every result - waited behind them.

A task thread takes a turn (:meth:`Turns.held`) to run, and gives it back while it waits for
something that is not Python (:meth:`Turns.released`): a service call, a render's encoder, a
limiter's slot, another task's answer. At most :data:`TURNS` task threads run Python at once;
the others wait on a semaphore, not on the interpreter lock. One turn: doit's main thread and
one task thread then take the interpreter from each other, and nobody else does. Two turns
(the default until the per-task work shrank) made a third thread contend: 45 context switches
a task against 25, and a 300-story build against instant fakes 10 % slower (farm-bench,
``benchmarks/README.md``); the makespan against fakes with latency was the same (1.07).

A turn is a courtesy, never a lock: a thread that waited :data:`WAIT_S` for one runs without
it, so a thread that holds a turn while it waits on a lock whose holder wants one slows the
run by that much at most and never stops it.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

TURNS = 1  # task threads running Python at once (CLOOPS_TURNS; 0: no limit)
WAIT_S = 0.25  # the longest a thread waits for a turn before it runs anyway


class Turns:
    """At most ``n`` threads inside :meth:`held` blocks at once, less those in :meth:`released`.

    ``n`` 0 or less: no limit (both blocks do nothing). Thread-safe; re-entrant per thread.
    """

    def __init__(self, n: int = TURNS, wait_s: float = WAIT_S):
        self.n = n
        self.wait_s = wait_s
        # one turn: a plain lock, whose wait and release are C (a Semaphore is a Condition in
        # Python: a waiter lock made per wait, and notify's bookkeeping under the GIL)
        self._sem = threading.Lock() if n == 1 else threading.Semaphore(n) if n > 0 else None
        self._mine = threading.local()  # .depth: nesting of held(); .has: holds a turn now

    def _take(self) -> None:
        self._mine.has = self._sem.acquire(timeout=self.wait_s)

    def _give(self) -> None:
        if getattr(self._mine, "has", False):
            self._mine.has = False
            self._sem.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block with a turn (taken on entry, within :attr:`wait_s`)."""
        if self._sem is None:
            yield
            return
        depth = getattr(self._mine, "depth", 0)
        if depth == 0:
            self._take()
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth = depth
            if depth == 0:
                self._give()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Run the block (a wait on something other than Python) without this thread's turn,
        if it holds one; take a turn again after it."""
        if self._sem is None or not getattr(self._mine, "has", False):
            yield
            return
        self._give()
        try:
            yield
        finally:
            self._take()


def _from_env() -> int:
    try:
        return int(os.environ.get("CLOOPS_TURNS", TURNS))
    except ValueError:
        return TURNS


TASK_TURNS = Turns(_from_env())
