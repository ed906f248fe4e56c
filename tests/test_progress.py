"""The build's output on a terminal: a live view (stories done, tasks in flight per service,
spend, ETA) instead of a line per task; failures, notes and the summary still printed.
``-v`` and piped output keep the lines (the other tests parse them).
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys

from conftest import make_project
from cloops.run.progress import wants_lines

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_terminal(project, *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``doit ARGS`` with a pseudo-terminal as its stdout and stderr; ``(rc, text)``."""
    master, slave = pty.openpty()
    env = project._env("tty", {"COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"})
    proc = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project.root, env=env,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("doit did not finish in a terminal")
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = proc.wait(timeout=30)
    return rc, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "")


def test_a_terminal_gets_a_live_view_not_a_line_per_task(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark", "david-and-goliath"])
    rc, out = in_terminal(project)
    assert rc == 0, out
    assert "✓ " not in out  # no line per task
    assert re.search(r"stories .* 2/2 done", out), out  # the view, as last drawn
    assert "in flight / " in out and "spent $" in out and "ETA" in out
    assert "! comic-books-standard/noah-s-ark  bundle  built with offline backends" in out  # notes
    assert "tasks ran for 2 stories" in out and "Calls this run" in out  # the summary

    # a failure is a line of its own
    (project.story_dir("noah-s-ark") / "pages.json").write_text("{ not json")
    rc, out = in_terminal(project)
    assert rc != 0
    assert "✗ comic-books-standard/noah-s-ark" in out and "FAILED comic-books-standard/noah-s-ark" in out


def test_verbose_or_piped_output_keeps_a_line_per_task(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark"])
    rc, out = in_terminal(project, "-v", "2")
    assert rc == 0, out
    assert "✓ comic-books-standard/noah-s-ark  narrative  (never built;" in out
    assert "2/2 done" not in out and "in flight / " not in out
    shutil.rmtree(project.story_dir("noah-s-ark"))
    run = project.doit()  # captured: a pipe
    assert "✓ comic-books-standard/noah-s-ark  narrative" in run.out and "in flight" not in run.out


def test_what_asks_for_lines(monkeypatch):
    monkeypatch.delenv("CLOOPS_PROGRESS", raising=False)
    assert wants_lines(["-v", "2"]) and wants_lines(["--verbosity", "1"])
    assert wants_lines(["--verbosity=2"]) and wants_lines(["-v2", "build:x"])
    assert not wants_lines(["build:noah-s-ark", "-n", "4"])
    monkeypatch.setenv("CLOOPS_PROGRESS", "lines")
    assert wants_lines([])
