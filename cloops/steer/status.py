"""``doit status``: per story, which targets are stale and why, which are locked, hand-edited,
and what the story has cost.

Layer: **steer**. :func:`story_status` reads doit's own status of each task and cloops'
:class:`cloops.graph.engine.Inputs` checker, then propagates staleness downstream. Nothing here
calls a service or builds anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.project import Project
from ..graph.engine import Inputs
from ..graph.locks import is_locked, read_locks
from ..graph.plan import plan_of
from ..graph.targets import read_manifest, version_reason
from ..run.selection import is_command_task
from .evals import eval_summary
from .spend import spend

GROUP_TASKS = ("build", "dry", "expand", "pending")


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
        if base.startswith(GROUP_TASKS) or not task.actions or is_command_task(name):
            continue
        if rest == key or (rest.startswith(key + "/") and "/" not in rest[len(key) + 1:]):
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
                   "restore bring back a good version)" if task.name.startswith("check")
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


def story_costs(proj: Project) -> dict[tuple[str, str], dict]:
    """The ledger's totals per story, by ``(template, id)`` (see :func:`cloops.steer.spend.spend`)."""
    return {(r["template"], r["story"]): r for r in spend(proj.root, "story")}


def story_status(proj: Project, template: str, story_id: str, tasks: dict,
                 dep_manager, costs: dict | None = None) -> dict:
    """Everything ``doit status`` says about one story, as JSON-ready data.

    ``tasks``: every loaded doit task by name; ``dep_manager``: doit's ``Dependency`` (its
    ``get_status`` runs each task's up-to-date checks; nothing is written but locks.json's
    record of a locked target's staleness).

    Returns ``{story, template, id, title, status, error, stale: [{task, target, reasons}],
    staleLocked: [{task, target, reasons, recorded}], locked: {story, targets}, handEdited:
    [{target, why}], cost: {calls, cacheHits, costUsd, savedUsd}, evals: {built, score, scores,
    needsReview, reviewReasons, checks, failed, judges}, upToDate, pagesKnown}`` (``evals``:
    :func:`cloops.steer.evals.eval_summary` of its ``evals.json``).
    ``stale`` is what the next ``doit build:<id>`` runs: tasks whose own inputs changed, then
    every task downstream of one (``because pages will be rebuilt``); a locked target is not
    rebuilt and stops that propagation. A row with ``"maybe": true`` reads only values of what
    will be rebuilt (``if what it reads of cast changes``): it runs if those values change.
    ``costs``: the ledger's rows per story by ``(template, id)`` when the caller has them
    (:func:`story_costs`), else they are read.
    """
    key = f"{template}/{story_id}"
    sdir = proj.story_dir(template, story_id)
    item = proj.item(template, story_id)
    locks = read_locks(sdir)
    tpl = proj.template(template)
    order = {s.name: i for i, s in enumerate(tpl.steps)}

    def place(task) -> tuple[int, int, str]:
        base, _, rest = task.name.partition(":")
        tail = rest[len(key) + 1:]
        return order.get(base, -1), int(tail) if tail.isdigit() else 0, tail

    mine = sorted(story_tasks(tasks, key), key=place)  # the template's step order

    def copies(task) -> bool:
        """The task's targets are copies (the bundle): no hand edits of their own."""
        try:
            return tpl.step(task.name.partition(":")[0]).copies
        except KeyError:
            return False
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
    # Downstream of what will be rebuilt: a task reading a file another will rewrite runs too;
    # one reading only values of it (a page's entry, a character's appearance) runs only if
    # those values change, which no one can tell before the upstream task ran: "may".
    maybe: set[str] = set()
    grew = True
    while grew:
        grew = False
        for task in mine:
            if task.name in stale or task.name in stale_locked:
                continue
            by_file = {producer[d] for d in task.file_dep if producer.get(d) in stale}
            by_value = {d for d in task.task_dep if d in stale} - by_file
            if not by_file and not by_value:
                continue
            sure = {u for u in by_file if u not in maybe}
            ups = sorted(by_file | by_value, key=lambda n: place(tasks[n]))
            names = ", ".join(_short_task(u) for u in ups)
            if sure:
                reasons = [f"because {names} will be rebuilt"]
            else:
                maybe.add(task.name)
                reasons = [f"if what it reads of {names} changes" if not by_file
                           else f"if {names} is rebuilt"]
            (stale_locked if held(task) else stale)[task.name] = reasons
            grew = grew or not held(task)

    fan = plan_of(tpl).foreach_source

    def shown(task) -> str:
        if not task.targets:  # check-<file>:<key>: a fan-out file cannot be read
            return fan or task.name
        rel = lock_rel(task) or ""
        return rel.split("/")[0] if copies(task) else rel

    def rows(d: dict[str, list[str]]) -> list[dict]:
        return [{"task": t.name, "target": shown(t), "reasons": d[t.name],
                 **({"maybe": True} if t.name in maybe else {})}
                for t in mine if t.name in d]

    locked_rows = rows(stale_locked)
    for row in locked_rows:
        entry = locks["targets"].get(row["target"]) or {}
        row["recorded"] = entry.get("stale")
    manifest = read_manifest(sdir)
    hand: list[dict] = []
    for t in mine:
        if copies(t):
            continue
        for target in t.targets:
            rel = _rel(proj, sdir, target)
            why = version_reason(sdir, rel, manifest)
            if why in ("hand-edit", "restored"):
                hand.append({"target": rel, "why": why})
    costs = costs if costs is not None else story_costs(proj)
    cost = costs.get((template, story_id)) or {}
    return {
        "story": key, "template": template, "id": story_id,
        "title": item.input.get("title", story_id), "status": item.status, "error": item.error,
        "stale": rows(stale), "staleLocked": locked_rows,
        "locked": {"story": bool(locks.get("story")), "targets": locks.get("targets", {})},
        "handEdited": hand,
        "cost": {"calls": cost.get("calls") or 0, "cacheHits": cost.get("cache_hits") or 0,
                 "costUsd": round(cost.get("cost_usd") or 0.0, 6),
                 "savedUsd": round(cost.get("saved_usd") or 0.0, 6)},
        "evals": eval_summary(sdir),
        "upToDate": len(mine) - len(stale) - len(stale_locked),
        "pagesKnown": not fan or (sdir / fan).is_file(),
    }
