"""The state of this process's doit run: the project ``dodo.py`` loaded, the seals it read,
the stories it selected.

Layer: **run**. Set once by :func:`cloops.run.dodo.dodo_namespace`; read by the reporter, the
task actions and the steering commands that run inside a doit invocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.project import Project, StoryRef


@dataclass
class RunState:
    """What a run knows after loading.

    Attributes:
        project: the loaded project.
        seals: the run's :class:`cloops.graph.seals.SealBook`.
        sealed: keys (``<template>/<id>``) of the stories up to date as sealed at the start.
        items: ``{key: (StoryRef, backlog Item)}`` of the stories this run selected.
        dry: the run is a dry run (no image or voice call).
    """

    project: Project
    seals: Any = None
    sealed: set[str] = field(default_factory=set)
    items: dict[str, tuple[StoryRef, Any]] = field(default_factory=dict)
    dry: bool = False


_STATE: list[RunState] = []


def begin(state: RunState) -> None:
    """Make ``state`` this process's run (replacing an earlier one: tests load several)."""
    _STATE[:] = [state]


def current() -> RunState | None:
    """This process's run, or None outside a doit run."""
    return _STATE[0] if _STATE else None


def current_project() -> Project | None:
    """The project ``dodo.py`` loaded in this process, or None."""
    return _STATE[0].project if _STATE else None


def run_context() -> tuple[Any, set[str], dict[str, tuple[StoryRef, Any]]]:
    """``(SealBook or None, keys of the stories sealed at start, {key: (ref, backlog item)}
    of the stories this run selected)`` — for the reporter's end-of-run seals."""
    st = current()
    if st is None:
        return None, set(), {}
    return st.seals, st.sealed, st.items
