"""A fake image backend that records what each request carries (``CLOOPS_PLUGINS=
tests.fakes.backends,tests.fakes.refs_backend``, ``CLOOPS_IMAGE_BACKEND=fake-image-refs``).

Each call appends one JSON line to ``$CLOOPS_TEST_REFLOG``: the request's annotation title and
label (which sheet, page or cover it is), its reference labels in order and the prompt's first
line (where the references are named). It answers like ``fake-image``: a small JPEG whose colour
is a hash of the prompt, model and params.
"""

from __future__ import annotations

import json
import os

from cloops.services.base import ImageRequest, ImageResult
from cloops.services.registry import BackendSpec, register

from tests.fakes.backends import FakeImage


class RecordingImage(FakeImage):
    name = "fake-image-refs"
    uses_annotations = True  # the annotations say which image a request is

    def generate_image(self, request: ImageRequest) -> ImageResult:
        ann = request.annotations or {}
        with open(os.environ["CLOOPS_TEST_REFLOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"title": ann.get("title"), "label": ann.get("label"),
                                "refs": [r.label for r in request.references],
                                "first": request.prompt.splitlines()[0]}) + "\n")
        res = super().generate_image(request)
        return ImageResult(jpeg=res.jpeg, width_px=res.width_px, height_px=res.height_px,
                           references_used=len(request.references))


register(BackendSpec(name="fake-image-refs", service="image", offline=False,
                     factory=lambda section, env: RecordingImage(),
                     describe="test fake images that record their references"))
