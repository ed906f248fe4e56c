"""The built-in step kinds, and loading the kinds of plugins.

Layer: **graph**. Each built-in kind is one module that registers itself with
:func:`cloops.graph.steps.step_kind`, exactly as a template's ``workflow.py`` or a plugin does:

- :mod:`.llm`       ``LLMStep``       a call to the LLM service, validated, re-asked when invalid
- :mod:`.image`     ``ImageStep``     a call to the image service
- :mod:`.voice`     ``VoiceStep``     a call to the voice service, with per-segment timings
- :mod:`.assemble`  ``AssembleStep``  a target made by a function, no service
- :mod:`.bundle`    ``BundleStep``    the deliverables copied into one folder; finishes the story
- :mod:`.check`     ``CheckStep``     a judgement made without any call (evals), as a target
- :mod:`.judge`     ``JudgeStep``     an opt-in LLM judge with a rubric, optionally shown images
- :mod:`.evals`     ``EvalsStep``     a story's evals.json from its checks and judgements
- :mod:`.ads`       ``AdCopyStep``    an ``llm`` step of the ad components (hook lines, CTA
                    lines, tags); ``AdVoiceStep`` a line spoken; ``HookClipStep``,
                    ``CtaClipStep``, ``BodyClipStep``  vertical clips rendered from the pages
                    (no service)
- :mod:`.ad_manifest` ``AdManifestStep``  the components' manifest for AdLoops

:mod:`.optin` holds ``OptIn``, the base of kinds switched on by a config value (judges, ads).
"""

from __future__ import annotations

import importlib
import os

from ...core.errors import InputError
from ..steps import Step, registered_kinds
from .ad_manifest import AdManifestStep
from .ads import AdCopyStep, AdVoiceStep, BodyClipStep, CtaClipStep, HookClipStep
from .assemble import AssembleStep
from .bundle import BundleStep
from .check import CheckStep
from .evals import EvalsStep
from .image import ImageStep
from .judge import JudgeStep
from .llm import LLMStep
from .optin import OptIn
from .voice import VoiceStep

__all__ = ["AdCopyStep", "AdManifestStep", "AdVoiceStep", "AssembleStep", "BodyClipStep",
           "BundleStep", "CheckStep", "CtaClipStep", "EvalsStep", "HookClipStep", "ImageStep", "JudgeStep", "LLMStep",
           "OptIn", "VoiceStep", "load_kinds"]

_loaded = False


def load_kinds() -> dict[str, type[Step]]:
    """Every registered step kind by name, after importing the plugins once: the
    ``cloops.step_kinds`` entry-point group and the modules named in ``CLOOPS_PLUGINS``
    (comma-separated; the same variable names backend plugins).

    Raises:
        InputError: a module named in ``CLOOPS_PLUGINS`` cannot be imported.
    """
    global _loaded
    if not _loaded:
        _loaded = True
        from ...services.registry import plugin_entry_points  # one scan for every group
        for ep in plugin_entry_points("cloops.step_kinds"):
            ep.load()
        for mod in filter(None, (m.strip() for m in os.environ.get("CLOOPS_PLUGINS", "").split(","))):
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                raise InputError(f"cannot import plugin {mod!r}: {exc}.", field="CLOOPS_PLUGINS",
                                 fix="install the plugin or correct the module name.") from None
    return registered_kinds()
