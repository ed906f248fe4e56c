"""Image helpers on Pillow: convert whatever a service returns into a JPEG target.

Layer: **services**.
"""

from __future__ import annotations

import io

from ..core.errors import PermanentServiceError

JPEG_QUALITY = 92


def to_jpeg(data: bytes, *, source: str = "image") -> tuple[bytes, int, int]:
    """Convert image bytes (PNG, WEBP, JPEG, ...) to JPEG.

    Returns ``(jpeg_bytes, width_px, height_px)``. JPEG input is returned unchanged.

    Raises:
        PermanentServiceError: the bytes are not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError  # here: Pillow costs ~10 ms at start-up

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.format == "JPEG":
                return data, img.width, img.height
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise PermanentServiceError(
            f"{source} returned {len(data)} bytes that are not a readable image ({exc}).",
            service="image") from exc
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue(), rgb.width, rgb.height


# Seedream 4 output size for ``size`` 1K/2K/4K (long side, px) and the aspect ratios it accepts;
# source: replicate.com/bytedance/seedream-4 API schema.
SIZE_LONG_SIDE_PX = {"1K": 1024, "2K": 2048, "4K": 4096}


def dimensions_for(size: str | None, aspect_ratio: str | None, *, width: int | None = None,
                   height: int | None = None) -> tuple[int, int]:
    """Return ``(width_px, height_px)`` for a seedream-style ``size`` + ``aspect_ratio``.

    ``size="custom"`` uses ``width``/``height``. Unknown or ``match_input_image`` aspect ratios
    fall back to square. Sizes are rounded to multiples of 8.
    """
    if size == "custom" and width and height:
        return int(width), int(height)
    long_side = SIZE_LONG_SIDE_PX.get(size or "2K", 2048)
    try:
        a, b = (int(x) for x in (aspect_ratio or "1:1").split(":"))
    except ValueError:
        a, b = 1, 1
    if a >= b:
        w, h = long_side, long_side * b / a
    else:
        w, h = long_side * a / b, long_side
    return int(w) // 8 * 8, int(h) // 8 * 8
