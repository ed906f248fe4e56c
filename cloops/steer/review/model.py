"""What a review page shows of one story, as JSON-ready data (the page is rendered from it).

Layer: **steer**. :func:`story_model` reads the story folder through the template's declared
steps — every file a step's ``target_patterns()`` matches is a target, grouped by step, so a
template that adds a step (a cast, ad components, evals) is shown without a change here —
plus the backlog item, the status (:func:`cloops.steer.status.story_status`, or
:func:`sealed_status` for a story whose seal holds), takes, kept versions and the ledger's
cost per step. Paths in a model are relative to ``build/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ...core.fileio import atomic_write_json, sha256_file
from ...data.project import Project
from ...graph.locks import read_locks
from ...graph.plan import plan_of
from ...graph.steps import Step
from ...graph.targets import META_DIR, list_versions, read_manifest, read_restored
from ..actions import UsageBook, estimate_take
from ..address import Address
from ..takes import read_takes

IMAGE = (".jpg", ".jpeg", ".png", ".webp", ".gif")
AUDIO = (".mp3", ".wav", ".m4a", ".ogg")
VIDEO = (".mp4", ".webm", ".mov")
TEXT = (".json", ".md", ".txt", ".srt", ".ass", ".csv", ".vtt")
TEXT_LIMIT = 20_000  # characters of a text target shown in the page


def kind_of(rel: str) -> str:
    """``image``, ``audio``, ``video``, ``text`` or ``file``, by the name's extension."""
    ext = os.path.splitext(rel)[1].lower()
    for kind, exts in (("image", IMAGE), ("audio", AUDIO), ("video", VIDEO), ("text", TEXT)):
        if ext in exts:
            return kind
    return "file"


class ShaCache:
    """SHA-256 of files, remembered by path, size and mtime (``build/review/.cloops/shas.json``),
    so a re-run over 1,000 stories hashes only what changed."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data: dict[str, list] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}
        self.used: dict[str, list] = {}

    def size(self, file: str) -> int:
        """The size in bytes of a file seen by :meth:`sha` (else read now), 0 when missing."""
        rec = self.used.get(file)
        if rec is not None:
            return rec[0]
        try:
            return os.stat(file).st_size
        except (FileNotFoundError, NotADirectoryError):
            return 0

    def sha(self, file: str | Path) -> str | None:
        """The file's SHA-256 (hex), or None when it does not exist."""
        key = str(file)
        try:
            st = os.stat(key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        rec = self.data.get(key)
        if rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            self.used[key] = rec
            return rec[2]
        sha = sha256_file(file)
        self.used[key] = [st.st_size, st.st_mtime_ns, sha]
        return sha

    def save(self, keep_all: bool = False) -> None:
        """Write the cache: the files seen this run (``keep_all``: and every earlier one)."""
        data = {**self.data, **self.used} if keep_all else self.used
        if data != self.data:
            atomic_write_json(self.path, data)


def _pattern(pattern: str) -> re.Pattern:
    """A step's target pattern as a regex: ``{n}`` a page number, any other ``{x}`` one name."""
    rx = re.escape(pattern).replace(r"\{n\}", r"(?P<n>[1-9][0-9]*)")
    rx = re.sub(r"\\\{(\w+)\\\}", r"[^/]+", rx)
    return re.compile(rx + r"\Z")


def _files(sdir: Path) -> list[str]:
    """Every file of a story folder (``.cloops`` left out), relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(sdir):
        dirnames[:] = sorted(d for d in dirnames if d != META_DIR)
        rel_dir = os.path.relpath(dirpath, sdir)
        for f in filenames:
            if f.startswith(".") or f.endswith(".tmp"):
                continue
            out.append(f if rel_dir == "." else f"{rel_dir}/{f}")
    return sorted(out)


def _page_sort(rel: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", rel))


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "\n… (cut: open the file)"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sealed_status(proj: Project, template: str, story_id: str) -> dict:
    """The status of a story whose seal holds (nothing is stale), without doit's tasks: the
    shape of :func:`cloops.steer.status.story_status`, ``handEdited`` None (:func:`story_model`
    finds the hand edits as it reads the files)."""
    sdir = proj.story_dir(template, story_id)
    item = proj.item(template, story_id)
    locks = read_locks(sdir)
    return {"story": f"{template}/{story_id}", "template": template, "id": story_id,
            "title": item.input.get("title", story_id), "status": item.status,
            "error": item.error, "stale": [], "staleLocked": [],
            "locked": {"story": bool(locks.get("story")), "targets": locks.get("targets", {})},
            "handEdited": None, "cost": {}, "upToDate": None, "pagesKnown": True}


def story_targets(proj: Project, template: str, sdir: Path,
                  files: list[str] | None = None) -> list[tuple[Step, str, int | None]]:
    """``(step, rel, n)`` of every file in the story folder that a step of the template
    declares, in step order then page order."""
    tpl = proj.template(template)
    files = _files(sdir) if files is None else files
    pats = [(s, _pattern(p)) for s in tpl.steps for p in s.target_patterns()]
    found: dict[str, tuple[Step, int | None]] = {}
    for rel in files:
        for step, rx in pats:
            m = rx.match(rel)
            if m:
                n = m.groupdict().get("n")
                found[rel] = (step, int(n) if n else None)
                break
    order = {s.name: i for i, s in enumerate(tpl.steps)}
    rows = [(step, rel, n) for rel, (step, n) in found.items()]
    rows.sort(key=lambda r: (order[r[0].name], r[2] or 0, _page_sort(r[1])))
    return rows


def _takes(addr: Address, sha: str | None) -> list[dict]:
    data = read_takes(addr)
    out = []
    for t in data["takes"]:
        out.append({"take": t["take"], "sha": t.get("sha256"), "at": t.get("at", ""), "source": t.get("source", ""),
                    "offline": bool(t.get("offline")), "current": t.get("sha256") == sha,
                    "path": f"{addr.template}/{addr.story_id}/{META_DIR}/takes/{addr.rel}/"
                            f"{t['file']}"})
    return out


def _versions(addr: Address) -> list[dict]:
    return [{"number": i, "at": v.at, "why": v.reason, "size": v.size}
            for i, v in enumerate(list_versions(addr.story_dir, addr.rel), 1)]


def story_model(proj: Project, template: str, story_id: str, status: dict,
                step_costs: list[dict], shas: ShaCache, usage: UsageBook | None = None) -> dict:
    """Everything the review page of one story shows (paths relative to ``build/``).

    ``status``: :func:`cloops.steer.status.story_status` or :func:`sealed_status`;
    ``step_costs``: this story's ledger rows per step (``step, calls, cache_hits, cost_usd,
    saved_usd``); ``usage``: the ledger's usage, to estimate takes (read when None).
    Returns ``{key, template, id, title, status, error, draft, cover, marks,
    cost, steps: [{step, kind, service, doc, targets: [...]}], pages, cast, voice, evals,
    ads, rules, styleFrame, staleRows, staleLocked, handEdited, locked}`` (``cast``:
    characters first, then places and props, each with its ``kind``; ``rules``:
    :func:`_rules`; ``styleFrame``: :func:`style_frame_of`).
    """
    tpl = proj.template(template)
    sdir = proj.story_dir(template, story_id)
    base = f"{template}/{story_id}"
    manifest = read_manifest(sdir)
    locks = read_locks(sdir)
    item = proj.item(template, story_id)
    stale_by = {r["target"]: r["reasons"] for r in status["stale"]}
    stale_locked_by = {r["target"]: r["reasons"] for r in status["staleLocked"]}
    find_hand = status["handEdited"] is None  # a sealed story: found here, from the files
    hand_rows = [] if find_hand else status["handEdited"]
    hand_by = {r["target"]: r["why"] for r in hand_rows}
    restored = read_restored(sdir) if find_hand else {}
    usage = usage or UsageBook(proj)
    files = _files(sdir) if sdir.is_dir() else []
    # most stories have no takes and no kept versions: look once, not per target
    has_takes = os.path.isdir(os.path.join(sdir, META_DIR, "takes"))
    has_history = os.path.isdir(os.path.join(sdir, META_DIR, "history"))

    steps: dict[str, dict] = {}
    for s in tpl.steps:
        steps[s.name] = {"step": s.name, "kind": s.kind, "service": s.service, "doc": s.doc,
                         "copies": s.copies, "targets": [], "cost": None,
                         "stale": [r for r in status["stale"]
                                   if r["task"].partition(":")[0] == s.name],
                         "staleLocked": [r for r in status["staleLocked"]
                                         if r["task"].partition(":")[0] == s.name]}
    targets: dict[str, dict] = {}
    for step, rel, n in story_targets(proj, template, sdir, files):
        path = os.path.join(sdir, rel)
        kind = kind_of(rel)
        sha = None if step.copies else shas.sha(path)
        rec = manifest.get(rel) or {}
        if find_hand and sha is not None and rec.get("sha256") != sha:
            why = "restored" if restored.get(rel, {}).get("sha256") == sha else "hand-edit"
            hand_by[rel] = why
            hand_rows.append({"target": rel, "why": why})
        addr = Address(template, story_id, sdir, rel, step, n)
        lock_rel = addr.lock_rel
        t = {"rel": rel, "path": f"{base}/{rel}", "kind": kind, "n": n, "step": step.name,
             "size": shas.size(path),
             "sha": sha, "why": None if step.copies else hand_by.get(rel, "generated"),
             "madeBy": rec.get("madeBy", ""), "offline": bool(rec.get("offline")),
             "stale": stale_by.get(rel), "staleLocked": stale_locked_by.get(rel),
             "locked": bool(locks.get("story")) or lock_rel in locks.get("targets", {}),
             "lockRel": lock_rel, "main": rel == lock_rel, "copied": step.copies,
             "generated": addr.generated and rel == lock_rel,
             "editable": not step.copies and kind == "text",
             "text": _read_text(Path(path)) if kind == "text" and not step.copies else None,
             "takes": [], "versions": [], "estimate": None}
        if not step.copies:
            t["versions"] = _versions(addr) if has_history else []
            if t["generated"]:
                t["takes"] = _takes(addr, sha) if has_takes else []
                t["estimate"] = estimate_take(proj, addr, usage).as_json()
        targets[rel] = t
        steps[step.name]["targets"].append(t)
    for row in step_costs:
        if row["step"] in steps:
            steps[row["step"]]["cost"] = {"calls": row["calls"] or 0,
                                          "cacheHits": row["cache_hits"] or 0,
                                          "costUsd": round(row["cost_usd"] or 0.0, 6),
                                          "savedUsd": round(row["saved_usd"] or 0.0, 6)}

    plan = plan_of(tpl)
    pages = _pages(proj, tpl, plan, sdir, targets, base)
    cover = _cover(targets)
    voice = _voice(tpl, targets, sdir)
    cast = _cast(sdir, targets, base)
    evals = _evals(sdir, targets)
    rules = _rules(sdir, targets)
    frame = style_frame_of(tpl)
    ads = [t for rel, t in targets.items() if rel.startswith("ads/")]
    total = {"calls": sum((s["cost"] or {}).get("calls", 0) for s in steps.values()),
             "cacheHits": sum((s["cost"] or {}).get("cacheHits", 0) for s in steps.values()),
             "costUsd": round(sum((s["cost"] or {}).get("costUsd", 0) for s in steps.values()), 6),
             "savedUsd": round(sum((s["cost"] or {}).get("savedUsd", 0)
                                   for s in steps.values()), 6)}
    return {
        "key": base, "template": template, "id": story_id,
        "title": item.input.get("title", story_id), "summary": item.input.get("summary", ""),
        "status": item.status, "error": item.error,
        "draft": any(r.get("offline") for r in manifest.values()),
        "built": bool(targets),
        "cover": cover, "pages": pages, "cast": cast, "voice": voice, "evals": evals,
        "ads": ads, "rules": rules, "styleFrame": frame, "steps": list(steps.values()),
        "staleRows": status["stale"], "staleLocked": status["staleLocked"],
        "handEdited": hand_rows, "locked": status["locked"],
        "pagesKnown": status.get("pagesKnown", True),
        "marks": {"stale": len(status["stale"]), "staleLocked": len(status["staleLocked"]),
                  "locked": bool(status["locked"]["story"]) or len(status["locked"]["targets"]),
                  "handEdited": len(hand_rows)},
        "cost": total,
    }


def _cover(targets: dict[str, dict]) -> dict | None:
    """The story's cover: a top-level image target (``thumbnail.jpg``), else the first image."""
    images = [t for t in targets.values() if t["kind"] == "image" and not t["copied"]]
    top = [t for t in images if "/" not in t["rel"]]
    return (top or images or [None])[0]


def _pages(proj, tpl, plan, sdir: Path, targets: dict[str, dict], base: str) -> list[dict]:
    """Each page: its item's title and narration (from the fan-out file) and the targets of
    the steps that fan out over it."""
    if not plan.foreach_source or not plan.foreach_key:
        return []
    data = _read_json(sdir / plan.foreach_source)
    items = data.get(plan.foreach_key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    out = []
    for i, it in enumerate(items, 1):
        it = it if isinstance(it, dict) else {}
        mine = [t for t in targets.values() if t["n"] == i and not t["copied"]]
        out.append({
            "n": i, "title": it.get("title") if isinstance(it.get("title"), str) else "",
            "narration": it.get("narration") if isinstance(it.get("narration"), str) else None,
            "source": plan.foreach_source, "field": [plan.foreach_key, i - 1, "narration"],
            "images": [t for t in mine if t["kind"] == "image"],
            "texts": [t for t in mine if t["kind"] == "text"],
            "media": [t for t in mine if t["kind"] in ("audio", "video")],
        })
    return out


def _voice(tpl, targets: dict[str, dict], sdir: Path) -> dict | None:
    """The voice track: the audio target of a voice step that is not fanned out (a story's
    narration, not the ads' spoken lines), and its timings (a JSON target of the same step
    holding ``segments`` with ``startS``/``endS``)."""
    for s in tpl.steps:
        if s.service != "voice" or s.foreach is not None:
            continue
        audio = next((t for t in targets.values() if t["step"] == s.name and
                      t["kind"] == "audio"), None)
        if audio is None:
            continue
        segments = []
        for t in targets.values():
            if t["step"] == s.name and t["rel"].endswith(".json"):
                data = _read_json(sdir / t["rel"])
                if isinstance(data, dict) and isinstance(data.get("segments"), list):
                    segments = [{"n": i, "startS": seg.get("startS"), "endS": seg.get("endS"),
                                 "text": seg.get("text", "")}
                                for i, seg in enumerate(data["segments"], 1)
                                if isinstance(seg, dict)]
        return {"audio": audio, "segments": segments}
    return None


def _cast(sdir: Path, targets: dict[str, dict], base: str) -> list[dict]:
    """The characters: ``cast.json`` (id, name, appearance) with their sheets under ``cast/``
    when the template makes one, else the ``characters`` of the page plan."""
    cast = _read_json(sdir / "cast.json") if "cast.json" in targets else None
    source, chars = None, None
    if isinstance(cast, dict) and isinstance(cast.get("characters"), list):
        source, chars = "cast.json", cast["characters"]
    else:
        for rel in ("pages.json",):
            data = _read_json(sdir / rel) if rel in targets else None
            if isinstance(data, dict) and isinstance(data.get("characters"), list):
                source, chars = rel, data["characters"]
    if not chars:
        return []
    out = []
    for i, c in enumerate(chars):
        if not isinstance(c, dict):
            continue
        cid = str(c.get("id") or "")
        sheets = [t for rel, t in targets.items()
                  if cid and rel.startswith("cast/") and Path(rel).stem == cid]
        out.append({"id": cid, "name": str(c.get("name") or cid or f"character {i + 1}"),
                    "kind": str(c.get("kind") or "person"),
                    "appearance": c.get("appearance") if isinstance(c.get("appearance"), str)
                    else None,
                    "source": source, "field": ["characters", i, "appearance"],
                    "sheets": [t for t in sheets if t["kind"] == "image"],
                    "sheetTexts": [t for t in sheets if t["kind"] == "text"]})
    # characters first, then places and props (as their sheets are passed to the pages)
    return [c for c in out if c["kind"] not in THINGS] + [c for c in out if c["kind"] in THINGS]


THINGS = ("place", "prop")


def _rules(sdir: Path, targets: dict[str, dict]) -> list[dict]:
    """The rules the story obeys, from ``rules.json`` (the series' and its own, made by a
    template's ``rules`` step): ``[{id, text, scope, forbid, from}]``; empty when none."""
    if "rules.json" not in targets:
        return []
    data = _read_json(sdir / "rules.json")
    rules = data.get("rules") if isinstance(data, dict) else None
    return [{"id": str(r.get("id", "")), "text": str(r.get("text", "")),
             "scope": str(r.get("scope", "")), "from": str(r.get("from", "")),
             "forbid": [str(w) for w in r.get("forbid") or []]}
            for r in rules or [] if isinstance(r, dict)]


_FRAME_THUMBS: dict[tuple, tuple[str, str]] = {}


def style_frame_of(tpl) -> dict | None:
    """The template's style frame (config ``style.referenceImage``, a picture in the template
    folder passed last with every image call), or None: ``{file, strength, missing, sha,
    dataUri}`` — a small JPEG ``data:`` URI (at most 320 px), so the static site and the studio
    both show it though it lies outside build/. Read once per file version (path, size,
    mtime), not once per story."""
    name = tpl.config.get("style.referenceImage", None) if tpl.config.has("style") else None
    if not isinstance(name, str) or not name:
        return None
    out = {"file": name, "strength": tpl.config.get("style.referenceStrength", "close"),
           "missing": True, "sha": None, "dataUri": None}
    path = tpl.template_file(name)
    if path is None:
        return out
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FRAME_THUMBS:
        import base64
        import io

        from PIL import Image, UnidentifiedImageError
        uri = ""
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((320, 320))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=80)
            uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        except (UnidentifiedImageError, OSError):
            pass
        _FRAME_THUMBS[key] = ((sha256_file(path) or "")[:16], uri)
    sha, uri = _FRAME_THUMBS[key]
    out.update(missing=False, sha=sha, dataUri=uri or None)
    return out


def _evals(sdir: Path, targets: dict[str, dict]) -> dict | None:
    """``evals.json``: its ``score``, ``needsReview`` and ``checks`` when present, and the
    whole file as text."""
    t = targets.get("evals.json")
    if t is None:
        return None
    data = _read_json(sdir / "evals.json")
    out = {"target": t, "score": None, "needsReview": None, "checks": None}
    if isinstance(data, dict):
        out["score"] = data.get("score")
        out["needsReview"] = data.get("needsReview")
        checks = data.get("checks")
        if isinstance(checks, list):
            out["checks"] = [c if isinstance(c, dict) else {"value": c} for c in checks]
        elif isinstance(checks, dict):
            out["checks"] = [{"name": k, **(v if isinstance(v, dict) else {"value": v})}
                             for k, v in checks.items()]
    return out


def card(model: dict) -> dict:
    """The index card of a story: what the index shows of its model."""
    return {k: model[k] for k in ("key", "template", "id", "title", "status", "error", "draft",
                                  "built", "cover", "marks", "cost")}
