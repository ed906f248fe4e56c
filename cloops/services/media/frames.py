"""Frames of a clip: camera moves over an image (shots) and text composited on them, as the
raw RGBX buffers FFmpeg reads.

Layer: **services**.

A :class:`Shot` is a camera window over one image moving from a start box to an end box; the
window of each frame is computed from the frame number alone and resampled by Pillow from a
float box, so a push-in or a pan moves by sub-pixel steps: no jitter, unlike FFmpeg's
``zoompan``, which rounds its window to whole source pixels unless the input is upscaled
first (BRIEF.md "Rendering"). A :class:`Compositor` turns shots and text into frame buffers,
redrawing only the rows where the picture moves.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageFilter

from .layout import FRAME_H_PX, FRAME_W_PX, Box, cover_window

FRAME_ASPECT = FRAME_W_PX / FRAME_H_PX


def backdrop(img: Image.Image, region: Box) -> Image.Image:
    """A blurred, darkened copy of ``region`` filling the frame (computed once per shot)."""
    window = cover_window(region, FRAME_ASPECT)
    small = img.resize((FRAME_W_PX // 8, FRAME_H_PX // 8), Image.Resampling.BOX,
                       box=tuple(window))
    small = small.filter(ImageFilter.GaussianBlur(6))
    big = small.resize((FRAME_W_PX, FRAME_H_PX), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(big).enhance(0.42)


def ease(t: float) -> float:
    """Smooth start and stop (sine ease-in-out) for pans."""
    return 0.5 - 0.5 * math.cos(math.pi * t)


class Shot:
    """A camera move over one image: the window goes from ``start`` to ``end`` (boxes in the
    image's pixels) over ``frames`` frames, drawn into ``dest`` of the frame.

    The image is resampled once (Lanczos) so that the window at its smallest maps about 1:1 to
    ``dest``; each frame is then one bilinear resample of an exact float window.
    """

    def __init__(self, img: Image.Image, start: Box, end: Box, dest: Box, frames: int, *,
                 backdrop: Image.Image | None, eased: bool):
        self.frames = max(1, frames)
        self.dest = dest.rounded()
        self.backdrop = backdrop
        self.eased = eased
        union = Box(min(start.left, end.left), min(start.top, end.top),
                    max(start.right, end.right), max(start.bottom, end.bottom))
        union = Box(math.floor(union.left) - 2, math.floor(union.top) - 2,
                    math.ceil(union.right) + 2, math.ceil(union.bottom) + 2
                    ).clamp(img.width, img.height)
        scale = self.dest.width / min(start.width, end.width)
        size = (max(1, round(union.width * scale)), max(1, round(union.height * scale)))
        self.image = img.resize(size, Image.Resampling.LANCZOS, box=tuple(union))
        sx, sy = size[0] / union.width, size[1] / union.height
        self.start = Box((start.left - union.left) * sx, (start.top - union.top) * sy,
                         (start.right - union.left) * sx, (start.bottom - union.top) * sy)
        self.end = Box((end.left - union.left) * sx, (end.top - union.top) * sy,
                       (end.right - union.left) * sx, (end.bottom - union.top) * sy)

    def window(self, i: int) -> Box:
        """The window of frame ``i`` (0-based within the shot), in the resampled image."""
        t = i / (self.frames - 1) if self.frames > 1 else 0.0
        if self.eased:
            t = ease(t)
        w, h = self.image.size
        box = Box(*(a + (b - a) * t for a, b in zip(self.start, self.end)))
        return box.clamp(w, h)

    def piece(self, i: int) -> Image.Image:
        """What the window of frame ``i`` shows, resampled to the size of ``dest``."""
        d = self.dest
        return self.image.resize((int(d.width), int(d.height)), Image.Resampling.BILINEAR,
                                 box=tuple(self.window(i)))


@dataclass(frozen=True)
class Sprite:
    """Text ready to composite: RGB, its alpha mask and where it goes."""

    rgb: Image.Image
    mask: Image.Image
    box: Box

    @classmethod
    def of(cls, rgba: Image.Image, box: Box) -> "Sprite":
        return cls(rgba.convert("RGB"), rgba.getchannel("A"), box)

    def onto(self, frame: Image.Image) -> None:
        frame.paste(self.rgb, (int(self.box.left), int(self.box.top)), self.mask)


class Compositor:
    """Frames as bytes, cheaply: only the rows the camera moves in change from frame to frame.

    For each (shot, texts) pair the still part of the frame - backdrop plus text - is drawn
    once (a few are kept); a frame is then three buffers: the still rows above the shot's
    ``dest``, the band of ``dest``'s rows with this frame's picture (and any text over it),
    and the still rows below. FFmpeg reads them as one 1080x1920 frame of RGBX pixels (Pillow's own layout of an RGB
    image: copied out without repacking, and converted to YUV faster than packed RGB).
    """

    def __init__(self, shots: list[tuple["Shot", int]], sprites: list[tuple["Sprite", ...]]):
        self.shots = shots  # per frame: (shot, frame within the shot)
        self.sprites = sprites  # per frame: the texts shown
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def _still(self, shot: "Shot", sprites: tuple["Sprite", ...]) -> tuple[bytes, Image.Image]:
        key = (id(shot), tuple(id(s) for s in sprites))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        frame = (shot.backdrop.copy() if shot.backdrop is not None
                 else Image.new("RGB", (FRAME_W_PX, FRAME_H_PX)))
        for sprite in sprites:
            sprite.onto(frame)
        d = shot.dest
        band = frame.crop((0, int(d.top), FRAME_W_PX, int(d.bottom)))
        still = (frame.tobytes("raw", "RGBX"), band)
        with self._lock:
            self._cache[key] = still
            while len(self._cache) > 6:  # frames are made in order, a few at a time
                self._cache.popitem(last=False)
        return still

    def frame(self, i: int) -> tuple[memoryview, ...]:
        """Frame ``i`` as buffers whose concatenation is the 1080x1920 RGBX frame."""
        shot, j = self.shots[i]
        sprites = self.sprites[i]
        still, still_band = self._still(shot, sprites)
        d = shot.dest
        piece = shot.piece(j)
        if d.left == 0 and d.width == FRAME_W_PX:
            band = piece
        else:
            band = still_band.copy()
            band.paste(piece, (int(d.left), 0))
        for sprite in sprites:
            if sprite.box.top < d.bottom and sprite.box.bottom > d.top:
                band.paste(sprite.rgb, (int(sprite.box.left), int(sprite.box.top - d.top)),
                           sprite.mask)
        row = FRAME_W_PX * 4
        view = memoryview(still)
        return (view[:int(d.top) * row], memoryview(band.tobytes("raw", "RGBX")),
                view[int(d.bottom) * row:])
