"""Steps: what a template's ``workflow.py`` declares, and the step kinds that run them.

Layer: **graph**. Imports the core, services (request types) and nothing above.

A step is data plus a kind. The engine (:mod:`cloops.graph.engine`) turns each step, for each
story, into one doit task (or one per item when the step has ``foreach``), whose dependencies
are exactly:

- the files named by ``file(...)`` / ``each(...)`` inputs (doit ``file_dep``), plus any the
  kind adds (:meth:`Step.task_files`: a bundle's sources, reference images);
- the values named by ``story(...)``, ``item()`` and ``part(...)`` inputs;
- the template files the kind reads by content (:meth:`Step.template_files`: prompts,
  knowledge, schemas);
- the config values it uses (:meth:`Step.config_paths`: its prompt variables plus ``uses``);
- the backend that serves its service and what the kind adds for it
  (:meth:`Step.dependency_values`: model, params, voice settings, ...), and ``version``.

**A step kind owns its run**, the way a backend owns its calls: a subclass of :class:`Step`,
registered with :func:`step_kind`, whose :meth:`Step.execute` receives a :class:`StepRun` — the
inputs, the context, the service calls bound to this task (:class:`Services`) and the target
writer — and writes its files. The engine and the task runner never ask which kind they hold.
The built-in kinds (``llm``, ``image``, ``voice``, ``assemble``, ``bundle``:
:mod:`cloops.graph.kinds`) register exactly as a template's ``workflow.py`` or a plugin would
(entry-point group ``cloops.step_kinds``, or a module named in ``CLOOPS_PLUGINS``)::

    @step_kind("digest")
    @dataclass(frozen=True)
    class DigestStep(Step):
        def execute(self, job):
            job.write(job.rel, hashlib.sha256(job.inputs["src"].encode()).hexdigest())

Functions given to a step (``user``, ``draft``, ``write``, ``run``, ``annotate``,
``validate``) receive ``(inputs, ctx)``: ``inputs`` maps each input name to its value (file
text, parsed JSON for ``.json`` files, the story field, the foreach item) and ``ctx`` is a
:class:`StepContext`. They must be module-level functions (doit's process mode pickles tasks)
and must not call any SDK: services are reached through :class:`Services` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

from ..core.fileio import canonical_json, sha256_json

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class StoryValue:
    """The backlog item's input (``field=None``: all of it) — a value dependency.

    ``select(value)``: depend on (and receive) only that projection of it, e.g. the input
    without its ``rules`` (a story's own rule then does not re-write its narrative).
    """

    field: str | None = None
    select: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class FileInput:
    """A file in the story's build folder (``{n}`` = the foreach index) — a ``file_dep``."""

    path: str


@dataclass(frozen=True)
class ItemInput:
    """The current foreach item (one page of ``pages.json``) — a value dependency.

    ``select(item)``: depend on (and receive) only that projection of the item, e.g. the
    page's narration: editing the rest of the page does not make the step stale.
    """

    select: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class PartInput:
    """One top-level key of a JSON artifact (``characters`` of ``pages.json``) — a value dependency.

    Only what the key holds matters: editing another part of the file does not make the
    step stale. ``select(value)``: only that projection of it matters (and is received), e.g.
    the number of panels of each page.
    """

    path: str
    key: str
    select: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class EachInput:
    """Every file ``pattern`` for each item of the fan-out its placeholder names
    (``images/{n}.jpg`` for every page, ``cast/{id}.jpg`` for every character) — ``file_dep``
    on all."""

    pattern: str


@dataclass(frozen=True)
class ViewInput:
    """A view of a JSON artifact — a value dependency on ``fn(data, inputs, ctx)`` only.

    ``data`` is the parsed file, ``inputs`` the step's other value inputs (story fields, the
    foreach item, parts), ``ctx`` its :class:`StepContext`. The task is stale only when what
    ``fn`` returns changes: a page prompt that views the appearance of the characters on its
    page is not stale when another character's appearance is edited.
    """

    path: str
    fn: Callable[[Any, dict, "StepContext"], Any]


def story(field: str | None = None, select: Callable[[Any], Any] | None = None) -> StoryValue:
    """Depend on the story input (or one field of it, e.g. ``story("title")``), or on
    ``select(value)`` only (a module-level function: doit's process mode pickles tasks)."""
    return StoryValue(field, select)


def file(path: str) -> FileInput:
    """Depend on a file of the story's build folder, e.g. ``file("narrative.md")``."""
    return FileInput(path)


def item(select: Callable[[Any], Any] | None = None) -> ItemInput:
    """Depend on the current foreach item only (e.g. page n's entry of ``pages.json``), or on
    ``select(item)`` only (a module-level function: doit's process mode pickles tasks)."""
    return ItemInput(select)


def part(path: str, key: str, select: Callable[[Any], Any] | None = None) -> PartInput:
    """Depend on one top-level key of a JSON artifact, e.g. ``part("pages.json", "characters")``,
    or on ``select(value)`` only."""
    return PartInput(path, key, select)


def value_name(inp: ItemInput | PartInput, source: str | None, n: "Key | None" = None) -> str:
    """The name an item or part input's value goes by in a task's dependencies (``doit info``
    shows it): ``pages.json item 2``, ``pages.json characters``, with the ``select``
    function's name when it has one (``pages.json pages (panel_counts)``)."""
    name = (f"{inp.path} {inp.key}" if isinstance(inp, PartInput) else f"{source} item {n}")
    return name + (f" ({getattr(inp.select, '__name__', 'select')})" if inp.select else "")


def selected(inp: ItemInput | PartInput | StoryValue, value: Any) -> Any:
    """``value`` as the input receives it: its ``select`` projection when it has one (None
    stays None: the artifact does not exist yet)."""
    return inp.select(value) if inp.select is not None and value is not None else value


def each(pattern: str) -> EachInput:
    """Depend on one file per foreach item, e.g. ``each("images/{n}.jpg")``."""
    return EachInput(pattern)


@dataclass(frozen=True)
class CollectionInput:
    """A template collection (``templates/<name>/<collection>/*.json``, e.g. the cast library)
    — a value dependency on ``fn(collection)`` (the whole collection when ``fn`` is None)."""

    name: str
    fn: Callable[[dict], Any] | None = None


def view(path: str, fn: Callable[[Any, dict, "StepContext"], Any]) -> ViewInput:
    """Depend on ``fn(data of path, inputs, ctx)`` only, e.g. the cast entries on one page."""
    return ViewInput(path, fn)


def collection(name: str, fn: Callable[[dict], Any] | None = None) -> CollectionInput:
    """Depend on a template collection, or on ``fn`` of it (``collection("cast", roster)``:
    the library's ids and names, not its appearances)."""
    return CollectionInput(name, fn)


Input = StoryValue | FileInput | ItemInput | PartInput | EachInput | ViewInput | CollectionInput

PLACEHOLDERS = {"n": "{n}", "id": "{id}"}
_PLACEHOLDER = re.compile(r"\{[a-z][a-z0-9_]*\}")


@dataclass(frozen=True)
class ForEach:
    """Fan out: one task per element of ``source``'s list at ``key``.

    ``by="n"``: tasks are numbered from 1 and ``{n}`` in paths is the number (pages);
    ``by="id"``: each element's ``id`` (a slug, unique in the list) names its task and ``{id}``
    in paths (characters: ``cast/{id}.jpg``). Each fan-out of a template needs a placeholder of
    its own: a second fan-out by id names another with ``name`` (``name="k"``: ``{k}``, the
    hook lines of ``ads/hooks.json`` in ``ads/hook-{k}.mp4``).

    ``library``: a template collection (``"cast"``: ``templates/<t>/cast/<id>.json``) that
    elements marked ``"library": true`` refer to by id. Every step reading the file's values
    sees such an element as the collection's entry with the element's own fields over it (a
    story may give a library character its own look), and a completed story is reported stale
    when a library entry it uses changes.
    """

    source: str
    key: str
    by: str = "n"
    library: str | None = None
    name: str | None = None

    def __post_init__(self):
        if self.by not in PLACEHOLDERS:
            raise ValueError(f"ForEach(by={self.by!r}): use 'n' (numbered) or 'id'")
        if self.library and self.by != "id":
            raise ValueError("ForEach(library=...) needs by='id': library entries are named by id")
        if self.name is not None and (self.by != "id" or self.name == "n"
                                      or not _PLACEHOLDER.fullmatch("{" + self.name + "}")):
            raise ValueError(f"ForEach(name={self.name!r}) needs by='id' and a lowercase name "
                             "other than 'n' (numbered fan-outs use {n})")

    @property
    def placeholder(self) -> str:
        """``{n}``, ``{id}`` or ``{<name>}``: what stands for the item in this fan-out's paths."""
        return "{" + self.name + "}" if self.name else PLACEHOLDERS[self.by]


def short_value(value: Any) -> str:
    """A dependency value as stored in task state: short scalars verbatim (canonical JSON, at
    most 80 characters), anything else as ``sha256:<16 hex digits>`` of its canonical JSON."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = canonical_json(value)
        if len(text) <= 80:
            return text
    return "sha256:" + sha256_json(value)[:16]


Key = int | str  # a foreach item's key: its number (``{n}``) or its id (``{id}``)


def expand(pattern: str, n: Key | None) -> str:
    """``pattern`` with the item's key in place: ``{n}`` for a number; for an id, the
    pattern's other placeholder (``{id}``, ``{k}``) (unchanged when ``n`` is None)."""
    if n is None:
        return pattern
    if isinstance(n, int):
        return pattern.replace("{n}", str(n))
    ph = next((p for p in _PLACEHOLDER.findall(pattern) if p != "{n}"), None)
    return pattern.replace(ph, n) if ph else pattern


def placeholder_of(pattern: str) -> str | None:
    """The fan-out placeholder a path pattern holds (``{n}``, ``{id}``, ``{k}``), or None."""
    if "{n}" in pattern:
        return "{n}"
    m = _PLACEHOLDER.search(pattern)
    return m.group(0) if m else None


# ---------------------------------------------------------------- context


@dataclass
class StepContext:
    """What a step function may know besides its inputs.

    Attributes:
        template: template name.
        story_id: backlog item id.
        story: the backlog item's input (title, summary, keyMoments, ...).
        config: the template's :class:`cloops.data.config.TemplateConfig`
            (``ctx.config.get("style.artStyle")``).
        n: the foreach item's key — its 1-based number, or its id for a fan-out by id — or
            None.
        count: the number of items of the step's fan-out (e.g. pages), or None.
        story_dir: the story's build folder (``pathlib.Path``; None while dependencies are
            computed, before any run).
        collection: ``collection(name) -> {stem: data}``: the template's JSON files under
            ``<name>/`` (own over its base's), e.g. the cast library ``collection("cast")``.
        template_file: ``template_file(rel) -> Path | None``: a file of the template (own over
            its base's), e.g. a hand-made library sheet ``cast/moses.jpg``.
    """

    template: str
    story_id: str
    story: dict
    config: Any
    n: Key | None
    count: int | None
    story_dir: Any
    collection: Callable[[str], dict] | None = None
    template_file: Callable[[str], Any] | None = None


Fn = Callable[[dict, StepContext], Any]


class Services(Protocol):
    """The service calls a step may make, bound to its task (template, story, step, target):
    every call goes through the run layer's hub (response cache, limits, retries, ledger).

    Implemented by :class:`cloops.run.hub.TaskServices`.
    """

    def backend(self, service: str) -> Any:
        """The backend serving ``service`` (``"llm"``, ``"image"``, ``"voice"``) for this
        template: its ``name``, ``offline`` and, for images, ``uses_annotations``."""

    def complete(self, request: Any, *, accept: Callable[[Any], bool] | None = None) -> Any:
        """Answer an :class:`~cloops.services.base.LLMRequest` with an ``LLMResult``."""

    def cached(self, request: Any) -> Any:
        """The response cache's answer to an ``LLMRequest``, or None: no call is made."""

    def remember(self, request: Any, result: Any) -> None:
        """Cache ``result`` as the answer to ``request`` too (a re-asked step's first question)."""

    def generate_image(self, request: Any) -> Any:
        """Answer an :class:`~cloops.services.base.ImageRequest` with an ``ImageResult``."""

    def synthesize(self, request: Any) -> Any:
        """Answer a :class:`~cloops.services.base.VoiceRequest` with a ``VoiceResult``."""


@dataclass
class StepRun:
    """One task's run, as a step kind sees it.

    Attributes:
        step: the step being run.
        template: the :class:`cloops.data.template.Template`.
        inputs: input name → value (see the module docstring).
        ctx: the :class:`StepContext`.
        services: the service calls bound to this task.
        rel: the step's main target, ``{n}`` expanded (``images/2.jpg``).
        keys: ``keys(placeholder) -> [key, ...]``: the items of a fan-out in this story.
        note: ``note(text)``: a line the run prints under the task's (what a kind chose to do:
            references dropped, a file used instead of a call).
        write: ``write(rel, data, made_by=..., offline=..., source=None)`` writes one target
            atomically, keeping a hand-edited file in history first. ``data``: ``bytes``,
            ``str`` (a trailing newline is added) or JSON-able data (pretty-printed JSON);
            ``made_by``: who made it (``"openai gpt-5.1"``, ``"assembled"``); ``offline``: a
            draft; ``source``: a digest of what it was made from, read back by ``made_from``.
        made_from: ``made_from(rel) -> (source, edited) | None``: the ``source`` recorded
            when cloops last wrote a target, and whether the file changed since.
    """

    step: "Step"
    template: Any
    inputs: dict[str, Any]
    ctx: StepContext
    services: Services
    rel: str
    write: Callable[..., None]
    keys: Callable[[str], list] = lambda placeholder: []
    note: Callable[[str], None] = lambda text: None
    made_from: Callable[[str], tuple[str, bool] | None] = lambda rel: None

    @property
    def story_dir(self) -> Path:
        return self.ctx.story_dir


@dataclass
class DepContext:
    """What :meth:`Step.task_files` and :meth:`Step.dependency_values` may use.

    Attributes:
        template: the :class:`cloops.data.template.Template`.
        backend: the registered :class:`~cloops.services.registry.BackendSpec` serving the
            step's service (``name``, ``offline``), or None for a step that calls none.
        n: the task's foreach key (number or id), or None.
        keys: ``keys(placeholder) -> [key, ...]``: the keys of the fan-out ``{n}`` / ``{id}``
            stands for in this story (empty before its source exists).
        values: ``values() -> (inputs, ctx)``: the step's value inputs (story fields, item,
            parts, views; no files) and a context without a story folder, computed on demand.
        backend_of: ``backend_of(service) -> BackendSpec``: the backend chosen for another
            service of the template (a step whose output depends on whether what it reads was
            made offline, such as a clip drawn from draft pictures); None where the engine
            does not resolve backends (when it works out a task's files).
    """

    template: Any
    backend: Any
    n: Key | None
    keys: Callable[[str], list]
    values: Callable[[], tuple[dict, StepContext]]
    backend_of: Callable[[str], Any] | None = None


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """A step: common fields, and the interface every step kind implements.

    Attributes:
        name: task basename (``prompt`` → ``prompt:<template>/<story>/<n>``).
        target: output path in the story folder; may contain ``{n}``.
        inputs: input name → declaration (:func:`story`, :func:`file`, ...).
        uses: config paths this step reads besides its prompt variables (``settings.pageCount``).
        foreach: fan out over a list of a JSON artifact.
        also: further targets the step writes besides ``target`` (e.g. timings next to audio).
        version: bump to rebuild this step after changing its code in ``workflow.py``.
        doc: one line for ``doit list``.

    Class attributes a kind sets:
        kind: its registered name (set by :func:`step_kind`).
        service: the service it calls (``"llm"``, ``"image"``, ``"voice"``) or None.
        finishes_story: its success completes the story (the bundle): the run then sets the
            story's backlog status.
        copies: its targets are copies of other targets (a bundle): no history, takes or
            hand edits of their own.
        light: its tasks call no service and do a few milliseconds of work on small files
            (checks, assembled JSON): the run executes them on the thread that dispatches
            tasks rather than handing each to a worker thread and back
            (:func:`cloops.run.dispatch.install_inline`). A kind that waits on anything (a
            service, a subprocess, a large copy) leaves it False.
    """

    kind: ClassVar[str] = ""
    service: ClassVar[str | None] = None
    finishes_story: ClassVar[bool] = False
    copies: ClassVar[bool] = False
    light: ClassVar[bool] = False

    name: str
    target: str
    inputs: dict[str, Input] = field(default_factory=dict)
    also: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    foreach: ForEach | None = None
    version: int = 1
    doc: str = ""

    # ------------------------------------------------------------ what the graph asks

    def template_files(self, tpl) -> list[str]:
        """Template files (relative to the template folder) whose content the output depends
        on: prompts, knowledge, schemas. Default: none."""
        return []

    def prompt_variables(self, tpl) -> list[str]:
        """Config paths referenced as ``{a.b}`` in the step's prompts. Default: none."""
        return []

    def config_paths(self, tpl) -> list[str]:
        """The config paths the step depends on: its prompt variables plus ``uses``."""
        paths = list(self.prompt_variables(tpl))
        for p in self.uses:
            if p not in paths:
                paths.append(p)
        return paths

    def reads(self) -> list[str]:
        """Patterns of the story files the step reads (``{n}`` per item): its ``file`` and
        ``each`` inputs, plus what the kind adds."""
        out = [i.path for i in self.inputs.values() if isinstance(i, FileInput)]
        out += [i.pattern for i in self.inputs.values() if isinstance(i, EachInput)]
        return out

    def target_patterns(self) -> list[str]:
        """Every path pattern the step writes, ``{n}`` for the item (``images/{n}.jpg``)."""
        return [self.target, *self.also]

    def files_need_values(self) -> bool:
        """True when :meth:`task_files` reads ``deps.values()`` (which files a task depends
        on follows from values, e.g. the reference sheets of the characters on a page): the
        engine then makes its tasks once the JSON files those values come from exist."""
        return False

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        """``(file_dep, targets)`` of one task, as paths relative to the story folder."""
        files: list[str] = []
        for inp in self.inputs.values():
            if isinstance(inp, FileInput):
                files.append(expand(inp.path, deps.n))
            elif isinstance(inp, EachInput):
                ph = placeholder_of(inp.pattern)
                files += [expand(inp.pattern, k) for k in deps.keys(ph)] if ph else [inp.pattern]
        return files, [expand(t, deps.n) for t in (self.target, *self.also)]

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        """Values besides inputs, prompts and config that the output depends on, by name
        (short strings: :func:`short_value`): model, params, voice
        settings. The backend's name is added by the engine. Default: none."""
        return {}

    def active(self, tpl) -> bool:
        """Whether the step runs in this template's config (a paid judge switched off by
        ``evals.judge.pages``: no task at all, and steps reading its target see None). The
        config values it reads belong in :meth:`config_paths`. Default: always."""
        return True

    def check(self, tpl) -> None:
        """Validate the step against its template at load time.

        Raises:
            InputError: naming the workflow or template file, the field and the fix.
        """

    # ------------------------------------------------------------ what the run asks

    def execute(self, job: StepRun) -> None:
        """Make the step's targets for one task, through ``job.write`` (the kind's run, as
        pydoit's actions own their ``execute``).

        Raises:
            CloopsError: a user error or a service error; the story is marked failed.
        """
        raise NotImplementedError


# ---------------------------------------------------------------- kind registry

_KINDS: dict[str, type[Step]] = {}


def step_kind(name: str) -> Callable[[type[Step]], type[Step]]:
    """Class decorator: register a step kind under ``name`` (a subclass of :class:`Step`
    that defines :meth:`Step.execute`). Registering a name again replaces the kind.

    Raises:
        TypeError: the class is not a Step, or it does not define ``execute``.
    """
    def register(cls: type[Step]) -> type[Step]:
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise TypeError(f"step kind {name!r}: {cls!r} is not a subclass of cloops Step")
        if cls.execute is Step.execute:
            raise TypeError(f"step kind {name!r}: {cls.__name__} does not define execute(job)")
        cls.kind = name
        _KINDS[name] = cls
        return cls
    return register


def registered_kinds() -> dict[str, type[Step]]:
    """Every step kind registered so far, by name (:func:`cloops.graph.kinds.load_kinds`
    also imports the built-ins and plugins)."""
    return dict(_KINDS)


def derive(base: list[Step], *, replace: dict[str, Step] | None = None,
           add: list[Step] | None = None, remove: tuple[str, ...] = ()) -> list[Step]:
    """A variant's steps from its base template's (``BASE_STEPS`` in a child ``workflow.py``).

    ``replace`` swaps steps by name (in place), ``remove`` drops them, ``add`` appends new ones
    before the base's last step when that one finishes the story (a bundle stays last).

    Raises:
        KeyError: ``replace``/``remove`` names a step the base does not have.
    """
    names = {s.name for s in base}
    for n in list(replace or {}) + list(remove):
        if n not in names:
            raise KeyError(f"the base template has no step {n!r}")
    out = [(replace or {}).get(s.name, s) for s in base if s.name not in remove]
    extra = list(add or [])
    if out and out[-1].finishes_story:
        return out[:-1] + extra + out[-1:]
    return out + extra
