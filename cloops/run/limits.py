"""Per-service limits: how many calls may be in flight, and how many may start per minute.

Layer: **run**.

doit has no per-resource concurrency pools (pydoit#130, #162): tasks run in a thread pool and
each service call takes a slot from its backend's :class:`ServiceLimiter` first, so 100 stories'
image calls overlap up to ``generation.concurrency`` without tripping the provider's throttling.
A retry's backoff wait happens outside the slot.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ..services.base import service_slot


class RateLimiter:
    """At most ``per_minute`` starts per minute, evenly spaced after an initial ``burst``.

    A token bucket (capacity ``burst``, refilled at ``per_minute / 60`` tokens per second):
    ``acquire()`` blocks until a token is available. ``per_minute`` None: no limit.
    """

    def __init__(self, per_minute: float | None, burst: int = 1, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate_s = (per_minute / 60.0) if per_minute else None
        self.capacity = max(1, int(burst))
        self.tokens = float(self.capacity)
        self.clock = clock
        self.sleep = sleep
        self.last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token; return the seconds waited."""
        if self.rate_s is None:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate_s)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return waited
                need = (1 - self.tokens) / self.rate_s
            self.sleep(need)
            waited += need


class PrioritySlots:
    """A counting semaphore that hands a freed slot to the waiting caller with the smallest
    priority (then the longest waiting), not to whichever thread the OS wakes first.

    With 100 stories' calls queued, the call that leads soonest to a finished story (the
    oldest story's, the deepest step's: :mod:`cloops.run.dispatch`) goes first.
    """

    def __init__(self, n: int):
        self._free = n
        self._lock = threading.Lock()
        self._heap: list = []
        self._seq = itertools.count()

    def acquire(self, priority: tuple = ()) -> None:
        with self._lock:
            if self._free > 0 and not self._heap:
                self._free -= 1
                return
            granted = threading.Event()
            heapq.heappush(self._heap, (priority, next(self._seq), granted))
        granted.wait()

    def release(self) -> None:
        with self._lock:
            if self._heap:
                heapq.heappop(self._heap)[2].set()  # the slot passes straight to the waiter
            else:
                self._free += 1

    @property
    def waiting(self) -> int:
        """Callers blocked for a slot now."""
        return len(self._heap)


class ServiceLimiter:
    """A concurrency limit plus a rate limit for one backend.

    Attributes:
        concurrency: calls in flight at most (None: unlimited).
        in_flight / peak: current and highest number of calls in flight (for tests and reports).
        waiting: callers blocked for a slot now (the dispatcher reads it: a service with a
            full queue gets no more tasks while others have work; see :mod:`cloops.run.dispatch`).
    """

    def __init__(self, concurrency: int | None, per_minute: float | None, burst: int | None = None):
        self.concurrency = concurrency
        self._sem = PrioritySlots(concurrency) if concurrency else None
        self.rate = RateLimiter(per_minute, burst or concurrency or 1)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0

    @property
    def waiting(self) -> int:
        return self._sem.waiting if self._sem is not None else 0

    def saturated(self) -> bool:
        """True when at least a full second round of callers waits for a slot: more tasks
        for this service would only wait too."""
        return self.concurrency is not None and self.waiting >= self.concurrency

    @contextmanager
    def slot(self, priority: tuple = ()) -> Iterator[None]:
        """Hold one slot for the duration of a call (blocks while the service is at its limits;
        waiting callers get slots smallest ``priority`` first, then first come).

        The backend may end it earlier with :func:`cloops.services.base.service_done` (its provider's part is over
        and what remains, such as downloading an output, is not a call the limit is about).
        """
        if self._sem is not None:
            self._sem.acquire(priority)
        held = [True]

        def release() -> None:
            with self._lock:
                if not held[0]:
                    return
                held[0] = False
                self.in_flight -= 1
            if self._sem is not None:
                self._sem.release()

        try:
            self.rate.acquire()
        except BaseException:
            if self._sem is not None:
                self._sem.release()
            raise
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            with service_slot(release):
                yield
        finally:
            release()
