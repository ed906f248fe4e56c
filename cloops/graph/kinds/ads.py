"""The ad component kinds: hook lines and tags (LLM), hook and body clips (rendered), and the
manifest AdLoops takes them in by.

Layer: **graph**. The render kinds call no service and pay nothing: they call
:mod:`cloops.services.media` directly (1080x1920, H.264 + AAC, 30 fps, ``+faststart``,
deterministic). Every kind here is switched on by ``ads.enabled``
(:class:`~cloops.graph.kinds.optin.OptIn`) and depends on exactly what it uses:

- ``ad-copy``      an ``llm`` step of the ads (hook lines, tags);
- ``hook-clip``    one hook line (its text and the page and panel it opens on: an
                   ``item(select=hook_shot)``), that page's image (or the cover for page 0),
                   ``ads.hookDurationS`` and ``ads.overlay``;
- ``body-clip``    every page image and the narration: the voice track's ``voice.json``
                   (per-page times and the words spoken) and ``voice.mp3`` when the template
                   has one, else the pages' narration at ``ads.readingWpm``; ``ads.minS``,
                   ``ads.maxS``, ``ads.overlay``, ``ads.music`` (the file's bytes too) and
                   ``ads.musicGainDb``;
- ``ad-manifest``  every component file, the hook lines, the tags, ``ads.overlay`` and the
                   manifest's JSON schema (a template file), against which it is validated.

With ``ads.overlay: separate`` a hook clip also writes ``<clip>-overlay.png`` and the body
``<clip>.vtt`` and ``<clip>.srt``; switching back to ``baked`` removes them (a hand-edited one
is kept in history first).

Renders run at most ``os.cpu_count()`` at a time in a process: composing frames holds the GIL
and each encode uses two FFmpeg threads, so more would only share the same cores.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ...core.errors import InputError
from ...core.fileio import sha256_file, sha256_json

if TYPE_CHECKING:
    from ...services.media import BodyPage
from ..steps import DepContext, Step, StepRun, expand, placeholder_of, step_kind
from ..targets import remove_target
from .llm import LLMStep
from .optin import OptIn


def _media():
    """:mod:`cloops.services.media`, imported when a clip is rendered or probed: it brings
    numpy and the panel finder, which every doit start-up would otherwise load (~140 ms) to
    make tasks that mostly do not render."""
    from ...services import media
    return media

ADS_SWITCH = "ads.enabled"
MANIFEST_FORMAT = 1
MADE_BY = "rendered"
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_RENDER_SLOTS = threading.BoundedSemaphore(max(1, _CORES or 1))


def hook_shot(entry: dict) -> dict:
    """What a hook clip reads of its line's entry in ``ads/hooks.json``: the line and where it
    opens (``page``: 1.., or 0 for the cover; ``panel``: 1..), not its angle — editing the
    angle renders nothing."""
    return {"line": entry.get("line", ""), "page": entry.get("page"),
            "panel": entry.get("panel")}


def overlay_rel(clip_rel: str) -> str:
    """The transparent overlay PNG beside a hook clip: ``ads/hook-1.mp4`` ->
    ``ads/hook-1-overlay.png``."""
    return clip_rel.removesuffix(".mp4") + "-overlay.png"


def caption_rels(clip_rel: str) -> tuple[str, str]:
    """The caption files beside a body clip: ``(ads/body.vtt, ads/body.srt)``."""
    stem = clip_rel.removesuffix(".mp4")
    return f"{stem}.vtt", f"{stem}.srt"


def separate(tpl) -> bool:
    """True when ``ads.overlay`` is ``separate`` (text beside the clips, not in them)."""
    return tpl.config.engine.ads.overlay == "separate"


@contextmanager
def rendering() -> Iterator[Path]:
    """A render slot and a scratch folder for its output (removed afterwards)."""
    with _RENDER_SLOTS, tempfile.TemporaryDirectory(prefix="cloops-render-") as tmp:
        yield Path(tmp)


def _drop(job: StepRun, rels: list[str]) -> None:
    """Remove targets of the other overlay mode (a hand-edited one is kept in history)."""
    for rel in rels:
        if (job.story_dir / rel).exists():
            remove_target(job.story_dir, rel)


def _plus(paths: list[str], own: list[str]) -> list[str]:
    """``paths`` and then those of ``own`` it lacks."""
    return paths + [p for p in own if p not in paths]


def _declared(step: Step, tpl, names: list[str | None]) -> None:
    """Check that the inputs a kind reads by name are declared.

    Raises:
        InputError: naming the workflow file, the step and the input.
    """
    missing = [n for n in names if n and n not in step.inputs]
    if missing:
        raise InputError(f"{step.kind} step {step.name!r} reads input {missing[0]!r}, which it "
                         "does not declare.", file=str(tpl.dir / "workflow.py"),
                         fix="declare it in inputs=, or name another input.")


# ---------------------------------------------------------------- LLM steps of the ads


@step_kind("ad-copy")
@dataclass(frozen=True)
class AdCopyStep(OptIn, LLMStep):
    """An ``llm`` step of the ad components (hook lines, tags), made only while
    ``ads.enabled`` is true."""

    enabled: str = ADS_SWITCH


# ---------------------------------------------------------------- hook clips


@step_kind("hook-clip")
@dataclass(frozen=True)
class HookClipStep(OptIn, Step):
    """One hook clip per hook line: the panel the line opens on, pushed in slowly, with the
    line over it in the platforms' safe area.

    Attributes:
        hook: the input holding the line's :func:`hook_shot` (``item(select=hook_shot)``).
        page_image: the page images' pattern; ``{n}`` is the line's ``page``.
        cover: the image a line with ``page`` 0 opens on.
    """

    enabled: str = ADS_SWITCH
    hook: str = "hook"
    page_image: str = "images/{n}.jpg"
    cover: str = "thumbnail.jpg"

    def config_paths(self, tpl) -> list[str]:
        own = ["ads.hookDurationS", "ads.overlay"] if self.is_enabled(tpl) else []
        return _plus(super().config_paths(tpl), own)

    def reads(self) -> list[str]:
        return super().reads() + [self.page_image, self.cover]

    def files_need_values(self) -> bool:
        return True

    def image_of(self, shot: dict | None, pages: list) -> str | None:
        """The image a line opens on (``images/2.jpg``, the cover for page 0), or None when its
        page is not one of ``pages``."""
        page = (shot or {}).get("page")
        if page == 0:
            return self.cover
        if isinstance(page, int) and not isinstance(page, bool) and page in pages:
            return expand(self.page_image, page)
        return None

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        inputs, _ctx = deps.values()
        image = self.image_of(inputs.get(self.hook), deps.keys(placeholder_of(self.page_image)))
        if image is not None:
            files.append(image)
        if separate(deps.template):
            targets.append(overlay_rel(targets[0]))
        return files, targets

    def check(self, tpl) -> None:
        if self.foreach is None:
            raise InputError(f"hook-clip step {self.name!r} has no foreach: it makes one clip "
                             "per hook line.", file=str(tpl.dir / "workflow.py"),
                             fix='add foreach=ForEach("ads/hooks.json", "hooks", by="id", '
                                 'name="k").')
        _declared(self, tpl, [self.hook])

    def execute(self, job: StepRun) -> None:
        cfg = job.template.config.engine.ads
        shot = job.inputs[self.hook] or {}
        k = job.ctx.n
        image = self.image_of(shot, job.keys(placeholder_of(self.page_image)))
        source = self.foreach.source
        if image is None:
            count = len(job.keys(placeholder_of(self.page_image)))
            raise InputError(f"hook {k} opens on page {shot.get('page')!r}, which the story "
                             f"does not have.", file=str(job.story_dir / source),
                             field=f"hooks[{k}].page",
                             fix=f"use a page from 1 to {count}, or 0 for the cover.")
        path = job.story_dir / image
        crop = None
        if shot.get("page") != 0:
            panels = page_panels(path)
            panel = shot.get("panel")
            if panels and isinstance(panel, int) and 1 <= panel <= len(panels):
                crop = tuple(panels[panel - 1])
            else:
                job.note(f"panel {panel} of {image} was not found: hook {k} shows the whole page")
        made = {f"{source}#{k}": sha256_json(shot)[:16], image: sha256_file(path)}
        png_rel = overlay_rel(job.rel)
        with rendering() as tmp:
            png = tmp / "overlay.png"
            _media().render_hook_clip(path, tmp / "hook.mp4", line=str(shot.get("line") or ""),
                             duration_s=cfg.hook_duration_s, crop_box=crop, overlay=cfg.overlay,
                             overlay_path=png if cfg.overlay == "separate" else None)
            job.write(job.rel, (tmp / "hook.mp4").read_bytes(), made_by=MADE_BY, offline=False,
                      source=json.dumps(made, sort_keys=True))
            if cfg.overlay == "separate":
                job.write(png_rel, png.read_bytes(), made_by=MADE_BY, offline=False)
        if cfg.overlay != "separate":
            _drop(job, [png_rel])


def page_panels(path: Path, count: int | None = None) -> list | None:
    """The panels found in a page image, in reading order - the first ``count`` when more are
    found (a strip under the panels, such as the offline storyboard's reference sheets) - or
    None (an unreadable image fails at the render, which names the file)."""
    try:
        found = _media().find_panels(path)
    except OSError:
        return None
    if found and isinstance(count, int) and 0 < count < len(found):
        return found[:count]
    return found


# ---------------------------------------------------------------- the body clip


@step_kind("body-clip")
@dataclass(frozen=True)
class BodyClipStep(OptIn, Step):
    """The body clip: the pages panel by panel, with the narration as captions.

    Attributes:
        images: the input holding the page images (``each("images/{n}.jpg")``).
        counts: the input holding the number of panels of each page (the plan's shape), or
            None: every panel found in a page image is shown. With it, panels found past a
            page's count (a strip below the panels) are left out.
        narration: the input holding the pages' narration, a list of texts in page order,
            timed at ``ads.readingWpm`` (used without ``timings``).
        timings: the input holding the voice track's timings (``voice.json``:
            ``{"segments": [{"startS", "endS", "text"}]}``, one per page): the pages follow
            the voice and the captions are the words spoken. None: reading pace.
        audio: the input holding the voice track (``voice.mp3``), mixed in; or None.
    """

    enabled: str = ADS_SWITCH
    images: str = "images"
    counts: str | None = None
    narration: str = "narration"
    timings: str | None = None
    audio: str | None = None

    def config_paths(self, tpl) -> list[str]:
        own = ["ads.minS", "ads.maxS", "ads.overlay", "ads.music"]
        own += [] if self.timings else ["ads.readingWpm"]
        own += ["ads.musicGainDb"] if tpl.config.engine.ads.music else []
        return _plus(super().config_paths(tpl), own if self.is_enabled(tpl) else [])

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        values = super().dependency_values(deps)
        music = deps.template.config.engine.ads.music
        if music and self.is_enabled(deps.template):
            path = deps.template.template_file(music)
            values["ads music file"] = (sha256_file(path) or "missing")[:16] if path \
                else "missing"
        return values

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        if separate(deps.template):
            targets += caption_rels(targets[0])
        return files, targets

    def check(self, tpl) -> None:
        _declared(self, tpl, [self.images, self.counts, self.timings, self.audio,
                              None if self.timings else self.narration])

    def pages(self, job: StepRun) -> list[BodyPage]:
        """The clip's pages: image, narration and, with a voice track, its seconds.

        Raises:
            InputError: the voice track's timings do not have one segment per page.
        """
        images = [job.story_dir / rel for rel in job.inputs[self.images] or []]
        counts = list(job.inputs[self.counts] or []) if self.counts else []
        panels = [page_panels(img, counts[i] if i < len(counts) else None) or []
                  for i, img in enumerate(images)]
        if self.timings is None:
            texts = list(job.inputs[self.narration] or [])
            texts += [""] * (len(images) - len(texts))
            return [_media().BodyPage(img, str(t or ""), panels=p)
                    for img, t, p in zip(images, texts, panels)]
        segments = (job.inputs[self.timings] or {}).get("segments") or []
        if len(segments) != len(images):
            raise InputError(f"has {len(segments)} segments for {len(images)} pages.",
                             file=str(job.story_dir / self.inputs[self.timings].path),
                             fix="rebuild the voice track (delete it and run doit): each page "
                                 "needs its own segment.")
        return [_media().BodyPage(img, s.get("text", ""), s.get("startS"), s.get("endS"), panels=p)
                for img, s, p in zip(images, segments, panels)]

    def execute(self, job: StepRun) -> None:
        tpl = job.template
        cfg = tpl.config.engine.ads
        pages = self.pages(job)
        music = None
        if cfg.music:
            music = tpl.template_file(cfg.music)
            if music is None:
                raise InputError(f"names the music file {cfg.music!r}, which the template "
                                 "folder does not have.", file=tpl.config.source_of("ads.music"),
                                 field="ads.music",
                                 fix=f"put the file at {tpl.dir / cfg.music}, or set "
                                     "ads.music to null.")
        voice = job.inputs[self.audio] if self.audio else None
        made = {str(p.image_path.relative_to(job.story_dir)): sha256_file(p.image_path)
                for p in pages}
        if self.timings is not None:  # the captions are the words the voice speaks
            rel = self.inputs[self.timings].path
            made[rel] = sha256_file(job.story_dir / rel)
        else:
            made["narration"] = sha256_json(job.inputs[self.narration])[:16]
        if voice:
            made[self.inputs[self.audio].path] = sha256_file(voice)
        if music:
            made[f"template:{cfg.music}"] = sha256_file(music)
        vtt_rel, srt_rel = caption_rels(job.rel)
        with rendering() as tmp:
            out = tmp / "body.mp4"
            _media().render_body_clip(pages, out, voice_mp3=voice, music_path=music,
                             music_gain_db=cfg.music_gain_db, overlay=cfg.overlay,
                             min_s=cfg.min_s, max_s=cfg.max_s, reading_wpm=cfg.reading_wpm)
            job.write(job.rel, out.read_bytes(), made_by=MADE_BY, offline=False,
                      source=json.dumps(made, sort_keys=True))
            if cfg.overlay == "separate":
                job.write(vtt_rel, (tmp / "body.vtt").read_bytes(), made_by=MADE_BY,
                          offline=False)
                job.write(srt_rel, (tmp / "body.srt").read_bytes(), made_by=MADE_BY,
                          offline=False)
        if cfg.overlay != "separate":
            _drop(job, [vtt_rel, srt_rel])


# ---------------------------------------------------------------- the manifest


@step_kind("ad-manifest")
@dataclass(frozen=True)
class AdManifestStep(OptIn, Step):
    """``ads/manifest.json``: one record per component (hook, overlay, body, voice), validated
    against the template's schema.

    Attributes:
        schema: the manifest's JSON schema, a file under the template's ``schemas/``.
        hooks, tags, clips, body: the inputs holding ``ads/hooks.json`` (parsed), the tags
            (parsed), the hook clips (``each("ads/hook-{k}.mp4")``) and the body clip.
        voice, script: the inputs holding the voice track and the script it speaks (or None:
            no voice component).
        timings: the input holding ``voice.json`` (its ``durationS``).
        title: the input holding the story's title (``story("title")``).
    """

    enabled: str = ADS_SWITCH
    schema: str = "ad-manifest.json"
    hooks: str = "hooks"
    tags: str = "tags"
    clips: str = "clips"
    body: str = "body"
    voice: str | None = None
    timings: str | None = None
    script: str | None = None
    title: str = "title"

    def template_files(self, tpl) -> list[str]:
        files = super().template_files(tpl)
        return files + [f"schemas/{self.schema}"] if self.is_enabled(tpl) else files

    def config_paths(self, tpl) -> list[str]:
        return _plus(super().config_paths(tpl), ["ads.overlay"] if self.is_enabled(tpl) else [])

    def clip_pattern(self) -> str:
        """The hook clips' pattern (``ads/hook-{k}.mp4``)."""
        return self.inputs[self.clips].pattern

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        if separate(deps.template):
            pattern = self.clip_pattern()
            files += [overlay_rel(expand(pattern, k)) for k in deps.keys(placeholder_of(pattern))]
            files += caption_rels(self.inputs[self.body].path)
        return files, targets

    def check(self, tpl) -> None:
        _declared(self, tpl, [self.hooks, self.tags, self.clips, self.body, self.voice,
                              self.timings, self.script, self.title])
        if self.is_enabled(tpl):
            _schema(tpl, self.schema)

    def execute(self, job: StepRun) -> None:
        tpl, sdir = job.template, job.story_dir
        cfg = tpl.config.engine.ads
        sep = cfg.overlay == "separate"
        tags = job.inputs[self.tags] or {}
        origin = {"template": tpl.name, "story": job.ctx.story_id}
        components: list[dict[str, Any]] = []
        pattern = self.clip_pattern()
        for entry in (job.inputs[self.hooks] or {}).get("hooks", []):
            rel = expand(pattern, entry["id"])
            cid = Path(rel).stem
            angle = entry.get("angle")
            record = {"id": cid, "type": "hook", **_clip_facts(sdir, rel),
                      "overlayBaked": not sep, "overlayFile": overlay_rel(rel) if sep else None,
                      "captions": None, "hookText": entry.get("line"), "hookAngle": angle,
                      "opensOn": {"page": entry.get("page"), "panel": entry.get("panel")},
                      "tags": {**tags, "hookAngle": angle},
                      "source": _source(job, origin, rel)}
            components.append(record)
            if sep:
                png = overlay_rel(rel)
                components.append({
                    "id": f"{cid}-overlay", "type": "overlay", "file": png,
                    "sha256": sha256_file(sdir / png), "durationS": None, "width": 1080,
                    "height": 1920, "fps": None, "codecs": ["png"], "overlayBaked": False,
                    "overlayFile": None, "captions": None, "hookText": entry.get("line"),
                    "hookAngle": angle, "opensOn": None, "for": cid, "tags": record["tags"],
                    "source": {**record["source"], "artifacts": {rel: record["sha256"]}}})
        body_rel = self.inputs[self.body].path
        vtt, srt = caption_rels(body_rel)
        components.append({
            "id": "body", "type": "body", **_clip_facts(sdir, body_rel), "overlayBaked": not sep,
            "overlayFile": None, "captions": {"vtt": vtt, "srt": srt} if sep else None,
            "hookText": None, "hookAngle": None, "opensOn": None, "tags": tags,
            "source": _source(job, origin, body_rel)})
        if self.voice:
            voice_rel = self.inputs[self.voice].path
            timings = job.inputs[self.timings] if self.timings else {}
            made = {}
            if self.script:
                script_rel = self.inputs[self.script].path
                made[script_rel] = sha256_file(sdir / script_rel)
            components.append({
                "id": "voice", "type": "voice", "file": voice_rel,
                "sha256": sha256_file(sdir / voice_rel),
                "durationS": (timings or {}).get("durationS"), "width": None, "height": None,
                "fps": None, "codecs": ["mp3"], "overlayBaked": None, "overlayFile": None,
                "captions": None, "hookText": None, "hookAngle": None, "opensOn": None,
                "tags": tags, "source": {**origin, "artifacts": made, "handEdited": False}})
        data = {"format": MANIFEST_FORMAT, **origin, "title": job.inputs[self.title] or "",
                "tags": tags, "components": components}
        problems = manifest_problems(tpl, self.schema, data)
        if problems:
            raise InputError(f"the ad manifest does not match its schema: {problems[0]}.",
                             file=tpl.shown(f"schemas/{self.schema}"),
                             fix="correct the schema (or ads/tags.json, if edited by hand).")
        job.write(job.rel, data, made_by="assembled", offline=False)


def _clip_facts(sdir: Path, rel: str) -> dict[str, Any]:
    """``file``, ``sha256``, ``durationS``, ``width``, ``height``, ``fps``, ``codecs`` of a
    clip, read from its MP4 boxes."""
    facts = _media().probe(sdir / rel)
    return {"file": rel, "sha256": sha256_file(sdir / rel),
            "durationS": round(facts.get("duration_s", 0.0), 3), "width": facts.get("width"),
            "height": facts.get("height"), "fps": facts.get("fps"),
            "codecs": facts.get("codecs", [])}


def _source(job: StepRun, origin: dict, rel: str) -> dict[str, Any]:
    """What a rendered clip was made from, as its render recorded it: ``{"template", "story",
    "artifacts": {path: sha256}, "handEdited"}`` (no artifacts when the clip was replaced by
    hand)."""
    made = job.made_from(rel)
    artifacts: dict[str, str] = {}
    if made is not None and not made[1]:
        try:
            artifacts = json.loads(made[0])
        except ValueError:
            artifacts = {}
    return {**origin, "artifacts": artifacts, "handEdited": made is None or made[1]}


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

