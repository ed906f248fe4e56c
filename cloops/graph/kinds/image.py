"""The ``image`` step kind: one image of the image service per task.

Layer: **graph**. The prompt comes from an input file; the model and its params from
``generation`` (with the step's ``params_override`` merged over them, ``thumbnail.params`` for a
square cover). With ComfyUI the workflow file decides the image, so its digest stands in for
the model in the request, the cache key and the dependencies. Offline, the storyboard backend
draws what ``annotate`` returns (the page's panels and narration): that is then a dependency too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import InputError
from ...core.fileio import sha256_file
from ...services.base import ImageRequest
from ..steps import DepContext, Fn, Step, StepRun, short_value, step_kind


@step_kind("image")
@dataclass(frozen=True)
class ImageStep(Step):
    """A call to the image service.

    Attributes:
        prompt: the input holding the image prompt text (default: input named ``prompt``).
        params_override: config path of a dict merged over ``generation.params``
            (``thumbnail.params`` for a square cover).
        annotate: ``annotate(inputs, ctx) -> dict`` context for backends that draw text
            themselves (the offline storyboard); a dependency only for those backends.
    """

    service = "image"

    prompt: str = "prompt"
    params_override: str | None = None
    annotate: Fn | None = None

    def config_paths(self, tpl) -> list[str]:
        paths = super().config_paths(tpl)
        if self.params_override and self.params_override not in paths:
            paths.append(self.params_override)
        return paths

    def params(self, tpl) -> dict[str, Any]:
        """``generation.params`` with the step's override merged over it.

        Raises:
            InputError: the override is not an object.
        """
        params = dict(tpl.config.engine.generation.params)
        if self.params_override:
            over = tpl.config.get(self.params_override, {})
            if not isinstance(over, dict):
                raise InputError("must be an object of image model params.",
                                 file=tpl.config.file, field=self.params_override)
            params.update(over)
        return params

    def model(self, tpl, backend_name: str) -> str:
        """The model as the request names it: ``generation.model``, or for ComfyUI the digest
        of its workflow file (``comfyui-workflow:<digest>``)."""
        if backend_name == "comfyui":
            return f"comfyui-workflow:{comfyui_workflow_digest(tpl)}"
        return tpl.config.engine.generation.model

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        tpl, backend = deps.template, deps.backend
        values = {"generation.model": short_value(tpl.config.engine.generation.model),
                  "generation.params": short_value(self.params(tpl))}
        if backend.name == "comfyui":
            values["comfyui workflow"] = comfyui_workflow_digest(tpl)
        if backend.offline and self.annotate is not None:
            # offline storyboards draw the page's text: that is then a dependency too
            inputs, ctx = deps.values()
            values["annotations"] = short_value(self.annotate(inputs, ctx))
        return values

    def execute(self, job: StepRun) -> None:
        tpl = job.template
        backend = job.services.backend("image")
        ann = (self.annotate(job.inputs, job.ctx)
               if self.annotate and backend.uses_annotations else None)
        req = ImageRequest(prompt=job.inputs[self.prompt].strip(),
                           model=self.model(tpl, backend.name), params=self.params(tpl),
                           annotations=ann, timeout_s=tpl.config.engine.generation.timeout_s)
        res = job.services.generate_image(req)
        job.write(job.rel, res.jpeg, made_by=f"{backend.name} {req.model}",
                  offline=backend.offline)


def comfyui_workflow_digest(tpl) -> str:
    """Digest of the ComfyUI workflow file (``generation.comfyui.workflow``, 16 hex digits):
    editing the workflow changes every image it makes, so it is a dependency and part of the
    cache key. ``"none"`` when no workflow is set, ``"missing"`` when the file is absent."""
    name = tpl.config.engine.generation.comfyui.get("workflow")
    if not name:
        return "none"
    return (sha256_file(tpl.dir / name) or sha256_file(Path(name)) or "missing")[:16]
