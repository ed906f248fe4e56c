"""A fake paid image backend whose every call draws a new picture, as a real model with a random
seed does (load with ``CLOOPS_PLUGINS=tests.fakes.backends,tests.fakes.takes_backends`` and
``CLOOPS_IMAGE_BACKEND=fake-image-takes``).

The deterministic ``fake-image`` of :mod:`tests.fakes.backends` answers a re-roll with the same
bytes, so a second take could not be told from the first; this one cannot. Cached answers are
still replayed by the response cache, as with any paid backend.
"""

from __future__ import annotations

import io
import os

from PIL import Image

from cloops.services.base import ImageRequest, ImageResult
from cloops.services.registry import BackendSpec, register


class RandomImage:
    """A small JPEG of a random colour: two calls never answer the same."""

    name = "fake-image-takes"
    offline = False
    uses_annotations = False

    def generate_image(self, request: ImageRequest) -> ImageResult:
        img = Image.new("RGB", (48, 64), tuple(os.urandom(3)))
        img.putpixel((0, 0), tuple(os.urandom(3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        return ImageResult(jpeg=buf.getvalue(), width_px=48, height_px=64)


register(BackendSpec(name="fake-image-takes", service="image", offline=False,
                     factory=lambda section, env: RandomImage(),
                     describe="test fake images, a new one per call"))
