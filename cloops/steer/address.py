"""Addressing targets and stories as a person types them.

Layer: **steer**. :func:`resolve` turns a path (``build/comic-books-standard/noah-s-ark/
images/2.jpg``), a story key (``comic-books-standard/noah-s-ark``) or a bare story id when only
one template has it into an :class:`Address`: template, story, target ``rel``, step, page ``n``
and doit task name, using the template's declared target patterns (``images/{n}.jpg``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError
from ..data.project import BUILD_DIR, Project, StoryRef
from ..graph.engine import task_name
from ..graph.steps import Key, Step, expand


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
    n: Key | None = None

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
    def is_copy(self) -> bool:
        """The target is a copy another step makes (a file in the bundle)."""
        return self.step is not None and self.step.copies

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
    """A target pattern as a regex: ``{n}`` a page number, any other ``{x}`` an item's id."""
    rx = re.escape(pattern).replace(r"\{n\}", r"([1-9][0-9]*)")
    return re.compile(re.sub(r"\\\{[a-z][a-z0-9_]*\\\}", r"([a-z0-9][a-z0-9-]*)", rx) + r"\Z")


def step_patterns(step: Step) -> list[str]:
    """Every target pattern of a step, ``{n}`` for the page (bundle: its folder and files)."""
    return step.target_patterns()


def match_target(proj: Project, template: str, rel: str) -> tuple[Step, Key | None] | None:
    """The step of ``template`` whose target patterns match ``rel``, and the item key (page
    number or id)."""
    for step in proj.template(template).steps:
        for pat in step_patterns(step):
            m = _pattern(pat).match(rel)
            if m:
                if not m.groups():
                    return step, None
                return step, int(m.group(1)) if "{n}" in pat else m.group(1)
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
    if addr.is_copy:
        raise InputError(f"{addr.shown} is a copy in the bundle: {what} works on its source.",
                         fix="name the file the bundle copies (images/<n>.jpg, thumbnail.jpg, "
                             "story-data.json).")
    return addr
