"""The artifact graph of a template's steps: who makes each target, what fans out over what,
which tasks can only be made once a fan-out file exists, how deep each step sits, what a dry
run leaves out.

Layer: **graph**. Computed once per template (:func:`plan_of`, kept in the template's
``memo``) from what each step declares (its inputs, :meth:`~cloops.graph.steps.Step.reads`,
:meth:`~cloops.graph.steps.Step.files_need_values`); no kind is named here.

A template may fan out over several JSON files (pages of ``pages.json`` by number, characters
of ``cast.json`` by id). Each such *fan-out source* gets one delayed task creator per story,
run by doit once the step that writes the file has run; a step that needs several sources is
made by the creator of the one written last and waits for the others' tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import InputError
from .kinds import load_kinds
from .steps import (EachInput, ForEach, ItemInput, PartInput, Step, ViewInput, placeholder_of)

MEDIA_SERVICES = ("image", "voice")  # what a dry run does not call


@dataclass
class Plan:
    """The graph of one template's steps.

    Attributes:
        steps: the declared steps, in order.
        fanouts: fan-out source path → its :class:`~cloops.graph.steps.ForEach`
            (``pages.json`` → pages by number), in the order their producers run.
        producers: target pattern → the step that makes it (``images/{n}.jpg`` → image).
        dynamic: steps whose tasks can only be made once a fan-out source exists.
        creator: dynamic step name → the fan-out source whose creator makes its tasks.
        needs: dynamic step name → every fan-out source its tasks need (the creator's and
            those whose tasks it waits for).
        media: steps that call a media service and every step that reads their output (what
            a dry run leaves out).
        depth: step name → depth in the graph (0: reads no other step's output).
        rank: step name → its place in a depth-first run (higher runs first): the depth,
            except that a step every task of another fan-out waits for as a whole (the
            characters' sheets, which every page image waits for) outranks them all.
        inactive: steps switched off by the template's config (:meth:`Step.active`): they
            make no task, and an input made by one of them is None.
    """

    steps: list[Step]
    fanouts: dict[str, ForEach]
    producers: dict[str, Step]
    dynamic: set[str]
    creator: dict[str, str]
    needs: dict[str, list[str]]
    media: set[str]
    depth: dict[str, int]
    by_placeholder: dict[str, str] = field(default_factory=dict)
    rank: dict[str, int] = field(default_factory=dict)
    inactive: set[str] = field(default_factory=set)

    @property
    def live_fanouts(self) -> list[str]:
        """The fan-out sources made by an active step (or by none): those a story gets a
        task creator for. A source made by a step switched off is never written."""
        return [src for src in self.fanouts if not self.made_by_inactive(src)]

    def made_by_inactive(self, pattern: str) -> bool:
        """True when the step that makes ``pattern`` (a target pattern) is switched off."""
        prod = self.producers.get(pattern)
        return prod is not None and prod.name in self.inactive

    @property
    def foreach_source(self) -> str | None:
        """The numbered fan-out's source (``pages.json``: the pages), else the first fan-out's,
        or None."""
        numbered = [src for src, f in self.fanouts.items() if f.by == "n"]
        return (numbered or list(self.fanouts) or [None])[0]

    @property
    def foreach_key(self) -> str | None:
        """The list's key in :attr:`foreach_source` (``pages``), or None."""
        src = self.foreach_source
        return self.fanouts[src].key if src else None

    def producer_of(self, path: str) -> Step | None:
        """The step whose target pattern is ``path``, or None."""
        return self.producers.get(path)

    def source_of(self, placeholder: str) -> str | None:
        """The fan-out source whose items ``{n}`` / ``{id}`` stands for, or None."""
        return self.by_placeholder.get(placeholder)


def plan_of(tpl) -> Plan:
    """The :class:`Plan` of a template's steps (computed once, kept in ``tpl.memo``).

    Raises:
        InputError: a step is not of a registered kind; two fan-outs use one placeholder; a
            fan-out source or a JSON file read as a value is made by a step that is itself
            made per item; a step reads ``item()``/``each()`` with nothing to fan out over.
    """
    plan = tpl.memo.get("plan")
    if plan is None:
        plan = tpl.memo["plan"] = _make(tpl)
    return plan


def value_paths(step: Step, item_source: str | None) -> list[str]:
    """The JSON artifacts ``step`` reads values from: parts, views, and its item's source."""
    out = [i.path for i in step.inputs.values() if isinstance(i, (PartInput, ViewInput))]
    if item_source and any(isinstance(i, ItemInput) for i in step.inputs.values()):
        out.append(item_source)
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
    producers = {t: s for s in tpl.steps for t in (s.target, *s.also)}
    fanouts: dict[str, ForEach] = {}
    by_placeholder: dict[str, str] = {}
    for s in tpl.steps:
        f = s.foreach
        if f is None:
            continue
        old = fanouts.setdefault(f.source, f)
        if (old.key, old.by) != (f.key, f.by):
            raise InputError(f"steps fan out over {f.source} in two ways ({old.key}/{old.by} "
                             f"and {f.key}/{f.by}).", file=wf)
        other = by_placeholder.setdefault(f.placeholder, f.source)
        if other != f.source:
            raise InputError(f"{other} and {f.source} both fan out as {f.placeholder}; give "
                             "one of them by=\"id\".", file=wf)
    # a step's item is of its own fan-out (a step without foreach has none)
    item_source = {s.name: s.foreach.source if s.foreach else None for s in tpl.steps}
    for s in tpl.steps:
        if any(isinstance(i, ItemInput) for i in s.inputs.values()) and not s.foreach:
            raise InputError(f"step {s.name!r} reads item() but has no foreach.", file=wf)
        for i in s.inputs.values():
            if isinstance(i, EachInput):
                ph = placeholder_of(i.pattern)
                if ph is None or ph not in by_placeholder:
                    raise InputError(f"step {s.name!r} reads each({i.pattern!r}) but no step "
                                     f"fans out as {ph or '{n}'}.", file=wf)
    reads = {s.name: s.reads() + value_paths(s, item_source[s.name]) for s in tpl.steps}

    def upstream(s: Step) -> list[Step]:
        return [producers[p] for p in reads[s.name] if p in producers]

    # which fan-out sources a step's tasks need before they can be made
    needs: dict[str, set[str]] = {s.name: set() for s in tpl.steps}
    grew = True
    while grew:
        grew = False
        for s in tpl.steps:
            want = set(needs[s.name])
            if s.foreach:
                want.add(s.foreach.source)
            for p in s.reads():
                ph = placeholder_of(p)
                if ph and ph in by_placeholder and not (s.foreach and s.foreach.placeholder == ph):
                    want.add(by_placeholder[ph])  # every item's file: each(), a bundle
            if s.files_need_values():
                want |= {p for p in value_paths(s, item_source[s.name]) if p in fanouts}
            for u in upstream(s):
                want |= needs[u.name]
            if want != needs[s.name]:
                needs[s.name] = want
                grew = True
    dynamic = {n for n, w in needs.items() if w}
    for source in fanouts:
        prod = producers.get(source)
        if prod is not None and prod.name in dynamic:
            raise InputError(f"{source} is fanned out over but made per item by step "
                             f"{prod.name!r}; a fan-out source must be made once per story.",
                             file=wf)
    for s in tpl.steps:
        for p in value_paths(s, item_source[s.name]):
            prod = producers.get(p)
            if prod is not None and prod.name in dynamic:
                raise InputError(f"step {s.name!r} reads values of {p}, which step "
                                 f"{prod.name!r} makes per item; read it as a file instead.",
                                 file=wf)
    media = {s.name for s in tpl.steps if s.service in MEDIA_SERVICES}
    grew = True
    while grew:
        grew = False
        for s in tpl.steps:
            if s.name not in media and any(u.name in media for u in upstream(s)):
                media.add(s.name)
                grew = True
    depth: dict[str, int] = {}
    for _ in range(len(tpl.steps) + 1):  # a valid workflow has no cycle: this settles
        for s in tpl.steps:
            depth[s.name] = 1 + max((depth.get(u.name, 0) for u in upstream(s)), default=-1)
    # fan-out sources in the order they are written; a step is made by the last it needs
    order = sorted(fanouts, key=lambda src: depth.get(producers[src].name, 0)
                   if src in producers else 0)
    fanouts = {src: fanouts[src] for src in order}
    creator = {n: max(w, key=order.index) for n, w in needs.items() if w}
    waited = {src for n, w in needs.items() for src in w if src != creator[n]}
    top = max(depth.values(), default=0) + 1
    rank = {s.name: top + depth[s.name] if creator.get(s.name) in waited else depth[s.name]
            for s in tpl.steps}
    inactive = {s.name for s in tpl.steps if not s.active(tpl)}
    for s in tpl.steps:
        off = [src for src in needs[s.name] if src in producers and
               producers[src].name in inactive]
        if off and s.name not in inactive:
            raise InputError(f"step {s.name!r} fans out over {off[0]}, which step "
                             f"{producers[off[0]].name!r} makes, but that step is switched off "
                             "in config.", file=wf,
                             fix="switch both on or off together (the same config value).")
    return Plan(steps=list(tpl.steps), fanouts=fanouts, producers=producers, dynamic=dynamic,
                creator=creator, needs={n: sorted(w, key=order.index) for n, w in needs.items()
                                        if w},
                media=media, depth=depth, by_placeholder=by_placeholder, rank=rank,
                inactive=inactive)
