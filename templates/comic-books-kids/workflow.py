"""comic-books-kids: the standard comic book with a narrated voice track.

Extends ``comic-books-standard`` (config, prompts and steps come from there unless replaced
here): a kids' art style and reading level in ``config.json``, its own step-1/step-2 prompts,
and three changes to the steps:

- ``script``      narration-script.md   assembled from the pages' narration; hand-editable
- ``voice``       voice.mp3, voice.json the script spoken (ElevenLabs, or piper offline) with
                                        each page's start/end seconds
- ``story-data``  adds ``audioFile`` and per-page ``audioStartS``/``audioEndS``
- ``bundle``      adds ``voice.mp3``
- ``body-clip``   the ad body follows the voice track (``voice.json`` times, the words spoken
                  as captions, ``voice.mp3`` mixed in) and writes the voice alone
                  (``ads/voice.m4a``) and the body's word timings; ``ad-manifest`` adds the
                  voice component (ads are on here: ``ads.enabled`` in ``config.json``)
- ``hook-voice``, ``cta-voice`` (each line) every hook and CTA line spoken
                  (``ads/voice/hook-<k>.mp3``, ``ads/voice/cta-<c>.mp3`` with their timings),
                  which ``hook-clip`` and ``cta-clip`` carry as their sound
- ``check-narration`` (each page), ``check-reading``: each sentence of the narration within
                  ``settings.maxSentenceWords``; the reading level of the whole narration
                  (Flesch-Kincaid grade, textstat) within ``evals.maxReadingGrade``

``BASE`` (the base workflow module) and ``BASE_STEPS`` are provided by the template loader.
"""

from __future__ import annotations

import dataclasses
import re

from pydantic import Field

from cloops.steps import (AdVoiceStep, AssembleStep, CheckStep, EvalsStep, VoiceStep, derive,
                          each, evidence, file, item, part, prose, verdict)

BASE = globals()["BASE"]
BASE_STEPS = globals()["BASE_STEPS"]


class KidsSettings(BASE.Settings):
    readingLevel: str = Field(min_length=1)
    maxSentenceWords: int = Field(ge=4, le=30)


class KidsEvals(BASE.Evals):
    maxReadingGrade: float = Field(ge=0, le=18)


class KidsConfig(BASE.ComicConfig):
    settings: KidsSettings
    evals: KidsEvals


CONFIG_MODEL = KidsConfig

_PAGE_HEADING = re.compile(r"^##\s*Page\s+(\d+)\s*$", re.MULTILINE)


def narration_script(inputs, ctx) -> str:
    """The text the narrator speaks: one section per page (``## Page n``), editable by hand."""
    plan = inputs["pages"]
    parts = [f"# {plan.get('title') or ctx.story['title']}", "",
             "<!-- One section per page; the voice reads each section in order. Edit freely. -->",
             ""]
    for i, page in enumerate(plan["pages"], 1):
        parts += [f"## Page {i}", "", page["narration"].strip(), ""]
    return "\n".join(parts)


def script_segments(inputs, ctx) -> list[str]:
    """The script's page sections, in order (HTML comments and the title left out)."""
    text = re.sub(r"<!--.*?-->", "", inputs["script"], flags=re.S)
    matches = list(_PAGE_HEADING.finditer(text))
    segments = []
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        segments.append(" ".join(text[m.end():end].split()))
    return segments


def voiced_story_data(inputs, ctx) -> dict:
    """story-data.json with the voice track: ``audioFile`` and each page's start/end seconds."""
    data = BASE.story_data(inputs, ctx)
    timings = inputs["timings"]["segments"]
    data["audioFile"] = "voice.mp3"
    for page, t in zip(data["pages"], timings):
        page["audioStartS"] = t["startS"]
        page["audioEndS"] = t["endS"]
    return data


def narration_of(page) -> str:
    """What a page's narration check reads of its entry: the narration alone."""
    return page.get("narration", "")


def narrations(pages) -> list[str]:
    """What the reading-level check reads of ``pages``: every page's narration."""
    return [p.get("narration", "") for p in pages]


def spoken_text(entry) -> dict:
    """What a line's spoken take reads of its entry (a hook's or a CTA's): the line alone -
    editing a hook's angle or page, or a CTA's type, says nothing new."""
    return {"line": entry.get("line", "")}


def _draft(inputs) -> bool:
    return "pages.json" in inputs["drafts"]


def check_narration(inputs, ctx) -> list[dict]:
    """Every sentence of page n's narration within settings.maxSentenceWords."""
    most = ctx.config.get("settings.maxSentenceWords")
    long = [evidence(f"sentence {i} has {len(prose.words(s))} words; settings.maxSentenceWords "
                     f"is {most}", page=ctx.n, where=f"sentence {i}", words=[s])
            for i, s in enumerate(prose.sentences(inputs["narration"]), 1)
            if len(prose.words(s)) > most]
    if _draft(inputs):  # the plan's drafts quote the key moments: a model's words are judged
        return [verdict("sentence-length", [], long, passed=f"offline draft; ≤ {most} words")]
    return [verdict("sentence-length", long, passed=f"every sentence ≤ {most} words")]


def check_reading(inputs, ctx) -> list[dict]:
    """The reading level of the whole narration (Flesch-Kincaid grade) within
    evals.maxReadingGrade."""
    most = ctx.config.get("evals.maxReadingGrade")
    if _draft(inputs):  # quotes of the key moments: not measured (nor textstat loaded, ~1 s)
        return [verdict("reading-level", [], [evidence(
            f"offline draft: not measured; a model's narration is held to grade {most:g}",
            where="narration")])]
    text = " ".join(t.strip() for t in inputs["narration"] or [] if t.strip())
    grade = prose.reading_grade(text) if text else 0.0
    note = f"Flesch-Kincaid grade {grade:g}; evals.maxReadingGrade is {most:g}"
    over = [evidence(note, where="narration")] if grade > most else []
    return [verdict("reading-level", over, passed=note)]


_base = {s.name: s for s in BASE_STEPS}

NARRATION_CHECKS = [
    CheckStep(name="check-narration", target="evals/checks/narration/{n}.json",
              foreach=BASE.PAGES, subject="pages.json",
              doc="check: page n's narration sentences within settings.maxSentenceWords",
              inputs={"narration": item(select=narration_of)},
              uses=("settings.maxSentenceWords",), run=check_narration),
    CheckStep(name="check-reading", target="evals/checks/reading-level.json",
              subject="pages.json", doc="check: the narration's reading level",
              inputs={"narration": part("pages.json", "pages", select=narrations)},
              uses=("evals.maxReadingGrade",), run=check_reading),
]
_checked = [s for s in BASE_STEPS if s.name != "evals"] + NARRATION_CHECKS

STEPS = derive(
    BASE_STEPS,
    replace={
        "story-data": dataclasses.replace(
            _base["story-data"], run=voiced_story_data,
            inputs={**_base["story-data"].inputs, "timings": file("voice.json")}),
        "bundle": dataclasses.replace(
            _base["bundle"], files={**_base["bundle"].files, "voice.mp3": "voice.mp3"}),
        "evals": EvalsStep.over(_checked),
        # the ads follow the voice: pages timed to it, the words it speaks as captions
        "body-clip": dataclasses.replace(
            _base["body-clip"], timings="timings", audio="voice",
            inputs={"images": each("images/{n}.jpg"), "timings": file("voice.json"),
                    "voice": file("voice.mp3"),
                    "panels": part("pages.json", "pages", select=BASE.panel_counts)}),
        "ad-manifest": dataclasses.replace(_base["ad-manifest"], voiced=True),
        # every hook and CTA line is spoken: its clip carries the spoken take
        "hook-clip": dataclasses.replace(
            _base["hook-clip"], voice="voice", timings="timings",
            inputs={**_base["hook-clip"].inputs, "voice": file("ads/voice/hook-{k}.mp3"),
                    "timings": file("ads/voice/hook-{k}.json")}),
        "cta-clip": dataclasses.replace(
            _base["cta-clip"], voice="voice", timings="timings",
            inputs={**_base["cta-clip"].inputs, "voice": file("ads/voice/cta-{c}.mp3"),
                    "timings": file("ads/voice/cta-{c}.json")}),
    },
    add=[*NARRATION_CHECKS,
        AssembleStep(name="script", target="narration-script.md",
                     doc="the narration the voice reads, one section per page",
                     inputs={"pages": file("pages.json")}, run=narration_script),
        VoiceStep(name="voice", target="voice.mp3", also=("voice.json",),
                  doc="the narrated voice track with per-page timings",
                  inputs={"script": file("narration-script.md")}, segments=script_segments),
        AdVoiceStep(name="hook-voice", target="ads/voice/hook-{k}.mp3",
                    also=("ads/voice/hook-{k}.json",), foreach=BASE.HOOKS,
                    doc="ads: a hook line spoken", inputs={"line": item(select=spoken_text)},
                    segments=BASE.spoken_line),
        AdVoiceStep(name="cta-voice", target="ads/voice/cta-{c}.mp3",
                    also=("ads/voice/cta-{c}.json",), foreach=BASE.CTAS,
                    doc="ads: a CTA line spoken", inputs={"line": item(select=spoken_text)},
                    segments=BASE.spoken_line),
    ],
)
