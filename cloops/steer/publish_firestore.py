"""AdLoops' documents: what ``doit publish`` writes to Firestore after a story's objects are up.

Layer: **steer** (used by :mod:`cloops.steer.publish`; writes through
:class:`cloops.services.firestore.Firestore`).

With ``publish.firestore`` set in a template's config, each published story gets one document in
the ``story`` collection (``stories``) and each of its ad components one in the collection of
its manifest ``type`` (``hooks``, ``bodies``, ``ctas``, ``voices``, ``audios``, ``overlays``; a
type not configured goes to ``<type>s``). Document ids are stable: ``<template>~<story>`` and
``<template>~<story>~<component id>``. Shapes (URLs are the uploaded objects')::

    stories/comic-books-kids~noah-s-ark
      {"template", "story", "title", "tags": {...} | null, "status": "published",
       "needsReview", "score", "completedAt",
       "bundleUrl": "<publish.url>/<template>/<story>/bundle/",
       "storyDataUrl": ".../bundle/story-data.json", "bundleFiles": [url, ...],
       "manifestUrl": ".../ads/manifest.json" | null, "manifestSha256": hex | null,
       "components": [{"id", "type", "collection", "document"}], "publishedAt"}
    hooks/comic-books-kids~noah-s-ark~hook-1
      {...the manifest record (id, type, file, sha256, durationS, source, tags, ...),
       "template", "story", "status": "published", "url": url of its file,
       "fileUrls": [{"file": rel, "url": url}, ...] (every file of the component),
       "sourceDigests": {artifact: digest} (the record's source.artifacts), "publishedAt"}

**Only what changed is written**: the documents there are read first and a document is written
only when its content, ``publishedAt`` aside, differs (a re-publish writes none). A story that
was published and is now failed or needs review gets ``"status": "withdrawn"`` (with
``withdrawnReason`` and ``withdrawnAt``) on its documents, as does a component its story's
manifest no longer lists; nothing is deleted, and a draft never gets a document. Writes go in
commits within Firestore's limits (500 writes, 1 MiB a document).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..data.backlog import now_iso
from ..data.config import FirestoreSinkConfig
from ..services.firestore import Firestore
from ..services.storage import redact_url

STATUS_PUBLISHED = "published"
STATUS_WITHDRAWN = "withdrawn"


@dataclass
class DocumentReport:
    """What one template's documents came to.

    Attributes:
        database: ``<project>/<database>``.
        written: ``<collection>/<id>`` of every document written (created or changed).
        unchanged: how many were already as they should be.
        withdrawn: ``<collection>/<id>`` of every document marked withdrawn.
    """

    database: str
    written: list[str] = field(default_factory=list)
    unchanged: int = 0
    withdrawn: list[str] = field(default_factory=list)


def object_url(dest: str, key: str) -> str:
    """The URL of the object ``key`` under the destination ``dest`` (an fsspec URL, or an
    absolute folder: then a ``file://`` URL); any password in it replaced by ``***``."""
    if "://" in dest:
        return f"{redact_url(dest).rstrip('/')}/{key}"
    return (Path(dest) / key).as_uri() + ("/" if key.endswith("/") else "")


def _plain(value: Any) -> Any:
    """JSON values only (what Firestore gives back as written), for comparing."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def component_files(record: dict) -> list[str]:
    """Every file of one manifest component (paths relative to the story folder): its
    ``files`` list when the manifest gives one, else ``file``, ``overlayFile`` and the
    ``captions`` (the manifest's older shape)."""
    if isinstance(record.get("files"), list) and record["files"]:
        rels = [str(r) for r in record["files"]]
        return list(dict.fromkeys([record["file"], *rels] if record.get("file") else rels))
    rels = [record["file"]] + ([record["overlayFile"]] if record.get("overlayFile") else [])
    rels += list((record.get("captions") or {}).values())
    return rels


def story_documents(cfg: FirestoreSinkConfig, plan, dest: str) -> list[tuple[str, str, dict]]:
    """``[(collection, document id, fields)]`` of one published story (``plan``: a
    :class:`cloops.steer.publish.StoryPlan`), ``publishedAt`` not yet set."""
    t, sid = plan.template, plan.story_id
    entry = plan.entry or {}
    base = f"{t}/{sid}"
    manifest = plan.manifest or {}
    docs: list[tuple[str, str, dict]] = []
    refs = []
    for rec in manifest.get("components", []):
        kind = str(rec.get("type") or "component")
        collection = cfg.collection(kind)
        doc_id = f"{t}~{sid}~{rec['id']}"
        refs.append({"id": rec["id"], "type": kind, "collection": collection, "document": doc_id})
        doc = dict(rec)
        doc.update({
            "template": t, "story": sid, "status": STATUS_PUBLISHED,
            "url": object_url(dest, f"{base}/{rec['file']}") if rec.get("file") else None,
            "fileUrls": [{"file": rel, "url": object_url(dest, f"{base}/{rel}")}
                      for rel in component_files(rec)],
            "sourceDigests": dict((rec.get("source") or {}).get("artifacts") or {})})
        docs.append((collection, doc_id, _plain(doc)))
    bundle = entry.get("bundle") or {}
    story = {
        "template": t, "story": sid, "title": entry.get("title", sid),
        "tags": manifest.get("tags"), "status": STATUS_PUBLISHED,
        "needsReview": bool(entry.get("needsReview")), "score": entry.get("score"),
        "completedAt": entry.get("completedAt"),
        "bundleUrl": object_url(dest, f"{base}/bundle/"),
        "storyDataUrl": object_url(dest, f"{base}/bundle/story-data.json"),
        "bundleFiles": [object_url(dest, f"{t}/{f}") for f in bundle.get("files", [])],
        "manifestUrl": object_url(dest, f"{base}/ads/manifest.json") if plan.manifest else None,
        "manifestSha256": plan.manifest_sha256, "components": refs}
    return [(cfg.collection("story"), f"{t}~{sid}", _plain(story)), *docs]


def sync_documents(cfg: FirestoreSinkConfig, template: str, published: Iterable,
                   withdrawn: Iterable, dest: str, *, setting: str,
                   log=lambda line: None) -> DocumentReport:
    """Bring one template's documents in line with a publish: ``published`` plans (written
    where they differ, ``publishedAt`` aside) and ``withdrawn`` plans (their documents, where
    they exist and are not withdrawn yet, marked so). ``dest``: the storage destination the
    objects went to. ``setting``: where ``publish.firestore`` is configured, for errors.

    Raises:
        FirestoreAuthError: no credentials / permission denied (names the setting and
            ``GOOGLE_APPLICATION_CREDENTIALS``).
        FirestoreError: the database failed; documents already written stay, a re-run writes
            the rest.
    """
    db = Firestore(cfg.project, cfg.database, setting=setting)
    report = DocumentReport(f"{cfg.project}/{cfg.database}")
    wanted = [d for plan in published for d in story_documents(cfg, plan, dest)]
    by_collection: dict[str, list[str]] = {}
    for collection, doc_id, _ in wanted:
        by_collection.setdefault(collection, []).append(doc_id)
    there = {(c, i): snap for c, ids in by_collection.items()
             for i, snap in db.get_many(c, ids).items()}
    now = now_iso()
    writes = []
    for collection, doc_id, doc in wanted:
        old = there.get((collection, doc_id))
        if old is not None and old.exists and \
                {k: v for k, v in old.data.items() if k != "publishedAt"} == doc:
            report.unchanged += 1
            continue
        writes.append((collection, doc_id, {**doc, "publishedAt": now}))
    # withdrawals: the story's document says which component documents it has
    marks = []
    dropped: list[tuple[str, str]] = []  # components a story's manifest no longer lists
    for collection, doc_id, doc in wanted:
        old = there.get((collection, doc_id))
        if "components" in doc and old is not None and old.exists:
            keep = {(r["collection"], r["document"]) for r in doc["components"]}
            dropped += [(r["collection"], r["document"]) for r in old.data.get("components") or []
                        if isinstance(r, dict) and r.get("collection") and r.get("document")
                        and (r["collection"], r["document"]) not in keep]
    for c in dict.fromkeys(c for c, _ in dropped):
        for i, snap in db.get_many(c, [i for cc, i in dropped if cc == c]).items():
            if snap.exists and snap.data.get("status") != STATUS_WITHDRAWN:
                marks.append((c, i, {"status": STATUS_WITHDRAWN, "withdrawnAt": now,
                                     "withdrawnReason": "no longer in its story's manifest"}))
    withdrawn = list(withdrawn)
    if withdrawn:
        stories = db.get_many(cfg.collection("story"),
                              [f"{p.template}~{p.story_id}" for p in withdrawn])
        for plan in withdrawn:
            snap = stories.get(f"{plan.template}~{plan.story_id}")
            if snap is None or not snap.exists:
                continue  # never published here: nothing to withdraw
            targets = [(cfg.collection("story"), snap.id)]
            targets += [(r["collection"], r["document"]) for r in snap.data.get("components") or []
                        if isinstance(r, dict) and r.get("collection") and r.get("document")]
            current = {}
            for c in dict.fromkeys(c for c, _ in targets):
                current.update({(c, i): s for i, s in
                                db.get_many(c, [i for cc, i in targets if cc == c]).items()})
            for c, i in targets:
                s = current.get((c, i))
                if s is not None and s.exists and s.data.get("status") != STATUS_WITHDRAWN:
                    marks.append((c, i, {"status": STATUS_WITHDRAWN,
                                         "withdrawnReason": plan.withdraw, "withdrawnAt": now}))
    if writes:
        db.write(writes)
        for c, i, _ in writes:
            report.written.append(f"{c}/{i}")
            log(f"wrote firestore {c}/{i}")
    if marks:
        db.write(marks, merge=True)
        for c, i, _ in marks:
            report.withdrawn.append(f"{c}/{i}")
            log(f"withdrew firestore {c}/{i}")
    return report
