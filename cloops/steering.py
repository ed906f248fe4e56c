"""Steering a build by hand: addressing targets, their history, takes and a status that explains.

What the ``doit history / restore / lock / unlock / take / takes / pick / status`` commands
(:mod:`cloops.cmd_steering`) do, as functions:

- :func:`resolve` turns what a person types — a path (``build/comic-books-standard/noah-s-ark/
  images/2.jpg``), a story key (``comic-books-standard/noah-s-ark``) or a bare story id when only
  one template has it — into an :class:`Address`: template, story, target ``rel``, step, page
  ``n`` and doit task name, using the template's declared target patterns (``images/{n}.jpg``).
- :func:`versions` lists a target's versions (the kept history plus the current file);
  :func:`restore` puts one back as an edit (the current file is kept first).
- Takes: ``.cloops/takes/<rel>/<k><ext>`` plus ``index.json`` (sha, when, source, offline, which
  take is current). :func:`store_take` keeps the current file as a take, :func:`pick_take` makes
  take k current through :func:`cloops.targets.write_target` (no service is called).
- :func:`story_status` says, per story, which targets are stale and why (from doit's own status
  of each task and cloops' :class:`cloops.engine.Inputs` checker, then propagated downstream),
  which are locked, hand-edited, and what the story has cost.

Nothing here calls a service. Every write goes through :mod:`cloops.targets` (atomic, history
first), so nothing a person wrote is ever dropped.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .engine import Inputs, expand, task_name
from .errors import InputError
from .fileio import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from .locks import is_locked, read_locks
from .project import BUILD_DIR, Project, StoryRef
from .steps import BundleStep, Step
from .targets import (META_DIR, list_versions, read_manifest, read_restored, restore_version,
                      story_lock, version_reason, write_target)

TAKES_DIR = "takes"
GROUP_TASKS = ("build", "dry", "expand", "pending")


# ---------------------------------------------------------------- addressing


@dataclass(frozen=True)
class Address:
    """A story, or one target of a story, as addressed on the command line.

    Attributes:
        template: template name.
        story_id: backlog item id.
        story_dir: ``build/<template>/<id>`` (absolute).
        rel: the target's path in the story folder (``images/2.jpg``), None for the whole story.
        step: the step that makes ``rel`` (None for the whole story).
        n: the page (foreach index) of ``rel``, or None.
    """

    template: str
    story_id: str
    story_dir: Path
    rel: str | None = None
    step: Step | None = None
    n: int | None = None

    @property
    def key(self) -> str:
        return f"{self.template}/{self.story_id}"

    @property
    def task(self) -> str | None:
        """The doit task that makes the target (``image:comic-books-standard/noah-s-ark/2``)."""
        if self.step is None:
            return None
        return task_name(self.step, StoryRef(self.template, self.story_id, ""), self.n)

    @property
    def lock_rel(self) -> str | None:
        """The name the step's lock goes by: its main target (``also`` files share it)."""
        return None if self.step is None else expand(self.step.target, self.n)

    @property
    def is_bundle(self) -> bool:
        return isinstance(self.step, BundleStep)

    @property
    def generated(self) -> bool:
        """Made by a paid service (LLM, image, voice): a new take can be asked for."""
        return self.step is not None and self.step.service in ("llm", "image", "voice")

    @property
    def shown(self) -> str:
        """How the target is shown to people: its path from the project root."""
        base = f"{BUILD_DIR}/{self.template}/{self.story_id}"
        return f"{base}/{self.rel}" if self.rel else self.key


def _pattern(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(r"\{n\}", r"([1-9][0-9]*)") + r"\Z")


def step_patterns(step: Step) -> list[str]:
    """Every target pattern of a step, ``{n}`` for the page (bundle: its folder and files)."""
    if isinstance(step, BundleStep):
        return [step.target] + [f"{step.target}/{dest}" for dest in step.files]
    return [step.target, *step.also]


def match_target(proj: Project, template: str, rel: str) -> tuple[Step, int | None] | None:
    """The step of ``template`` whose target patterns match ``rel``, and the page number."""
    for step in proj.template(template).steps:
        for pat in step_patterns(step):
            m = _pattern(pat).match(rel)
            if m:
                return step, (int(m.group(1)) if m.groups() else None)
    return None


def stories(proj: Project) -> list[tuple[str, str]]:
    """Every ``(template, story id)`` of every backlog, in backlog order."""
    return [(b.template, it.id) for b in proj.backlogs for it in b.items]


def resolve(proj: Project, text: str) -> Address:
    """Turn a path or story key typed by a person into an :class:`Address`.

    Accepted: ``build/<template>/<id>[/<rel>]`` (absolute or from the project root),
    ``<template>/<id>[/<rel>]`` and ``<id>[/<rel>]`` (when one template has that id).

    Raises:
        InputError: the story or target does not exist, or the id is ambiguous (with a fix).
    """
    raw = text
    p = Path(text)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(proj.root)
        except ValueError:
            raise InputError(f"{raw} is outside the project ({proj.root}).",
                             fix="give a path under build/ or a story key.") from None
    parts = [x for x in p.as_posix().split("/") if x not in ("", ".")]
    if parts and parts[0] == BUILD_DIR:
        parts = parts[1:]
    known = stories(proj)
    templates = {t for t, _ in known}
    if not parts:
        raise InputError(f"{raw!r} names no story.", fix="give a story key such as "
                         f"{known[0][0]}/{known[0][1]}." if known else "add a backlog first.")
    if parts[0] in templates and len(parts) >= 2:
        template, sid, rest = parts[0], parts[1], parts[2:]
        if (template, sid) not in known:
            raise InputError(f"{raw}: template {template} has no story {sid!r}.",
                             file=str(proj.backlog_for(template).path),
                             fix="use an id of its backlog (doit list shows them).")
    else:
        sid, rest = parts[0], parts[1:]
        having = [t for t, s in known if s == sid]
        if not having:
            raise InputError(f"{raw}: no backlog has a story {sid!r}.",
                             fix="use an id of a backlog (doit list shows them).")
        if len(having) > 1:
            raise InputError(f"{raw}: story {sid!r} is in several templates "
                             f"({', '.join(having)}).",
                             fix="say which: " + " or ".join(f"{t}/{sid}" for t in having) + ".")
        template = having[0]
    sdir = proj.story_dir(template, sid)
    if not rest:
        return Address(template, sid, sdir)
    rel = "/".join(rest)
    found = match_target(proj, template, rel)
    if found is None:
        pats = ", ".join(pat for s in proj.template(template).steps for pat in step_patterns(s))
        raise InputError(f"{raw}: {rel!r} is not a target of template {template}.",
                         fix=f"name one of its targets ({pats}; {{n}} is a page number).")
    step, n = found
    return Address(template, sid, sdir, rel, step, n)


def need_target(addr: Address, what: str) -> Address:
    """``addr`` if it names a file target; else an :class:`InputError` saying what ``what`` needs."""
    if addr.rel is None:
        raise InputError(f"{addr.key} is a story: {what} works on one target.",
                         fix=f"name a file, e.g. {BUILD_DIR}/{addr.key}/pages.json.")
    if addr.is_bundle:
        raise InputError(f"{addr.shown} is a copy in the bundle: {what} works on its source.",
                         fix="name the file the bundle copies (images/<n>.jpg, thumbnail.jpg, "
                             "story-data.json).")
    return addr


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class Entry:
    """One version of a target as listed by ``doit history``.

    Attributes:
        number: 1 = the oldest kept version; the current file has the highest number.
        at: when it was written or kept (UTC, ISO 8601).
        why: ``hand-edit``, ``generated`` or ``restored``.
        size: bytes.
        sha256: hex digest of its bytes.
        current: it is the file in place now.
        path: where its bytes are.
        detail: for the current file, what made it (``fake-image m``, ``take 2``, ``restored 3``).
    """

    number: int
    at: str
    why: str
    size: int
    sha256: str
    current: bool
    path: Path
    detail: str = ""

    def as_json(self) -> dict:
        return {"number": self.number, "at": self.at, "why": self.why, "size": self.size,
                "sha256": self.sha256, "current": self.current, "path": str(self.path),
                "detail": self.detail}


def versions(addr: Address) -> list[Entry]:
    """The kept versions of a target (oldest first, numbered from 1), then the current file."""
    sdir, rel = addr.story_dir, addr.rel
    out = [Entry(i, v.at, v.reason, v.size, sha256_file(v.path) or "", False, v.path)
           for i, v in enumerate(list_versions(sdir, rel), 1)]
    path = sdir / rel
    sha = sha256_file(path)
    if sha is not None:
        why = version_reason(sdir, rel, current=sha) or "hand-edit"
        detail = ""
        if why == "generated":
            detail = read_manifest(sdir).get(rel, {}).get("madeBy", "")
        elif why == "restored":
            detail = f"from {read_restored(sdir).get(rel, {}).get('from', '?')}"
        at = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(
            timespec="microseconds").replace("+00:00", "Z")
        out.append(Entry(len(out) + 1, at, why, path.stat().st_size, sha, True, path, detail))
    return out


def restore(addr: Address, number: int) -> tuple[Entry, Path | None]:
    """Put version ``number`` of a target back in place (the current file is kept first).

    The restored bytes are an edit: not recorded as generated in the manifest, so the next
    build keeps them and rebuilds what is downstream. Returns the version restored and the
    history copy of the file it replaced (None when nothing was replaced).

    Raises:
        InputError: no such version.
    """
    entries = versions(addr)
    chosen = next((e for e in entries if e.number == number), None)
    if chosen is None:
        raise InputError(f"{addr.shown} has no version {number} "
                         f"({len(entries)} versions).", fix=f"run doit history {addr.shown}.")
    data = chosen.path.read_bytes()
    kept = restore_version(addr.story_dir, addr.rel, data,
                           source=f"version {number} ({chosen.why}, {chosen.at})")
    return chosen, kept


# ---------------------------------------------------------------- takes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _takes_dir(addr: Address) -> Path:
    return addr.story_dir / META_DIR / TAKES_DIR / addr.rel


def read_takes(addr: Address) -> dict:
    """``{"target", "current": k | None, "takes": [{"take", "file", "sha256", "at", "source",
    "offline"}]}`` (empty when the target has no takes yet)."""
    try:
        data = json.loads((_takes_dir(addr) / "index.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault("target", addr.rel)
    data.setdefault("current", None)
    data.setdefault("takes", [])
    return data


def _write_takes(addr: Address, data: dict) -> None:
    atomic_write_json(_takes_dir(addr) / "index.json", data)


def current_take(addr: Address, data: dict | None = None) -> int | None:
    """The take whose bytes are the file in place now (None: the file is not a stored take)."""
    data = data if data is not None else read_takes(addr)
    sha = sha256_file(addr.story_dir / addr.rel)
    return next((t["take"] for t in data["takes"] if t["sha256"] == sha), None)


def store_take(addr: Address, *, source: str | None = None) -> tuple[int, bool]:
    """Keep the current file as a take unless it is one already; mark it current.

    ``source`` defaults to what made the file (the manifest's ``madeBy``), or ``hand-edit`` /
    ``restored``. Returns ``(take number, newly stored)``.

    Raises:
        InputError: the target does not exist yet.
    """
    path = addr.story_dir / addr.rel
    if not path.is_file():
        raise InputError(f"{addr.shown} does not exist yet.",
                         fix=f"build it first: doit build:{addr.key}.")
    with story_lock(addr.story_dir):
        data = read_takes(addr)
        blob = path.read_bytes()
        sha = sha256_bytes(blob)
        for t in data["takes"]:
            if t["sha256"] == sha:
                data["current"] = t["take"]
                _write_takes(addr, data)
                return t["take"], False
        manifest = read_manifest(addr.story_dir)
        why = version_reason(addr.story_dir, addr.rel, manifest, sha)
        rec = manifest.get(addr.rel, {}) if why == "generated" else {}
        k = max((t["take"] for t in data["takes"]), default=0) + 1
        name = f"{k}{Path(addr.rel).suffix}"
        atomic_write_bytes(_takes_dir(addr) / name, blob)
        data["takes"].append({
            "take": k, "file": name, "sha256": sha,
            "at": _now(),
            "source": source or rec.get("madeBy") or why, "offline": bool(rec.get("offline"))})
        data["current"] = k
        _write_takes(addr, data)
        return k, True


def pick_take(addr: Address, k: int) -> Any:
    """Make take ``k`` the target's content (no service call); return the write's outcome.

    The file in place is stored as a take first when it is not one (a hand edit stays
    reachable), and kept in history by :func:`cloops.targets.write_target`. The target is
    recorded as generated (``made_by="take k"``, offline as the take was), so its own task stays
    up to date and only what is downstream rebuilds.

    Raises:
        InputError: no take ``k``.
    """
    data = read_takes(addr)
    take = next((t for t in data["takes"] if t["take"] == k), None)
    if take is None:
        have = ", ".join(str(t["take"]) for t in data["takes"]) or "none"
        raise InputError(f"{addr.shown} has no take {k} (takes: {have}).",
                         fix=f"run doit takes {addr.shown}.")
    if (addr.story_dir / addr.rel).is_file():
        store_take(addr)
    blob = (_takes_dir(addr) / take["file"]).read_bytes()
    out = write_target(addr.story_dir, addr.rel, blob, made_by=f"take {k}",
                       offline=bool(take.get("offline")))
    with story_lock(addr.story_dir):
        data = read_takes(addr)
        data["current"] = k
        _write_takes(addr, data)
    return out


def take_path(addr: Address, take: dict) -> Path:
    return _takes_dir(addr) / take["file"]


# ---------------------------------------------------------------- status


def _short_task(name: str) -> str:
    """``image:comic-books-standard/noah-s-ark/2`` → ``image 2``."""
    step, _, rest = name.partition(":")
    parts = rest.split("/")
    return f"{step} {parts[2]}" if len(parts) >= 3 else step


def story_tasks(tasks: dict, key: str) -> list:
    """The tasks of one story that do something (no groups), in doit's order."""
    out = []
    for name, task in tasks.items():
        base, _, rest = name.partition(":")
        if base in GROUP_TASKS or not task.actions:
            continue
        if rest == key or (rest.startswith(key + "/") and rest[len(key) + 1:].isdigit()):
            out.append(task)
    return out


def _rel(proj: Project, sdir: Path, path: str) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = proj.root / p
    try:
        return p.relative_to(sdir).as_posix()
    except ValueError:
        return os.path.relpath(p, proj.root)


def _direct_reasons(proj: Project, sdir: Path, task, status, inputs: Inputs | None) -> list[str]:
    """Why doit would run ``task`` now, from its own inputs (nothing upstream)."""
    out: list[str] = []
    changed = list(inputs.changed or []) if inputs is not None else []
    targets = [_rel(proj, sdir, t) for t in task.targets]
    if changed == ["never built"]:
        if targets and all((sdir / t).exists() for t in targets):
            return ["its build state was forgotten (doit unlock, take or forget): it is made "
                    "again"]
        return ["never built"]
    out += changed
    if status.status == "up-to-date" or not status.get_log:
        return out
    r = status.reasons
    if r.get("has_no_dependencies"):
        out.append(f"{task.doc}: the story fails until it is corrected (doit history / "
                   "restore bring back a good version)" if task.name.startswith("check:")
                   else task.doc or "it always runs")
    out += [f"missing {_rel(proj, sdir, t)}" for t in r.get("missing_target", [])]
    out += [f"missing input {_rel(proj, sdir, d)}" for d in r.get("missing_file_dep", [])]
    out += [f"changed {_rel(proj, sdir, d)}" for d in r.get("changed_file_dep", [])]
    out += [f"new input {_rel(proj, sdir, d)}" for d in r.get("added_file_dep", [])]
    out += [f"input {_rel(proj, sdir, d)} no longer used" for d in r.get("removed_file_dep", [])]
    if r.get("checker_changed"):
        out.append("doit's file checker changed")
    return out


def _inputs_of(task) -> Inputs | None:
    for utd, _a, _k in getattr(task, "uptodate", []):
        if isinstance(utd, Inputs):
            return utd
    return None


def story_status(proj: Project, template: str, story_id: str, tasks: dict,
                 dep_manager) -> dict:
    """Everything ``doit status`` says about one story, as JSON-ready data.

    ``tasks``: every loaded doit task by name; ``dep_manager``: doit's ``Dependency`` (its
    ``get_status`` runs each task's up-to-date checks; nothing is written but locks.json's
    record of a locked target's staleness).

    Returns ``{story, template, id, title, status, error, stale: [{task, target, reasons}],
    staleLocked: [{task, target, reasons, recorded}], locked: {story, targets}, handEdited:
    [{target, why}], cost: {calls, cacheHits, costUsd, savedUsd}, upToDate, pagesKnown}``.
    ``stale`` is what the next ``doit build:<id>`` runs: tasks whose own inputs changed, then
    every task downstream of one (``because pages will be rebuilt``); a locked target is not
    rebuilt and stops that propagation.
    """
    key = f"{template}/{story_id}"
    sdir = proj.story_dir(template, story_id)
    item = proj.item(template, story_id)
    locks = read_locks(sdir)
    order = {s.name: i for i, s in enumerate(proj.template(template).steps)}

    def place(task) -> tuple[int, int]:
        base, _, rest = task.name.partition(":")
        tail = rest[len(key) + 1:]
        return order.get(base, -1), int(tail) if tail.isdigit() else 0

    mine = sorted(story_tasks(tasks, key), key=place)  # the template's step order
    producer: dict[str, str] = {}
    for t in mine:
        for target in t.targets:
            producer[target] = t.name

    def lock_rel(task) -> str | None:
        return _rel(proj, sdir, task.targets[0]) if task.targets else None

    def held(task) -> bool:
        """Locked and present: the action keeps the file whatever changed."""
        rel = lock_rel(task)
        return rel is not None and is_locked(sdir, rel, locks) and (sdir / rel).exists()

    stale: dict[str, list[str]] = {}
    stale_locked: dict[str, list[str]] = {}
    for task in mine:
        status = dep_manager.get_status(task, tasks, get_log=True)
        inputs = _inputs_of(task)
        if status.status == "up-to-date" and not (inputs is not None and inputs.locked):
            continue
        reasons = _direct_reasons(proj, sdir, task, status, inputs)
        if held(task):
            stale_locked[task.name] = reasons or ["an input changed"]
        elif status.status != "up-to-date":
            stale[task.name] = reasons or ["stale"]
    grew = True
    while grew:  # downstream of what will be rebuilt
        grew = False
        for task in mine:
            if task.name in stale or task.name in stale_locked:
                continue
            ups = [producer[d] for d in task.file_dep if producer.get(d) in stale]
            ups += [d for d in task.task_dep if d in stale]
            if not ups:
                continue
            ups = sorted(set(ups), key=lambda n: place(tasks[n]))
            reasons = [f"because {', '.join(_short_task(u) for u in ups)} will be rebuilt"]
            (stale_locked if held(task) else stale)[task.name] = reasons
            grew = grew or not held(task)

    fan = proj.template(template).foreach_source

    def shown(task) -> str:
        if not task.targets:  # check:<key>: the fan-out file cannot be read
            return fan or task.name
        rel = lock_rel(task) or ""
        return rel.split("/")[0] if task.name.startswith("bundle:") else rel

    def rows(d: dict[str, list[str]]) -> list[dict]:
        return [{"task": t.name, "target": shown(t), "reasons": d[t.name]}
                for t in mine if t.name in d]

    locked_rows = rows(stale_locked)
    for row in locked_rows:
        entry = locks["targets"].get(row["target"]) or {}
        row["recorded"] = entry.get("stale")
    manifest = read_manifest(sdir)
    hand: list[dict] = []
    for t in mine:
        if t.name.startswith("bundle:"):
            continue
        for target in t.targets:
            rel = _rel(proj, sdir, target)
            why = version_reason(sdir, rel, manifest)
            if why in ("hand-edit", "restored"):
                hand.append({"target": rel, "why": why})
    from .commands import spend
    cost = next((r for r in spend(proj.root, "story")
                 if r["template"] == template and r["story"] == story_id), None) or {}
    return {
        "story": key, "template": template, "id": story_id,
        "title": item.input.get("title", story_id), "status": item.status, "error": item.error,
        "stale": rows(stale), "staleLocked": locked_rows,
        "locked": {"story": bool(locks.get("story")), "targets": locks.get("targets", {})},
        "handEdited": hand,
        "cost": {"calls": cost.get("calls") or 0, "cacheHits": cost.get("cache_hits") or 0,
                 "costUsd": round(cost.get("cost_usd") or 0.0, 6),
                 "savedUsd": round(cost.get("saved_usd") or 0.0, 6)},
        "upToDate": len(mine) - len(stale) - len(stale_locked),
        "pagesKnown": not fan or (sdir / fan).is_file(),
    }
