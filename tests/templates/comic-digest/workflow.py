"""comic-digest (test template): the standard comic, plus a step kind declared here alone.

``DigestStep`` (kind ``digest``) writes the hex digest of an input file, after a prefix. Its
dependencies: the input file (``file_dep``, from its ``file`` input), the algorithm in config
(``digest.algorithm``, declared in ``uses``) and its prefix, a field of the step that the kind
adds as a value dependency of its own (``dependency_values``). Nothing in ``cloops/`` knows it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from cloops.steps import Step, StepRun, derive, file, short_value, step_kind

BASE = globals()["BASE"]
BASE_STEPS = globals()["BASE_STEPS"]


class DigestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str


class DigestConfig(BASE.ComicConfig):
    digest: DigestSettings


CONFIG_MODEL = DigestConfig


@step_kind("digest")
@dataclass(frozen=True)
class DigestStep(Step):
    """Write ``<prefix><hex digest>`` of the input named ``source``; no service call."""

    source: str = "source"
    prefix: str = ""

    def dependency_values(self, deps):
        return {"digest prefix": short_value(self.prefix)}

    def execute(self, job: StepRun) -> None:
        algorithm = job.ctx.config.get("digest.algorithm")
        data = open(job.inputs[self.source], "rb").read()
        job.write(job.rel, self.prefix + hashlib.new(algorithm, data).hexdigest(),
                  made_by=f"digest {algorithm}")


STEPS = derive(BASE_STEPS, add=[
    DigestStep(name="digest", target="digests/{n}.txt", foreach=BASE.PAGES,
               doc="the digest of one page image", uses=("digest.algorithm",),
               inputs={"source": file("images/{n}.jpg")}, prefix="page image: "),
])
