"""The ad component kinds: the lines (LLM), their spoken takes (voice), the clips (rendered).
The manifest AdLoops takes them in by is :mod:`.ad_manifest`.

Layer: **graph**. The render kinds call no service and pay nothing: they call
:mod:`cloops.services.media` directly (1080x1920, H.264 + AAC, 30 fps, ``+faststart``,
deterministic, every component with sound at ``ads.loudness``). Every kind here is switched on
by ``ads.enabled`` (:class:`~cloops.graph.kinds.optin.OptIn`) and depends on exactly what it
uses:

- ``ad-copy``    an ``llm`` step of the ads (hook lines, CTA lines, tags);
- ``ad-voice``   a ``voice`` step of the ads: one hook or CTA line spoken (the kids template);
- ``hook-clip``  one hook line (its text and the page and panel it opens on: an
                 ``item(select=hook_shot)``), that page's image (or the cover for page 0), its
                 spoken take when the template has a voice, ``ads.hookDurationS``;
- ``cta-clip``   one CTA line and its type, the cover, the title, its spoken take,
                 ``ads.ctaDurationS``;
- ``body-clip``  every page image and the narration: the voice track's ``voice.json`` (per-page
                 times, the words spoken) and ``voice.mp3`` when the template has one, else the
                 pages' narration at ``ads.readingWpm``; ``ads.minS``, ``ads.maxS``. It also
                 writes the voice alone (``ads/voice.m4a``), the music bed alone
                 (``ads/music.m4a``) and the body's words with their times
                 (``ads/body.words.json``).

Every clip kind also depends on its own overlay mode (``ads.overlay``, one mode or a map per
component type: changing the body's mode re-renders no hook), ``ads.loudness.*``, ``ads.music``
(and the file's bytes) and ``ads.musicDuckDb``; and writes a poster (``ads/<clip>.jpg``). Its
render records what it was made from and what it measured (``source`` of the target:
``{"artifacts": {path: sha256}, "facts": {...}}``), which the manifest reads back.

Overlay modes: ``baked`` (the text in the clip), ``separate`` (the clip clean, the text beside
it: ``<clip>-overlay.png`` for a hook or a CTA, ``<clip>.vtt``/``.srt`` for the body), ``both``
(the baked clip, ``<clip>-clean.mp4`` and the text beside it). Switching modes removes the
other mode's files (a hand-edited one is kept in history first).

Renders run at most one per core, plus one, at a time in a process: composing frames holds the
GIL and each encode uses two FFmpeg threads, so more would only share the same cores - the one
more fills the time a render waits on its sound's short FFmpeg runs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from ...core.errors import InputError
from ...core.fileio import sha256_file, sha256_json
from ...core.turns import TASK_TURNS

if TYPE_CHECKING:
    from ...services.media import BodyPage
from ..steps import DepContext, Step, StepRun, expand, placeholder_of, short_value, step_kind
from ..targets import read_manifest, remove_target
from .image import template_digest
from .llm import LLMStep
from .optin import OptIn
from .voice import VoiceStep


def _media():
    """:mod:`cloops.services.media`, imported when a clip is rendered or probed: it brings
    numpy and the panel finder, which every doit start-up would otherwise load (~140 ms) to
    make tasks that mostly do not render."""
    from ...services import media
    return media


ADS_SWITCH = "ads.enabled"
MADE_BY = "rendered"
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
# one render per core: each is an encoder (libx264, ~0.2 GB for a 1080x1920 clip) and
# frames composed beside it, which together keep a core busy. A third render on two cores
# (to fill the waits on its sound's short FFmpeg runs) made the README's offline build no
# faster and its peak memory ~60 MB higher (benchmarks/README.md, issue 24)
_RENDER_SLOTS = threading.BoundedSemaphore(max(1, _CORES or 1))
SPEECH_TAIL_S = 0.35  # a spoken line's clip lasts at least this long after its last word
# A line longer than its clip is said up to this much faster (pitch kept) before the clip is
# made longer: 1.25 is a brisk but natural delivery (ElevenLabs' own speed setting goes to 1.2)
MAX_LINE_TEMPO = 1.25
LOUDNESS_PATHS = ["ads.loudness.integratedLufs", "ads.loudness.truePeakDbtp"]
DRAFTS_VALUE = "ads.drafts (offline pictures)"


def drafted(story_dir: Path, pictures: dict[str, str | None]) -> bool:
    """True when one of ``pictures`` (``{path in the story folder: its SHA-256 as the render
    read it}``) is an offline draft: the story's manifest records it as made by an offline
    backend, and its bytes are still what that backend wrote (a picture replaced by hand is
    not a draft)."""
    manifest = read_manifest(story_dir)
    return any((rec := manifest.get(rel)) is not None and rec.get("offline")
               and rec.get("sha256") == sha for rel, sha in pictures.items())


def hook_shot(entry: dict) -> dict:
    """What a hook clip reads of its line's entry in ``ads/hooks.json``: the line and where it
    opens (``page``: 1.., or 0 for the cover; ``panel``: 1..), not its angle - editing the
    angle renders nothing."""
    return {"line": entry.get("line", ""), "page": entry.get("page"),
            "panel": entry.get("panel")}


def cta_card(entry: dict) -> dict:
    """What a CTA end card reads of its entry in ``ads/ctas.json``: the line and its platform
    CTA type."""
    return {"line": entry.get("line", ""), "type": entry.get("type")}


def overlay_rel(clip_rel: str) -> str:
    """The transparent overlay PNG beside a clip: ``ads/hook-1.mp4`` ->
    ``ads/hook-1-overlay.png``."""
    return clip_rel.removesuffix(".mp4") + "-overlay.png"


def clean_rel(clip_rel: str) -> str:
    """The clean clip beside a baked one (mode ``both``): ``ads/hook-1-clean.mp4``."""
    return clip_rel.removesuffix(".mp4") + "-clean.mp4"


def poster_rel(clip_rel: str) -> str:
    """A clip's poster: ``ads/hook-1.mp4`` -> ``ads/hook-1.jpg``."""
    return clip_rel.removesuffix(".mp4") + ".jpg"


def caption_rels(clip_rel: str) -> tuple[str, str]:
    """The caption files beside a body clip: ``(ads/body.vtt, ads/body.srt)``."""
    stem = clip_rel.removesuffix(".mp4")
    return f"{stem}.vtt", f"{stem}.srt"


def words_rel(clip_rel: str) -> str:
    """The body's word timings: ``ads/body.mp4`` -> ``ads/body.words.json``."""
    return clip_rel.removesuffix(".mp4") + ".words.json"


VOICE_COMPONENT = "ads/voice.m4a"
MUSIC_COMPONENT = "ads/music.m4a"


@contextmanager
def rendering() -> Iterator[Path]:
    """A render slot and a scratch folder for its output (removed afterwards)."""
    # a render is its encoder's work and frames composed with the interpreter lock released
    # (OpenCV): it gives its turn back (cloops.core.turns) and has its own limit, a core each
    with TASK_TURNS.released(), _RENDER_SLOTS, \
            tempfile.TemporaryDirectory(prefix="cloops-render-") as tmp:
        yield Path(tmp)


def _drop(job: StepRun, rels: list[str]) -> None:
    """Remove targets of another overlay mode (a hand-edited one is kept in history)."""
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


def source_record(raw: str | None) -> tuple[dict, dict]:
    """``(artifacts, facts)`` of a render's recorded ``source`` (a clip made before facts were
    recorded: its artifacts, no facts)."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}, {}
    if isinstance(data, dict) and isinstance(data.get("artifacts"), dict):
        return data["artifacts"], data.get("facts") or {}
    return (data if isinstance(data, dict) else {}), {}


# ---------------------------------------------------------------- lines: LLM and voice


@step_kind("ad-copy")
@dataclass(frozen=True)
class AdCopyStep(OptIn, LLMStep):
    """An ``llm`` step of the ad components (hook lines, CTA lines, tags), made only while
    ``ads.enabled`` is true."""

    enabled: str = ADS_SWITCH


@step_kind("ad-voice")
@dataclass(frozen=True)
class AdVoiceStep(OptIn, VoiceStep):
    """A ``voice`` step of the ad components: one hook or CTA line spoken by the template's
    voice (``voice.*``), its timings and words beside it (``also[0]``). Made only while
    ``ads.enabled`` is true; one voice call per line, cached like every call."""

    enabled: str = ADS_SWITCH


# ---------------------------------------------------------------- the clips: what they share


@dataclass(frozen=True)
class AdClip(OptIn, Step):
    """The base of the clip kinds: overlay mode, loudness, music, poster and facts.

    Attributes:
        voice: the input holding the spoken take (an MP3 file), or None: no voice.
        timings: the input holding its timings (``{"segments": [{"startS", "endS"}], "words"}``),
            with ``voice``.

    Class attributes:
        clip_type: the component type (``hook``, ``body``, ``cta``): picks its overlay mode.
        text_beside: what ``separate``/``both`` write beside the clip (``"png"`` or
            ``"captions"``).
    """

    clip_type: ClassVar[str] = ""
    text_beside: ClassVar[str] = "png"

    enabled: str = ADS_SWITCH
    voice: str | None = None
    timings: str | None = None

    def mode(self, tpl) -> str:
        """This clip type's overlay mode (``ads.overlay``)."""
        return tpl.config.engine.ads.overlay_for(self.clip_type)

    def config_paths(self, tpl) -> list[str]:
        if not self.is_enabled(tpl):
            return super().config_paths(tpl)
        ads = tpl.config.engine.ads
        own = LOUDNESS_PATHS + ["ads.music"]
        own += ["ads.musicDuckDb"] if ads.music and self.voice else []
        return _plus(super().config_paths(tpl), own + self.own_config(tpl))

    def own_config(self, tpl) -> list[str]:
        """The kind's own config paths (durations, pace)."""
        return []

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        values = super().dependency_values(deps)
        tpl = deps.template
        if not self.is_enabled(tpl):
            return values
        values[f"ads.overlay ({self.clip_type})"] = short_value(self.mode(tpl))
        if deps.backend_of is not None and deps.backend_of("image").offline:
            # pictures made offline are drawn as ads.drafts says; real ones always in full,
            # so the setting is no dependency of a clip of real pictures
            values[DRAFTS_VALUE] = tpl.config.engine.ads.drafts
        music = tpl.config.engine.ads.music
        if music:
            path = tpl.template_file(music)
            values["ads music file"] = template_digest(tpl, Path(path)) if path else "missing"
        return values

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        clip = targets[0]
        targets.append(poster_rel(clip))
        mode = self.mode(deps.template)
        if mode == "both":
            targets.append(clean_rel(clip))
        if mode != "baked":
            targets += [overlay_rel(clip)] if self.text_beside == "png" else list(caption_rels(clip))
        return files, targets

    def other_mode_files(self, clip: str, mode: str) -> list[str]:
        """The files another overlay mode would have made beside ``clip``."""
        beside = [overlay_rel(clip)] if self.text_beside == "png" else list(caption_rels(clip))
        return (beside if mode == "baked" else []) + ([] if mode == "both" else [clean_rel(clip)])

    def check(self, tpl) -> None:
        _declared(self, tpl, [self.voice, self.timings])

    def raster(self, job: StepRun, pictures: dict[str, str | None]) -> Any:
        """What the clip is drawn at: ``media.PROXY`` (540x960) when ``ads.drafts`` is
        ``proxy`` and a picture it shows (``{rel: sha256}``, the digests its render records
        in ``made``) is an offline draft (:func:`drafted`), else ``media.FULL`` (1080x1920)."""
        media = _media()
        if job.template.config.engine.ads.drafts == "proxy" and drafted(job.story_dir, pictures):
            return media.PROXY
        return media.FULL

    def music(self, job: StepRun) -> Path | None:
        """The music file, or None.

        Raises:
            InputError: ``ads.music`` names a file the template folder does not have.
        """
        tpl = job.template
        name = tpl.config.engine.ads.music
        if not name:
            return None
        path = tpl.template_file(name)
        if path is None:
            raise InputError(f"names the music file {name!r}, which the template folder does "
                             "not have.", file=tpl.config.source_of("ads.music"),
                             field="ads.music", fix=f"put the file at {tpl.dir / name}, or set "
                                                    "ads.music to null.")
        return Path(path)

    def spoken(self, job: StepRun) -> tuple[str | None, dict]:
        """The spoken take's file and timings, or ``(None, {})``."""
        if not self.voice or not job.inputs.get(self.voice):
            return None, {}
        return job.inputs[self.voice], (job.inputs.get(self.timings) or {}) if self.timings \
            else {}

    def line_soundtrack(self, job: StepRun, duration_s: float, speech_at_s: float
                        ) -> tuple[Any, float, dict]:
        """The soundtrack of a clip with a spoken line placed so its first word comes at
        ``speech_at_s`` (or the music alone, or silence), the clip's duration, and what it was
        made from. A line too long for ``duration_s`` (its last word within
        :data:`SPEECH_TAIL_S` of the end) is said up to :data:`MAX_LINE_TEMPO` times faster;
        past that the clip is made longer, and the run says so."""
        media = _media()
        cfg = job.template.config.engine.ads
        music = self.music(job)
        voice, timings = self.spoken(job)
        made: dict[str, str] = {}
        if music is not None:
            made[f"template:{cfg.music}"] = sha256_file(music)
        if voice is None:
            return (media.Soundtrack(music=str(music) if music else None,
                                     target_lufs=cfg.loudness.integrated_lufs,
                                     true_peak_dbtp=cfg.loudness.true_peak_dbtp),
                    duration_s, made)
        rel = str(Path(voice).relative_to(job.story_dir))
        made[rel] = sha256_file(voice)
        segments = timings.get("segments") or [{"startS": 0.0,
                                                "endS": timings.get("durationS", 0.0)}]
        first = float(segments[0].get("startS") or 0.0)
        last = float(segments[-1].get("endS") or first)
        spoken = max(0.0, last - first)
        room = duration_s - speech_at_s - SPEECH_TAIL_S
        tempo = 1.0
        if spoken > room:  # said a little faster to fit the clip as configured
            tempo = min(MAX_LINE_TEMPO, spoken / max(room, 1e-3))
            if spoken / tempo > room:
                longer = math.ceil((speech_at_s + spoken / tempo + SPEECH_TAIL_S) * 30) / 30
                job.note(f"the spoken line takes {spoken:.2f} s ({spoken / tempo:.2f} s at "
                         f"x{tempo:g}): {job.rel} runs {longer:.2f} s instead of "
                         f"{duration_s:g} s")
                duration_s = longer
            made["tempo"] = f"{tempo:.4f}"
        offset = speech_at_s - first / tempo
        speech = tuple((float(s.get("startS", 0)) / tempo + offset,
                        float(s.get("endS", 0)) / tempo + offset) for s in segments)
        return (media.Soundtrack(voice=str(voice), voice_offset_s=offset, voice_tempo=tempo,
                                 speech=speech,
                                 music=str(music) if music else None,
                                 duck_db=cfg.music_duck_db,
                                 target_lufs=cfg.loudness.integrated_lufs,
                                 true_peak_dbtp=cfg.loudness.true_peak_dbtp),
                duration_s, made)

    def deliver(self, job: StepRun, clip: Any, made: dict, facts: dict) -> None:
        """Write a rendered clip's files (clip, poster, clean clip, overlay) and
        record what it was made from and what it measured; remove the other modes' files."""
        mode = clip.overlay
        rel = job.rel
        boxes = [b.as_json() for b in clip.text_boxes]
        facts = {"mode": mode, "audio": clip.audio,
                 "loudness": clip.loudness.as_json() if clip.loudness else None,
                 "speechStartS": None if clip.speech_start_s is None
                 else round(clip.speech_start_s, 3),
                 "textStartS": min((b["startS"] for b in boxes), default=None),
                 "textBoxes": boxes, "durationS": round(clip.duration_s, 3),
                 "proxy": clip.raster.scale != 1, **facts}
        source = json.dumps({"artifacts": made, "facts": facts}, sort_keys=True)
        job.write(rel, clip.path.read_bytes(), made_by=MADE_BY, offline=False, source=source)
        job.write(poster_rel(rel), clip.poster_path.read_bytes(), made_by=MADE_BY, offline=False)
        if clip.clean_path is not None:
            job.write(clean_rel(rel), clip.clean_path.read_bytes(), made_by=MADE_BY,
                      offline=False)
        if clip.overlay_path is not None:
            job.write(overlay_rel(rel), clip.overlay_path.read_bytes(), made_by=MADE_BY,
                      offline=False)
        for note in clip.notes:
            job.note(note)
        _drop(job, self.other_mode_files(rel, mode))

    def outputs(self, tmp: Path, stem: str) -> dict[str, Path]:
        """Scratch paths of a render's files."""
        return {"out_path": tmp / f"{stem}.mp4", "poster_path": tmp / f"{stem}.jpg",
                "clean_path": tmp / f"{stem}-clean.mp4",
                "overlay_path": tmp / f"{stem}-overlay.png"}


# ---------------------------------------------------------------- hook clips


@step_kind("hook-clip")
@dataclass(frozen=True)
class HookClipStep(AdClip):
    """One hook clip per hook line: the panel the line opens on, pushed in slowly, with the
    line over it in the platforms' safe area; spoken from 0.25 s when the template has a
    voice (``voice``/``timings``), else the music bed (``ads.music``) or silence.

    Attributes:
        hook: the input holding the line's :func:`hook_shot` (``item(select=hook_shot)``).
        page_image: the page images' pattern; ``{n}`` is the line's ``page``.
        cover: the image a line with ``page`` 0 opens on.
    """

    clip_type: ClassVar[str] = "hook"

    hook: str = "hook"
    page_image: str = "images/{n}.jpg"
    cover: str = "thumbnail.jpg"

    def own_config(self, tpl) -> list[str]:
        return ["ads.hookDurationS"]

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
        return files, targets

    def check(self, tpl) -> None:
        if self.foreach is None:
            raise InputError(f"hook-clip step {self.name!r} has no foreach: it makes one clip "
                             "per hook line.", file=str(tpl.dir / "workflow.py"),
                             fix='add foreach=ForEach("ads/hooks.json", "hooks", by="id", '
                                 'name="k").')
        _declared(self, tpl, [self.hook, self.voice, self.timings])

    def execute(self, job: StepRun) -> None:
        media = _media()
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
        track, duration, made = self.line_soundtrack(job, cfg.hook_duration_s,
                                                     media.clips.HOOK_SPEECH_AT_S)
        made.update({f"{source}#{k}": sha256_json(shot)[:16], image: sha256_file(path)})
        with rendering() as tmp:
            clip = media.render_hook_clip(path, line=str(shot.get("line") or ""),
                                          duration_s=duration, crop_box=crop,
                                          overlay=self.mode(job.template), soundtrack=track,
                                          raster=self.raster(job, {image: made[image]}),
                                          **self.outputs(tmp, "hook"))
            self.deliver(job, clip, made, {})


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


# ---------------------------------------------------------------- CTA end cards


@step_kind("cta-clip")
@dataclass(frozen=True)
class CtaClipStep(AdClip):
    """One CTA end card per CTA line: the story's cover with its title and the line inside the
    safe box, nothing drawn in the bottom 35 % (where the platform draws its own button);
    spoken when the template has a voice.

    Attributes:
        cta: the input holding the line's :func:`cta_card` (``item(select=cta_card)``).
        cover: the input holding the cover image (``file("thumbnail.jpg")``).
        title: the input holding the story's title (``story("title")``).
    """

    clip_type: ClassVar[str] = "cta"

    cta: str = "cta"
    cover: str = "cover"
    title: str = "title"

    def own_config(self, tpl) -> list[str]:
        return ["ads.ctaDurationS"]

    def check(self, tpl) -> None:
        if self.foreach is None:
            raise InputError(f"cta-clip step {self.name!r} has no foreach: it makes one card "
                             "per CTA line.", file=str(tpl.dir / "workflow.py"),
                             fix='add foreach=ForEach("ads/ctas.json", "ctas", by="id", '
                                 'name="c").')
        _declared(self, tpl, [self.cta, self.cover, self.title, self.voice, self.timings])

    def execute(self, job: StepRun) -> None:
        media = _media()
        cfg = job.template.config.engine.ads
        card = job.inputs[self.cta] or {}
        cover = Path(job.inputs[self.cover])
        title = str(job.inputs[self.title] or "")
        track, duration, made = self.line_soundtrack(job, cfg.cta_duration_s,
                                                     media.clips.CTA_SPEECH_AT_S)
        cover_rel = str(cover.relative_to(job.story_dir))
        made.update({f"{self.foreach.source}#{job.ctx.n}": sha256_json(card)[:16],
                     cover_rel: sha256_file(cover), "title": sha256_json(title)[:16]})
        with rendering() as tmp:
            clip = media.render_cta_clip(cover, title=title, line=str(card.get("line") or ""),
                                         duration_s=duration, overlay=self.mode(job.template),
                                         soundtrack=track,
                                         raster=self.raster(job, {cover_rel: made[cover_rel]}),
                                         **self.outputs(tmp, "cta"))
            self.deliver(job, clip, made, {"ctaType": card.get("type"),
                                                "ctaText": card.get("line")})


# ---------------------------------------------------------------- the body clip


@step_kind("body-clip")
@dataclass(frozen=True)
class BodyClipStep(AdClip):
    """The body clip: the pages panel by panel, with the narration as captions - and beside
    it the audio components (the voice alone ``ads/voice.m4a``, the bed alone
    ``ads/music.m4a``, timed as in the body) and the words spoken with their times
    (``ads/body.words.json``).

    Attributes:
        images: the input holding the page images (``each("images/{n}.jpg")``).
        counts: the input holding the number of panels of each page (the plan's shape), or
            None: every panel found in a page image is shown. With it, panels found past a
            page's count (a strip below the panels) are left out.
        narration: the input holding the pages' narration, a list of texts in page order,
            timed at ``ads.readingWpm`` (used without ``timings``).
        timings: the input holding the voice track's timings (``voice.json``:
            ``{"segments": [{"startS", "endS", "text"}], "words": [...]}``, one segment per
            page): the pages follow the voice and the captions are the words spoken. None:
            reading pace.
        audio: the input holding the voice track (``voice.mp3``), mixed in; or None.
    """

    clip_type: ClassVar[str] = "body"
    text_beside: ClassVar[str] = "captions"

    images: str = "images"
    counts: str | None = None
    narration: str = "narration"
    audio: str | None = None

    def own_config(self, tpl) -> list[str]:
        return ["ads.minS", "ads.maxS"] + ([] if self.timings else ["ads.readingWpm"])

    def config_paths(self, tpl) -> list[str]:
        paths = super().config_paths(tpl)
        if self.is_enabled(tpl) and tpl.config.engine.ads.music and self.audio:
            paths = _plus(paths, ["ads.musicDuckDb"])
        return paths

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        clip = targets[0]
        if self.audio:
            targets += [words_rel(clip), VOICE_COMPONENT]
        if deps.template.config.engine.ads.music:
            targets.append(MUSIC_COMPONENT)
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

    def words(self, job: StepRun) -> tuple[list[dict], bool]:
        """The words the voice speaks with their times (``voice.json``'s, else estimated from
        its segments) and whether they are estimated."""
        from ...services.base import estimate_words
        timings = job.inputs[self.timings] or {} if self.timings else {}
        if timings.get("words"):
            return list(timings["words"]), bool(timings.get("wordsEstimated", False))
        segments = timings.get("segments") or []
        est = estimate_words([s.get("text", "") for s in segments],
                             [(s.get("startS", 0.0), s.get("endS", 0.0)) for s in segments])
        return [{"word": w, "startS": a, "endS": b} for w, a, b in est], True

    def execute(self, job: StepRun) -> None:
        media = _media()
        tpl = job.template
        cfg = tpl.config.engine.ads
        pages = self.pages(job)
        music = self.music(job)
        voice = job.inputs[self.audio] if self.audio else None
        made = {str(p.image_path.relative_to(job.story_dir)): sha256_file(p.image_path)
                for p in pages}
        raster = self.raster(job, made)  # the pictures alone: before the sound's files join
        words, estimated = ([], False)
        if self.timings is not None:  # the captions are the words the voice speaks
            rel = self.inputs[self.timings].path
            made[rel] = sha256_file(job.story_dir / rel)
            words, estimated = self.words(job)
        else:
            made["narration"] = sha256_json(job.inputs[self.narration])[:16]
        if voice:
            made[self.inputs[self.audio].path] = sha256_file(voice)
        if music:
            made[f"template:{cfg.music}"] = sha256_file(music)
        speech = [(float(w["startS"]), float(w["endS"])) for w in words] or None
        with rendering() as tmp:
            out = self.outputs(tmp, "body")
            clip = media.render_body_clip(
                pages, out["out_path"], voice_mp3=voice, music_path=music, speech=speech,
                music_duck_db=cfg.music_duck_db, target_lufs=cfg.loudness.integrated_lufs,
                true_peak_dbtp=cfg.loudness.true_peak_dbtp, overlay=self.mode(tpl),
                clean_path=out["clean_path"], poster_path=out["poster_path"],
                voice_out=tmp / "voice.m4a" if voice else None,
                music_out=tmp / "music.m4a" if music else None,
                min_s=cfg.min_s, max_s=cfg.max_s, reading_wpm=cfg.reading_wpm,
                raster=raster)
            shown = [{"word": w["word"], "startS": round(float(w["startS"]), 3),
                      "endS": round(min(float(w["endS"]), clip.duration_s), 3)}
                     for w in words if float(w["startS"]) < clip.duration_s]
            audio = {}
            for rel, path, loud in ((VOICE_COMPONENT, clip.voice_path, clip.voice_loudness),
                                    (MUSIC_COMPONENT, clip.music_path, clip.music_loudness)):
                if path is not None:
                    audio[rel] = {"loudness": loud.as_json() if loud else None,
                                  "durationS": round(clip.duration_s, 3)}
            facts = {"policy": clip.policy, "pagesShown": clip.pages_shown,
                     "wordsEstimated": estimated if words else None, "audioComponents": audio}
            self.deliver(job, clip, made, facts)
            if clip.overlay != "baked":
                vtt, srt = caption_rels(job.rel)
                job.write(vtt, clip.vtt_path.read_bytes(), made_by=MADE_BY, offline=False)
                job.write(srt, clip.srt_path.read_bytes(), made_by=MADE_BY, offline=False)
            if voice:
                job.write(words_rel(job.rel), {"format": 1, "clip": job.rel,
                                               "durationS": round(clip.duration_s, 3),
                                               "estimated": estimated, "words": shown},
                          made_by=MADE_BY, offline=False)
            for rel, path in ((VOICE_COMPONENT, clip.voice_path),
                              (MUSIC_COMPONENT, clip.music_path)):
                if path is not None:
                    job.write(rel, path.read_bytes(), made_by=MADE_BY, offline=False,
                              source=json.dumps({"artifacts": made, "facts": audio[rel]},
                                                sort_keys=True))
        if not music:
            _drop(job, [MUSIC_COMPONENT])
