"""The backlog datasource: ``backlogs/<template>.json`` (and, through the same interface,
``backlogs/<template>.csv``: :mod:`cloops.data.csv_backlog`; a Firestore collection:
:mod:`cloops.data.firestore_backlog`).

Layer: **data**.

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
import os
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .config import parse_json
from ..core.errors import InputError
from ..core.fileio import atomic_write_bytes, atomic_write_text, dump_json, sha256_bytes
from .items import SLUG, STATUSES, Item, validate_item  # noqa: F401 - this module's interface

BACKLOGS_DIR = "backlogs"
LOCK_DIR = "build/.cloops/locks"


@dataclass
class Backlog:
    """A backlog file and its validated items (in file order)."""

    path: Path
    template: str
    items: list[Item]
    _by_id: dict[str, Item] | None = field(default=None, repr=False, compare=False)

    def get(self, item_id: str) -> Item | None:
        if self._by_id is None:
            self._by_id = {it.id: it for it in self.items}
        return self._by_id.get(item_id)


INDEX_DIR = "build/.cloops/backlogs"
INDEX_FORMAT = 1


def _index_path(root: Path, shown: str) -> Path:
    return root / INDEX_DIR / (shown.replace("/", "__") + ".pickle")


def _read_index(root: Path, shown: str) -> dict | None:
    try:
        with open(_index_path(root, shown), "rb") as fh:
            data = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == INDEX_FORMAT else None


RACY_NS = 2_000_000_000  # a file changed this recently has no stamp (file clocks are coarse)


def _file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """``(size, mtime_ns, ctime_ns, inode)`` of a backlog file, or None (absent, or changed in
    the last :data:`RACY_NS`). Any write or rename onto the file changes its ctime (which no
    tool sets back), so while the stamp is the one the index recorded, the bytes are the ones
    it was made from. A file's clock ticks coarsely (a few ms), so two writes in one tick could
    leave equal stamps: a file that recent is hashed instead (git's "racy" rule)."""
    import time
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _write_index(root: Path, shown: str, digest: str, template: str, rows: list[tuple],
                 stamp: tuple | None = None) -> None:
    """Keep the validated content of backlog ``shown`` (whose file has SHA-256 ``digest``):
    ``rows`` are ``(id, status, completedAt, error, input as JSON text, input digest)``;
    ``stamp``: the file's :func:`_file_stamp` taken before its bytes were read (a start whose
    file still has it neither reads nor hashes the file: ~6 ms at 10,000 stories)."""
    if not ((root / "build").is_dir() or (root / "dodo.py").is_file()):
        return  # not a project folder: leave no trace
    atomic_write_bytes(_index_path(root, shown), pickle.dumps(
        {"format": INDEX_FORMAT, "digest": digest, "template": template, "rows": rows,
         "stamp": stamp}, protocol=pickle.HIGHEST_PROTOCOL))


def _row(it: Item) -> tuple:
    # the input's own key order is kept (prompts may show it); the digest is of canonical JSON
    text = json.dumps(it.input, ensure_ascii=False, separators=(",", ":"))
    return (it.id, it.status, it.completed_at, it.error, text, it.input_digest)


def load_backlog(path: Path, *, shown: str | None = None, root: Path | None = None) -> Backlog:
    """Read and validate a JSON backlog.

    With ``root`` (the project folder), a validated backlog is kept as an index in
    ``build/.cloops/backlogs/`` under the SHA-256 of the file's bytes; while the file is
    unchanged the index is read instead (no JSON parsing or validation of 10,000 items, and each
    story's input is decoded only when a task needs it), so ``doit build:<id>`` costs about the
    same whatever the backlog's size. Any edit changes the digest and the file is read and
    validated in full.

    Raises:
        InputError: invalid JSON (with line/column), missing ``templateId``/``items``, an item
            that is not valid, or a duplicate id.
    """
    shown = shown or str(path)
    stamp = _file_stamp(Path(path))
    idx = _read_index(root, shown) if root is not None else None
    if idx is not None and stamp is not None and idx.get("stamp") == stamp:
        items = [Item(r[0], r[1], None, r[2], r[3], input_text=r[4], input_digest=r[5])
                 for r in idx["rows"]]  # the very bytes the index was made from
        return Backlog(path=Path(path), template=idx["template"], items=items)
    try:
        raw_bytes = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError("does not exist.", file=shown) from None
    digest = sha256_bytes(raw_bytes)
    if root is not None:
        if idx is not None and idx.get("digest") == digest:
            items = [Item(r[0], r[1], None, r[2], r[3], input_text=r[4], input_digest=r[5])
                     for r in idx["rows"]]
            if stamp is not None and idx.get("stamp") != stamp:  # touched, copied: same bytes
                try:
                    _write_index(root, shown, digest, idx["template"], idx["rows"], stamp)
                except OSError:
                    pass
            return Backlog(path=Path(path), template=idx["template"], items=items)
    data = parse_json(raw_bytes, shown)
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
    if root is not None:
        try:
            _write_index(root, shown, digest, template, [_row(it) for it in items], stamp)
        except OSError:
            pass  # an index is an optimisation: the backlog itself was read
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


def discover(root: Path) -> list:
    """Load every ``backlogs/*.json`` and ``backlogs/*.csv`` under ``root`` (by file name), then
    every template whose ``config.json`` names a Firestore collection as its ``datasource``
    (:class:`cloops.data.firestore_backlog.FirestoreBacklog`: read when its stories are first
    needed, so a project with one is loaded without a call)."""
    out: list = []
    bdir = root / BACKLOGS_DIR
    if bdir.is_dir():
        for p in sorted([*bdir.glob("*.json"), *bdir.glob("*.csv")]):
            shown = str(p.relative_to(root))
            out.append(load_csv_backlog(p, shown=shown) if p.suffix == ".csv"
                       else load_backlog(p, shown=shown, root=root))
    for config in sorted((root / "templates").glob("*/config.json")):
        try:
            source = json.loads(config.read_text(encoding="utf-8")).get("datasource")
        except (OSError, ValueError, AttributeError):
            continue  # the template's own loading reports a bad config
        if isinstance(source, str) and source.startswith("firestore://"):
            from .firestore_backlog import FirestoreBacklog, parse_url
            parse_url(source, shown=str(config.relative_to(root)))
            out.append(FirestoreBacklog(source, config.parent.name))
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


def batchable(path: Path | str) -> bool:
    """True when status changes to backlog ``path`` can be applied together by
    :func:`set_statuses` (a JSON file); False for a ``firestore://`` document (one
    preconditioned update per item) and a CSV file (one row each), which :func:`set_status`
    writes one by one."""
    return not (isinstance(path, str) and path.startswith("firestore://")) and \
        Path(path).suffix != ".csv"


def set_status(root: Path, path: Path, item_id: str, status: str, *,
               error: str | None = None) -> bool:
    """Set one item's status (and ``completedAt``/``error``); return True if the file changed.

    ``path`` is the backlog's file, or its ``firestore://`` URL (text): then the document is
    updated under a precondition (:func:`cloops.data.firestore_backlog.set_status`, which
    raises ``EditedMeanwhile`` when the app edited it meanwhile).

    Only that item's status fields change; every other byte of meaning (other items, key order,
    extra fields) is kept. A file that no longer parses is left untouched.

    Raises:
        InputError: the backlog became invalid JSON, or the id is gone.
    """
    if status not in STATUSES:
        raise ValueError(status)
    if isinstance(path, str) and path.startswith("firestore://"):
        from .firestore_backlog import set_status as set_document_status
        return set_document_status(path, item_id, status,
                                   completed_at=now_iso() if status == "completed" else None,
                                   error=error if status == "failed" else None)
    if Path(path).suffix == ".csv":
        from .csv_backlog import set_row_status
        with _locked(root, path):
            return set_row_status(Path(path), item_id, status,
                                  now_iso() if status == "completed" else None,
                                  error if status == "failed" else None,
                                  set_completed=status == "completed", shown=str(path))
    changed, missing = set_statuses(root, Path(path), [(item_id, status, error, None)])
    if missing:
        raise InputError(f"story {item_id!r} is no longer in the backlog.", file=str(path))
    return bool(changed)


def set_statuses(root: Path, path: Path,
                 changes: list[tuple[str, str, str | None, str | None]]) -> tuple[list[str], list[str]]:
    """Apply several status changes to a JSON backlog file in one locked read and one write:
    ``changes`` are ``(item id, status, error, completedAt)`` in the order they happened
    (``completedAt`` None: now, for ``completed``), each applied as :func:`set_status` would.
    Returns ``(ids whose fields changed, ids no longer in the backlog)``; a file that no longer
    parses raises and is left untouched. One write of a 1,000-story backlog costs ~5 ms
    (parse, splice, write, re-index): what a run saves by writing its changes together.

    Raises:
        InputError: the backlog does not exist or became invalid JSON.
        ValueError: a status that is not one of :data:`STATUSES`.
    """
    for _id, status, _err, _at in changes:
        if status not in STATUSES:
            raise ValueError(status)
    with _locked(root, path):
        try:
            before_text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError("does not exist.", file=str(path)) from None
        data = parse_json(before_text, str(path))
        where = {raw.get("id"): index for index, raw in enumerate(data.get("items", []))
                 if isinstance(raw, dict)}
        first: dict[str, tuple] = {}
        missing: list[str] = []
        for item_id, status, error, at in changes:
            index = where.get(item_id)
            if index is None:
                missing.append(item_id)
                continue
            raw = data["items"][index]
            first.setdefault(item_id, _status_fields(raw))
            raw["status"] = status
            if status == "completed":
                raw["completedAt"] = at or now_iso()
                raw["error"] = None
            elif status == "failed":
                raw["error"] = error
            elif status == "pending":
                raw["error"] = None
        changed = [item_id for item_id, before in first.items()
                   if _status_fields(data["items"][where[item_id]]) != before]
        if not changed:
            return [], missing
        text = splice_items(before_text, {where[item_id]: data["items"][where[item_id]]
                                          for item_id in changed})
        if text is None:  # a layout the splice does not follow: write it all anew
            text = dump_json(data)
        atomic_write_text(path, text)
        _reindex(Path(root), path, before_text, text,
                 {item_id: data["items"][where[item_id]] for item_id in changed})
        return changed, missing


def _status_fields(raw: dict) -> tuple:
    return raw.get("status"), raw.get("completedAt"), raw.get("error")


_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


def splice_item(text: str, index: int, item: dict) -> str | None:
    """``text`` (a backlog's JSON) with ``items[index]`` replaced by ``item``, every other
    byte kept; None when the text is not an object with an ``items`` array of that length
    (:func:`splice_items` with one item)."""
    return splice_items(text, {index: item})


def splice_items(text: str, items: dict[int, dict]) -> str | None:
    """``text`` (a backlog's JSON) with ``items[i]`` replaced by ``items[i]`` for each index
    given, every other byte kept; None when the text is not an object with an ``items`` array
    that long.

    Rewriting a whole 10,000-item backlog for each status change costs a second of JSON
    encoding per write; this finds the items' spans with the C scanner in one pass over the
    text (up to the last index given) and re-encodes only them, each indented like the line it
    starts on.
    """
    if not items:
        return text
    last = max(items)

    def ws(pos: int) -> int:
        return _WS.match(text, pos).end()

    spans: list[tuple[int, int, dict]] = []
    try:
        pos = ws(0)
        if text[pos] != "{":
            return None
        pos = ws(pos + 1)
        while text[pos] != "}":
            key, pos = _DECODER.raw_decode(text, pos)
            pos = ws(pos)
            if text[pos] != ":":
                return None
            pos = ws(pos + 1)
            if key == "items" and text[pos] == "[":
                pos = ws(pos + 1)
                for i in range(last + 1):
                    start = pos
                    _value, end = _DECODER.raw_decode(text, pos)
                    if i in items:
                        spans.append((start, end, items[i]))
                    if i == last:
                        break
                    pos = ws(end)
                    if text[pos] != ",":
                        return None
                    pos = ws(pos + 1)
                break
            _value, pos = _DECODER.raw_decode(text, pos)
            pos = ws(pos)
            if text[pos] == ",":
                pos = ws(pos + 1)
    except (IndexError, ValueError):
        return None
    if len(spans) != len(items):
        return None
    out, done = [], 0
    for start, end, item in spans:
        out += [text[done:start], _respliced(text, start, end, item)]
        done = end
    out.append(text[done:])
    return "".join(out)


def _respliced(text: str, start: int, end: int, item: dict) -> str:
    """``item`` encoded to stand where ``text[start:end]`` stands: on one line if that was,
    else indented as it was."""
    old = text[start:end]
    if "\n" not in old:
        new = json.dumps(item, ensure_ascii=False)
    else:
        line_start = text.rfind("\n", 0, start) + 1
        base = text[line_start:start] if not text[line_start:start].strip() else ""
        second = old.split("\n", 1)[1]
        lead = second[:len(second) - len(second.lstrip(" \t"))]
        unit = lead[len(base):] if lead.startswith(base) and len(lead) > len(base) else "  "
        new = json.dumps(item, indent=unit, ensure_ascii=False).replace("\n", "\n" + base)
    return new


def _reindex(root: Path, path: Path, before: str, after: str, raws: dict[str, dict]) -> None:
    """After a status write: a backlog that was valid stays valid, so its index is carried over
    to the new content with the status fields of ``raws`` (``{id: item}``) changed (instead of
    a full re-read)."""
    try:
        shown = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return
    idx = _read_index(root, shown)
    if idx is None or idx.get("digest") != sha256_bytes(before.encode("utf-8")):
        return
    rows = [(r[0], raws[r[0]].get("status"), raws[r[0]].get("completedAt"),
             raws[r[0]].get("error"), *r[4:]) if r[0] in raws else r for r in idx["rows"]]
    try:
        _write_index(root, shown, sha256_bytes(after.encode("utf-8")), idx["template"], rows,
                     _file_stamp(path))  # the file just written, under the backlog's lock
    except OSError:
        pass


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
