"""``doit review`` and ``doit studio`` (doit plugins, registered in ``pyproject.toml``).

Layer: **steer**.

- ``doit review [STORY ...]``: write the review site under ``build/review/`` (a page per
  story, an index per template); pages whose content did not change are not rewritten.
- ``doit studio [--host H] [--port P]``: serve the same pages live on 127.0.0.1 with the
  controls that act (pick, take, lock, edit, restore, rebuild).
"""

from __future__ import annotations

import os
import sys

from doit.cmd_base import Command, DoitCmdBase

from ...core.errors import InputError
from ...run.context import current
from ..address import resolve
from ..commands import _console, _project, _user_errors
from ..status import story_costs, story_status
from .model import sealed_status
from .site import build_site, review_dir


class Review(DoitCmdBase):
    """``doit review [STORY ...]``."""

    name = "review"
    doc_purpose = "write the review site: a page per story and an index per template (build/review/)"
    doc_usage = "[STORY ...]"
    doc_description = ("Opens from disk with no server: build/review/index.html. Only pages whose "
                       "content changed are rewritten (a re-run after one story changed rewrites "
                       "its page and the index). Calls no service; builds nothing. "
                       "`doit studio` serves the same pages live and lets you act on them.")
    cmd_options = ()

    @_user_errors
    def _execute(self, pos_args):
        proj = _project()
        keys: list[tuple[str, str]] | None = None
        if pos_args:
            keys = []
            for a in pos_args:
                addr = resolve(proj, a)
                if (addr.template, addr.story_id) not in keys:
                    keys.append((addr.template, addr.story_id))
        tasks = {t.name: t for t in self.task_list}
        state = current()
        sealed = state.sealed if state is not None else set()
        costs = story_costs(proj)

        def status_of(template: str, sid: str) -> dict:
            if f"{template}/{sid}" in sealed:
                return sealed_status(proj, template, sid)
            return story_status(proj, template, sid, tasks, self.dep_manager, costs)

        try:
            run = build_site(proj, status_of, keys)
        finally:
            self.dep_manager.close()
        where = os.path.relpath(review_dir(proj) / "index.html", os.getcwd())
        _console().print(f"review: {len(run.written)} files written, {run.kept} pages up to date, "
                         f"{run.previews} previews made ({run.seconds:.1f}s) → {where}")
        return 0


class Studio(Command):
    """``doit studio [--host H] [--port P]``."""

    name = "studio"
    doc_purpose = "serve the review pages live on 127.0.0.1: pick takes, lock, edit, restore, rebuild"
    doc_usage = "[--host 127.0.0.1] [--port 8321]"
    doc_description = ("Binds to 127.0.0.1 unless --host says otherwise; then every request needs "
                       "the session token printed at start. Every change is a POST carrying the "
                       "session token, made through the same functions as the CLI commands.")
    cmd_options = (
        {"name": "host", "long": "host", "type": str, "default": "127.0.0.1",
         "help": "address to bind (default 127.0.0.1; any other needs the session token)"},
        {"name": "port", "long": "port", "type": int, "default": 8321,
         "help": "port (0: any free port)"},
    )

    @_user_errors
    def execute(self, params, args):
        from .studio import serve
        if args:
            raise InputError(f"doit studio takes no arguments ({' '.join(args)}).",
                             fix="use --host and --port.")
        serve(_project(), host=params["host"], port=params["port"], out=sys.stdout)
        return 0
