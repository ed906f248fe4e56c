"""Frame geometry of a vertical ad: the frame, the text-safe area, boxes and fitting.

Layer: **services**.

Every coordinate is in pixels; a :class:`Box` is ``(left, top, right, bottom)`` with the right
and bottom edges exclusive, so ``width = right - left``.

Sources: the 1080x1920 frame at 30 fps and the text box safe on TikTok, Reels and Shorts
together, x 120-888, y 288-1248, are the platform facts in BRIEF.md ("Vertical ads": Google's
vertical ads reserve 288 px at the top, 672 at the bottom, 48 left and 192 right; Reels 14 %
top, 35 % bottom, 6 % each side - Shotstack's "vertical video safe zones" guide). The bottom
35 % (from y 1248) is where the platforms draw their own CTA button and captions.
"""

from __future__ import annotations

from typing import NamedTuple

FRAME_W_PX = 1080
FRAME_H_PX = 1920
FPS = 30


class Box(NamedTuple):
    """A rectangle in pixels: ``(left, top, right, bottom)``, right and bottom exclusive.

    Values are ints for regions of an image and may be floats for a camera window; a Box is a
    tuple, so it serializes to JSON as ``[left, top, right, bottom]``.
    """

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def aspect(self) -> float:
        """Width / height (0 for an empty box)."""
        return self.width / self.height if self.height > 0 else 0.0

    @property
    def center(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    def contains(self, other: "Box") -> bool:
        """True when ``other`` lies entirely inside this box."""
        return (other.left >= self.left and other.top >= self.top
                and other.right <= self.right and other.bottom <= self.bottom)

    def intersects(self, other: "Box") -> bool:
        return (other.left < self.right and other.right > self.left
                and other.top < self.bottom and other.bottom > self.top)

    def rounded(self) -> "Box":
        """The box with integer edges (nearest pixel)."""
        return Box(*(int(round(v)) for v in self))

    def clamp(self, width_px: float, height_px: float) -> "Box":
        """The part of the box inside an image of ``width_px`` x ``height_px``."""
        return Box(max(0, self.left), max(0, self.top), min(width_px, self.right),
                   min(height_px, self.bottom))

    def scaled(self, factor: float) -> "Box":
        """The box with every coordinate multiplied by ``factor``."""
        return Box(*(v * factor for v in self))

    def zoomed(self, zoom: float, focus: tuple[float, float] | None = None) -> "Box":
        """The box shrunk by ``zoom`` (> 1 shows less, i.e. pushes in) around ``focus``
        (default its centre), keeping its aspect ratio."""
        cx, cy = focus or self.center
        w, h = self.width / zoom, self.height / zoom
        return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


FRAME = Box(0, 0, FRAME_W_PX, FRAME_H_PX)


class Raster(NamedTuple):
    """The pixel grid a clip's frames are drawn on: ``width`` x ``height`` pixels (both
    even), ``scale`` raster pixels per layout pixel.

    Layout - stages, text areas, text boxes, the overlay PNG - is always in the 1080x1920
    frame's pixels; a raster only says at what size the picture is drawn and encoded.
    :data:`FULL` is the promised format; :data:`PROXY` draws the same layout at half the
    width and height (a quarter of the pixels), for draft clips made from offline draft
    pictures, where a quarter of the encoding work is what a preview needs (the term is
    video editing's: a proxy is a low-resolution stand-in for the real media).
    """

    width: int
    height: int
    scale: float

    @property
    def label(self) -> str:
        """``"1080x1920"``: what the clips are, in words."""
        return f"{self.width}x{self.height}"


FULL = Raster(FRAME_W_PX, FRAME_H_PX, 1.0)
PROXY = Raster(FRAME_W_PX // 2, FRAME_H_PX // 2, 0.5)
# Where text may go: every caption, hook line and CTA (with its backing box) lies inside.
SAFE_AREA = Box(120, 288, 888, 1248)
# Where the platforms draw their own button: nothing of ours is drawn below this line.
BUTTON_ZONE_TOP_PX = 1248


def fit_inside(width: float, height: float, stage: Box) -> Box:
    """Return the largest box of aspect ``width/height`` centred in ``stage`` (letterbox)."""
    scale = min(stage.width / width, stage.height / height)
    w, h = width * scale, height * scale
    cx, cy = stage.center
    return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def cover_window(region: Box, aspect: float) -> Box:
    """Return the largest window of ``aspect`` (width/height) centred inside ``region``.

    The window is what a camera filling a frame of that aspect sees of ``region`` (the rest
    is cropped away).
    """
    if region.aspect > aspect:  # region wider than the frame: crop the sides
        w, h = region.height * aspect, region.height
    else:
        w, h = region.width, region.width / aspect
    cx, cy = region.center
    return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
