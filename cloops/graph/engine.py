"""Turn templates' declared steps into doit tasks.

Layer: **graph**. Per story (``<template>/<id>``):

- static steps (those that do not depend on the fan-out file) become tasks at load time:
  ``narrative:<key>``, ``pages:<key>``;
- a delayed task creator ``expand:<key>`` runs once the fan-out file (``pages.json``) is up to
  date and creates the rest: ``prompt:<key>/<n>``, ``image:<key>/<n>``, ``story-data:<key>``...
  (``doit list``/``info`` run it at load; it copes with a missing ``pages.json``);
- ``build:<key>`` (and ``build:<id>``) groups them; ``pending`` groups the stories that are not
  ``completed`` and is the default task; ``dry:<key>`` groups what a dry run builds.

Each task's dependencies are exact: files through ``file_dep``; everything else (prompt texts,
the config values the step uses, story fields, one page's entry, the backend and what its
kind adds) through one :class:`Inputs` uptodate object that stores the values and can say which
of them changed. What each kind contributes comes from the step itself
(:class:`cloops.graph.steps.Step`); no kind is named here.

The tasks' actions are the run layer's (:class:`Actions`): this module only declares them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from doit import create_after

from ..core.errors import InputError
from ..data.project import Project, StoryRef
from ..data.template import Template
from .locks import is_locked, mark_stale
from .plan import Plan, plan_of
from .steps import (DepContext, ItemInput, PartInput, Step, StepContext, StoryValue, selected,
                    short_value, value_name)
from .targets import remove_target

INPUTS_KEY = "_cloops_inputs"


class Inputs:
    """doit ``uptodate`` checker over a dict of named input values.

    The values (strings) are saved with the task's state when it succeeds; the task is stale
    when any differs from the saved ones. ``changed`` then lists the names that differ
    (``"config style.artStyle"``, ``"file system-prompts/step3-prompts.md"``) so the reporter
    and ``doit info`` can say why.
    """

    def __init__(self, values: dict[str, str], story_dir: str = "", rel: str = ""):
        self.values = values
        self.story_dir = story_dir
        self.rel = rel
        self.changed: list[str] | None = None
        self.locked = False

    def configure_task(self, task) -> None:
        task.value_savers.append(lambda: {INPUTS_KEY: self.values})

    def __call__(self, task, values) -> bool:
        prev = values.get(INPUTS_KEY)
        self.locked = False
        if prev is None:
            self.changed = ["never built"]
        else:
            keys = sorted(set(prev) | set(self.values))
            self.changed = [k for k in keys if prev.get(k) != self.values.get(k)]
        if self.changed and self.story_dir and prev is not None:
            if is_locked(Path(self.story_dir), self.rel):
                # locked: stays as it is; the change is remembered and reported
                self.locked = True
                mark_stale(Path(self.story_dir), self.rel, ", ".join(self.changed))
                return True
        return not self.changed

    def __repr__(self) -> str:
        if self.changed:
            return ("LOCKED, stale: " if self.locked else "changed: ") + ", ".join(self.changed)
        return "cloops inputs (unchanged)"


@dataclass(frozen=True)
class Actions:
    """The doit actions of the tasks this module makes, given by the run layer.

    Module-level functions (doit's process mode pickles tasks):

    Attributes:
        run: ``run(root, template, story_id, step_name, n, count)`` runs one step task;
            returns None or a doit ``TaskFailed``.
        fail: ``fail(root, template, story_id, message)`` marks a story failed and returns
            the ``TaskFailed`` (a story whose fan-out file cannot be read).
    """

    run: Callable[..., Any]
    fail: Callable[..., Any]


def task_name(step: Step, story: StoryRef, n: int | None) -> str:
    """``<step>:<template>/<id>[/<n>]``."""
    return f"{step.name}:{story.key}" + (f"/{n}" if n is not None else "")


class Fanout:
    """The fan-out file's items for one story, read once (``None`` when it does not exist yet)."""

    def __init__(self, tpl: Template, story_dir: Path):
        self.items: list | None = None
        self.data: Any = None
        self.error: str | None = None  # the file exists but cannot be fanned out (a bad hand edit)
        plan = plan_of(tpl)
        src = plan.foreach_source
        if not src:
            return
        path = story_dir / src
        try:
            self.data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except json.JSONDecodeError as exc:
            self.error = str(InputError(
                f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
                file=str(path), fix="correct your edit (it is kept as you wrote it), or delete "
                                    "the file to have it regenerated."))
            return
        key = plan.foreach_key
        items = self.data.get(key) if isinstance(self.data, dict) else None
        if isinstance(items, list) and all(isinstance(i, dict) for i in items):
            self.items = items
        else:
            self.error = str(InputError(f"has no list of objects at '{key}'.", file=str(path),
                                        field=key, fix="correct your edit, or delete the file "
                                                       "to have it regenerated."))


def value_inputs(tpl: Template, step: Step, story_input: dict, n: int | None,
                 fan: Fanout | None) -> dict[str, Any]:
    """The step's value inputs (story fields, item, parts) — no files."""
    out: dict[str, Any] = {}
    for name, inp in step.inputs.items():
        if isinstance(inp, StoryValue):
            out[name] = story_input if inp.field is None else story_input.get(inp.field)
        elif isinstance(inp, ItemInput):
            out[name] = selected(inp, fan.items[n - 1] if fan and fan.items and n else None)
        elif isinstance(inp, PartInput):
            data = fan.data if fan else None
            out[name] = selected(inp, data.get(inp.key) if isinstance(data, dict) else None)
    return out


def step_values(proj: Project, tpl: Template, step: Step, story: StoryRef, item_input: dict,
                n: int | None, fan: Fanout | None) -> dict[str, str]:
    """Every non-file input of one task, by name, as short strings (see :class:`Inputs`)."""
    plan = plan_of(tpl)
    values: dict[str, str] = {"step version": str(step.version)}
    for rel in step.template_files(tpl):
        values[f"file {rel}"] = tpl.digest(rel)
    for path in step.config_paths(tpl):
        values[f"config {path}"] = short_value(tpl.config.get(path))
    for inp in step.inputs.values():
        if isinstance(inp, StoryValue):
            v = item_input if inp.field is None else item_input.get(inp.field)
            values[f"story {inp.field or 'input'}"] = short_value(v)
        elif isinstance(inp, ItemInput):
            it = fan.items[n - 1] if fan and fan.items and n else None
            values[value_name(inp, plan.foreach_source, n)] = short_value(selected(inp, it))
        elif isinstance(inp, PartInput):
            data = fan.data if fan and inp.path == plan.foreach_source else None
            v = data.get(inp.key) if isinstance(data, dict) else None
            values[value_name(inp, plan.foreach_source)] = short_value(selected(inp, v))
    spec = None
    if step.service:
        spec = proj.resolved(tpl.name, step.service).spec
        values[f"{step.service} backend"] = spec.name

    def values_now() -> tuple[dict, StepContext]:
        ctx = StepContext(template=tpl.name, story_id=story.id, story=item_input,
                          config=tpl.config, n=n,
                          count=len(fan.items) if fan and fan.items else None, story_dir=None)
        return value_inputs(tpl, step, item_input, n, fan), ctx

    values.update(step.dependency_values(DepContext(tpl, spec, values_now)))
    return values


def _producer_task(plan: Plan, story: StoryRef, path: str) -> str | None:
    prod = plan.producer_of(path)
    return None if prod is None else task_name(prod, story, None)


def make_task(proj: Project, tpl: Template, step: Step, story: StoryRef, story_input: dict,
              n: int | None, count: int | None, fan: Fanout | None, actions: Actions) -> dict:
    """The doit task dict for one step of one story (``n``: foreach index)."""
    plan = plan_of(tpl)
    sdir = proj.story_dir(tpl.name, story.id)
    rel_root = sdir.relative_to(proj.root)
    deps, outs = step.task_files(n, count)
    file_dep = [str(rel_root / d) for d in deps]
    targets = [str(rel_root / t) for t in outs]
    task_dep: list[str] = []
    for inp in step.inputs.values():
        if isinstance(inp, (PartInput, ItemInput)):
            src = inp.path if isinstance(inp, PartInput) else plan.foreach_source
            prod = _producer_task(plan, story, src)
            if prod and prod not in task_dep:
                task_dep.append(prod)
    values = step_values(proj, tpl, step, story, story_input, n, fan)
    label = f"{story.key}" + (f" #{n}" if n is not None else "")
    return {
        "basename": task_name(step, story, n),
        "doc": f"{step.doc or step.name} ({label})",
        "actions": [(actions.run, [str(proj.root), tpl.name, story.id, step.name, n, count])],
        "file_dep": file_dep,
        "task_dep": task_dep,
        "targets": targets,
        "uptodate": [Inputs(values, str(sdir), outs[0])],
        "clean": [(clean_task, [str(sdir), outs])],
        "verbosity": 1,
    }


def clean_task(story_dir: str, rels: list[str]) -> None:
    """``doit clean`` action: remove a task's targets, keeping hand-edited ones in history."""
    for rel in rels:
        remove_target(Path(story_dir), rel)


def wanted_steps(tpl: Template, dry: bool) -> list[Step]:
    """The steps a run creates tasks for: all, or for a dry run those outside
    :attr:`Plan.media` (no image or voice call, nothing that reads their output)."""
    if dry:
        media = plan_of(tpl).media
        return [s for s in tpl.steps if s.name not in media]
    return list(tpl.steps)


def static_tasks(proj: Project, tpl: Template, story: StoryRef, story_input: dict,
                 actions: Actions, dry: bool) -> Iterator[dict]:
    """The tasks of a story's steps that do not need the fan-out file."""
    dynamic = plan_of(tpl).dynamic
    for step in wanted_steps(tpl, dry):
        if step.name not in dynamic:
            yield make_task(proj, tpl, step, story, story_input, None, None, None, actions)


def dynamic_tasks(proj: Project, tpl: Template, story: StoryRef, story_input: dict,
                  actions: Actions, dry: bool) -> Iterator[dict]:
    """Tasks that need the fan-out file; none (but the group) when it does not exist yet."""
    plan = plan_of(tpl)
    fan = Fanout(tpl, proj.story_dir(tpl.name, story.id))
    names: list[str] = []
    if fan.error is not None:
        # no per-item task can be made: one task that fails the story with the reason
        name = f"check:{story.key}"
        names.append(name)
        yield {"basename": name, "doc": f"{plan.foreach_source} of {story.key} is unreadable",
               "actions": [(actions.fail, [str(proj.root), tpl.name, story.id,
                                           f"{story.key}: {fan.error}"])],
               "verbosity": 1}
    elif fan.items is not None:
        count = len(fan.items)
        for step in wanted_steps(tpl, dry):
            if step.name not in plan.dynamic:
                continue
            for n in (range(1, count + 1) if step.foreach else [None]):
                t = make_task(proj, tpl, step, story, story_input, n, count, fan, actions)
                names.append(t["basename"])
                yield t
    yield {"basename": f"expand:{story.key}", "actions": None, "task_dep": names,
           "doc": f"per-item tasks of {story.key}"}


def delayed_creator(proj: Project, tpl: Template, story: StoryRef, story_input: dict,
                    actions: Actions, dry: bool):
    """The ``expand:<key>`` task creator: run by doit once the fan-out file's producer ran."""
    def creator():
        yield from dynamic_tasks(proj, tpl, story, story_input, actions, dry)
    creator.__doc__ = f"per-item tasks of {story.key}"
    plan = plan_of(tpl)
    src = plan.foreach_source
    executed = _producer_task(plan, story, src) if src else None
    return create_after(executed=executed)(creator)


def group_deps(tpl: Template, story: StoryRef, *, dry: bool) -> list[str]:
    """The tasks a story's ``build:<key>`` (or ``dry:<key>``) group waits for: its static
    steps and, when it fans out, ``expand:<key>``."""
    plan = plan_of(tpl)
    deps = [task_name(s, story, None) for s in wanted_steps(tpl, dry) if s.name not in plan.dynamic]
    if plan.dynamic:
        deps.append(f"expand:{story.key}")
    return deps


def story_tasks(proj: Project, stories: list[tuple[StoryRef, Any]], sealed: set[str],
                actions: Actions, dry: bool) -> dict[str, Any]:
    """doit task creators for ``stories`` (``[(ref, backlog item)]``, in backlog order).

    Returns ``{name: creator}`` for a dodo namespace: ``task_steps`` (every static task),
    ``task_expand:<key>`` (one delayed creator per story that fans out), ``task_build``,
    ``task_pending`` and ``task_dry``. Stories whose keys are in ``sealed`` (up to date as
    recorded: :mod:`cloops.graph.seals`) get empty groups and no step tasks.
    """
    ns: dict[str, Any] = {}
    checked = [(r, it) for r, it in stories if r.key not in sealed]

    def task_steps():
        """every static step task of every story"""
        for ref, it in checked:
            yield from static_tasks(proj, proj.template(ref.template), ref, it.input, actions, dry)
    ns["task_steps"] = task_steps

    for ref, it in checked:
        tpl = proj.template(ref.template)
        if plan_of(tpl).dynamic:
            ns[f"task_expand:{ref.key}"] = delayed_creator(proj, tpl, ref, it.input, actions, dry)

    def task_build():
        """bring one story up to date whatever its status: doit build:<id>"""
        by_id: dict[str, list[str]] = {}
        for ref, it in stories:
            by_id.setdefault(ref.id, []).append(f"build:{ref.key}")
            if ref.key in sealed:
                # sealed: every input and file as at its last complete build (cloops.graph.seals)
                yield {"name": ref.key, "actions": None, "task_dep": [],
                       "doc": f"{it.input.get('title', ref.id)} [{it.status}, up to date]"}
                continue
            deps = group_deps(proj.template(ref.template), ref, dry=dry)
            yield {"name": ref.key, "actions": None, "task_dep": deps,
                   "doc": f"{it.input.get('title', ref.id)} [{it.status}]"}
        for sid, deps in by_id.items():
            yield {"name": sid, "actions": None, "task_dep": deps,
                   "doc": f"{sid} in every template that has it"}
    ns["task_build"] = task_build

    def task_pending():
        """build every story that is not completed (the default task)"""
        deps = [f"build:{ref.key}" for ref, it in stories if it.status != "completed"]
        return {"actions": None, "task_dep": deps}
    ns["task_pending"] = task_pending

    def task_dry():
        """dry run: everything up to the image prompts, no image call (doit dry, doit dry:<id>)"""
        pending = []
        by_id: dict[str, list[str]] = {}
        for ref, it in stories:
            deps = [] if ref.key in sealed else group_deps(proj.template(ref.template), ref,
                                                            dry=True)
            yield {"name": ref.key, "actions": None, "task_dep": deps,
                   "doc": f"dry run of {ref.key}"}
            by_id.setdefault(ref.id, []).append(f"dry:{ref.key}")
            if it.status != "completed":
                pending.append(f"dry:{ref.key}")
        for sid, deps in by_id.items():
            yield {"name": sid, "actions": None, "task_dep": deps, "doc": f"dry run of {sid}"}
        yield {"name": None, "actions": None, "task_dep": pending,
               "doc": "dry run of every story that is not completed: no image call"}
    ns["task_dry"] = task_dry
    return ns
