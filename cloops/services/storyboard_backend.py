"""Offline image backend: a readable storyboard JPEG drawn with Pillow, no paid service.

Layer: **services**.

A producer uses it to judge a story's layout before paying for images. Each image carries a
dark banner ``OFFLINE DRAFT · storyboard`` (so nobody mistakes it for final art), the
request's label (``"Page 2 of 4"``, ``"Thumbnail"``) and title, then either

* a comic page: one box per panel, stacked top to bottom, each with the panel number, the
  moment (larger, bold) and the visual anchor, and the narration in a caption box below; or
* a single frame (thumbnail, a character's reference sheet, or a prompt without panels): the
  title big and centred, the prompt (or the annotations' ``body``: a character's appearance on
  a reference sheet card) wrapped smaller beneath it.

When the request carries reference images (the sheets of the characters on a page), a strip
above the caption shows each as a small thumbnail with its label, so a reader can check which
sheets were passed with the page.

The text comes from ``request.annotations`` (``{"title": str, "label": str, "narration": str,
"panels": [{"moment": str, "visualAnchor": str, "panel": int}, ...]}``); with no annotations
the prompt is parsed instead (lines starting with ``Panel N`` become panels). Text never
leaves its box: fonts shrink, then lines are cut with an ellipsis. The background colour is a
soft tint derived from a hash of the title, and rendering is deterministic: the same request
gives byte-identical JPEG bytes.

Fonts are Pillow's built-in scalable font (``ImageFont.load_default(size=...)``, Pillow
>= 10.1); no font files are needed.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .imaging import dimensions_for
from .base import ImageRequest, ImageResult
from .registry import BackendSpec, register

MAX_LONG_SIDE_PX = 1024  # drafts need not be big; hundreds are rendered offline
MIN_SIDE_PX = 16  # never render a degenerate image, whatever the params say
JPEG_QUALITY = 85
BANNER_TEXT = "OFFLINE DRAFT · storyboard"
ELLIPSIS = "…"

# Palette (RGB).
INK = (34, 34, 38)
SOFT_INK = (92, 92, 100)
PAPER = (252, 251, 247)
BANNER_BG = (30, 33, 40)
BANNER_FG = (255, 255, 255)
BANNER_ACCENT = (255, 196, 61)
CAPTION_BG = (255, 244, 204)
BADGE_BG = (34, 34, 38)
BADGE_FG = (255, 255, 255)

# Characters the built-in font lacks, mapped to ones it has.
_REPLACEMENTS = str.maketrans({
    "\u2014": "-", "\u2013": "-", "\u2012": "-", "\u2010": "-", "\u2011": "-",
    "\u2212": "-", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u200b": "",
    "\t": " ",
})
_PANEL_LINE = re.compile(r"^\s*\**\s*panel\s+(\d+)\s*\**\s*[:.)\-–—]?\s*(.*)$", re.IGNORECASE)


# --------------------------------------------------------------------------- fonts and text

@lru_cache(maxsize=256)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Return the built-in scalable font at ``size`` px (cached: loading costs ~1 ms)."""
    return ImageFont.load_default(size=max(1, int(size)))


@lru_cache(maxsize=1)
def _notdef_mask() -> bytes:
    return bytes(_font(32).getmask("\uffff"))


@lru_cache(maxsize=4096)
def _has_glyph(ch: str) -> bool:
    """True when the built-in font draws ``ch`` as something other than its missing box."""
    if ch.isspace() or ord(ch) < 0x7F:
        return True
    return bytes(_font(32).getmask(ch)) != _notdef_mask()


def _clean(text: Any) -> str:
    """Return ``text`` as a one-paragraph string the built-in font can draw.

    Whitespace runs collapse to one space; dashes become ``-``; other missing glyphs become
    ``?`` (rather than a box).
    """
    if text is None:
        return ""
    s = " ".join(str(text).translate(_REPLACEMENTS).split())
    return "".join(ch if _has_glyph(ch) else "?" for ch in s)


_ADVANCES: dict[int, dict[str, float]] = {}


def _text_width(text: str, font: ImageFont.FreeTypeFont) -> float:
    """Estimated width of ``text`` in px: the sum of cached per-character advances.

    About 100x faster than ``font.getlength`` per word; ignores kerning, so callers measure
    finished lines exactly.
    """
    table = _ADVANCES.setdefault(font.size, {})
    total = 0.0
    for ch in text:
        w = table.get(ch)
        if w is None:
            w = table[ch] = font.getlength(ch)
        total += w
    return total


def _line_height(font: ImageFont.FreeTypeFont, spacing: float = 1.18) -> int:
    ascent, descent = font.getmetrics()
    return max(1, round((ascent + descent) * spacing))


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width`` px.

    Words wider than the line are broken between characters. Widths come from per-character
    advances (fast; equal to ``getlength`` with the built-in font's basic layout);
    :func:`_draw_block` still measures each drawn line and cuts one that would overflow.
    """
    space = _text_width(" ", font)
    lines: list[str] = []
    current, current_w = "", 0.0
    for word in text.split(" "):
        if not word:
            continue
        word_w = _text_width(word, font)
        if current and current_w + space + word_w <= width:
            current, current_w = f"{current} {word}", current_w + space + word_w
            continue
        if current:
            lines.append(current)
        while word_w > width and len(word) > 1:
            # break a too-long word at the widest prefix that fits (at least one character)
            cut = 1
            while cut < len(word) and font.getlength(word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
            word_w = _text_width(word, font)
        current, current_w = word, word_w
    if current:
        lines.append(current)
    return lines


def _ellipsize(line: str, font: ImageFont.FreeTypeFont, width: float) -> str:
    """Return ``line`` + an ellipsis, shortened until it fits ``width`` px ("" if nothing fits)."""
    line = line.rstrip(" .,;:")
    while line and font.getlength(line + ELLIPSIS) > width:
        line = line[:-1].rstrip(" .,;:")
    if line:
        return line + ELLIPSIS
    return ELLIPSIS if font.getlength(ELLIPSIS) <= width else ""


@dataclass
class _Block:
    """Text laid out for a box: the font, its lines and the line height (px)."""

    font: ImageFont.FreeTypeFont
    lines: list[str]
    line_h: int

    @property
    def height(self) -> int:
        return len(self.lines) * self.line_h


def _clip(text: str, width: float, height: float, size: int) -> tuple[str, bool]:
    """Cut ``text`` to a prefix that surely overflows a ``width`` x ``height`` px box at
    ``size`` px (so wrapping it costs little); returns ``(text, clipped)``.

    Even the narrowest glyphs (~0.2 em) on lines of ~1.2 em leave fewer than
    ``width * height / (0.24 * size**2)`` characters room.
    """
    limit = int(max(width, 1) * max(height, 1) / (0.24 * size * size)) + 64
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def _truncate(text: str, size: int, width: float, max_lines: int,
              clipped: bool = False) -> _Block:
    """Wrap ``text`` at ``size`` px and keep at most ``max_lines`` lines, ending in an ellipsis
    (also when ``clipped`` says ``text`` is already a cut-off prefix)."""
    font = _font(size)
    lines = _wrap(text, font, width)
    if len(lines) > max_lines or (clipped and lines):
        lines = lines[:max_lines]
        if lines:
            lines[-1] = _ellipsize(lines[-1], font, width)
    return _Block(font, [ln for ln in lines if ln], _line_height(font))


def _fit(text: str, width: float, height: float, max_size: int, min_size: int) -> _Block:
    """Lay ``text`` out in a ``width`` x ``height`` px box.

    Uses the largest font size in ``[min_size, max_size]`` at which every line fits; failing
    that, ``min_size`` with the overflow cut off by an ellipsis. The result never exceeds the
    box (it is empty when not even one line fits).
    """
    min_size = max(1, min(min_size, max_size))
    if not text or width < 1 or height < 1:
        return _Block(_font(min_size), [], _line_height(_font(min_size)))
    text, clipped = _clip(text, width, height, min_size)
    if clipped:  # cannot fit at any size
        return _truncate(text, min_size, width,
                         int(height // _line_height(_font(min_size))), clipped=True)
    lo, hi, best = min_size, max_size, None
    while lo <= hi:  # binary search: larger fonts need more room
        mid = (lo + hi) // 2
        font = _font(mid)
        block = _Block(font, _wrap(text, font, width), _line_height(font))
        if block.height <= height:
            best, lo = block, mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    return _truncate(text, min_size, width, int(height // _line_height(_font(min_size))))


def _fit_pair(first: str, second: str, width: float, height: float, max_size: int,
              min_size: int, ratio: float = 0.78) -> tuple[_Block, _Block, int]:
    """Lay out two texts (``first`` large, ``second`` at ``ratio`` of its size but never below
    ``min_size``) in one box.

    Uses the largest size in ``[min_size, max_size]`` at which both fit; returns
    ``(first_block, second_block, gap_px)``, whose heights plus the gap never exceed
    ``height``. At the minimum size the first text keeps up to 60% of the lines.
    """
    min_size = max(1, min(min_size, max_size))
    first, clipped1 = _clip(first, width, height, min_size)
    second, clipped2 = _clip(second, width, height, min_size)

    def layout(size: int) -> tuple[_Block, _Block, int]:
        f1, f2 = _font(size), _font(max(min_size, round(size * ratio)))
        b1 = _Block(f1, _wrap(first, f1, width) if first else [], _line_height(f1))
        b2 = _Block(f2, _wrap(second, f2, width) if second else [], _line_height(f2))
        gap = round(size * 0.35) if b1.lines and b2.lines else 0
        return b1, b2, gap

    if not (clipped1 or clipped2):
        lo, hi, best = min_size, max_size, None
        while lo <= hi:  # binary search: larger fonts need more room
            mid = (lo + hi) // 2
            b1, b2, gap = layout(mid)
            if b1.height + gap + b2.height <= height:
                best, lo = (b1, b2, gap), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return best
    b1, b2, gap = layout(min_size)
    if not b2.lines:
        return _truncate(first, min_size, width, int(height // b1.line_h), clipped1), b2, 0
    if not b1.lines:
        return b1, _truncate(second, b2.font.size, width, int(height // b2.line_h),
                             clipped2), 0
    room = height - gap
    keep1 = min(len(b1.lines), max(1, int(room * 0.6 // b1.line_h)))
    if keep1 * b1.line_h > height:  # not even one line of the first text fits
        return _Block(b1.font, [], b1.line_h), _Block(b2.font, [], b2.line_h), 0
    first_block = _truncate(first, min_size, width, keep1, clipped1)
    keep2 = int((room - first_block.height) // b2.line_h)
    if keep2 < 1:
        return _truncate(first, min_size, width, int(height // b1.line_h), clipped1), \
            _Block(b2.font, [], b2.line_h), 0
    return first_block, _truncate(second, b2.font.size, width, keep2, clipped2), gap


def _draw_block(draw: ImageDraw.ImageDraw, block: _Block, x: float, y: float, width: float,
                fill: tuple[int, int, int], *, center: bool = False, bold: bool = False) -> None:
    """Draw ``block`` with its top-left at ``(x, y)``; ``center`` centres each line in ``width``."""
    # Bold is faked by drawing the line twice, offset 1-2 px (cleaner than a stroke at small
    # sizes); the offset stays inside the box padding.
    offsets = (0, max(1, round(block.font.size / 30))) if bold and block.font.size >= 11 else (0,)
    for i, line in enumerate(block.lines):
        line_w = block.font.getlength(line)
        if line_w > width:  # safety net: kerning made the wrap estimate too small
            line = _ellipsize(line, block.font, width)
            line_w = block.font.getlength(line)
        lx = x + (width - line_w) / 2 if center else x
        for dx in offsets:
            draw.text((lx + dx, y + i * block.line_h), line, font=block.font, fill=fill)


# --------------------------------------------------------------------------- content

@dataclass
class _Panel:
    number: str
    moment: str
    anchor: str


@dataclass
class _Content:
    title: str
    label: str
    narration: str
    panels: list[_Panel]
    body: str  # prompt text for the single-frame layout


def _content(request: ImageRequest) -> _Content:
    """Extract what to draw from the annotations, or from the prompt when there are none."""
    ann = request.annotations
    if ann is not None:
        panels = []
        raw = ann.get("panels")
        if isinstance(raw, list):
            for i, p in enumerate(raw, start=1):
                if isinstance(p, dict):
                    num = p.get("panel")
                    panels.append(_Panel(_clean(num if num not in (None, "") else i),
                                         _clean(p.get("moment")), _clean(p.get("visualAnchor"))))
                else:
                    panels.append(_Panel(str(i), _clean(p), ""))
        body = ann.get("body")
        return _Content(_clean(ann.get("title")), _clean(ann.get("label")),
                        _clean(ann.get("narration")), panels,
                        _clean(body if body else request.prompt))
    # No annotations: "Panel N: ..." lines become panels (following lines continue them).
    panels, intro = [], []
    for line in request.prompt.splitlines():
        m = _PANEL_LINE.match(line)
        if m:
            panels.append(_Panel(m.group(1), m.group(2).strip(), ""))
        elif panels:
            panels[-1].moment = f"{panels[-1].moment} {line.strip()}".strip()
        else:
            intro.append(line)
    for p in panels:
        p.moment = _clean(p.moment)
    return _Content("", "", "", panels, _clean(" ".join(intro) if panels else request.prompt))


def _background(key: str) -> tuple[int, int, int]:
    """A soft pastel derived from a hash of ``key`` (the title): same key, same colour."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    sat = 0.20 + digest[2] / 255 * 0.15
    val = 0.90 + digest[3] / 255 * 0.06
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


def capped_size(params: dict) -> tuple[int, int]:
    """Return the ``(width_px, height_px)`` to render for an image model's ``params``.

    The model's own size (seedream ``size``/``aspect_ratio``/``width``/``height``, nano-banana
    ``resolution``) scaled down, keeping the aspect ratio, so the long side is at most
    :data:`MAX_LONG_SIDE_PX`.
    """
    w, h = dimensions_for(params.get("size") or params.get("resolution"),
                          params.get("aspect_ratio"), width=params.get("width"),
                          height=params.get("height"))
    w, h = max(1, int(w)), max(1, int(h))
    scale = min(1.0, MAX_LONG_SIDE_PX / max(w, h))
    return max(MIN_SIDE_PX, round(w * scale)), max(MIN_SIDE_PX, round(h * scale))


# --------------------------------------------------------------------------- rendering

def render_storyboard(request: ImageRequest) -> tuple[bytes, int, int]:
    """Render ``request`` as a storyboard; returns ``(jpeg_bytes, width_px, height_px)``."""
    width, height = capped_size(request.params or {})
    c = _content(request)
    img = Image.new("RGB", (width, height), _background(c.title or c.body))
    draw = ImageDraw.Draw(img)

    base = min(width, height)
    k = base / 576  # 1.0 for a 576 x 1024 page; every size below scales with it
    pad = max(2, round(14 * k))
    border = max(1, round(2 * k))
    min_font = max(6, round(11 * k))

    # Banner: OFFLINE DRAFT · storyboard  ...  label
    banner_h = max(8, round(36 * k))
    draw.rectangle((0, 0, width, banner_h), fill=BANNER_BG)
    label_room = 0.0
    if c.label:
        label = _fit(c.label, width * 0.4, banner_h * 0.8, round(17 * k), min_font)
        if label.lines:
            lw = label.font.getlength(label.lines[0])
            _draw_block(draw, _Block(label.font, label.lines[:1], label.line_h),
                        width - pad - lw, (banner_h - label.line_h) / 2, lw, BANNER_ACCENT,
                        bold=True)
            label_room = lw + pad
    tag = _fit(BANNER_TEXT, width - 2 * pad - label_room, banner_h * 0.8, round(16 * k), 1)
    if tag.lines:
        _draw_block(draw, _Block(tag.font, tag.lines[:1], tag.line_h), pad,
                    (banner_h - tag.line_h) / 2, width, BANNER_FG, bold=True)
    top = banner_h + pad
    bottom = height - pad
    inner_w = width - 2 * pad

    # Narration caption box at the bottom.
    if c.narration:
        cap_pad = max(2, round(10 * k))
        text_w = inner_w - 2 * cap_pad
        pref = round(16 * k)
        need = _Block(_font(pref), _wrap(c.narration, _font(pref), text_w),
                      _line_height(_font(pref))).height + 2 * cap_pad
        cap_h = min(need, round((bottom - top) * 0.26))
        if cap_h > 2 * cap_pad:
            cap_top = bottom - cap_h
            draw.rectangle((pad, cap_top, width - pad, bottom), fill=CAPTION_BG, outline=INK,
                           width=border)
            block = _fit(c.narration, text_w, cap_h - 2 * cap_pad, pref, min_font)
            _draw_block(draw, block, pad + cap_pad, cap_top + cap_pad, text_w, INK)
            bottom = cap_top - pad

    if request.references and bottom - top > 8:
        strip_h = min(round((bottom - top) * 0.2), round(150 * k))
        _draw_references(img, draw, request.references, pad, bottom - strip_h, width - pad,
                         bottom, k, border, min_font)
        bottom -= strip_h + pad

    if c.panels:
        if c.title:
            title_h = round(46 * k)
            block = _fit(c.title, inner_w, title_h, round(26 * k), min_font)
            _draw_block(draw, block, pad, top + (title_h - block.height) / 2, inner_w, INK,
                        bold=True)
            top += title_h + round(pad * 0.6)
        _draw_panels(draw, c.panels, pad, top, width - pad, bottom, k, border, min_font)
    else:
        _draw_frame(draw, c, pad, top, width - pad, bottom, k, border, min_font)

    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), width, height


def _draw_panels(draw: ImageDraw.ImageDraw, panels: list[_Panel], left: int, top: float,
                 right: int, bottom: float, k: float, border: int, min_font: int) -> None:
    """Stack one box per panel between ``top`` and ``bottom`` (px), number + moment + anchor."""
    n = len(panels)
    gap = max(1, round(10 * k))
    row_h = (bottom - top - gap * (n - 1)) / n
    if row_h < 4:
        return
    ipad = max(2, round(10 * k))
    for i, p in enumerate(panels):
        y0 = top + i * (row_h + gap)
        y1 = y0 + row_h
        draw.rectangle((left, round(y0), right, round(y1)), fill=PAPER, outline=INK,
                       width=border)
        inner_h = row_h - 2 * ipad
        if inner_h < 2:
            continue
        badge = min(round(34 * k), inner_h)
        bx, by = left + ipad, y0 + ipad
        draw.rectangle((bx, round(by), bx + badge, round(by + badge)), fill=BADGE_BG)
        num = _fit(p.number, badge * 0.8, badge * 2, round(badge * 0.6), 1)  # width-bound
        if num.lines:  # centred on the badge (anchor "mm": middle of the text)
            for dx in (0, 1) if num.font.size >= 11 else (0,):
                draw.text((bx + badge / 2 + dx, by + badge / 2), num.lines[0], font=num.font,
                          fill=BADGE_FG, anchor="mm")
        tx = bx + badge + ipad
        text_w = right - ipad - tx
        anchor = f"Visual: {p.anchor}" if p.anchor else ""
        b1, b2, g = _fit_pair(p.moment, anchor, text_w, inner_h, round(24 * k), min_font)
        _draw_block(draw, b1, tx, y0 + ipad, text_w, INK, bold=True)
        _draw_block(draw, b2, tx, y0 + ipad + b1.height + g, text_w, SOFT_INK)


def _draw_references(img: Image.Image, draw: ImageDraw.ImageDraw, refs, left: int, top: float,
                     right: int, bottom: float, k: float, border: int, min_font: int) -> None:
    """A strip of the request's reference images between ``top`` and ``bottom`` (px): each a
    thumbnail with its label under it, left to right in the order the prompt names them."""
    draw.rectangle((left, round(top), right, round(bottom)), fill=PAPER, outline=INK,
                   width=border)
    ipad = max(2, round(6 * k))
    n = len(refs)
    cell_w = (right - left - ipad * (n + 1)) / n
    label_h = max(min_font + 2, round(18 * k))
    thumb_h = bottom - top - 2 * ipad - label_h
    if cell_w < 4 or thumb_h < 4:
        return
    for i, ref in enumerate(refs):
        x0 = left + ipad + i * (cell_w + ipad)
        try:
            thumb = Image.open(io.BytesIO(ref.jpeg)).convert("RGB")
            thumb.thumbnail((max(1, int(cell_w)), max(1, int(thumb_h))), Image.Resampling.BICUBIC)
            img.paste(thumb, (round(x0 + (cell_w - thumb.width) / 2), round(top + ipad)))
        except (OSError, ValueError):  # not an image: the label still says which it was
            draw.rectangle((round(x0), round(top + ipad), round(x0 + cell_w),
                            round(top + ipad + thumb_h)), outline=SOFT_INK, width=border)
        label = _fit(f"{i + 1}. {ref.label}", cell_w, label_h, round(14 * k), min_font)
        if label.lines:
            _draw_block(draw, _Block(label.font, label.lines[:1], label.line_h), x0,
                        bottom - ipad - label_h, cell_w, INK, center=True)


def _draw_frame(draw: ImageDraw.ImageDraw, c: _Content, left: int, top: float, right: int,
                bottom: float, k: float, border: int, min_font: int) -> None:
    """One large frame: the title big and centred, the prompt wrapped smaller beneath it."""
    if bottom - top < 4:
        return
    draw.rectangle((left, round(top), right, round(bottom)), fill=PAPER, outline=INK,
                   width=border)
    ipad = max(2, round(22 * k))
    text_w = right - left - 2 * ipad
    text_h = bottom - top - 2 * ipad
    if text_w < 2 or text_h < 2:
        return
    title = (_fit(c.title, text_w, text_h * 0.45, round(56 * k), min_font) if c.title
             else _Block(_font(min_font), [], 0))
    gap = round(24 * k) if title.lines and c.body else 0
    room = text_h - title.height - gap
    body = (_fit(c.body, text_w, room, round(18 * k), min_font) if c.body and room > 0
            else _Block(_font(min_font), [], 0))
    total = title.height + gap + body.height
    y = top + ipad + (text_h - total) / 2
    _draw_block(draw, title, left + ipad, y, text_w, INK, center=True, bold=True)
    _draw_block(draw, body, left + ipad, y + title.height + gap, text_w, SOFT_INK, center=True)


# --------------------------------------------------------------------------- backend

class StoryboardBackend:
    """Offline image backend: renders a storyboard draft instead of calling a paid service.

    Attributes:
        name: ``"storyboard"``.
        offline: True.
        uses_annotations: True (the layout comes from ``request.annotations``).
    """

    name = "storyboard"
    offline = True
    uses_annotations = True

    def generate_image(self, request: ImageRequest) -> ImageResult:
        """Render ``request`` as a storyboard JPEG (at most :data:`MAX_LONG_SIDE_PX` px long).

        Returns ``ImageResult(jpeg, width_px, height_px, images_billed=0, draft=True)``.
        """
        jpeg, width, height = render_storyboard(request)
        return ImageResult(jpeg=jpeg, width_px=width, height_px=height, images_billed=0,
                           draft=True, references_used=len(request.references))


SPEC = register(BackendSpec(name="storyboard", service="image", offline=True,
                            factory=lambda section, env: StoryboardBackend(),
                            describe="offline storyboard renderer (Pillow)"))
