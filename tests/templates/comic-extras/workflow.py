"""comic-extras (test template): the standard comic plus files shaped like those other issues
add — ``cast.json`` with a sheet per character (``cast/<id>.jpg``, ``cast/<id>.txt``), ad
components under ``ads/`` and ``evals.json`` — written by a step kind declared here, so the
review tests can check the site shows any declared target without knowing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cloops.steps import Step, StepRun, derive, file, step_kind

BASE = globals()["BASE"]
BASE_STEPS = globals()["BASE_STEPS"]


@step_kind("extras")
@dataclass(frozen=True)
class ExtrasStep(Step):
    """Write the target and ``also`` files from the cover: a JPEG is the cover's bytes, a
    ``.mp4`` a few bytes, JSON and text made up here."""

    def execute(self, job: StepRun) -> None:
        cover = open(job.inputs["cover"], "rb").read()
        for rel in (self.target, *self.also):
            if rel.endswith(".jpg"):
                data = cover
            elif rel.endswith(".mp4"):
                data = b"\x00\x00\x00\x18ftypmp42 (a test stand-in, not a video)"
            elif rel == "cast.json":
                data = {"characters": [{"id": "noah", "name": "Noah",
                                        "appearance": "an old man, white beard, brown robe"}]}
            elif rel == "evals.json":
                data = {"score": 0.82, "needsReview": True,
                        "checks": [{"name": "page count", "ok": True},
                                   {"name": "faces consistent", "ok": False}]}
            elif rel.endswith(".json"):
                data = {"hooks": ["What if the rain never stopped?"]}
            else:
                data = "Noah: front, side and back views; white beard, brown robe."
            job.write(rel, data, made_by="extras")


STEPS = derive(BASE_STEPS, add=[
    ExtrasStep(name="cast", target="cast.json", also=("cast/noah.txt", "cast/noah.jpg"),
               doc="the cast and its sheets", inputs={"cover": file("thumbnail.jpg")}),
    ExtrasStep(name="ads", target="ads/hooks.json", also=("ads/hook-1.mp4", "ads/body.mp4"),
               doc="ad components", inputs={"cover": file("thumbnail.jpg")}),
    ExtrasStep(name="evals", target="evals.json", doc="scores and checks",
               inputs={"cover": file("thumbnail.jpg")}),
])
