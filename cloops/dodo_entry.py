"""What ``dodo.py`` imports: the task creators, or a clean error and exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import CloopsError

EXIT_USER_ERROR = 2


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, as Ctrl-C, so doit's runner stops and saves the
    state of every finished task (pydoit#463: state is saved only when a run ends)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, handler)


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
