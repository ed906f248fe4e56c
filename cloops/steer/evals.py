"""Reading a story's ``evals.json`` for the places people look: ``doit status``, ``doit report``,
``doit compare``.

Layer: **steer**. The file's shape is :mod:`cloops.graph.kinds.evals`'s (README "Evals").
"""

from __future__ import annotations

import json
from pathlib import Path

EVALS_FILE = "evals.json"


def read_evals(story_dir: Path) -> dict | None:
    """The story's ``evals.json``, or None when it was not built yet (or is unreadable)."""
    try:
        data = json.loads((Path(story_dir) / EVALS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def failed_checks(data: dict | None) -> list[str]:
    """The failed checks, one short line each: ``visual-only (page 2 panel 1): 'sign' ...``."""
    out = []
    for r in (data or {}).get("results", []):
        if r.get("result") != "fail":
            continue
        ev = (r.get("evidence") or [{}])[0]
        where = " ".join(x for x in (f"page {r['page']}" if r.get("page") else "",
                                     ev.get("where") or "") if x)
        out.append(f"{r['name']}" + (f" ({where})" if where else "")
                   + (f": {ev['note']}" if ev.get("note") else ""))
    return out


def eval_summary(story_dir: Path) -> dict:
    """``{"built", "score", "scores", "needsReview", "reviewReasons", "checks", "failed",
    "judges"}`` of a story: what ``doit status`` and ``doit report`` show (``built`` false and
    the rest empty when there is no ``evals.json`` yet)."""
    data = read_evals(story_dir)
    if data is None:
        return {"built": False, "score": None, "scores": {}, "needsReview": None,
                "reviewReasons": [], "checks": {}, "failed": [], "judges": None}
    return {"built": True, "score": data.get("score"), "scores": data.get("scores") or {},
            "needsReview": bool(data.get("needsReview")),
            "reviewReasons": data.get("reviewReasons") or [], "checks": data.get("checks") or {},
            "failed": failed_checks(data), "judges": data.get("judges")}


def score_text(summary: dict) -> str:
    """The score column: ``4.25``, ``–`` when nothing was judged (checks only), ``?`` when
    the story has no ``evals.json`` yet."""
    if not summary["built"]:
        return "?"
    return "–" if summary["score"] is None else f"{summary['score']:.2f}"


def review_text(summary: dict) -> str:
    """The review column: ``needs review (2 failed checks)``, ``ok``, or empty when unbuilt."""
    if not summary["built"]:
        return ""
    if not summary["needsReview"]:
        return "ok"
    n = len(summary["failed"])
    low = len(summary["reviewReasons"]) - n
    parts = [f"{n} failed check{'s' * (n != 1)}"] if n else []
    parts += [f"{low} score{'s' * (low != 1)} below threshold"] if low > 0 else []
    return "needs review (" + ", ".join(parts) + ")"
