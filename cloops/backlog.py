"""The backlog datasource: ``backlogs/<template>.json``.

Shape (the seed spec's)::

    {"templateId": "comic-books-standard",
     "items": [{"id": "noah-s-ark", "status": "pending",
                "input": {"title": ..., "summary": ..., "keyMoments": [...]},
                "completedAt": null, "error": null}]}

Status moves ``pending → in_progress → completed | failed``. Status writes re-read the file under
an exclusive lock, change only that item's ``status``/``completedAt``/``error`` and replace the
file atomically, so two tasks finishing at once never lose each other's write and a kill never
leaves half a backlog. The backlog is never a doit ``file_dep``: a status write triggers nothing.
"""

from __future__ import annotations

import fcntl
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .config import read_json
from .errors import InputError
from .fileio import atomic_write_text, dump_json

STATUSES = ("pending", "in_progress", "completed", "failed")
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
BACKLOGS_DIR = "backlogs"
LOCK_DIR = "build/.cloops/locks"


@dataclass(frozen=True)
class Item:
    """One backlog item.

    Attributes:
        id: slug ``[a-z0-9-]+``; the story's folder name.
        status: one of ``STATUSES``.
        input: ``{"title": str, "summary": str, "keyMoments": [str, ...], ...}``; extra keys
            (e.g. ``reference``, the scripture passage) are kept and offered to steps.
        completed_at: ISO-8601 UTC time of completion or None.
        error: the last failure's message or None.
    """

    id: str
    status: str
    input: dict
    completed_at: str | None = None
    error: str | None = None


@dataclass
class Backlog:
    """A backlog file and its validated items (in file order)."""

    path: Path
    template: str
    items: list[Item]

    def get(self, item_id: str) -> Item | None:
        for it in self.items:
            if it.id == item_id:
                return it
        return None


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
    return Item(id=item_id, status=status, input=inp, completed_at=raw.get("completedAt"),
                error=raw.get("error"))


def load_backlog(path: Path, *, shown: str | None = None) -> Backlog:
    """Read and validate a JSON backlog.

    Raises:
        InputError: invalid JSON (with line/column), missing ``templateId``/``items``, an item
            that is not valid, or a duplicate id.
    """
    shown = shown or str(path)
    data = read_json(path, shown)
    if not isinstance(data, dict):
        raise InputError("must be a JSON object with \"templateId\" and \"items\".", file=shown)
    template = data.get("templateId")
    if not isinstance(template, str) or not template:
        raise InputError("is missing.", file=shown, field="templateId",
                         fix="set it to the template folder name, e.g. \"comic-books-standard\".")
    items_raw = data.get("items")
    if not isinstance(items_raw, list):
        raise InputError("is missing or not a list.", file=shown, field="items")
    items: list[Item] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(items_raw):
        item = validate_item(raw, f"items[{i}]", shown)
        if item.id in seen:
            raise InputError(f"duplicate id {item.id!r} (also items[{seen[item.id]}]).",
                             file=shown, field=f"items[{i}].id",
                             fix="give every story a unique id.")
        seen[item.id] = i
        items.append(item)
    return Backlog(path=Path(path), template=template, items=items)


def load_csv_backlog(path: Path, *, shown: str | None = None) -> Backlog:
    """Read and validate a CSV backlog (see :mod:`cloops.csv_backlog`); the template is the
    file's stem.

    Raises:
        InputError: a malformed row (naming its line), a missing column, an invalid or duplicate id.
    """
    from . import csv_backlog
    shown = shown or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"is not UTF-8 text ({exc.reason}).", file=shown,
                         fix="save it as UTF-8 CSV.") from None
    _header, rows, _dialect = csv_backlog.parse(text, shown)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for row in rows:
        where = f"line {row.first + 1}"
        item = validate_item(csv_backlog.to_item_dict(row), where, shown)
        if item.id in seen:
            raise InputError(f"duplicate id {item.id!r} (also line {seen[item.id]}).", file=shown,
                             field=f"{where}.id", fix="give every story a unique id.")
        seen[item.id] = row.first + 1
        items.append(item)
    return Backlog(path=Path(path), template=Path(path).stem, items=items)


def discover(root: Path) -> list[Backlog]:
    """Load every ``backlogs/*.json`` and ``backlogs/*.csv`` under ``root`` (by file name)."""
    bdir = root / BACKLOGS_DIR
    if not bdir.is_dir():
        return []
    out = []
    for p in sorted([*bdir.glob("*.json"), *bdir.glob("*.csv")]):
        shown = str(p.relative_to(root))
        out.append(load_csv_backlog(p, shown=shown) if p.suffix == ".csv"
                   else load_backlog(p, shown=shown))
    return out


@contextmanager
def _locked(root: Path, path: Path) -> Iterator[None]:
    lock_dir = root / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{path.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_status(root: Path, path: Path, item_id: str, status: str, *,
               error: str | None = None) -> bool:
    """Set one item's status (and ``completedAt``/``error``); return True if the file changed.

    Only that item's status fields change; every other byte of meaning (other items, key order,
    extra fields) is kept. A file that no longer parses is left untouched.

    Raises:
        InputError: the backlog became invalid JSON, or the id is gone.
    """
    if status not in STATUSES:
        raise ValueError(status)
    if Path(path).suffix == ".csv":
        from .csv_backlog import set_row_status
        with _locked(root, path):
            return set_row_status(Path(path), item_id, status,
                                  now_iso() if status == "completed" else None,
                                  error if status == "failed" else None,
                                  set_completed=status == "completed", shown=str(path))
    with _locked(root, path):
        data = read_json(path)
        for raw in data.get("items", []):
            if isinstance(raw, dict) and raw.get("id") == item_id:
                before = (raw.get("status"), raw.get("completedAt"), raw.get("error"))
                raw["status"] = status
                if status == "completed":
                    raw["completedAt"] = now_iso()
                    raw["error"] = None
                elif status == "failed":
                    raw["error"] = error
                elif status == "pending":
                    raw["error"] = None
                if (raw.get("status"), raw.get("completedAt"), raw.get("error")) == before:
                    return False
                atomic_write_text(path, dump_json(data))
                return True
    raise InputError(f"story {item_id!r} is no longer in the backlog.", file=str(path))


def seed_items(stories: list[dict]) -> list[dict]:
    """Turn ``data/bible-stories.json`` entries into pending backlog items."""
    out = []
    for s in stories:
        inp = {"title": s["title"], "summary": s["summary"], "keyMoments": list(s["keyMoments"])}
        if s.get("reference"):
            inp["reference"] = s["reference"]
        out.append({"id": s["id"], "status": "pending", "input": inp, "completedAt": None,
                    "error": None})
    return out


def to_json(template: str, items: list[dict]) -> str:
    return dump_json({"templateId": template, "items": items})


if __name__ == "__main__":  # pragma: no cover - maintenance helper
    import sys
    src, template = sys.argv[1], sys.argv[2]
    print(to_json(template, seed_items(json.load(open(src))["items"])), end="")
