"""Locks: keep a target (or a whole story) as it is while upstream changes.

Layer: **graph**.

``build/<template>/<id>/.cloops/locks.json``::

    {"story": false,
     "targets": {"pages.json": {"at": "...", "stale": "file system-prompts/step2-planning.md"}}}

A locked target is never regenerated: its task is reported up to date while its inputs change
(the change is remembered in ``stale``), and if doit runs it anyway (a file it depends on
changed) the action keeps the file and says so. What is downstream of a locked target still
rebuilds from it. Unlocking a target that went stale forgets its task's state, so the next build
brings it up to date (from the response cache when its inputs are back to a built state).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ..core.fileio import atomic_write_json, read_text
from .targets import META_DIR, story_lock

LOCKS_FILE = "locks.json"


def read_locks(story_dir: Path) -> dict:
    """``{"story": bool, "targets": {rel: {"at": iso, "stale": str | None}}}``."""
    try:
        data = json.loads(read_text(os.path.join(story_dir, META_DIR, LOCKS_FILE)))
    except (FileNotFoundError, json.JSONDecodeError):
        return {"story": False, "targets": {}}
    data.setdefault("story", False)
    data.setdefault("targets", {})
    return data


def is_locked(story_dir: Path, rel: str, locks: dict | None = None) -> bool:
    locks = locks if locks is not None else read_locks(story_dir)
    return bool(locks.get("story")) or rel in locks.get("targets", {})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write(story_dir: Path, data: dict) -> None:
    atomic_write_json(Path(story_dir) / META_DIR / LOCKS_FILE, data, pretty=True)


def lock(story_dir: Path, rel: str | None) -> None:
    """Lock target ``rel`` of a story, or the whole story when ``rel`` is None."""
    with story_lock(Path(story_dir)):
        data = read_locks(story_dir)
        if rel is None:
            data["story"] = True
            data["storyAt"] = _now()
        else:
            data["targets"].setdefault(rel, {"at": _now(), "stale": None})
        _write(story_dir, data)


def unlock(story_dir: Path, rel: str | None) -> list[str]:
    """Unlock a target (or the story: every lock). Returns the rels that went stale while locked."""
    with story_lock(Path(story_dir)):
        data = read_locks(story_dir)
        stale: list[str] = []
        if rel is None:
            stale = [r for r, v in data["targets"].items() if v.get("stale")]
            stale += data.get("staleWhileStoryLocked", [])
            data = {"story": False, "targets": {}}
        else:
            entry = data["targets"].pop(rel, None)
            if entry and entry.get("stale"):
                stale.append(rel)
        _write(story_dir, data)
        return sorted(set(stale))


def mark_stale(story_dir: Path, rel: str, reason: str) -> None:
    """Remember that locked target ``rel`` would have been rebuilt, and why."""
    with story_lock(Path(story_dir)):
        data = read_locks(story_dir)
        if rel in data["targets"]:
            if data["targets"][rel].get("stale") == reason:
                return
            data["targets"][rel]["stale"] = reason
        elif data.get("story"):
            lst = data.setdefault("staleWhileStoryLocked", [])
            if rel in lst:
                return
            lst.append(rel)
        else:
            return
        _write(story_dir, data)
