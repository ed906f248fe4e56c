"""Find the panels of a comic page: the boxes between its light gutters, in reading order.

Layer: **services**.

The method is a recursive XY cut: a *gutter* is a full row (or column) of the region being cut
whose pixels are all light and nearly uniform - the white or pastel space between panels. Rows
cut the page into bands, columns cut each band into cells, and so on, four levels deep. Cells
too small or too thin to be panels (a title line, a caption strip, a page number) are
dropped. This finds
the panels of grid layouts separated by clean gutters - what image models draw when asked for
"panels separated by white gutters", and the offline storyboard pages of this project (three
panels stacked top to bottom). Panels that overlap, bleed to the edge or are separated by
drawn lines only are not found: :func:`find_panels` then returns None and the caller shows the
page another way (the body clip pans down it).
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image

from .layout import Box

ImageLike = Union[str, os.PathLike, Image.Image]

ANALYSIS_LONG_SIDE_PX = 600  # gutters are >= ~0.5 % of a page: still >= 3 px at this size
LIGHT_MIN = 150  # a gutter pixel's luma is at least this (white or a pastel)
UNIFORM_MAX = 18  # ... and within this many levels of its line's median
# share of a line's pixels allowed to break those rules (dust); below the share of a panel's
# top and bottom borders in one of its columns, so blank space inside a panel is no gutter
NOISE_SHARE = 0.003
MIN_GUTTER_PX = 2  # at analysis size
MIN_PANEL_SHARE = 0.08  # a panel is at least this share of the page's width and of its height
MIN_PANEL_AREA = 0.03  # ... and of its area
MAX_ASPECT = 5.0  # wider (or taller) than 5:1 is a strip: a caption box or a title, not a panel
MIN_COVERAGE = 0.4  # the panels found cover at least this share of the page
MAX_DEPTH = 4


def _luma(image: ImageLike) -> tuple[np.ndarray, float]:
    """The page as a small luma array and the factor back to source pixels."""
    if isinstance(image, Image.Image):
        img = image
    else:
        img = Image.open(image)
        img.load()
    w, h = img.size
    scale = min(1.0, ANALYSIS_LONG_SIDE_PX / max(w, h))
    gray = img.convert("L")
    if scale < 1.0:
        gray = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                           Image.Resampling.BOX)
    return np.asarray(gray, dtype=np.int16), 1.0 / scale


def _gutter_lines(block: np.ndarray, axis: int) -> np.ndarray:
    """For each line of ``block`` (rows when ``axis`` is 1, columns when 0): is it a gutter?"""
    median = np.median(block, axis=axis, keepdims=True)
    bad = (block < LIGHT_MIN) | (np.abs(block - median) > UNIFORM_MAX)
    share = bad.mean(axis=axis)
    return share <= NOISE_SHARE


def _runs(content: np.ndarray) -> list[tuple[int, int]]:
    """Runs ``(start, end)`` of True in ``content``; gaps narrower than MIN_GUTTER_PX are
    hairlines inside a run, not gutters."""
    runs: list[tuple[int, int]] = []
    start = last = None
    for i in np.flatnonzero(content):
        i = int(i)
        if start is None:
            start = i
        elif i - last - 1 >= MIN_GUTTER_PX:
            runs.append((start, last + 1))
            start = i
        last = i
    if start is not None:
        runs.append((start, last + 1))
    return runs


def _split(lum: np.ndarray, box: tuple[int, int, int, int],
           axis: int) -> list[tuple[int, int, int, int]]:
    """Cut ``box`` (l, t, r, b) at its gutters: rows into bands (``axis`` 0) or columns into
    cells (``axis`` 1)."""
    l, t, r, b = box
    block = lum[t:b, l:r]
    # a row is a gutter when every pixel along it (axis 1 of the block) is
    content = ~_gutter_lines(block, axis=1 if axis == 0 else 0)
    if axis == 0:
        return [(l, t + s, r, t + e) for s, e in _runs(content)]
    return [(l + s, t, l + e, b) for s, e in _runs(content)]


def _xy_cut(lum: np.ndarray, box: tuple[int, int, int, int], depth: int,
            out: list[tuple[int, int, int, int]]) -> None:
    """Append the leaves of ``box`` to ``out`` in reading order (rows first, then columns)."""
    trimmed = _trim(lum, box)
    if trimmed is None:
        return
    if depth < MAX_DEPTH:
        for axis in (0, 1):
            pieces = _split(lum, trimmed, axis)
            if len(pieces) > 1:
                for piece in pieces:
                    _xy_cut(lum, piece, depth + 1, out)
                return
    out.append(trimmed)


def _trim(lum: np.ndarray,
          box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """``box`` without the gutter lines on its edges (None when it is all gutter)."""
    l, t, r, b = box
    block = lum[t:b, l:r]
    rows = np.flatnonzero(~_gutter_lines(block, axis=1))
    cols = np.flatnonzero(~_gutter_lines(block, axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    return l + int(cols[0]), t + int(rows[0]), l + int(cols[-1]) + 1, t + int(rows[-1]) + 1


def find_panels(image: ImageLike) -> list[Box] | None:
    """Find the panels of a comic page, in reading order (rows top to bottom, then left to
    right within a row).

    ``image`` is a path or a Pillow image. Returns integer boxes in the image's own pixels, or
    None when fewer than two panels are found or they cover less than 40 % of the page (a
    splash page, full-bleed art, a photo).

    Raises:
        OSError: the file cannot be read as an image (``PIL.UnidentifiedImageError`` is one).
    """
    lum, back = _luma(image)
    h, w = lum.shape
    leaves: list[tuple[int, int, int, int]] = []
    _xy_cut(lum, (0, 0, w, h), 0, leaves)
    panels = []
    for l, t, r, b in leaves:
        pw, ph = r - l, b - t
        if (pw < MIN_PANEL_SHARE * w or ph < MIN_PANEL_SHARE * h
                or pw * ph < MIN_PANEL_AREA * w * h
                or max(pw / ph, ph / pw) > MAX_ASPECT):
            continue
        panels.append((l, t, r, b))
    if len(panels) < 2:
        return None
    if sum((r - l) * (b - t) for l, t, r, b in panels) < MIN_COVERAGE * w * h:
        return None
    src_w, src_h = round(w * back), round(h * back)
    boxes = []
    for l, t, r, b in panels:
        box = Box(int(l * back), int(t * back), int(np.ceil(r * back)), int(np.ceil(b * back)))
        boxes.append(Box(*box.clamp(src_w, src_h)))
    return boxes
