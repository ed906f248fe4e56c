"""The ``judge`` step kind: an LLM judge scoring what was built, with its own rubric and schema.

Layer: **graph**. A judge is an ``llm`` step (validated, re-asked when invalid, cached like
any call) that is opt-in: ``enabled`` names a config value (``evals.judge.story``), and while
it is false the step is switched off (:meth:`~cloops.graph.steps.Step.active`): it makes no
task at all, and ``evals.json`` says the judges are off. Switching it on is the one change that
pays.

A judge may show the model images: ``images`` names the inputs holding image files (the page
image), ``references`` inputs holding optional reference images (a cast's reference sheets:
a path, or a list of paths; files that do not exist are left out). The images go with the user
message in that order, and a legend naming each is appended to it. They are part of the
request, so of its cache key.

Offline, the draft backend answers with :func:`draft_judgement` of the schema: every score the
middle of its range, every reason marked ``[offline draft]``; the target says ``"draft": true``
and :mod:`cloops.graph.kinds.evals` does not count it as a score.

The target holds ``{"judge": name, "page": n | null, "enabled": true, "draft": bool, "madeBy": str,
"images": [file, ...], "scores": {criterion: {"reason": str, "score": int}}}`` when the schema's
answer is ``{"scores": {...}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import InputError
from ..steps import DepContext, StepRun, step_kind
from .llm import LLMStep
from .optin import OptIn

DRAFT_REASON = "[offline draft] no judge model was called; this is not a judgement"
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def draft_judgement(schema: dict) -> Any:
    """A schema-valid answer that judges nothing: integers the middle of their ``enum`` (or
    ``minimum``..``maximum``), strings :data:`DRAFT_REASON`, booleans false, arrays empty."""
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {k: draft_judgement(v) for k, v in (schema.get("properties") or {}).items()}
    if "enum" in schema:
        return schema["enum"][len(schema["enum"]) // 2]
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum", 1), schema.get("maximum", 5)
        return (lo + hi) // 2 if kind == "integer" else (lo + hi) / 2
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    return DRAFT_REASON


@step_kind("judge")
@dataclass(frozen=True)
class JudgeStep(OptIn, LLMStep):
    """An opt-in LLM judge (see the module docstring).

    Attributes:
        enabled: config path of a boolean; the judge calls the model only when it is true.
        images: names of inputs holding image files shown to the model (required to exist).
        references: names of inputs holding optional reference images (a path or a list of
            paths, relative to the story folder or absolute); missing ones are left out. When
            those inputs are values (a view of the cast), their files are dependencies too.
        reference_patterns: the patterns those paths come from (``cast/{id}.jpg``), so the
            artifact graph knows which step makes them.
    """

    images: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    reference_patterns: tuple[str, ...] = ()

    # ------------------------------------------------------------ graph

    def reads(self) -> list[str]:
        return super().reads() + list(self.reference_patterns)

    def files_need_values(self) -> bool:
        return bool(self.reference_patterns)

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, targets = super().task_files(deps)
        if self.reference_patterns:
            inputs, _ctx = deps.values()
            for name in self.references:
                value = inputs.get(name)
                for p in value if isinstance(value, (list, tuple)) else [value]:
                    if p and not Path(p).is_absolute() and p not in files:
                        files.append(p)  # a sheet replaced by hand: the page is judged again
        return files, targets

    def check(self, tpl) -> None:
        super().check(tpl)
        missing = [n for n in (*self.images, *self.references) if n not in self.inputs]
        if missing:
            raise InputError(f"judge step {self.name!r} shows input {missing[0]!r}, which it "
                             "does not declare.", file=str(tpl.dir / "workflow.py"),
                             fix=f"add {missing[0]!r} to its inputs (e.g. file(\"images/{{n}}.jpg\")).")
        if self.schema is None:
            raise InputError(f"judge step {self.name!r} has no schema.",
                             file=str(tpl.dir / "workflow.py"),
                             fix="pass schema=<a strict schema of scores and reasons>.")

    # ------------------------------------------------------------ run

    def shown(self, job: StepRun) -> list[tuple[str, Path]]:
        """``[(label, path)]`` of the images shown, in order: every ``images`` file, then the
        reference files that exist."""
        out: list[tuple[str, Path]] = []
        for group, names in (("image", self.images), ("reference", self.references)):
            for name in names:
                value = job.inputs.get(name)
                for p in value if isinstance(value, (list, tuple)) else [value]:
                    if not p:
                        continue
                    path = Path(p) if Path(p).is_absolute() else job.story_dir / p
                    if group == "image" or path.is_file():
                        out.append((group, path))
        return out

    def prepare(self, job: StepRun) -> tuple[str, Any, tuple[tuple[str, bytes], ...]]:
        user, _draft, _images = super().prepare(job)
        shown = self.shown(job)
        images = tuple((MIME.get(p.suffix.lower(), "image/jpeg"), p.read_bytes())
                       for _label, p in shown)
        if shown:
            legend = [f"{i}. {'the page image' if label == 'image' else 'reference sheet'} "
                      f"{_rel(job.story_dir, p)}" for i, (label, p) in enumerate(shown, 1)]
            user += "\n\nImages attached, in order:\n" + "\n".join(legend)
        return user, draft_judgement(self.schema_of(job.template)), images

    def execute(self, job: StepRun) -> None:
        if not self.is_enabled(job.template):
            job.write(job.rel, {"judge": self.name, "page": job.ctx.n, "enabled": False},
                      made_by="judge (disabled)", offline=False)
            return
        data, made_by, offline = self.answer(job)
        out = {"judge": self.name, "page": job.ctx.n, "enabled": True, "draft": offline,
               "madeBy": made_by,
               "images": [_rel(job.story_dir, p) for _l, p in self.shown(job)]}
        out.update(data if isinstance(data, dict) else {"answer": data})
        job.write(job.rel, out, made_by=made_by, offline=offline)


def _rel(story_dir: Path, path: Path) -> str:
    try:
        return path.relative_to(story_dir).as_posix()
    except ValueError:
        return str(path)
