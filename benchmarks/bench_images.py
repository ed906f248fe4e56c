"""A fake paid image backend for the review benchmark: page-sized JPEGs (576×1024, 1024×1024
for a square cover), each a different picture, so previews cost what they cost with real
images (``CLOOPS_PLUGINS=tests.fakes.backends,benchmarks.bench_images`` and
``CLOOPS_IMAGE_BACKEND=bench-image``)."""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageDraw

from cloops.services.base import ImageRequest, ImageResult
from cloops.services.registry import BackendSpec, register


class PageImage:
    """A JPEG the size a 1K model returns, with shapes placed by a hash of the prompt."""

    name = "bench-image"
    offline = False
    uses_annotations = False

    def generate_image(self, request: ImageRequest) -> ImageResult:
        h = hashlib.sha256(f"{request.prompt}{request.params}".encode()).digest()
        square = request.params.get("aspect_ratio") == "1:1"
        w, hgt = (1024, 1024) if square else (576, 1024)
        img = Image.new("RGB", (w, hgt), tuple(h[:3]))
        draw = ImageDraw.Draw(img)
        for k in range(8):
            x, y = h[3 + k] * w // 256, h[11 + k] * hgt // 256
            draw.ellipse((x - 60, y - 60, x + 60, y + 60), fill=tuple(h[k:k + 3]))
            draw.rectangle((x, y, x + 120, y + 30), fill=tuple(h[k + 5:k + 8]))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return ImageResult(jpeg=buf.getvalue(), width_px=w, height_px=hgt)


register(BackendSpec(name="bench-image", service="image", offline=False,
                     factory=lambda section, env: PageImage(),
                     describe="benchmark fake: page-sized images"))
