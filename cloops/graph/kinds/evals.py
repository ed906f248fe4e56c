"""The ``evals`` step kind: a story's ``evals.json``, gathered from its checks and judges.

Layer: **graph**. No call. Its inputs are the targets of the story's ``check`` and ``judge``
steps (:meth:`EvalsStep.over` declares them from a list of steps), so it re-runs when one of
those changes and only then. ``evals.threshold`` (config) marks the story "needs review".

``evals.json`` (format 1)::

    {"format": 1, "story": "<template>/<id>",
     "score": 4.25 | null,          mean of the criteria below; null when nothing was judged
     "scores": {criterion: mean score 1-5},   story criteria, page criteria averaged over pages
     "threshold": 3,
     "needsReview": bool,           a check failed, or a judged score is below the threshold
     "reviewReasons": [str, ...],
     "checks": {"pass": int, "warn": int, "fail": int},
     "results": [{"name", "result", "subject", "page", "evidence": [...]}, ...],
     "judged": {"<judge step>": {"draft": bool, "scores": {criterion: {"reason", "score"}},
                                 "rules": [{"id", "obeyed", "reason"}]  (when asked)}
                                    or, per page, {"<n>": {...}}},
     "judges": "off" | "draft" | "on"}

Draft judgements (offline) are listed but never scored nor compared with the threshold.
A judge asked about the story's rules answers ``rules``: one broken (``"obeyed": false``) marks
the story "needs review", naming the rule and the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..steps import EachInput, FileInput, Step, StepRun, each, file, step_kind

FORMAT = 1


@step_kind("evals")
@dataclass(frozen=True)
class EvalsStep(Step):
    """Gather check results and judgements into ``evals.json``.

    Attributes:
        threshold: config path of the score (1–5) below which a judged criterion marks the
            story "needs review" (a failed check always does).
    """

    light = True

    threshold: str = "evals.threshold"

    @classmethod
    def over(cls, steps: list[Step], *, name: str = "evals", target: str = "evals.json",
             **kw: Any) -> "EvalsStep":
        """An evals step whose inputs are the targets of every ``check`` and ``judge`` step
        of ``steps`` (``each(...)`` for those that fan out)."""
        inputs = {s.name: (each(s.target) if s.foreach else file(s.target))
                  for s in steps if s.kind in ("check", "judge")}
        return cls(name=name, target=target, inputs=inputs,
                   doc=kw.pop("doc", "evals.json: every check and judgement of the story"), **kw)

    def config_paths(self, tpl) -> list[str]:
        paths = super().config_paths(tpl)
        return paths if self.threshold in paths else paths + [self.threshold]

    def execute(self, job: StepRun) -> None:
        sdir = job.story_dir
        docs: list[tuple[str, Any]] = []  # (input name, parsed target), in declared order
        for name, inp in self.inputs.items():
            value = job.inputs.get(name)
            if isinstance(inp, EachInput):
                docs += [(name, json.loads((sdir / rel).read_text(encoding="utf-8")))
                         for rel in value or []]
            elif isinstance(inp, FileInput) and isinstance(value, (dict, list)):
                docs.append((name, value))
        threshold = float(job.template.config.get(self.threshold))
        job.write(job.rel, summarize(f"{job.ctx.template}/{job.ctx.story_id}", docs, threshold),
                  made_by="evals", offline=False)


def summarize(story: str, docs: list[tuple[str, Any]], threshold: float) -> dict:
    """``evals.json`` of a story from its check and judge targets (see the module docstring)."""
    results: list[dict] = []
    judged: dict[str, Any] = {}
    per_criterion: dict[str, list[float]] = {}
    reasons: list[str] = []
    states: set[str] = set()
    for name, doc in docs:
        if not isinstance(doc, dict):
            continue
        if "checks" in doc:
            for r in doc["checks"]:
                results.append({"name": r["name"], "result": r["result"],
                                "subject": doc.get("subject"), "page": doc.get("page"),
                                "evidence": r.get("evidence", [])})
            continue
        if "judge" not in doc:
            continue
        if not doc.get("enabled"):
            states.add("off")
            continue
        draft = bool(doc.get("draft"))
        states.add("draft" if draft else "on")
        scores = doc.get("scores") if isinstance(doc.get("scores"), dict) else {}
        entry = {"draft": draft, "scores": scores}
        answers = [a for a in doc.get("rules") or [] if isinstance(a, dict)]
        if answers:
            entry["rules"] = answers
        page = _page_of(doc)
        if page is None:
            judged[name] = entry
        else:
            judged.setdefault(name, {})[str(page)] = entry
        if draft:
            continue
        for a in answers:
            if a.get("obeyed") is False:
                where = f" on page {page}" if page is not None else ""
                reasons.append(f"rule {a.get('id')} broken{where}: "
                               f"{(a.get('reason') or '')[:160]}")
        for crit, s in scores.items():
            score = s.get("score") if isinstance(s, dict) else None
            if not isinstance(score, (int, float)):
                continue
            per_criterion.setdefault(crit, []).append(float(score))
            if score < threshold:
                where = f" on page {page}" if page is not None else ""
                reasons.append(f"{crit} {score:g}{where} is below the threshold {threshold:g}: "
                               f"{(s.get('reason') or '')[:160]}")
    counts = {k: sum(1 for r in results if r["result"] == k) for k in ("pass", "warn", "fail")}
    for r in results:
        if r["result"] == "fail":
            ev = r["evidence"][0] if r["evidence"] else {}
            where = " ".join(x for x in (f"page {r['page']}" if r["page"] else "",
                                         ev.get("where") or "") if x)
            reasons.insert(sum(1 for x in reasons if x.startswith("check ")),
                           f"check {r['name']} failed" + (f" ({where})" if where else "")
                           + (f": {ev.get('note')}" if ev.get("note") else ""))
    scores = {c: round(sum(v) / len(v), 2) for c, v in sorted(per_criterion.items())}
    return {
        "format": FORMAT, "story": story,
        "score": round(sum(scores.values()) / len(scores), 2) if scores else None,
        "scores": scores, "threshold": threshold,
        "needsReview": bool(reasons), "reviewReasons": reasons,
        "checks": counts, "results": results, "judged": judged,
        "judges": "on" if "on" in states else "draft" if "draft" in states else "off",
    }


def _page_of(doc: dict) -> int | None:
    """The page a judgement is of (its ``page``; None for a story judgement)."""
    page = doc.get("page")
    return page if isinstance(page, int) else None
