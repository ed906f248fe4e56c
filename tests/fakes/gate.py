"""A gate shared by the fake servers: hold requests at a chosen moment, for crash tests.

::

    gate = Gate()
    with FakeOpenAI(gate=gate) as oa, FakeReplicate(gate=gate) as rp:
        gate.hold_after(3)          # let 3 more requests through (either server), hold the next
        proc = project.start(...)   # a doit process
        assert gate.wait_held(30)   # a request is now in flight and unanswered
        os.kill(proc.pid, signal.SIGKILL); proc.wait()
        gate.release(drop=True)     # the held request is closed without any reply

A request dropped at the gate is never answered (not billed) and never reaches the server's
handler: it is not in the server's ``requests`` and consumes no scripted reply. ``dropped``
counts them.
"""

from __future__ import annotations

import threading
import time


class Gate:
    """Counts requests across the servers sharing it; holds them once a limit is reached.

    Attributes:
        admitted: requests let through so far (all servers).
        held: requests waiting at the gate now.
        dropped: requests closed unanswered by :meth:`release` ``(drop=True)``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._limit: int | None = None
        self._epoch = 0
        self._drop_epochs: set[int] = set()
        self.admitted = 0
        self.held = 0
        self.dropped = 0

    def hold_after(self, n: int) -> None:
        """Let ``n`` more requests through, then hold every further one until :meth:`release`."""
        with self._cond:
            self._limit = self.admitted + n

    def admit(self) -> bool:
        """Called by a server for each request before handling it. Blocks while the gate holds.

        Returns:
            True: handle the request; False: close the connection without a reply.
        """
        with self._cond:
            if self._limit is None or self.admitted < self._limit:
                self.admitted += 1
                return True
            epoch = self._epoch
            self.held += 1
            self._cond.notify_all()
            while self._epoch == epoch:
                self._cond.wait()
            return epoch not in self._drop_epochs

    def wait_held(self, timeout_s: float, *, until=None) -> bool:
        """Wait until a request is held (True), ``timeout_s`` passes or ``until()`` is true."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.held == 0:
                if until is not None and until():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.02))
            return True

    def release(self, *, drop: bool = False) -> None:
        """Open the gate. Held requests are answered normally, or with ``drop`` closed unanswered."""
        with self._cond:
            if drop:
                self._drop_epochs.add(self._epoch)
                self.dropped += self.held
            else:
                self.admitted += self.held
            self.held = 0
            self._epoch += 1
            self._limit = None
            self._cond.notify_all()
