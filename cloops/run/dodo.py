"""The run's doit namespace — task creators, ``DOIT_CONFIG`` with cloops' reporter and
dispatch order — or a clean error and exit code 2. ``dodo.py`` imports it through
:mod:`cloops.steer.dodo`, which adds the steering layer's ``publish:<id>`` tasks.

Layer: **run**. The top of the run layer: it selects the stories a command line needs
(:mod:`cloops.run.selection`), skips the sealed ones (:mod:`cloops.graph.seals`), has the engine
make their tasks with this layer's actions (:mod:`cloops.graph.engine`,
:mod:`cloops.run.execute`), installs the dispatch order and tunes the process.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

from ..core.errors import CloopsError, InputError
from ..data.project import StoryRef, load_project
from ..graph.engine import Actions, story_tasks
from ..graph.plan import plan_of
from ..graph.seals import SealBook
from .checker import CachedMD5Checker, install_row_index
from .context import RunState, begin
from .dispatch import install, install_inline, light_tasks, service_saturation, task_priority
from .fleet import check_shared, shard_from_env
from .reporter import CloopsReporter
from .selection import STORY_COMMANDS, dry_mode, parse_argv, selected_stories, unknown_story
from .tuning import freeze_live_objects, relax_gc

DEFAULT_JOBS = 24  # doit worker threads; `doit -n 1` runs one task at a time


# The tasks' actions import the task runner (and with it the hub, the ledger, the response
# cache) when the first task runs: a run with nothing to do never pays for those imports.
def run_task(root: str, template: str, story_id: str, step_name: str, n: int | None,
             count: int | None):
    """The action of every step task: :func:`cloops.run.execute.run_task`."""
    from .execute import run_task as run
    return run(root, template, story_id, step_name, n, count)


# doit asks inspect.signature of every action's function each time it runs one (to pass the
# "task", "targets", ... arguments a function names: doit/action.py _prepare_kwargs); kept
# here it is read, not rebuilt (~50 us a task)
run_task.__signature__ = inspect.signature(run_task)  # type: ignore[attr-defined]


def fail_story(root: str, template: str, story_id: str, message: str):
    """The action of a story whose fan-out file cannot be read:
    :func:`cloops.run.execute.mark_failed`."""
    from .execute import mark_failed
    return mark_failed(root, template, story_id, message)


ACTIONS = Actions(run=run_task, fail=fail_story)


def _limiter(proj):
    def limiter(template: str, service: str):
        from .hub import hub_for
        return hub_for(proj).limiter(template, service)
    return limiter


def dodo_namespace(root: Path | str | None = None) -> dict[str, Any]:
    """Everything ``dodo.py`` exposes: ``DOIT_CONFIG`` and the task creators.

    Raises:
        InputError: invalid backlog/template/config (``dodo.py`` prints it and exits 2).
    """
    proj = load_project(root)
    command, names, always = parse_argv(sys.argv[1:])
    unknown = unknown_story(proj.backlogs, command, names)
    if unknown:
        raise InputError(unknown)
    shard = shard_from_env(proj.env)  # CLOOPS_SHARD=i/N: this worker's part of the backlog
    if command == "run":
        check_shared(proj)  # the shared cache tier answers, or one clear error now
    wanted = selected_stories(proj.backlogs, command, names, shard)
    stories: list[tuple[StoryRef, Any]] = []
    for b in proj.backlogs:
        path = str(b.path)
        prefix = b.template + "/"
        if wanted is not None and not getattr(b, "loaded", True):
            # a backlog read story by story (Firestore): `doit build:<id>` reads one document
            chosen = [b.get(k[len(prefix):]) for k in sorted(wanted) if k.startswith(prefix)]
            stories += [(StoryRef(b.template, it.id, path), it) for it in chosen if it]
            continue
        stories += [(StoryRef(b.template, it.id, path), it) for it in b.items  # backlog order
                    if wanted is None or prefix + it.id in wanted]

    book = SealBook(proj)
    sealed: set[str] = set()
    if command in ("forget", "ignore", "clean"):
        # the tasks of these stories must really be checked (and run) next time
        book.drop(None if wanted is None else [r for r, _ in stories])
    elif command in ("run", *STORY_COMMANDS) and not always:
        # a sealed story is up to date: its tasks are not created (`doit review` reads the seal)
        sealed = {r.key for r, it in stories if book.is_sealed(r, it)}
    dry = dry_mode()
    begin(RunState(project=proj, seals=book, sealed=sealed,
                   items={r.key: (r, it) for r, it in stories}, dry=dry))
    checked = [(r, it) for r, it in stories if r.key not in sealed]

    # ready tasks run oldest story first, deepest step first (cloops.run.dispatch)
    install(task_priority({r.key: i for i, (r, _) in enumerate(checked)},
                          {b.template: plan_of(proj.template(b.template)).rank
                           for b in proj.backlogs}),
            service_saturation(proj, _limiter(proj)))

    install_inline(light_tasks(proj))  # checks and assembled files: no trip to a worker
    install_row_index()  # doit's state is not asked for rows it does not have
    ns = story_tasks(proj, stories, sealed, ACTIONS, dry)
    ns["DOIT_CONFIG"] = {
        "default_tasks": ["pending"],
        "continue": True,
        # tasks wait on the network: run them in threads; each service's own limits (config
        # concurrency / requestsPerMinute) decide how many calls are in flight. With every
        # selected story sealed no step task exists: no pool of threads to start and join
        "num_process": int(os.environ.get("CLOOPS_JOBS", DEFAULT_JOBS)) if checked else 0,
        "par_type": "thread",
        "cleandep": True,       # doit clean build:<id> cleans the story's tasks
        "cleanforget": True,    # and forgets their state
        "reporter": CloopsReporter,
        "dep_file": str(proj.root / "build" / ".cloops" / "doit-state.db"),
        "backend": "sqlite3",
        "check_file_uptodate": CachedMD5Checker,  # doit's MD5 rule, each file hashed once
        "verbosity": 1,
    }
    (proj.root / "build" / ".cloops").mkdir(parents=True, exist_ok=True)
    return ns


EXIT_USER_ERROR = 2


STOPPED_MESSAGE = ("stopped ({why}): the state of every task that finished is saved; run the "
                   "same command again to go on (calls already answered come from the response "
                   "cache).")


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, as Ctrl-C, so doit's runner stops and saves the
    state of every finished task (pydoit#463: state is saved only when a run ends); and end a
    run stopped either way with one line on stderr instead of the interpreter's traceback of
    the interrupt (``CLOOPS_DEBUG=1`` keeps the traceback)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    if getattr(sys.excepthook, "cloops", False):
        return  # installed by an earlier load in this process
    previous = sys.excepthook

    def excepthook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt) and not os.environ.get("CLOOPS_DEBUG"):
            print(STOPPED_MESSAGE.format(why=str(exc) or "Ctrl-C"), file=sys.stderr)
            return
        previous(exc_type, exc, tb)
    excepthook.cloops = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def namespace(dodo_file: str) -> dict[str, Any]:
    """Return ``dodo.py``'s namespace for the project holding ``dodo_file``.

    A :class:`CloopsError` (bad backlog, config, template, prompt) is printed as
    ``ERROR: ...`` without a traceback and exits with status 2; nothing is written.
    Set ``CLOOPS_DEBUG=1`` for the traceback.
    """
    _stop_on_sigterm()
    try:
        ns = dodo_namespace(Path(dodo_file).resolve().parent)
        freeze_live_objects()
        relax_gc()
        return ns
    except CloopsError as exc:
        if os.environ.get("CLOOPS_DEBUG"):
            raise
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
