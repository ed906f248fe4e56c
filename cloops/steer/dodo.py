"""``dodo.py``'s namespace with the steering layer's task groups: ``doit publish:<id>``.

Layer: **steer**. The run layer's :func:`cloops.run.dodo.namespace` makes the build's tasks
(``build:<id>``, ``dry:<id>``, the step tasks); this adds the story task groups of the
commands above it, so that ``doit publish:noah-s-ark`` does what ``doit publish noah-s-ark``
does, the way ``build:<id>`` names one story's build. A group builds nothing: publishing a
story that is not ``completed`` leaves it out and says why (``doit build:<id>`` first).
"""

from __future__ import annotations

import sys
from typing import Any

from ..core.errors import CloopsError
from ..run.context import current
from ..run.dodo import namespace as run_namespace
from ..run.selection import add_story_group

add_story_group("publish")


def _publish(template: str, story_id: str) -> bool:
    """The action of ``publish:<template>/<id>``: publish one story; False (the task fails)
    when it was left out or the destination failed, with the reason printed."""
    from .publish import run_publish  # fsspec and the SDKs load only when publishing
    state = current()
    try:
        out = run_publish(state.project, [(template, story_id)])
    except CloopsError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return False
    finally:
        sys.stdout.flush()
    return not out.skipped


def task_publish_story():
    """publish one completed story (bundle, ad components, the index): doit publish:<id>

    The tasks are named ``publish:<template>/<id>`` and ``publish:<id>`` by their basename
    (doit refuses a task group named as a command, and ``doit publish`` is one).
    """
    state = current()
    by_id: dict[str, list[str]] = {}
    for key, (ref, _item) in (state.items.items() if state else ()):
        by_id.setdefault(ref.id, []).append(key)
    for key, (ref, item) in (state.items.items() if state else ()):
        task = {"actions": [(_publish, [ref.template, ref.id])], "uptodate": [False],
                "verbosity": 2, "doc": f"publish {item.input.get('title', ref.id)} [{item.status}]"}
        yield {"basename": f"publish:{key}", **task}
        if by_id[ref.id] == [key]:  # the id is this template's only: publish:<id> is this task
            yield {"basename": f"publish:{ref.id}", **task}
    for sid, keys in by_id.items():
        if len(keys) > 1:
            yield {"basename": f"publish:{sid}", "actions": None,
                   "task_dep": [f"publish:{k}" for k in keys],
                   "doc": f"publish {sid} in every template that has it"}


def namespace(dodo_file: str) -> dict[str, Any]:
    """Return ``dodo.py``'s namespace: :func:`cloops.run.dodo.namespace`'s tasks plus
    ``task_publish_story``. Errors as that function's (a bad backlog or config exits 2)."""
    ns = run_namespace(dodo_file)
    ns["task_publish_story"] = task_publish_story
    return ns
