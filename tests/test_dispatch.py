"""The order ready tasks are dispatched in (cloops.run.dispatch): oldest story, deepest step first."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import pytest

from cloops.run.dispatch import ReadyQueue, task_priority
from conftest import REPO, child_processors

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


@pytest.fixture(autouse=True)
def unpinned_process(monkeypatch, own_processors):
    """doit's thread runner pins its threads (cloops.core.cpus) once per process: as if it
    had not (and the test process's processors given back) unless a test pins itself."""
    from cloops.core import cpus
    monkeypatch.setattr(cpus, "_PIN", [None])

def _thread_run(tmp_path, tasks, light, *, continue_=True):
    """Run doit ``tasks`` on its thread runner with :func:`install_inline` ``light``; return
    the runner."""
    import doit.runner as runner
    from cloops.run.dispatch import install_inline, install_simple_queues
    from doit.control import TaskControl
    from doit.dependency import Dependency, JsonDB

    failed: list[str] = []

    class Quiet:
        def add_failure(self, task, fail):
            failed.append(task.name)

        def __getattr__(self, name):
            return lambda *a, **k: None
    install_simple_queues()
    install_inline(light)
    control = TaskControl(tasks)
    control.process(None)
    dep = Dependency(JsonDB, str(tmp_path / "doit.json"))
    run = runner.MThreadRunner(dep, Quiet(), continue_=continue_, num_process=4)
    run.run_all(control.task_dispatcher())
    run.failed = failed
    return run


def test_light_tasks_run_on_the_dispatching_thread_and_the_rest_on_workers(tmp_path):
    """install_inline: a task of a light kind (a check) and a group without actions run where
    doit dispatches them; every other task still goes to a worker thread. Dependencies are
    kept, a light task that fails is a failure of its own (the run goes on), and a light task
    that is up to date is not run again."""
    import threading

    from doit.task import Task

    ran: dict[str, str] = {}
    order: list[str] = []

    def act(name, ok=True):
        def action():
            ran[name] = threading.current_thread().name
            order.append(name)
            return ok
        return [(action, [])]

    def tasks():
        return [
            Task("call:a", act("call:a")),
            Task("check:a", act("check:a"), task_dep=["call:a"]),
            Task("call:b", act("call:b"), task_dep=["check:a"]),
            Task("check:b", act("check:b", ok=False), task_dep=["call:b"]),
            Task("call:c", act("call:c"), task_dep=["check:b"]),  # not run: its dependency failed
            Task("check:c", act("check:c"), uptodate=[True]),    # up to date: not run
            Task("build:a", None, task_dep=["check:a", "call:b"]),
        ]

    light = lambda name: name.startswith("check:")  # noqa: E731
    run = _thread_run(tmp_path, tasks(), light)
    main = threading.main_thread().name
    assert ran["check:a"] == main and ran["check:b"] == main
    assert ran["call:a"] != main and ran["call:b"] != main
    assert order.index("call:a") < order.index("check:a") < order.index("call:b") \
        < order.index("check:b")
    assert "call:c" not in ran and "check:c" not in ran
    assert run.failed == ["check:b", "call:c"]  # call:c: its dependency failed


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two processors this process may use")
def test_the_thread_runner_puts_its_threads_on_the_dispatching_threads_processor(
        tmp_path, monkeypatch):
    """The first get_next_job pins doit's main thread before any worker starts
    (cloops.core.cpus), so every worker and every light task runs on one processor; work
    started in ``unpinned()`` (FFmpeg, a frame pool) gets them all."""
    from cloops.core import cpus
    from doit.task import Task
    monkeypatch.setattr(cpus, "_PIN", [])
    monkeypatch.delenv("CLOOPS_PIN", raising=False)
    allowed = os.sched_getaffinity(0)
    where: dict[str, tuple[str, set[int]]] = {}

    def record(name):
        def act():
            where[name] = (threading.current_thread().name, os.sched_getaffinity(0))
            if name == "call:render":
                with cpus.unpinned():
                    where["ffmpeg"] = ("child", child_processors())
            return True
        return act
    names = ["call:a", "check:a", "call:b", "call:render"]
    _thread_run(tmp_path, [Task(n, [(record(n), [])]) for n in names],
                lambda name: name.startswith("check:"))
    pin = cpus.current()
    assert pin is not None and pin.allowed == allowed
    main = threading.main_thread().name
    assert where["check:a"] == (main, {pin.cpu})
    for name in ("call:a", "call:b", "call:render"):
        assert where[name][0] != main and where[name][1] == {pin.cpu}, where
    assert where["ffmpeg"][1] == allowed


def test_the_inline_runner_follows_doits_own_get_next_job(tmp_path):
    """install_inline replaces MThreadRunner.get_next_job with a copy that runs light tasks
    itself: the protocol it copies (the dispatcher's generator, "hold on", select_task, the
    job types) must still be doit's, a guard for a doit upgrade. With nothing light, a run
    gives the same results as doit's own runner."""
    import inspect

    import doit.runner as runner
    from doit.task import Task

    source = inspect.getsource(runner.MRunner.get_next_job)
    for part in ("self._stop_running", "self.task_dispatcher.generator.send(node)",
                 '"hold on"', "self.free_proc += 1", "JobHold()", "StopIteration",
                 "self.select_task(node, self.tasks)", "JobTaskPickle(task)"):
        assert part in source, part
    ran = []
    tasks = [Task(f"t{i}", [(lambda i=i: ran.append(i) or True, [])],
                  task_dep=[f"t{i - 1}"] if i % 3 else []) for i in range(12)]
    run = _thread_run(tmp_path, tasks, lambda name: False)
    assert sorted(ran) == list(range(12)) and run.final_result == runner.SUCCESS


def test_light_steps_are_the_ones_that_call_nothing_and_wait_for_nothing(project):
    """light_tasks: the standard template's checks, evals and assembled files run inline;
    every step that calls a service, copies the bundle or renders does not."""
    from cloops.data.project import load_project
    from cloops.run.dispatch import light_tasks

    proj = load_project(project.root)
    light = light_tasks(proj)
    steps = {s.name: s for s in proj.template(T).steps}
    inline = {name for name in steps if light(f"{name}:{T}/noah-s-ark/1")}
    assert {"rules", "story-data", "sheet-prompt", "check-plan", "check-prompt",
            "evals"} <= inline
    assert not inline & {"narrative", "pages", "prompt", "image", "thumbnail", "bundle"}
    assert all(steps[name].service is None for name in inline)
    assert not light("pending") and not light("check-plan:other-template/x")
