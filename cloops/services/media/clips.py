"""Render the vertical clips of an ad: a hook (one panel and one line), a body (the pages,
panel by panel, with narration captions and the voice) and a CTA end card (the cover, the
title and a call to action).

Layer: **services**.

Every clip is 1080x1920, H.264 (High, yuv420p, BT.709) + AAC (48 kHz stereo) in MP4 with
``+faststart``, 30 fps (BRIEF.md "Vertical ads"). Frames are composed with Pillow
(:mod:`cloops.services.media.frames`) and piped to FFmpeg (:mod:`cloops.services.media.ffmpeg`):

* **motion** - each shot is a camera window over the source image whose position is computed
  for every frame from the frame number alone, so a slow push-in or a pan moves by sub-pixel
  steps, without ``zoompan``'s jitter;
* **layout** - a portrait region (width/height <= 0.75) fills the frame; a wider one (a panel,
  a square cover) is shown whole on a blurred, darkened copy of itself;
* **text** - hook lines, captions and CTAs are drawn by Pillow (:mod:`cloops.services.media.text`)
  inside the box safe on TikTok, Reels and Shorts together, x 120-888, y 288-1248 - nothing
  is drawn in the bottom 35 %, where the platforms put their own button; ``overlay="baked"``
  draws them into the frames, ``"separate"`` leaves the clip clean and writes the text beside
  it (a transparent PNG for a hook or a CTA, ``.vtt`` + ``.srt`` captions for a body) for
  AdLoops to lay its own, ``"both"`` writes the baked clip *and* the clean one with its text
  beside it;
* **sound** - :mod:`cloops.services.media.audio`: the voice and the music bed mixed, every
  component at one loudness (``ads.loudness``), faded at its edges, measured after encoding;
* **poster** - the frame a feed shows before playback, as a 1080x1920 JPEG;
* **raster** - every renderer takes ``raster``: :data:`~cloops.services.media.layout.FULL`
  (the promised 1080x1920) or :data:`~cloops.services.media.layout.PROXY` (540x960: the same
  layout, text and sound with a quarter of the pixels - a draft clip of offline draft
  pictures). Text boxes and the overlay PNG stay in the 1080x1920 frame's pixels; the clip
  and its poster are drawn at the raster's size.

Same inputs, same bytes: see :mod:`cloops.services.media.ffmpeg`. Outputs are written atomically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from ...core.errors import InputError
from ...core.fileio import atomic_write_bytes, atomic_write_text
from . import audio as snd
from . import text as txt
from .captions import Cue, chunk, time_cues, to_srt, to_vtt
from .ffmpeg import encode_frames
from .frames import FRAME_ASPECT, Compositor, Shot, Sprite, backdrop, frame_to_rgb
from .layout import (BUTTON_ZONE_TOP_PX, FPS, FRAME, FRAME_H_PX, FRAME_W_PX, FULL, SAFE_AREA,
                     Box, Raster, cover_window, fit_inside)
from .panels import find_panels

Overlay = Literal["baked", "separate", "both"]
OVERLAYS = ("baked", "separate", "both")

COVER_MAX_ASPECT = 0.75  # regions at most this wide (w/h) fill the frame; wider ones are fitted
TEXT_INSET_PX = 10  # text boxes keep this far inside the safe area

# Hook: the line at the top of the safe area, the picture centred below it.
HOOK_TEXT_AREA = Box(SAFE_AREA.left + TEXT_INSET_PX, SAFE_AREA.top + TEXT_INSET_PX,
                     SAFE_AREA.right - TEXT_INSET_PX, 860)
HOOK_SPEECH_AT_S = 0.25  # a voiced hook's first word: ABCD wants speech within 1.5 s

# CTA end card: the cover above the button zone, the title at the top of the safe area, the
# call to action at its bottom - nothing below y 1248.
CTA_STAGE = Box(0, 0, FRAME_W_PX, BUTTON_ZONE_TOP_PX)
CTA_TITLE_AREA = Box(SAFE_AREA.left + TEXT_INSET_PX, SAFE_AREA.top + TEXT_INSET_PX,
                     SAFE_AREA.right - TEXT_INSET_PX, 760)
CTA_LINE_AREA = Box(SAFE_AREA.left + TEXT_INSET_PX, 940, SAFE_AREA.right - TEXT_INSET_PX,
                    SAFE_AREA.bottom - TEXT_INSET_PX)
CTA_TITLE_MAX_PX, CTA_TITLE_MIN_PX, CTA_TITLE_LINES = 84, 44, 3
CTA_LINE_MAX_PX, CTA_LINE_MIN_PX, CTA_LINE_LINES = 88, 48, 2
# An end card is read, not watched: it holds still, so its frames cost one composition and
# next to nothing to encode (a moving card cost as much CPU as a hook).
CTA_ZOOM = 1.0
CTA_SPEECH_AT_S = 0.3
HOOK_STAGE = Box(0, 560, FRAME_W_PX, 1560)
HOOK_MAX_FONT_PX, HOOK_MIN_FONT_PX, HOOK_MAX_LINES = 96, 44, 4
HOOK_ZOOM = 1.08  # a slow push-in: 8 % over the clip

# Body: the panel in the upper half, the caption at the bottom of the safe area.
BODY_STAGE = Box(0, 190, FRAME_W_PX, 950)
CAPTION_AREA = Box(SAFE_AREA.left + TEXT_INSET_PX, 960, SAFE_AREA.right - TEXT_INSET_PX,
                   SAFE_AREA.bottom - TEXT_INSET_PX)
CAPTION_FONT_PX, CAPTION_MIN_FONT_PX, CAPTION_MAX_LINES = 50, 40, 3
PANEL_ZOOM = 1.05
PANEL_MARGIN = 0.015  # of the page's shorter side, kept around a panel
MIN_PANEL_S = 1.2  # reading pace: no panel shorter than this
PAGE_PAUSE_S = 0.8  # reading pace: a breath after each page
TAIL_S = 0.8  # voice timing: the last page stays this long after the voice ends
FADE_S = 0.5  # fade-out when the clip is cut mid-page

# BBC Subtitle Guidelines: 160-180 words per minute is a comfortable subtitle reading rate.
DEFAULT_READING_WPM = 160.0


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class TextBox:
    """A piece of text a clip shows: what it says, where (``box``: left, top, right, bottom in
    frame pixels, backing box included) and when (seconds of the clip)."""

    text: str
    box: Box
    start_s: float
    end_s: float

    def as_json(self) -> dict:
        return {"text": self.text, "box": [int(v) for v in self.box],
                "startS": round(self.start_s, 3), "endS": round(self.end_s, 3)}


@dataclass(frozen=True)
class Delivered:
    """What every rendered component shares: its files, sound and poster.

    Attributes:
        path: the clip (baked, or clean in ``separate`` mode).
        overlay: ``"baked"``, ``"separate"`` or ``"both"``.
        clean_path: the clean clip beside a baked one (``both``), else None.
        overlay_path: the transparent 1080x1920 PNG with the text (hook, CTA: ``separate``
            and ``both``), else None.
        poster_path: the 1080x1920 JPEG a feed shows before playback, or None.
        audio: ``"voice"``, ``"music"`` or ``"silent"``.
        loudness: measured after encoding (None: silent).
        speech_start_s: when speech starts (None: no speech).
        text_boxes: every text shown, with its box and times.
        notes: lines for the run's output (music silent, a line too long, ...).
        raster: the size the clip and its poster were drawn at (``FULL`` or ``PROXY``).
    """

    path: Path
    overlay: str
    clean_path: Path | None
    overlay_path: Path | None
    poster_path: Path | None
    audio: str
    loudness: "snd.Loudness | None"
    speech_start_s: float | None
    text_boxes: tuple[TextBox, ...]
    notes: tuple[str, ...]
    raster: Raster


@dataclass(frozen=True)
class HookClip(Delivered):
    """A rendered hook clip (see :class:`Delivered`).

    Attributes:
        text: the line as drawn (whitespace collapsed, glyphs the font lacks replaced).
        text_box: where the text's box lies in the frame (inside the safe area), or None when
            the line is empty.
        duration_s, frames: running time in seconds and the number of frames (30 fps).
        layout: ``"cover"`` (the region fills the frame) or ``"fit"`` (shown whole on a
            blurred backdrop).
        region: the part of the source image shown, in its pixels.
    """

    text: str = ""
    text_box: Box | None = None
    duration_s: float = 0.0
    frames: int = 0
    layout: str = ""
    region: Box | None = None


@dataclass(frozen=True)
class CtaClip(Delivered):
    """A rendered CTA end card (see :class:`Delivered`): ``title`` and ``line`` as drawn,
    ``duration_s`` and ``frames``."""

    title: str = ""
    line: str = ""
    duration_s: float = 0.0
    frames: int = 0


@dataclass(frozen=True)
class BodyClip(Delivered):
    """A rendered body clip (see :class:`Delivered`).

    Attributes:
        vtt_path, srt_path: the caption files (``separate`` and ``both``), else None.
        duration_s, frames: running time (seconds) and frames (30 fps).
        natural_duration_s: what the pages would take before clamping to ``[min_s, max_s]``.
        policy: how the running time was fitted, in words (see :func:`render_body_clip`).
        timing: ``"voice"`` (page windows from start_s/end_s) or ``"reading"`` (from the pace).
        pages_shown: how many pages are in the clip (the rest were cut by ``max_s``).
        panels: per page shown, the panel boxes found, or None where it panned down the page.
        cues: the captions, timed in the clip.
        voice_path, music_path: the voice alone and the music bed alone, timed as in the
            body, normalized (M4A), when asked for and there is one; else None.
        voice_loudness, music_loudness: what those measure after encoding.
    """

    vtt_path: Path | None = None
    srt_path: Path | None = None
    duration_s: float = 0.0
    frames: int = 0
    natural_duration_s: float = 0.0
    policy: str = ""
    timing: str = ""
    pages_shown: int = 0
    panels: list = field(default_factory=list)
    cues: list[Cue] = field(default_factory=list)
    voice_path: Path | None = None
    music_path: Path | None = None
    voice_loudness: "snd.Loudness | None" = None
    music_loudness: "snd.Loudness | None" = None


@dataclass(frozen=True)
class BodyPage:
    """One page of a body clip: its image, its narration and, with a voice track, the
    seconds of that track in which the page is read (``audioStartS``/``audioEndS``).

    ``panels``: the panel boxes to show, in reading order, in the image's pixels - None to
    find them (:func:`~cloops.services.media.panels.find_panels`), empty to pan down the page.
    """

    image_path: str | os.PathLike
    narration: str = ""
    start_s: float | None = None
    end_s: float | None = None
    panels: Sequence[Sequence[float]] | None = None


# --------------------------------------------------------------------------- helpers

def _check_overlay(overlay: str) -> None:
    if overlay not in OVERLAYS:
        raise InputError(f"overlay must be 'baked', 'separate' or 'both', not {overlay!r}.",
                         field="overlay", fix="use ads.overlay: baked | separate | both.")


def _positive(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number of seconds, not {value!r}.",
                         field=name) from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number, not {value!r}.", field=name)
    return value


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an RGB image.

    Raises:
        InputError: the file is missing or is not an image Pillow can decode.
    """
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise InputError("the image does not exist.", file=str(path),
                         fix="build the story's images first (run doit).") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"not a readable image ({exc.__class__.__name__}).", file=str(path),
                         fix="regenerate it (delete the file and run doit) or replace it "
                             "with a JPEG or PNG.") from None
    if rgb.width < 2 or rgb.height < 2:
        raise InputError(f"the image is only {rgb.width}x{rgb.height} px.", file=str(path),
                         fix="regenerate the image.")
    return rgb


def _check_file(path: str | os.PathLike | None, name: str) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise InputError(f"the {name} file does not exist.", file=str(path), field=name,
                         fix=f"build it first, or leave {name} unset.")
    return str(path)


def _region_shot(img: Image.Image, region: Box, stage: Box, frames: int,
                 zoom: float, raster: Raster) -> tuple[Shot, str]:
    """A push-in on ``region``: filling the frame when it is portrait, else fitted into
    ``stage`` on a blurred backdrop. Returns ``(shot, layout)``."""
    if region.aspect <= COVER_MAX_ASPECT:
        start = cover_window(region, FRAME_ASPECT)
        return Shot(img, start, start.zoomed(zoom), FRAME, frames, backdrop=None,
                    eased=False, raster=raster), "cover"
    dest = fit_inside(region.width, region.height, stage)
    return Shot(img, region, region.zoomed(zoom), dest, frames,
                backdrop=backdrop(img, region, raster), eased=False, raster=raster), "fit"


# --------------------------------------------------------------------------- delivery

def _deliver(out: Path, *, frames: int, duration_s: float, baked: Compositor,
             clean: Compositor, overlay: str, clean_path: str | os.PathLike | None,
             overlay_png: "Image.Image | None", overlay_path: str | os.PathLike | None,
             soundtrack: "snd.Soundtrack | None", poster_path: str | os.PathLike | None,
             poster_s: float, text_boxes: Sequence[TextBox], sources: Sequence[str],
             video_filter: str = "", fade_out_s: float = 0.0) -> dict:
    """Encode a component in its overlay mode with its soundtrack; write its overlay PNG and
    poster. Returns the :class:`Delivered` fields.

    ``baked`` composes the frames with the text, ``clean`` without; ``overlay`` picks which
    are encoded: ``baked`` -> ``out`` baked; ``separate`` -> ``out`` clean (+ the PNG);
    ``both`` -> ``out`` baked and ``clean_path`` clean (+ the PNG). The soundtrack is mixed and
    normalized once and shared by both renditions; when the encoded true peak comes out over
    the limit the audio is made again with a lower ceiling and put in place of the first
    (:func:`cloops.services.media.audio.finish_loudness`).

    Raises:
        InputError, RenderError: as the renderers.
    """
    _check_overlay(overlay)
    out = Path(out)
    clean_out = None
    if overlay == "both":
        clean_out = Path(clean_path) if clean_path else out.with_name(f"{out.stem}-clean.mp4")
    png_path = None
    if overlay != "baked" and overlay_png is not None:
        png_path = Path(overlay_path) if overlay_path else out.with_name(f"{out.stem}-overlay.png")
    track = soundtrack or snd.Soundtrack()
    notes: list[str] = []
    with snd.temp_folder() as scratch:
        scratch = Path(scratch)
        rendered = snd.render_soundtrack(track, duration_s, scratch)
        notes += rendered.notes
        if fade_out_s > 0 and rendered.path is not None:
            _fade_out(rendered.path, fade_out_s)
        inputs, audio = snd.audio_input(rendered, duration_s)
        main = clean if overlay == "separate" else baked
        encode_frames(out, frames, main.frame, inputs=inputs, video_filter=video_filter,
                      audio_filter=audio, duration_s=duration_s, sources=sources,
                      still=main.still, raster=main.raster)
        if clean_out is not None:
            encode_frames(clean_out, frames, clean.frame, inputs=inputs,
                          video_filter=video_filter, audio_filter=audio,
                          duration_s=duration_s, sources=sources, still=clean.still,
                          raster=clean.raster)

        def reencode(again: "snd.Rendered") -> None:
            if fade_out_s > 0:
                _fade_out(again.path, fade_out_s)
            for path in (out, clean_out):
                if path is not None:
                    snd.remux_audio(path, again, path)
        loudness = snd.finish_loudness(track, rendered, duration_s, out, scratch,
                                       reencode=reencode)
    if png_path is not None:
        atomic_write_bytes(png_path, _png_bytes(overlay_png))
    poster = None
    if poster_path is not None:
        poster = Path(poster_path)
        index = min(frames - 1, max(0, math.floor(poster_s * FPS + 1e-6)))
        write_poster(main, index, poster, overlay_png if overlay == "separate" else None)
    speech = track.speech_start_s if rendered.kind == "voice" else None
    return dict(path=out, overlay=overlay, clean_path=clean_out, overlay_path=png_path,
                poster_path=poster, audio=rendered.kind, loudness=loudness,
                speech_start_s=speech, text_boxes=tuple(text_boxes), notes=tuple(notes),
                raster=main.raster)


def _fade_out(raw: Path, fade_s: float) -> None:
    """Fade the last ``fade_s`` seconds of a raw f32le stereo file out (a body cut mid-page)."""
    import numpy as np
    pcm = np.fromfile(raw, dtype="<f4").reshape(-1, snd.CHANNELS)
    n = min(len(pcm), round(fade_s * snd.AUDIO_RATE_HZ))
    if n > 0:
        pcm[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)[:, None]
        pcm.tofile(raw)


def write_poster(compositor: Compositor, index: int, out_path: str | os.PathLike,
                 overlay: "Image.Image | None" = None) -> Path:
    """The poster of a clip: its frame ``index`` as a JPEG (quality 90) of the compositor's
    raster (1080x1920; 540x960 for a proxy), with ``overlay`` (an RGBA 1080x1920 frame,
    area-averaged to the raster's size) laid over it when given - what a feed shows before
    playback (TikTok's display image, Meta's thumbnail). The frame is the one the encoder
    was given (:func:`~cloops.services.media.frames.frame_to_rgb`), not decoded back from the
    H.264 stream: the same picture without an FFmpeg run per poster. Written atomically."""
    import io
    raster = compositor.raster
    img = frame_to_rgb(b"".join(bytes(b) for b in compositor.frame(index)), raster)
    if overlay is not None and overlay.size != img.size:
        overlay = overlay.resize(img.size, Image.Resampling.BOX)
    if overlay is not None:
        img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, optimize=False, progressive=False)
    atomic_write_bytes(out_path, buf.getvalue())
    return Path(out_path)


def _text_sprite(text: str, area: Box, style: "txt.TextStyle", *, max_px: int, min_px: int,
                 lines: int, anchor: str, font: str | None,
                 raster: Raster) -> tuple[Sprite, Image.Image, Box]:
    block = txt.fit(text, area, style, max_size_px=max_px, min_size_px=min_px,
                    max_lines=lines, font_path=font)
    rgba, box = txt.draw_block(block, area, style, anchor=anchor)
    return Sprite.of(rgba, box, raster), rgba, box


# --------------------------------------------------------------------------- hook

def render_hook_clip(image_path: str | os.PathLike, out_path: str | os.PathLike, *,
                     line: str, duration_s: float = 3.0,
                     crop_box: Sequence[float] | None = None, overlay: Overlay = "baked",
                     overlay_path: str | os.PathLike | None = None,
                     clean_path: str | os.PathLike | None = None,
                     soundtrack: "snd.Soundtrack | None" = None,
                     poster_path: str | os.PathLike | None = None,
                     zoom: float = HOOK_ZOOM,
                     font_path: str | os.PathLike | None = None,
                     raster: Raster = FULL) -> HookClip:
    """Render a hook clip: one region of an image with a slow push-in and ``line`` on it.

    ``crop_box`` is ``(left, top, right, bottom)`` in the image's pixels (a panel from
    :func:`~cloops.services.media.panels.find_panels`), or None for the whole image (the cover).
    ``zoom`` is how far the push-in goes (1.08 = the window shrinks by 8 % over the clip). The
    line is fitted (96 px down to 44 px, at most 4 lines, wrapped) in a box at the top of the
    safe area and shown from the first frame. ``overlay``: see :func:`_deliver` (the PNG is
    ``overlay_path``, default ``<out stem>-overlay.png``; the clean clip ``clean_path``,
    default ``<out stem>-clean.mp4``). ``soundtrack``: the spoken line (place it with
    ``voice_offset_s`` so speech starts at :data:`HOOK_SPEECH_AT_S`) and/or the music bed;
    None: silent (an AAC track of silence). ``poster_path``: the poster, the frame at 1 s.
    ``round(duration_s * 30)`` frames long. ``raster``: ``FULL`` (1080x1920) or ``PROXY``
    (540x960, the same layout; see the module's docstring).

    Raises:
        InputError: the image is missing/unreadable, ``crop_box`` is outside it, or a
            parameter is out of range.
        RenderError: FFmpeg is missing or failed (nothing is left at ``out_path``).
    """
    _check_overlay(overlay)
    duration_s = _positive("duration_s", duration_s)
    zoom = _positive("zoom", zoom)
    out = Path(out_path)
    img = load_image(image_path)
    full = Box(0, 0, img.width, img.height)
    if crop_box is None:
        region = full
    else:
        try:
            region = Box(*(float(v) for v in crop_box))
        except (TypeError, ValueError):
            raise InputError(f"crop_box must be [left, top, right, bottom], not {crop_box!r}.",
                             field="crop_box") from None
        if region.width < 2 or region.height < 2 or not full.contains(region):
            raise InputError(f"crop_box {list(crop_box)} is not a region of the "
                             f"{img.width}x{img.height} image.", file=str(image_path),
                             field="crop_box", fix="give a box inside the image, or none.")
    frames = max(1, round(duration_s * FPS))
    duration = frames / FPS
    shot, layout_kind = _region_shot(img, region, HOOK_STAGE, frames, zoom, raster)

    font = txt.font_key(font_path)
    text = txt.clean_text(line, font)
    sprite = rgba = text_box = None
    if text:
        sprite, rgba, text_box = _text_sprite(
            text, HOOK_TEXT_AREA, txt.HOOK_STYLE, max_px=HOOK_MAX_FONT_PX,
            min_px=HOOK_MIN_FONT_PX, lines=HOOK_MAX_LINES, anchor="top", font=font,
            raster=raster)
    shots = [(shot, i) for i in range(frames)]
    baked = Compositor(shots, [(sprite,) if sprite is not None else ()] * frames, raster)
    clean = Compositor(shots, [()] * frames, raster)
    png = txt.full_frame(rgba, text_box, (FRAME_W_PX, FRAME_H_PX)) if rgba is not None \
        else Image.new("RGBA", (FRAME_W_PX, FRAME_H_PX), (0, 0, 0, 0))
    boxes = [TextBox(text, text_box, 0.0, duration)] if text_box is not None else []
    done = _deliver(out, frames=frames, duration_s=duration, baked=baked, clean=clean,
                    overlay=overlay, clean_path=clean_path, overlay_png=png,
                    overlay_path=overlay_path, soundtrack=soundtrack, poster_path=poster_path,
                    poster_s=1.0, text_boxes=boxes, sources=[str(image_path)])
    return HookClip(**done, text=text, text_box=text_box, duration_s=duration, frames=frames,
                    layout=layout_kind, region=region)


def _png_bytes(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------- CTA end card

CTA_LINE_STYLE = txt.TextStyle(fill=(24, 24, 24, 255), stroke=(0, 0, 0, 0), stroke_ratio=0,
                               backing=(255, 210, 60, 240), pad_px=30, radius_px=44,
                               line_spacing=1.08)


def render_cta_clip(image_path: str | os.PathLike, out_path: str | os.PathLike, *,
                    title: str, line: str, duration_s: float = 3.0,
                    overlay: Overlay = "baked", overlay_path: str | os.PathLike | None = None,
                    clean_path: str | os.PathLike | None = None,
                    soundtrack: "snd.Soundtrack | None" = None,
                    poster_path: str | os.PathLike | None = None,
                    font_path: str | os.PathLike | None = None,
                    raster: Raster = FULL) -> CtaClip:
    """Render a CTA end card: the story's cover, held still above the button zone, its
    ``title`` at the top of the safe area and the call to action ``line`` (a bright box, like
    a button) at its bottom - every text pixel inside x 120-888, y 288-1248 and nothing drawn
    below y 1248, where the platforms draw their own button (BRIEF.md "CTAs": "a few
    seconds", CTA text around 20 characters, the bottom ~35 % kept free).

    ``overlay``, ``soundtrack`` (the spoken line: speech at :data:`CTA_SPEECH_AT_S`),
    ``poster_path`` (the card's last frame, fully shown), ``raster``: as
    :func:`render_hook_clip`.

    Raises:
        InputError: the image is missing/unreadable, the line is empty, or a parameter is out
            of range.
        RenderError: FFmpeg is missing or failed (nothing is left at ``out_path``).
    """
    _check_overlay(overlay)
    duration_s = _positive("duration_s", duration_s)
    font = txt.font_key(font_path)
    cta = txt.clean_text(line, font)
    if not cta:
        raise InputError("a CTA end card needs its line.", field="line",
                         fix="write the call to action (at most 24 characters).")
    img = load_image(image_path)
    frames = max(1, round(duration_s * FPS))
    duration = frames / FPS
    full = Box(0, 0, img.width, img.height)
    start = cover_window(full, CTA_STAGE.aspect)
    shot = Shot(img, start, start.zoomed(CTA_ZOOM), CTA_STAGE, frames,
                backdrop=backdrop(img, full, raster), eased=False, raster=raster)
    heading = txt.clean_text(title, font)
    sprites, layers, boxes = [], [], []
    if heading:
        sprite, rgba, box = _text_sprite(heading, CTA_TITLE_AREA, txt.HOOK_STYLE,
                                         max_px=CTA_TITLE_MAX_PX, min_px=CTA_TITLE_MIN_PX,
                                         lines=CTA_TITLE_LINES, anchor="top", font=font,
                                         raster=raster)
        sprites.append(sprite)
        layers.append((rgba, box))
        boxes.append(TextBox(heading, box, 0.0, duration))
    sprite, rgba, box = _text_sprite(cta, CTA_LINE_AREA, CTA_LINE_STYLE, max_px=CTA_LINE_MAX_PX,
                                     min_px=CTA_LINE_MIN_PX, lines=CTA_LINE_LINES,
                                     anchor="bottom", font=font, raster=raster)
    sprites.append(sprite)
    layers.append((rgba, box))
    boxes.append(TextBox(cta, box, 0.0, duration))
    png = Image.new("RGBA", (FRAME_W_PX, FRAME_H_PX), (0, 0, 0, 0))
    for rgba, box in layers:
        png.alpha_composite(rgba, (int(box.left), int(box.top)))
    shots = [(shot, i) for i in range(frames)]
    baked = Compositor(shots, [tuple(sprites)] * frames, raster)
    clean = Compositor(shots, [()] * frames, raster)
    done = _deliver(Path(out_path), frames=frames, duration_s=duration, baked=baked,
                    clean=clean, overlay=overlay, clean_path=clean_path, overlay_png=png,
                    overlay_path=overlay_path, soundtrack=soundtrack, poster_path=poster_path,
                    poster_s=duration, text_boxes=boxes, sources=[str(image_path)])
    return CtaClip(**done, title=heading, line=cta, duration_s=duration, frames=frames)


# --------------------------------------------------------------------------- body

def _as_page(raw: BodyPage | Mapping[str, Any], index: int) -> BodyPage:
    if isinstance(raw, BodyPage):
        return raw
    if not isinstance(raw, Mapping) or "image_path" not in raw:
        raise InputError(f"page {index + 1} must have an image_path.", field=f"pages[{index}]")
    unknown = set(raw) - {"image_path", "narration", "start_s", "end_s", "panels"}
    if unknown:
        raise InputError(f"page {index + 1} has unknown keys {sorted(unknown)}.",
                         field=f"pages[{index}]",
                         fix="use image_path, narration, start_s, end_s, panels.")
    return BodyPage(**raw)


def _page_windows(pages: list[BodyPage], panel_counts: list[int],
                  reading_wpm: float) -> tuple[str, list[tuple[float, float]],
                                               list[tuple[float, float]]]:
    """Return ``(timing, shown, spoken)``: per page, when it is on screen and when its
    narration runs (seconds), before clamping."""
    timed = [p.start_s is not None and p.end_s is not None for p in pages]
    if any(timed) and not all(timed):
        raise InputError("some pages have start_s/end_s and some do not.", field="pages",
                         fix="give start_s and end_s (the voice track's audioStartS/"
                             "audioEndS) for every page, or for none.")
    if all(timed):
        spoken = []
        prev = 0.0
        for i, p in enumerate(pages):
            s, e = float(p.start_s), float(p.end_s)
            if not (math.isfinite(s) and math.isfinite(e)) or s < prev - 1e-6 or e < s:
                raise InputError(f"page {i + 1} is timed {s}-{e} s after a page ending at "
                                 f"{prev} s.", field=f"pages[{i}].start_s",
                                 fix="page windows must be in order and not overlap.")
            spoken.append((s, e))
            prev = e
        shown = []
        for i, (s, e) in enumerate(spoken):
            begin = 0.0 if i == 0 else s
            stop = spoken[i + 1][0] if i + 1 < len(spoken) else e + TAIL_S
            shown.append((begin, stop))
        return "voice", shown, spoken
    shown = []
    t = 0.0
    for p, n in zip(pages, panel_counts):
        words = len(p.narration.split())
        length = max(words * 60.0 / reading_wpm + PAGE_PAUSE_S, max(1, n) * MIN_PANEL_S)
        shown.append((t, t + length))
        t += length
    return "reading", shown, [(s, e) for s, e in shown]


def _fit_duration(timing: str, shown: list[tuple[float, float]],
                  spoken: list[tuple[float, float]], min_s: float,
                  max_s: float) -> tuple[float, int, str, list[tuple[float, float]],
                                         list[tuple[float, float]], bool]:
    """Apply the duration policy; returns ``(duration_s, pages, policy, shown, spoken,
    fade)``."""
    natural = shown[-1][1]
    if min_s <= natural <= max_s:
        return natural, len(shown), f"natural length {natural:.2f} s", shown, spoken, False
    if natural < min_s:
        if timing == "voice":
            shown = shown[:-1] + [(shown[-1][0], min_s)]
            return (min_s, len(shown), f"held the last page: narration ends at "
                    f"{natural:.2f} s, below min_s {min_s:g} s", shown, spoken, False)
        k = min_s / natural
        shown = [(a * k, b * k) for a, b in shown]
        return (min_s, len(shown), f"slowed the reading pace by x{k:.2f} to reach min_s "
                f"{min_s:g} s (natural {natural:.2f} s)", shown, shown, False)
    # too long: end after the last whole page that fits, else cut mid-page with a fade
    for n in range(len(shown), 0, -1):
        end = shown[n - 1][1] if timing == "reading" else min(
            spoken[n - 1][1] + TAIL_S, shown[n - 1][1])
        if min_s <= end <= max_s:
            shown = shown[:n - 1] + [(shown[n - 1][0], end)]
            return (end, n, f"ended after page {n} of {len(spoken)} at {end:.2f} s: the "
                    f"whole story takes {natural:.2f} s, above max_s {max_s:g} s",
                    shown, spoken[:n], False)
    n = next(i for i, (a, b) in enumerate(shown) if b > max_s) + 1
    shown = shown[:n - 1] + [(shown[n - 1][0], max_s)]
    return (max_s, n, f"cut in page {n} at max_s {max_s:g} s with a {FADE_S:g} s fade "
            f"(no page ends between {min_s:g} and {max_s:g} s; natural {natural:.2f} s)",
            shown, spoken[:n], True)


def _split_frames(first: int, last: int, parts: int) -> list[tuple[int, int]]:
    """Cut frames ``[first, last)`` into ``parts`` runs as equal as whole frames allow."""
    total = last - first
    out = []
    for k in range(parts):
        a = first + total * k // parts
        b = first + total * (k + 1) // parts
        out.append((a, b))
    return out


def _page_shots(img: Image.Image, panels: list[Box] | None, first: int,
                last: int, raster: Raster) -> list[tuple[int, int, Shot]]:
    """The shots of one page between frames ``first`` and ``last``: one push-in per panel,
    or a top-to-bottom pan when there are no panels."""
    page = Box(0, 0, img.width, img.height)
    blurred = backdrop(img, page, raster)
    stage_aspect = BODY_STAGE.aspect
    shots = []
    if panels:
        margin = PANEL_MARGIN * min(img.width, img.height)
        for (a, b), box in zip(_split_frames(first, last, len(panels)), panels):
            if b <= a:
                continue
            region = Box(box.left - margin, box.top - margin, box.right + margin,
                         box.bottom + margin).clamp(img.width, img.height)
            dest = fit_inside(region.width, region.height, BODY_STAGE)
            shots.append((a, b, Shot(img, region, region.zoomed(PANEL_ZOOM), dest, b - a,
                                     backdrop=blurred, eased=False, raster=raster)))
        return shots
    if page.aspect < stage_aspect:  # portrait page: a full-width window slides down it
        win_h = img.width / stage_aspect
        start = Box(0, 0, img.width, win_h)
        end = Box(0, img.height - win_h, img.width, img.height)
        shots.append((first, last, Shot(img, start, end, BODY_STAGE, last - first,
                                        backdrop=blurred, eased=True, raster=raster)))
    else:
        dest = fit_inside(page.width, page.height, BODY_STAGE)
        shots.append((first, last, Shot(img, page, page.zoomed(PANEL_ZOOM), dest, last - first,
                                        backdrop=blurred, eased=False, raster=raster)))
    return shots


def _caption_cues(narrations: list[str], spoken: list[tuple[float, float]], duration_s: float,
                  font: str | None) -> list[Cue]:
    style = txt.CAPTION_STYLE
    width = CAPTION_AREA.width - 2 * style.pad_px
    height = CAPTION_AREA.height - 2 * style.pad_px

    def lines_of(s: str) -> tuple[str, ...]:
        return txt.layout(s, CAPTION_FONT_PX, width, style, font).lines

    def fits(s: str) -> bool:
        block = txt.layout(s, CAPTION_FONT_PX, width, style, font)
        return len(block.lines) <= CAPTION_MAX_LINES and block.height_px <= height

    cues: list[Cue] = []
    for narration, (s, e) in zip(narrations, spoken):
        clean = txt.clean_text(narration, font)
        if not clean:
            continue
        pieces = [lines_of(p) for p in chunk(clean, fits)]
        for cue in time_cues(pieces, s, e):
            if cue.start_s >= duration_s:
                break
            cues.append(Cue(cue.start_s, min(cue.end_s, round(duration_s, 3)), cue.lines))
    return cues


def _caption_sprite(cue: Cue, font: str | None, raster: Raster = FULL) -> Sprite:
    style = txt.CAPTION_STYLE
    size = CAPTION_FONT_PX
    block = txt.block(cue.lines, size, style, font)
    if block.width_px + 2 * style.pad_px > CAPTION_AREA.width or \
            block.height_px + 2 * style.pad_px > CAPTION_AREA.height:
        block = txt.fit(cue.text, CAPTION_AREA, style, max_size_px=size,
                        min_size_px=CAPTION_MIN_FONT_PX, max_lines=CAPTION_MAX_LINES,
                        font_path=font)
    rgba, box = txt.draw_block(block, CAPTION_AREA, style, anchor="bottom")
    return Sprite.of(rgba, box, raster)


def render_body_clip(pages: Sequence[BodyPage | Mapping[str, Any]],
                     out_path: str | os.PathLike, *,
                     voice_mp3: str | os.PathLike | None = None,
                     music_path: str | os.PathLike | None = None,
                     speech: Sequence[tuple[float, float]] | None = None,
                     music_duck_db: float = 12.0, target_lufs: float = -14.0,
                     true_peak_dbtp: float = -1.0, overlay: Overlay = "baked",
                     clean_path: str | os.PathLike | None = None,
                     poster_path: str | os.PathLike | None = None,
                     voice_out: str | os.PathLike | None = None,
                     music_out: str | os.PathLike | None = None,
                     min_s: float = 15.0, max_s: float = 60.0,
                     reading_wpm: float = DEFAULT_READING_WPM,
                     font_path: str | os.PathLike | None = None,
                     raster: Raster = FULL) -> BodyClip:
    """Render a body clip: the pages panel by panel, the narration as captions, the voice
    and an optional music bed.

    ``pages`` are :class:`BodyPage` or dicts ``{"image_path", "narration", "start_s",
    "end_s"}``. **Timing**: with ``start_s``/``end_s`` on every page (the voice track's
    ``audioStartS``/``audioEndS``) a page is on screen from its start (the first from 0 s) to
    the next page's start, the last one until 0.8 s after its voice ends; without them each page
    gets its narration's reading time at ``reading_wpm`` words per minute plus 0.8 s, and at
    least 1.2 s per panel. Within its time a page's panels (``BodyPage.panels``, else
    :func:`find_panels`) share it equally, each with a slow push-in; a page whose panels are not found is panned top to
    bottom. Captions (at most 3 lines of 50 px at the bottom of the safe area) split each
    page's narration by sentence and are timed within its narration window.

    **Duration policy** (``min_s <= duration <= max_s`` seconds, default 15-60 s, the
    TikTok/Reels/Shorts feed range):

    * shorter than ``min_s``: with a voice, the last page is held (the voice is never
      stretched; music, if any, plays on); with reading pace, the pace is slowed evenly;
    * longer than ``max_s``: the clip ends after the last whole page (plus its 0.8 s tail)
      that ends between ``min_s`` and ``max_s`` - a body is a teaser, the story need not
      finish; if no page ends in that range, it is cut at ``max_s`` with a 0.5 s fade-out.

    **Audio** (:mod:`cloops.services.media.audio`): ``voice_mp3`` plays from 0 s, in step with
    the page times; ``music_path`` loops under it, ``music_duck_db`` below the voice while it
    speaks (``speech``: its spans in seconds, e.g. the words of ``voice.json``; default: the
    pages' spoken windows); with neither, the AAC track is silence. The mix is normalized to
    ``target_lufs`` with true peak at most ``true_peak_dbtp``. ``voice_out`` / ``music_out``:
    also write the voice alone and the bed alone, timed as in the body and normalized the
    same way, as M4A (AAC) - the audio components.
    **Overlay**: ``"baked"`` burns the captions in; ``"separate"`` writes a clean clip plus
    ``<out stem>.vtt`` and ``<out stem>.srt`` beside it; ``"both"`` the baked clip, the clean one
    (``clean_path``, default ``<out stem>-clean.mp4``) and the captions. ``poster_path``: the
    frame in the middle of the first caption (or at 1 s) as a JPEG. ``raster``: as
    :func:`render_hook_clip`.

    Raises:
        InputError: no pages, a missing/unreadable image, voice or music file, inconsistent
            page times, or a parameter out of range.
        RenderError: FFmpeg is missing or failed (nothing is left at ``out_path``).
    """
    _check_overlay(overlay)
    if not pages:
        raise InputError("a body clip needs at least one page.", field="pages")
    min_s = _positive("min_s", min_s)
    max_s = _positive("max_s", max_s)
    if min_s > max_s:
        raise InputError(f"min_s {min_s:g} is above max_s {max_s:g}.", field="min_s")
    reading_wpm = _positive("reading_wpm", reading_wpm)
    voice = _check_file(voice_mp3, "voice_mp3")
    music = _check_file(music_path, "music_path")
    out = Path(out_path)
    font = txt.font_key(font_path)

    specs = [_as_page(p, i) for i, p in enumerate(pages)]
    images = [load_image(p.image_path) for p in specs]
    panels = [find_panels(img) if p.panels is None else _given_panels(p, img, i)
              for i, (p, img) in enumerate(zip(specs, images))]
    timing, shown, spoken = _page_windows(specs, [len(p or ()) for p in panels], reading_wpm)
    natural = shown[-1][1]
    duration, n_pages, policy, shown, spoken, fade = _fit_duration(timing, shown, spoken,
                                                                   min_s, max_s)
    frames = max(1, round(duration * FPS))
    duration = frames / FPS

    # shots, by frame
    shots: list[tuple[int, int, Shot]] = []
    for k in range(n_pages):
        a = round(shown[k][0] * FPS)
        b = frames if k == n_pages - 1 else round(shown[k][1] * FPS)
        if b > a:
            shots.extend(_page_shots(images[k], panels[k], a, b, raster))
    shot_of = [None] * frames
    for a, b, shot in shots:
        for i in range(a, min(b, frames)):
            shot_of[i] = (shot, i - a)
    for i in range(1, frames):  # page times meet exactly; this only guards against rounding
        if shot_of[i] is None and shot_of[i - 1] is not None:
            prev, j = shot_of[i - 1]
            shot_of[i] = (prev, min(j + 1, prev.frames - 1))

    cues = _caption_cues([p.narration for p in specs[:n_pages]], spoken[:n_pages], duration,
                         font)
    cue_of: list[Sprite | None] = [None] * frames
    if overlay == "baked":
        for cue in cues:
            sprite = _caption_sprite(cue, font, raster)
            for i in range(math.ceil(cue.start_s * FPS - 1e-9),
                           min(frames, math.ceil(cue.end_s * FPS - 1e-9))):
                cue_of[i] = sprite

    baked = Compositor(shot_of, [(c,) if c is not None else () for c in cue_of], raster)
    clean = Compositor(shot_of, [()] * frames, raster)
    spans = list(speech) if speech is not None else list(spoken[:n_pages])
    track = snd.Soundtrack(voice=voice, speech=tuple(spans), music=music,
                           duck_db=music_duck_db, target_lufs=target_lufs,
                           true_peak_dbtp=true_peak_dbtp)
    vfilter = ""
    fade_out = 0.0
    if fade:
        start = max(0.0, duration - FADE_S)
        vfilter = f"fade=t=out:st={start:.3f}:d={FADE_S}"
        fade_out = FADE_S
    sources = [str(p.image_path) for p in specs[:n_pages]] + [s for s in (voice, music) if s]
    boxes = [TextBox(c.text, _caption_box(c, font), c.start_s, c.end_s) for c in cues]
    poster_s = (cues[0].start_s + cues[0].end_s) / 2 if cues else 1.0
    done = _deliver(out, frames=frames, duration_s=duration, baked=baked, clean=clean,
                    overlay=overlay, clean_path=clean_path, overlay_png=None,
                    overlay_path=None, soundtrack=track, poster_path=poster_path,
                    poster_s=poster_s, text_boxes=boxes, sources=sources,
                    video_filter=vfilter, fade_out_s=fade_out)

    vtt = srt = None
    if overlay != "baked":
        vtt, srt = out.with_suffix(".vtt"), out.with_suffix(".srt")
        atomic_write_text(vtt, to_vtt(cues))
        atomic_write_text(srt, to_srt(cues))
    parts = {}
    for name, path, alone in (("voice", voice_out, snd.Soundtrack(
            voice=voice, speech=tuple(spans), target_lufs=target_lufs,
            true_peak_dbtp=true_peak_dbtp)), ("music", music_out, snd.Soundtrack(
            music=music, target_lufs=target_lufs, true_peak_dbtp=true_peak_dbtp))):
        parts[name] = (None, None)
        if path is not None and (voice if name == "voice" else music):
            parts[name] = (Path(path), _audio_component(alone, duration, Path(path), fade_out))
    return BodyClip(**done, vtt_path=vtt, srt_path=srt, duration_s=duration,
                    frames=frames, natural_duration_s=round(natural, 3), policy=policy,
                    timing=timing, pages_shown=n_pages, panels=panels[:n_pages], cues=cues,
                    voice_path=parts["voice"][0], music_path=parts["music"][0],
                    voice_loudness=parts["voice"][1], music_loudness=parts["music"][1])


def _audio_component(track: "snd.Soundtrack", duration_s: float, out: Path,
                     fade_out_s: float) -> "snd.Loudness | None":
    """Render one audio component (the voice or the bed alone) as an M4A; its loudness after
    encoding."""
    with snd.temp_folder() as scratch:
        scratch = Path(scratch)
        rendered = snd.render_soundtrack(track, duration_s, scratch)
        if rendered.path is None:  # a silent voice track (or bed): a silent component
            snd.encode_silence(duration_s, out)
            return None
        if fade_out_s > 0:
            _fade_out(rendered.path, fade_out_s)
        snd.encode_m4a(rendered, out)

        def reencode(again: "snd.Rendered") -> None:
            if fade_out_s > 0:
                _fade_out(again.path, fade_out_s)
            snd.encode_m4a(again, out)
        return snd.finish_loudness(track, rendered, duration_s, out, scratch,
                                   reencode=reencode)


def _caption_box(cue: Cue, font: str | None) -> Box:
    """Where a cue's caption lies in the frame (as :func:`_caption_sprite` draws it)."""
    return _caption_sprite(cue, font).box


def _given_panels(page: BodyPage, img: Image.Image, index: int) -> list[Box] | None:
    """A page's given panel boxes as :class:`Box` es (None when empty: the page is panned).

    Raises:
        InputError: a box is not ``(left, top, right, bottom)`` inside the image.
    """
    full = Box(0, 0, img.width, img.height)
    boxes = []
    for k, raw in enumerate(page.panels or []):
        try:
            box = Box(*(float(v) for v in raw))
        except (TypeError, ValueError):
            box = None
        if box is None or box.width < 2 or box.height < 2 or not full.contains(box):
            raise InputError(f"panel {k + 1} {raw!r} is not a box inside the "
                             f"{img.width}x{img.height} image.", file=str(page.image_path),
                             field=f"pages[{index}].panels",
                             fix="give [left, top, right, bottom] boxes, or none.")
        boxes.append(box)
    return boxes or None
