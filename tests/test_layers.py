"""The layer contract (pyproject ``[tool.importlinter]``): steer > run > graph > data > services >
core, no import cycle among siblings, and the template authors' face imported by no layer.

Checked with import-linter's own command on the package, and shown to fail when an upward
import or a cycle is planted in a copy of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    """Run lint-imports on the ``cloops`` package found under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package and its pyproject with ``line`` appended to ``module``."""
    shutil.copytree(ROOT / "cloops", tmp_path / "cloops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    return tmp_path


def test_the_package_keeps_its_layers():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout


@pytest.mark.parametrize("module, line, broken", [
    # graph importing the steering layer: an upward import
    ("cloops/graph/plan.py", "from ..steer import status  # planted", "Layers"),
    # services importing data: a driver that knows templates
    ("cloops/services/cache.py", "from ..data import template  # planted", "Layers"),
    # two graph modules importing each other: a cycle inside a layer
    ("cloops/graph/targets.py", "from . import locks  # planted", "No cycles"),
    # a layer importing the template authors' face
    ("cloops/run/execute.py", "from .. import steps  # planted", "Template face"),
])
def test_a_planted_import_breaks_the_contract(tmp_path, module, line, broken):
    proc = lint(copy_with(tmp_path, module, line))
    assert proc.returncode != 0, proc.stdout
    out = " ".join(proc.stdout.split())
    assert "BROKEN" in out
    broken_lines = [ln for ln in proc.stdout.splitlines() if "BROKEN" in ln]
    assert any(broken in ln for ln in broken_lines), proc.stdout
    # the planted module is named in the report (a cycle: its package, then the module)
    dotted = module.removesuffix(".py").replace("/", ".")
    package, _, leaf = dotted.rpartition(".")
    assert dotted in out or (package in out and f".{leaf} ->" in out), proc.stdout
