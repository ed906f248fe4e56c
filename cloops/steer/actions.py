"""What steering does, as functions: the CLI commands and the studio both call these.

Layer: **steer**. Each function checks what it is asked, changes files through
:mod:`cloops.graph` (history first, atomically) and returns what happened; printing is the
caller's. Functions that make doit forget a task take doit's ``Dependency`` (the CLI's
``self.dep_manager``, or :func:`open_state` in the studio).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.fileio import dump_json
from ..data.project import BUILD_DIR, STATE_DIR, Project
from ..graph.locks import is_locked, lock, read_locks, unlock
from ..graph.seals import unseal
from ..graph.targets import edit_target
from ..run.ledger import LEDGER_FILE, connect
from .address import Address, match_target
from .takes import store_take

DOIT_STATE = f"{STATE_DIR}/doit-state.db"  # DOIT_CONFIG["dep_file"] of cloops.run.dodo


def open_state(proj: Project):
    """doit's ``Dependency`` on the project's task state (close it when done).

    For callers outside a doit command (the studio); a doit command has ``self.dep_manager``.
    """
    from doit.dependency import Dependency, SqliteDB
    (proj.root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    return Dependency(SqliteDB, str(proj.root / DOIT_STATE))


# ---------------------------------------------------------------- locks


def lock_all(addrs: list[Address]) -> list[str]:
    """Lock each target (or whole story); return what was locked, as shown to people."""
    out = []
    for addr in addrs:
        lock(addr.story_dir, addr.lock_rel)
        out.append(f"{addr.key} (every target)" if addr.rel is None
                   else f"{BUILD_DIR}/{addr.key}/{addr.lock_rel}")
    return out


@dataclass(frozen=True)
class Unlocked:
    """What :func:`unlock_one` did.

    Attributes:
        addr: the target or story asked for.
        done: a lock was ended.
        why_not: when not done: ``"not locked"`` or ``"story locked"`` (the target is locked
            with its whole story).
        stale: ``(rel, reason)`` of the targets that went stale while locked: the next build
            rebuilds them.
    """

    addr: Address
    done: bool
    why_not: str = ""
    stale: tuple[tuple[str, str], ...] = ()


def unlock_one(proj: Project, addr: Address, dep_manager, task_names: set[str] | None) -> Unlocked:
    """End the lock of a target or story; forget the doit state of what went stale meanwhile.

    ``task_names``: the loaded tasks (a stale target's state is forgotten only when its task
    is among them); None forgets it whatever is loaded (the studio loads no tasks).
    """
    before = read_locks(addr.story_dir)
    rel = addr.lock_rel
    if rel is not None and not is_locked(addr.story_dir, rel, before):
        return Unlocked(addr, False, "not locked")
    if rel is not None and rel not in before["targets"]:
        return Unlocked(addr, False, "story locked")
    stale = []
    for srel in unlock(addr.story_dir, rel):
        found = match_target(proj, addr.template, srel)
        if found is None:
            continue
        target = Address(addr.template, addr.story_id, addr.story_dir, srel, *found)
        reason = (before["targets"].get(srel) or {}).get("stale") or "an input changed"
        if task_names is None or target.task in task_names:
            dep_manager.remove(target.task)
            unseal(proj, addr.template, addr.story_id)
        stale.append((srel, reason))
    return Unlocked(addr, True, stale=tuple(stale))


# ---------------------------------------------------------------- takes


def begin_take(proj: Project, addr: Address, dep_manager, task_names: set[str] | None) -> int:
    """Keep the current file as a take and make doit forget the target's task.

    Returns the number of the take kept. The caller then runs :func:`take_build`'s command.

    Raises:
        InputError: the target is assembled, locked, not built yet, or its task is unknown.
    """
    if not addr.generated:
        raise InputError(f"{addr.shown} is assembled, not generated: another take would be "
                         "the same file.", fix="take the generated files it is made from.")
    if is_locked(addr.story_dir, addr.lock_rel):
        raise InputError(f"{addr.shown} is locked: a take would not replace it.",
                         fix=f"doit unlock {addr.shown} first.")
    if task_names is not None and addr.task not in task_names:
        raise InputError(f"{addr.shown}: there is no task {addr.task} yet.",
                         fix=f"build the story first: doit build:{addr.key}.")
    before, _ = store_take(addr)
    dep_manager.remove(addr.task)
    unseal(proj, addr.template, addr.story_id)
    return before


def build_command(proj: Project, key: str, *, reroll: str | None = None) -> tuple[list[str], dict]:
    """``(argv, env)`` of ``doit build:<key>`` in the project (``reroll``: the one task whose
    call skips the response cache, for a new take)."""
    env = dict(os.environ)
    if reroll:
        env["CLOOPS_REROLL"] = reroll
    return [sys.executable, "-m", "doit", f"build:{key}"], env


@dataclass(frozen=True)
class Estimate:
    """What another take of a target is expected to cost.

    Attributes:
        usd: US dollars, or None when no price is known.
        service: ``llm``, ``image`` or ``voice``.
        model: the model the take would call.
        basis: how the figure was made, for people (``prices.bytedance/seedream-4.perImage``).
        offline: the backend is offline: a take costs nothing (and answers the same).
    """

    usd: float | None
    service: str
    model: str
    basis: str
    offline: bool = False

    def as_json(self) -> dict:
        return {"usd": self.usd, "service": self.service, "model": self.model,
                "basis": self.basis, "offline": self.offline}


class UsageBook:
    """The tokens and characters of paid calls, read from the ledger once: per target its
    last paid call, per step the average (what :func:`estimate_take` sizes a take by)."""

    def __init__(self, proj: Project):
        self.last: dict[tuple[str, str, str], dict] = {}
        self.average: dict[tuple[str, str], dict] = {}
        path = proj.root / LEDGER_FILE
        if not path.exists():
            return
        con = connect(path)
        con.row_factory = sqlite3.Row
        try:
            for r in con.execute(
                    "SELECT template, story, target, input_tokens, output_tokens, characters "
                    "FROM calls WHERE cache_hit=0 AND offline=0 ORDER BY id"):
                self.last[(r["template"], r["story"], r["target"])] = dict(r)
            for r in con.execute(
                    "SELECT template, step, AVG(input_tokens) AS input_tokens, "
                    "AVG(output_tokens) AS output_tokens, AVG(characters) AS characters "
                    "FROM calls WHERE cache_hit=0 AND offline=0 GROUP BY template, step"):
                self.average[(r["template"], r["step"])] = dict(r)
        except sqlite3.OperationalError:
            pass
        finally:
            con.close()

    def of(self, addr: Address) -> dict | None:
        """The usage to size a take of ``addr`` by: its last paid call, else its step's average."""
        return (self.last.get((addr.template, addr.story_id, addr.rel))
                or self.average.get((addr.template, addr.step.name)))


def estimate_take(proj: Project, addr: Address, usage: UsageBook | None = None) -> Estimate:
    """What another take of ``addr`` costs, from config prices (``prices.<model>``) and, for
    token-priced models, the tokens of the target's last paid call (else the step's average).

    ``usage``: the ledger's usage when the caller estimates many targets (read once).
    """
    service = addr.step.service or ""
    if service not in ("llm", "image", "voice"):
        return Estimate(0.0, service, "", "assembled: no service is called")
    eng = proj.template(addr.template).config.engine
    section = {"llm": eng.llm, "image": eng.generation, "voice": eng.voice}[service]
    model = str(getattr(section, "model", "") or getattr(section, "model_id", "") or "")
    if proj.resolved(addr.template, service).spec.offline:
        return Estimate(0.0, service, model, "offline backend: no paid call", offline=True)
    price = eng.prices.get(model)
    if price is None:
        return Estimate(None, service, model, f"no price for {model} in config (prices.{model})")
    if service == "image":
        return Estimate(price.per_image, service, model, f"prices.{model}.perImage")
    usage = (usage or UsageBook(proj)).of(addr)
    if usage is None:
        return Estimate(None, service, model, "no earlier paid call to size it by")
    if service == "llm":
        usd = ((usage["input_tokens"] or 0) * price.input_per_1m
               + (usage["output_tokens"] or 0) * price.output_per_1m) / 1e6
        return Estimate(usd, service, model, f"prices.{model} × the tokens of the last call")
    usd = (usage["characters"] or 0) / 1000 * price.per_1k_characters
    return Estimate(usd, service, model, f"prices.{model}.per1KCharacters × the script")


# ---------------------------------------------------------------- hand edits


def _editable(addr: Address) -> Path:
    """The file of an editable target.

    Raises:
        InputError: the target is a bundle copy, a binary (image, audio, video) or missing.
    """
    if addr.is_copy:
        raise InputError(f"{addr.shown} is a copy in the bundle.", fix="edit its source.")
    if Path(addr.rel).suffix.lower() not in (".json", ".md", ".txt", ".srt", ".ass", ".csv"):
        raise InputError(f"{addr.shown} is not a text file.", fix="edit a text target.")
    path = addr.story_dir / addr.rel
    if not path.is_file():
        raise InputError(f"{addr.shown} does not exist yet.",
                         fix=f"build it first: doit build:{addr.key}.")
    return path


def edit_text(addr: Address, text: str) -> bool:
    """Replace a text target with a person's ``text`` (a hand edit, the old file in history).

    A ``.json`` target must stay valid JSON. Returns whether the file changed.

    Raises:
        InputError: not an editable text target, or the JSON does not parse (nothing written).
    """
    _editable(addr)
    if addr.rel.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"the edit is not valid JSON: {exc.msg} at line {exc.lineno} "
                             f"column {exc.colno}; nothing was changed.", file=addr.shown,
                             fix="correct the JSON and save again.") from None
    if not text.endswith("\n"):
        text += "\n"
    return edit_target(addr.story_dir, addr.rel, text.encode("utf-8")) is not None


def edit_field(addr: Address, path: list[str | int], value: str) -> bool:
    """Set one string in a JSON target (``["pages", 1, "narration"]``) as a hand edit.

    Returns whether the file changed.

    Raises:
        InputError: the file is not valid JSON, the path does not name a string in it, or
            ``value`` is not a string (nothing written).
    """
    file = _editable(addr)
    if not isinstance(value, str):
        raise InputError(f"{'/'.join(map(str, path))}: the new value must be text.",
                         file=addr.shown, fix="send a string.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc}); nothing was changed.", file=addr.shown,
                         fix=f"correct the file by hand, or doit history {addr.shown}.") from None
    node: Any = data
    where = "/".join(map(str, path))
    try:
        for key in path[:-1]:
            node = node[key]
        if not isinstance(node[path[-1]], str):
            raise TypeError
    except (KeyError, IndexError, TypeError):
        raise InputError(f"has no text at {where}; nothing was changed.", file=addr.shown,
                         fix="reload the page: the file changed since it was shown.") from None
    node[path[-1]] = value
    return edit_target(addr.story_dir, addr.rel, dump_json(data).encode("utf-8")) is not None
