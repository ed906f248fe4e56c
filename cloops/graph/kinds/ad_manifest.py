"""``ads/manifest.json``: one record per ad component, what AdLoops takes them in by.

Layer: **graph**. The ``ad-manifest`` kind reads what each render recorded (the ``source`` of
its target: what it was made from and what it measured, see :mod:`.ads`) and probes each file
(MP4 boxes, SHA-256); a clip replaced by hand has no recorded facts, so its loudness is
measured here and its text boxes are unknown (``null``).

Record fields (format 2; schema: the template's ``schemas/ad-manifest.json``):

- ``id``, ``type`` (``hook``, ``body``, ``cta``, ``voice``, ``audio``, ``overlay``), ``file``,
  ``sha256``, ``durationS``, ``width``, ``height``, ``fps``, ``codecs``, ``files`` (every file
  of the component: the clip, its clean rendition, overlay, captions, poster, word timings);
- ``proxy`` (clips only): true for a draft clip drawn from offline draft pictures at 540x960
  (``ads.drafts``); false for the promised 1080x1920;
- ``overlay``: ``{"mode", "cleanFile", "overlayFile", "captions", "textBoxes": [{"text",
  "box": [l, t, r, b], "startS", "endS"}]}`` (null for audio); and, as in format 1,
  ``overlayBaked``, ``overlayFile``, ``captions``;
- ``audio`` (``voice`` | ``music`` | ``silent``), ``loudness`` (``integratedLufs``,
  ``truePeakDbtp``, ``lraLu`` measured after encoding; null when silent), ``poster``,
  ``words``;
- ``measured``: ``lengthBucket`` (``<3`` up to 3 s, ``4-6``, ``7-15``, ``16-30``, ``30+``, by
  the duration rounded to whole seconds), ``textWithin1_5s``, ``speechWithin1_5s``,
  ``speechStartS``, ``ctaType`` - from the component's own data (Google's ABCD checks for
  Shorts: speech and on-screen text within the first 1.5 s, a CTA at the end; BRIEF.md
  "Hooks");
- ``hookText``, ``hookAngle``, ``opensOn``, ``ctaText``, ``ctaType``, ``tags``, ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import InputError
from ...core.fileio import sha256_file
from ..steps import DepContext, Step, StepRun, expand, placeholder_of, step_kind
from .ads import (ADS_SWITCH, MUSIC_COMPONENT, VOICE_COMPONENT, _declared, _media, _plus,
                  caption_rels, clean_rel, overlay_rel, poster_rel, source_record, words_rel)
from .optin import OptIn

MANIFEST_FORMAT = 2
TEXT_WITHIN_S = 1.5
SPEECH_WITHIN_S = 1.5


def length_bucket(duration_s: float | None) -> str | None:
    """The length bucket ad teams name variants by: ``<3`` (up to 3 s), ``4-6``, ``7-15``,
    ``16-30``, ``30+`` - of the duration rounded to whole seconds (BRIEF.md "Hooks")."""
    if duration_s is None:
        return None
    r = round(duration_s)
    for most, name in ((3, "<3"), (6, "4-6"), (15, "7-15"), (30, "16-30")):
        if r <= most:
            return name
    return "30+"


@step_kind("ad-manifest")
@dataclass(frozen=True)
class AdManifestStep(OptIn, Step):
    """``ads/manifest.json``: one record per component (hooks, body, CTAs, the voice and the
    music alone, overlays), validated against the template's schema.

    Attributes:
        schema: the manifest's JSON schema, a file under the template's ``schemas/``.
        hooks, tags, clips, body: the inputs holding ``ads/hooks.json`` (parsed), the tags
            (parsed), the hook clips (``each("ads/hook-{k}.mp4")``) and the body clip.
        ctas, cta_clips: the inputs holding ``ads/ctas.json`` and the CTA end cards
            (``each("ads/cta-{c}.mp4")``), or None: no CTA.
        voiced: the template speaks its narration (``ads/voice.m4a`` and the body's word
            timings exist).
        title: the input holding the story's title (``story("title")``).
    """

    enabled: str = ADS_SWITCH
    schema: str = "ad-manifest.json"
    hooks: str = "hooks"
    tags: str = "tags"
    clips: str = "clips"
    body: str = "body"
    ctas: str | None = None
    cta_clips: str | None = None
    voiced: bool = False
    title: str = "title"

    def template_files(self, tpl) -> list[str]:
        files = super().template_files(tpl)
        return files + [f"schemas/{self.schema}"] if self.is_enabled(tpl) else files

    def config_paths(self, tpl) -> list[str]:
        return _plus(super().config_paths(tpl), ["ads.overlay", "ads.music"]
                     if self.is_enabled(tpl) else [])

    def patterns(self) -> list[tuple[str, str]]:
        """``(component type, clip pattern)`` of the fanned-out clips (hooks, CTAs)."""
        out = [("hook", self.inputs[self.clips].pattern)]
        if self.cta_clips:
            out.append(("cta", self.inputs[self.cta_clips].pattern))
        return out

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        ads = deps.template.config.engine.ads
        clips = [(t, expand(p, k)) for t, p in self.patterns()
                 for k in deps.keys(placeholder_of(p))]
        clips.append(("body", self.inputs[self.body].path))
        for ctype, rel in clips:
            files += [f for f in _files_of(rel, ctype, ads.overlay_for(ctype),
                                           self.voiced and ctype == "body") if f not in files]
        if self.voiced:
            files.append(VOICE_COMPONENT)
        if ads.music:
            files.append(MUSIC_COMPONENT)
        return files, targets

    def check(self, tpl) -> None:
        _declared(self, tpl, [self.hooks, self.tags, self.clips, self.body, self.ctas,
                              self.cta_clips, self.title])
        if bool(self.ctas) != bool(self.cta_clips):
            raise InputError(f"ad-manifest step {self.name!r} names ctas without cta_clips "
                             "(or the other way round).", file=str(tpl.dir / "workflow.py"),
                             fix="name both inputs, or neither.")
        if self.is_enabled(tpl):
            _schema(tpl, self.schema)

    def execute(self, job: StepRun) -> None:
        tpl = job.template
        ads = tpl.config.engine.ads
        tags = job.inputs[self.tags] or {}
        origin = {"template": tpl.name, "story": job.ctx.story_id}
        components: list[dict[str, Any]] = []
        hook_pattern = self.inputs[self.clips].pattern
        for entry in (job.inputs[self.hooks] or {}).get("hooks", []):
            rel = expand(hook_pattern, entry["id"])
            angle = entry.get("angle")
            record = _clip_record(job, rel, "hook", ads.overlay_for("hook"), origin,
                                  {**tags, "hookAngle": angle})
            record.update(hookText=entry.get("line"), hookAngle=angle,
                          opensOn={"page": entry.get("page"), "panel": entry.get("panel")})
            components += [record, *_overlay_records(job, record)]
        body_rel = self.inputs[self.body].path
        components.append(_clip_record(job, body_rel, "body", ads.overlay_for("body"), origin,
                                       tags, words=self.voiced))
        if self.ctas:
            cta_pattern = self.inputs[self.cta_clips].pattern
            for entry in (job.inputs[self.ctas] or {}).get("ctas", []):
                rel = expand(cta_pattern, entry["id"])
                record = _clip_record(job, rel, "cta", ads.overlay_for("cta"), origin, tags)
                record.update(ctaText=entry.get("line"), ctaType=entry.get("type"))
                record["measured"]["ctaType"] = entry.get("type")
                components += [record, *_overlay_records(job, record)]
        body = next(c for c in components if c["type"] == "body")
        if self.voiced:
            components.append(_audio_record(job, VOICE_COMPONENT, "voice", "voice", origin,
                                            tags, body))
        if ads.music:
            components.append(_audio_record(job, MUSIC_COMPONENT, "music", "audio", origin,
                                            tags, body))
        data = {"format": MANIFEST_FORMAT, **origin, "title": job.inputs[self.title] or "",
                "tags": tags, "components": components}
        problems = manifest_problems(tpl, self.schema, data)
        if problems:
            raise InputError(f"the ad manifest does not match its schema: {problems[0]}.",
                             file=tpl.shown(f"schemas/{self.schema}"),
                             fix="correct the schema (or ads/tags.json, if edited by hand).")
        job.write(job.rel, data, made_by="assembled", offline=False)


def _files_of(rel: str, ctype: str, mode: str, words: bool) -> list[str]:
    """Every file of a clip component in its overlay mode (the clip first)."""
    files = [rel, poster_rel(rel)]
    if mode == "both":
        files.append(clean_rel(rel))
    if mode != "baked":
        files += list(caption_rels(rel)) if ctype == "body" else [overlay_rel(rel)]
    if words:
        files.append(words_rel(rel))
    return files


def _facts(job: StepRun, rel: str) -> tuple[dict, dict, bool]:
    """``(artifacts, facts, hand_edited)`` of a rendered file, as its render recorded them."""
    made = job.made_from(rel)
    if made is None or made[1]:
        return {}, {}, True
    artifacts, facts = source_record(made[0])
    return artifacts, facts, False


def _probe(sdir: Path, rel: str) -> dict[str, Any]:
    """``file``, ``sha256``, ``durationS``, ``width``, ``height``, ``fps``, ``codecs`` of a
    clip or an M4A, read from its MP4 boxes."""
    facts = _media().probe(sdir / rel)
    return {"file": rel, "sha256": sha256_file(sdir / rel),
            "durationS": round(facts.get("duration_s", 0.0), 3), "width": facts.get("width"),
            "height": facts.get("height"), "fps": facts.get("fps"),
            "codecs": facts.get("codecs", [])}


def _measured(duration: float | None, facts: dict) -> dict:
    text = facts.get("textStartS")
    speech = facts.get("speechStartS")
    return {"lengthBucket": length_bucket(duration),
            "textWithin1_5s": text is not None and text <= TEXT_WITHIN_S,
            "speechWithin1_5s": speech is not None and speech <= SPEECH_WITHIN_S,
            "speechStartS": speech, "ctaType": None}


def _loudness_of(job: StepRun, rel: str, facts: dict) -> tuple[str | None, dict | None]:
    """``(audio, loudness)`` of a component: as its render measured them, else measured now
    (a file replaced by hand)."""
    if "loudness" in facts:
        return facts.get("audio"), facts.get("loudness")
    loud = _media().measure_file(job.story_dir / rel)
    return (None if loud.silent else "unknown"), (None if loud.silent else loud.as_json())


def _clip_record(job: StepRun, rel: str, ctype: str, mode: str, origin: dict, tags: dict,
                 *, words: bool = False) -> dict[str, Any]:
    sdir = job.story_dir
    artifacts, facts, edited = _facts(job, rel)
    record: dict[str, Any] = {"id": Path(rel).stem, "type": ctype, **_probe(sdir, rel)}
    mode = facts.get("mode", mode)
    files = [f for f in _files_of(rel, ctype, mode, words) if (sdir / f).is_file()]
    captions = None
    overlay_file = None
    if mode != "baked":
        if ctype == "body":
            vtt, srt = caption_rels(rel)
            captions = {"vtt": vtt, "srt": srt}
        else:
            overlay_file = overlay_rel(rel)
    audio, loudness = _loudness_of(job, rel, facts)
    poster = poster_rel(rel) if (sdir / poster_rel(rel)).is_file() else None
    record.update({
        "files": files,
        "overlay": {"mode": mode, "cleanFile": clean_rel(rel) if mode == "both" else None,
                    "overlayFile": overlay_file, "captions": captions,
                    "textBoxes": facts.get("textBoxes") if not edited else None},
        "overlayBaked": mode != "separate", "overlayFile": overlay_file, "captions": captions,
        "audio": audio, "loudness": loudness, "poster": poster,
        "words": words_rel(rel) if words and (sdir / words_rel(rel)).is_file() else None,
        "measured": _measured(record["durationS"], facts),
        "proxy": bool(facts.get("proxy")),  # no facts for a clip replaced by hand
        "hookText": None, "hookAngle": None, "opensOn": None, "ctaText": None, "ctaType": None,
        "tags": tags,
        "source": {**origin, "artifacts": artifacts, "handEdited": edited}})
    return record


def _overlay_records(job: StepRun, clip: dict) -> list[dict[str, Any]]:
    """The overlay PNG of a hook or CTA in ``separate``/``both`` mode, as its own record."""
    png = clip["overlayFile"]
    if not png:
        return []
    sdir = job.story_dir
    return [{"id": f"{clip['id']}-overlay", "type": "overlay", "for": clip["id"], "file": png,
             "sha256": sha256_file(sdir / png), "durationS": None, "width": 1080,
             "height": 1920, "fps": None, "codecs": ["png"], "files": [png],
             "overlay": {"mode": clip["overlay"]["mode"], "cleanFile": None, "overlayFile": None,
                         "captions": None, "textBoxes": clip["overlay"]["textBoxes"]},
             "overlayBaked": False, "overlayFile": None, "captions": None, "audio": None,
             "loudness": None, "poster": None, "words": None,
             "measured": {**clip["measured"], "speechWithin1_5s": False, "speechStartS": None},
             "hookText": clip["hookText"], "hookAngle": clip["hookAngle"], "opensOn": None,
             "ctaText": clip["ctaText"], "ctaType": clip["ctaType"], "tags": clip["tags"],
             "source": {**clip["source"], "artifacts": {clip["file"]: clip["sha256"]}}}]


def _audio_record(job: StepRun, rel: str, cid: str, ctype: str, origin: dict, tags: dict,
                  body: dict) -> dict[str, Any]:
    """The voice alone (type ``voice``) or the music bed alone (type ``audio``), timed as in
    the body."""
    sdir = job.story_dir
    artifacts, facts, edited = _facts(job, rel)
    probed = _probe(sdir, rel)
    audio = "voice" if ctype == "voice" else "music"
    if "loudness" not in facts:
        loud = _media().measure_file(sdir / rel)
        facts = {**facts, "loudness": None if loud.silent else loud.as_json()}
    speech = body["measured"]["speechStartS"] if ctype == "voice" else None
    return {"id": cid, "type": ctype, **probed, "width": None, "height": None, "fps": None,
            "files": [rel], "overlay": None, "overlayBaked": None, "overlayFile": None,
            "captions": None, "audio": audio, "loudness": facts.get("loudness"),
            "poster": None, "words": body["words"] if ctype == "voice" else None,
            "measured": {"lengthBucket": length_bucket(probed["durationS"]),
                         "textWithin1_5s": False,
                         "speechWithin1_5s": speech is not None and speech <= SPEECH_WITHIN_S,
                         "speechStartS": speech, "ctaType": None},
            "hookText": None, "hookAngle": None, "opensOn": None, "ctaText": None,
            "ctaType": None, "tags": tags,
            "source": {**origin, "artifacts": artifacts, "handEdited": edited}}


def _schema(tpl, name: str) -> dict:
    """The template's JSON schema ``schemas/<name>``, parsed and checked.

    Raises:
        InputError: it is missing, not JSON or not a valid JSON schema.
    """
    from ...data.config import parse_json
    from ...data.schemas import check_schema
    rel = f"schemas/{name}"
    schema = parse_json(tpl.text(rel), tpl.shown(rel))
    check_schema(tpl, rel, schema)
    return schema


def manifest_problems(tpl, name: str, data: Any) -> list[str]:
    """Where ``data`` breaks the template's manifest schema ``schemas/<name>`` (empty: valid)."""
    import jsonschema
    validator = jsonschema.Draft202012Validator(_schema(tpl, name))
    return [f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(data), key=lambda e: list(e.path))[:5]]
