"""Turn templates' declared steps into doit tasks.

Per story (``<template>/<id>``):

- static steps (those that do not depend on the fan-out file) become tasks at load time:
  ``narrative:<key>``, ``pages:<key>``;
- a delayed task creator ``expand:<key>`` runs once the fan-out file (``pages.json``) is up to
  date and creates the rest: ``prompt:<key>/<n>``, ``image:<key>/<n>``, ``story-data:<key>``...
  (``doit list``/``info`` run it at load; it copes with a missing ``pages.json``);
- ``build:<key>`` (and ``build:<id>``) groups them; ``pending`` groups the stories that are not
  ``completed`` and is the default task.

Each task's dependencies are exact: files through ``file_dep``; everything else (prompt texts,
the config values the step uses, story fields, one page's entry, the backend and model) through
one :class:`Inputs` uptodate object that stores the values and can say which of them changed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from doit import create_after

from .errors import InputError
from .fileio import canonical_json, sha256_json
from .project import Project, StoryRef, load_project
from .steps import (BundleStep, EachInput, FileInput, ImageStep, ItemInput,
                    LLMStep, PartInput, Step, StoryValue, VoiceStep)
from .template import Template

INPUTS_KEY = "_cloops_inputs"
DEFAULT_JOBS = 24  # doit worker threads; `doit -n 1` runs one task at a time


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
            from .locks import is_locked, mark_stale
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


def _short(value: Any) -> str:
    """A value as stored in task state: short scalars verbatim, anything else hashed."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = canonical_json(value)
        if len(text) <= 80:
            return text
    return "sha256:" + sha256_json(value)[:16]


def task_name(step: Step, story: StoryRef, n: int | None) -> str:
    return f"{step.name}:{story.key}" + (f"/{n}" if n is not None else "")


def expand(pattern: str, n: int | None) -> str:
    return pattern.replace("{n}", str(n)) if n is not None else pattern


class Fanout:
    """The fan-out file's items for one story, read once (``None`` when it does not exist yet)."""

    def __init__(self, tpl: Template, story_dir: Path):
        self.items: list | None = None
        self.data: Any = None
        self.error: str | None = None  # the file exists but cannot be fanned out (a bad hand edit)
        src = tpl.foreach_source
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
        key = next(s.foreach.key for s in tpl.steps if s.foreach)
        items = self.data.get(key) if isinstance(self.data, dict) else None
        if isinstance(items, list) and all(isinstance(i, dict) for i in items):
            self.items = items
        else:
            self.error = str(InputError(f"has no list of objects at '{key}'.", file=str(path),
                                        field=key, fix="correct your edit, or delete the file "
                                                       "to have it regenerated."))


def step_values(proj: Project, tpl: Template, step: Step, story: StoryRef, item_input: dict,
                n: int | None, fan: Fanout | None) -> dict[str, str]:
    """Every non-file input of one task, by name, as short strings (see :class:`Inputs`)."""
    values: dict[str, str] = {"step version": str(step.version)}
    for rel in tpl.prompt_files(step):
        values[f"file {rel}"] = tpl.digest(rel)
    for path in tpl.config_paths(step):
        values[f"config {path}"] = _short(tpl.config.get(path))
    for name, inp in step.inputs.items():
        if isinstance(inp, StoryValue):
            v = item_input if inp.field is None else item_input.get(inp.field)
            values[f"story {inp.field or 'input'}"] = _short(v)
        elif isinstance(inp, ItemInput):
            src = tpl.foreach_source
            it = fan.items[n - 1] if fan and fan.items and n else None
            values[f"{src} item {n}"] = _short(it)
        elif isinstance(inp, PartInput):
            data = fan.data if fan and inp.path == tpl.foreach_source else None
            v = data.get(inp.key) if isinstance(data, dict) else None
            values[f"{inp.path} {inp.key}"] = _short(v)
    if step.service in ("llm", "image", "voice"):
        resolved = proj.resolved(tpl.name, step.service)
        values[f"{step.service} backend"] = resolved.spec.name
        if isinstance(step, LLMStep):
            for k, v in tpl.llm_settings(step).items():
                values[f"llm {k}"] = _short(v)
        elif isinstance(step, VoiceStep):
            voice = tpl.config.engine.voice
            for k in ("voice_id", "model", "output_format", "pause_s"):
                values[f"voice.{k}"] = _short(getattr(voice, k))
            values["voice.settings"] = _short(voice.settings.model_dump(exclude_none=True))
        elif isinstance(step, ImageStep):
            values["generation.model"] = _short(tpl.config.engine.generation.model)
            values["generation.params"] = _short(tpl.image_params(step))
            if resolved.spec.name == "comfyui":
                values["comfyui workflow"] = comfyui_workflow_digest(tpl)
            if resolved.spec.offline and step.annotate is not None:
                # offline storyboards draw the page's text: that is then a dependency too
                values["annotations"] = _short(annotation_values(tpl, step, story, item_input,
                                                                 n, fan))
    return values


def comfyui_workflow_digest(tpl: Template) -> str:
    """Digest of the ComfyUI workflow file (``generation.comfyui.workflow``): editing the
    workflow changes every image it makes, so it is a dependency and part of the cache key."""
    from .fileio import sha256_file
    name = tpl.config.engine.generation.comfyui.get("workflow")
    if not name:
        return "none"
    return (sha256_file(tpl.dir / name) or sha256_file(Path(name)) or "missing")[:16]


def value_inputs(tpl: Template, step: Step, story_input: dict, n: int | None,
                 fan: Fanout | None) -> dict[str, Any]:
    """The step's value inputs (story fields, item, parts) — no files."""
    out: dict[str, Any] = {}
    for name, inp in step.inputs.items():
        if isinstance(inp, StoryValue):
            out[name] = story_input if inp.field is None else story_input.get(inp.field)
        elif isinstance(inp, ItemInput):
            out[name] = fan.items[n - 1] if fan and fan.items and n else None
        elif isinstance(inp, PartInput):
            data = fan.data if fan else None
            out[name] = data.get(inp.key) if isinstance(data, dict) else None
    return out


def annotation_values(tpl: Template, step: ImageStep, story: StoryRef, story_input: dict,
                      n: int | None, fan: Fanout | None) -> Any:
    from .steps import StepContext
    ctx = StepContext(template=tpl.name, story_id=story.id, story=story_input, config=tpl.config,
                      n=n, count=len(fan.items) if fan and fan.items else None, story_dir=None)
    return step.annotate(value_inputs(tpl, step, story_input, n, fan), ctx)


def _producer_task(tpl: Template, story: StoryRef, path: str, n: int | None) -> str | None:
    prod = tpl.producers.get(path)
    if prod is None:
        return None
    return task_name(prod, story, n if prod.foreach else None)


def make_task(proj: Project, tpl: Template, step: Step, story: StoryRef, story_input: dict,
              n: int | None, count: int | None, fan: Fanout | None) -> dict:
    """The doit task dict for one step of one story (``n``: foreach index)."""
    sdir = proj.story_dir(tpl.name, story.id)
    rel_root = sdir.relative_to(proj.root)
    file_dep: list[str] = []
    task_dep: list[str] = []
    for inp in step.inputs.values():
        if isinstance(inp, FileInput):
            file_dep.append(str(rel_root / expand(inp.path, n)))
        elif isinstance(inp, EachInput):
            file_dep += [str(rel_root / expand(inp.pattern, i)) for i in range(1, (count or 0) + 1)]
        elif isinstance(inp, (PartInput, ItemInput)):
            src = inp.path if isinstance(inp, PartInput) else tpl.foreach_source
            prod = _producer_task(tpl, story, src, None)
            if prod and prod not in task_dep:
                task_dep.append(prod)
    if isinstance(step, BundleStep):
        targets = []
        for dest, src in step.files.items():
            ns = range(1, (count or 0) + 1) if "{n}" in dest else [None]
            for i in ns:
                file_dep.append(str(rel_root / expand(src, i)))
                targets.append(str(rel_root / step.target / expand(dest, i)))
    else:
        targets = [str(rel_root / expand(t, n)) for t in (step.target, *step.also)]
    values = step_values(proj, tpl, step, story, story_input, n, fan)
    label = f"{story.key}" + (f" #{n}" if n is not None else "")
    return {
        "basename": task_name(step, story, n),
        "doc": f"{step.doc or step.name} ({label})",
        "actions": [(run_task, [str(proj.root), tpl.name, story.id, step.name, n, count])],
        "file_dep": file_dep,
        "task_dep": task_dep,
        "targets": targets,
        "uptodate": [Inputs(values, str(sdir), str(Path(targets[0]).relative_to(rel_root)))],
        "clean": [(clean_task, [str(sdir), [str(Path(t).relative_to(rel_root)) for t in targets]])],
        "verbosity": 1,
        "io": UNCAPTURED,
    }


# doit's PythonAction captures a task's output by swapping the process-wide sys.stdout and
# sys.stderr for a ``Writer`` that also writes to the stream it found, and puts the old one back
# afterwards (doit 0.37 ``action.py``). Tasks run in threads: one task's Writer is found, wrapped
# and later restored by another, so sys.stderr ends as a chain of Writers as long as the run
# (thousands at 1,000 stories); flushing it at exit overflowed the recursion limit, Python lost
# sys.stderr and exited 120. cloops' actions print nothing (the reporter writes to
# sys.__stdout__/__stderr__ and failures travel as TaskFailed): they need no capture.
UNCAPTURED = {"capture": False}


def run_task(root: str, template: str, story_id: str, step_name: str, n: int | None,
             count: int | None):
    """doit action of every step task (module-level so process mode can pickle it)."""
    from .execute import run_step
    return run_step(Path(root), template, story_id, step_name, n, count)


def dry_mode() -> bool:
    """True for a dry run: ``doit dry`` / ``doit dry:<id>`` or ``CLOOPS_DRY=1``.

    A dry run builds everything up to the image prompts and calls no image or voice service:
    the tasks of media steps (and of what reads their output) are not created at all.
    """
    if os.environ.get("CLOOPS_DRY", "").lower() in ("1", "true", "yes"):
        return True
    return any(a == "dry" or a.startswith("dry:") for a in sys.argv[1:])


def wanted_steps(tpl: Template) -> list[Step]:
    if dry_mode():
        return [s for s in tpl.steps if s.name not in tpl.media_steps]
    return list(tpl.steps)


def fail_story(root: str, template: str, story_id: str, message: str):
    """doit action that marks a story failed with ``message`` and fails."""
    from .execute import mark_failed
    return mark_failed(Path(root), template, story_id, f"{template}/{story_id}: {message}")


def clean_task(story_dir: str, rels: list[str]) -> None:
    """``doit clean`` action: remove a task's targets, keeping hand-edited ones in history."""
    from .targets import remove_target
    for rel in rels:
        remove_target(Path(story_dir), rel)


def static_tasks(proj: Project, tpl: Template, story: StoryRef, story_input: dict) -> Iterator[dict]:
    for step in wanted_steps(tpl):
        if step.name not in tpl.dynamic_steps:
            yield make_task(proj, tpl, step, story, story_input, None, None, None)


def dynamic_tasks(proj: Project, tpl: Template, story: StoryRef,
                  story_input: dict) -> Iterator[dict]:
    """Tasks that need the fan-out file; none (but the group) when it does not exist yet."""
    fan = Fanout(tpl, proj.story_dir(tpl.name, story.id))
    names: list[str] = []
    if fan.error is not None:
        # no per-item task can be made: one task that fails the story with the reason
        name = f"check:{story.key}"
        names.append(name)
        yield {"basename": name, "doc": f"{tpl.foreach_source} of {story.key} is unreadable",
               "actions": [(fail_story, [str(proj.root), tpl.name, story.id, fan.error])],
               "verbosity": 1, "io": UNCAPTURED}
    elif fan.items is not None:
        count = len(fan.items)
        for step in wanted_steps(tpl):
            if step.name not in tpl.dynamic_steps:
                continue
            ns = range(1, count + 1) if step.foreach else [None]
            for n in ns:
                t = make_task(proj, tpl, step, story, story_input, n, count, fan)
                names.append(t["basename"])
                yield t
    yield {"basename": f"expand:{story.key}", "actions": None, "task_dep": names,
           "doc": f"per-item tasks of {story.key}"}


def _delayed_creator(proj: Project, tpl: Template, story: StoryRef, story_input: dict):
    def creator():
        yield from dynamic_tasks(proj, tpl, story, story_input)
    creator.__doc__ = f"per-item tasks of {story.key}"
    src = tpl.foreach_source
    executed = _producer_task(tpl, story, src, None) if src else None
    return create_after(executed=executed)(creator)


DOIT_COMMANDS = {"list", "info", "clean", "forget", "ignore", "dumpdb", "strace", "auto",
                 "tabcompletion", "help", "reset-dep", "run"}


_VALUE_OPTIONS = {"-n", "--process", "-P", "--parallel-type", "-v", "--verbosity", "-f",
                  "--file", "-d", "--dir", "-k", "--seek-file", "--reporter", "--dep-file",
                  "--db-file", "--backend", "--output-file", "-o", "--check_file_uptodate",
                  "--codec-cls", "--pdb", "--by", "--run", "--prune-days", "--dir"}


def parse_argv(argv: list[str]) -> tuple[str, list[str], bool]:
    """``(doit command, task names, always execute)`` of a doit command line.

    ``doit build:x -n 4`` → ``("run", ["build:x"], False)``; ``doit info build:x`` →
    ``("info", ["build:x"], False)``; cloops' own commands (``status``, ``lock``...) come back
    with their name as the command.
    """
    args: list[str] = []
    skip = False
    always = False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUE_OPTIONS:
            skip = True  # the next word is this option's value, not a task
        elif a in ("-a", "--always-execute"):
            always = True
        elif not a.startswith("-"):
            args.append(a)
    command = "run"
    if args and (args[0] in DOIT_COMMANDS or "=" not in args[0] and ":" not in args[0]
                 and args[0] not in ("build", "dry", "pending") and not args[0].startswith("expand")):
        command, args = args[0], args[1:]
    # option values (doit -n 4) and var=value pairs are not task names
    return command, [a for a in args if not a.isdigit() and "=" not in a], always


def selected_stories(backlogs: list, command: str, args: list[str]) -> set[str] | None:
    """The story keys (``<template>/<id>``) whose tasks this doit invocation needs, or None for
    all of them. ``backlogs``: the project's :class:`~cloops.backlog.Backlog` list.

    Start-up must not grow with finished work: a bare ``doit`` (the ``pending`` default) needs
    only the stories that are not completed, and ``doit build:<id>`` only that story (found by
    id, without walking the backlog). Any task name not understood here selects every story
    (doit then finds it, or says it does not exist).
    """
    if command not in ("run", "info", "clean", "forget", "ignore", "list", "strace"):
        return None  # cloops' own commands (status, lock, ...) and doit's others: everything

    def pending() -> set[str]:
        return {f"{b.template}/{it.id}" for b in backlogs for it in b.items
                if it.status != "completed"}

    if not args:
        return pending() if command == "run" else None
    keys: set[str] = set()
    for a in args:
        base, _, rest = a.partition(":")
        if base in ("pending", "dry") and not rest:
            keys |= pending()
            continue
        if not rest:
            return None  # a whole group (e.g. `build`) or a name we do not know
        parts = rest.split("/")
        if len(parts) >= 2 and any(b.template == parts[0] and b.get(parts[1]) for b in backlogs):
            keys.add("/".join(parts[:2]))
            continue
        found = {f"{b.template}/{rest}" for b in backlogs if b.get(rest) is not None}
        if not found:
            return None
        keys |= found
    return keys


def dodo_namespace(root: Path | str | None = None) -> dict[str, Any]:
    """Everything ``dodo.py`` exposes: ``DOIT_CONFIG`` and the task creators.

    Raises:
        InputError: invalid backlog/template/config (``dodo.py`` prints it and exits 2).
    """
    proj = load_project(root)
    _CURRENT["project"] = proj
    ns: dict[str, Any] = {}
    command, names, always = parse_argv(sys.argv[1:])
    wanted = selected_stories(proj.backlogs, command, names)
    stories: list[tuple[StoryRef, Any]] = []
    for b in proj.backlogs:
        path = str(b.path)
        prefix = b.template + "/"
        stories += [(StoryRef(b.template, it.id, path), it) for it in b.items  # backlog order
                    if wanted is None or prefix + it.id in wanted]

    from .seals import SealBook
    book = SealBook(proj)
    _CURRENT["seals"] = book
    sealed: set[str] = set()
    if command in ("forget", "ignore", "clean"):
        # the tasks of these stories must really be checked (and run) next time
        book.drop(None if wanted is None else [r for r, _ in stories])
    elif command == "run" and not always:
        sealed = {r.key for r, it in stories if book.is_sealed(r, it)}
    _CURRENT["sealed"] = sealed
    _CURRENT["items"] = {r.key: (r, it) for r, it in stories}
    checked = [(r, it) for r, it in stories if r.key not in sealed]

    # ready tasks run oldest story first, deepest step first (cloops.dispatch)
    from .dispatch import install, service_saturation, task_priority
    install(task_priority({r.key: i for i, (r, _) in enumerate(checked)},
                          {b.template: proj.template(b.template).depth for b in proj.backlogs}),
            service_saturation(proj))

    def task_steps():
        """every static step task of every story"""
        for ref, it in checked:
            tpl = proj.template(ref.template)
            yield from static_tasks(proj, tpl, ref, it.input)
    ns["task_steps"] = task_steps

    for ref, it in checked:
        tpl = proj.template(ref.template)
        if tpl.dynamic_steps:
            ns[f"task_expand:{ref.key}"] = _delayed_creator(proj, tpl, ref, it.input)

    def task_build():
        """bring one story up to date whatever its status: doit build:<id>"""
        by_id: dict[str, list[str]] = {}
        for ref, it in stories:
            by_id.setdefault(ref.id, []).append(f"build:{ref.key}")
            if ref.key in sealed:
                # sealed: every input and file as at its last complete build (cloops.seals)
                yield {"name": ref.key, "actions": None, "task_dep": [],
                       "doc": f"{it.input.get('title', ref.id)} [{it.status}, up to date]"}
                continue
            tpl = proj.template(ref.template)
            deps = [task_name(s, ref, None) for s in wanted_steps(tpl)
                    if s.name not in tpl.dynamic_steps]
            if tpl.dynamic_steps:
                deps.append(f"expand:{ref.key}")
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
            tpl = proj.template(ref.template)
            deps = [task_name(s, ref, None) for s in tpl.steps
                    if s.name not in tpl.dynamic_steps and s.name not in tpl.media_steps]
            if tpl.dynamic_steps:
                deps.append(f"expand:{ref.key}")
            if ref.key in sealed:
                deps = []  # fully built and unchanged: nothing for a dry run to do
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

    from .reporter import CloopsReporter
    ns["DOIT_CONFIG"] = {
        "default_tasks": ["pending"],
        "continue": True,
        # tasks wait on the network: run them in threads; each service's own limits (config
        # concurrency / requestsPerMinute) decide how many calls are in flight
        "num_process": int(os.environ.get("CLOOPS_JOBS", DEFAULT_JOBS)),
        "par_type": "thread",
        "cleandep": True,       # doit clean build:<id> cleans the story's tasks
        "cleanforget": True,    # and forgets their state
        "reporter": CloopsReporter,
        "dep_file": str(proj.root / "build" / ".cloops" / "doit-state.db"),
        "backend": "sqlite3",
        "verbosity": 1,
    }
    (proj.root / "build" / ".cloops").mkdir(parents=True, exist_ok=True)
    return ns


# ---------------------------------------------------------------- run header and summary

_CURRENT: dict[str, Any] = {}


def current_project() -> Project | None:
    return _CURRENT.get("project")


def run_context() -> tuple[Any, set[str], dict[str, tuple[StoryRef, Any]]]:
    """``(SealBook or None, keys of the stories sealed at start, {key: (ref, backlog item)}
    of the stories this run selected)`` — for the reporter's end-of-run seals."""
    return _CURRENT.get("seals"), _CURRENT.get("sealed", set()), _CURRENT.get("items", {})


def header_lines() -> list[str]:
    """The run header: which backend serves each service, loudly when offline."""
    proj = current_project()
    if proj is None:
        return []
    lines = []
    for b in proj.backlogs:
        pending = sum(1 for it in b.items if it.status != "completed")
        parts = []
        tpl = proj.template(b.template)
        services = sorted({s.service for s in tpl.steps if s.service})
        for service in services:
            r = proj.resolved(b.template, service)
            style = "bold yellow" if r.spec.offline else "bold green"
            parts.append(f"{service}: [{style}]{r.spec.name}[/{style}] ({r.reason})")
        lines.append(f"[bold]{b.template}[/bold]: {pending} of {len(b.items)} stories not "
                     f"completed · " + " · ".join(parts))
        offline = [s for s in services if proj.resolved(b.template, s).spec.offline]
        if offline:
            from .services import registry
            keys = [spec.key_env[0] for s in offline
                    for spec in sorted(registry.backends(s).values(), key=lambda x: x.auto_rank)[:1]
                    if spec.key_env]
            lines.append("  [yellow]OFFLINE backends in use: outputs are drafts and stories stay "
                         f"pending. Set {' / '.join(keys)} (or .env) to build for real.[/yellow]")
    return lines


def freeze_live_objects() -> None:
    """Move every object alive now to the garbage collector's permanent generation
    (:func:`gc.freeze`).

    Called after start-up (modules, SDK types, templates, task definitions: they live until the
    process ends, so collecting them is wasted work, and each full collection during the run
    would traverse them) and at the end of the run, before the interpreter's exit, whose final
    collection would otherwise traverse everything the run made: about 0.1-0.2 s at the end of
    every ``doit`` (measured on the makespan benchmark: 0.13 s -> 0.03 s). Objects that become
    unreachable are still freed by reference counting; only cycles among frozen objects wait.
    """
    import gc
    gc.freeze()


GC_YOUNG_THRESHOLD = 20_000  # net allocations between young-generation collections


def relax_gc() -> None:
    """Let Python's cyclic garbage collector run its young generation every
    :data:`GC_YOUNG_THRESHOLD` net allocations instead of the default 700
    (:func:`gc.set_threshold`; a higher threshold already set is kept).

    A build allocates steadily (SDK responses, task results). With the default, a 100-story
    build ran ~430 young, ~40 middle and 3 full collections: 0.3 s with the GIL held, the full
    ones stopping every worker thread for up to 45 ms while 8 image calls wait to be answered.
    With 20,000: ~13 young collections, 0.09 s in all, none over ~12 ms (measured on the makespan
    benchmark, ``benchmarks/``). A build's cyclic garbage is small (~20,000 objects in all), so
    collecting it later costs no real memory.
    """
    import gc
    if gc.get_threshold()[0] < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD)


def preload_sdks() -> None:
    """Import the SDKs of the real backends in use and run their ``warm_up``
    (:func:`cloops.services.registry.preload`) before tasks run in worker threads.

    The services the first steps call (depth 0: the LLM for a narrative) are preloaded now, in
    the main thread; the others (image, voice) in a background thread, so importing the image
    SDK overlaps the first LLM calls' network time instead of delaying them. A task that needs
    a service before its preload is done waits for it.
    """
    import threading

    from .services import registry
    proj = current_project()
    if proj is None:
        return
    _book, sealed, items = run_context()
    if items and set(items) <= sealed:
        return  # every selected story is sealed: no task will call a service
    now: dict[str, Any] = {}
    later: dict[str, Any] = {}
    for b in proj.backlogs:
        tpl = proj.template(b.template)
        first = {s.service for s in tpl.steps if s.service and tpl.depth[s.name] == 0}
        for service in sorted({s.service for s in tpl.steps if s.service}):
            spec = proj.resolved(b.template, service).spec
            (now if service in first else later)[spec.name] = spec
    for spec in now.values():
        registry.preload(spec)
    freeze_live_objects()  # the SDK's modules and models, imported just now
    rest = [spec for name, spec in later.items() if name not in now]
    if rest:
        def preload_rest() -> None:
            for spec in rest:
                try:
                    registry.preload(spec)
                except Exception:  # noqa: BLE001 - the backend's first call reports it
                    pass
        threading.Thread(target=preload_rest, name="cloops-preload", daemon=True).start()


def summary_rows() -> list[tuple]:
    """Per (service, backend) totals of this run's calls, from the ledger:
    ``(service, backend, calls, cache hits, retries, "in/out" tokens, images, cost, saved)``."""
    proj = current_project()
    if proj is None:
        return []
    from .services.hub import _HUBS
    hub = _HUBS.get(str(proj.root))
    if hub is None:
        return []
    agg: dict[tuple[str, str], list] = {}
    for c in hub.ledger.calls():
        a = agg.setdefault((c["service"], c["backend"]), [0, 0, 0, 0, 0, 0, 0.0, 0.0])
        a[1 if c["cache_hit"] else 0] += 1
        a[2] += (c["attempts"] or 1) - 1
        a[3] += c["input_tokens"] or 0
        a[4] += c["output_tokens"] or 0
        a[5] += c["images"] or 0
        a[6] += c["cost_usd"] or 0.0
        a[7] += c["saved_usd"] or 0.0
    return [(svc, be, a[0], a[1], a[2], f"{a[3]:,}/{a[4]:,}", a[5], f"{a[6]:.4f}", f"{a[7]:.4f}")
            for (svc, be), a in sorted(agg.items())]


def stale_completed_report() -> list[str]:
    """Lines naming completed stories that a change made stale (they are not rebuilt by
    a bare ``doit``; ``doit build:<id>`` rebuilds one)."""
    proj = current_project()
    if proj is None:
        return []
    from .status import stale_completed
    stale = stale_completed(proj)
    if not stale:
        return []
    lines = [f"[yellow]{len(stale)} completed stories are stale and were not rebuilt[/yellow] "
             "(run `doit build:<id>` to rebuild one):"]
    for key, reasons in stale[:20]:
        lines.append(f"  {key}: {reasons}")
    if len(stale) > 20:
        lines.append(f"  … and {len(stale) - 20} more")
    return lines
