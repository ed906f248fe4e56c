"""The ``assemble`` step kind: a target made by a function of its inputs, no service.

Layer: **graph**.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..steps import Fn, Step, StepRun, step_kind


@step_kind("assemble")
@dataclass(frozen=True)
class AssembleStep(Step):
    """No service call: ``run(inputs, ctx) -> str | bytes | dict`` makes the target.

    Light (:attr:`cloops.graph.steps.Step.light`): its tasks run on the thread that dispatches
    tasks. A ``run`` that takes long (decoding images, a subprocess) belongs in a subclass with
    ``light = False``, so other tasks are dispatched meanwhile.
    """

    light = True

    run: Fn | None = None

    def execute(self, job: StepRun) -> None:
        job.write(job.rel, self.run(job.inputs, job.ctx), made_by="assembled", offline=False)
