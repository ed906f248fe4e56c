"""A target's versions: the kept history plus the current file; restoring one.

Layer: **steer**. Every write goes through :mod:`cloops.graph.targets` (atomic, the current
file kept first), so nothing a person wrote is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..core.errors import InputError
from ..core.fileio import sha256_file
from ..graph.targets import (list_versions, read_manifest, read_restored, restore_version,
                             version_reason)
from .address import Address


@dataclass(frozen=True)
class Entry:
    """One version of a target as listed by ``doit history``.

    Attributes:
        number: 1 = the oldest kept version; the current file has the highest number.
        at: when it was written or kept (UTC, ISO 8601).
        why: ``hand-edit``, ``generated`` or ``restored``.
        size: bytes.
        sha256: hex digest of its bytes.
        current: it is the file in place now.
        path: where its bytes are.
        detail: for the current file, what made it (``fake-image m``, ``take 2``, ``restored 3``).
    """

    number: int
    at: str
    why: str
    size: int
    sha256: str
    current: bool
    path: Path
    detail: str = ""

    def as_json(self) -> dict:
        return {"number": self.number, "at": self.at, "why": self.why, "size": self.size,
                "sha256": self.sha256, "current": self.current, "path": str(self.path),
                "detail": self.detail}


def versions(addr: Address) -> list[Entry]:
    """The kept versions of a target (oldest first, numbered from 1), then the current file."""
    sdir, rel = addr.story_dir, addr.rel
    out = [Entry(i, v.at, v.reason, v.size, sha256_file(v.path) or "", False, v.path)
           for i, v in enumerate(list_versions(sdir, rel), 1)]
    path = sdir / rel
    sha = sha256_file(path)
    if sha is not None:
        why = version_reason(sdir, rel, current=sha) or "hand-edit"
        detail = ""
        if why == "generated":
            detail = read_manifest(sdir).get(rel, {}).get("madeBy", "")
        elif why == "restored":
            detail = f"from {read_restored(sdir).get(rel, {}).get('from', '?')}"
        at = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(
            timespec="microseconds").replace("+00:00", "Z")
        out.append(Entry(len(out) + 1, at, why, path.stat().st_size, sha, True, path, detail))
    return out


def restore(addr: Address, number: int) -> tuple[Entry, Path | None]:
    """Put version ``number`` of a target back in place (the current file is kept first).

    The restored bytes are an edit: not recorded as generated in the manifest, so the next
    build keeps them and rebuilds what is downstream. Returns the version restored and the
    history copy of the file it replaced (None when nothing was replaced).

    Raises:
        InputError: no such version.
    """
    entries = versions(addr)
    chosen = next((e for e in entries if e.number == number), None)
    if chosen is None:
        raise InputError(f"{addr.shown} has no version {number} "
                         f"({len(entries)} versions).", fix=f"run doit history {addr.shown}.")
    data = chosen.path.read_bytes()
    kept = restore_version(addr.story_dir, addr.rel, data,
                           source=f"version {number} ({chosen.why}, {chosen.at})")
    return chosen, kept
