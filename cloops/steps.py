"""What a template's ``workflow.py`` declares: its steps, their inputs and outputs.

A step is data. The engine (:mod:`cloops.engine`) turns each step, for each story, into one doit
task (or one per item when the step has ``foreach``), whose dependencies are exactly:

- the files named by ``file(...)`` / ``each(...)`` inputs (doit ``file_dep``),
- the values named by ``story(...)``, ``item()`` and ``part(...)`` inputs,
- the step's prompt, knowledge and schema files, by content,
- the config values its prompts reference (``{style.artStyle}``) plus those listed in ``uses``,
- the backend and model that serve it, and the step's ``version``.

Functions given to a step (``user``, ``draft``, ``write``, ``run``, ``annotate``, ``validate``)
receive ``(inputs, ctx)``: ``inputs`` maps each input name to its value (file text, parsed JSON
for ``.json`` files, the story field, the foreach item) and ``ctx`` is a :class:`StepContext`.
They must be module-level functions (doit's process mode pickles tasks) and must not call any
SDK: services are the engine's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class StoryValue:
    """The backlog item's input (``field=None``: all of it) — a value dependency."""

    field: str | None = None


@dataclass(frozen=True)
class FileInput:
    """A file in the story's build folder (``{n}`` = the foreach index) — a ``file_dep``."""

    path: str


@dataclass(frozen=True)
class ItemInput:
    """The current foreach item (one page of ``pages.json``) — a value dependency."""


@dataclass(frozen=True)
class PartInput:
    """One top-level key of a JSON artifact (``characters`` of ``pages.json``) — a value dependency.

    Only what the key holds matters: editing another part of the file does not make the
    step stale.
    """

    path: str
    key: str


@dataclass(frozen=True)
class EachInput:
    """Every file ``pattern`` for n = 1..item count (``images/{n}.jpg``) — ``file_dep`` on all."""

    pattern: str


def story(field: str | None = None) -> StoryValue:
    """Depend on the story input (or one field of it, e.g. ``story("title")``)."""
    return StoryValue(field)


def file(path: str) -> FileInput:
    """Depend on a file of the story's build folder, e.g. ``file("narrative.md")``."""
    return FileInput(path)


def item() -> ItemInput:
    """Depend on the current foreach item only (e.g. page n's entry of ``pages.json``)."""
    return ItemInput()


def part(path: str, key: str) -> PartInput:
    """Depend on one top-level key of a JSON artifact, e.g. ``part("pages.json", "characters")``."""
    return PartInput(path, key)


def each(pattern: str) -> EachInput:
    """Depend on one file per foreach item, e.g. ``each("images/{n}.jpg")``."""
    return EachInput(pattern)


Input = StoryValue | FileInput | ItemInput | PartInput | EachInput


@dataclass(frozen=True)
class ForEach:
    """Fan out: one task per element of ``source``'s list at ``key`` (``{n}`` is 1-based)."""

    source: str
    key: str


# ---------------------------------------------------------------- context


@dataclass
class StepContext:
    """What a step function may know besides its inputs.

    Attributes:
        template: template name.
        story_id: backlog item id.
        story: the backlog item's input (title, summary, keyMoments, ...).
        config: the template's :class:`cloops.config.TemplateConfig` (``ctx.config.get("style.artStyle")``).
        n: the 1-based foreach index, or None.
        count: the number of foreach items (e.g. pages), or None.
        story_dir: the story's build folder (``pathlib.Path``).
    """

    template: str
    story_id: str
    story: dict
    config: Any
    n: int | None
    count: int | None
    story_dir: Any


Fn = Callable[[dict, StepContext], Any]

# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """Common fields of every step.

    Attributes:
        name: task basename (``prompt`` → ``prompt:<template>/<story>/<n>``).
        target: output path in the story folder; may contain ``{n}``.
        inputs: input name → declaration (:func:`story`, :func:`file`, ...).
        uses: config paths this step reads besides its prompt variables (``settings.pageCount``).
        foreach: fan out over a list of a JSON artifact.
        also: further targets the step writes besides ``target`` (e.g. timings next to audio).
        version: bump to rebuild this step after changing its code in ``workflow.py``.
        doc: one line for ``doit list``.
    """

    name: str
    target: str
    inputs: dict[str, Input] = field(default_factory=dict)
    also: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    foreach: ForEach | None = None
    version: int = 1
    doc: str = ""

    service: str | None = None  # "llm" | "image" | "voice" | None (no service call)


@dataclass(frozen=True)
class LLMStep(Step):
    """A call to the LLM service.

    Attributes:
        system_prompt: file under ``system-prompts/``.
        user: ``user(inputs, ctx) -> str``, the user message.
        schema: file under ``schemas/`` for a strict structured output, or None for text.
        knowledge: files appended to the system prompt inside ``<knowledge>`` tags.
        draft: ``draft(inputs, ctx) -> output`` for the offline backend: must be schema-valid.
        validate: ``validate(data, inputs, ctx) -> list[str]`` extra checks beyond the schema
            (e.g. page count within config); errors are sent back to the model to fix.
        write: ``write(data, inputs, ctx) -> str | bytes | dict`` what the target holds; default:
            the text, or the JSON data pretty-printed.
        settings: key under ``llm.steps`` for model/reasoning/verbosity overrides (default: name).
    """

    system_prompt: str = ""
    user: Fn | None = None
    schema: str | None = None
    knowledge: tuple[str, ...] = ()
    draft: Fn | None = None
    validate: Callable[[Any, dict, StepContext], list[str]] | None = None
    write: Callable[[Any, dict, StepContext], Any] | None = None
    settings: str | None = None
    service: str | None = "llm"


@dataclass(frozen=True)
class ImageStep(Step):
    """A call to the image service.

    Attributes:
        prompt: the input holding the image prompt text (default: input named ``prompt``).
        params_override: config path of a dict merged over ``generation.params``
            (``thumbnail.params`` for a square cover).
        annotate: ``annotate(inputs, ctx) -> dict`` context for backends that draw text
            themselves (the offline storyboard); a dependency only for those backends.
    """

    prompt: str = "prompt"
    params_override: str | None = None
    annotate: Fn | None = None
    service: str | None = "image"


@dataclass(frozen=True)
class VoiceStep(Step):
    """A call to the voice service: speak a script into ``target`` (an MP3).

    Attributes:
        segments: ``segments(inputs, ctx) -> list[str]`` the texts to speak, in order (one per
            page); their start/end seconds are written to ``also[0]`` as
            ``{"durationS": float, "segments": [{"startS", "endS", "text"}]}``.
    """

    segments: Fn | None = None
    service: str | None = "voice"


@dataclass(frozen=True)
class AssembleStep(Step):
    """No service call: ``run(inputs, ctx) -> str | bytes | dict`` makes the target."""

    run: Fn | None = None


@dataclass(frozen=True)
class BundleStep(Step):
    """Copy deliverables into a folder that holds them and nothing else.

    Attributes:
        target: the bundle folder (``bundle``).
        files: bundle file name → source file in the story folder; ``{n}`` in both expands over
            the foreach items (``{"{n}.jpg": "images/{n}.jpg"}``).
    """

    files: dict[str, str] = field(default_factory=dict)


def derive(base: list[Step], *, replace: dict[str, Step] | None = None,
           add: list[Step] | None = None, remove: tuple[str, ...] = ()) -> list[Step]:
    """A variant's steps from its base template's (``BASE_STEPS`` in a child ``workflow.py``).

    ``replace`` swaps steps by name (in place), ``remove`` drops them, ``add`` appends new ones
    before the base's last step when that is a :class:`BundleStep` (so the bundle stays last).

    Raises:
        KeyError: ``replace``/``remove`` names a step the base does not have.
    """
    names = {s.name for s in base}
    for n in list(replace or {}) + list(remove):
        if n not in names:
            raise KeyError(f"the base template has no step {n!r}")
    out = [(replace or {}).get(s.name, s) for s in base if s.name not in remove]
    extra = list(add or [])
    if out and isinstance(out[-1], BundleStep):
        return out[:-1] + extra + out[-1:]
    return out + extra
