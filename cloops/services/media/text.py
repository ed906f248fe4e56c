"""Text for vertical clips, drawn with Pillow: fonts, wrapping, fitting and overlay boxes.

Layer: **services**.

Text is drawn by Pillow rather than by FFmpeg's ``drawtext``/libass so that it needs no font
files on the machine, comes out pixel-identical everywhere, and its box is known exactly (the
tests check that every text pixel lies inside :data:`~cloops.services.media.layout.SAFE_AREA`).

The default font is Pillow's built-in scalable font (Aileron Regular, ``ImageFont.load_default
(size=...)``, Pillow >= 10.1; SIL Open Font License). It covers ASCII and typographic quotes but
not accented letters: those are drawn without their accents (``é`` -> ``e``) and anything else
it lacks becomes ``?``. Pass ``font_path`` (a TrueType/OpenType file) for other scripts.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ...core.errors import InputError
from .layout import Box

ELLIPSIS = "…"
_REPLACEMENTS = str.maketrans({
    "\u2014": "-", "\u2013": "-", "\u2012": "-", "\u2010": "-", "\u2011": "-", "\u2212": "-",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u200b": "", "\t": " ", "\u00df": "ss",
    "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o",
    "\u00d8": "O",
})


@dataclass(frozen=True)
class TextStyle:
    """How a block of text looks: white letters with a dark outline on a translucent box.

    Attributes:
        fill: letter colour, RGBA.
        stroke: outline colour, RGBA; the outline is ``stroke_ratio`` of the font size wide.
        backing: colour of the rounded box behind the text, RGBA (alpha 0 = no box).
        pad_px: space between the text and the edge of the box.
        line_spacing: line height as a multiple of the font's ascent + descent.
    """

    fill: tuple[int, int, int, int] = (255, 255, 255, 255)
    stroke: tuple[int, int, int, int] = (0, 0, 0, 255)
    stroke_ratio: float = 1 / 16
    backing: tuple[int, int, int, int] = (0, 0, 0, 150)
    pad_px: int = 28
    radius_px: int = 24
    line_spacing: float = 1.12


HOOK_STYLE = TextStyle()
CAPTION_STYLE = TextStyle(backing=(0, 0, 0, 170), pad_px=22, radius_px=18,
                          stroke_ratio=1 / 20)


@lru_cache(maxsize=128)
def load_font(size_px: int, font_path: str | None = None) -> ImageFont.FreeTypeFont:
    """Return the font at ``size_px`` pixels: ``font_path`` or Pillow's built-in font.

    Raises:
        InputError: ``font_path`` cannot be read as a TrueType/OpenType font.
    """
    size_px = max(1, int(size_px))
    if font_path is None:
        return ImageFont.load_default(size=size_px)
    try:
        return ImageFont.truetype(str(font_path), size_px)
    except OSError as exc:
        raise InputError(f"cannot load the font ({exc}).", file=str(font_path),
                         fix="give a TrueType/OpenType font file, or no font to use the "
                             "built-in one.") from None


@lru_cache(maxsize=8)
def _notdef(font_path: str | None) -> bytes:
    return bytes(load_font(32, font_path).getmask("\uffff"))


@lru_cache(maxsize=4096)
def _has_glyph(ch: str, font_path: str | None) -> bool:
    if ch == " " or 0x20 < ord(ch) < 0x7F:
        return True
    return bytes(load_font(32, font_path).getmask(ch)) != _notdef(font_path)


def clean_text(text: str, font_path: str | None = None) -> str:
    """Return ``text`` as one line the font can draw.

    Whitespace runs become one space; dashes become ``-``; letters the font lacks lose their
    accents (``é`` -> ``e``) or become ``?``.
    """
    s = " ".join(str(text or "").translate(_REPLACEMENTS).split())
    out = []
    for ch in s:
        if _has_glyph(ch, font_path):
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch)
                       if not unicodedata.combining(c))
        out.append(base if base and all(_has_glyph(c, font_path) for c in base) else "?")
    return "".join(out)


def wrap(text: str, font: ImageFont.FreeTypeFont, width_px: float,
         stroke_px: int = 0) -> list[str]:
    """Greedy word wrap of ``text`` into lines at most ``width_px`` wide (outline included).

    A word wider than a line is broken between characters.
    """
    def fits(s: str) -> bool:
        return font.getlength(s) + 2 * stroke_px <= width_px

    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        while not fits(word) and len(word) > 1:
            cut = 1
            while cut < len(word) - 1 and fits(word[:cut + 1]):
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


@dataclass(frozen=True)
class TextBlock:
    """Text laid out for a box: the font, its size, its lines, the outline and line height."""

    font: ImageFont.FreeTypeFont
    size_px: int
    lines: tuple[str, ...]
    stroke_px: int
    line_h_px: int

    @property
    def height_px(self) -> int:
        return len(self.lines) * self.line_h_px

    @property
    def width_px(self) -> int:
        if not self.lines:
            return 0
        return int(max(self.font.getlength(ln) for ln in self.lines)) + 1 + 2 * self.stroke_px


def block(lines: tuple[str, ...], size_px: int, style: TextStyle,
          font_path: str | None = None) -> TextBlock:
    """Return ``lines`` (already wrapped) as a block at ``size_px`` in ``style``."""
    font = load_font(size_px, font_path)
    stroke = max(1, round(size_px * style.stroke_ratio)) if style.stroke_ratio > 0 else 0
    ascent, descent = font.getmetrics()
    line_h = max(1, round((ascent + descent) * style.line_spacing)) + stroke
    return TextBlock(font, size_px, tuple(lines), stroke, line_h)


def layout(text: str, size_px: int, width_px: float, style: TextStyle,
           font_path: str | None = None) -> TextBlock:
    """Lay ``text`` out at ``size_px`` in lines at most ``width_px`` wide."""
    empty = block((), size_px, style, font_path)
    lines = wrap(text, empty.font, width_px, empty.stroke_px)
    return TextBlock(empty.font, size_px, tuple(lines), empty.stroke_px, empty.line_h_px)


def _ellipsize(line: str, font: ImageFont.FreeTypeFont, width_px: float, stroke: int) -> str:
    line = line.rstrip(" .,;:")
    while line and font.getlength(line + ELLIPSIS) + 2 * stroke > width_px:
        line = line[:-1].rstrip(" .,;:")
    return line + ELLIPSIS if line else ELLIPSIS


def fit(text: str, area: Box, style: TextStyle, *, max_size_px: int, min_size_px: int,
        max_lines: int, font_path: str | None = None) -> TextBlock:
    """Lay ``text`` out at the largest size in ``[min_size_px, max_size_px]`` whose lines,
    at most ``max_lines``, fit ``area`` together with the box padding.

    At ``min_size_px`` the overflow is cut and the last line ends in an ellipsis.
    """
    width = area.width - 2 * style.pad_px
    height = area.height - 2 * style.pad_px
    lo, hi, best = min_size_px, max_size_px, None
    while lo <= hi:  # larger fonts need more room: binary search
        mid = (lo + hi) // 2
        block = layout(text, mid, width, style, font_path)
        if len(block.lines) <= max_lines and block.height_px <= height:
            best, lo = block, mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    block = layout(text, min_size_px, width, style, font_path)
    keep = max(1, min(max_lines, int(height // block.line_h_px)))
    lines = list(block.lines[:keep])
    lines[-1] = _ellipsize(lines[-1], block.font, width, block.stroke_px)
    return TextBlock(block.font, block.size_px, tuple(lines), block.stroke_px, block.line_h_px)


def draw_block(block: TextBlock, area: Box, style: TextStyle, *,
               anchor: str = "top") -> tuple[Image.Image, Box]:
    """Draw ``block`` centred across ``area``, at its top or bottom (``anchor``).

    Returns ``(rgba, box)``: the backing box with the text on it, and where it goes in the
    frame (integer pixels, always inside ``area``). Nothing is drawn outside the box.
    """
    if anchor not in ("top", "bottom"):
        raise ValueError(f"anchor must be 'top' or 'bottom', not {anchor!r}")
    pad = style.pad_px
    w = min(int(area.width), block.width_px + 2 * pad)
    h = min(int(area.height), block.height_px + 2 * pad)
    left = int(round(area.left + (area.width - w) / 2))
    top = int(area.top) if anchor == "top" else int(area.bottom) - h
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    if style.backing[3] > 0:
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=style.radius_px, fill=style.backing)
    for i, line in enumerate(block.lines):
        line_w = block.font.getlength(line)
        x = (w - line_w) / 2
        y = pad + i * block.line_h_px + block.stroke_px
        draw.text((x, y), line, font=block.font, fill=style.fill,
                  stroke_width=block.stroke_px, stroke_fill=style.stroke)
    return img, Box(left, top, left + w, top + h)


def full_frame(rgba: Image.Image, box: Box, size: tuple[int, int]) -> Image.Image:
    """Return a transparent RGBA image of ``size`` with ``rgba`` placed at ``box``."""
    frame = Image.new("RGBA", size, (0, 0, 0, 0))
    frame.paste(rgba, (int(box.left), int(box.top)))
    return frame


def font_key(font_path: str | Path | None) -> str | None:
    """The cache key of a font choice (its path as a string, or None for the built-in)."""
    return None if font_path is None else str(font_path)
