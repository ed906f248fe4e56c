"""Story seals: the up-to-date check of a whole story in one comparison.

Layer: **graph**.

doit checks a story target by target: 18 tasks for a 5-page comic, each costing doit about
100 µs plus cloops' input values (pydoit, measured on 0.37.0). A thousand finished stories would
make every ``doit build`` spend seconds finding nothing to do. A seal records, when a run has
brought a story fully up to date (its ``build:<key>`` group succeeded), everything its tasks'
up-to-date checks depend on:

- ``state``: the digest of the template's story-independent inputs — every step's prompt and
  knowledge files, the config values it uses, model settings, backends, step versions
  (:func:`cloops.graph.completion.template_state`) — and the cloops version;
- ``input``: the digest of the story's backlog ``input``;
- ``files``: ``{path in the story folder: [size, mtime_ns]}`` of every target and file_dep of the story's tasks, and
  of its ``locks.json`` (``null`` when absent), taken when each task ended and checked again at
  the end of the run; and of the library entries the story uses (``../../../templates/<t>/
  cast/<id>.json`` and a hand-made image beside it, ``null`` when absent).

Every cloops input value of every task is a function of those three (a page's entry comes from
``pages.json``, annotations from the story input and ``pages.json``), so a story whose seal
matches is up to date: its tasks are not created at all, and ``build:<key>`` is an empty group.
Anything else — an edited prompt or config value, a hand-edited or touched file, a deleted
target, a new lock — breaks the seal and the story is checked task by task, as doit does; a
story that turns out unchanged (a ``touch``) is sealed again at the end of that run. The size
and mtime comparison is make's own rule (doit's ``file_dep`` check also starts from mtimes).

Seals are used by ``doit`` / ``doit run`` only: ``list``, ``info``, ``clean`` and ``forget``
see every task, ``--always-execute`` runs every task, and ``forget``/``ignore``/``clean`` drop
the seals of the stories they touch (so a forgotten task really runs again).

Kept in ``build/<template>/.cloops/seals.json``: ``{story id: {"state", "input", "files"}}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from .. import __version__
from ..core.fileio import atomic_write_json, file_stat, sha256_json
from ..data.backlog import Item
from ..data.project import Project, StoryRef
from .completion import library_uses, template_state
from .targets import META_DIR, story_lock

SEALS_FILE = "seals.json"
FORMAT = 1


class SealBook:
    """The seals of one project for one doit run: read lazily, per template. File paths in a
    seal are relative to the story's folder."""

    def __init__(self, proj: Project):
        self.proj = proj
        self._records: dict[str, dict] = {}
        self._states: dict[str, str] = {}
        self._pending: dict[str, dict[str, dict]] = {}  # seals made, not written yet

    def _path(self, template: str) -> Path:
        return self.proj.root / "build" / template / META_DIR / SEALS_FILE

    def records(self, template: str) -> dict[str, dict]:
        """``{story id: seal}`` of a template (empty when none was recorded or unreadable)."""
        if template not in self._records:
            self._records[template] = _read_dict(self._path(template))
        return self._records[template]

    def state(self, template: str) -> str:
        """Digest of the template's story-independent inputs, as of this run's start."""
        if template not in self._states:
            self._states[template] = sha256_json({
                "format": FORMAT, "cloops": __version__,
                "state": template_state(self.proj, self.proj.template(template))})[:16]
        return self._states[template]

    def is_sealed(self, ref: StoryRef, item: Item) -> bool:
        """True when the story's inputs and every one of its files are as they were sealed."""
        rec = self.records(ref.template).get(ref.id)
        if not isinstance(rec, dict) or rec.get("state") != self.state(ref.template):
            return False
        if rec.get("input") != item.input_digest:
            return False
        files = rec.get("files")
        if not isinstance(files, dict) or not files:
            return False
        sdir = str(self.proj.story_dir(ref.template, ref.id))
        join = os.path.join
        return all(file_stat(join(sdir, rel)) == st for rel, st in files.items())

    def record(self, ref: StoryRef, item: Item, stats: dict[str, list[int] | None]) -> bool:
        """Make the seal of a story whose tasks all ended up to date (written by :meth:`flush`):
        ``stats`` is ``{path relative to the project root (as doit names task files): stat when
        its task ended}``.

        A story whose files changed since its tasks ended (an edit during the run) is not
        sealed; nor is one whose files change after this call: the seal would not match them.
        Returns whether the story was recorded.
        """
        sdir = self.proj.story_dir(ref.template, ref.id)
        prefix = os.path.relpath(sdir, self.proj.root) + os.sep
        cut = len(prefix)
        # kept relative to the story folder: shorter, and the folder is joined once
        files = {rel[cut:] if rel.startswith(prefix) else
                 os.path.relpath(self.proj.root / rel, sdir): st for rel, st in stats.items()}
        files[f"{META_DIR}/locks.json"] = file_stat(sdir / META_DIR / "locks.json")
        for path in library_files(self.proj, ref):
            files[os.path.relpath(path, sdir)] = file_stat(path)
        join = os.path.join
        sdir_s = str(sdir)
        if any(file_stat(join(sdir_s, rel)) != st for rel, st in files.items()):
            return False
        self._pending.setdefault(ref.template, {})[ref.id] = {
            "state": self.state(ref.template), "input": item.input_digest, "files": files}
        return True

    def flush(self) -> int:
        """Write the seals made by :meth:`record` (one write per template); returns how many."""
        pending, self._pending = self._pending, {}
        for template, new in pending.items():
            self._update(template, lambda data, new=new: data.update(new))
        return sum(len(v) for v in pending.values())

    def seal(self, stories: dict[StoryRef, tuple[Item, dict[str, list[int] | None]]]) -> int:
        """:meth:`record` each of ``{ref: (backlog item, stats)}`` and :meth:`flush`."""
        for ref, (item, stats) in stories.items():
            self.record(ref, item, stats)
        return self.flush()

    def drop(self, refs: Iterable[StoryRef] | None) -> None:
        """Forget the seals of ``refs`` (of every story when None)."""
        wanted = None if refs is None else {(r.template, r.id) for r in refs}
        for template in {b.template for b in self.proj.backlogs}:
            ids = None if wanted is None else {i for t, i in wanted if t == template}
            if ids == set() or not self._path(template).exists():
                continue

            def forget(data: dict, ids: set | None = ids) -> None:
                for story_id in list(data) if ids is None else ids:
                    data.pop(story_id, None)
            self._update(template, forget)

    def _update(self, template: str, change: Callable[[dict], None]) -> None:
        """Read-modify-write a template's seals under the template's lock."""
        path = self._path(template)
        with story_lock(path.parent.parent):
            data = _read_dict(path)
            change(data)
            atomic_write_json(path, data)
        self._records.pop(template, None)


LIBRARY_SUFFIXES = (".json", ".jpg", ".jpeg", ".png")


def library_files(proj: Project, ref: StoryRef) -> list[Path]:
    """The library files a story's views may read: for each library entry its fan-out files
    refer to, ``<library>/<id>.json`` and a hand-made image beside it, in every folder of the
    template's search path — whether they exist or not, so that adding one breaks the seal."""
    tpl = proj.template(ref.template)
    out: list[Path] = []
    for entry in library_uses(proj, tpl, ref.id):
        lib, _, entry_id = entry.partition("/")
        out += [folder / lib / f"{entry_id}{suffix}" for folder in tpl.search_path
                for suffix in LIBRARY_SUFFIXES]
    return out


def _read_dict(path: Path) -> dict:
    """A JSON object file's content; ``{}`` when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def unseal(proj: Project, template: str, story_id: str) -> None:
    """Drop one story's seal: for commands that make doit forget one of its tasks
    (``doit take``, ``doit unlock``), so that the next build checks it task by task."""
    SealBook(proj).drop([StoryRef(template, story_id, "")])
