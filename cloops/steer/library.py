"""The series library: promote a story's character into ``templates/<t>/<library>/``.

Layer: **steer**. A template whose steps fan out over characters with a ``library``
(:class:`cloops.graph.steps.ForEach`: the comics' ``cast.json`` and ``templates/<t>/cast/``)
shares characters across stories: a library entry ``<id>.json`` (and, optional, a hand-made
sheet ``<id>.jpg`` beside it) is what every story's ``"library": true`` entry of that id is
drawn from. :func:`promote` makes one story's character such an entry: the character's
resolved entry becomes ``<id>.json``, the story's sheet becomes ``<id>.jpg`` (every story then
uses that very picture), and the story's own entry becomes a library reference — a hand edit,
kept in history — so what the story's steps see does not change and nothing of it is paid for
again. Other stories' casts meet the character the next time they are extracted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from doit.cmd_base import Command

from ..core.errors import InputError
from ..core.fileio import atomic_write_bytes, atomic_write_json, dump_json
from ..data.project import Project
from ..graph.engine import Sources
from ..graph.plan import plan_of
from ..graph.targets import edit_target
from .address import Address, resolve
from .commands import _args, _console, _project, _user_errors

LIBRARY_FIELDS = ("id", "name", "kind", "appearance")


@dataclass(frozen=True)
class Promoted:
    """What :func:`promote` did.

    Attributes:
        entry: the library file written (``templates/<t>/cast/<id>.json``).
        sheet: the sheet copied beside it, or None.
        story_file: the story's fan-out file rewritten (``.../cast.json``).
        kept: the history copy of the story file's previous version, or None.
    """

    entry: Path
    sheet: Path | None
    story_file: Path
    kept: Path | None


def library_fanout(proj: Project, template: str) -> tuple[str, object]:
    """``(source, ForEach)`` of the template's fan-out with a library.

    Raises:
        InputError: the template has none.
    """
    tpl = proj.template(template)
    for source, fan in plan_of(tpl).fanouts.items():
        if fan.library:
            return source, fan
    raise InputError(f"template {template!r} has no series library: none of its steps fans "
                     "out with ForEach(..., library=...).",
                     file=str(tpl.dir / "workflow.py"))


def promote(proj: Project, addr: Address, entry_id: str, *, sheet: bool = True,
            force: bool = False) -> Promoted:
    """Make character ``entry_id`` of the story at ``addr`` a library entry of its template.

    Raises:
        InputError: the story has no such character, it is a library character already, its
            cast file cannot be read, or the library has that id (without ``force``).
    """
    tpl = proj.template(addr.template)
    source, fan = library_fanout(proj, addr.template)
    sources = Sources(tpl, addr.story_dir)
    sources.require([source])
    story_file = addr.story_dir / source
    raw = json.loads(story_file.read_text(encoding="utf-8")) if story_file.is_file() else None
    if raw is None:
        raise InputError("does not exist yet.", file=str(story_file),
                         fix=f"build the story first: doit build:{addr.key}.")
    items = raw[fan.key]
    own = next((i for i in items if i.get("id") == entry_id), None)
    if own is None:
        have = ", ".join(i.get("id", "?") for i in items) or "none"
        raise InputError(f"has no character {entry_id!r} (it has: {have}).", file=str(story_file),
                         fix=f"name one of them: doit promote {addr.key}/<id>.")
    if own.get("library"):
        raise InputError(f"{entry_id!r} is a library character already.", file=str(story_file),
                         field=f"{fan.key}[{entry_id}]")
    folder = tpl.dir / fan.library
    target = folder / f"{entry_id}.json"
    if target.exists() and not force:
        raise InputError("exists: the library has a character of that id.", file=str(target),
                         fix="give the story's character another id in its cast file, or pass "
                             "--force to replace the library's.")
    resolved = sources.item(source, entry_id) or own
    entry = {k: resolved[k] for k in LIBRARY_FIELDS if k in resolved}
    atomic_write_json(target, entry)
    copied = None
    story_sheet = addr.story_dir / fan.library / f"{entry_id}.jpg"
    if sheet and story_sheet.is_file():
        copied = folder / f"{entry_id}.jpg"
        atomic_write_bytes(copied, story_sheet.read_bytes())
    elif not sheet and (folder / f"{entry_id}.jpg").exists() and force:
        (folder / f"{entry_id}.jpg").unlink()
    ref = {k: own[k] for k in ("id", "name", "kind") if k in own}
    ref["library"] = True
    raw[fan.key] = [ref if i is own else i for i in items]
    kept = edit_target(addr.story_dir, source, dump_json(raw).encode("utf-8"))
    tpl.memo.pop(("collection", fan.library), None)
    return Promoted(entry=target, sheet=copied, story_file=story_file, kept=kept)


class Promote(Command):
    """``doit promote STORY/ID [--no-sheet] [--force]``."""

    name = "promote"
    doc_purpose = "make a story's character a character of the series library"
    doc_usage = "STORY/ID"
    doc_description = ("Writes templates/<t>/cast/<id>.json from the character's entry and "
                       "copies its reference sheet beside it (every story then uses that "
                       "picture); the story's own entry becomes a library reference, kept in "
                       "history. Nothing of the story is paid for again.")
    cmd_options = (
        {"name": "no_sheet", "long": "no-sheet", "type": bool, "default": False,
         "help": "do not copy the story's sheet: each story draws the character's sheet"},
        {"name": "force", "long": "force", "type": bool, "default": False,
         "help": "replace a library character of the same id"},
    )

    @_user_errors
    def execute(self, params, args):
        (arg,) = _args(args, "1", "STORY/ID (noah-s-ark/noah)")
        story, _, entry_id = arg.rstrip("/").rpartition("/")
        if not story or not entry_id:
            raise InputError(f"expected STORY/ID, got {arg!r}.",
                             fix="name the story and the character: doit promote noah-s-ark/noah.")
        proj = _project()
        addr = resolve(proj, story)
        if addr.rel is not None:
            raise InputError(f"{addr.shown} is a file: promote names a story and a character.",
                             fix=f"doit promote {addr.key}/<id>.")
        done = promote(proj, addr, entry_id, sheet=not params["no_sheet"], force=params["force"])
        console = _console()
        root = proj.root
        console.print(f"{entry_id} is in the library: {done.entry.relative_to(root)}"
                      + (f" and {done.sheet.relative_to(root)}" if done.sheet else ""))
        console.print(f"{done.story_file.relative_to(root)} now refers to it"
                      + (f" (the previous version is kept at {done.kept.relative_to(root)})"
                         if done.kept else "") + ".")
        console.print("Stories whose cast names it with \"library\": true use it; other "
                      "stories meet it when their cast is next extracted.")
        return 0
