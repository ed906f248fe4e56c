"""Which stories are stale, and why — without running doit.

When a story is marked ``completed`` its signature (every task's input digest) is saved in
``.cloops/completed.json``. A bare ``doit`` does not rebuild completed stories; it compares their
saved signature with the current one and reports those that a change made stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from .engine import story_signature
from .fileio import atomic_write_json
from .project import Project, StoryRef
from .targets import META_DIR

SIGNATURE_FILE = "completed.json"


def save_signature(proj: Project, template: str, story_id: str, backlog_path: Path) -> None:
    """Record the story's current signature (called when it is marked completed)."""
    tpl = proj.template(template)
    ref = StoryRef(template, story_id, str(backlog_path))
    sig = story_signature(proj, tpl, ref, proj.item(template, story_id).input)
    atomic_write_json(proj.story_dir(template, story_id) / META_DIR / SIGNATURE_FILE, sig)


def stale_completed(proj: Project) -> list[tuple[str, str]]:
    """``[(story key, "3 tasks: narrative, pages, ...")]`` for completed stories now stale."""
    out: list[tuple[str, str]] = []
    for b in proj.backlogs:
        tpl = proj.template(b.template)
        for it in b.items:
            if it.status != "completed":
                continue
            path = proj.story_dir(b.template, it.id) / META_DIR / SIGNATURE_FILE
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                continue  # completed before signatures existed, or by hand: nothing to compare
            ref = StoryRef(b.template, it.id, str(b.path))
            new = story_signature(proj, tpl, ref, it.input)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if changed:
                steps = sorted({c.split(":", 1)[0] for c in changed})
                out.append((ref.key, f"{len(changed)} stale tasks ({', '.join(steps)})"))
    return out
