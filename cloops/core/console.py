"""The rich consoles cloops prints with (the reporter, ``doit report``, the steering commands).

Layer: **core**.
"""

from __future__ import annotations

import os
from typing import IO, Any

LOG_WIDTH = 160  # columns of output that goes to a file or a pipe


def make_console(file: IO[str] | None = None, **kw: Any):
    """A ``rich.console.Console`` on ``file`` (stdout when None), without highlighting.

    On a terminal it wraps at the terminal's width. Written to a file or a pipe (CI logs,
    ``doit > build.log``) rich assumes 80 columns and cuts table cells to fit (``servi…``,
    ``0.00…``); there it is :data:`LOG_WIDTH` wide unless ``COLUMNS`` says otherwise, so every
    value of a summary table stays readable. ``kw`` goes to ``Console`` (e.g. ``soft_wrap``).
    """
    from rich.console import Console  # here, not at import: dodo.py's import stays cheap

    console = Console(file=file, highlight=False, **kw)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = LOG_WIDTH
    return console
