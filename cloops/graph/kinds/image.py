"""The ``image`` step kind: one image of the image service per task, optionally drawn with
reference images (the sheets of the characters on the page).

Layer: **graph**. The prompt comes from an input file; the model and its params from
``generation`` (with the step's ``params_override`` merged over them, ``thumbnail.params`` for a
square cover). With ComfyUI the workflow file decides the image, so its digest stands in for
the model in the request, the cache key and the dependencies. Offline, the storyboard backend
draws what ``annotate`` returns (the page's panels and narration): that is then a dependency too.

**References.** ``references(inputs, ctx)`` names the reference images of one task, in a fixed
order, as ``[(path in the story folder, label)]``. Their files are ``file_dep`` s of the task
(a hand-replaced sheet redraws the pages it is on), their bytes go with the request (and their
digests into the response cache key), and the prompt names them first: "Image 1 is Noah's
reference sheet. ...". How many a model takes is ``generation.referenceLimits`` over the
built-in table (:data:`cloops.services.base.MODEL_REFERENCE_LIMITS`); the rest are left out and
the run says so. ``aspect_ratio`` must then be set in the params: the reference-image models
default it to ``match_input_image``, which would copy the sheet's shape onto the page.

**A style frame.** ``style_frame(ctx)`` may name a picture of the template (its art style) to
pass with every call of the step as the **last** reference, after the story's own, as ``(path,
label)``: the label is how the prompt names it ("the style frame: it shows the art style only
..."). Its digest and label are dependencies of the step (replacing the picture redraws every
image that takes it, and nothing else), its bytes go with the request as JPEG. Within the
model's reference limit it keeps its slot: the story's references are cut first.

**A file instead of a call.** ``use_file(inputs, ctx)`` may name a file to take as the image
(a hand-made library sheet): the step then copies it, calls nothing, and depends on its digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...core.errors import InputError
from ...core.fileio import sha256_file
from ...services.base import ImageRequest, Reference
from ...services.imaging import to_jpeg
from ..steps import DepContext, Fn, Step, StepContext, StepRun, short_value, step_kind

RefFn = Callable[[dict, StepContext], list[tuple[str, str]]]
FrameFn = Callable[[StepContext], "tuple[Any, str] | None"]


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
        references: ``references(inputs, ctx) -> [(path, label)]`` the reference images, in
            order (paths relative to the story folder), or None.
        reference_patterns: the patterns those paths come from (``cast/{id}.jpg``): what the
            artifact graph needs to know which step makes them.
        use_file: ``use_file(inputs, ctx) -> Path | None`` a file to take as the image instead
            of calling the service, or None.
        style_frame: ``style_frame(ctx) -> (Path, label) | None`` a picture passed last, after
            the references, with every call (see the module docstring), or None.
    """

    service = "image"

    prompt: str = "prompt"
    params_override: str | None = None
    annotate: Fn | None = None
    references: RefFn | None = None
    reference_patterns: tuple[str, ...] = ()
    use_file: Callable[[dict, StepContext], Any] | None = None
    style_frame: FrameFn | None = None

    # ------------------------------------------------------------ graph

    def config_paths(self, tpl) -> list[str]:
        paths = super().config_paths(tpl)
        if self.params_override and self.params_override not in paths:
            paths.append(self.params_override)
        return paths

    def reads(self) -> list[str]:
        return super().reads() + list(self.reference_patterns)

    def files_need_values(self) -> bool:
        return self.references is not None

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        if self.references is not None:
            inputs, ctx = deps.values()
            files += [path for path, _label in self.references(inputs, ctx)]
        return files, targets

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

    def reference_limit(self, tpl, backend_name: str) -> int | None:
        """How many references the request may carry (None: as many as given; a ComfyUI
        workflow takes what it has nodes for)."""
        if backend_name == "comfyui":
            return None
        gen = tpl.config.engine.generation
        return gen.reference_limit(gen.model)

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        tpl, backend = deps.template, deps.backend
        values = {"generation.model": short_value(tpl.config.engine.generation.model),
                  "generation.params": short_value(self.params(tpl))}
        if backend.name == "comfyui":
            values["comfyui workflow"] = comfyui_workflow_digest(tpl)
        if self.references is not None or self.use_file is not None:
            inputs, ctx = deps.values()
            if self.references is not None:
                refs = self.references(inputs, ctx)
                values["references"] = short_value(
                    {"labels": [label for _p, label in refs],
                     "limit": self.reference_limit(tpl, backend.name)})
            if self.use_file is not None:
                path = self.use_file(inputs, ctx)
                values["file used"] = (sha256_file(Path(path)) or "missing")[:16] if path \
                    else "none"
        if self.style_frame is not None:
            _inputs, ctx = deps.values()
            frame = self.style_frame(ctx)
            if frame is not None:
                path, label = frame
                values["style frame"] = short_value(
                    {"label": label, "sha256": frame_digest(tpl, Path(path))})
        if backend.offline and self.annotate is not None:
            # offline storyboards draw the page's text: that is then a dependency too
            inputs, ctx = deps.values()
            values["annotations"] = short_value(self.annotate(inputs, ctx))
        return values

    def check(self, tpl) -> None:
        framed = self.style_frame is not None and self.style_frame(StepContext(
            template=tpl.name, story_id="", story={}, config=tpl.config, n=None, count=None,
            story_dir=None, collection=tpl.collection, template_file=tpl.template_file))
        if (self.references is not None or framed) and "aspect_ratio" not in self.params(tpl):
            field = f"{self.params_override}.aspect_ratio" if self.params_override \
                else "generation.params.aspect_ratio"
            raise InputError(
                f"step {self.name!r} passes reference images but no aspect ratio is set.",
                file=tpl.config.file, field=field,
                fix="set aspect_ratio (e.g. \"9:16\"): models given reference images default "
                    "to match_input_image and would copy the sheet's shape.")

    # ------------------------------------------------------------ run

    def execute(self, job: StepRun) -> None:
        tpl = job.template
        backend = job.services.backend("image")
        if self.use_file is not None:
            path = self.use_file(job.inputs, job.ctx)
            if path is not None:
                data = Path(path).read_bytes()
                job.write(job.rel, data, made_by=f"file {Path(path).name}", offline=False)
                job.note(f"{job.rel} is {path} (no image call)")
                return
        refs = self.reference_images(job, backend.name)
        prompt = job.inputs[self.prompt].strip()
        if refs:
            prompt = naming_lines(refs) + "\n" + prompt
        ann = (self.annotate(job.inputs, job.ctx)
               if self.annotate and backend.uses_annotations else None)
        if ann is not None and refs:
            ann = {**ann, "references": [r.label for r in refs]}
        req = ImageRequest(prompt=prompt, model=self.model(tpl, backend.name),
                           params=self.params(tpl), annotations=ann,
                           timeout_s=tpl.config.engine.generation.timeout_s,
                           references=tuple(refs))
        res = job.services.generate_image(req)
        if refs and res.references_used < len(refs):
            job.note(f"{len(refs) - res.references_used} of {len(refs)} reference images were "
                     f"not used by the {backend.name} backend"
                     + (" (its workflow has no reference image nodes for them)"
                        if backend.name == "comfyui" else ""))
        job.write(job.rel, res.jpeg, made_by=f"{backend.name} {req.model}",
                  offline=backend.offline)

    def reference_images(self, job: StepRun, backend_name: str) -> list[Reference]:
        """The task's references as read from disk, capped at the model's limit.

        Raises:
            InputError: a reference file is missing (names it and the fix).
        """
        wanted = self.references(job.inputs, job.ctx) if self.references is not None else []
        frame = self.style_frame(job.ctx) if self.style_frame is not None else None
        limit = self.reference_limit(job.template, backend_name)
        room = None if limit is None else max(limit - (1 if frame else 0), 0)
        if room is not None and len(wanted) > room:
            dropped = ", ".join(label for _p, label in wanted[room:])
            job.note(f"{len(wanted) - room} reference images left out (the model takes "
                     f"{limit}" + ("; the style frame keeps the last" if frame and limit else "")
                     + f"; generation.referenceLimits): {dropped}")
            wanted = wanted[:room]
        if frame is not None and limit == 0:
            job.note(f"the style frame is left out (the model takes no reference images; "
                     f"generation.referenceLimits): {frame[1]}")
            frame = None
        refs = []
        for path, label in wanted:
            full = job.story_dir / path
            try:
                refs.append(Reference(label=label, jpeg=full.read_bytes()))
            except FileNotFoundError:
                raise InputError("does not exist: it is a reference image of "
                                 f"{job.rel}.", file=str(full),
                                 fix="build the story again to make it, or put your own "
                                     "image there.") from None
        if frame is not None:
            path, label = frame
            jpeg, _w, _h = to_jpeg(Path(path).read_bytes(), source=str(path))
            refs.append(Reference(label=label, jpeg=jpeg))
        return refs


def naming_lines(refs: list[Reference]) -> str:
    """The prompt's first line naming each reference by position:
    ``Image 1 is Noah's reference sheet. Image 2 is ...``, and what to keep from them (no
    sentence about sheets when the only reference is a style frame)."""
    named = " ".join(f"Image {i} is {r.label}." for i, r in enumerate(refs, 1))
    if any("reference sheet" in r.label for r in refs):
        named += (" Keep each character's face, hair, clothing and colours exactly as in "
                  "their reference sheet; do not copy the sheets' layout or white background.")
    if any("establishing view" in r.label for r in refs):
        named += " Keep each place's shape, materials and colours as in its establishing view."
    return named


def frame_digest(tpl, path: Path) -> str:
    """The style frame's digest (16 hex digits; ``"missing"``): see :func:`template_digest` -
    every image task of every story depends on it."""
    return template_digest(tpl, path)


def template_digest(tpl, path: Path) -> str:
    """The digest of a template's file that many tasks depend on (the style frame, the ads'
    music bed): 16 hex digits, or ``"missing"``, computed once per template load and file
    version (path, size, mtime) - hashing the file per task would cost more than the whole
    dependency check."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    key = ("file digest", str(path), st.st_size, st.st_mtime_ns)
    if key not in tpl.memo:
        tpl.memo[key] = (sha256_file(path) or "missing")[:16]
    return tpl.memo[key]


def comfyui_workflow_digest(tpl) -> str:
    """Digest of the ComfyUI workflow file (``generation.comfyui.workflow``, 16 hex digits):
    editing the workflow changes every image it makes, so it is a dependency and part of the
    cache key. ``"none"`` when no workflow is set, ``"missing"`` when the file is absent."""
    name = tpl.config.engine.generation.comfyui.get("workflow")
    if not name:
        return "none"
    return (sha256_file(tpl.dir / name) or sha256_file(Path(name)) or "missing")[:16]
