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

The index lists what the destination holds: a bare ``doit publish`` lists every story it
published; ``doit publish STORY`` adds or refreshes those stories in the list it published
there before (``build/.cloops/published.json`` remembers it per destination).

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
    ``publish.firestore``, what its Firestore documents came to)."""

    published: list[StoryPlan] = field(default_factory=list)
    skipped: list[StoryPlan] = field(default_factory=list)
    reports: list[tuple[str, PublishReport]] = field(default_factory=list)
    documents: list[tuple[str, DocumentReport]] = field(default_factory=list)


def publish_stories(proj: Project, keys: list[tuple[str, str]] | None = None, *,
                    force: bool = False, url: str | None = None,
                    log=lambda line: None) -> Outcome:
    """Publish ``keys`` (``[(template, story id)]``; None: every story of every backlog).

    ``url`` overrides each template's ``publish.url``. ``log`` receives one line per uploaded
    object (key and size).

    With ``publish.firestore`` in a template's config, its stories' documents are written
    after its objects (:func:`cloops.steer.publish_firestore.sync_documents`).

    Raises:
        InputError: a bad ``publish.url``.
        PublishAuthError: credentials missing or refused (names the variables, no secret).
        PublishError: the destination failed; what was uploaded stays, a re-run finishes.
        FirestoreError: the database failed or refused (names the setting and the variable);
            the objects uploaded stay, a re-run writes the documents.
    """
    everything = keys is None
    keys = keys if keys is not None else stories(proj)
    out = Outcome()
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
        had = bool(listed)
        if everything:
            listed.clear()
        for p in out.skipped:
            if p.template == template:
                listed.pop(p.story_id, None)
        for p in plans:
            listed[p.story_id] = p.entry
        order = [sid for t, sid in stories(proj) if t == template and sid in listed]
        index = {"format": INDEX_FORMAT, "templateId": template,
                 "stories": [listed[sid] for sid in order]}
        files = {k: v for p in plans for k, v in p.files.items()}
        if files or listed or had:  # else nothing of this template was ever published there
            report = publish(files, dest, index=index, index_key=f"{template}/index.json",
                             storage_options=cfg.storage_options, log=log)
            out.reports.append((template, report))
            out.published += plans
            atomic_write_json(record_path, record, pretty=True)
        gone = [p for p in out.skipped if p.template == template and p.withdraw]
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
