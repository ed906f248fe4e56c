"""What a task does when doit runs it: gather inputs, let the step's kind run, write the target.

Layer: **run**. :func:`run_task` is the action of every step task (:class:`cloops.graph.engine.Actions`).
It reads the step's inputs, builds a :class:`cloops.graph.steps.StepRun` — the inputs, the
context, the hub bound to the task (:class:`cloops.run.hub.TaskServices`) and the target writer —
and calls the kind's :meth:`~cloops.graph.steps.Step.execute`. No kind is named here.

Every action marks its story ``in_progress`` the first time in a run, marks it ``failed`` with
the error when it fails (the run goes on with other stories: doit ``continue``), and a step that
finishes the story (the bundle) marks it ``completed`` — unless any of its artifacts came from an
offline backend, in which case it stays ``pending`` (a draft is never published).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed

from ..core.errors import CloopsError, InputError, ServiceError
from ..core.fileio import dump_json, read_text, remove_temp_files
from ..core.turns import TASK_TURNS
from ..data.project import Project, load_project
from ..data.template import Template
from ..graph.engine import Sources, step_context, take_values, value_inputs
from ..graph.locks import is_locked, mark_stale
from ..graph.plan import plan_of, value_paths
from ..graph.steps import (EachInput, FileInput, Key, Step, StepContext, StepRun, expand,
                           placeholder_of)
from ..graph.targets import made_from, read_manifest, write_target
from .context import current
from .hub import CallMeta, TaskServices, hub_for
from .statuses import WRITER as statuses

# Notes for the reporter (same process in serial and thread mode): task name -> lines.
NOTES: dict[str, list[str]] = {}
_started: set[str] = set()
_slock = threading.Lock()


def note(task: str, text: str) -> None:
    """Add a line the reporter prints under ``task``'s line (hand edits kept, locks, drafts)."""
    with _slock:
        NOTES.setdefault(task, []).append(text)


def _dry() -> bool:
    st = current()
    return st is not None and st.dry


def _mark_started(proj: Project, template: str, story_id: str) -> None:
    key = f"{template}/{story_id}"
    with _slock:
        if key in _started:
            return
        # the story's first task in this run: nothing writes in its folder yet (its other
        # tasks wait here), so any temp file there was left by a killed run
        remove_temp_files(proj.story_dir(template, story_id))
        _started.add(key)
    if _dry():
        return  # a dry run does not build the story: its status stays as it was
    b = proj.backlog_for(template)
    statuses.set(proj.root, b.path, story_id, "in_progress")


def read_inputs(tpl: Template, step: Step, story_dir: Path, story_input: dict,
                n: Key | None, sources: Sources, ctx: StepContext) -> dict[str, Any]:
    """All inputs of a step: files read (``.json`` parsed, ``.md``/``.txt`` as text, others as
    their path), values from the story and the JSON artifacts it reads values of.

    Raises:
        InputError: a ``.json`` input is not valid JSON (names the file and the fix).
    """
    inputs = value_inputs(tpl, step, story_input, n, sources, ctx)
    plan = plan_of(tpl)
    for name, inp in step.inputs.items():
        if isinstance(inp, (FileInput, EachInput)) and plan.made_by_inactive(
                inp.path if isinstance(inp, FileInput) else inp.pattern):
            inputs[name] = None  # made by a step switched off in config
        elif isinstance(inp, FileInput):
            rel = expand(inp.path, n)
            path = os.path.join(story_dir, rel)  # a string: every task reads its inputs
            if rel.endswith(".json"):
                try:
                    inputs[name] = json.loads(read_text(path))
                except json.JSONDecodeError as exc:
                    raise InputError(f"is not valid JSON: {exc.msg} at line {exc.lineno}, "
                                     f"column {exc.colno}.", file=str(path),
                                     fix="correct your edit, or delete the file to regenerate it.") from None
            elif rel.endswith((".md", ".txt")):
                inputs[name] = read_text(path)
            else:
                inputs[name] = path
        elif isinstance(inp, EachInput):
            inputs[name] = [expand(inp.pattern, k)
                            for k in sources.keys_of(placeholder_of(inp.pattern))]
    return inputs


def mark_failed(root: Path | str, template: str, story_id: str, message: str) -> TaskFailed:
    """Mark a story ``failed`` with ``message``; return the doit failure to report.

    Also the engine's ``fail`` action (:class:`cloops.graph.engine.Actions`).
    """
    proj = load_project(root)
    try:
        statuses.set(proj.root, proj.backlog_for(template).path, story_id, "failed",
                               error=message)
    except CloopsError:
        pass
    return TaskFailed(message)


def run_task(root: str, template: str, story_id: str, step_name: str, n: Key | None,
             count: int | None):
    """doit action of every step task (module-level so process mode can pickle it).

    Returns None on success or a doit ``TaskFailed`` with a clear message.
    """
    proj = load_project(Path(root))
    tpl = proj.template(template)
    step = tpl.step(step_name)
    item = proj.item(template, story_id)
    tname = f"{step.name}:{template}/{story_id}" + (f"/{n}" if n is not None else "")
    sdir = proj.story_dir(template, story_id)
    rel = expand(step.target, n)
    if is_locked(sdir, rel) and (sdir / rel).exists():
        mark_stale(sdir, rel, "an input file changed")
        note(tname, f"{rel} is locked: kept as it is although an input changed "
                    f"(doit unlock to rebuild it)")
        return None
    try:
        with TASK_TURNS.held():  # at most a few task threads run Python at once
            _mark_started(proj, template, story_id)
            seen = _run(proj, tpl, step, item.input, story_id, n, tname)
            if step.finishes_story:
                finish_story(proj, tpl, story_id, tname)
            take_values(tname, seen)  # what doit saves with the success, taken here
    except CloopsError as exc:
        msg = f"{template}/{story_id} step '{step.name}'" + (f" #{n}" if n else "")
        if isinstance(exc, ServiceError):
            service = exc.service or step.service or "?"
            msg += f" ({service} service, backend {exc.backend or '?'}"
            msg += f", {exc.attempts} attempts)" if exc.attempts > 1 else ")"
        msg += f": {exc}"
        failure = mark_failed(root, template, story_id, msg)
        if os.environ.get("CLOOPS_DEBUG"):
            raise
        return failure
    except Exception as exc:
        b = proj.backlog_for(template)
        statuses.set(proj.root, b.path, story_id, "failed",
                               error=f"{tname}: {type(exc).__name__}: {exc}")
        raise
    return None


def _run(proj: Project, tpl: Template, step: Step, story_input: dict, story_id: str,
         n: Key | None, tname: str) -> Sources:
    """Run the step's kind on its inputs; return the task's view of its story's files."""
    sdir = proj.story_dir(tpl.name, story_id)
    sources = Sources(tpl, sdir, snapshot=True)  # this task's view of its inputs
    sources.require(value_paths(step, step.foreach.source if step.foreach else None))
    ctx = step_context(tpl, step, story_id, story_input, n, sources, sdir)
    inputs = read_inputs(tpl, step, sdir, story_input, n, sources, ctx)
    rel = expand(step.target, n)
    reroll = tname in {t.strip() for t in os.environ.get("CLOOPS_REROLL", "").split(",")}
    meta = CallMeta(template=tpl.name, story=story_id, step=step.name, target=rel, reroll=reroll)

    def write(target: str, data: Any, *, made_by: str, offline: bool = False,
              source: str | None = None) -> None:
        _write(sdir, target, data, made_by=made_by, offline=offline, task=tname, source=source)

    step.execute(StepRun(step=step, template=tpl, inputs=inputs, ctx=ctx,
                         services=TaskServices(hub_for(proj), meta), rel=rel, write=write,
                         keys=sources.keys_of, note=lambda text: note(tname, text),
                         made_from=lambda target: made_from(sdir, target)))
    return sources


def _encode(out: Any) -> bytes:
    if isinstance(out, (bytes, bytearray, memoryview)):
        return bytes(out)
    if isinstance(out, str):
        return (out if out.endswith("\n") else out + "\n").encode("utf-8")
    return dump_json(out).encode("utf-8")


def _write(sdir: Path, rel: str, out: Any, *, made_by: str, offline: bool, task: str,
           source: str | None = None) -> None:
    res = write_target(sdir, rel, _encode(out), made_by=made_by, offline=offline, source=source)
    if res.kept is not None and res.hand_edit:
        note(task, f"your hand edit of {rel} was replaced; it is kept at "
                   f"{res.kept.relative_to(sdir.parent.parent.parent)}")


def settle_story(proj: Project, template: str, story_id: str) -> None:
    """After a run in which some of a story's tasks ran but the step that finishes it did not
    need to (the outputs came out the same), set its status as that step would have."""
    finish_story(proj, proj.template(template), story_id, "")


def finish_story(proj: Project, tpl: Template, story_id: str, tname: str) -> None:
    """Mark the story completed, unless an artifact of it was built offline (then pending)."""
    sdir = proj.story_dir(tpl.name, story_id)
    manifest = read_manifest(sdir)
    offline = sorted(rel for rel, rec in manifest.items() if rec.get("offline"))
    b = proj.backlog_for(tpl.name)
    if offline:
        statuses.set(proj.root, b.path, story_id, "pending")
        note(tname, f"built with offline backends ({len(offline)} draft artifacts): left "
                    f"pending; set the API keys and run doit again to build it for real")
    else:
        statuses.complete(proj, tpl.name, story_id, proj.item(tpl.name, story_id).input, b.path)
