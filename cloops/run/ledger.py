"""The usage ledger: every service call — cache hits included — in SQLite under ``build/``.

Layer: **run**.

One row per call in ``calls``; one row per doit run in ``runs``. Engine tests count the calls
of a run here: that count is the product.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

LEDGER_FILE = "build/.cloops/ledger.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, pid INTEGER, argv TEXT
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, at TEXT NOT NULL,
    template TEXT, story TEXT, step TEXT, target TEXT,
    service TEXT NOT NULL, backend TEXT NOT NULL, model TEXT,
    offline INTEGER NOT NULL DEFAULT 0, cache_hit INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER DEFAULT 0, output_tokens INTEGER DEFAULT 0,
    reasoning_tokens INTEGER DEFAULT 0, images INTEGER DEFAULT 0, characters INTEGER DEFAULT 0,
    audio_s REAL DEFAULT 0, duration_s REAL DEFAULT 0, cost_usd REAL DEFAULT 0,
    saved_usd REAL DEFAULT 0,
    attempts INTEGER DEFAULT 1, error TEXT
);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id);
CREATE INDEX IF NOT EXISTS calls_story ON calls(template, story);
"""


@dataclass
class CallRecord:
    """One call as recorded. Units: tokens, images, characters, seconds, US dollars.

    ``cost_usd`` is what the call cost (0 for a cache hit); ``saved_usd`` what a cache hit
    would have cost. ``attempts`` counts tries including retries of transient failures.
    """

    service: str
    backend: str
    model: str = ""
    template: str = ""
    story: str = ""
    step: str = ""
    target: str = ""
    offline: bool = False
    cache_hit: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    characters: int = 0
    audio_s: float = 0.0
    duration_s: float = 0.0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    attempts: int = 1
    error: str | None = None
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))


_RECORD_FIELDS = tuple(f.name for f in fields(CallRecord))
_INSERT = (f"INSERT INTO calls (run_id,{','.join(_RECORD_FIELDS)}) "
           f"VALUES ({','.join('?' * (len(_RECORD_FIELDS) + 1))})")

# Columns added after the first release of the ledger: (name, SQL type and default).
MIGRATIONS = (("saved_usd", "REAL DEFAULT 0"),)


def connect(path: Path) -> sqlite3.Connection:
    """Open the ledger, creating tables and adding columns older ledgers lack."""
    con = sqlite3.connect(path, timeout=30, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: safe against a killed process
    con.executescript(SCHEMA)
    have = {r[1] for r in con.execute("PRAGMA table_info(calls)")}
    for name, decl in MIGRATIONS:
        if name not in have:
            con.execute(f"ALTER TABLE calls ADD COLUMN {name} {decl}")
    return con


class Ledger:
    """Append-only call log for one run (thread-safe; one short transaction per call)."""

    def __init__(self, root: Path, run_id: str | None = None):
        self.path = Path(root) / LEDGER_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id or os.environ.get("CLOOPS_RUN_ID") or f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._lock = threading.Lock()
        self._started = False
        self._con: sqlite3.Connection | None = None
        self.spent_usd = 0.0  # this run's cost so far (the live progress view reads it)

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = connect(self.path)
        return self._con

    def _start(self, con: sqlite3.Connection) -> None:
        if not self._started:
            import sys
            con.execute("INSERT OR IGNORE INTO runs VALUES (?,?,?,?)",
                        (self.run_id, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         os.getpid(), " ".join(sys.argv[1:])))
            self._started = True

    def record(self, rec: CallRecord) -> None:
        """Append one call's record (its own short transaction).

        Raises:
            sqlite3.Error: the ledger file cannot be written.
        """
        # the record's fields are scalars: read directly (dataclasses.asdict copies each value
        # deeply, ~0.1 ms a call)
        values = [self.run_id] + [int(v) if isinstance(v, bool) else v
                                  for v in (getattr(rec, name) for name in _RECORD_FIELDS)]
        with self._lock:
            con = self._connect()  # one connection per run, used under the lock
            with con:
                self._start(con)
                con.execute(_INSERT, values)
            self.spent_usd += rec.cost_usd or 0.0

    def calls(self, run_id: str | None = None) -> list[dict]:
        """The calls of ``run_id`` (default: this run) as dicts, oldest first."""
        if not self.path.exists():
            return []
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT * FROM calls WHERE run_id=? ORDER BY id",
                               (run_id or self.run_id,)).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()
        return [dict(r) for r in rows]


