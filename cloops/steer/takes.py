"""Takes: several generated versions of a target, one of them current.

Layer: **steer**. Kept in ``.cloops/takes/<rel>/<k><ext>`` plus ``index.json`` (sha, when,
source, offline, which take is current) in the story folder. :func:`store_take` keeps the
current file as a take, :func:`pick_take` makes take k current through
:func:`cloops.graph.targets.write_target` (no service is called).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from ..graph.targets import META_DIR, read_manifest, story_lock, version_reason, write_target
from .address import Address

TAKES_DIR = "takes"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _takes_dir(addr: Address) -> Path:
    return addr.story_dir / META_DIR / TAKES_DIR / addr.rel


def read_takes(addr: Address) -> dict:
    """``{"target", "current": k | None, "takes": [{"take", "file", "sha256", "at", "source",
    "offline"}]}`` (empty when the target has no takes yet)."""
    try:
        data = json.loads((_takes_dir(addr) / "index.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault("target", addr.rel)
    data.setdefault("current", None)
    data.setdefault("takes", [])
    return data


def _write_takes(addr: Address, data: dict) -> None:
    atomic_write_json(_takes_dir(addr) / "index.json", data)


def current_take(addr: Address, data: dict | None = None) -> int | None:
    """The take whose bytes are the file in place now (None: the file is not a stored take)."""
    data = data if data is not None else read_takes(addr)
    sha = sha256_file(addr.story_dir / addr.rel)
    return next((t["take"] for t in data["takes"] if t["sha256"] == sha), None)


def store_take(addr: Address, *, source: str | None = None) -> tuple[int, bool]:
    """Keep the current file as a take unless it is one already; mark it current.

    ``source`` defaults to what made the file (the manifest's ``madeBy``), or ``hand-edit`` /
    ``restored``. Returns ``(take number, newly stored)``.

    Raises:
        InputError: the target does not exist yet.
    """
    path = addr.story_dir / addr.rel
    if not path.is_file():
        raise InputError(f"{addr.shown} does not exist yet.",
                         fix=f"build it first: doit build:{addr.key}.")
    with story_lock(addr.story_dir):
        data = read_takes(addr)
        blob = path.read_bytes()
        sha = sha256_bytes(blob)
        for t in data["takes"]:
            if t["sha256"] == sha:
                data["current"] = t["take"]
                _write_takes(addr, data)
                return t["take"], False
        manifest = read_manifest(addr.story_dir)
        why = version_reason(addr.story_dir, addr.rel, manifest, sha)
        rec = manifest.get(addr.rel, {}) if why == "generated" else {}
        k = max((t["take"] for t in data["takes"]), default=0) + 1
        name = f"{k}{Path(addr.rel).suffix}"
        atomic_write_bytes(_takes_dir(addr) / name, blob)
        data["takes"].append({
            "take": k, "file": name, "sha256": sha,
            "at": _now(),
            "source": source or rec.get("madeBy") or why, "offline": bool(rec.get("offline"))})
        data["current"] = k
        _write_takes(addr, data)
        return k, True


def pick_take(addr: Address, k: int) -> Any:
    """Make take ``k`` the target's content (no service call); return the write's outcome.

    The file in place is stored as a take first when it is not one (a hand edit stays
    reachable), and kept in history by :func:`cloops.graph.targets.write_target`. The target is
    recorded as generated (``made_by="take k"``, offline as the take was), so its own task stays
    up to date and only what is downstream rebuilds.

    Raises:
        InputError: no take ``k``.
    """
    data = read_takes(addr)
    take = next((t for t in data["takes"] if t["take"] == k), None)
    if take is None:
        have = ", ".join(str(t["take"]) for t in data["takes"]) or "none"
        raise InputError(f"{addr.shown} has no take {k} (takes: {have}).",
                         fix=f"run doit takes {addr.shown}.")
    if (addr.story_dir / addr.rel).is_file():
        store_take(addr)
    blob = (_takes_dir(addr) / take["file"]).read_bytes()
    out = write_target(addr.story_dir, addr.rel, blob, made_by=f"take {k}",
                       offline=bool(take.get("offline")))
    with story_lock(addr.story_dir):
        data = read_takes(addr)
        data["current"] = k
        _write_takes(addr, data)
    return out


def take_path(addr: Address, take: dict) -> Path:
    return _takes_dir(addr) / take["file"]
