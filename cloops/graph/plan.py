"""The artifact graph of a template's steps: who makes each target, what fans out, how deep
each step sits, what a dry run leaves out.

Layer: **graph**. Computed once per template (:func:`plan_of`, kept in the template's
``memo``) from what each step declares (:meth:`cloops.graph.steps.Step.reads`, its inputs);
no kind is named here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import InputError
from .kinds import load_kinds
from .steps import EachInput, ItemInput, PartInput, Step

MEDIA_SERVICES = ("image", "voice")  # what a dry run does not call


@dataclass
class Plan:
    """The graph of one template's steps.

    Attributes:
        steps: the declared steps, in order.
        foreach_source: the JSON artifact the per-item steps fan out over (``pages.json``),
            or None.
        foreach_key: the list's key in it (``pages``), or None.
        producers: target pattern → the step that makes it (``images/{n}.jpg`` → image).
        dynamic: steps that can only be created once the fan-out source exists.
        media: steps that call a media service and every step that reads their output (what
            a dry run leaves out).
        depth: step name → depth in the graph (0: reads no other step's output).
    """

    steps: list[Step]
    foreach_source: str | None
    foreach_key: str | None
    producers: dict[str, Step]
    dynamic: set[str]
    media: set[str]
    depth: dict[str, int]

    def producer_of(self, path: str) -> Step | None:
        """The step whose target pattern is ``path``, or None."""
        return self.producers.get(path)


def plan_of(tpl) -> Plan:
    """The :class:`Plan` of a template's steps (computed once, kept in ``tpl.memo``).

    Raises:
        InputError: a step is not of a registered kind, steps fan out over two different
            files, or a step reads ``item()``/``each()`` with nothing to fan out over.
    """
    plan = tpl.memo.get("plan")
    if plan is None:
        plan = tpl.memo["plan"] = _make(tpl)
    return plan


def _sources(step: Step, foreach_source: str | None) -> list[str]:
    """Every artifact pattern ``step``'s output depends on: files it reads, JSON parts, and
    the fan-out source for an item input."""
    out = step.reads()
    out += [i.path for i in step.inputs.values() if isinstance(i, PartInput)]
    if foreach_source and any(isinstance(i, ItemInput) for i in step.inputs.values()):
        out.append(foreach_source)
    return out


def _make(tpl) -> Plan:
    wf = str(tpl.dir / "workflow.py")
    registered = load_kinds()
    for s in tpl.steps:
        cls = registered.get(getattr(s, "kind", ""))
        if cls is None or not isinstance(s, cls):
            raise InputError(
                f"step {s.name!r} is a {type(s).__name__}, not a registered step kind.", file=wf,
                fix=f"use one of {', '.join(sorted(registered))}, or decorate your Step "
                    "subclass with @step_kind(\"<name>\").")
    fans = [s.foreach for s in tpl.steps if s.foreach]
    sources = {f.source for f in fans}
    if len(sources) > 1:
        raise InputError(f"steps fan out over different files {sorted(sources)}; one is supported.",
                         file=wf)
    source = fans[0].source if fans else None
    for s in tpl.steps:
        if not source and any(isinstance(i, (ItemInput, EachInput)) for i in s.inputs.values()):
            raise InputError(f"step {s.name!r} reads item()/each() but no step has foreach.",
                             file=wf)
    producers = {t: s for s in tpl.steps for t in (s.target, *s.also)}
    reads = {s.name: _sources(s, source) for s in tpl.steps}

    def upstream(s: Step) -> list[str]:
        return [producers[p].name for p in reads[s.name] if p in producers]

    dynamic: set[str] = set()
    media = {s.name for s in tpl.steps if s.service in MEDIA_SERVICES}
    grew = True
    while grew:
        grew = False
        for s in tpl.steps:
            ups = upstream(s)
            if s.name not in dynamic and (
                    s.foreach is not None
                    or any(isinstance(i, (ItemInput, PartInput, EachInput))
                           for i in s.inputs.values())
                    or any("{n}" in p for p in s.reads())
                    or any(u in dynamic for u in ups)):
                dynamic.add(s.name)
                grew = True
            if s.name not in media and any(u in media for u in ups):
                media.add(s.name)
                grew = True
    depth: dict[str, int] = {}
    for _ in range(len(tpl.steps) + 1):  # a valid workflow has no cycle: this settles
        for s in tpl.steps:
            depth[s.name] = 1 + max((depth.get(u, 0) for u in upstream(s)), default=-1)
    return Plan(steps=list(tpl.steps), foreach_source=source,
                foreach_key=fans[0].key if fans else None, producers=producers,
                dynamic=dynamic, media=media, depth=depth)
