"""The template author's API: what a ``workflow.py`` imports to declare its steps.

A face over :mod:`cloops.graph.steps` (inputs, the :class:`Step` base, :func:`step_kind`,
:func:`derive`) and the built-in kinds of :mod:`cloops.graph.kinds`::

    from cloops.steps import LLMStep, ImageStep, file, item, story

No-call checks and judged evals: :class:`CheckStep` (with :func:`verdict`, :func:`evidence`
and the text measures of :mod:`prose`), :class:`JudgeStep`, :class:`EvalsStep`.

Ad components (switched on by ``ads.enabled``): :class:`AdCopyStep` (hook lines, CTA lines,
tags), :class:`AdVoiceStep` (a line spoken), :class:`HookClipStep` (with :func:`hook_shot`),
:class:`CtaClipStep` (with :func:`cta_card`), :class:`BodyClipStep`, :class:`AdManifestStep`.
A kind of one's own switched on by a config value subclasses :class:`OptIn` first.

A new kind is a :class:`Step` subclass with an ``execute(job)``, registered with
``@step_kind("<name>")`` — in a template's ``workflow.py``, or in a plugin module (entry-point
group ``cloops.step_kinds``, or ``CLOOPS_PLUGINS``).
"""

from .core import prose
from .graph.kinds import (AdCopyStep, AdManifestStep, AdVoiceStep, AssembleStep, BodyClipStep,
                          BundleStep, CheckStep, CtaClipStep, EvalsStep, HookClipStep, ImageStep,
                          JudgeStep, LLMStep, OptIn, VoiceStep)
from .graph.kinds.ads import cta_card, hook_shot
from .graph.kinds.check import evidence, verdict
from .graph.kinds.llm import constrain
from .graph.steps import (CollectionInput, DepContext, EachInput, FileInput, ForEach, ItemInput,
                          PartInput, Services, Step, StepContext, StepRun, StoryValue, ViewInput,
                          collection, derive, each, expand, file, item, part, short_value,
                          step_kind, story, view)

__all__ = ["AdCopyStep", "AdManifestStep", "AdVoiceStep", "AssembleStep", "BodyClipStep",
           "BundleStep", "CheckStep", "CollectionInput", "CtaClipStep", "DepContext",
           "EachInput", "EvalsStep", "FileInput", "ForEach", "HookClipStep", "ImageStep",
           "ItemInput", "JudgeStep", "LLMStep", "OptIn", "PartInput", "Services", "Step",
           "StepContext", "StepRun", "StoryValue", "ViewInput", "VoiceStep", "collection",
           "constrain", "cta_card", "derive", "each", "evidence", "expand", "file",
           "hook_shot", "item", "part", "prose", "short_value", "step_kind", "story",
           "verdict", "view"]
