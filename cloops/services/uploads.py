"""Files a backend uploaded to its provider, by content, so each is uploaded once.

Layer: **services**. A reference sheet passed with every page of a story (and, for a library
character, with every story) would otherwise be uploaded with every page. The book lives beside
the response cache (``<cache dir>/uploads.json``): ``{sha256: {"url", "expiresAt"}}`` per
backend, shared by every run; an upload whose expiry is near is made again.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path

from ..core.fileio import atomic_write_json

MARGIN_S = 600.0  # an upload expiring within this is not reused: a prediction may queue
_LOCK = threading.Lock()


def _epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (``2026-11-29T10:00:00.000Z``), or None."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class UploadBook:
    """The uploads of one backend (``name``) noted in ``directory``; None-safe for a call made
    outside the hub (then nothing is remembered across processes)."""

    def __init__(self, directory: Path | None, name: str):
        self.path = Path(directory) / "uploads.json" if directory is not None else None
        self.name = name
        self._memory: dict[str, dict] = {}

    def _read(self) -> dict:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def url(self, sha256: str) -> str | None:
        """The URL of an upload of this content still usable for a while, or None."""
        with _LOCK:
            rec = self._memory.get(sha256) or self._read().get(self.name, {}).get(sha256)
        if not isinstance(rec, dict) or not rec.get("url"):
            return None
        expires = _epoch(rec.get("expiresAt"))
        if expires is not None and expires - time.time() < MARGIN_S:
            return None
        return str(rec["url"])

    def note(self, sha256: str, url: str, expires_at: str | None) -> None:
        """Remember an upload of this content."""
        rec = {"url": url, "expiresAt": expires_at}
        with _LOCK:
            self._memory[sha256] = rec
            if self.path is None:
                return
            data = self._read()
            data.setdefault(self.name, {})[sha256] = rec
            atomic_write_json(self.path, data)  # compact: the C encoder, under the lock
