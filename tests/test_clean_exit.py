"""A build ends with exit 0 whatever its size: nothing the run builds up has to be torn down
recursively at interpreter exit.

A 1,000-story build used to run all 12,000 tasks, print its summary and exit 120
(``RecursionError`` while flushing ``sys.stderr`` at shutdown, then "lost sys.stderr"): doit's
``PythonAction`` captures output by swapping the process-wide ``sys.stdout``/``sys.stderr`` for
a ``Writer`` that wraps the stream it found, and with tasks in threads each task wrapped
another's Writer, so the streams ended as a chain as long as the run. The chain grows with the
number of tasks; the test catches it at 16 stories (~200 tasks) by checking the streams after
the run are the interpreter's own, and by exiting with a recursion limit far below what the
chain of such a run needs to flush.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import make_project

FAKES = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_LLM_BACKEND": "fake-llm",
         "CLOOPS_IMAGE_BACKEND": "fake-image"}

# doit's own entry point, then what the interpreter does at exit (flush sys.stdout and
# sys.stderr, logging.shutdown) with little stack to spare
RUNNER = """
import sys
from doit.doit_cmd import DoitMain
from doit.cmd_base import DodoTaskLoader
rc = DoitMain(DodoTaskLoader()).run(sys.argv[1:])
print("STREAMS", sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__, file=sys.__stderr__)
sys.setrecursionlimit(50)
sys.exit(rc)
"""


def test_a_threaded_build_leaves_the_standard_streams_as_they_were(tmp_path):
    from conftest import REPO
    proj = make_project(tmp_path)  # the 16 shipped stories of comic-books-standard
    env = proj._env("clean-exit", {**FAKES, "PYTHONPATH": str(REPO)})
    proc = subprocess.run([sys.executable, "-c", RUNNER], cwd=proj.root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "tasks ran" in proc.stdout, proc.stdout + proc.stderr
    assert "STREAMS True True" in proc.stderr, (
        "a task's output capture was left in place of sys.stdout/sys.stderr:\n" + proc.stderr)
    assert "RecursionError" not in proc.stderr and "lost sys.stderr" not in proc.stderr, \
        proc.stderr
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
