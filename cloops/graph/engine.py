"""Turn templates' declared steps into doit tasks.

Layer: **graph**. Per story (``<template>/<id>``):

- static steps (those that do not depend on the fan-out file) become tasks at load time:
  ``narrative:<key>``, ``pages:<key>``;
- for each file the steps fan out over (``pages.json`` by page, ``cast.json`` by character), a
  delayed task creator ``expand-<file>:<key>`` runs once the step writing it ran and creates
  the tasks that need it: ``prompt:<key>/<n>``, ``image:<key>/<n>``, ``sheet:<key>/<id>``,
  ``story-data:<key>``... (``doit list``/``info`` run them at load; they cope with a missing
  file);
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

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from doit import create_after

from ..core.errors import InputError
from ..core.fileio import file_stat, read_text, stat_identity
from ..data.project import Project, StoryRef
from ..data.template import Template
from .locks import is_locked, mark_stale
from .plan import Plan, plan_of, value_paths
from .steps import (CollectionInput, DepContext, ItemInput, Key, PartInput, Step, StepContext,
                    StoryValue, ViewInput, expand, placeholder_of, selected, short_value,
                    value_name)
from .targets import remove_target

INPUTS_KEY = "_cloops_inputs"

# doit's PythonAction captures a task's output by swapping the process-wide sys.stdout and
# sys.stderr for a ``Writer`` that also writes to the stream it found, and puts the old one back
# afterwards (doit 0.37 ``action.py``). Tasks run in threads: one task's Writer is found, wrapped
# and later restored by another, so sys.stderr ends as a chain of Writers as long as the run
# (thousands at 1,000 stories); flushing it at exit overflowed the recursion limit, Python lost
# sys.stderr and exited 120. cloops' actions print nothing (the reporter writes to
# sys.__stdout__/__stderr__ and failures travel as TaskFailed): they need no capture.
UNCAPTURED = {"capture": False}


class Inputs:
    """doit ``uptodate`` checker over a dict of named input values.

    The values (strings) are saved with the task's state when it succeeds; the task is stale
    when any differs from the saved ones. ``changed`` then lists the names that differ
    (``"config style.artStyle"``, ``"file system-prompts/step3-prompts.md"``) so the reporter
    and ``doit info`` can say why.
    """

    # doit asks inspect.signature(checker) of every task's uptodate checker, on every run, to
    # find its magic "task" and "values" arguments (doit/dependency.py get_status); an
    # instance's signature is otherwise rebuilt from its __call__ each time, ~5 % of the
    # engine's time on a 25,000-task build. This is what it finds: __call__'s, without self.
    __signature__ = inspect.Signature([
        inspect.Parameter("task", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("values", inspect.Parameter.POSITIONAL_OR_KEYWORD)])

    def __init__(self, values: dict[str, str] | Callable[[], dict[str, str]],
                 story_dir: str = "", rel: str = ""):
        self._values = values
        self.story_dir = story_dir
        self.rel = rel
        self.changed: list[str] | None = None
        self.locked = False

    @property
    def values(self) -> dict[str, str]:
        """The values, taken on first use (a callable given is called then, once)."""
        return self.take()

    def take(self, seen: Any = None) -> dict[str, str]:
        """:attr:`values`, taken now if not yet; ``seen`` (the task's own view of its story's
        files, a :class:`Sources`) is given to the callable."""
        if callable(self._values):
            self._values = self._values(seen) if seen is not None else self._values()
        return self._values

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
            _UNTAKEN.pop(task.name, None)  # taken: nothing for take_values to do
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


def task_name(step: Step, story: StoryRef, n: Key | None) -> str:
    """``<step>:<template>/<id>[/<n or item id>]``."""
    return f"{step.name}:{story.key}" + (f"/{n}" if n is not None else "")


def creator_name(source: str, story: StoryRef) -> str:
    """The delayed task creator of a story's fan-out over ``source``: ``expand-pages:<key>``."""
    stem = source.rsplit(".", 1)[0].replace("/", "-")
    return f"expand-{stem}:{story.key}"


def check_name(source: str, story: StoryRef) -> str:
    """The task that fails a story whose fan-out source cannot be read: ``check-pages:<key>``."""
    return "check" + creator_name(source, story)[len("expand"):]


_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


_UNCHECKED = object()  # no fan-out check kept for a text yet (Sources._error_of)
_TEXTS: dict[str, tuple[tuple, str]] = {}  # path -> (identity, text): see _read_text
_TEXTS_MAX = 512
_TEXTS_MAX_BYTES = 1 << 20


def _read_text(full: str, st: os.stat_result) -> str:
    """The UTF-8 text of the file ``full``, whose ``stat`` is ``st``: read once while its
    identity (inode, size, mtime, ctime) stays the same. A story's plan is read by ~20 of its
    tasks, each parsing its own copy (a task may change what it parsed), but the file is
    opened once. Targets are replaced by rename, so a rewrite is a new inode.

    Raises:
        FileNotFoundError: the file went away after ``st`` was taken.
        UnicodeDecodeError: the file is not UTF-8.
    """
    ident = stat_identity(st)
    hit = _TEXTS.get(full)
    if hit is not None and hit[0] == ident:
        return hit[1]
    text = read_text(full)
    if st.st_size <= _TEXTS_MAX_BYTES:
        if len(_TEXTS) >= _TEXTS_MAX:
            try:  # drop the oldest (dicts keep insertion order); threads may race: harmless
                del _TEXTS[next(iter(_TEXTS))]
            except (KeyError, StopIteration, RuntimeError):
                pass
        _TEXTS[full] = (ident, text)
    return text


class Sources:
    """The JSON artifacts one story's tasks read values from or fan out over.

    Each file is parsed once per content (re-read when its size or mtime changes: a task of
    this run may rewrite it before a later task's values are taken). A file that does not
    exist yet has no data and no items.
    """

    def __init__(self, tpl: Template, story_dir: Path, *, snapshot: bool = False):
        """``snapshot``: a file read once is not looked at again (one task's view of its
        inputs: consistent while it runs, and no ``stat`` per question - a task asks ~10)."""
        self.tpl = tpl
        self.dir = story_dir
        self._dir = str(story_dir)
        self._snapshot = snapshot
        # path -> (the file's stat_identity when parsed, data, error); ("error", path) -> the
        # fan-out check of that data
        self._cache: dict[Any, tuple[Any, Any, str | None]] = {}
        self.memo: dict[str, Any] = {}  # what callers derive from the files (see stamps)

    def stamps(self, paths) -> tuple:
        """The ``[size, mtime]`` of each of ``paths`` now (None: absent,
        :func:`cloops.core.fileio.file_stat`): what a value derived from them is derived from."""
        return tuple(file_stat(os.path.join(self._dir, p)) for p in paths)

    def _load(self, path: str) -> tuple[Any, str | None]:
        if self._snapshot:
            hit = self._cache.get(path)
            if hit is not None:
                return hit[1], hit[2]
        full = os.path.join(self._dir, path)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        ident = stat_identity(st)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == ident:
            return hit[1], hit[2]
        data, error = None, None
        try:
            data = json.loads(_read_text(full, st))
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError as exc:
            error = str(InputError(
                f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
                file=full, fix="correct your edit (it is kept as you wrote it), or delete "
                                "the file to have it regenerated."))
        self._cache[path] = (ident, data, error)
        return data, error

    def data(self, path: str) -> Any:
        """The parsed JSON of ``path`` (relative to the story folder), or None. The items of a
        fan-out with a ``library`` come resolved: an item marked ``"library": true`` is the
        library entry with the item's own fields over it (see :class:`ForEach`)."""
        data, error = self._load(path)
        return self._data_of(path, data, error)

    def _data_of(self, path: str, data: Any, error: str | None) -> Any:
        fan = plan_of(self.tpl).fanouts.get(path)
        if data is None or fan is None or fan.library is None or error is not None \
                or self._error_of(path, data, error):
            return data
        return self._resolved(path, data, fan)

    def _resolved(self, path: str, data: dict, fan) -> dict:
        # kept with the parsed object it was made from (not the file's stamp: a thread may
        # have parsed a newer version meanwhile)
        key = ("resolved", path)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is data:
            return hit[1]
        library = self.tpl.collection(fan.library)
        items = [resolve_entry(i, library) for i in data[fan.key]]
        out = {**data, fan.key: items}
        self._cache[key] = (data, out, None)
        return out

    def library_refs(self, source: str) -> list[str]:
        """Ids of the items of ``source`` that refer to its fan-out's library."""
        data, _ = self._load(source)
        fan = plan_of(self.tpl).fanouts.get(source)
        if fan is None or fan.library is None or not isinstance(data, dict):
            return []
        items = data.get(fan.key)
        return [i["id"] for i in items if isinstance(i, dict) and i.get("library")] \
            if isinstance(items, list) else []

    def error(self, path: str) -> str | None:
        """Why ``path`` cannot be used (bad JSON, or for a fan-out source no list of objects at
        its key, or ids that are not unique slugs), or None."""
        data, error = self._load(path)
        return self._error_of(path, data, error)

    def _error_of(self, path: str, data: Any, error: str | None) -> str | None:
        """:meth:`error` for what :meth:`_load` gave (checked once per parse: the result is
        kept with the parsed object it belongs to)."""
        if error is not None or data is None:
            return error
        fan = plan_of(self.tpl).fanouts.get(path)
        if fan is None:
            return None
        key = ("error", path)
        hit = self._cache.get(key)
        if hit is not None and hit[1] is data:
            return hit[2]
        # the same text checked by another task's view: its answer (kept with the template,
        # whose library the check reads)
        parsed = self._cache.get(path)
        ident = parsed[0] if parsed is not None and parsed[1] is data else None
        known = self.tpl.memo.setdefault("fan errors", {})
        seen = (self._dir, path, ident)
        found = known.get(seen, _UNCHECKED) if ident is not None else _UNCHECKED
        if found is _UNCHECKED:  # (one look-up: another thread may clear the dict meanwhile)
            found = self._fan_error(path, data, fan)
            if ident is not None:
                if len(known) >= 4096:
                    known.clear()
                known[seen] = found
        self._cache[key] = (None, data, found)
        return found

    def _fan_error(self, path: str, data: Any, fan) -> str | None:
        full = os.path.join(self._dir, path)
        items = data.get(fan.key) if isinstance(data, dict) else None
        if not (isinstance(items, list) and all(isinstance(i, dict) for i in items)):
            return str(InputError(f"has no list of objects at '{fan.key}'.", file=full,
                                  field=fan.key, fix="correct your edit, or delete the file to "
                                                     "have it regenerated."))
        if fan.by == "id":
            ids = [i.get("id") for i in items]
            bad = next((i for i in ids if not isinstance(i, str) or not _SLUG.match(i)), None)
            if bad is not None or len(set(ids)) != len(ids):
                what = (f"id {bad!r} is not a slug ([a-z0-9-])" if bad is not None or None in ids
                        else "two entries share an id")
                return str(InputError(f"{what}.", file=full, field=f"{fan.key}[].id",
                                      fix="give every entry a unique id of lowercase letters, "
                                          "digits and dashes."))
        if fan.library:
            library = self.tpl.collection(fan.library)
            for i in items:
                if i.get("library") and i["id"] not in library:
                    where = self.tpl.dir / fan.library / f"{i['id']}.json"
                    return str(InputError(
                        f"entry {i['id']!r} is marked \"library\": true but the library has no "
                        f"{i['id']!r}.", file=full, field=f"{fan.key}[{i['id']}].library",
                        fix=f"add {where}, or remove \"library\" and give the entry its own "
                            "fields."))
        return None

    def require(self, paths: list[str]) -> None:
        """Raise the error of the first of ``paths`` that exists but cannot be used: a step
        must not run on values of a file a person broke (it is kept as they wrote it).

        Raises:
            InputError: naming the file and the fix.
        """
        for path in paths:
            error = self.error(path)
            if error is not None:
                raise InputError(error)

    def items(self, source: str) -> list[dict] | None:
        """The fan-out's items, or None when the file is missing or unusable."""
        data, error = self._load(source)  # one stat for the check and the data
        if self._error_of(source, data, error) is not None:
            return None
        data = self._data_of(source, data, error)
        return None if data is None else data[plan_of(self.tpl).fanouts[source].key]

    def keys(self, source: str | None) -> list[Key]:
        """The fan-out's keys: 1..count, or the items' ids (empty when not known yet)."""
        items = self.items(source) if source else None
        if not items:
            return []
        if plan_of(self.tpl).fanouts[source].by == "id":
            return [i["id"] for i in items]
        return list(range(1, len(items) + 1))

    def item(self, source: str, key: Key | None) -> dict | None:
        """One item by its key (number or id), or None."""
        items = self.items(source)
        if not items or key is None:
            return None
        if isinstance(key, int):
            return items[key - 1] if 1 <= key <= len(items) else None
        return next((i for i in items if i.get("id") == key), None)

    def keys_of(self, placeholder: str | None) -> list[Key]:
        """The keys of the fan-out ``placeholder`` (``{n}``, ``{id}``) stands for."""
        return self.keys(plan_of(self.tpl).source_of(placeholder) if placeholder else None)


def resolve_entry(item: dict, library: dict[str, dict]) -> dict:
    """A fan-out item with its library entry under it when it is marked ``"library": true``:
    ``{**library[id], **item}`` (the item's own fields win), else the item."""
    if not item.get("library"):
        return item
    base = library.get(item.get("id"), {})
    return {**base, **item}


def step_context(tpl: Template, step: Step, story_id: str, story_input: dict, n: Key | None,
                 sources: Sources | None, story_dir: Path | None) -> StepContext:
    """The :class:`StepContext` of one task (``count``: the items of its own fan-out)."""
    count = None
    if step.foreach is not None and sources is not None:
        count = len(sources.keys(step.foreach.source)) or None
    return StepContext(template=tpl.name, story_id=story_id, story=story_input,
                       config=tpl.config, n=n, count=count, story_dir=story_dir,
                       collection=tpl.collection, template_file=tpl.template_file)


def value_inputs(tpl: Template, step: Step, story_input: dict, n: Key | None,
                 sources: Sources | None, ctx: StepContext | None = None) -> dict[str, Any]:
    """The step's value inputs (story fields, item, parts, views) — no files."""
    out: dict[str, Any] = {}
    views = []
    for name, inp in step.inputs.items():
        if isinstance(inp, StoryValue):
            out[name] = selected(inp, story_input if inp.field is None
                                 else story_input.get(inp.field))
        elif isinstance(inp, ItemInput):
            out[name] = selected(inp, sources.item(step.foreach.source, n)
                                 if sources and step.foreach else None)
        elif isinstance(inp, PartInput):
            data = sources.data(inp.path) if sources else None
            out[name] = selected(inp, data.get(inp.key) if isinstance(data, dict) else None)
        elif isinstance(inp, ViewInput):
            views.append((name, inp))
        elif isinstance(inp, CollectionInput):
            found = tpl.collection(inp.name)
            out[name] = inp.fn(found) if inp.fn else found
    if views:
        ctx = ctx or step_context(tpl, step, "", story_input, n, sources, None)
        plain = dict(out)
        for name, inp in views:
            data = sources.data(inp.path) if sources else None
            out[name] = None if data is None else inp.fn(data, plain, ctx)
    return out


def _step_constants(tpl: Template, step: Step) -> dict[str, str]:
    """The story-independent values of a step: its version, its template files' digests and
    its config values - the same for every task of the process (the template's texts and
    config are read once per process), so made once (kept in the template's memo)."""
    key = ("step constants", step.name)
    found = tpl.memo.get(key)
    if found is None:
        found = {"step version": str(step.version)}
        for rel in step.template_files(tpl):
            found[f"file {rel}"] = tpl.digest(rel)
        for path in step.config_paths(tpl):
            found[f"config {path}"] = short_value(tpl.config.get(path))
        tpl.memo[key] = found
    return found


def step_values(proj: Project, tpl: Template, step: Step, story: StoryRef, item_input: dict,
                n: Key | None, sources: Sources | None) -> dict[str, str]:
    """Every non-file input of one task, by name, as short strings (see :class:`Inputs`)."""
    values = dict(_step_constants(tpl, step))
    ctx = step_context(tpl, step, story.id, item_input, n, sources, None)
    have = value_inputs(tpl, step, item_input, n, sources, ctx)
    for name, inp in step.inputs.items():
        if isinstance(inp, StoryValue):
            values[f"story {inp.field or 'input'}"] = short_value(have[name])
        elif isinstance(inp, ItemInput):
            values[value_name(inp, step.foreach.source if step.foreach else "-", n)] = \
                short_value(have[name])
        elif isinstance(inp, PartInput):
            values[value_name(inp, None)] = short_value(have[name])
        elif isinstance(inp, ViewInput):
            values[f"{inp.path} view {name}"] = short_value(have[name])
        elif isinstance(inp, CollectionInput):
            values[f"collection {inp.name} {name}"] = short_value(have[name])
    spec = None
    if step.service:
        spec = proj.resolved(tpl.name, step.service).spec
        values[f"{step.service} backend"] = spec.name
    keys = sources.keys_of if sources is not None else (lambda ph: [])
    values.update(step.dependency_values(DepContext(
        tpl, spec, n, keys, lambda: (have, ctx),
        lambda service: proj.resolved(tpl.name, service).spec)))
    return values


# The Inputs of tasks made in this process whose values were not taken yet, by task name.
# doit takes a task's values when it saves the task's success, on its main thread - the one
# that also starts every task - so a worker thread takes them instead as its action ends
# (take_values): the same files, read a moment earlier, off doit's critical path.
_UNTAKEN: dict[str, Inputs] = {}


def take_values(task: str, sources: Sources | None = None) -> None:
    """Take the input values of task ``task`` (a task name, :func:`task_name`) now, in the
    calling thread, for doit to save when it records the task's success - from ``sources``,
    the files as the task read them, when given; nothing when they were taken already (an
    up-to-date check that compared them) or the task is not known."""
    inputs = _UNTAKEN.pop(task, None)
    if inputs is not None:
        inputs.take(sources)


def _producer_task(plan: Plan, story: StoryRef, path: str) -> str | None:
    prod = plan.producer_of(path)
    return None if prod is None else task_name(prod, story, None)


def _inactive_targets(plan: Plan, sources: Sources | None,
                      keys: Callable[[str], list]) -> set[str]:
    """The story's files the switched-off steps would make (for its fan-outs' items as they
    are now): the same for every task a creator makes, so kept with ``sources`` while its
    fan-out files are as they were read."""
    stamps = sources.stamps(plan.fanouts) if sources is not None else None
    hit = sources.memo.get("inactive targets") if sources is not None else None
    if hit is not None and hit[0] == stamps:
        return hit[1]
    off = {expand(p, k) for s in plan.steps if s.name in plan.inactive
           for p in s.target_patterns()
           for k in (keys(placeholder_of(p)) if placeholder_of(p) else [None])}
    if sources is not None:  # under the stamps taken before the files were read
        sources.memo["inactive targets"] = (stamps, off)
    return off


def _joined(base: str, rel: str) -> str:
    """``str(Path(base) / rel)`` - the name doit knows a file by - without building paths for
    the plain relative names steps declare (every task names several); anything else (an
    absolute name, ``./``, ``//``, a trailing slash) goes through ``pathlib`` as before."""
    if rel and rel[0] != "/" and base not in ("", ".") and "//" not in rel and \
            "/./" not in rel and not rel.startswith("./") and not rel.endswith(("/", "/.")) \
            and rel != ".":
        return f"{base}/{rel}"
    return str(Path(base) / rel)


def make_task(proj: Project, tpl: Template, step: Step, story: StoryRef, story_input: dict,
              n: Key | None, sources: Sources | None, actions: Actions, *,
              made_by: str | None = None) -> dict:
    """The doit task dict for one step of one story (``n``: foreach key; ``made_by``: the
    fan-out source whose creator makes it, default the plan's).

    Its value dependencies are taken when doit checks whether the task is up to date (after
    the tasks it depends on ran), not when it is made: a task made before ``cast.json`` is
    rewritten in this run sees the new file.
    """
    plan = plan_of(tpl)
    sdir = proj.story_dir(tpl.name, story.id)
    rel_root = sdir.relative_to(proj.root)
    keys = sources.keys_of if sources is not None else (lambda ph: [])

    def values_now() -> tuple[dict, StepContext]:
        ctx = step_context(tpl, step, story.id, story_input, n, sources, None)
        return value_inputs(tpl, step, story_input, n, sources, ctx), ctx

    deps, outs = step.task_files(DepContext(tpl, None, n, keys, values_now))
    if plan.inactive:  # what a switched-off step would make is not waited for
        off = _inactive_targets(plan, sources, keys)
        deps = [d for d in deps if d not in off]
    base = str(rel_root)
    file_dep = [_joined(base, d) for d in deps]
    targets = [_joined(base, t) for t in outs]
    task_dep: list[str] = []
    for src in value_paths(step, step.foreach.source if step.foreach else None):
        prod = _producer_task(plan, story, src)
        if prod and prod not in task_dep:
            task_dep.append(prod)
    creator = made_by or plan.creator.get(step.name)
    for src in plan.needs.get(step.name, []):
        if src != creator:  # its tasks need another fan-out's tasks: wait for all of them
            task_dep.append(creator_name(src, story))
    count = len(sources.keys(step.foreach.source)) if sources and step.foreach else None
    label = f"{story.key}" + (f" #{n}" if n is not None else "")
    name = task_name(step, story, n)
    # seen: the task's own view of the story's files (take_values), for the creator's view
    inputs = Inputs(lambda seen=None: step_values(
        proj, tpl, step, story, story_input, n,
        seen if seen is not None and sources is not None else sources), str(sdir), outs[0])
    _UNTAKEN[name] = inputs
    return {
        "basename": name,
        "doc": f"{step.doc or step.name} ({label})",
        "actions": [(actions.run, [str(proj.root), tpl.name, story.id, step.name, n, count])],
        "file_dep": file_dep,
        "task_dep": task_dep,
        "targets": targets,
        "uptodate": [inputs],
        "clean": [(clean_task, [str(sdir), outs])],
        "verbosity": 1,
        "io": UNCAPTURED,
    }


def clean_task(story_dir: str, rels: list[str]) -> None:
    """``doit clean`` action: remove a task's targets, keeping hand-edited ones in history."""
    for rel in rels:
        remove_target(Path(story_dir), rel)


def wanted_steps(tpl: Template, dry: bool) -> list[Step]:
    """The steps a run creates tasks for: the active ones (:attr:`Plan.inactive`), and for a
    dry run those outside :attr:`Plan.media` (no image or voice call, nothing that reads their
    output)."""
    plan = plan_of(tpl)
    off = plan.media | plan.inactive if dry else plan.inactive
    return [s for s in tpl.steps if s.name not in off]


def static_tasks(proj: Project, tpl: Template, story: StoryRef, story_input: dict,
                 actions: Actions, dry: bool) -> Iterator[dict]:
    """The tasks of a story's steps that need no fan-out source to be made."""
    plan = plan_of(tpl)
    sources = Sources(tpl, proj.story_dir(tpl.name, story.id))
    for step in wanted_steps(tpl, dry):
        if step.name not in plan.dynamic:
            yield make_task(proj, tpl, step, story, story_input, None, sources, actions)


def dynamic_tasks(proj: Project, tpl: Template, story: StoryRef, story_input: dict,
                  source: str, actions: Actions, dry: bool,
                  deferred: set[tuple[str, str]] | None = None) -> Iterator[dict]:
    """The tasks the creator of ``source`` makes: those of the steps made once it exists
    (:attr:`Plan.creator`); none but the group when it does not exist yet.

    ``deferred``: the run's ``(story key, step name)`` of steps a creator could not make yet
    because another fan-out source they need was not written; the creator of that source
    makes them (doit runs a process's creators one at a time, in its main thread)."""
    deferred = set() if deferred is None else deferred
    plan = plan_of(tpl)
    sources = Sources(tpl, proj.story_dir(tpl.name, story.id))
    # a step is made by the creator of the source its producer writes last (plan.creator);
    # when that creator ran before another source the step needs was written (two producers
    # the graph does not order: the CTA lines and the page plan), the creator of that other
    # source makes it once it runs
    steps = [s for s in wanted_steps(tpl, dry) if plan.creator.get(s.name) == source
             or (source in plan.needs.get(s.name, ()) and (story.key, s.name) in deferred)]
    names: list[str] = []
    errors = {src: sources.error(src) for s in steps for src in plan.needs[s.name]}
    errors = {src: e for src, e in errors.items() if e}
    if errors:
        # no task that needs an unreadable file can be made: one that fails the story
        name = check_name(source, story)
        names.append(name)
        bad = next(iter(errors))
        yield {"basename": name, "doc": f"{bad} of {story.key} is unreadable",
               "actions": [(actions.fail, [str(proj.root), tpl.name, story.id,
                                           f"{story.key}: {errors[bad]}"])],
               "verbosity": 1, "io": UNCAPTURED}
    elif sources.items(source) is not None:
        for step in steps:
            if not all(sources.items(src) is not None for src in plan.needs[step.name]):
                # another file it fans out over is not written yet: its creator makes it
                deferred.add((story.key, step.name))
                continue
            deferred.discard((story.key, step.name))
            for n in (sources.keys(step.foreach.source) if step.foreach else [None]):
                t = make_task(proj, tpl, step, story, story_input, n, sources, actions,
                              made_by=source)
                names.append(t["basename"])
                yield t
    yield {"basename": creator_name(source, story), "actions": None, "task_dep": names,
           "doc": f"tasks of {story.key} per item of {source}"}


def delayed_creator(proj: Project, tpl: Template, story: StoryRef, story_input: dict,
                    source: str, actions: Actions, dry: bool,
                    deferred: set[tuple[str, str]] | None = None):
    """The creator of a story's tasks per item of ``source``: run by doit once the step that
    writes ``source`` ran. ``deferred`` is shared by one run's creators (see
    :func:`dynamic_tasks`)."""
    def creator():
        yield from dynamic_tasks(proj, tpl, story, story_input, source, actions, dry,
                                 deferred)
    creator.__doc__ = f"tasks of {story.key} per item of {source}"
    return create_after(executed=_producer_task(plan_of(tpl), story, source))(creator)


def group_deps(tpl: Template, story: StoryRef, *, dry: bool) -> list[str]:
    """The tasks a story's ``build:<key>`` (or ``dry:<key>``) group waits for: its static
    steps and the creator of each fan-out."""
    plan = plan_of(tpl)
    deps = [task_name(s, story, None) for s in wanted_steps(tpl, dry) if s.name not in plan.dynamic]
    return deps + [creator_name(src, story) for src in plan.live_fanouts]


def story_tasks(proj: Project, stories: list[tuple[StoryRef, Any]], sealed: set[str],
                actions: Actions, dry: bool) -> dict[str, Any]:
    """doit task creators for ``stories`` (``[(ref, backlog item)]``, in backlog order).

    Returns ``{name: creator}`` for a dodo namespace: ``task_steps`` (every static task),
    ``task_expand-<source>:<key>`` (a delayed creator per story and fan-out), ``task_build``,
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

    deferred: set[tuple[str, str]] = set()  # one run's: the steps a creator left to another
    for ref, it in checked:
        tpl = proj.template(ref.template)
        for source in plan_of(tpl).live_fanouts:
            ns[f"task_{creator_name(source, ref)}"] = delayed_creator(
                proj, tpl, ref, it.input, source, actions, dry, deferred)

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
