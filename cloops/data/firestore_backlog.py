"""Firestore backlogs: a collection as a template's backlog, beside JSON and CSV.

Layer: **data**.

A template names it in its ``config.json``: ``"datasource": "firestore://<project>/<collection>"``
(the database is ``(default)``; ``firestore://<project>/<database>/<collection>`` names another).
Each document is one story: the document id is the story id and the fields are the backlog
item's (as in a JSON backlog)::

    stories/noah-s-ark  {"status": "pending",
                         "input": {"title": ..., "summary": ..., "keyMoments": [...], ...},
                         "completedAt": null, "error": null}

validated with the JSON backlog's messages, naming the document and the field. Stories are in
document-id order. The collection is read once per run when the run needs every story;
``doit build:<id>`` (any lookup of one story before the whole list is needed) reads that one
document.

**Status writes** (``status``, ``completedAt``, ``error``) go back to the document with
Firestore's update-time precondition, so an edit made in the app meanwhile is never
overwritten: the run remembers each document as it read it; when the document's other fields
differ from that (or the precondition fails and a re-read shows they differ) the write is
refused with :class:`EditedMeanwhile`, the app's edit stays and the story is left for the next
run, which reads the edited document. A write racing only another status write of the same run
re-reads and goes ahead.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timezone
from typing import Any

from ..core.errors import InputError
from ..services.firestore import Firestore, FirestoreConflict, FirestoreError, Snapshot
from .items import SLUG, Item, validate_item

SCHEME = "firestore://"
STATUS_FIELDS = ("status", "completedAt", "error")
_URL = re.compile(r"firestore://([a-z][a-z0-9-]{4,28}[a-z0-9])/(?:([^/]+)/)?([^/]+)")
_CLIENTS: dict[tuple[str, str], Firestore] = {}
_SEEN: dict[tuple[str, str], Snapshot] = {}   # (url, id) -> the document as this process knows it
_LOCK = threading.Lock()


class EditedMeanwhile(InputError):
    """A story's document was edited in the app while the run built it: its status was not
    written (the edit is kept) and the story is left for the next run."""


def is_firestore(source: Any) -> bool:
    """True when ``source`` (a backlog path or a config's ``datasource``) is a Firestore URL."""
    return isinstance(source, str) and source.startswith(SCHEME)


def parse_url(url: str, *, shown: str = "config.json") -> tuple[str, str, str]:
    """``(project, database, collection)`` of ``firestore://<project>[/<database>]/<collection>``.

    Raises:
        InputError: not such a URL (naming ``shown`` and the field ``datasource``).
    """
    m = _URL.fullmatch(url)
    if not m:
        raise InputError(f"{url!r} is not a Firestore backlog URL.", file=shown,
                         field="datasource",
                         fix="write firestore://<project id>/<collection>, e.g. "
                             "firestore://my-app/stories.")
    return m.group(1), m.group(2) or "(default)", m.group(3)


def _client(project: str, database: str) -> Firestore:
    with _LOCK:
        key = (project, database)
        if key not in _CLIENTS:
            _CLIENTS[key] = Firestore(project, database,
                                     setting="datasource in the template's config.json")
        return _CLIENTS[key]


def _iso(value: Any) -> Any:
    """A Firestore timestamp as the backlog's ISO-8601 UTC text; anything else as it is."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(microsecond=0).isoformat() \
            .replace("+00:00", "Z")
    return value


def _plain(value: Any) -> Any:
    """Document values as JSON values (timestamps as ISO text), for the steps and digests."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _iso(value)


def _item(url: str, snap: Snapshot) -> Item:
    shown = f"{url}/{snap.id}"
    if not SLUG.fullmatch(snap.id):
        raise InputError(f"document id {snap.id!r} is not a slug (the id is the story id).",
                         file=url, field=snap.id,
                         fix="name the document with lowercase letters, digits and single "
                             "'-' only, e.g. noah-s-ark.")
    data = _plain(snap.data or {})
    if "id" in data and data["id"] != snap.id:
        raise InputError(f"id {data['id']!r} differs from the document id {snap.id!r}.",
                         file=shown, field="id", fix="remove the field or make them equal.")
    raw = {**data, "id": snap.id}
    try:
        return validate_item(raw, "document", shown)
    except InputError as exc:  # the field as the app names it: input.title, not document.input.title
        text = str(exc).removeprefix(f"{shown}, field '{exc.field}': ")
        if exc.fix:
            text = text.removesuffix(f" Fix: {exc.fix}")
        field = (exc.field or "").removeprefix("document").lstrip(".") or None
        raise InputError(text, file=shown, field=field, fix=exc.fix) from None


class FirestoreBacklog:
    """A template's backlog in a Firestore collection: the interface of
    :class:`cloops.data.backlog.Backlog` (``path``, ``template``, ``items``, ``get``).

    ``path`` is the URL (text). ``items`` reads the whole collection on first use; ``get``
    before that reads only the one document.

    Raises (from ``items``/``get``):
        InputError: a malformed document (naming it and the field).
        FirestoreError: the database cannot be read (names ``datasource`` and the variable).
    """

    def __init__(self, url: str, template: str):
        self.url = url
        self.path = url
        self.template = template
        self.project, self.database, self.collection = parse_url(url)
        self._items: list[Item] | None = None
        self._by_id: dict[str, Item | None] = {}

    @property
    def loaded(self) -> bool:
        return self._items is not None

    @property
    def items(self) -> list[Item]:
        if self._items is None:
            snaps = sorted(_client(self.project, self.database).stream(self.collection),
                           key=lambda s: s.id)  # Firestore's own order (not every emulator's)
            items = [_item(self.url, s) for s in snaps]
            with _LOCK:
                for s in snaps:
                    _SEEN[(self.url, s.id)] = s
            self._items = items
            self._by_id = {it.id: it for it in items}
        return self._items

    def get(self, item_id: str) -> Item | None:
        if self._items is None and item_id not in self._by_id:
            if not SLUG.fullmatch(item_id or ""):
                return None
            snap = _client(self.project, self.database).get(self.collection, item_id)
            if snap.exists:
                with _LOCK:
                    _SEEN[(self.url, snap.id)] = snap
            self._by_id[item_id] = _item(self.url, snap) if snap.exists else None
        return self._by_id.get(item_id)

    def __repr__(self) -> str:
        return f"FirestoreBacklog({self.url!r}, template={self.template!r})"


def _mine(data: dict | None) -> dict:
    """A document's fields that are the app's (everything but the status fields)."""
    return {k: v for k, v in (data or {}).items() if k not in STATUS_FIELDS}


def set_status(url: str, item_id: str, status: str, *, completed_at: str | None,
               error: str | None) -> bool:
    """Write one story's ``status`` (and ``completedAt``/``error`` as a JSON backlog would)
    back to its document, unless the app edited it since this process read it. Returns True
    when the document changed.

    Raises:
        EditedMeanwhile: the document's other fields differ from what the run read (or it was
            deleted): nothing was written; the story is left for the next run.
        FirestoreError: the database failed.
    """
    project, database, collection = parse_url(url)
    db = _client(project, database)
    with _LOCK:
        seen = _SEEN.get((url, item_id))
    current = db.get(collection, item_id)
    if seen is None:
        seen = current  # not read by this process: nothing to compare with but now
    for _attempt in range(5):
        if not current.exists:
            raise EditedMeanwhile("the story's document was deleted while the run built it: "
                                  "no status written.", file=f"{url}/{item_id}",
                                  fix="nothing to do; restore the document to build it again.")
        if _mine(current.data) != _mine(seen.data):
            changed = sorted(k for k in set(_mine(current.data)) | set(_mine(seen.data))
                             if _mine(current.data).get(k) != _mine(seen.data).get(k))
            raise EditedMeanwhile(
                f"edited in the app while the run built it ({', '.join(changed)} changed): "
                f"status {status!r} was not written and the edit is kept.",
                file=f"{url}/{item_id}",
                fix="nothing to do: the next run reads the edited story and builds it.")
        fields: dict[str, Any] = {"status": status}
        if status == "completed":
            fields.update(completedAt=completed_at, error=None)
        elif status == "failed":
            fields["error"] = error
        elif status == "pending":
            fields["error"] = None
        data = current.data or {}
        if all(_iso(data.get(k)) == v for k, v in fields.items()):
            return False
        try:
            when = db.update_if(collection, item_id, fields, current.update_time)
        except FirestoreConflict:
            current = db.get(collection, item_id)  # someone wrote: re-check whose edit it was
            continue
        with _LOCK:
            _SEEN[(url, item_id)] = Snapshot(item_id, {**data, **fields}, when)
        return True
    raise FirestoreError(f"{url}/{item_id}: the document kept changing while its status was "
                         "written. Fix: run again.")
