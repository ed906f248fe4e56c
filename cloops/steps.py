"""The template author's API: what a ``workflow.py`` imports to declare its steps.

A face over :mod:`cloops.graph.steps` (inputs, the :class:`Step` base, :func:`step_kind`,
:func:`derive`) and the built-in kinds of :mod:`cloops.graph.kinds`::

    from cloops.steps import LLMStep, ImageStep, file, item, story

A new kind is a :class:`Step` subclass with an ``execute(job)``, registered with
``@step_kind("<name>")`` — in a template's ``workflow.py``, or in a plugin module (entry-point
group ``cloops.step_kinds``, or ``CLOOPS_PLUGINS``).
"""

from .graph.kinds import AssembleStep, BundleStep, ImageStep, LLMStep, VoiceStep
from .graph.steps import (CollectionInput, DepContext, EachInput, FileInput, ForEach, ItemInput,
                          PartInput, Services, Step, StepContext, StepRun, StoryValue, ViewInput,
                          collection, derive, each, expand, file, item, part, short_value,
                          step_kind, story, view)

__all__ = ["AssembleStep", "BundleStep", "CollectionInput", "DepContext", "EachInput",
           "FileInput", "ForEach", "ImageStep", "ItemInput", "LLMStep", "PartInput", "Services",
           "Step", "StepContext", "StepRun", "StoryValue", "ViewInput", "VoiceStep", "collection",
           "derive", "each", "expand", "file", "item", "part", "short_value", "step_kind",
           "story", "view"]
