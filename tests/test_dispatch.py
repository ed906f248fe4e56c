"""The order ready tasks are dispatched in (cloops.run.dispatch): oldest story, deepest step first."""

from __future__ import annotations

from types import SimpleNamespace

from cloops.run.dispatch import ReadyQueue, task_priority
from conftest import REPO

FAKE = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_LLM_BACKEND": "fake-llm",
        "CLOOPS_IMAGE_BACKEND": "fake-image", "CLOOPS_VOICE_BACKEND": "fake-voice",
        "PYTHONPATH": str(REPO)}
T = "comic-books-standard"
DEPTH = {T: {"narrative": 0, "pages": 1, "prompt": 2, "image": 3, "bundle": 5}}


def node(name: str):
    return SimpleNamespace(task=SimpleNamespace(name=name))


def drain(q: ReadyQueue) -> list[str]:
    out = []
    while q:
        out.append(q.popleft().task.name)
    return out


def test_priority_is_story_then_depth_then_page():
    key = task_priority({f"{T}/a": 0, f"{T}/b": 1}, DEPTH)
    q = ReadyQueue(key)
    for name in (f"narrative:{T}/b", f"prompt:{T}/a/2", f"build:{T}/a", f"image:{T}/a/3",
                 f"prompt:{T}/a/1", "pending", f"expand:{T}/b", "build:a"):
        q.append(node(name))
    assert len(q) == 8
    assert drain(q) == ["pending", "build:a",  # groups over stories: lead doit to the tasks
                        f"image:{T}/a/3", f"prompt:{T}/a/1", f"prompt:{T}/a/2", f"build:{T}/a",
                        f"expand:{T}/b", f"narrative:{T}/b"]


def test_a_saturated_service_is_passed_over_while_other_work_is_ready():
    key = task_priority({f"{T}/a": 0, f"{T}/b": 1}, DEPTH)
    full = {"image"}
    q = ReadyQueue(key, lambda name: name.partition(":")[0] in full)
    for name in (f"image:{T}/a/1", f"image:{T}/a/2", f"narrative:{T}/b"):
        q.append(node(name))
    assert q.popleft().task.name == f"narrative:{T}/b"
    # only saturated work left: doit still gets the best of it
    assert q.popleft().task.name == f"image:{T}/a/1"
    full.clear()
    assert drain(q) == [f"image:{T}/a/2"]


def test_a_serial_build_finishes_each_story_before_starting_the_next(project):
    run = project.doit("-n", "1", env=FAKE)
    assert run.rc == 0, run.out + run.err
    order = [c["story"] for c in run.calls]
    assert order == sorted(order, key=["noah-s-ark", "david-and-goliath"].index)
    calls = [(c["step"], c["target"]) for c in run.calls if c["story"] == "noah-s-ark"]
    # the characters' sheets, which every page image waits for, come right after the cast
    sheets = sum(1 for s, _ in calls if s == "sheet")
    assert [s for s, _ in calls[:2 + sheets + 1]] == ["narrative", "cast"] + ["sheet"] * sheets + [
        "pages"]
    # depth first: each page's image right after its prompt, before the next page's prompt
    for i, (step, target) in enumerate(calls):
        if step == "prompt":
            n = target.split("/")[1].split(".")[0]
            assert calls[i + 1] == ("image", f"images/{n}.jpg"), calls


def test_doit_thread_runner_queues_are_simple_queues_and_need_nothing_more(tmp_path):
    """install_simple_queues swaps doit's queue.Queue for queue.SimpleQueue, which has only
    put, get, empty and qsize: doit's runner must call nothing else on its queues (a guard for
    a doit upgrade), and a thread run through them still runs every task."""
    import inspect
    import queue
    import re

    import doit.runner as runner
    from cloops.run.dispatch import install_simple_queues

    install_simple_queues()
    assert runner.MThreadRunner.Queue is queue.SimpleQueue
    source = inspect.getsource(runner.MRunner)
    called = set(re.findall(r"\b(?:job_q|result_q|self\.result_q)\.(\w+)\(", source))
    assert called and called <= {"put", "get", "empty"}, called

    from doit.dependency import Dependency, JsonDB
    from doit.task import Task
    ran = []
    tasks = [Task(f"t{i}", [(lambda i=i: ran.append(i) or True, [])]) for i in range(20)]

    class Quiet:
        def __getattr__(self, name):
            return lambda *a, **k: None
    from doit.control import TaskControl
    control = TaskControl(tasks)
    control.process(None)
    dep = Dependency(JsonDB, str(tmp_path / "doit.json"))
    run = runner.MThreadRunner(dep, Quiet(), num_process=4)
    run.run_all(control.task_dispatcher())
    assert sorted(ran) == list(range(20)) and run.final_result == runner.SUCCESS
