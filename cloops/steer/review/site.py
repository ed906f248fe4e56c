"""The review site: a static page per story and an index per template under ``build/review/``.

Layer: **steer**. Make-style: each page is a target whose dependency is what it shows — the
digest of its story's model (:mod:`.model`: the files' hashes, the status, takes, locks,
costs) and of the page templates. :func:`build_site` writes a page only when that digest
changed (or the page is missing), so a re-run after one story changed rewrites that story's
page and the index, and nothing else. The pages open from disk with no server: every link is
relative, CSS and JS are local files under ``build/review/_static/``.

Layout::

    build/review/index.html                         the templates
    build/review/<template>/index.html              a card per story
    build/review/<template>/stories/<id>.html       a story
    build/review/previews/…                         downscaled images (:mod:`.previews`)
    build/review/.cloops/models/<template>/<id>.json  the model each page was made from
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ...core.fileio import atomic_write_bytes, atomic_write_json, canonical_json
from ...data.project import BUILD_DIR, Project
from ..actions import UsageBook
from ..address import stories
from ..spend import spend
from .model import ShaCache, card, story_model
from .previews import Previews

REVIEW_DIR = "review"
HERE = Path(__file__).resolve().parent
STATIC = ("review.css", "review.js")


def review_dir(proj: Project) -> Path:
    """``build/review`` of the project."""
    return proj.root / BUILD_DIR / REVIEW_DIR


def story_page(template: str, story_id: str) -> str:
    """A story's page, relative to build/review."""
    return f"{template}/stories/{story_id}.html"


def _design_digest() -> str:
    """Digest of the page templates and static files: changing them rewrites every page."""
    h = hashlib.sha256()
    for p in sorted((HERE / "templates").glob("*")) + sorted((HERE / "static").glob("*")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


_ENV: list[Any] = []


def environment():
    """The Jinja2 environment of the review pages (autoescaped HTML)."""
    if not _ENV:
        import jinja2
        _ENV.append(jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")),
            autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
            lstrip_blocks=True, undefined=jinja2.StrictUndefined))
    return _ENV[0]


def render(name: str, depth: int, *, studio: bool = False, token: str = "", **data) -> str:
    """Render template ``name`` for a page ``depth`` folders below build/review.

    ``studio``: with the controls that act (pick, lock, edit, rebuild) and the session
    ``token`` they send.
    """
    return environment().get_template(name).render(
        to_review="../" * depth, to_build="../" * (depth + 1), studio=studio, token=token,
        **data)


def step_costs(proj: Project) -> dict[tuple[str, str], list[dict]]:
    """The ledger's totals per step of every story, by ``(template, id)``."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in spend(proj.root, "story-step"):
        out.setdefault((r["template"], r["story"]), []).append(r)
    return out


def attach_previews(model: dict, previews: Previews, story_dir: Path) -> None:
    """Ask for the previews of every image the model shows (call :meth:`Previews.make` once
    for all stories, then :func:`set_previews`)."""
    for t in _images(model):
        src = story_dir.parent.parent / t["path"]
        previews.want(t.get("sha"), src)


def set_previews(model: dict, previews: Previews) -> None:
    """Record in the model where each image's preview is (None: show the original)."""
    for t in _images(model):
        t["preview"] = previews.of(t.get("sha"))


def _images(model: dict) -> Iterable[dict]:
    """Every image of a model that a page shows: targets and their takes."""
    seen = set()
    for s in model["steps"]:
        for t in s["targets"]:
            if t["kind"] != "image" or t["copied"]:
                continue
            if id(t) not in seen:
                seen.add(id(t))
                yield t
            for tk in t["takes"]:
                yield tk


@dataclass
class SiteRun:
    """What :func:`build_site` did.

    Attributes:
        written: pages and files written, relative to build/review.
        kept: pages already up to date.
        previews: previews made.
        seconds: wall time.
    """

    written: list[str] = field(default_factory=list)
    kept: int = 0
    previews: int = 0
    seconds: float = 0.0


class State:
    """``build/review/.cloops/state.json``: the digest each page was last written from."""

    def __init__(self, root: Path):
        self.path = root / ".cloops" / "state.json"
        try:
            self.data: dict[str, str] = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}
        self.changed = False

    def fresh(self, rel: str, digest: str, root: Path) -> bool:
        return self.data.get(rel) == digest and (root / rel).is_file()

    def record(self, rel: str, digest: str) -> None:
        self.data[rel] = digest
        self.changed = True

    def save(self) -> None:
        if self.changed:
            atomic_write_json(self.path, self.data)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()[:32]


def model_path(root: Path, template: str, story_id: str) -> Path:
    """Where the model of a story's page is kept (the studio renders from it)."""
    return root / ".cloops" / "models" / template / f"{story_id}.json"


def read_model(root: Path, template: str, story_id: str) -> dict | None:
    """The model a story's page was last made from, or None."""
    try:
        return json.loads(model_path(root, template, story_id).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_if_changed(root: Path, rel: str, data: bytes, run: SiteRun) -> None:
    path = root / rel
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data)
    run.written.append(rel)


def _placeholder_card(proj: Project, template: str, story_id: str) -> dict:
    """The card of a story that has no model yet (reviewed by a later ``doit review``)."""
    item = proj.item(template, story_id)
    return {"key": f"{template}/{story_id}", "template": template, "id": story_id,
            "title": item.input.get("title", story_id), "status": item.status,
            "error": item.error, "draft": False, "built": False, "cover": None,
            "marks": {"stale": 0, "staleLocked": 0, "locked": 0, "handEdited": 0},
            "cost": {"calls": 0, "cacheHits": 0, "costUsd": 0.0, "savedUsd": 0.0}}


def index_data(proj: Project, models: dict[tuple[str, str], dict]) -> tuple[dict, list[dict]]:
    """What the index pages show: ``({template: (cards, totals)}, summary per template)``.

    ``models``: the models at hand by ``(template, id)``; every other story is shown as its
    page was last made (its kept model), or as not reviewed yet.
    """
    root = review_dir(proj)
    by_template: dict[str, list[dict]] = {}
    for template, sid in stories(proj):
        model = models.get((template, sid)) or read_model(root, template, sid)
        by_template.setdefault(template, []).append(
            card(model) if model else _placeholder_card(proj, template, sid))
    indexes, summary = {}, []
    for template, cards in by_template.items():
        totals = {"built": sum(c["built"] for c in cards),
                  "stale": sum(1 for c in cards if c["marks"]["stale"]),
                  "costUsd": round(sum(c["cost"]["costUsd"] for c in cards), 6)}
        indexes[template] = (cards, totals)
        summary.append({"name": template, "stories": len(cards), "built": totals["built"],
                        "drafts": sum(1 for c in cards if c["draft"]), "stale": totals["stale"],
                        "completed": sum(1 for c in cards if c["status"] == "completed"),
                        "costUsd": totals["costUsd"]})
    return indexes, summary


def build_site(proj: Project, status_of: Callable[[str, str], dict],
               keys: list[tuple[str, str]] | None = None) -> SiteRun:
    """Write the review site's pages that changed; return what was written.

    ``status_of(template, id)``: the story's status (``story_status`` or ``sealed_status``); ``keys``: the stories whose pages to bring up
    to date (default: every story of every backlog). The index pages always list every story
    (a story not in ``keys`` is shown as its page was last made).
    """
    t0 = time.monotonic()
    root = review_dir(proj)
    run = SiteRun()
    wanted = stories(proj) if keys is None else keys
    shas = ShaCache(root / ".cloops" / "shas.json")
    previews = Previews(root)
    costs = step_costs(proj)
    design = _design_digest()
    state = State(root)

    usage = UsageBook(proj)
    models: dict[tuple[str, str], dict] = {}
    for template, sid in wanted:
        model = story_model(proj, template, sid, status_of(template, sid),
                            costs.get((template, sid), []), shas, usage)
        attach_previews(model, previews, proj.story_dir(template, sid))
        models[(template, sid)] = model
    run.previews = previews.make()
    for (template, sid), model in models.items():
        set_previews(model, previews)
        rel = story_page(template, sid)
        digest = _digest(design, model)
        if state.fresh(rel, digest, root) and model_path(root, template, sid).is_file():
            run.kept += 1
            continue
        html = render("story.html.j2", 2, m=model)
        _write_if_changed(root, rel, html.encode("utf-8"), run)
        atomic_write_json(model_path(root, template, sid), model)
        state.record(rel, digest)

    for name in STATIC:
        _write_if_changed(root, f"_static/{name}", (HERE / "static" / name).read_bytes(), run)

    indexes, summary = index_data(proj, models)
    for template, (cards, totals) in indexes.items():
        rel = f"{template}/index.html"
        digest = _digest(design, cards, totals)
        if state.fresh(rel, digest, root):
            run.kept += 1
        else:
            html = render("template.html.j2", 1, template=template, cards=cards, totals=totals)
            _write_if_changed(root, rel, html.encode("utf-8"), run)
            state.record(rel, digest)
    digest = _digest(design, summary)
    if state.fresh("index.html", digest, root):
        run.kept += 1
    else:
        _write_if_changed(root, "index.html",
                          render("index.html.j2", 0, templates=summary).encode("utf-8"), run)
        state.record("index.html", digest)
    state.save()
    shas.save(keep_all=keys is not None)
    run.seconds = time.monotonic() - t0
    return run
