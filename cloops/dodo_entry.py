"""What ``dodo.py`` imports: the task creators, or a clean error and exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import CloopsError

EXIT_USER_ERROR = 2


STOPPED_MESSAGE = ("stopped ({why}): the state of every task that finished is saved; run the "
                   "same command again to go on (calls already answered come from the response "
                   "cache).")


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, as Ctrl-C, so doit's runner stops and saves the
    state of every finished task (pydoit#463: state is saved only when a run ends); and end a
    run stopped either way with one line on stderr instead of the interpreter's traceback of
    the interrupt (``CLOOPS_DEBUG=1`` keeps the traceback)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    if getattr(sys.excepthook, "cloops", False):
        return  # installed by an earlier load in this process
    previous = sys.excepthook

    def excepthook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt) and not os.environ.get("CLOOPS_DEBUG"):
            print(STOPPED_MESSAGE.format(why=str(exc) or "Ctrl-C"), file=sys.stderr)
            return
        previous(exc_type, exc, tb)
    excepthook.cloops = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def namespace(dodo_file: str) -> dict[str, Any]:
    """Return ``dodo.py``'s namespace for the project holding ``dodo_file``.

    A :class:`CloopsError` (bad backlog, config, template, prompt) is printed as
    ``ERROR: ...`` without a traceback and exits with status 2; nothing is written.
    Set ``CLOOPS_DEBUG=1`` for the traceback.
    """
    from .engine import dodo_namespace, freeze_live_objects, relax_gc
    _stop_on_sigterm()
    try:
        ns = dodo_namespace(Path(dodo_file).resolve().parent)
        freeze_live_objects()
        relax_gc()
        return ns
    except CloopsError as exc:
        if os.environ.get("CLOOPS_DEBUG"):
            raise
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
