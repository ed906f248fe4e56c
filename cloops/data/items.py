"""A backlog item and its validation: what every datasource (JSON, CSV, Firestore) makes.

Layer: **data**. Re-exported by :mod:`cloops.data.backlog`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..core.errors import InputError
from ..core.fileio import sha256_json
from .rules import validate_rules

STATUSES = ("pending", "in_progress", "completed", "failed")
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class Item:
    """One backlog item (read-only once loaded).

    Attributes:
        id: slug ``[a-z0-9-]+``; the story's folder name.
        status: one of ``STATUSES``.
        input: ``{"title": str, "summary": str, "keyMoments": [str, ...], ...}``; extra keys
            (e.g. ``reference``, the scripture passage) are kept and offered to steps. Items
            loaded from a backlog index keep it as canonical JSON text until first read.
        completed_at: ISO-8601 UTC time of completion or None.
        error: the last failure's message or None.
        input_digest: the first 16 hex digits of the SHA-256 of the input's canonical JSON
            (what story seals and completed-story records compare).
    """

    __slots__ = ("id", "status", "completed_at", "error", "_input", "_text", "_digest")

    def __init__(self, id: str, status: str, input: dict | None = None,
                 completed_at: str | None = None, error: str | None = None, *,
                 input_text: str | None = None, input_digest: str | None = None):
        self.id = id
        self.status = status
        self.completed_at = completed_at
        self.error = error
        self._input = input
        self._text = input_text
        self._digest = input_digest

    @property
    def input(self) -> dict:
        if self._input is None:
            self._input = json.loads(self._text) if self._text is not None else {}
        return self._input

    @property
    def input_digest(self) -> str:
        if self._digest is None:
            self._digest = sha256_json(self.input)[:16]
        return self._digest

    def _key(self) -> tuple:
        return (self.id, self.status, self.input, self.completed_at, self.error)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Item) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # input is a dict: not hashable

    def __repr__(self) -> str:
        return f"Item(id={self.id!r}, status={self.status!r})"


def validate_item(raw: Any, where: str, file: str) -> Item:
    """Validate one backlog item (``where`` is its field path, e.g. ``items[3]``).

    Raises:
        InputError: naming the file and field.
    """
    if not isinstance(raw, dict):
        raise InputError("must be an object.", file=file, field=where)
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not SLUG.fullmatch(item_id):
        raise InputError(f"id {item_id!r} is not a slug.", file=file, field=f"{where}.id",
                         fix="use lowercase letters, digits and single '-' only, e.g. "
                             "\"noah-s-ark\".")
    status = raw.get("status", "pending")
    if status not in STATUSES:
        raise InputError(f"status {status!r} is not one of {', '.join(STATUSES)}.", file=file,
                         field=f"{where}.status", fix="set it to \"pending\".")
    inp = raw.get("input")
    if not isinstance(inp, dict):
        raise InputError("is missing or not an object.", file=file, field=f"{where}.input",
                         fix="add \"input\": {\"title\", \"summary\", \"keyMoments\"}.")
    for key, kind in (("title", str), ("summary", str), ("keyMoments", list)):
        value = inp.get(key)
        if value is None:
            raise InputError("is missing.", file=file, field=f"{where}.input.{key}",
                             fix=f"add the story's {key}.")
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            raise InputError(f"must be a non-empty {'string' if kind is str else 'list'}.",
                             file=file, field=f"{where}.input.{key}")
    if not inp["keyMoments"] or not all(isinstance(m, str) and m.strip() for m in inp["keyMoments"]):
        raise InputError("must be a non-empty list of non-empty strings.", file=file,
                         field=f"{where}.input.keyMoments")
    if "rules" in inp:  # the story's own rules (cloops.data.rules): checked, kept as written
        validate_rules(inp["rules"], file=file, field=f"{where}.input.rules")
    return Item(id=item_id, status=status, input=inp, completed_at=raw.get("completedAt"),
                error=raw.get("error"))
