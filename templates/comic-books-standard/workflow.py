"""comic-books-standard: a story becomes a narrative, a cast with reference sheets, a page plan,
one image per page and a cover.

Steps (per story, under ``build/comic-books-standard/<id>/``):

0. ``rules``            rules.json            assembled            config ``rules``, the story's
                                                                   ``input.rules``
1. ``narrative``        narrative.md          LLM, text            story input, the text rules
2. ``cast``             cast.json             LLM, cast.json       narrative.md, the library's roster
3. ``pages``            pages.json            LLM, planning.json   narrative.md, the cast's ids and
                                                                   names, the text rules
4. ``sheet-prompt`` (each character, place or prop) cast/<id>.txt  the entry, style.*, the
                                                                   visual rules
5. ``sheet``  (each character)       cast/<id>.jpg  image model    cast/<id>.txt (or a hand-made
                                                                   library sheet)
6. ``prompt``  (each)   prompts/<n>.txt       LLM, page-prompt     page n of pages.json, its cast
7. ``image``   (each)   images/<n>.jpg        image model          prompts/<n>.txt + the sheets of
                                                                   page n's cast as references
8. ``thumbnail-prompt`` thumbnail-prompt.txt  LLM, thumbnail.json  narrative.md, title, cover cast
9. ``thumbnail``        thumbnail.jpg         image model          thumbnail-prompt.txt + cover sheets
10. ``story-data``      story-data.json       assembled            pages.json, images
11. ``bundle``          bundle/               copied               the deliverables

The cast is extracted once: the step sees its own current ``cast.json`` and keeps every entry
(:func:`merge_cast`), so a later run only adds characters. A character of the series library
(``templates/<t>/cast/<id>.json``, hand-made ``<id>.jpg`` optional) is a ``"library": true``
entry: every step sees the library's appearance, and the sheet is the hand-made one when there
is one. Page prompts and images depend on the cast of their own page only (``view``): editing
one character's appearance rebuilds the pages that character is on, nothing else.

Places and props (``kind`` ``place`` / ``prop``) are cast entries too: a place's sheet is an
establishing view with no people, a prop's the object alone on white; panels list them after
their characters, and their sheets are passed after the characters' (:func:`page_references`).
Steps 6, 8 and the sheets are told the visual rules, steps 1 and 3 the text rules (rules.json
parts, so each depends on its own scope only). Every image call also takes the style frame
(``style.referenceImage``, :func:`style_frame`) as its last reference.

Then the evals (no call but the opt-in judges), under ``evals/`` and in ``evals.json``:
``check-plan``, ``check-moments``, ``check-narrative``, ``check-prompt`` (each page; with the
visual rules' forbidden words), ``check-cover`` (likewise), ``check-rules`` (the text rules'
forbidden words in the narrative and narration), ``judge-story`` and ``judge-page`` (each page, with the page's reference
sheets; off unless ``evals.judge.*``), ``evals``.

With ``ads.enabled`` (off here, on in comic-books-kids) the ad components, under ``ads/``:
``ad-hooks`` (hooks.json, LLM), ``ad-ctas`` (ctas.json, LLM), ``ad-tags`` (tags.json, LLM),
``hook-clip`` (each line: hook-<k>.mp4), ``cta-clip`` (each CTA: cta-<c>.mp4, an end card),
``body-clip`` (body.mp4, timed by reading pace here), ``ad-manifest``.

Step 6 and 8 return blocks (schemas/*.json); :func:`assemble_page_prompt` joins them into the
prompt text by the knowledge layer's assembly rules, so the prompt file is readable and
hand-editable. Offline drafts are built from the story input by the ``draft_*`` functions.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloops.core.errors import InputError
from cloops.data import rules as rulebook

from cloops.steps import (AdCopyStep, AdManifestStep, AssembleStep, BodyClipStep, BundleStep,
                          CheckStep, CtaClipStep, EvalsStep, ForEach, HookClipStep, ImageStep,
                          JudgeStep, LLMStep, constrain, cta_card, derive, each,
                          evidence, file, hook_shot, item, part, prose, story, verdict, view)

DRAFT_MARK = "[offline draft]"


# ---------------------------------------------------------------- config of this template

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PageCount(_Strict):
    min: int = Field(ge=1, le=12)
    max: int = Field(ge=1, le=12)

    @model_validator(mode="after")
    def _order(self):
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class Settings(_Strict):
    wordCount: int = Field(ge=30, le=2000)
    pageCount: PageCount
    panelsPerPage: int = Field(ge=1, le=6)


class Style(_Strict):
    """``style``: the art style every prompt names, and the optional style frame —
    ``referenceImage``, a picture in the template folder passed last with every image call
    (sheets, pages, cover) as showing the art style only; ``referenceStrength`` (``loose`` |
    ``close``) picks how strongly the prompt asks for it (:data:`STYLE_FRAME_LABELS`)."""

    artStyle: str = Field(min_length=1)
    inkStyle: str = Field(min_length=1)
    colorTreatment: str = Field(min_length=1)
    referenceImage: str | None = Field(default=None, min_length=1)
    referenceStrength: Literal["loose", "close"] = "close"


class Thumbnail(_Strict):
    params: dict = Field(default_factory=dict)


class Cast(_Strict):
    """``cast``: how reference sheets are drawn (``params`` over ``generation.params``)."""

    params: dict = Field(default_factory=dict)
class JudgeSwitches(_Strict):
    story: bool = False
    pages: bool = False


class Evals(_Strict):
    """``evals``: the threshold below which a judged score marks a story "needs review", and
    which paid judges run (opt-in: both off by default)."""

    threshold: float = Field(default=3, ge=1, le=5)
    judge: JudgeSwitches = Field(default_factory=JudgeSwitches)


class ComicConfig(_Strict):
    """The template-owned sections of config.json."""

    settings: Settings
    style: Style
    thumbnail: Thumbnail = Field(default_factory=Thumbnail)
    cast: Cast = Field(default_factory=Cast)
    evals: Evals = Field(default_factory=Evals)
    rules: list = Field(default_factory=list)

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, value):
        """The series' rules (:mod:`cloops.data.rules`): each ``{id, text, scope, forbid?}``."""
        try:
            return rulebook.validate_rules(value, file="config.json", field="rules")
        except InputError as exc:
            raise ValueError(f"{exc.field}: {exc.detail} {exc.fix or ''}".strip()) from None


CONFIG_MODEL = ComicConfig


# ---------------------------------------------------------------- the cast

def roster(data, inputs, ctx) -> list[dict]:
    """The cast's ids, names and kinds, in order (what the page plan needs: not appearances)."""
    return [{"id": c["id"], "name": c.get("name", c["id"]), "kind": c.get("kind", "person")}
            for c in data["characters"]]


def library_roster(library: dict) -> list[dict]:
    """The series library's ids, names and kinds (what cast extraction needs to reuse them)."""
    return [{"id": k, "name": v.get("name", k), "kind": v.get("kind", "person")}
            for k, v in sorted(library.items())]


def _entry(c: dict) -> dict:
    return {"id": c["id"], "name": c.get("name", c["id"]), "kind": c.get("kind", "person"),
            "appearance": c.get("appearance", "")}


def page_cast(data, inputs, ctx) -> list[dict]:
    """The cast members in page n's panels, in cast order, with their appearance (resolved from
    the library for library characters): what page n's prompt and image depend on."""
    page = inputs.get("page") or {}
    ids = {i for p in page.get("panels", []) for i in p.get("cast", [])}
    return [_entry(c) for c in data["characters"] if c["id"] in ids]


def cover_cast(data, inputs, ctx) -> list[dict]:
    """The cast members the cover shows (``coverCast`` of the plan), in that order."""
    by_id = {c["id"]: c for c in data["characters"]}
    return [_entry(by_id[i]) for i in inputs.get("coverCast") or [] if i in by_id]


def sheet_path(character: dict) -> str:
    return f"cast/{character['id']}.jpg"


def panel_casts(page) -> dict:
    """What a check of page n's prompt reads of its entry: who is on each panel."""
    return {"panels": [{"cast": p.get("cast", [])} for p in page.get("panels") or []]}


def page_sheets(data, inputs, ctx) -> list[str]:
    """The sheet files of the cast on page n, in cast order (what the vision judge compares
    the page with)."""
    return [sheet_path(c) for c in page_cast(data, inputs, ctx)]


THINGS = ("place", "prop")  # cast kinds that are not characters: settings and objects


def characters_first(cast) -> list[dict]:
    """The cast with its characters first, then its places and props (each in cast order):
    the order of reference images, so a model's limit cuts places and props first."""
    cast = list(cast or [])
    return [c for c in cast if c.get("kind") not in THINGS] + \
        [c for c in cast if c.get("kind") in THINGS]


def _sheet_label(c: dict) -> str:
    kind = c.get("kind")
    what = {"place": "establishing view", "prop": "reference sheet"}.get(kind, "reference sheet")
    return f"{c['name']}'s {what}" if kind not in THINGS else f"the {what} of {c['name']}"


def page_references(inputs, ctx) -> list[tuple[str, str]]:
    """The reference sheets of page n's cast: its characters, then its places and props, each
    in cast order: ``[(cast/<id>.jpg, label)]``. The style frame, when there is one, comes
    after them (the image kind adds it: :func:`style_frame`)."""
    return [(sheet_path(c), _sheet_label(c)) for c in characters_first(inputs["cast"])]


def library_sheet(inputs, ctx):
    """A hand-made library sheet (``templates/<t>/cast/<id>.jpg``) for a library character, or
    None: it is used as the sheet, with no image call."""
    c = inputs["character"] or {}
    if not c.get("library"):
        return None
    return ctx.template_file(f"cast/{c['id']}.jpg") or ctx.template_file(f"cast/{c['id']}.png")


def check_cast(data, inputs, ctx) -> list[str]:
    """Ids unique; a library character exists in the library; a new one has an appearance."""
    library = ctx.collection("cast")
    errors, seen = [], set()
    for i, c in enumerate(data["characters"]):
        if c["id"] in seen:
            errors.append(f"characters/{i}/id: {c['id']!r} is used twice; ids are unique")
        seen.add(c["id"])
        if c["library"] and c["id"] not in library:
            errors.append(f"characters/{i}: {c['id']!r} is not in the library; set library "
                          f"false and write its appearance, or use a library id")
        if not c["library"] and not c["appearance"].strip():
            errors.append(f"characters/{i}/appearance: describe {c['name']} in 25 to 45 words")
    return errors


def merge_cast(data, inputs, ctx) -> dict:
    """cast.json: the current cast kept entry for entry (hand edits included), then the
    characters the answer adds; a library character as ``{"id", "name", "kind",
    "library": true}`` (its appearance lives in the library)."""
    previous = inputs.get("previous")
    kept = list(previous["characters"]) if isinstance(previous, dict) and \
        isinstance(previous.get("characters"), list) else []
    have = {c.get("id") for c in kept if isinstance(c, dict)}
    library = ctx.collection("cast")
    for c in data["characters"]:
        if c["id"] in have:
            continue
        entry = {"id": c["id"], "name": c["name"], "kind": c["kind"]}
        if c["library"]:  # named as in the library: the sheet is the same in every story
            lib = library.get(c["id"], {})
            entry = {"id": c["id"], "name": lib.get("name", c["name"]),
                     "kind": lib.get("kind", c["kind"]), "library": True}
        else:
            if c.get("lookOf"):
                entry["lookOf"] = c["lookOf"]
            entry["appearance"] = c["appearance"]
        kept.append(entry)
        have.add(c["id"])
    return {"characters": kept}


# ---------------------------------------------------------------- rules and the style frame
#
# rules.json (assembled, no call) holds the rules a story obeys: the series' (config.json
# ``rules``) with the story's own (backlog ``input.rules``) over them. Steps depend on the part
# they are told, the rules' texts only: ``text`` (narrative, plan) or ``visual`` (sheet
# prompts, page and cover prompts); the rule check on ``rules`` (with ``forbid``).

def story_rules(inputs, ctx) -> dict:
    """rules.json: ``{"rules": [{id, text, scope, forbid, from}], "text": [text, ...],
    "visual": [text, ...]}`` — every rule, then the texts each kind of step is told."""
    series = rulebook.validate_rules(ctx.config.get("rules", []), file=ctx.config.file,
                                     field="rules")
    own = inputs.get("own")
    own = rulebook.validate_rules(own, file="the backlog", field="input.rules") if own else []
    every = rulebook.merged(series, own)
    scoped = rulebook.by_scope(every)
    return {"rules": every, "text": [r["text"] for r in scoped["text"]],
            "visual": [r["text"] for r in scoped["visual"]]}


@dataclass(frozen=True)
class RulesStep(AssembleStep):
    """The ``rules`` step: assembled like any, depending on config ``rules`` when the config
    has it (a template without rules needs no ``"rules": []``)."""

    def config_paths(self, tpl) -> list[str]:
        return [p for p in super().config_paths(tpl) if p != "rules" or tpl.config.has("rules")]


def told(story_input: dict) -> dict:
    """The story input as the narrative and the story judge are told it: without its
    ``rules`` (those reach them through rules.json, by scope)."""
    return {k: v for k, v in story_input.items() if k != "rules"}


def _rules_block(texts, heading="Rules (every one must hold)") -> list[str]:
    """The rules as a step's message tells them: a heading and one line each (none: nothing)."""
    return [f"{heading}:", *[f"- {t}" for t in texts]] if texts else []


STYLE_FRAME_LABELS = {
    "close": "the style frame: it shows the art style only, not content — match its linework, "
             "colouring, texture and light closely; take none of its people, places, objects "
             "or composition",
    "loose": "the style frame: a loose guide to the art style only, not content — echo its "
             "overall feel and palette; take none of its people, places, objects or "
             "composition",
}


def style_frame(ctx):
    """``(path, label)`` of the style frame (``style.referenceImage``, a picture in the
    template folder), worded by ``style.referenceStrength``; None when none is set.

    Raises:
        InputError: the picture is not in the template folder (names config.json's field).
    """
    name = ctx.config.get("style.referenceImage", None)
    if not name:
        return None
    path = ctx.template_file(name)
    if path is None:
        raise InputError(f"names {name!r}, which is not in the template folder.",
                         file=ctx.config.file, field="style.referenceImage",
                         fix="put the picture (JPEG or PNG) beside config.json, or remove the "
                             "key.")
    return path, STYLE_FRAME_LABELS[ctx.config.get("style.referenceStrength", "close")]


# ---------------------------------------------------------------- user messages

def narrative_user(inputs, ctx) -> str:
    s = inputs["story"]
    lines = [f"Title: {s['title']}"]
    if s.get("reference"):
        lines.append(f"Scripture: {s['reference']}")
    lines.append(f"Summary: {s['summary']}")
    lines.append("Key moments:")
    lines += [f"- {m}" for m in s["keyMoments"]]
    rules = _rules_block(inputs.get("rules") or [])
    return "\n".join(lines + ([""] + rules if rules else []))


def cast_user(inputs, ctx) -> str:
    """The cast step's message: the story, the series library's roster (consulted when the
    cast is extracted, not a dependency: a character added to the library later does not
    re-extract every story's cast) and the current cast to keep."""
    lines = [f"Title: {inputs['title']}", "", "Narrative:", inputs["narrative"].strip(), "",
             "Series library:"]
    roster = library_roster(ctx.collection("cast"))
    lines += [f"- {c['id']}: {c['name']} ({c['kind']})" for c in roster] or ["- (empty)"]
    previous = inputs.get("previous")
    if isinstance(previous, dict) and previous.get("characters"):
        lines += ["", "Current cast (keep every entry as it is):",
                  json.dumps(previous, ensure_ascii=False, indent=1)]
    return "\n".join(lines)


def pages_user(inputs, ctx) -> str:
    cast = "\n".join(f"- {c['id']}: {c['name']} ({c['kind']})" for c in inputs["cast"] or [])
    text = (f"Title: {inputs['title']}\n\nCast:\n{cast or '- (none)'}\n\n"
            f"Narrative:\n{inputs['narrative'].strip()}")
    rules = _rules_block(inputs.get("rules") or [])
    if rules:
        text += "\n\n" + "\n".join(rules)
    previous = inputs.get("previous")
    if isinstance(previous, dict):
        text += ("\n\nCurrent plan: the cast changed since it was made. Keep every page, panel "
                 "and word of it as it is; only set each panel's `cast` and the `coverCast` "
                 "for the Cast above.\n" + json.dumps(previous, ensure_ascii=False, indent=1))
    return text


def _characters_block(characters) -> str:
    chars = [c for c in characters or [] if c.get("kind") not in THINGS]
    things = [c for c in characters or [] if c.get("kind") in THINGS]
    lines = ["Characters (fixed appearance — copy exactly):"]
    lines += [f"- {c['name']}: {c['appearance']}" for c in chars] or ["- (none on this page)"]
    if things:
        lines += ["Places and props (fixed look — copy exactly):"]
        lines += [f"- {c['name']} ({c['kind']}): {c['appearance']}" for c in things]
    return "\n".join(lines)


def page_prompt_user(inputs, ctx) -> str:
    page = inputs["page"]
    names = {c["id"]: c["name"] for c in inputs["cast"] or []}
    lines = [_characters_block(inputs["cast"]), "",
             f"Page {ctx.n}: {page['title']}", f"Narration: {page['narration']}", "Panels:"]
    for i, p in enumerate(page["panels"], 1):
        who = ", ".join(names.get(c, c) for c in p.get("cast", [])) or "no cast member"
        lines.append(f"{i}. {p['moment']} — visual anchor: {p['visualAnchor']} — cast: {who}")
    rules = _rules_block(inputs.get("rules") or [])
    return "\n".join(lines + ([""] + rules if rules else []))


def thumbnail_user(inputs, ctx) -> str:
    rules = _rules_block(inputs.get("rules") or [])
    return (f"{_characters_block(inputs['cast'])}\n\nTitle: {inputs['title']}\n\n"
            f"Narrative:\n{inputs['narrative'].strip()}"
            + ("\n\n" + "\n".join(rules) if rules else ""))


# ---------------------------------------------------------------- checks and assembly

def check_pages(data, inputs, ctx) -> list[str]:
    """The plan must respect settings.pageCount and settings.panelsPerPage and use the cast."""
    lo = ctx.config.get("settings.pageCount.min")
    hi = ctx.config.get("settings.pageCount.max")
    per = ctx.config.get("settings.panelsPerPage")
    ids = {c["id"] for c in inputs["cast"] or []}
    pages = data["pages"]
    errors = []
    if not lo <= len(pages) <= hi:
        errors.append(f"pages: {len(pages)} pages; write between {lo} and {hi}")
    for i, p in enumerate(pages, 1):
        if p["pageNumber"] != i:
            errors.append(f"pages/{i - 1}/pageNumber: is {p['pageNumber']}; number pages from 1 in order")
        if len(p["panels"]) != per:
            errors.append(f"pages/{i - 1}/panels: {len(p['panels'])} panels; write exactly {per}")
        for k, panel in enumerate(p["panels"]):
            unknown = [c for c in panel["cast"] if c not in ids]
            if unknown:
                errors.append(f"pages/{i - 1}/panels/{k}/cast: {unknown} are not cast ids; use "
                              f"only {sorted(ids)}")
    unknown = [c for c in data["coverCast"] if c not in ids]
    if unknown:
        errors.append(f"coverCast: {unknown} are not cast ids; use only {sorted(ids)}")
    return errors


def shape_plan(schema, inputs, ctx) -> dict:
    """The plan's schema as sent (planning.json, constrained): ``settings.pageCount`` as the
    pages' ``minItems``/``maxItems`` and the page numbers' range, ``settings.panelsPerPage``
    as each page's panel count and the panel numbers' range, and the cast's ids as the only
    values of a panel's and the cover's cast lists (at most as many as there are). A
    constrained decoder then cannot write what :func:`check_pages` rejects; that check keeps
    what a schema cannot say (pages numbered in order)."""
    lo = ctx.config.get("settings.pageCount.min")
    hi = ctx.config.get("settings.pageCount.max")
    per = ctx.config.get("settings.panelsPerPage")
    constrain(schema, "pages", minItems=lo, maxItems=hi)
    constrain(schema, "pages[].pageNumber", minimum=1, maximum=hi)
    constrain(schema, "pages[].panels", minItems=per, maxItems=per)
    constrain(schema, "pages[].panels[].panel", minimum=1, maximum=per)
    if inputs.get("cast") is not None:  # None: a revision's digest, made without the cast
        ids = [c["id"] for c in inputs["cast"]]
        for path in ("pages[].panels[].cast", "coverCast"):
            most = constrain(schema, path).get("maxItems", len(ids))
            constrain(schema, path, maxItems=min(most, len(ids)))
            constrain(schema, path + "[]", enum=ids or None)
    return schema


def shape_hooks(schema, inputs, ctx) -> dict:
    """The hook lines' schema as sent (ad-hooks.json, constrained): exactly ``ads.hooks``
    lines, each on a page of the plan (0: the cover) and a panel number it can have."""
    want = ctx.config.get("ads.hooks")
    constrain(schema, "hooks", minItems=want, maxItems=want)
    plan = inputs.get("plan")
    if plan is not None:
        constrain(schema, "hooks[].page", minimum=0, maximum=len(plan))
        constrain(schema, "hooks[].panel", minimum=0,
                  maximum=max((len(p["panels"]) for p in plan), default=0))
    return schema


def shape_ctas(schema, inputs, ctx) -> dict:
    """The CTA lines' schema as sent (ad-ctas.json, constrained): exactly ``ads.ctas`` lines
    (each line's 24 characters and its type are in the file: a ``pattern`` and an ``enum``)."""
    want = ctx.config.get("ads.ctas")
    constrain(schema, "ctas", minItems=want, maxItems=want)
    return schema


def shape_page_prompt(schema, inputs, ctx) -> dict:
    """A page prompt's schema as sent (page-prompt.json): one block per panel of the page."""
    want = len(inputs["page"]["panels"]) if inputs.get("page") else None
    if want:
        constrain(schema, "panels", minItems=want, maxItems=want)
        constrain(schema, "panels[].panel", minimum=1, maximum=want)
    return schema


def merge_plan(data, inputs, ctx) -> dict:
    """pages.json: a revision of the current plan (the cast changed, nothing else) keeps every
    page as it was — hand edits included — and takes only the panels' ``cast`` lists and
    ``coverCast`` from the answer, so only the pages whose cast changed are redrawn; otherwise
    the answer as it is."""
    previous = inputs.get("previous")
    if not isinstance(previous, dict) or not isinstance(previous.get("pages"), list):
        return data
    shape = [len(p.get("panels", [])) for p in previous["pages"]]
    if shape != [len(p["panels"]) for p in data["pages"]]:
        return data  # the answer re-planned the pages: a new plan, not a revision
    out = json.loads(json.dumps(previous))
    for page, new in zip(out["pages"], data["pages"]):
        for panel, new_panel in zip(page["panels"], new["panels"]):
            panel["cast"] = new_panel["cast"]
    out["coverCast"] = data["coverCast"]
    return out


def check_page_prompt(data, inputs, ctx) -> list[str]:
    want = len(inputs["page"]["panels"])
    if len(data["panels"]) != want:
        return [f"panels: {len(data['panels'])} panels; write exactly {want}, one per input panel"]
    return []


def _style_line(config) -> str:
    return (f"{config.get('style.artStyle')}, {config.get('style.inkStyle')}, "
            f"{config.get('style.colorTreatment')}.")


def _clean(text: str) -> str:
    return text.strip().rstrip(".").strip()


def _cast_line(cast) -> list[str]:
    """The characters' fixed appearance, kept in the text beside their reference sheets (and
    the places' and props' look on a line of their own)."""
    chars = [c for c in cast or [] if c.get("kind") not in THINGS]
    things = [c for c in cast or [] if c.get("kind") in THINGS]
    out = []
    if chars:
        out.append("Characters: " + "; ".join(f"{c['name']}: {_clean(c['appearance'])}"
                                              for c in chars) + ".")
    if things:
        out.append("Places and props: " + "; ".join(f"{c['name']}: {_clean(c['appearance'])}"
                                                    for c in things) + ".")
    return out


def assemble_page_prompt(data, inputs, ctx) -> str:
    """Join step 6's blocks into the image prompt (knowledge/prompting.md, assembly rules)."""
    panels = data["panels"]
    lines = [_style_line(ctx.config),
             f"A comic book page: {len(panels)} panels stacked vertically, separated by thin "
             "white gutters."]
    for p in panels:
        lines.append(f"Panel {p['panel']} — {_clean(p['shot'])}: {_clean(p['subject'])} "
                     f"{_clean(p['action'])}. {_clean(p['environment'])}. {_clean(p['lighting'])}.")
    lines += [f"Setting: {_clean(data['setting'])}.", f"Palette: {_clean(data['palette'])}.",
              f"Mood: {_clean(data['mood'])}."] + _cast_line(inputs["cast"]) + [
              "No text, no letters, no speech bubbles."]
    return "\n".join(lines) + "\n"


def assemble_thumbnail_prompt(data, inputs, ctx) -> str:
    """Join step 8's blocks into the cover prompt."""
    return "\n".join([
        _style_line(ctx.config),
        "A single full-bleed cover illustration, not a comic page, with clear empty space at "
        "the top for a title overlay.",
        f"{_clean(data['subject'])} {_clean(data['action'])}.",
        f"Composition: {_clean(data['composition'])}.",
        f"Environment: {_clean(data['environment'])}.",
        f"Lighting: {_clean(data['lighting'])}.",
        f"Palette: {_clean(data['palette'])}.",
        f"Mood: {_clean(data['mood'])}.",
    ] + _cast_line(inputs["cast"]) + ["No text, no letters, no title lettering."]) + "\n"


def sheet_prompt(inputs, ctx) -> str:
    """A cast member's reference sheet prompt, in the template's art style, no text: a
    character's full figure front, side and back views and a face close-up on plain white; a
    place's establishing view with no people; a prop alone on plain white. The story's visual
    rules (rules.json ``visual``) close it."""
    c = inputs["character"]
    rules = _rules_block(inputs.get("rules") or [], "Rules")
    if c.get("kind") == "place":
        return "\n".join([
            _style_line(ctx.config),
            f"An establishing view of a place: {c['name']}, {_clean(c.get('appearance', ''))}.",
            "One wide view showing the whole place clearly, its shape, materials and colours, "
            "in even daylight.",
            "No people, no animals, no figures of any kind.",
            *rules,
            "No text, no letters, no labels, no captions.",
        ]) + "\n"
    if c.get("kind") == "prop":
        return "\n".join([
            _style_line(ctx.config),
            f"A reference sheet of an object: {c['name']}, {_clean(c.get('appearance', ''))}.",
            "The object alone on a plain white background, seen from the front, the side and "
            "from above, all the same size and lighting.",
            "Even soft studio light, no shadows on the background, no people, no hands, no "
            "scenery.",
            *rules,
            "No text, no letters, no labels, no captions.",
        ]) + "\n"
    what = {"animal": "an animal character", "group": "a group of characters"}.get(
        c.get("kind"), "a character")
    return "\n".join([
        _style_line(ctx.config),
        f"A character reference sheet of {what}: {c['name']}, {_clean(c.get('appearance', ''))}.",
        "Four views side by side on a plain white background: full figure from the front, "
        "from the side and from the back, and a close-up of the face, all the same size and "
        "lighting, the same clothes and colours in every view.",
        "Even soft studio light, no shadows on the background, no scenery, no props but what "
        "the character carries.",
        *rules,
        "No text, no letters, no labels, no captions.",
    ]) + "\n"


def storyboard_page(inputs, ctx) -> dict:
    """What the offline storyboard draws for page n: its title, panels and narration."""
    page = inputs["page"] or {}
    return {"title": page.get("title", ""), "label": f"Page {ctx.n} of {ctx.count}",
            "narration": page.get("narration", ""),
            "panels": [{"panel": p.get("panel"), "moment": p.get("moment", ""),
                        "visualAnchor": p.get("visualAnchor", "")} for p in page.get("panels", [])]}


def storyboard_cover(inputs, ctx) -> dict:
    return {"title": inputs["title"], "label": "Thumbnail", "narration": "", "panels": []}


def storyboard_sheet(inputs, ctx) -> dict:
    """The offline storyboard's character card: name, kind and appearance."""
    c = inputs["character"] or {}
    label = {"place": "Establishing view", "prop": "Prop sheet"}.get(c.get("kind"),
                                                                       "Reference sheet")
    return {"title": c.get("name", ""), "label": label + (
        " (library)" if c.get("library") else ""), "narration": "", "panels": [],
        "body": f"{c.get('kind', 'person')} · {c.get('appearance', '')}"}


def story_data(inputs, ctx) -> dict:
    """story-data.json in the seed spec's shape (StoryDataJson)."""
    pages = inputs["pages"]["pages"]
    return {
        "storyId": ctx.story_id,
        "title": ctx.story["title"],
        "thumbnailFile": "thumbnail.jpg",
        "totalPages": len(pages),
        "pages": [{"pageNumber": i, "imageFile": f"{i}.jpg", "narration": p["narration"]}
                  for i, p in enumerate(pages, 1)],
    }


# ---------------------------------------------------------------- offline drafts

_SHOTS = ["wide establishing shot", "medium shot at eye level", "close-up at eye level",
          "low-angle medium shot", "over-the-shoulder shot", "high-angle wide shot"]
_NOT_NAMES = {"God", "The", "A", "An", "In", "On", "After", "When", "His", "Her", "Their",
              "Hebrew", "Israelites", "Egypt", "Eden", "Bethlehem", "Nineveh", "Jericho",
              "Babylon", "Nile"}


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def draft_narrative(inputs, ctx) -> str:
    """A narrative made from the summary and key moments (no model), marked as a draft."""
    s = inputs["story"]
    moments = s["keyMoments"]
    body = [_sentence(s["summary"])]
    connectors = ["First", "Then", "Next", "After that", "Soon", "Later"]
    for i, m in enumerate(moments):
        lead = "Finally" if i == len(moments) - 1 and i > 0 else connectors[min(i, len(connectors) - 1)]
        body.append(f"{lead}, {m.strip().rstrip('.')}.")
    return (f"# {s['title']}\n\n<!-- {DRAFT_MARK} built from the story input; no model was called -->\n\n"
            + " ".join(body) + "\n")


def _names(text: str) -> list[str]:
    words = re.findall(r"\b[A-Z][a-z]+\b", text)
    out: list[str] = []
    for w in words:
        if w not in _NOT_NAMES and w not in out:
            out.append(w)
    return out[:4]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "character"


def _named_in(name: str, text: str) -> bool:
    """``name`` in ``text`` as whole words, any case ("the ark" in "Noah builds the Ark")."""
    words = [w for w in re.findall(r"[a-z0-9']+", name.lower()) if w not in ("the", "a", "an")]
    return bool(words) and re.search(r"(?<![\w-])" + r"\W+".join(map(re.escape, words))
                                     + r"(?![\w-])", text.lower()) is not None


def draft_cast(inputs, ctx) -> dict:
    """A cast from the names in the story input (no model): library characters reused by name,
    the others marked as drafts; then the library's places and props the input names."""
    s = ctx.story
    text = " ".join([s["summary"], *s["keyMoments"]])
    roster_ = library_roster(ctx.collection("cast"))
    library = {c["name"]: c["id"] for c in roster_ if c["kind"] not in THINGS}
    things = [{"id": c["id"], "name": c["name"], "kind": c["kind"], "library": True,
               "lookOf": None, "appearance": ""}
              for c in roster_ if c["kind"] in THINGS and _named_in(c["name"], text)]
    names = _names(text) or ["The people of the story"]
    chars = []
    for name in names:
        if name in library:
            chars.append({"id": library[name], "name": name, "kind": "person", "library": True,
                          "lookOf": None, "appearance": ""})
        else:
            chars.append({"id": _slug(name), "name": name, "kind": "person", "library": False,
                          "lookOf": None,
                          "appearance": f"{DRAFT_MARK} {name} in a plain ancient robe; a real "
                                        "cast describes age, build, hair and clothing"})
    return {"characters": chars + things[:4]}


def _panel_cast(moment: str, cast: list[dict]) -> list[str]:
    """The cast ids named in a moment (by name or id): at most three characters (the main
    character when none is named), then the places and props it names (at most two)."""
    text = moment.lower()
    chars = [c for c in cast if c.get("kind") not in THINGS]
    named = [c["id"] for c in chars if c["name"].lower() in text
             or re.search(rf"\b{re.escape(c['id'])}\b", text)]
    who = named[:3] or ([chars[0]["id"]] if chars else [])
    things = [c["id"] for c in cast if c.get("kind") in THINGS
              and (_named_in(c["name"], moment) or re.search(rf"\b{re.escape(c['id'])}\b", text))]
    return who + things[:2]


def _cover_ids(cast) -> list[str]:
    """The draft cover's cast: the first two characters (places and props stay off it)."""
    return [c["id"] for c in cast if c.get("kind") not in THINGS][:2]


def draft_pages(inputs, ctx) -> dict:
    """A page plan spreading the key moments over pages within settings.pageCount (the current
    plan with its cast lists set again, when revising)."""
    previous = inputs.get("previous")
    cast = inputs["cast"] or []
    if isinstance(previous, dict) and isinstance(previous.get("pages"), list):
        plan = json.loads(json.dumps(previous))
        for page in plan["pages"]:
            for panel in page.get("panels", []):
                panel["cast"] = _panel_cast(panel.get("moment", ""), cast)
        plan["coverCast"] = _cover_ids(cast)
        return plan
    s = ctx.story
    moments = s["keyMoments"]
    per = ctx.config.get("settings.panelsPerPage")
    lo = ctx.config.get("settings.pageCount.min")
    hi = ctx.config.get("settings.pageCount.max")
    n_pages = max(lo, min(hi, math.ceil(len(moments) / per)))
    total = n_pages * per
    anchors = ["the whole scene at a glance", "the main figure's gesture", "faces reacting",
               "the key object in close detail", "the consequence in the landscape"]
    pages = []
    for p in range(n_pages):
        panels = []
        for k in range(per):
            idx = (p * per + k) * len(moments) // total
            panels.append({"panel": k + 1, "moment": moments[idx],
                           "visualAnchor": anchors[(p * per + k) % len(anchors)],
                           "cast": _panel_cast(moments[idx], cast)})
        page_moments = list(dict.fromkeys(pl["moment"] for pl in panels))
        pages.append({"pageNumber": p + 1, "title": _sentence(page_moments[0]).rstrip("."),
                      "narration": " ".join(_sentence(m) for m in page_moments),
                      "panels": panels})
    return {"title": s["title"], "coverCast": _cover_ids(cast), "pages": pages}


def _panel_subject(cast, ids) -> str:
    """The cast members the panel lists (at most three), each with their appearance copied
    word for word, as the knowledge layer asks."""
    named = [c for c in cast or [] if c["id"] in ids and c.get("kind") not in THINGS]
    return "; ".join(f"{c['name']}, {_clean(c['appearance'])}" for c in named[:3]) or \
        "the figures of the story"


def _panel_things(cast, ids) -> str:
    """The places and props the panel lists, each with its look copied word for word."""
    named = [c for c in cast or [] if c["id"] in ids and c.get("kind") in THINGS]
    return "".join(f", with {c['name']}, {_clean(c['appearance'])}" for c in named)


def draft_page_prompt(inputs, ctx) -> dict:
    page = inputs["page"]
    return {
        "setting": f"{DRAFT_MARK} {page['title']}, in the land of the story in ancient times, "
                   "under a clear daytime sky, dry hills and scattered scrub in the distance",
        "panels": [{"panel": p["panel"], "shot": _SHOTS[i % len(_SHOTS)],
                    "subject": _panel_subject(inputs["cast"], p.get("cast", [])),
                    "action": f"shown in the moment: {p['moment']}",
                    "environment": f"focus on {p['visualAnchor']}, with simple ground in the "
                                   "foreground and low hills behind"
                                   + _panel_things(inputs["cast"], p.get("cast", [])),
                    "lighting": "soft even daylight from the left, gentle shadows"}
                   for i, p in enumerate(page["panels"])],
        "palette": "warm earth tones, sky blue, olive green",
        "mood": "calm and clear",
    }


def draft_thumbnail(inputs, ctx) -> dict:
    chars = ", ".join(c["name"] for c in inputs["cast"] or []
                      if c.get("kind") not in THINGS) or "the figures of the story"
    return {"subject": f"{DRAFT_MARK} {chars}", "action": f"at the heart of {inputs['title']}",
            "composition": "centered figure, wide margins, empty sky at the top",
            "environment": "the story's landscape", "lighting": "golden hour light",
            "palette": "warm earth tones", "mood": "inviting"}


# ---------------------------------------------------------------- the steps

PAGES = ForEach("pages.json", "pages")
CAST = ForEach("cast.json", "characters", by="id", library="cast")
STYLE = ("style.artStyle", "style.inkStyle", "style.colorTreatment")

TEXT_RULES = part("rules.json", "text")
VISUAL_RULES = part("rules.json", "visual")

STEPS = [
    RulesStep(name="rules", target="rules.json",
              doc="the rules this story obeys: the series' and its own",
              inputs={"own": story("rules")}, uses=("rules",), run=story_rules),
    LLMStep(name="narrative", target="narrative.md", doc="step 1: the story as prose",
            system_prompt="step1-narrative.md",
            inputs={"story": story(select=told), "rules": TEXT_RULES},
            user=narrative_user, draft=draft_narrative),
    LLMStep(name="cast", target="cast.json", doc="the recurring characters, extracted once",
            system_prompt="cast.md", schema="cast.json",
            inputs={"narrative": file("narrative.md"), "title": story("title")},
            previous=True, user=cast_user, draft=draft_cast, validate=check_cast,
            write=merge_cast),
    LLMStep(name="pages", target="pages.json", doc="step 2: the page plan",
            system_prompt="step2-planning.md", schema="planning.json",
            inputs={"narrative": file("narrative.md"), "title": story("title"),
                    "cast": view("cast.json", roster), "rules": TEXT_RULES},
            uses=("settings.pageCount", "settings.panelsPerPage"), previous=("cast",),
            user=pages_user, draft=draft_pages, validate=check_pages, write=merge_plan,
            shape=shape_plan),
    AssembleStep(name="sheet-prompt", target="cast/{id}.txt", foreach=CAST,
                 doc="the reference sheet prompt of one character, place or prop",
                 inputs={"character": item(), "rules": VISUAL_RULES}, uses=STYLE,
                 run=sheet_prompt),
    ImageStep(name="sheet", target="cast/{id}.jpg", foreach=CAST,
              doc="the reference sheet of one character, place or prop",
              inputs={"prompt": file("cast/{id}.txt"), "character": item()},
              params_override="cast.params", annotate=storyboard_sheet, use_file=library_sheet,
              style_frame=style_frame),
    LLMStep(name="prompt", target="prompts/{n}.txt", foreach=PAGES,
            doc="step 3: the image prompt of one page",
            system_prompt="step3-prompts.md", knowledge=("prompting.md",),
            schema="page-prompt.json",
            inputs={"page": item(), "cast": view("cast.json", page_cast), "rules": VISUAL_RULES},
            uses=STYLE, user=page_prompt_user, draft=draft_page_prompt,
            validate=check_page_prompt, write=assemble_page_prompt, version=2,
            shape=shape_page_prompt),
    ImageStep(name="image", target="images/{n}.jpg", foreach=PAGES, doc="the page image",
              inputs={"prompt": file("prompts/{n}.txt"), "page": item(),
                      "cast": view("cast.json", page_cast)},
              annotate=storyboard_page, references=page_references,
              reference_patterns=("cast/{id}.jpg",), style_frame=style_frame),
    LLMStep(name="thumbnail-prompt", target="thumbnail-prompt.txt",
            doc="step 4: the cover prompt", system_prompt="step4-thumbnail.md",
            schema="thumbnail.json",
            inputs={"narrative": file("narrative.md"), "title": story("title"),
                    "coverCast": part("pages.json", "coverCast"),
                    "cast": view("cast.json", cover_cast), "rules": VISUAL_RULES},
            uses=STYLE, user=thumbnail_user, draft=draft_thumbnail,
            write=assemble_thumbnail_prompt),
    ImageStep(name="thumbnail", target="thumbnail.jpg", doc="the cover image",
              inputs={"prompt": file("thumbnail-prompt.txt"), "title": story("title"),
                      "coverCast": part("pages.json", "coverCast"),
                      "cast": view("cast.json", cover_cast)},
              params_override="thumbnail.params", annotate=storyboard_cover,
              references=page_references, reference_patterns=("cast/{id}.jpg",),
              style_frame=style_frame),
    AssembleStep(name="story-data", target="story-data.json", doc="story-data.json for the app",
                 inputs={"pages": file("pages.json"), "images": each("images/{n}.jpg"),
                         "thumbnail": file("thumbnail.jpg"), "title": story("title")},
                 run=story_data),
    BundleStep(name="bundle", target="bundle", doc="the deliverables, and nothing else",
               files={"{n}.jpg": "images/{n}.jpg", "thumbnail.jpg": "thumbnail.jpg",
                      "story-data.json": "story-data.json"}),
]


# ---------------------------------------------------------------- evals: checks and judges
#
# No-call checks run on every build, offline included (evals/checks/...); the paid judges are
# opt-in (config evals.judge.story / evals.judge.pages); evals.json gathers them all. Each check
# depends on exactly what it judges: page 2's narration is read by the key-moment check, not
# by the plan's shape check nor by other pages' prompt checks.

# the lines the assembler writes itself: not the model's words, not judged for lettering
_ASSEMBLER_LINES = ("A comic book page:", "A single full-bleed cover illustration", "No text,")
_PANEL_LINE = re.compile(r"^Panel (\d+) — (.*?): (.*)$")


def panel_counts(pages) -> list[int]:
    """What the plan's shape check reads of ``pages``: the number of panels of each page."""
    return [len(p.get("panels") or []) for p in pages]


def page_texts(pages) -> list[str]:
    """What the key-moment check reads of ``pages``: each page's title, narration, moments and
    visual anchors as one text."""
    return [" ".join([p.get("title", ""), p.get("narration", "")]
                     + [f"{x.get('moment', '')} {x.get('visualAnchor', '')}"
                        for x in p.get("panels") or []]) for p in pages]


def check_plan(inputs, ctx) -> list[dict]:
    """Page count within settings.pageCount, panels per page = settings.panelsPerPage."""
    counts = inputs["panels"] or []
    lo, hi = ctx.config.get("settings.pageCount.min"), ctx.config.get("settings.pageCount.max")
    per = ctx.config.get("settings.panelsPerPage")
    pages = [] if lo <= len(counts) <= hi else [evidence(
        f"{len(counts)} pages; settings.pageCount allows {lo} to {hi}")]
    panels = [evidence(f"{c} panels; settings.panelsPerPage is {per}", page=i, where="panels")
              for i, c in enumerate(counts, 1) if c != per]
    return [verdict("page-count", pages, passed=f"{len(counts)} pages ({lo}-{hi})"),
            verdict("panels-per-page", panels, passed=f"{per} panels on every page")]


def check_key_moments(inputs, ctx) -> list[dict]:
    """Every key moment of the story input is told on some page of the plan, in order."""
    texts = inputs["plan"] or []
    missing, order, last = [], [], 0
    for moment in inputs["moments"]:
        found = [(prose.coverage(moment, t), i) for i, t in enumerate(texts, 1)]
        best, page = max(found, default=(0.0, None))
        if best < 0.6:
            want = set(prose.content_words(moment))
            absent = [w for w in prose.words(moment) if prose.stem(w) in want
                      and prose.stem(w) not in set(prose.content_words(" ".join(texts)))]
            missing.append(evidence(f"key moment {moment!r} is not in the plan"
                                    + (f" (closest: page {page}, {best:.0%} of its words)"
                                       if page else ""), page=page, words=absent))
        elif page < last:
            order.append(evidence(f"key moment {moment!r} is told on page {page}, before the "
                                  f"one before it (page {last})", page=page))
        last = max(last, page or 0)
    return [verdict("key-moments", missing, order,
                    passed=f"all {len(inputs['moments'])} key moments, in order")]


def _prose_of(markdown: str) -> str:
    """A narrative's words: no HTML comments, no ``#`` title line."""
    text = re.sub(r"<!--.*?-->", "", markdown, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def check_narrative(inputs, ctx) -> list[dict]:
    """The narrative's length within 10 % of settings.wordCount; no anachronism."""
    text = inputs["narrative"]
    n, want = len(prose.words(_prose_of(text))), ctx.config.get("settings.wordCount")
    off = [evidence(f"{n} words; settings.wordCount is {want} (±10 %: "
                    f"{round(want * 0.9)}-{round(want * 1.1)})")]
    draft = DRAFT_MARK in text
    if draft:
        off[0]["note"] = f"offline draft: {off[0]['note']}; a model's narrative is held to it"
    ok = abs(n - want) <= 0.1 * want
    return [verdict("narrative-length", [] if ok or draft else off, [] if ok else off,
                    passed=f"{n} words (target {want})"),
            _anachronisms(_prose_of(text), inputs["anachronisms"], None, "narrative")]


def _anachronisms(text: str, lexicon_text: str, page, where: str) -> dict:
    found = prose.find_terms(text, prose.lexicon(lexicon_text))
    return verdict("anachronisms", [evidence(
        f"names {', '.join(found)}: not of the ancient Near East (lexicons/anachronisms.txt)",
        page=page, where=where, words=found)] if found else [])


def _judged_lines(text: str, config) -> list[str]:
    """The prompt's lines the model (or a person) wrote: not the style line, the layout line
    nor the closing negative line the assembler adds."""
    style = _style_line(config)
    return [line for line in text.splitlines()
            if line.strip() and line.strip() != style and not line.startswith(_ASSEMBLER_LINES)]


def _where(line: str) -> str:
    m = _PANEL_LINE.match(line)
    return f"panel {m.group(1)}" if m else line.split(":", 1)[0].lower()[:20]


def _visual_only(lines: list[str], lexicon_text: str, page) -> dict:
    terms = prose.lexicon(lexicon_text)
    bad = []
    for line in lines:
        found = prose.find_terms(line, terms)
        if found:
            bad.append(evidence(f"{', '.join(repr(w) for w in found)} invites lettering in the "
                                "image", page=page, where=_where(line), words=found))
    return verdict("visual-only", bad)


def budgets(knowledge: str) -> dict[str, tuple[int, int, str]]:
    """The knowledge layer's length budgets: ``{block: (min, max, unit)}`` from lines like
    ``**shot** (3 to 8 words)`` or ``**subject** (a noun phrase, up to about 90 words)``, and
    ``"panel line"`` from "Keep each panel line under about 120 words"."""
    out: dict[str, tuple[int, int, str]] = {}
    for name, spec in re.findall(r"\*\*(\w+)\*\* \(([^)]*)\)", knowledge):
        unit = "colours" if "colour" in spec else "words"
        m = re.search(r"(\d+) to (\d+)", spec)
        if m:
            out[name] = (int(m.group(1)), int(m.group(2)), unit)
        elif (m := re.search(r"up to (?:about )?(\d+)", spec)):
            out[name] = (0, round(int(m.group(1)) * (1.1 if "about" in spec else 1)), unit)
    m = re.search(r"panel line under (about )?(\d+) words", knowledge)
    if m:
        out["panel line"] = (0, round(int(m.group(2)) * (1.1 if m.group(1) else 1)), "words")
    return out


def _measure(name: str, value: str, budget, page, where: str, over: list, under: list) -> None:
    lo, hi, unit = budget
    n = (len([x for x in value.split(",") if x.strip()]) if unit == "colours"
         else len(prose.words(value)))
    if n > hi:
        over.append(evidence(f"{name}: {n} {unit}, over the budget of {hi}", page=page,
                             where=where))
    elif n < lo:
        under.append(evidence(f"{name}: {n} {unit}, under the budget of {lo}", page=page,
                              where=where))


def _prompt_budgets(lines: list[str], knowledge: str, page) -> dict:
    """Each block within its budget (knowledge/prompting.md): over is a failure, under a
    warning. The assembled panel line is split back into its blocks: ``Panel k — shot:
    subject action. environment. lighting.``"""
    b = budgets(knowledge)
    over: list = []
    under: list = []
    for line in lines:
        m = _PANEL_LINE.match(line)
        if m:
            where = f"panel {m.group(1)}"
            if "panel line" in b:
                _measure("panel line", line, b["panel line"], page, where, over, under)
            if "shot" in b:
                _measure("shot", m.group(2), b["shot"], page, where, over, under)
            parts = m.group(3).rstrip(".").rsplit(". ", 2)
            if len(parts) == 3:
                if "subject" in b and "action" in b:
                    sa = (b["subject"][0] + b["action"][0], b["subject"][1] + b["action"][1],
                          "words")
                    _measure("subject and action", parts[0], sa, page, where, over, under)
                for name, value in (("environment", parts[1]), ("lighting", parts[2])):
                    if name in b:
                        _measure(name, value, b[name], page, where, over, under)
            continue
        head, _, value = line.partition(": ")
        name = head.strip().lower()
        if name in b and value:
            _measure(name, value.rstrip("."), b[name], page, name, over, under)
    return verdict("prompt-length", over, under)


def _characters_carried(lines: list[str], characters, page) -> dict:
    """Every character a panel names carries the appearance the plan lists, word for word."""
    chars = [c for c in characters or [] if c.get("name") and c.get("appearance")
             and c.get("kind") not in THINGS]  # a place's look is carried by the setting
    norm = [(c["name"], " ".join(_clean(c["appearance"]).lower().split())) for c in chars]
    bad = []
    for line in lines:
        m = _PANEL_LINE.match(line)
        if not m:
            continue
        text = " ".join(line.lower().split())
        rest = text
        for _name, look in norm:
            rest = rest.replace(look, " ")  # a name inside another's appearance does not count
        for name, look in norm:
            if re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", rest) \
                    and look not in text:
                bad.append(evidence(f"{name} is drawn without the appearance the plan lists",
                                    page=page, where=f"panel {m.group(1)}", words=[name]))
    return verdict("characters-carried", bad)


def check_page_prompt_text(inputs, ctx) -> list[dict]:
    """A page prompt: visual-only, every character with its appearance, blocks within the
    knowledge layer's budgets, no anachronism."""
    lines = _judged_lines(inputs["prompt"], ctx.config)
    n = ctx.n
    return [_visual_only(lines, inputs["lettering"], n),
            _characters_carried(lines, inputs["characters"], n),
            _prompt_budgets(lines, inputs["knowledge"], n),
            _anachronisms("\n".join(lines), inputs["anachronisms"], n, "prompt"),
            *_rule_verdicts(inputs.get("rules"), "visual", [(n, "prompt", "\n".join(lines))])]


def check_cover_prompt(inputs, ctx) -> list[dict]:
    """The cover prompt: visual-only, no anachronism."""
    lines = _judged_lines(inputs["prompt"], ctx.config)
    return [_visual_only(lines, inputs["lettering"], None),
            _anachronisms("\n".join(lines), inputs["anachronisms"], None, "cover prompt"),
            *_rule_verdicts(inputs.get("rules"), "visual",
                            [(None, "cover prompt", "\n".join(lines))])]


def judge_story_user(inputs, ctx) -> str:
    s = inputs["story"]
    lines = ["Story input:", f"Title: {s['title']}"]
    if s.get("reference"):
        lines.append(f"Scripture: {s['reference']}")
    lines += [f"Summary: {s['summary']}", "Key moments:", *[f"- {m}" for m in s["keyMoments"]],
              "", "Narrative:", _prose_of(inputs["narrative"]).strip(), "", "Pages:"]
    for i, p in enumerate(inputs["pages"].get("pages", []), 1):
        lines.append(f"Page {i}: {p.get('title', '')}")
        lines.append(f"  Narration: {p.get('narration', '')}")
        for x in p.get("panels", []):
            lines.append(f"  Panel {x.get('panel')}: {x.get('moment', '')} "
                         f"(visual anchor: {x.get('visualAnchor', '')})")
    return "\n".join(lines + _rule_questions(inputs.get("rules")))


def drawn_page(page) -> dict:
    """What the vision judge reads of a page's entry: its title and panels (the narration is
    read aloud, never drawn)."""
    return {"title": page.get("title", ""), "panels": page.get("panels") or []}


def judge_page_user(inputs, ctx) -> str:
    page = inputs["page"]
    lines = [_characters_block(inputs["characters"]), "", f"Page {ctx.n}: {page['title']}",
             "Panels (top to bottom):"]
    for i, p in enumerate(page["panels"], 1):
        lines.append(f"{i}. {p['moment']} — visual anchor: {p['visualAnchor']}")
    return "\n".join(lines + _rule_questions(inputs.get("rules")))


def forbidding(rules) -> list[dict]:
    """What the rule check reads of rules.json's ``rules``: the rules with ``forbid``, each as
    ``{id, scope, forbid}`` (a rule's text edited does not re-run it)."""
    return [{"id": r["id"], "scope": r["scope"], "forbid": r["forbid"]}
            for r in rules or [] if r.get("forbid")]


def narration_texts(pages) -> list[str]:
    """What the rule check reads of the plan: each page's narration."""
    return [p.get("narration", "") for p in pages]


def _rule_verdicts(rules, scope: str, texts) -> list[dict]:
    """One verdict per rule of ``scope`` (``text`` or ``visual``; ``both`` counts as each) with
    ``forbid``, named ``rule <id>``: none of its words or patterns in ``texts``
    (``[(page or None, where, text)]``). Evidence names the page, where, and the words found."""
    out = []
    for rule in rules or []:
        if rule["scope"] not in (scope, "both"):
            continue
        bad = []
        for page, where, text in texts:
            found = rulebook.forbidden(text, rule["forbid"])
            if found:
                at = f"page {page} {where}" if page else f"the {where}"
                bad.append(evidence(f"{at} has {', '.join(repr(w) for w in found)}, which rule "
                                    f"{rule['id']!r} forbids (rules.json)", page=page,
                                    where=where, words=found))
        out.append(verdict(f"rule {rule['id']}", bad,
                           passed=f"none of {len(rule['forbid'])} forbidden words or patterns"))
    return out


def check_rules(inputs, ctx) -> list[dict]:
    """The text rules with ``forbid``: none of their words in the narrative or in any page's
    narration (the visual rules are checked with each prompt: ``check-prompt``,
    ``check-cover``)."""
    texts = [(None, "narrative", _prose_of(inputs["narrative"] or ""))]
    texts += [(i, "narration", t) for i, t in enumerate(inputs["narration"] or [], 1)]
    return _rule_verdicts(inputs["rules"], "text", texts)


def text_rule_questions(rules) -> list[dict]:
    """What the story judge reads of rules.json's ``rules``: ``{id, text}`` of each text rule."""
    return [{"id": r["id"], "text": r["text"]} for r in rules or []
            if r.get("scope") in ("text", "both")]


def visual_rule_questions(rules) -> list[dict]:
    """What the page judge reads of rules.json's ``rules``: ``{id, text}`` of each visual rule."""
    return [{"id": r["id"], "text": r["text"]} for r in rules or []
            if r.get("scope") in ("visual", "both")]


def _rule_questions(rules) -> list[str]:
    if not rules:
        return ["", "Rules: none (answer with an empty `rules` list)."]
    return ["", "Rules (answer each in `rules`, by id: obeyed or not, and why):",
            *[f"- {r['id']}: {r['text']}" for r in rules]]


_PROMPT_FILES = {"lettering": "lexicons/lettering.txt",
                 "anachronisms": "lexicons/anachronisms.txt"}

EVAL_STEPS = [
    CheckStep(name="check-plan", target="evals/checks/plan.json", subject="pages.json",
              doc="check: page count and panels per page within config",
              inputs={"panels": part("pages.json", "pages", select=panel_counts)},
              uses=("settings.pageCount", "settings.panelsPerPage"), run=check_plan),
    CheckStep(name="check-moments", target="evals/checks/key-moments.json", subject="pages.json",
              doc="check: every key moment of the story input is in the plan",
              inputs={"moments": story("keyMoments"),
                      "plan": part("pages.json", "pages", select=page_texts)},
              run=check_key_moments),
    CheckStep(name="check-narrative", target="evals/checks/narrative.json",
              subject="narrative.md", doc="check: narrative length and anachronisms",
              inputs={"narrative": file("narrative.md")}, uses=("settings.wordCount",),
              files={"anachronisms": "lexicons/anachronisms.txt"}, run=check_narrative),
    CheckStep(name="check-prompt", target="evals/checks/prompts/{n}.json", foreach=PAGES,
              subject="prompts/{n}.txt",
              doc="check: a page prompt is visual-only, carries appearances, fits the budgets",
              inputs={"prompt": file("prompts/{n}.txt"), "page": item(select=panel_casts),
                      "characters": view("cast.json", page_cast),
                      "rules": part("rules.json", "rules", select=forbidding)},
              uses=("style.artStyle", "style.inkStyle", "style.colorTreatment"),
              files={**_PROMPT_FILES, "knowledge": "knowledge/prompting.md"},
              run=check_page_prompt_text),
    CheckStep(name="check-cover", target="evals/checks/cover.json",
              subject="thumbnail-prompt.txt", doc="check: the cover prompt is visual-only",
              inputs={"prompt": file("thumbnail-prompt.txt"),
                      "rules": part("rules.json", "rules", select=forbidding)},
              uses=("style.artStyle", "style.inkStyle", "style.colorTreatment"),
              files=_PROMPT_FILES, run=check_cover_prompt),
    CheckStep(name="check-rules", target="evals/checks/rules.json", subject="rules.json",
              doc="check: no text rule's forbidden words in the narrative or narration",
              inputs={"rules": part("rules.json", "rules", select=forbidding),
                      "narrative": file("narrative.md"),
                      "narration": part("pages.json", "pages", select=narration_texts)},
              run=check_rules),
    JudgeStep(name="judge-story", target="evals/judge/story.json", enabled="evals.judge.story",
              doc="judge (opt-in, paid): faithfulness, family safety, narration quality",
              system_prompt="judge-story.md", schema="judge-story.json",
              inputs={"story": story(select=told), "narrative": file("narrative.md"),
                      "pages": file("pages.json"),
                      "rules": part("rules.json", "rules", select=text_rule_questions)},
              user=judge_story_user),
    JudgeStep(name="judge-page", target="evals/judge/pages/{n}.json", foreach=PAGES,
              enabled="evals.judge.pages",
              doc="vision judge (opt-in, paid): character consistency, stray text in the image",
              system_prompt="judge-page.md", schema="judge-page.json",
              inputs={"page": item(select=drawn_page),
                      "characters": view("cast.json", page_cast),
                      "sheets": view("cast.json", page_sheets),
                      "image": file("images/{n}.jpg"),
                      "rules": part("rules.json", "rules", select=visual_rule_questions)},
              images=("image",), references=("sheets",), reference_patterns=("cast/{id}.jpg",),
              user=judge_page_user),
]
EVAL_STEPS.append(EvalsStep.over(EVAL_STEPS))


# ---------------------------------------------------------------- ad components (ads.enabled)
#
# Hook lines, CTA lines and tags (LLM), one hook clip per line, one CTA end card per CTA, a body
# clip and the manifest AdLoops reads (README "Ad components"). Each depends on what it uses: a
# hook clip on its own line and the picture it opens on; a CTA card on its line, the cover and
# the title; the body on the page images and the narration; nothing here reads the narration
# but the body, so a narration edit re-renders the body alone.

HOOKS = ForEach("ads/hooks.json", "hooks", by="id", name="k")
CTAS = ForEach("ads/ctas.json", "ctas", by="id", name="c")
HOOK_MAX_WORDS = 8
CTA_MAX_CHARS = 24
# The platform CTA buttons a line may go with: Meta Marketing API call_to_action_types (the
# names Google's VideoResponsiveAdInfo.call_to_actions maps onto); BRIEF.md "CTAs".
CTA_TYPES = ("LEARN_MORE", "WATCH_MORE", "LISTEN_NOW", "DOWNLOAD", "INSTALL_MOBILE_APP",
             "USE_APP", "SIGN_UP")
CTA_DRAFT_MARK = "[draft]"
_DANGLING = {"a", "an", "the", "and", "or", "with", "to", "of", "in", "on", "at", "for", "from",
             "by", "his", "her", "their", "its", "into"}
_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def panel_moments(pages) -> list[dict]:
    """What the hook lines read of the plan: each page's title and its panels' moments and
    visual anchors (not the narration: editing it writes no new hooks)."""
    return [{"title": p.get("title", ""),
             "panels": [{"moment": x.get("moment", ""), "visualAnchor": x.get("visualAnchor", "")}
                        for x in p.get("panels") or []]} for p in pages]


def page_narrations(pages) -> list[str]:
    """What the body clip reads of the plan without a voice track: each page's narration."""
    return [p.get("narration", "") for p in pages]


def hooks_user(inputs, ctx) -> str:
    lines = [f"Title: {inputs['title']}", "", "Narrative:", _prose_of(inputs["narrative"]).strip(),
             "", "Pages:", "Page 0 (the cover): the story's title picture"]
    for i, page in enumerate(inputs["plan"] or [], 1):
        lines.append(f"Page {i}: {page['title']}")
        lines += [f"  Panel {k}: {x['moment']} (visual anchor: {x['visualAnchor']})"
                  for k, x in enumerate(page["panels"], 1)]
    return "\n".join(lines)


def hook_words(line: str) -> int:
    """The words of a hook line (the offline draft's mark left out)."""
    return len(_WORD.findall(line.replace(DRAFT_MARK, "")))


def check_hooks(data, inputs, ctx) -> list[str]:
    """``ads.hooks`` lines of at most 8 words, each opening on a panel the plan has."""
    want = ctx.config.get("ads.hooks")
    plan = inputs["plan"] or []
    errors = [] if len(data["hooks"]) == want else [
        f"hooks: {len(data['hooks'])} lines; write exactly {want}"]
    for i, h in enumerate(data["hooks"]):
        words = hook_words(h["line"])
        if not 1 <= words <= HOOK_MAX_WORDS:
            errors.append(f"hooks/{i}/line: {words} words; write 1 to {HOOK_MAX_WORDS}")
        if h["page"] == 0:
            continue
        if not 1 <= h["page"] <= len(plan):
            errors.append(f"hooks/{i}/page: {h['page']}; use a page from 1 to {len(plan)}, "
                          "or 0 for the cover")
        elif not 1 <= h["panel"] <= len(plan[h["page"] - 1]["panels"]):
            errors.append(f"hooks/{i}/panel: page {h['page']} has "
                          f"{len(plan[h['page'] - 1]['panels'])} panels; use one of them")
    return errors


def number_hooks(data, inputs, ctx) -> dict:
    """ads/hooks.json: the lines with ids 1, 2, ... (``ads/hook-<id>.mp4`` is each one's clip)."""
    return {"hooks": [{"id": str(i), **h} for i, h in enumerate(data["hooks"], 1)]}


def draft_hooks(inputs, ctx) -> dict:
    """Hook lines made from the panels' moments (no model), spread over the story."""
    panels = [(p, k, x["moment"]) for p, page in enumerate(inputs["plan"] or [], 1)
              for k, x in enumerate(page["panels"], 1)]
    want = ctx.config.get("ads.hooks")
    hooks = []
    for i in range(want):
        if not panels:
            hooks.append({"line": f"{DRAFT_MARK} What happens next?", "angle": "question",
                          "page": 0, "panel": 0})
            continue
        page, panel, moment = panels[i * len(panels) // want]
        words = _WORD.findall(moment)[:5]
        while len(words) > 1 and words[-1].lower() in _DANGLING:
            words.pop()
        hooks.append({"line": f"{DRAFT_MARK} {' '.join(words)}: what next?", "angle": "question",
                      "page": page, "panel": panel})
    return {"hooks": hooks}


def ctas_user(inputs, ctx) -> str:
    return (f"Title: {inputs['title']}\n\nNarrative:\n"
            f"{_prose_of(inputs['narrative']).strip()}")


def check_ctas(data, inputs, ctx) -> list[str]:
    """``ads.ctas`` lines of at most 24 characters, each with a CTA type of the list, no two
    alike."""
    want = ctx.config.get("ads.ctas")
    ctas = data["ctas"]
    errors = [] if len(ctas) == want else [f"ctas: {len(ctas)} lines; write exactly {want}"]
    seen = set()
    for i, c in enumerate(ctas):
        line = c["line"].strip()
        if not 1 <= len(line) <= CTA_MAX_CHARS:
            errors.append(f"ctas/{i}/line: {len(line)} characters; write 1 to {CTA_MAX_CHARS}")
        if c["type"] not in CTA_TYPES:
            errors.append(f"ctas/{i}/type: {c['type']!r}; use one of {', '.join(CTA_TYPES)}")
        if line.lower() in seen:
            errors.append(f"ctas/{i}/line: the same as another line; write a different one")
        seen.add(line.lower())
    return errors


def number_ctas(data, inputs, ctx) -> dict:
    """ads/ctas.json: the lines with ids 1, 2, ... (``ads/cta-<id>.mp4`` is each one's card)."""
    return {"ctas": [{"id": str(i), "line": c["line"].strip(), "type": c["type"]}
                     for i, c in enumerate(data["ctas"], 1)]}


_DRAFT_CTAS = [("Read the story", "LEARN_MORE"), ("Get the app", "INSTALL_MOBILE_APP"),
               ("Listen now", "LISTEN_NOW"), ("Watch more stories", "WATCH_MORE"),
               ("Open the app", "USE_APP"), ("Sign up", "SIGN_UP")]


def draft_ctas(inputs, ctx) -> dict:
    """CTA lines from a fixed list (no model), marked ``[draft]`` (at most 24 characters)."""
    want = ctx.config.get("ads.ctas")
    return {"ctas": [{"line": f"{CTA_DRAFT_MARK} {line}", "type": kind}
                     for line, kind in _DRAFT_CTAS[:want]]}


def spoken_line(inputs, ctx) -> list[str]:
    """What the voice says of a hook or CTA line: the line without a draft's mark."""
    line = str((inputs.get("line") or {}).get("line", ""))
    for mark in (DRAFT_MARK, CTA_DRAFT_MARK):
        line = line.replace(mark, "")
    return [" ".join(line.split())]


def tags_user(inputs, ctx) -> str:
    cast = "\n".join(f"- {c['id']}: {c['name']}" for c in inputs["cast"] or [])
    return (f"Title: {inputs['title']}\n\nCast:\n{cast or '- (none)'}\n\n"
            f"Narrative:\n{_prose_of(inputs['narrative']).strip()}")


def check_tags(data, inputs, ctx) -> list[str]:
    """Every tagged character is a cast member."""
    cast = {c["id"] for c in inputs["cast"] or []}
    return [f"characters/{i}/id: {c['id']!r} is not in the Cast; use only {sorted(cast)}"
            for i, c in enumerate(data["characters"]) if c["id"] not in cast]


def cast_named_tags(data, inputs, ctx) -> dict:
    """ads/tags.json: each character named as the cast names it (the cast is the authority)."""
    names = {c["id"]: c["name"] for c in inputs["cast"] or []}
    return {**data, "characters": [{"id": c["id"], "name": names.get(c["id"], c["name"])}
                                   for c in data["characters"]]}


def draft_tags(inputs, ctx) -> dict:
    """Tags from the cast (no model): its first characters, and themes marked as a draft."""
    return {"characters": [{"id": c["id"], "name": c["name"]} for c in (inputs["cast"] or [])[:6]],
            "themes": [DRAFT_MARK, "bible story"], "mood": f"{DRAFT_MARK} hopeful",
            "audience": "family"}


AD_STEPS = [
    AdCopyStep(name="ad-hooks", target="ads/hooks.json",
               doc="ads: the hook lines, each with the panel it opens on",
               system_prompt="ad-hooks.md", schema="ad-hooks.json",
               inputs={"title": story("title"), "narrative": file("narrative.md"),
                       "plan": part("pages.json", "pages", select=panel_moments)},
               user=hooks_user, draft=draft_hooks, validate=check_hooks, write=number_hooks,
               shape=shape_hooks),
    AdCopyStep(name="ad-tags", target="ads/tags.json",
               doc="ads: characters, themes, mood, audience",
               system_prompt="ad-tags.md", schema="ad-tags.json",
               inputs={"title": story("title"), "narrative": file("narrative.md"),
                       "cast": view("cast.json", roster)},
               user=tags_user, draft=draft_tags, validate=check_tags, write=cast_named_tags),
    AdCopyStep(name="ad-ctas", target="ads/ctas.json",
               doc="ads: the calls to action of the end cards, each with its platform CTA type",
               system_prompt="ad-ctas.md", schema="ad-ctas.json",
               inputs={"title": story("title"), "narrative": file("narrative.md")},
               user=ctas_user, draft=draft_ctas, validate=check_ctas, write=number_ctas,
               shape=shape_ctas),
    HookClipStep(name="hook-clip", target="ads/hook-{k}.mp4", foreach=HOOKS,
                 doc="ads: a hook clip, one line over the panel it opens on",
                 inputs={"hook": item(select=hook_shot)}),
    CtaClipStep(name="cta-clip", target="ads/cta-{c}.mp4", foreach=CTAS,
                doc="ads: a CTA end card, the cover with the title and the call to action",
                inputs={"cta": item(select=cta_card), "cover": file("thumbnail.jpg"),
                        "title": story("title")}),
    BodyClipStep(name="body-clip", target="ads/body.mp4",
                 doc="ads: the body clip, the pages panel by panel with the narration",
                 inputs={"images": each("images/{n}.jpg"),
                         "panels": part("pages.json", "pages", select=panel_counts),
                         "narration": part("pages.json", "pages", select=page_narrations)},
                 counts="panels"),
    AdManifestStep(name="ad-manifest", target="ads/manifest.json",
                   doc="ads: the manifest of the components, for AdLoops",
                   inputs={"hooks": file("ads/hooks.json"), "tags": file("ads/tags.json"),
                           "clips": each("ads/hook-{k}.mp4"), "body": file("ads/body.mp4"),
                           "ctas": file("ads/ctas.json"), "ctaClips": each("ads/cta-{c}.mp4"),
                           "title": story("title")},
                   ctas="ctas", cta_clips="ctaClips"),
]

STEPS = derive(STEPS, add=EVAL_STEPS + AD_STEPS)
