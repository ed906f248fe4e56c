"""CSV backlogs: ``backlogs/<template>.csv``, the same datasource as the JSON backlog.

Layer: **data**.

Columns (header row, any order): ``id``, ``title``, ``summary``, ``keyMoments`` (separated by
``|``), ``status``; optional ``completedAt`` and ``error``. Any other column the producer adds is
kept and offered to steps as part of the story input (e.g. ``reference``). The template is the
file name (``comic-books-kids.csv`` → ``comic-books-kids``).

Status writes change only the ``status`` (and ``completedAt``/``error`` when those columns
exist) of one row: every other byte of the file — other rows, extra columns, the row order,
quoting, line endings — is kept as it was. The row is found by parsing, and only its physical
lines are replaced, so a quoted field spanning lines is handled too.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError

REQUIRED = ("id", "title", "summary", "keyMoments", "status")
KNOWN = REQUIRED + ("completedAt", "error")


@dataclass(frozen=True)
class Row:
    """One record: its fields and the physical lines ``[first, last)`` it occupies (0-based)."""

    fields: dict[str, str]
    first: int
    last: int


def parse(text: str, shown: str) -> tuple[list[str], list[Row], csv.Dialect]:
    """Parse CSV text into its header and rows, tracking each row's physical lines.

    Raises:
        InputError: no header, a missing required column, or a row with the wrong number of
            fields (naming the line).
    """
    lines = text.splitlines(keepends=True)
    if not lines:
        raise InputError("is empty: it needs a header row.", file=shown,
                         fix=f"start it with: {','.join(REQUIRED)}")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    it = iter(lines)
    reader = csv.reader(it, dialect)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise InputError(f"line 1: {exc}.", file=shown) from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"the header lacks the column(s) {', '.join(missing)}.", file=shown,
                         field="line 1", fix=f"the header must name: {', '.join(REQUIRED)}.")
    rows: list[Row] = []
    start = reader.line_num
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(f"line {start + 1}: {exc}.", file=shown,
                             fix="check the quotes on that line.") from None
        end = reader.line_num
        if not rec or all(not c.strip() for c in rec):
            start = end
            continue
        if len(rec) != len(header):
            raise InputError(f"line {start + 1} has {len(rec)} fields but the header has "
                             f"{len(header)}.", file=shown, field=f"line {start + 1}",
                             fix="quote fields that contain the delimiter, and give every row "
                                 "every column.")
        rows.append(Row(dict(zip(header, rec)), start, end))
        start = end
    return header, rows, dialect


def to_item_dict(row: Row) -> dict:
    """A row as a JSON-backlog item dict (validated afterwards like any backlog item)."""
    f = row.fields
    inp = {"title": f["title"], "summary": f["summary"],
           "keyMoments": [m.strip() for m in f["keyMoments"].split("|") if m.strip()]}
    for k, v in f.items():
        if k not in KNOWN and v != "":
            inp[k] = v
    return {"id": f["id"].strip(), "status": f["status"].strip() or "pending", "input": inp,
            "completedAt": f.get("completedAt") or None, "error": f.get("error") or None}


def set_row_status(path: Path, item_id: str, status: str, completed_at: str | None,
                   error: str | None, *, set_completed: bool, shown: str) -> bool:
    """Rewrite one row's status fields in place; return True when the file changed.

    Raises:
        InputError: the file no longer parses, or the id is gone.
    """
    from ..core.fileio import atomic_write_bytes
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    header, rows, dialect = parse(text, shown)
    lines = text.splitlines(keepends=True)
    for row in rows:
        if row.fields["id"].strip() != item_id:
            continue
        new = dict(row.fields)
        new["status"] = status
        if "completedAt" in new and set_completed:
            new["completedAt"] = completed_at or ""
        if "error" in new:
            new["error"] = error or ""
        if new == row.fields:
            return False
        old_text = "".join(lines[row.first:row.last])
        ending = "\r\n" if old_text.endswith("\r\n") else "\n" if old_text.endswith("\n") else ""
        buf = io.StringIO()
        csv.writer(buf, dialect, lineterminator=ending).writerow([new[c] for c in header])
        lines[row.first:row.last] = [buf.getvalue()]
        atomic_write_bytes(path, "".join(lines).encode("utf-8"))
        return True
    raise InputError(f"story {item_id!r} is no longer in the backlog.", file=shown)
