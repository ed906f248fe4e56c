"""The ``check`` step kind: a judgement made without any service call, written as a target.

Layer: **graph**. A check step's dependencies are exactly what it judges — the files it reads
(``file_dep``), the item or part of ``pages.json`` it looks at (``item(select=...)``,
``part(..., select=...)``), the config values it uses and the template files it compares
against (a lexicon, the knowledge layer's budgets) — so an edit re-runs only the checks that
read what changed. It runs on every build, offline included, and costs nothing.

The target holds ``{"subject": str | None, "page": int | None, "checks": [result, ...]}``;
a result is ``{"name", "result": "pass"|"warn"|"fail", "evidence": [evidence, ...]}`` and a
piece of evidence ``{"page", "where", "words", "note"}`` (which page, where on it, the
offending words, a sentence for people) — see :func:`verdict` and :func:`evidence`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ...core.errors import InputError
from ...core.fileio import sha256_file
from ..steps import FileInput, Fn, ItemInput, PartInput, Step, StepRun, expand, step_kind
from ..targets import read_manifest

RESULTS = ("pass", "warn", "fail")
DRAFTS_INPUT = "drafts"


def evidence(note: str, *, page: int | None = None, where: str | None = None,
             words: list[str] | tuple[str, ...] = ()) -> dict:
    """One piece of evidence: ``{"page", "where", "words", "note"}`` (``where``: "panel 2",
    "setting", "sentence 3"; ``words``: the offending words as written)."""
    return {"page": page, "where": where, "words": list(words), "note": note}


def verdict(name: str, failures: list[dict] = (), warnings: list[dict] = (), *,
            passed: str | None = None) -> dict:
    """One check's result: ``fail`` when there are failures, else ``warn`` when there are
    warnings, else ``pass`` (with ``passed`` as its evidence note, e.g. what was measured)."""
    found = [*failures, *warnings]
    result = "fail" if failures else "warn" if warnings else "pass"
    return {"name": name, "result": result,
            "evidence": found or ([evidence(passed)] if passed else [])}


@step_kind("check")
@dataclass(frozen=True)
class CheckStep(Step):
    """A no-call check.

    Attributes:
        run: ``run(inputs, ctx) -> [verdict, ...]``: the checks, each built with
            :func:`verdict`. ``inputs`` also holds each template file of ``files`` (its text)
            and ``inputs["drafts"]``: the story files it reads (``pages.json``) that are
            offline drafts as cloops wrote them — a check of what only a model can write
            (length, reading level) warns on a draft rather than failing.
        files: input name → template file it receives as text (``"lexicons/lettering.txt"``);
            their content is a dependency.
        subject: the artifact judged, shown with the results (``prompts/{n}.txt``).
    """

    light = True

    run: Fn | None = None
    files: dict[str, str] = field(default_factory=dict)
    subject: str = ""

    def template_files(self, tpl) -> list[str]:
        return list(self.files.values())

    def check(self, tpl) -> None:
        wf = str(tpl.dir / "workflow.py")
        if self.run is None:
            raise InputError(f"check step {self.name!r} has no run function.", file=wf,
                             fix="pass run=<function(inputs, ctx) -> [verdict(...), ...]>.")
        clash = sorted((set(self.files) | {DRAFTS_INPUT}) & set(self.inputs))
        if clash:
            raise InputError(f"check step {self.name!r}: input name {clash[0]!r} is taken by "
                             "its template files or drafts.", file=wf, fix="rename the input.")
        for rel in self.files.values():
            tpl.text(rel)  # missing: InputError naming the file

    def sources(self) -> list[str]:
        """The story files the check's inputs come from (``{n}`` per item)."""
        out = [i.path for i in self.inputs.values() if isinstance(i, FileInput)]
        out += [i.path for i in self.inputs.values() if isinstance(i, PartInput)]
        if self.foreach and any(isinstance(i, ItemInput) for i in self.inputs.values()):
            out.append(self.foreach.source)
        return out

    def execute(self, job: StepRun) -> None:
        tpl, n = job.template, job.ctx.n
        inputs = dict(job.inputs)
        for name, rel in self.files.items():
            inputs[name] = tpl.text(rel)
        inputs[DRAFTS_INPUT] = drafts(job.story_dir, [expand(p, n) for p in self.sources()])
        try:
            results = list(self.run(inputs, job.ctx))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # a hand edit the check cannot read is a finding, not a crash of the story
            if os.environ.get("CLOOPS_DEBUG"):
                raise
            results = [verdict(self.name, [evidence(
                f"the check could not judge {expand(self.subject, n) or 'its input'} "
                f"({type(exc).__name__}: {exc}): if it was edited by hand, correct the edit "
                "or delete the file to regenerate it (CLOOPS_DEBUG=1 shows where it failed)",
                page=n)])]
        for r in results:
            if not (isinstance(r, dict) and isinstance(r.get("name"), str)
                    and r.get("result") in RESULTS and isinstance(r.get("evidence"), list)):
                raise InputError(f"check step {self.name!r} returned {r!r}, not a verdict.",
                                 file=str(tpl.dir / "workflow.py"),
                                 fix="build each result with cloops.steps.verdict(...).")
        job.write(job.rel, {"subject": expand(self.subject, n) or None, "page": n,
                            "checks": results}, made_by="check", offline=False)


def drafts(story_dir, rels: list[str]) -> list[str]:
    """Those of ``rels`` that hold an offline draft exactly as cloops wrote it (not edited
    since): the manifest says offline and its digest is the file's."""
    manifest = read_manifest(story_dir)
    out = []
    for rel in dict.fromkeys(rels):
        rec = manifest.get(rel) or {}
        if rec.get("offline") and rec.get("sha256") == sha256_file(story_dir / rel):
            out.append(rel)
    return out
