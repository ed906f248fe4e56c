"""Steps switched on by a config value: the base of opt-in kinds (paid judges, ad components).

Layer: **graph**.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..steps import DepContext, Step


@dataclass(frozen=True)
class OptIn(Step):
    """A step that runs only while the boolean config value ``enabled`` names is true (always
    when it names none).

    Switched off (:meth:`~cloops.graph.steps.Step.active`), it makes no task at all, steps
    reading its target see None, and its prompts, config values and kind values are no
    dependency of anything: editing them changes nothing until it is switched on. The switch
    itself is a config dependency, so turning it on reports completed stories stale.

    Put it first among the bases (``class JudgeStep(OptIn, LLMStep)``): its methods wrap the
    kind's.
    """

    enabled: str = ""

    def is_enabled(self, tpl) -> bool:
        """Whether the step runs (``enabled``'s config value; always when none is named)."""
        return bool(tpl.config.get(self.enabled, False)) if self.enabled else True

    def active(self, tpl) -> bool:
        return self.is_enabled(tpl)

    def template_files(self, tpl) -> list[str]:
        return super().template_files(tpl) if self.is_enabled(tpl) else []

    def prompt_variables(self, tpl) -> list[str]:
        return super().prompt_variables(tpl) if self.is_enabled(tpl) else []

    def config_paths(self, tpl) -> list[str]:
        paths = super().config_paths(tpl) if self.is_enabled(tpl) else []
        return paths + [self.enabled] if self.enabled and self.enabled not in paths else paths

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        return super().dependency_values(deps) if self.is_enabled(deps.template) else {}
