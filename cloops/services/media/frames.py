"""Frames of a clip: camera moves over an image (shots) and text composited on them, as the
raw YUV 4:2:0 buffers FFmpeg encodes.

Layer: **services**.

A :class:`Shot` is a camera window over one image moving from a start box to an end box; the
window of each frame is computed from the frame number alone and resampled from a float box
(OpenCV's ``warpAffine``, bilinear, positions to 1/32 pixel), so a push-in or a pan moves by
sub-pixel steps: no jitter, unlike FFmpeg's ``zoompan``, which rounds its window to whole
source pixels unless the input is upscaled first (BRIEF.md "Rendering"). A
:class:`Compositor` turns shots and text into frame buffers, redrawing only the rows where the
picture moves.

Frames are composed in the encoder's own format - BT.709 limited-range Y'CbCr, chroma at half
width and height (4:2:0, ``yuv420p``) - rather than in RGB: each image is converted once
(:func:`yuv_planes`), and each frame then resamples one full-size plane and two quarter-size
ones, and crosses the pipe in 1.5 bytes a pixel instead of 4, with no conversion left for
FFmpeg. Chroma is the 2x2 average of the full-size chroma (centre-sited, which the clips are
tagged with: ``chroma_sample_location=center``); everything placed in a frame sits on even
pixels so that its chroma lines up.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from .layout import FRAME_H_PX, FRAME_W_PX, FULL, Box, Raster, cover_window

FRAME_ASPECT = FRAME_W_PX / FRAME_H_PX
FRAME_BYTES = FRAME_W_PX * FRAME_H_PX * 3 // 2  # one yuv420p frame

# R'G'B' (0-255) -> limited-range Y'CbCr, ITU-R BT.709-6 items 3.2-3.5 (Kr 0.2126, Kb 0.0722;
# Y' 16-235, Cb/Cr 16-240), in 16.16 fixed point so that every machine gives the same bytes.
# The Cb/Cr rows sum to exactly 0 (grey stays at 128) and the Y' row to 219/255.
_ONE = 1 << 16


def _fixed_rows() -> np.ndarray:
    kr, kb = 0.2126, 0.0722
    kg = 1 - kr - kb
    ys, cs = 219 / 255, 224 / 255
    rows = [[kr * ys, kg * ys, kb * ys],
            [-kr / (2 - 2 * kb) * cs, -kg / (2 - 2 * kb) * cs, 0.5 * cs],
            [0.5 * cs, -kg / (2 - 2 * kr) * cs, -kb / (2 - 2 * kr) * cs]]
    fixed = np.array([[round(v * _ONE) for v in row] for row in rows], dtype=np.int64)
    fixed[0, 1] = round(ys * _ONE) - fixed[0, 0] - fixed[0, 2]
    fixed[1, 1] = -fixed[1, 0] - fixed[1, 2]
    fixed[2, 1] = -fixed[2, 0] - fixed[2, 2]
    return fixed


_RGB_TO_YCC = _fixed_rows()
_OFFSETS = (16, 128, 128)


def _ycc(rgb: np.ndarray) -> list[np.ndarray]:
    """Full-size Y', Cb, Cr of an ``(h, w, 3)`` uint8 array, each ``(h, w)`` int32."""
    r, g, b = (rgb[..., k].astype(np.int32) for k in range(3))
    out = []
    for row, offset in zip(_RGB_TO_YCC, _OFFSETS):
        acc = r * int(row[0]) + g * int(row[1]) + b * int(row[2])
        out.append((acc + (offset << 16) + (1 << 15)) >> 16)
    return out


def _halve(plane: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """The 2x2 average of ``plane`` (odd sizes padded by repeating the last row/column),
    weighted by ``weight`` (alpha) when given; rounded to nearest."""
    h, w = plane.shape
    if h % 2 or w % 2:
        plane = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
        if weight is not None:
            weight = np.pad(weight, ((0, h % 2), (0, w % 2)), mode="edge")

    def blocks(a: np.ndarray) -> np.ndarray:
        return a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]

    if weight is None:
        return (blocks(plane) + 2) >> 2
    wsum = blocks(weight)
    return np.where(wsum > 0, (blocks(plane * weight) + wsum // 2) // np.maximum(wsum, 1), 128)


def _l(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class Planes:
    """An image as yuv420p planes: ``y`` full size, ``u`` (Cb) and ``v`` (Cr) at half width
    and height (rounded up), each a Pillow ``L`` image."""

    y: Image.Image
    u: Image.Image
    v: Image.Image

    def copy(self) -> "Planes":
        return Planes(self.y.copy(), self.u.copy(), self.v.copy())

    def y_u_v(self) -> tuple[Image.Image, Image.Image, Image.Image]:
        """The three planes in frame order."""
        return self.y, self.u, self.v

    def paste(self, other: "Planes", left: int, top: int,
              masks: tuple[Image.Image, Image.Image] | None = None) -> None:
        """Paste ``other`` at (``left``, ``top``) (even pixels), through ``masks`` (full and
        half size) when given."""
        full, half = masks or (None, None)
        self.y.paste(other.y, (left, top), full)
        self.u.paste(other.u, (left // 2, top // 2), half)
        self.v.paste(other.v, (left // 2, top // 2), half)

    def rows(self, top: int, bottom: int) -> "Planes":
        """The rows ``top``..``bottom`` (even) as new planes."""
        return Planes(self.y.crop((0, top, self.y.width, bottom)),
                      self.u.crop((0, top // 2, self.u.width, bottom // 2)),
                      self.v.crop((0, top // 2, self.v.width, bottom // 2)))


STRIP_ROWS = 128  # rows converted at a time (even: chroma rows pair up within a strip)


def yuv_planes(img: Image.Image) -> Planes:
    """Convert an RGB image to BT.709 limited-range yuv420p :class:`Planes` (see
    :func:`yuv_arrays`)."""
    return Planes(*(Image.fromarray(a, mode="L") for a in yuv_arrays(img)))


def yuv_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert an RGB image to BT.709 limited-range yuv420p planes: ``(y, u, v)`` uint8
    arrays, ``y`` ``(h, w)``, ``u`` and ``v`` at half height and width (rounded up).

    Converted :data:`STRIP_ROWS` rows at a time: the int32 working arrays of a whole
    1080x1920 image took ~65 MB per conversion (three render slots at once: ~200 MB of the
    build's peak memory); a strip's take ~4 MB. Every output pixel depends on its own strip
    only (chroma averages 2x2 blocks that never straddle an even row boundary), so the bytes
    are the same as converting the image at once."""
    rgb = np.asarray(img.convert("RGB"))
    h, w = rgb.shape[:2]
    cw, ch = (w + 1) // 2, (h + 1) // 2
    y = np.empty((h, w), np.uint8)
    u = np.empty((ch, cw), np.uint8)
    v = np.empty((ch, cw), np.uint8)
    for top in range(0, h, STRIP_ROWS):
        sy, su, sv = _ycc(rgb[top:top + STRIP_ROWS])
        half = slice(top // 2, (top + STRIP_ROWS + 1) // 2)
        y[top:top + STRIP_ROWS] = np.clip(sy, 0, 255)
        u[half] = np.clip(_halve(su), 0, 255)
        v[half] = np.clip(_halve(sv), 0, 255)
    return y, u, v


def solid_planes(width: int, height: int, rgb: tuple[int, int, int] = (0, 0, 0)) -> Planes:
    """Planes of one colour (black by default)."""
    y, u, v = (int(c[0, 0]) for c in _ycc(np.array([[rgb]], dtype=np.uint8)))
    cw, ch = (width + 1) // 2, (height + 1) // 2
    return Planes(Image.new("L", (width, height), y), Image.new("L", (cw, ch), u),
                  Image.new("L", (cw, ch), v))


def even(box: Box) -> Box:
    """``box`` with every edge rounded to the nearest even pixel (where chroma lines up)."""
    return Box(*(2 * int(round(v / 2)) for v in box))


def backdrop(img: Image.Image, region: Box, raster: Raster = FULL) -> Planes:
    """A blurred, darkened copy of ``region`` filling the frame drawn on ``raster``, as planes
    (computed once per page or shot and shared by its frames). The blur is made at 1/8 of
    the full frame whatever the raster, so a proxy's backdrop is the full one's, smaller."""
    window = cover_window(region, FRAME_ASPECT)
    small = img.resize((FRAME_W_PX // 8, FRAME_H_PX // 8), Image.Resampling.BOX,
                       box=tuple(window))
    small = small.filter(ImageFilter.GaussianBlur(6))
    big = small.resize((raster.width, raster.height), Image.Resampling.BILINEAR)
    return yuv_planes(ImageEnhance.Brightness(big).enhance(0.42))


def ease(t: float) -> float:
    """Smooth start and stop (sine ease-in-out) for pans."""
    return 0.5 - 0.5 * math.cos(math.pi * t)


class Shot:
    """A camera move over one image: the window goes from ``start`` to ``end`` (boxes in the
    image's pixels) over ``frames`` frames, drawn into ``dest`` of the frame (a box in layout
    pixels, the 1080x1920 frame's; on ``raster`` it is scaled, then rounded to even pixels:
    :attr:`dest` is in the raster's pixels - on a proxy a stage edge at an odd proxy pixel,
    such as the body's at full row 190, moves by one).

    The image is resampled once (Lanczos) so that the window at its smallest maps about 1:1 to
    ``dest`` and converted to planes; each frame is then one bilinear resample of an exact
    float window per plane (:func:`warp`; the chroma planes at half the coordinates), a
    downscale of at most the shot's zoom (a pan is a pure sub-pixel shift). The planes are made
    when a frame first needs them and dropped after the shot's last frame
    (:meth:`release`): a body's dozen shots do not all sit in memory for the whole clip. A
    frame needed again later (the poster, a second rendition) makes them again - the same
    bytes.
    """

    def __init__(self, img: Image.Image, start: Box, end: Box, dest: Box, frames: int, *,
                 backdrop: Planes | None, eased: bool, raster: Raster = FULL):
        self.frames = max(1, frames)
        self.still = tuple(start) == tuple(end)  # the window does not move
        self.raster = raster
        self.dest = even(dest.scaled(raster.scale))
        self.backdrop = backdrop
        self.eased = eased
        union = Box(min(start.left, end.left), min(start.top, end.top),
                    max(start.right, end.right), max(start.bottom, end.bottom))
        union = Box(math.floor(union.left) - 2, math.floor(union.top) - 2,
                    math.ceil(union.right) + 2, math.ceil(union.bottom) + 2
                    ).clamp(img.width, img.height)
        scale = self.dest.width / min(start.width, end.width)
        size = (max(2, round(union.width * scale)), max(2, round(union.height * scale)))
        self.size = size  # of the resampled image, whose planes are all a frame needs
        self._img, self._union = img, tuple(union)
        self._planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()
        sx, sy = size[0] / union.width, size[1] / union.height
        self.start = Box((start.left - union.left) * sx, (start.top - union.top) * sy,
                         (start.right - union.left) * sx, (start.bottom - union.top) * sy)
        self.end = Box((end.left - union.left) * sx, (end.top - union.top) * sy,
                       (end.right - union.left) * sx, (end.bottom - union.top) * sy)

    @property
    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The resampled image as ``(y, u, v)`` plane arrays (made on first use)."""
        planes = self._planes
        if planes is None:
            with self._lock:
                planes = self._planes
                if planes is None:
                    planes = yuv_arrays(self._img.resize(self.size, Image.Resampling.LANCZOS,
                                                         box=self._union))
                    self._planes = planes
        return planes

    def release(self) -> None:
        """Drop the planes (they are made again if a frame needs them)."""
        self._planes = None

    def window(self, i: int) -> Box:
        """The window of frame ``i`` (0-based within the shot), in the resampled image."""
        t = i / (self.frames - 1) if self.frames > 1 else 0.0
        if self.eased:
            t = ease(t)
        w, h = self.size
        box = Box(*(a + (b - a) * t for a, b in zip(self.start, self.end)))
        return box.clamp(w, h)

    def piece(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the window of frame ``i`` shows, resampled to the size of ``dest``: ``(y, u,
        v)`` uint8 arrays, ``y`` ``(dest height, dest width)``, the chroma at half of each."""
        d = self.dest
        w, h = int(d.width), int(d.height)
        win = tuple(self.window(i))
        half = tuple(v / 2 for v in win)
        y, u, v = self.planes
        return (warp(y, win, (w, h)), warp(u, half, (w // 2, h // 2)),
                warp(v, half, (w // 2, h // 2)))


@lru_cache(maxsize=1)
def _cv2():
    """OpenCV, imported on the first frame (not at start-up: ~20 ms) and kept to one thread
    per call - frames are already made by several threads at once (``encode_frames``'s
    ``workers``), so its own pool would only contend for the same cores."""
    import cv2
    cv2.setNumThreads(1)
    return cv2


def warp(plane: np.ndarray, box: tuple[float, float, float, float],
         size: tuple[int, int]) -> np.ndarray:
    """Resample the float window ``box`` (left, top, right, bottom in ``plane``'s pixels) of a
    uint8 ``plane`` to ``size`` (width, height): a ``(height, width)`` uint8 array.

    Bilinear, pixel centres mapped onto pixel centres (output pixel ``x`` samples the source
    at ``left + (x + 0.5) * sx - 0.5``, the convention Pillow's ``resize(box=...)`` uses),
    edges repeated. OpenCV's ``warpAffine`` with ``WARP_INVERSE_MAP`` and ``INTER_LINEAR``
    (source: OpenCV docs, "Geometric Image Transformations"): on 8-bit planes it works in
    fixed point - positions to 1/32 pixel (``INTER_BITS`` 5), weights in 15 bits - so every
    run gives the same bytes, about 15x faster than Pillow's convolution resampler for the
    near-1:1 scales a shot uses (measured: 0.7 ms against 12 ms for a 1080x1920 plane).
    Downscaling by much more than the zoom of a shot would alias: :class:`Shot` resamples its
    image once (Lanczos) so that a frame never does.
    """
    cv2 = _cv2()
    left, top, right, bottom = box
    w, h = size
    sx, sy = (right - left) / w, (bottom - top) / h
    matrix = np.array([[sx, 0.0, left + 0.5 * sx - 0.5], [0.0, sy, top + 0.5 * sy - 0.5]])
    return cv2.warpAffine(plane, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class Sprite:
    """Text ready to composite: its planes, its alpha masks (full and half size) and where it
    goes (``box``, on even pixels)."""

    planes: Planes
    masks: tuple[Image.Image, Image.Image]
    box: Box

    @cached_property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The planes and masks as uint8 arrays - y, u, v, full mask, half mask - for
        :meth:`blend` (made once per sprite)."""
        return tuple(np.asarray(i) for i in (*self.planes.y_u_v(), *self.masks))

    @classmethod
    def of(cls, rgba: Image.Image, box: Box, raster: Raster = FULL) -> "Sprite":
        """A sprite of an RGBA image placed at ``box`` (layout pixels, integers, any parity),
        drawn on ``raster``: it is widened with transparency to even edges. Chroma is averaged
        weighted by alpha, so a glyph's edge keeps its colour. On a smaller raster the image
        is area-averaged to its scale (Pillow's ``BOX``, alpha premultiplied) and placed at
        the nearest raster pixel."""
        if raster.scale != 1:
            s = raster.scale
            size = (max(1, round(rgba.width * s)), max(1, round(rgba.height * s)))
            left, top = round(box.left * s), round(box.top * s)
            rgba = rgba.resize(size, Image.Resampling.BOX)
            box = Box(left, top, left + size[0], top + size[1])
        outer = Box(2 * math.floor(box.left / 2), 2 * math.floor(box.top / 2),
                    2 * math.ceil(box.right / 2), 2 * math.ceil(box.bottom / 2))
        canvas = Image.new("RGBA", (int(outer.width), int(outer.height)), (0, 0, 0, 0))
        canvas.paste(rgba, (int(box.left - outer.left), int(box.top - outer.top)))
        arr = np.asarray(canvas)
        alpha = arr[..., 3].astype(np.int32)
        y, u, v = _ycc(arr[..., :3])
        half_alpha = _halve(alpha)
        planes = Planes(_l(y), _l(_halve(u, alpha)), _l(_halve(v, alpha)))
        return cls(planes, (_l(alpha), _l(half_alpha)), outer)

    def onto(self, planes: Planes, top: int = 0) -> None:
        """Composite onto ``planes`` whose first row is frame row ``top``."""
        planes.paste(self.planes, int(self.box.left), int(self.box.top) - top, self.masks)

    def blend(self, band: tuple[np.ndarray, np.ndarray, np.ndarray], top: int) -> None:
        """Composite onto ``band`` - ``(y, u, v)`` uint8 arrays whose first row is frame row
        ``top`` (even) - in place, clipped to the band, with the arithmetic of Pillow's
        ``paste`` through an ``L`` mask (``(dst*(255-a) + src*a + 128)`` divided by 255 as
        ``(t + (t >> 8)) >> 8``), so a text blended here gives the bytes :meth:`onto` gives."""
        y, u, v, full, half = self.arrays
        left, row = int(self.box.left), int(self.box.top) - top
        for dst, src, mask, shift in ((band[0], y, full, 0), (band[1], u, half, 1),
                                      (band[2], v, half, 1)):
            _blend_into(dst, src, mask, left >> shift, row >> shift)


def _blend_into(dst: np.ndarray, src: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """``src`` over ``dst`` at (``x``, ``y``) through ``mask`` (Pillow's ``paste`` rounding),
    the part outside ``dst`` dropped."""
    h, w = src.shape
    top, left = max(0, y), max(0, x)
    bottom, right = min(dst.shape[0], y + h), min(dst.shape[1], x + w)
    if bottom <= top or right <= left:
        return
    rows, cols = slice(top - y, bottom - y), slice(left - x, right - x)
    a = mask[rows, cols].astype(np.uint16)
    t = dst[top:bottom, left:right] * (255 - a) + src[rows, cols] * a + 128
    dst[top:bottom, left:right] = (t + (t >> 8)) >> 8


class Compositor:
    """Frames as bytes, cheaply: only the rows the camera moves in change from frame to frame.

    For each (shot, texts) pair the still part of the frame - backdrop plus text - is drawn
    once (a few are kept); a frame is then, for each of its three planes, three buffers: the
    still rows above the shot's ``dest``, the band of ``dest``'s rows with this frame's
    picture (and any text over it), and the still rows below. FFmpeg reads them as one
    yuv420p frame of the compositor's ``raster`` (width x height x 1.5 bytes: 3,110,400 for
    the full 1080x1920 frame, :data:`FRAME_BYTES`). The shots and sprites must have been made
    for that raster.

    Raises:
        ValueError: a shot was made for another raster.
    """

    def __init__(self, shots: list[tuple["Shot", int]], sprites: list[tuple["Sprite", ...]],
                 raster: Raster = FULL):
        self.shots = shots  # per frame: (shot, frame within the shot)
        self.sprites = sprites  # per frame: the texts shown
        self.raster = raster  # what the shots and sprites were made for
        if any(shot.raster != raster for shot, _j in shots if shot is not None):
            raise ValueError(f"a shot was made for another raster than {raster.label}")
        self._cache: OrderedDict = OrderedDict()
        self._frames: dict = {}  # frames of still shots, composed once
        self._lock = threading.Lock()

    def _still(self, shot: "Shot", sprites: tuple["Sprite", ...]
               ) -> tuple[tuple[bytes, bytes, bytes], tuple[np.ndarray, ...]]:
        key = (id(shot), tuple(id(s) for s in sprites))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        frame = (shot.backdrop.copy() if shot.backdrop is not None
                 else solid_planes(self.raster.width, self.raster.height))
        for sprite in sprites:
            sprite.onto(frame)
        d = shot.dest
        band = tuple(np.asarray(p) for p in frame.rows(int(d.top), int(d.bottom)).y_u_v())
        still = ((frame.y.tobytes(), frame.u.tobytes(), frame.v.tobytes()), band)
        with self._lock:
            self._cache[key] = still
            while len(self._cache) > 3:  # frames are made in order, a few at a time
                self._cache.popitem(last=False)
        return still

    @property
    def still(self) -> bool:
        """Every frame is the same: one shot that does not move, the same texts throughout."""
        first = self.shots[0] if self.shots else None
        return bool(first) and first[0].still and all(
            s is first[0] for s, _j in self.shots) and all(t == self.sprites[0]
                                                        for t in self.sprites)

    def frame(self, i: int) -> tuple[memoryview, ...]:
        """Frame ``i`` as buffers whose concatenation is the yuv420p frame (1080x1920, or the
        size of the compositor's raster). A shot
        that does not move (start and end windows the same) with the same texts is composed
        once and its frame reused."""
        shot, j = self.shots[i]
        sprites = self.sprites[i]
        if shot.still:
            key = (id(shot), tuple(id(s) for s in sprites))
            with self._lock:
                hit = self._frames.get(key)
            if hit is None:
                hit = self._compose(shot, 0, sprites)
                with self._lock:
                    self._frames[key] = hit
            return hit
        return self._compose(shot, j, sprites)

    def _compose(self, shot: "Shot", j: int, sprites: tuple["Sprite", ...]
                 ) -> tuple[memoryview, ...]:
        still, still_band = self._still(shot, sprites)
        d = shot.dest
        top, bottom = int(d.top), int(d.bottom)
        piece = shot.piece(j)
        if j == shot.frames - 1:
            shot.release()  # its last frame: the next shot's planes take its place
        if d.left == 0 and d.width == self.raster.width:
            band = piece
        else:
            band = tuple(a.copy() for a in still_band)
            left = int(d.left)
            for rows, part, shift in zip(band, piece, (0, 1, 1)):
                ph, pw = part.shape
                rows[:ph, (left >> shift):(left >> shift) + pw] = part
        for sprite in sprites:
            if sprite.box.top < d.bottom and sprite.box.bottom > d.top:
                sprite.blend(band, top)
        out = []
        for plane, rows, shift in zip(still, band, (0, 1, 1)):
            width = self.raster.width >> shift
            view = memoryview(plane)
            out += [view[:(top >> shift) * width],
                    memoryview(np.ascontiguousarray(rows)).cast("B"),
                    view[(bottom >> shift) * width:]]
        return tuple(out)


def frame_to_rgb(frame: bytes, raster: Raster = FULL) -> Image.Image:
    """One yuv420p frame of ``raster`` (width x height x 1.5 bytes: the Y' plane, then Cb and
    Cr at half size; BT.709 limited range) as an RGB image of the raster's size (1080x1920 for
    the full frame) - the inverse of the frames' conversion, chroma upsampled by repetition,
    rounded and clipped to 0-255 (ITU-R BT.709-6 items 3.2-3.5). For posters. Converted
    :data:`STRIP_ROWS` rows at a time (float32 arrays of a whole frame took ~120 MB; a strip's
    ~8 MB), each pixel by the same arithmetic."""
    w, h = raster.width, raster.height
    y_all = np.frombuffer(frame, np.uint8, w * h).reshape(h, w)
    u_all = np.frombuffer(frame, np.uint8, (w // 2) * (h // 2), w * h).reshape(h // 2, w // 2)
    v_all = np.frombuffer(frame, np.uint8, (w // 2) * (h // 2), w * h + (w // 2) * (h // 2)
                          ).reshape(h // 2, w // 2)
    kr, kb = 0.2126, 0.0722
    kg = 1 - kr - kb
    ys, cs = 255 / 219, 255 / 224
    out = np.empty((h, w, 3), np.uint8)
    for top in range(0, h, STRIP_ROWS):
        half = slice(top // 2, (top + STRIP_ROWS) // 2)
        y = y_all[top:top + STRIP_ROWS].astype(np.float32) - 16.0
        cb = np.repeat(np.repeat(u_all[half].astype(np.float32) - 128.0, 2, 0), 2, 1)
        cr = np.repeat(np.repeat(v_all[half].astype(np.float32) - 128.0, 2, 0), 2, 1)
        r = ys * y + cs * (2 - 2 * kr) * cr
        b = ys * y + cs * (2 - 2 * kb) * cb
        g = ys * y - cs * ((2 - 2 * kb) * kb / kg) * cb - cs * ((2 - 2 * kr) * kr / kg) * cr
        out[top:top + STRIP_ROWS] = np.clip(np.rint(np.stack([r, g, b], axis=2)), 0, 255)
    return Image.fromarray(out, "RGB")
