"""The project: its root folder, environment, backlogs and the templates they use.

Layer: **data**.

Loaded once per process (doit imports ``dodo.py`` once per run), cheaply: templates are loaded
only when a backlog names them, SDKs only when a backend is constructed.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from . import backlog as backlog_mod
from .backlog import Backlog, Item
from ..core.errors import InputError
from ..services import registry
from .template import Template, load_template

BUILD_DIR = "build"
STATE_DIR = "build/.cloops"


def read_env(root: Path) -> dict[str, str]:
    """The process environment over the project's ``.env`` (the environment wins).

    ``.env`` is read with python-dotenv and never written anywhere by cloops.
    """
    env: dict[str, str] = {}
    dotenv = root / ".env"
    if dotenv.is_file():
        from dotenv import dotenv_values
        env.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    env.update(os.environ)
    return env


class StoryRef:
    """One story of one template: what a task needs to find its inputs.

    Attributes:
        template: the template's folder name.
        id: the backlog item's id.
        backlog_path: the backlog file holding the item.
        key: ``"<template>/<id>"``, the story's name in task names.

    Immutable and hashable; a plain slotted class because start-up makes one per backlog item
    (10,000 of them in a large backlog) and a frozen dataclass costs three times as much.
    """

    __slots__ = ("template", "id", "backlog_path", "key")

    def __init__(self, template: str, id: str, backlog_path: str):
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "backlog_path", backlog_path)
        object.__setattr__(self, "key", f"{template}/{id}")

    def __setattr__(self, name, value):
        raise AttributeError(f"StoryRef is immutable ({name})")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StoryRef) and self.key == other.key
                and self.backlog_path == other.backlog_path)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"StoryRef({self.template!r}, {self.id!r}, {self.backlog_path!r})"

    def __reduce__(self):
        return (StoryRef, (self.template, self.id, self.backlog_path))


@dataclass
class Project:
    """A loaded project.

    Attributes:
        root: the folder holding ``dodo.py``, ``templates/``, ``backlogs/``, ``build/``.
        env: environment plus ``.env``.
        backlogs: every backlog, validated.
    """

    root: Path
    env: Mapping[str, str]
    backlogs: list[Backlog]
    _templates: dict[str, Template] = field(default_factory=dict)
    _resolved: dict[tuple[str, str], registry.Resolved] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _story_dirs: dict[tuple[str, str], Path] = field(default_factory=dict, repr=False)

    def template(self, name: str) -> Template:
        if name not in self._templates:
            self._templates[name] = load_template(self.root, name)
        return self._templates[name]

    def story_dir(self, template: str, story_id: str) -> Path:
        """``<root>/build/<template>/<story id>`` (made once per story: a task asks ~10 times)."""
        key = (template, story_id)
        found = self._story_dirs.get(key)
        if found is None:
            found = self._story_dirs[key] = self.root / BUILD_DIR / template / story_id
        return found

    def item(self, template: str, story_id: str) -> Item:
        for b in self.backlogs:
            if b.template == template:
                it = b.get(story_id)
                if it is not None:
                    return it
        raise KeyError(f"{template}/{story_id}")

    def backlog_for(self, template: str) -> Backlog:
        for b in self.backlogs:
            if b.template == template:
                return b
        raise KeyError(template)

    def resolved(self, template: str, service: str) -> registry.Resolved:
        """The backend chosen for ``service`` in ``template`` (env override, config, auto)."""
        key = (template, service)
        with self._lock:
            if key not in self._resolved:
                tpl = self.template(template)
                section = {"llm": tpl.config.engine.llm, "image": tpl.config.engine.generation,
                           "voice": tpl.config.engine.voice}.get(service)
                requested = getattr(section, "backend", "auto") if section is not None else "auto"
                override = self.env.get(f"CLOOPS_{service.upper()}_BACKEND")
                if override:
                    requested = override
                section_name = {"llm": "llm", "image": "generation", "voice": "voice"}[service]
                where = ("environment (CLOOPS_%s_BACKEND)" % service.upper() if override
                         else tpl.config.source_of(f"{section_name}.backend"))
                self._resolved[key] = registry.resolve(service, requested, self.env, where=where)
            return self._resolved[key]


_PROJECTS: dict[str, Project] = {}
_PLOCK = threading.Lock()


def load_project(root: Path | str | None = None) -> Project:
    """Load (once per process) the project at ``root`` (default: the current directory).

    Raises:
        InputError: a backlog is invalid, or two backlogs name the same template.
    """
    if root is not None:  # every task asks with the loaded project's own (resolved) root:
        hit = _PROJECTS.get(str(root))  # no realpath (a stat per path component) each time
        if hit is not None:
            return hit
    root = Path(root or os.getcwd()).resolve()
    with _PLOCK:
        if str(root) in _PROJECTS:
            return _PROJECTS[str(root)]
        backlogs = backlog_mod.discover(root)
        seen: dict[str, Path] = {}
        for b in backlogs:
            if b.template in seen:
                raise InputError(f"template {b.template!r} already has a backlog ({seen[b.template]}).",
                                 file=str(b.path), field="templateId",
                                 fix="keep one backlog per template.")
            seen[b.template] = b.path
        proj = Project(root=root, env=read_env(root), backlogs=backlogs)
        for b in backlogs:
            if not (root / "templates" / b.template / "config.json").is_file():
                from .template import template_names
                raise InputError(f"names unknown template {b.template!r}.",
                                 file=str(b.path.relative_to(root)), field="templateId",
                                 fix=f"use one of: {', '.join(template_names(root)) or 'none'}.")
            tpl = proj.template(b.template)  # bad config / prompts fail here, before any task runs
            for service in sorted({s.service for s in tpl.steps if s.service}):
                proj.resolved(b.template, service)  # and an unknown or unavailable backend
        _PROJECTS[str(root)] = proj
        return proj


def reset() -> None:
    """Forget loaded projects and templates (for tests running several builds in one process)."""
    from . import template as template_mod
    with _PLOCK:
        _PROJECTS.clear()
    template_mod._CACHE.clear()
