"""The ``bundle`` step kind: the deliverables copied into one folder; it finishes the story.

Layer: **graph**. The folder is built beside the old one and swapped in whole, so the bundle
holds the deliverables and nothing else, never half of them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from typing import Callable

from ..steps import DepContext, Step, StepRun, expand, placeholder_of, step_kind


@step_kind("bundle")
@dataclass(frozen=True)
class BundleStep(Step):
    """Copy deliverables into a folder that holds them and nothing else.

    Attributes:
        target: the bundle folder (``bundle``).
        files: bundle file name → source file in the story folder; ``{n}`` (or ``{id}``) in
            both expands over the items of that fan-out (``{"{n}.jpg": "images/{n}.jpg"}``).
    """

    finishes_story = True
    copies = True

    files: dict[str, str] = field(default_factory=dict)

    def reads(self) -> list[str]:
        return super().reads() + list(self.files.values())

    def target_patterns(self) -> list[str]:
        return [self.target] + [f"{self.target}/{dest}" for dest in self.files]

    def copied(self, keys: Callable[[str], list]) -> dict[str, str]:
        """Bundle file name → source path in the story folder, placeholders expanded over the
        keys of their fan-out (``keys(placeholder)``)."""
        wanted: dict[str, str] = {}
        for dest, src in self.files.items():
            ph = placeholder_of(dest)
            for k in (keys(ph) if ph else [None]):
                wanted[expand(dest, k)] = expand(src, k)
        return wanted

    def task_files(self, deps: DepContext) -> tuple[list[str], list[str]]:
        files, _ = super().task_files(deps)
        wanted = self.copied(deps.keys)
        return files + list(wanted.values()), [f"{self.target}/{dest}" for dest in wanted]

    def execute(self, job: StepRun) -> None:
        sdir = job.story_dir
        tmp = sdir / f".{self.target}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for dest, src in self.copied(job.keys).items():
            shutil.copy2(sdir / src, tmp / dest)
        # swap in whole: the bundle holds the deliverables and nothing else, never half of them
        old = sdir / f".{self.target}.old"
        if old.exists():
            shutil.rmtree(old)
        bdir = sdir / self.target
        if bdir.exists():
            bdir.rename(old)
        tmp.rename(bdir)
        if old.exists():
            shutil.rmtree(old)
