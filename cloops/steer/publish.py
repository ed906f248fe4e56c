"""``doit publish [STORY ...] [--force] [--url URL]``: upload finished stories for the app and
for AdLoops.

Layer: **steer**. Each **completed** story's bundle (``bundle/``: page images, thumbnail,
``story-data.json``, ``voice.mp3``) and, when its template makes them, its ad components
(``ads/manifest.json``, ``ads/tags.json`` and every file the manifest names) go to
``publish.url`` under ``<template>/<story>/``, and one ``<template>/index.json`` per template
lists the stories and their components (AdLoops' intake). The upload is
:func:`cloops.services.storage.publish`'s: only objects whose SHA-256 differs are sent (a
re-run sends nothing), never a partial object at a final key, no credential in any message.

A story is left out, with the reason, when it is not ``completed`` (a draft built with an
offline backend stays ``pending``; a failed one is ``failed``), when any of its artifacts came
from an offline backend, when its ad components are older than its manifest says (an
interrupted build), or when its ``evals.json`` says it needs review — unless ``--force`` (the
index then says ``"needsReview": true``).

With ``publish.firestore`` set, each published story and each of its ad components also gets a
Firestore document, written after its objects (:mod:`cloops.steer.publish_firestore`: only
documents that changed; a story published before and now failed or needing review is marked
``withdrawn``).

The index lists what the destination holds, whoever published it: it is merged with the
destination's own ``index.json`` under a precondition (:func:`publish_stories`), so workers of
a fleet publishing their shards to one URL, even at the same instant, keep each other's
stories. A publish adds or refreshes the stories it publishes and takes out only those it
owns and leaves out: on a bare ``doit publish``, every story of its selection - the shard
given by ``CLOOPS_SHARD`` (a sharded worker publishes only its shard's stories), else every
story - that it does not publish now, and those it published there before that are gone
from its backlog (``build/.cloops/published.json`` remembers them per destination); with
stories named, those named that it leaves out. Nothing is ever deleted at the destination.

Index shape (format 1), paths relative to the index::

    {"format": 1, "templateId": "comic-books-kids",
     "stories": [{"id", "title", "completedAt", "needsReview", "score",
                  "bundle": {"storyData": "<id>/bundle/story-data.json", "files": [...]},
                  "ads": {"manifest": "<id>/ads/manifest.json", "tags": {...},
                          "components": [{"id", "type", "file", "sha256", "durationS", ...}]}
                          | null}]}
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doit.cmd_base import Command

from ..core.errors import InputError
from ..core.fileio import atomic_write_json, sha256_file
from ..data.project import STATE_DIR, Project
from ..graph.targets import read_manifest
from ..run.fleet import Shard, in_shard, shard_from_env
from ..services.storage import PublishReport, publish, redact_url
from .address import resolve, stories
from .commands import _console, _project, _user_errors
from .evals import read_evals
from .publish_firestore import DocumentReport, component_files, sync_documents

INDEX_FORMAT = 1
RECORD = "published.json"
MANIFEST = "ads/manifest.json"
TAGS = "ads/tags.json"


@dataclass
class StoryPlan:
    """One story's part of a publish.

    Attributes:
        template, story_id: the story.
        skip: why it is left out (None: it is published).
        files: object key (``<template>/<id>/bundle/1.jpg``) -> local file.
        entry: its entry in the template's index.
        manifest: its parsed ``ads/manifest.json`` (None without ad components).
        manifest_sha256: the SHA-256 of that file's bytes (hex), or None.
        withdraw: for a story left out because it failed or needs review, why: its documents
            in Firestore, if it was published there, say ``"status": "withdrawn"``.
    """

    template: str
    story_id: str
    skip: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    entry: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    manifest_sha256: str | None = None
    withdraw: str | None = None

    @property
    def key(self) -> str:
        return f"{self.template}/{self.story_id}"


def plan_story(proj: Project, template: str, story_id: str, *, force: bool) -> StoryPlan:
    """What publishing one story means: its files and index entry, or why it is left out."""
    plan = StoryPlan(template, story_id)
    item = proj.item(template, story_id)
    sdir = proj.story_dir(template, story_id)
    if item.status != "completed":
        why = {"failed": "failed" + (f" ({item.error.splitlines()[0][:120]})" if item.error
                                     else ""),
               "pending": "not completed (pending: a draft built with an offline backend, or "
                          "not built yet)"}.get(item.status, f"not completed ({item.status})")
        plan.skip = why
        if item.status == "failed":
            plan.withdraw = why
        return plan
    drafts = sorted(rel for rel, rec in read_manifest(sdir).items() if rec.get("offline"))
    if drafts:
        plan.skip = (f"built with an offline backend ({len(drafts)} draft artifacts, e.g. "
                     f"{drafts[0]}): set the API keys and rebuild it")
        return plan
    evals = read_evals(sdir) or {}
    review = bool(evals.get("needsReview"))
    if review and not force:
        first = (evals.get("reviewReasons") or ["see doit status"])[0]
        plan.skip = f"needs review ({first}); `doit publish --force {story_id}` publishes it anyway"
        plan.withdraw = f"needs review ({first})"
        return plan
    bundle = sdir / "bundle"
    if not (bundle / "story-data.json").is_file():
        plan.skip = f"its bundle is missing: run doit build:{story_id}"
        return plan
    prefix = f"{template}/{story_id}"
    bundle_files = sorted(p for p in bundle.iterdir() if p.is_file())
    plan.files = {f"{prefix}/bundle/{p.name}": p for p in bundle_files}
    ads = None
    if proj.template(template).config.engine.ads.enabled:
        ads, why = _ads(sdir, story_id)
        if why:
            plan.skip = why
            plan.files = {}
            return plan
        plan.files.update({f"{prefix}/{rel}": sdir / rel for rel in ads.pop("_files")})
        plan.manifest = ads.pop("_manifest")
        plan.manifest_sha256 = sha256_file(sdir / MANIFEST)
    plan.entry = {
        "id": story_id, "title": item.input.get("title", story_id),
        "completedAt": item.completed_at, "needsReview": review, "score": evals.get("score"),
        "bundle": {"storyData": f"{story_id}/bundle/story-data.json",
                   "files": [f"{story_id}/bundle/{p.name}" for p in bundle_files]},
        "ads": ads}
    return plan


def _ads(sdir: Path, story_id: str) -> tuple[dict | None, str | None]:
    """The story's ad components for the index (with ``_files``: what to upload), or why they
    cannot be published."""
    try:
        data = json.loads((sdir / MANIFEST).read_text(encoding="utf-8"))
        components = data["components"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None, f"it has no readable {MANIFEST}: run doit build:{story_id}"
    files = [MANIFEST, TAGS]
    out = []
    for c in components:
        rels = component_files(c)
        if sha256_file(sdir / c["file"]) != c.get("sha256") or \
                not all((sdir / r).is_file() for r in rels):
            return None, (f"its ad components are not what {MANIFEST} lists ({c['file']}): "
                          f"run doit build:{story_id}")
        files += [r for r in rels if r not in files]
        shown = {k: v for k, v in c.items() if k not in ("source", "tags")}
        for k in ("file", "overlayFile", "poster", "words"):
            if shown.get(k):
                shown[k] = f"{story_id}/{shown[k]}"
        if shown.get("captions"):
            shown["captions"] = {k: f"{story_id}/{v}" for k, v in shown["captions"].items()}
        if isinstance(shown.get("files"), list):
            shown["files"] = [f"{story_id}/{r}" for r in shown["files"]]
        out.append(shown)
    if not (sdir / TAGS).is_file():
        return None, f"{TAGS} is missing: run doit build:{story_id}"
    return {"manifest": f"{story_id}/{MANIFEST}", "tags": data.get("tags"),
            "components": out, "_files": files, "_manifest": data}, None



@dataclass
class Outcome:
    """What a publish did, per destination and template (``documents``: per template with
    ``publish.firestore``, what its Firestore documents came to).

    Attributes:
        shard: the shard a bare publish kept to (``CLOOPS_SHARD`` …), or None.
        outside: how many stories a bare publish left to other shards' workers.
        removed: ``(template, story id)`` whose entries this publish took out of an index.
    """

    published: list[StoryPlan] = field(default_factory=list)
    skipped: list[StoryPlan] = field(default_factory=list)
    reports: list[tuple[str, PublishReport]] = field(default_factory=list)
    documents: list[tuple[str, DocumentReport]] = field(default_factory=list)
    shard: Shard | None = None
    outside: int = 0
    removed: list[tuple[str, str]] = field(default_factory=list)


def merge_entries(current: Any, template: str, put: dict[str, dict], drop: set[str],
                  order: list[str]) -> tuple[dict | None, list[str]]:
    """The index of ``template`` after this publish, merged with ``current`` (the index the
    destination holds: its parsed JSON, or None), and the ids it took out.

    ``put``: this publish's entries by story id (added or replacing theirs); ``drop``: ids
    this publish owns and no longer publishes (taken out); every other entry of ``current``
    is kept as it is - another worker published it. Stories come in ``order`` (backlog
    order), then any others in their order in ``current``. None when there is nothing to
    list and no index yet (no empty index is created)."""
    entries: dict[str, dict] = {}
    if (isinstance(current, dict) and current.get("format") == INDEX_FORMAT
            and current.get("templateId") == template
            and isinstance(current.get("stories"), list)):
        for e in current["stories"]:
            if isinstance(e, dict) and isinstance(e.get("id"), str):
                entries[e["id"]] = e
    removed = [sid for sid in entries if sid in drop and sid not in put]
    for sid in removed:
        del entries[sid]
    entries.update(put)
    if current is None and not entries:
        return None, []
    rank = {sid: i for i, sid in enumerate(order)}
    ids = sorted(entries, key=lambda sid: (0, rank[sid]) if sid in rank else (1, 0))
    return {"format": INDEX_FORMAT, "templateId": template,
            "stories": [entries[sid] for sid in ids]}, removed


def publish_stories(proj: Project, keys: list[tuple[str, str]] | None = None, *,
                    force: bool = False, url: str | None = None,
                    log=lambda line: None) -> Outcome:
    """Publish ``keys`` (``[(template, story id)]``; None: every story of every backlog, or,
    with a shard set (``CLOOPS_SHARD=i/N`` …, :func:`cloops.run.fleet.shard_from_env`), every
    story of that shard).

    ``url`` overrides each template's ``publish.url``. ``log`` receives one line per uploaded
    object (key and size).

    Each template's ``index.json`` is merged with the one the destination holds
    (:func:`merge_entries`, written only if nobody wrote it in between:
    :func:`cloops.services.storage.publish`'s ``merge_index``): this publish's stories are
    added or refreshed; the stories it *owns* and leaves out are taken out - on a bare
    publish every story of its selection (its shard, or all) that it does not publish now,
    and those it published there before that are gone from its backlog; when stories are
    named, those named that it leaves out. Every other entry is kept: other workers
    publishing other shards to one destination keep each other's stories.

    With ``publish.firestore`` in a template's config, its stories' documents are written
    after its objects (:func:`cloops.steer.publish_firestore.sync_documents`).

    Raises:
        InputError: a bad ``publish.url`` or shard variable.
        PublishAuthError: credentials missing or refused (names the variables, no secret).
        PublishError: the destination failed, or its index kept changing under concurrent
            publishers; what was uploaded stays, a re-run finishes.
        FirestoreError: the database failed or refused (names the setting and the variable);
            the objects uploaded stay, a re-run writes the documents.
    """
    everything = keys is None
    out = Outcome()
    backlog = stories(proj)
    if everything:
        out.shard = shard_from_env(proj.env)
        keys = [k for k in backlog if in_shard(*k, out.shard)]
        out.outside = len(backlog) - len(keys)
    by_template: dict[str, list[StoryPlan]] = {}
    for template, sid in keys:
        plan = plan_story(proj, template, sid, force=force)
        (out.skipped if plan.skip else by_template.setdefault(template, [])).append(plan)
    record_path = proj.root / STATE_DIR / RECORD
    record = _read(record_path)
    for template in dict.fromkeys(t for t, _ in keys):
        plans = by_template.get(template, [])
        cfg = proj.template(template).config.engine.publish
        dest = url or cfg.url
        if "://" not in dest and not os.path.isabs(dest):
            dest = str(proj.root / dest)
        listed = record.setdefault(redact_url(dest), {}).setdefault(template, {})
        skipped = [p for p in out.skipped if p.template == template]
        drop = {p.story_id for p in skipped}
        if everything:  # and those published here before, now gone from the backlog
            in_backlog = {sid for t, sid in backlog if t == template}
            drop |= {sid for sid in listed
                     if sid not in in_backlog and in_shard(template, sid, out.shard)}
        put = {p.story_id: p.entry for p in plans}
        order = [sid for t, sid in backlog if t == template]
        gone = [p for p in skipped if p.withdraw]
        # a draft alone never reaches the destination; anything published or withdrawn does
        if plans or gone or any(sid in drop for sid in listed):
            removed: list[str] = []

            def merge(current, template=template, put=put, drop=drop, order=order,
                      removed=removed):
                index, removed[:] = merge_entries(current, template, put, drop, order)
                return index
            files = {k: v for p in plans for k, v in p.files.items()}
            report = publish(files, dest, merge_index=merge, index_key=f"{template}/index.json",
                             storage_options=cfg.storage_options, log=log)
            out.reports.append((template, report))
            out.published += plans
            out.removed += [(template, sid) for sid in removed]
            for sid in drop:
                listed.pop(sid, None)
            listed.update(put)
            atomic_write_json(record_path, record, pretty=True)
        if cfg.firestore is not None and (plans or gone):
            # after the objects: a document never names an object that is not there yet
            setting = f"publish.firestore.project in templates/{template}/config.json"
            out.documents.append((template, sync_documents(
                cfg.firestore, template, plans, gone, dest, setting=setting, log=log)))
    return out


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_publish(proj: Project, keys: list[tuple[str, str]] | None, *, force: bool = False,
                url: str | None = None) -> Outcome:
    """Publish ``keys`` (as :func:`publish_stories`) and print what happened: one line per
    uploaded object, one per story left out and why, and a summary line. Returns the outcome.

    Raises: as :func:`publish_stories`.
    """
    console = _console()
    lines: list[str] = []
    out = publish_stories(proj, keys, force=force, url=url, log=lines.append)
    if out.shard is not None:
        console.print(f"shard {out.shard} (from {out.shard.source}): publishing this shard's "
                      f"stories only; {out.outside} stories of other shards are left to their "
                      "workers, and their index entries are kept.", markup=False)
    for line in lines:
        console.print(f"  {line}", markup=False)
    for plan in out.skipped:
        console.print(f"[yellow]skipped[/yellow] {plan.key}: {plan.skip}", markup=True)
    uploaded = sum(len(r.uploaded) for _t, r in out.reports)
    unchanged = sum(len(r.unchanged) for _t, r in out.reports)
    size = sum(r.bytes_uploaded for _t, r in out.reports)
    where = ", ".join(sorted({r.url for _t, r in out.reports})) or "-"
    console.print(f"published {len(out.published)} stories to {where}: {uploaded} objects "
                  f"uploaded ({size:,} bytes), {unchanged} unchanged; "
                  f"{len(out.skipped)} skipped.", markup=False)
    if out.removed:
        console.print("taken out of the index (no longer published): " + ", ".join(
            f"{t}/{sid}" for t, sid in out.removed), markup=False)
    conflicts = sum(r.conflicts for _t, r in out.reports)
    if conflicts:
        console.print(f"the index or the record was changed by another publisher {conflicts} "
                      "times meanwhile: merged again each time, nothing of theirs was lost.",
                      markup=False)
    for template, docs in out.documents:
        console.print(f"firestore {docs.database} ({template}): {len(docs.written)} documents "
                      f"written, {docs.unchanged} unchanged, {len(docs.withdrawn)} marked "
                      "withdrawn.", markup=False)
    return out


class Publish(Command):
    """``doit publish [STORY ...] [--force] [--url URL]``."""

    name = "publish"
    doc_purpose = ("upload completed stories (bundle and ad components) and an index per "
                   "template to publish.url")
    doc_usage = "[STORY ...] [--force] [--url URL]"
    doc_description = (
        "publish.url (template config) is a folder, s3://bucket/prefix or gs://bucket/prefix "
        "(Firebase Storage: gs://<project>.firebasestorage.app); credentials come from "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or GOOGLE_APPLICATION_CREDENTIALS. Only "
        "objects that changed are uploaded. With publish.firestore set, a document per story "
        "and per ad component goes to Firestore (GOOGLE_APPLICATION_CREDENTIALS, or "
        "FIRESTORE_EMULATOR_HOST for an emulator). Drafts, failed stories and stories whose evals say "
        "they need review are left out, saying why (--force publishes the last).")
    cmd_options = (
        {"name": "force", "long": "force", "type": bool, "default": False,
         "help": "publish stories whose evals say they need review"},
        {"name": "url", "long": "url", "type": str, "default": "",
         "help": "publish here instead of each template's publish.url"},
    )

    @_user_errors
    def execute(self, params, args):
        proj = _project()
        args = list(args)
        force = params["force"] or "--force" in args
        args = [a for a in args if a != "--force"]
        keys = None
        if args:
            keys = []
            for a in args:
                addr = resolve(proj, a)
                if addr.rel is not None:
                    raise InputError(f"{a} is a target, not a story.",
                                     fix="name a story: doit publish noah-s-ark.")
                if (addr.template, addr.story_id) not in keys:
                    keys.append((addr.template, addr.story_id))
        out = run_publish(proj, keys, force=force, url=params["url"] or None)
        sys.stdout.flush()
        return 1 if keys is not None and out.skipped else 0
