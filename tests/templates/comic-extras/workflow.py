"""comic-extras (test template): the standard comic (with its cast, sheets and evals) plus
files shaped like ad components under ``ads/``, written by a step kind declared here, so the
review tests can check the site shows any declared target without knowing it.
"""

from __future__ import annotations

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
            elif rel.endswith(".json"):
                data = {"hooks": ["What if the rain never stopped?"]}
            else:
                data = "Noah: front, side and back views; white beard, brown robe."
            job.write(rel, data, made_by="extras")


# the base's own ad steps (switched off there) make these targets too: this stand-in replaces them
STEPS = derive(BASE_STEPS, remove=("ad-hooks", "ad-tags", "hook-clip", "body-clip", "ad-manifest"),
               add=[
    ExtrasStep(name="ads", target="ads/hooks.json", also=("ads/hook-1.mp4", "ads/body.mp4"),
               doc="ad components", inputs={"cover": file("thumbnail.jpg")}),
])
