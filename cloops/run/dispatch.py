"""The order doit dispatches ready tasks in: oldest story first, deepest step first.

Layer: **run**.

doit keeps the tasks whose dependencies are done in a FIFO queue (``TaskDispatcher.ready``,
doit 0.37 ``control.py``) and has no hook to order it (pydoit#130, #162 ask for resource
pools; nothing schedules by priority). With 100 stories, FIFO is breadth-first: every story's
narrative, then every story's page plan, and only then the first image prompt — the image
service, the slowest and the one with the tightest limit, sits idle for seconds while the
LLM works through the whole backlog's first steps. It also means no story is finished until
nearly all are.

:func:`install` replaces that queue, for this process, with a priority queue ordered by
``(story's position in the run, -depth of the step, page number)``: a ready task of an earlier
story goes first, and within a story the step deepest in the artifact graph (image before
prompt before page plan) does. Which tasks are ready, and so what may run, is doit's decision
as before: only the order among ready tasks changes. The effect is depth-first: the first
images start as soon as the first story's prompts exist, the image service then stays busy
while later stories' text is written, and bundles are finished in backlog order.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

Priority = tuple[int, int, int]


def task_priority(story_index: dict[str, int], depth: dict[str, dict[str, int]]
                  ) -> Callable[[str], Priority]:
    """A key for task names (smaller runs first).

    ``story_index``: ``{"<template>/<id>": position}``; ``depth``: ``{template: {step: rank}}``
    (:attr:`cloops.graph.plan.Plan.rank`: the depth, gates first). Tasks that are not one story's (``pending``,
    ``build:<id>`` over templates) come first: they only lead doit to the tasks.
    """
    def key(name: str) -> Priority:
        step, _, rest = name.partition(":")
        parts = rest.split("/")
        skey = "/".join(parts[:2])
        idx = story_index.get(skey)
        if idx is None:
            return (-1, 0, 0)
        n = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
        if step.startswith("expand"):
            return (idx, -1000, 0)  # creates the story's page tasks: cheap, and unlocks them
        steps = depth.get(parts[0], {})
        if step not in steps:
            return (idx, 1000, 0)   # the story's groups (build:, dry:) and checks
        return (idx, -steps[step], n)
    return key


class ReadyQueue:
    """The ``deque`` interface doit's dispatcher uses on ``ready`` (``append``, ``popleft``,
    truth value, ``len``), ordered by ``key(node.task.name)``; equal keys in arrival order.

    ``saturated(name)``, when given, says that the service a task would call already has a
    full queue of callers waiting (:meth:`cloops.run.limits.ServiceLimiter.saturated`): such a task
    is passed over for the best one that is not (a worker thread given to an image task only to
    wait would starve the prompts that feed the image service). When every ready task is
    passed over, the best one is returned anyway: doit always gets a task when one is ready.
    """

    LOOKAHEAD = 256  # ready tasks examined at most for one pop

    def __init__(self, key: Callable[[str], Priority],
                 saturated: Callable[[str], bool] | None = None):
        self._key = key
        self._saturated = saturated
        self._heap: list = []
        self._seq = itertools.count()

    def append(self, node) -> None:
        heapq.heappush(self._heap, (self._key(node.task.name), next(self._seq), node))

    def popleft(self):
        if self._saturated is None or not self._saturated(self._heap[0][2].task.name):
            return heapq.heappop(self._heap)[2]
        skipped = [heapq.heappop(self._heap)]
        chosen = None
        while self._heap and len(skipped) < self.LOOKAHEAD:
            entry = heapq.heappop(self._heap)
            if not self._saturated(entry[2].task.name):
                chosen = entry
                break
            skipped.append(entry)
        if chosen is None:
            chosen = skipped.pop(0)
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        return chosen[2]

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)


def step_and_template(name: str) -> tuple[str, str]:
    """``(step, template)`` of a step task's name (``prompt:<template>/<story>/<n>``); for
    other tasks, whatever stands in those places (``pending`` -> ``("pending", "")``)."""
    step, _, rest = name.partition(":")
    return step, rest.split("/", 1)[0]


def service_saturation(proj, limiter: Callable[[str, str], Any]) -> Callable[[str], bool]:
    """``saturated(task name)`` for a project: true when the task's step calls a service whose
    limiter already has a full queue of callers waiting (False for steps that call nothing).

    ``limiter(template, service)`` gives the :class:`cloops.run.limits.ServiceLimiter` of the
    backend serving that service (:meth:`cloops.run.hub.ServiceHub.limiter`)."""
    services = {b.template: {s.name: s.service for s in proj.template(b.template).steps
                             if s.service} for b in proj.backlogs}
    limiters: dict = {}

    def saturated(name: str) -> bool:
        step, template = step_and_template(name)
        service = services.get(template, {}).get(step)
        if service is None:
            return False
        lim = limiters.get((template, service))
        if lim is None:
            lim = limiters[(template, service)] = limiter(template, service)
        return lim.saturated()
    return saturated


def light_tasks(proj) -> Callable[[str], bool]:
    """``light(task name)`` for a project: true when the task's step is of a kind marked
    :attr:`cloops.graph.steps.Step.light` (no service, milliseconds of work)."""
    light = {b.template: frozenset(s.name for s in proj.template(b.template).steps if s.light)
             for b in proj.backlogs}
    none: frozenset = frozenset()

    def is_light(name: str) -> bool:
        step, template = step_and_template(name)
        return step in light.get(template, none)
    return is_light


_KEY: list[Callable[[str], Priority]] = []


def call_priority(template: str, story: str, step: str) -> Priority | tuple:
    """The priority of a service call made by a step of a story (the same order as tasks:
    :func:`task_priority`), for :class:`cloops.run.limits.PrioritySlots`; ``()`` (first come, first
    served) when no order was installed."""
    return _KEY[0](f"{step}:{template}/{story}") if _KEY else ()


def install(key: Callable[[str], Priority],
            saturated: Callable[[str], bool] | None = None) -> None:
    """Make doit's task dispatchers in this process use a :class:`ReadyQueue` ordered by ``key``
    (and passing over tasks for which ``saturated(task name)`` is true while others are ready).

    doit creates its ``TaskDispatcher`` after loading ``dodo.py`` (``TaskControl.task_dispatcher``
    looks the class up in ``doit.control`` when called), so installing from the dodo file takes
    effect for that run. Calling again replaces the key.
    """
    import doit.control as control

    _KEY[:] = [key]

    base = getattr(control, "_cloops_base_dispatcher", control.TaskDispatcher)
    control._cloops_base_dispatcher = base

    class PriorityDispatcher(base):  # type: ignore[misc, valid-type]
        def __init__(self, tasks, targets, selected_tasks):
            super().__init__(tasks, targets, selected_tasks)
            self.ready = ReadyQueue(key, saturated)  # read by the generator when first stepped

    control.TaskDispatcher = PriorityDispatcher
    install_simple_queues()


def install_inline(light: Callable[[str], bool]) -> None:
    """Make doit's thread runner execute some tasks on its dispatching thread (the main one)
    instead of a worker thread: tasks without actions (groups such as ``build:<id>``) and
    those for which ``light(task name)`` is true (:func:`light_tasks`).

    doit 0.37's ``MThreadRunner`` hands every task to a worker through a queue and its result
    back through another (``runner.py``: ``MRunner.get_next_job``, ``run_tasks``,
    ``execute_task_subprocess``): two thread wake-ups and two hand-offs of the interpreter
    lock per task, and a copy of the task's attributes each way (``pickle_safe_dict`` /
    ``update_from_pickle``, made for processes). A check that reads a JSON file and writes a
    verdict takes less time than its trip. Here ``get_next_job`` runs such a task where it
    picks it (``execute_task`` then ``process_task_result``, what doit's serial ``Runner``
    does), tells the dispatcher it is done and picks again, until it finds a task for a
    worker. Which tasks are ready, the order among them, up-to-date checks, the reporter's
    lines and the saved state are the same: only the thread differs. Calls of every other
    task still run on the workers. A light task delays the next dispatch by its own few
    milliseconds, and by its wait for a turn (:mod:`cloops.core.turns`) while a worker runs
    Python, which the next task's worker would have waited for too. The first call pins the
    dispatching thread to its processor before any worker starts, and each call lets the pin
    look whether to move (:mod:`cloops.core.cpus`). Calling again replaces
    ``light``; a doit upgrade should re-check ``get_next_job``'s protocol against this copy
    (``tests/test_dispatch.py`` does).
    """
    from doit.runner import JobHold, JobTaskPickle, MThreadRunner

    from ..core import cpus

    def get_next_job(self, completed):
        pinned = cpus.pin()  # first called before any worker starts: they inherit it
        if pinned is not None:
            pinned.check()
        if self._stop_running:
            return None  # gentle stop
        node = completed
        while True:
            try:
                node = self.task_dispatcher.generator.send(node)
                if node == "hold on":
                    self.free_proc += 1
                    return JobHold()
            except StopIteration:
                return None  # no more tasks: one worker ends
            if not self.select_task(node, self.tasks):
                continue  # up to date (or ignored): done, picked again with the next send
            task = node.task
            if task.actions and not light(task.name):
                return JobTaskPickle(task)
            self.process_task_result(node, self.execute_task(task))
            if self._stop_running:
                return None

    MThreadRunner.get_next_job = get_next_job


def install_simple_queues() -> None:
    """Make doit's thread runner hand tasks to its worker threads, and results back, through
    ``queue.SimpleQueue`` instead of ``queue.Queue``.

    doit 0.37's ``MThreadRunner`` only calls ``put``, ``get`` and ``empty`` on its two queues
    (``runner.py``: ``MRunner.run_tasks``, ``execute_task_subprocess``), which ``SimpleQueue``
    has, in C: ``queue.Queue`` is a ``Condition`` in Python, which makes a lock per wait and
    whose ``notify`` did a tenth of the interpreter's work on doit's main thread in a build
    against instant fakes (py-spy, issue 24). Idempotent; a doit upgrade should re-check that
    the runner still needs nothing more of its queues.
    """
    import queue

    from doit.runner import MThreadRunner

    MThreadRunner.Queue = staticmethod(queue.SimpleQueue)
