"""comic-books-standard: a story becomes a narrative, a page plan, one image per page and a cover.

Steps (per story, under ``build/comic-books-standard/<id>/``):

1. ``narrative``        narrative.md          LLM, text            story input
2. ``pages``            pages.json            LLM, planning.json   narrative.md
3. ``prompt``  (each)   prompts/<n>.txt       LLM, page-prompt     page n of pages.json + characters
4. ``image``   (each)   images/<n>.jpg        image model          prompts/<n>.txt
5. ``thumbnail-prompt`` thumbnail-prompt.txt  LLM, thumbnail.json  narrative.md, title, characters
6. ``thumbnail``        thumbnail.jpg         image model          thumbnail-prompt.txt
7. ``story-data``       story-data.json       assembled            pages.json, images
8. ``bundle``           bundle/               copied               the deliverables

Step 3 and 5 return blocks (schemas/*.json); :func:`assemble_page_prompt` joins them into the
prompt text by the knowledge layer's assembly rules, so the prompt file is readable and
hand-editable. Offline drafts are built from the story input by the ``draft_*`` functions.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloops.steps import (AssembleStep, BundleStep, ForEach, ImageStep, LLMStep, each, file,
                          item, part, story)

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
    artStyle: str = Field(min_length=1)
    inkStyle: str = Field(min_length=1)
    colorTreatment: str = Field(min_length=1)


class Thumbnail(_Strict):
    params: dict = Field(default_factory=dict)


class ComicConfig(_Strict):
    """The template-owned sections of config.json."""

    settings: Settings
    style: Style
    thumbnail: Thumbnail = Field(default_factory=Thumbnail)


CONFIG_MODEL = ComicConfig


# ---------------------------------------------------------------- user messages

def narrative_user(inputs, ctx) -> str:
    s = inputs["story"]
    lines = [f"Title: {s['title']}"]
    if s.get("reference"):
        lines.append(f"Scripture: {s['reference']}")
    lines.append(f"Summary: {s['summary']}")
    lines.append("Key moments:")
    lines += [f"- {m}" for m in s["keyMoments"]]
    return "\n".join(lines)


def pages_user(inputs, ctx) -> str:
    return f"Title: {inputs['title']}\n\nNarrative:\n{inputs['narrative'].strip()}"


def _characters_block(characters) -> str:
    chars = characters or []
    lines = ["Characters (fixed appearance — copy exactly):"]
    lines += [f"- {c['name']}: {c['appearance']}" for c in chars] or ["- (none listed)"]
    return "\n".join(lines)


def page_prompt_user(inputs, ctx) -> str:
    page = inputs["page"]
    lines = [_characters_block(inputs["characters"]), "",
             f"Page {ctx.n}: {page['title']}", f"Narration: {page['narration']}", "Panels:"]
    for i, p in enumerate(page["panels"], 1):
        lines.append(f"{i}. {p['moment']} — visual anchor: {p['visualAnchor']}")
    return "\n".join(lines)


def thumbnail_user(inputs, ctx) -> str:
    return (f"{_characters_block(inputs['characters'])}\n\nTitle: {inputs['title']}\n\n"
            f"Narrative:\n{inputs['narrative'].strip()}")


# ---------------------------------------------------------------- checks and assembly

def check_pages(data, inputs, ctx) -> list[str]:
    """The plan must respect settings.pageCount and settings.panelsPerPage."""
    lo = ctx.config.get("settings.pageCount.min")
    hi = ctx.config.get("settings.pageCount.max")
    per = ctx.config.get("settings.panelsPerPage")
    pages = data["pages"]
    errors = []
    if not lo <= len(pages) <= hi:
        errors.append(f"pages: {len(pages)} pages; write between {lo} and {hi}")
    for i, p in enumerate(pages, 1):
        if p["pageNumber"] != i:
            errors.append(f"pages/{i - 1}/pageNumber: is {p['pageNumber']}; number pages from 1 in order")
        if len(p["panels"]) != per:
            errors.append(f"pages/{i - 1}/panels: {len(p['panels'])} panels; write exactly {per}")
    return errors


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


def assemble_page_prompt(data, inputs, ctx) -> str:
    """Join step 3's blocks into the image prompt (knowledge/prompting.md, assembly rules)."""
    panels = data["panels"]
    lines = [_style_line(ctx.config),
             f"A comic book page: {len(panels)} panels stacked vertically, separated by thin "
             "white gutters."]
    for p in panels:
        lines.append(f"Panel {p['panel']} — {_clean(p['shot'])}: {_clean(p['subject'])} "
                     f"{_clean(p['action'])}. {_clean(p['environment'])}. {_clean(p['lighting'])}.")
    lines += [f"Setting: {_clean(data['setting'])}.", f"Palette: {_clean(data['palette'])}.",
              f"Mood: {_clean(data['mood'])}.", "No text, no letters, no speech bubbles."]
    return "\n".join(lines) + "\n"


def assemble_thumbnail_prompt(data, inputs, ctx) -> str:
    """Join step 4's blocks into the cover prompt."""
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
        "No text, no letters, no title lettering.",
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

_SHOTS = ["wide establishing shot", "medium shot at eye level", "close-up", "low-angle shot",
          "over-the-shoulder shot", "high-angle shot"]
_NOT_NAMES = {"God", "The", "A", "An", "In", "On", "After", "When", "His", "Her", "Their"}


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


def _names(summary: str) -> list[str]:
    words = re.findall(r"\b[A-Z][a-z]+\b", summary)
    out: list[str] = []
    for w in words:
        if w not in _NOT_NAMES and w not in out:
            out.append(w)
    return out[:4]


def draft_pages(inputs, ctx) -> dict:
    """A page plan spreading the key moments over pages within settings.pageCount."""
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
                           "visualAnchor": anchors[(p * per + k) % len(anchors)]})
        page_moments = list(dict.fromkeys(pl["moment"] for pl in panels))
        pages.append({"pageNumber": p + 1, "title": _sentence(page_moments[0]).rstrip("."),
                      "narration": " ".join(_sentence(m) for m in page_moments),
                      "panels": panels})
    names = _names(s["summary"]) or ["The people of the story"]
    characters = [{"name": n, "appearance": f"{DRAFT_MARK} figure in a plain ancient robe; "
                                            "a real plan describes age, hair and clothing"}
                  for n in names]
    return {"title": s["title"], "characters": characters, "pages": pages}


def draft_page_prompt(inputs, ctx) -> dict:
    page = inputs["page"]
    chars = ", ".join(c["name"] for c in inputs["characters"] or []) or "the figures of the story"
    return {
        "setting": f"{DRAFT_MARK} {page['title']}",
        "panels": [{"panel": p["panel"], "shot": _SHOTS[i % len(_SHOTS)], "subject": chars,
                    "action": f"shown in the moment: {p['moment']}",
                    "environment": f"focus on {p['visualAnchor']}",
                    "lighting": "soft even daylight"} for i, p in enumerate(page["panels"])],
        "palette": "warm earth tones, sky blue, olive green",
        "mood": "calm and clear",
    }


def draft_thumbnail(inputs, ctx) -> dict:
    chars = ", ".join(c["name"] for c in inputs["characters"] or []) or "the figures of the story"
    return {"subject": f"{DRAFT_MARK} {chars}", "action": f"at the heart of {inputs['title']}",
            "composition": "centered figure, wide margins, empty sky at the top",
            "environment": "the story's landscape", "lighting": "golden hour light",
            "palette": "warm earth tones", "mood": "inviting"}


# ---------------------------------------------------------------- the steps

PAGES = ForEach("pages.json", "pages")

STEPS = [
    LLMStep(name="narrative", target="narrative.md", doc="step 1: the story as prose",
            system_prompt="step1-narrative.md", inputs={"story": story()},
            user=narrative_user, draft=draft_narrative),
    LLMStep(name="pages", target="pages.json", doc="step 2: the page plan",
            system_prompt="step2-planning.md", schema="planning.json",
            inputs={"narrative": file("narrative.md"), "title": story("title")},
            uses=("settings.pageCount", "settings.panelsPerPage"),
            user=pages_user, draft=draft_pages, validate=check_pages),
    LLMStep(name="prompt", target="prompts/{n}.txt", foreach=PAGES,
            doc="step 3: the image prompt of one page",
            system_prompt="step3-prompts.md", knowledge=("prompting.md",),
            schema="page-prompt.json",
            inputs={"page": item(), "characters": part("pages.json", "characters")},
            uses=("style.artStyle", "style.inkStyle", "style.colorTreatment"),
            user=page_prompt_user, draft=draft_page_prompt, validate=check_page_prompt,
            write=assemble_page_prompt),
    ImageStep(name="image", target="images/{n}.jpg", foreach=PAGES, doc="the page image",
              inputs={"prompt": file("prompts/{n}.txt"), "page": item()},
              annotate=storyboard_page),
    LLMStep(name="thumbnail-prompt", target="thumbnail-prompt.txt",
            doc="step 4: the cover prompt", system_prompt="step4-thumbnail.md",
            schema="thumbnail.json",
            inputs={"narrative": file("narrative.md"), "title": story("title"),
                    "characters": part("pages.json", "characters")},
            uses=("style.artStyle", "style.inkStyle", "style.colorTreatment"),
            user=thumbnail_user, draft=draft_thumbnail, write=assemble_thumbnail_prompt),
    ImageStep(name="thumbnail", target="thumbnail.jpg", doc="the cover image",
              inputs={"prompt": file("thumbnail-prompt.txt"), "title": story("title")},
              params_override="thumbnail.params", annotate=storyboard_cover),
    AssembleStep(name="story-data", target="story-data.json", doc="story-data.json for the app",
                 inputs={"pages": file("pages.json"), "images": each("images/{n}.jpg"),
                         "thumbnail": file("thumbnail.jpg"), "title": story("title")},
                 run=story_data),
    BundleStep(name="bundle", target="bundle", doc="the deliverables, and nothing else",
               files={"{n}.jpg": "images/{n}.jpg", "thumbnail.jpg": "thumbnail.jpg",
                      "story-data.json": "story-data.json"}),
]
