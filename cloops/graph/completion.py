"""Completed stories made stale by a change — found without loading their tasks.

Layer: **graph**.

A bare ``doit`` does not rebuild completed stories (rebuilding 500 published stories because a
prompt changed is an expensive surprise); it reports them. To keep start-up independent of how
many stories are finished, a completion records two digests per story in
``build/<template>/.cloops/completed.json``: the template's state (every step's prompt files,
config values, model settings and backends — :func:`template_state`) and the story's input.
The template states themselves are kept once each, by digest, so a report can say what changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.fileio import atomic_write_json, sha256_file, sha256_json
from ..data.project import Project, StoryRef
from .engine import Sources, step_values
from .plan import plan_of
from .steps import ItemInput, PartInput, StoryValue, ViewInput, value_name
from .targets import story_lock

STATE_DIR = ".cloops"


def template_state(proj: Project, tpl) -> dict[str, str]:
    """Every story-independent input of every step: ``{"<step>: <input name>": value}``.
    Made once per template object (its texts and config are read once per process) and
    shared: do not change the dict returned."""
    state = tpl.memo.get("template state")
    if state is None:
        state = tpl.memo["template state"] = _template_state(proj, tpl)
    return state


def _template_state(proj: Project, tpl) -> dict[str, str]:
    state: dict[str, str] = {}
    ref = StoryRef(tpl.name, "-", "")
    for step in tpl.steps:
        skip = set()
        for name, inp in step.inputs.items():
            if isinstance(inp, StoryValue):
                skip.add(f"story {inp.field or 'input'}")
            elif isinstance(inp, PartInput):
                skip.add(value_name(inp, None))
            elif isinstance(inp, ViewInput):
                skip.add(f"{inp.path} view {name}")
            elif isinstance(inp, ItemInput):
                skip.add(value_name(inp, step.foreach.source if step.foreach else "-"))
        for k, v in step_values(proj, tpl, step, ref, {}, None, None).items():
            if k not in skip and k != "annotations":
                state[f"{step.name}: {k}"] = v
    return state


def _tdir(proj: Project, template: str) -> Path:
    return proj.root / "build" / template / STATE_DIR


def library_digest(tpl, library: str, entry_id: str) -> str:
    """Digest of one library entry: its JSON and any file beside it of the same stem (a
    hand-made ``cast/<id>.jpg``), 16 hex digits; ``"missing"`` when the library lacks it."""
    entry = tpl.collection(library).get(entry_id)
    if entry is None:
        return "missing"
    parts: dict = {"entry": entry}
    for folder in tpl.search_path:
        for f in sorted((folder / library).glob(f"{entry_id}.*")):
            if f.suffix != ".json" and f.name not in parts:
                parts[f.name] = sha256_file(f)
    return sha256_json(parts)[:16]


def library_uses(proj: Project, tpl, story_id: str) -> dict[str, str]:
    """``{"<library>/<id>": digest}`` of the library entries a story's fan-out files refer to."""
    sources = Sources(tpl, proj.story_dir(tpl.name, story_id))
    uses: dict[str, str] = {}
    for source, fan in plan_of(tpl).fanouts.items():
        if fan.library:
            for entry_id in sources.library_refs(source):
                uses[f"{fan.library}/{entry_id}"] = library_digest(tpl, fan.library, entry_id)
    return uses


def record_completed(proj: Project, template: str, story_id: str, story_input: dict) -> None:
    """Remember the state a story was completed in: the template's state, the story input's
    digest and the library entries it uses (:func:`library_uses`)."""
    record_completed_many(proj, template, [(story_id, story_input)])


def record_completed_many(proj: Project, template: str,
                          stories: list[tuple[str, dict]]) -> None:
    """:func:`record_completed` for several ``(story id, story input)`` of one template, in
    one write of ``completed.json`` (which holds every completed story of the template: a
    write per story made a 1,000-story build write it 1,000 times)."""
    if not stories:
        return
    tpl = proj.template(template)
    state = template_state(proj, tpl)
    tsig = sha256_json(state)[:16]
    tdir = _tdir(proj, template)
    states = tdir / "template-states" / f"{tsig}.json"
    with story_lock(tdir.parent):
        if not states.exists():
            atomic_write_json(states, state)
        path = tdir / "completed.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        for story_id, story_input in stories:
            data[story_id] = {"template": tsig, "input": sha256_json(story_input)[:16]}
            uses = library_uses(proj, tpl, story_id)
            if uses:
                data[story_id]["library"] = uses
        atomic_write_json(path, data)


def stale_completed(proj: Project) -> list[tuple[str, str]]:
    """``[(story key, reason)]`` for completed stories that a change has made stale."""
    out: list[tuple[str, str]] = []
    for b in proj.backlogs:
        if not getattr(b, "loaded", True):
            continue  # a Firestore backlog read story by story (doit build:<id>): not listed
        done = [it for it in b.items if it.status == "completed"]
        if not done:
            continue
        tdir = _tdir(proj, b.template)
        try:
            records = json.loads((tdir / "completed.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        tpl = proj.template(b.template)
        state = template_state(proj, tpl)
        tsig = sha256_json(state)[:16]
        explained: dict[str, str] = {}
        now: dict[str, str] = {}  # library entry -> its digest now
        for it in done:
            rec = records.get(it.id)
            if rec is None:
                continue  # completed before cloops recorded it: nothing to compare
            reasons = []
            if rec.get("template") != tsig:
                old = rec.get("template")
                if old not in explained:
                    try:
                        before = json.loads((tdir / "template-states" / f"{old}.json").read_text())
                    except (FileNotFoundError, json.JSONDecodeError):
                        before = {}
                    changed = sorted(k for k in set(before) | set(state) if before.get(k) != state.get(k))
                    explained[old] = "changed " + ", ".join(changed[:4]) + (
                        f" and {len(changed) - 4} more" if len(changed) > 4 else "")
                reasons.append(explained[old])
            if rec.get("input") != it.input_digest:
                reasons.append("story input changed")
            for entry, digest in (rec.get("library") or {}).items():
                if entry not in now:
                    lib, _, entry_id = entry.partition("/")
                    now[entry] = library_digest(tpl, lib, entry_id)
                if now[entry] != digest:
                    reasons.append(f"library {entry} changed")
            if reasons:
                out.append((f"{b.template}/{it.id}", "; ".join(reasons)))
    return out
