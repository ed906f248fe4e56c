"""The steering commands (doit plugins, registered in ``pyproject.toml``): hand edits are never lost.

Layer: **steer**.

- ``doit history TARGET [--json]``: a target's versions, numbered (oldest kept = 1, the current
  file last): when, why (hand-edit / generated / restored), size. A story: its targets that have
  kept versions.
- ``doit restore TARGET N``: put version N back; the current file is kept first. The restored
  file counts as a hand edit: the next build keeps it and rebuilds what is downstream.
- ``doit lock TARGET|STORY ...`` / ``doit unlock TARGET|STORY ...``: keep a target (or a whole
  story) as it is while upstream changes; unlocking one that went stale makes the next build
  rebuild it (its doit state is forgotten).
- ``doit take TARGET``: another take of a generated target (one paid call, the cache skipped);
  the current file is kept as a take first. ``doit takes TARGET`` lists them; ``doit pick
  TARGET K`` puts take K back with no service call.
- ``doit status [STORY ...] [--json]``: per story, what is stale and why, what is locked,
  hand-edited, what it has cost, its eval score and whether it needs review (its failed checks
  and low scores). It calls no service and builds nothing.

TARGET is a path (``build/comic-books-standard/noah-s-ark/images/2.jpg``) or a story key and
path (``noah-s-ark/images/2.jpg``); STORY is ``comic-books-standard/noah-s-ark`` or ``noah-s-ark``
when one template has that id (see :func:`cloops.resolve`). User errors print
``ERROR: ...`` with the fix and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import wraps

from doit.cmd_base import Command, DoitCmdBase
from rich.console import Console
from rich.table import Table

from ..core.console import make_console
from ..core.errors import CloopsError, InputError
from ..data.project import load_project
from ..graph.locks import is_locked
from ..graph.targets import META_DIR, list_versions
from ..run.context import current_project
from .actions import begin_take, build_command, lock_all, unlock_one
from .address import need_target, resolve, stories
from .history import restore, versions
from .evals import review_text, score_text
from .status import story_status
from .takes import current_take, pick_take, read_takes, store_take, take_path

EXIT_USER_ERROR = 2
_JSON = {"name": "as_json", "long": "json", "type": bool, "default": False,
         "help": "print JSON for scripts"}


def _console() -> Console:
    return make_console(soft_wrap=True)


def _user_errors(fn):
    """Print a :class:`CloopsError` as ``ERROR: ...`` (no traceback) and exit 2."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CloopsError as exc:
            if os.environ.get("CLOOPS_DEBUG"):
                raise
            print(f"ERROR: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
    return wrapper


def _project():
    """The project: the one ``dodo.py`` loaded (task-loading commands), else the current folder's."""
    return current_project() or load_project(os.getcwd())


def _json_flag(args, given: bool) -> tuple[list[str], bool]:
    """Take ``--json`` out of the positional arguments too (doit stops parsing options at the
    first argument: ``doit status noah-s-ark --json`` works as ``doit status --json noah-s-ark``)."""
    rest = [a for a in args if a != "--json"]
    return rest, given or len(rest) != len(args)


def _args(args, count: str, usage: str) -> list[str]:
    """``args`` when their number fits ``count`` (``"1"``, ``"2"``, ``"1+"``, ``"0+"``)."""
    n = len(args)
    ok = {"1": n == 1, "2": n == 2, "1+": n >= 1, "0+": True}[count]
    if not ok:
        raise InputError(f"expected {usage}, got {' '.join(args) or 'nothing'}.",
                         fix="run doit help for the command's usage.")
    return list(args)


# ---------------------------------------------------------------- history / restore


class History(Command):
    """``doit history TARGET|STORY [--json]``."""

    name = "history"
    doc_purpose = "list a target's versions: current and kept (when, why, size), numbered"
    doc_usage = "TARGET|STORY [--json]"
    doc_description = ("Versions are kept under build/<template>/<id>/.cloops/history/ whenever a "
                       "target is overwritten (hand edits included). `doit restore TARGET N` "
                       "puts version N back.")
    cmd_options = (_JSON,)

    @_user_errors
    def execute(self, params, args):
        args, as_json = _json_flag(args, params["as_json"])
        (arg,) = _args(args, "1", "one TARGET or STORY")
        addr = resolve(_project(), arg)
        if addr.rel is None:
            return self._story(addr, as_json)
        need_target(addr, "history")
        entries = versions(addr)
        if as_json:
            print(json.dumps({"target": addr.shown, "task": addr.task,
                              "versions": [e.as_json() for e in entries]}, indent=2))
            return 0
        console = _console()
        if not entries:
            console.print(f"{addr.shown} does not exist and has no kept versions.")
            return 0
        table = Table(title=f"Versions of {addr.shown}", title_justify="left")
        for col in ("#", "when (UTC)", "why", "size", "sha256"):
            table.add_column(col, justify="right" if col in ("#", "size") else "left")
        for e in entries:
            why = e.why + (f" ({e.detail})" if e.detail else "")
            table.add_row(str(e.number) + (" current" if e.current else ""), e.at[:19] + "Z", why,
                          f"{e.size:,}", e.sha256[:12])
        console.print(table)
        if len(entries) > 1:
            console.print(f"`doit restore {addr.shown} N` puts version N back "
                          "(the current file is kept first).")
        return 0

    @staticmethod
    def _story(addr, as_json: bool) -> int:
        root = addr.story_dir / META_DIR / "history"
        rels = sorted({p.parent.relative_to(root).as_posix()
                       for p in root.rglob("*") if p.is_file()}) if root.is_dir() else []
        data = {r: [v.at for v in list_versions(addr.story_dir, r)] for r in rels}
        if as_json:
            print(json.dumps({"story": addr.key, "targets": {r: len(v) for r, v in data.items()}},
                             indent=2))
            return 0
        console = _console()
        if not data:
            console.print(f"{addr.key}: no target has kept versions yet.")
            return 0
        table = Table(title=f"Targets of {addr.key} with kept versions", title_justify="left")
        for col in ("target", "kept", "latest (UTC)"):
            table.add_column(col)
        for r, ats in data.items():
            table.add_row(r, str(len(ats)), ats[-1] if ats else "")
        console.print(table)
        return 0


def _target_and_number(args, verb: str, what: str, listing: str):
    """``TARGET N`` of ``doit restore``/``doit pick``: the resolved target and the number.

    Raises:
        InputError: wrong arguments, not a target, or N not a number (naming where to find N).
    """
    arg, num = _args(args, "2", f"TARGET and a {what} number")
    addr = need_target(resolve(_project(), arg), verb)
    try:
        return addr, int(num)
    except ValueError:
        raise InputError(f"{what} {num!r} is not a number.",
                         fix=f"use a number from doit {listing} {addr.shown}.") from None


class Restore(Command):
    """``doit restore TARGET N``."""

    name = "restore"
    doc_purpose = "put version N of a target back (the current file is kept in history first)"
    doc_usage = "TARGET N"
    doc_description = ("N is a number from `doit history TARGET`. The restored file counts as a "
                       "hand edit: the next build keeps it and rebuilds what is downstream.")

    @_user_errors
    def execute(self, params, args):
        addr, number = _target_and_number(args, "restore", "version", "history")
        chosen, kept = restore(addr, number)
        console = _console()
        if chosen.current:
            console.print(f"{addr.shown}: version {number} is already the current file.")
            return 0
        if kept is None:
            console.print(f"{addr.shown} already holds the bytes of version {number}.")
            return 0
        now = len(list_versions(addr.story_dir, addr.rel))
        console.print(f"restored {addr.shown} to version {number} ({chosen.why}, {chosen.at}); "
                      f"the file it replaced is kept as version {now}.")
        console.print(f"It counts as a hand edit: `doit build:{addr.key}` keeps it and rebuilds "
                      "what is downstream of it.")
        return 0


# ---------------------------------------------------------------- locks


class Lock(Command):
    """``doit lock TARGET|STORY ...``."""

    name = "lock"
    doc_purpose = "keep targets (or whole stories) as they are while their inputs change"
    doc_usage = "TARGET|STORY ..."
    doc_description = ("A locked target is not rebuilt; `doit status` reports it stale with the "
                       "reason. What is downstream still rebuilds from it. `doit unlock` ends it.")

    @_user_errors
    def execute(self, params, args):
        proj = _project()
        addrs = [resolve(proj, a) for a in _args(args, "1+", "TARGET or STORY")]
        for addr in addrs:
            if addr.rel is not None:
                need_target(addr, "lock")
        console = _console()
        for what in lock_all(addrs):
            console.print(f"🔒 locked {what}")
        return 0


class Unlock(DoitCmdBase):
    """``doit unlock TARGET|STORY ...``."""

    name = "unlock"
    doc_purpose = "end locks; a target that went stale while locked is rebuilt by the next build"
    doc_usage = "TARGET|STORY ..."
    doc_description = ("Unlocking a story ends every lock of it. A target that went stale while "
                       "locked has its doit state forgotten, so the next build makes it again "
                       "(from the response cache when its inputs are back to a built state).")
    cmd_options = ()

    @_user_errors
    def _execute(self, pos_args):
        proj = _project()
        addrs = [resolve(proj, a) for a in _args(pos_args, "1+", "TARGET or STORY")]
        for addr in addrs:
            if addr.rel is not None:
                need_target(addr, "unlock")
        tasks = {t.name for t in self.task_list}
        console = _console()
        try:
            for addr in addrs:
                out = unlock_one(proj, addr, self.dep_manager, tasks)
                if out.why_not == "not locked":
                    console.print(f"{addr.shown} was not locked.")
                    continue
                if out.why_not == "story locked":
                    console.print(f"{addr.shown} is locked with its whole story: "
                                  f"`doit unlock {addr.key}` ends that lock.")
                    continue
                console.print(f"🔓 unlocked {addr.key if addr.rel is None else addr.shown}")
                for srel, reason in out.stale:
                    console.print(f"    {srel} went stale while locked ({reason}): "
                                  f"`doit build:{addr.key}` rebuilds it")
        finally:
            self.dep_manager.close()
        return 0


# ---------------------------------------------------------------- takes


class Take(DoitCmdBase):
    """``doit take TARGET``."""

    name = "take"
    doc_purpose = "generate another take of a target (one paid call), keeping the current one"
    doc_usage = "TARGET"
    doc_description = ("The current file is stored as a take (.cloops/takes/<target>/), the "
                       "target's task is forgotten and `doit build:<story>` runs with "
                       "CLOOPS_REROLL=<task>, so that one call skips the response cache. What is "
                       "downstream rebuilds from the new take. `doit pick TARGET K` goes back.")
    cmd_options = ()

    @_user_errors
    def _execute(self, pos_args):
        proj = _project()
        (arg,) = _args(pos_args, "1", "one TARGET")
        addr = need_target(resolve(proj, arg), "take")
        try:
            before = begin_take(proj, addr, self.dep_manager, {t.name for t in self.task_list})
        finally:
            self.dep_manager.close()
        console = _console()
        console.print(f"take {before} of {addr.shown} is stored; asking for a new one "
                      f"({addr.task}, response cache skipped)")
        sys.stdout.flush()
        sys.stderr.flush()
        argv, env = build_command(proj, addr.key, reroll=addr.task)
        rc = subprocess.call(argv, cwd=proj.root, env=env)
        if not (addr.story_dir / addr.rel).is_file():
            print(f"ERROR: the build did not make {addr.shown} (exit {rc}); take {before} is "
                  f"kept: doit pick {addr.shown} {before}", file=sys.stderr)
            return rc or 1
        k, new = store_take(addr)
        if new:
            console.print(f"take {k} of {addr.shown} is current (take {before} is kept: "
                          f"`doit pick {addr.shown} {before}` puts it back)")
        else:
            console.print(f"the new take is the same as take {k}: the backend answered the same "
                          "(offline backends and deterministic models do)")
        return rc


class Takes(Command):
    """``doit takes TARGET [--json]``."""

    name = "takes"
    doc_purpose = "list the takes of a target (the current one marked)"
    doc_usage = "TARGET [--json]"
    cmd_options = (_JSON,)

    @_user_errors
    def execute(self, params, args):
        args, as_json = _json_flag(args, params["as_json"])
        (arg,) = _args(args, "1", "one TARGET")
        addr = need_target(resolve(_project(), arg), "takes")
        data = read_takes(addr)
        cur = current_take(addr, data)
        if as_json:
            print(json.dumps({"target": addr.shown, "current": cur, "takes": data["takes"]},
                             indent=2))
            return 0
        console = _console()
        if not data["takes"]:
            console.print(f"{addr.shown} has no takes: `doit take {addr.shown}` makes one.")
            return 0
        table = Table(title=f"Takes of {addr.shown}", title_justify="left")
        for col in ("take", "when (UTC)", "source", "size", "sha256"):
            table.add_column(col, justify="right" if col in ("take", "size") else "left")
        for t in data["takes"]:
            path = take_path(addr, t)
            size = path.stat().st_size if path.is_file() else 0
            table.add_row(f"{t['take']}" + (" current" if t["take"] == cur else ""), t["at"],
                          t["source"] + (" (offline)" if t.get("offline") else ""),
                          f"{size:,}", t["sha256"][:12])
        console.print(table)
        if cur is None and (addr.story_dir / addr.rel).is_file():
            console.print("The file in place is none of these takes (rebuilt or edited since); "
                          "`doit pick` stores it as a take before replacing it.")
        return 0


class Pick(Command):
    """``doit pick TARGET K``."""

    name = "pick"
    doc_purpose = "make take K of a target current (no service call)"
    doc_usage = "TARGET K"
    doc_description = ("The file in place is kept (as a take and in history). The next build "
                       "rebuilds only what is downstream of the target.")

    @_user_errors
    def execute(self, params, args):
        addr, k = _target_and_number(args, "pick", "take", "takes")
        out = pick_take(addr, k)
        console = _console()
        if not out.changed:
            console.print(f"take {k} is already the current {addr.shown}.")
            return 0
        console.print(f"take {k} of {addr.shown} is in place (no service called); "
                      f"`doit build:{addr.key}` rebuilds what is downstream of it.")
        if is_locked(addr.story_dir, addr.lock_rel):
            console.print(f"    {addr.shown} is locked: it stays as picked.")
        return 0


# ---------------------------------------------------------------- status


class Status(DoitCmdBase):
    """``doit status [STORY ...] [--json]``."""

    name = "status"
    doc_purpose = ("per story: what is stale and why, locked, hand-edited, what it cost, its eval "
                   "score and failed checks")
    doc_usage = "[STORY ...] [--json]"
    doc_description = ("Checks every task as `doit info` does (no service is called, nothing is "
                       "built); a task downstream of one that will be rebuilt is stale too. "
                       "`doit build:<id>` then runs exactly the stale tasks.")
    cmd_options = (_JSON,)

    @_user_errors
    def _execute(self, pos_args, as_json):
        proj = _project()
        pos_args, as_json = _json_flag(pos_args or [], as_json)
        keys: list[tuple[str, str]] = []
        for a in pos_args:
            addr = resolve(proj, a)
            if (addr.template, addr.story_id) not in keys:
                keys.append((addr.template, addr.story_id))
        keys = keys or stories(proj)
        tasks = {t.name: t for t in self.task_list}
        data = [story_status(proj, t, s, tasks, self.dep_manager) for t, s in keys]
        if as_json:
            print(json.dumps({"stories": data}, indent=2))
            return 0
        console = _console()
        for st in data:
            self._print(console, st)
        return 0

    @staticmethod
    def _print(console: Console, st: dict) -> None:
        c = st["cost"]
        colour = {"completed": "green", "failed": "red"}.get(st["status"], "yellow")
        ev = st["evals"]
        review = review_text(ev)
        review = f"  [red]{review}[/red]" if ev["needsReview"] else (f"  {review}" if review else "")
        console.print(f"[bold]{st['story']}[/bold]  {st['title']}  [{colour}]{st['status']}"
                      f"[/{colour}]  score {score_text(ev)}{review}  ${c['costUsd']:.4f} spent "
                      f"({c['calls']} calls, {c['cacheHits']} cache hits, "
                      f"${c['savedUsd']:.4f} saved)")
        if st["error"]:
            console.print(f"  [red]last error:[/red] {st['error']}")
        table = Table(show_header=True, box=None, pad_edge=False)
        for col in ("target", "state", "why"):
            table.add_column(col)
        for row in st["stale"]:
            table.add_row(row["target"] or row["task"], "[yellow]stale[/yellow]",
                          "; ".join(row["reasons"]))
        for row in st["staleLocked"]:
            rec = row.get("recorded")
            rec = f" (recorded: {rec})" if rec and rec not in row["reasons"] else ""
            table.add_row(row["target"], "[magenta]🔒 locked, stale[/magenta]",
                          "; ".join(row["reasons"]) + rec + " — kept; `doit unlock` rebuilds it")
        stale_locked = {r["target"] for r in st["staleLocked"]}
        if st["locked"]["story"]:
            table.add_row("(whole story)", "🔒 locked", "every target is kept as it is")
        for rel, entry in st["locked"]["targets"].items():
            if rel not in stale_locked:
                table.add_row(rel, "🔒 locked", f"since {entry.get('at', '?')}; up to date")
        for row in st["handEdited"]:
            why = ("restored from history" if row["why"] == "restored" else
                   "differs from what cloops wrote")
            table.add_row(row["target"], "[cyan]hand-edited[/cyan]",
                          why + "; kept as it is, what is downstream builds from it")
        for line in ev["reviewReasons"]:
            table.add_row("evals.json", "[red]needs review[/red]", line)
        if table.row_count:
            console.print(table)
        n = len(st["stale"])
        if n:
            tail = (" (completed: a bare `doit` does not rebuild it)"
                    if st["status"] == "completed" else "")
            console.print(f"  {n} stale: `doit build:{st['story']}` rebuilds them{tail}")
        else:
            console.print(f"  up to date ({st['upToDate']} targets)")
        if not st["pagesKnown"]:
            console.print("  per-page targets appear once pages.json is built")
        console.print()
