"""What a person sees during ``doit``: per story, what ran and why; a summary at the end.

Layer: **run**.

A doit reporter (``DOIT_CONFIG["reporter"]``). Every task that runs gets one line when it ends:
its story, step, why it was stale and what it cost; hand edits kept in history and drafts left
pending are said. On a terminal (unless ``-v`` or ``CLOOPS_PROGRESS=lines``) a live view
(:mod:`cloops.run.progress`) replaces the per-task lines; failures and notes still print. The
run ends with a table: stories built / failed / up to date, and calls per service (made, cache
hits, tokens, images, cost), and the stories it touched whose evals ask for a review.
"""

from __future__ import annotations

import os
import sys
import time

from ..core.console import make_console
from ..core.fileio import file_stat
from ..graph.engine import Inputs
from .context import current, current_project, run_context
from .selection import is_command_task
from .progress import LiveView, wants_lines
from .checker import CachedMD5Checker
from .summary import (fleet_lines, header_lines, review_lines, stale_completed_report,
                      summary_rows)
from .tuning import freeze_live_objects, preload_sdks

HIDDEN_PREFIXES = ("build:", "expand", "pending")


def _hidden(name: str) -> bool:
    """True for a task that is no build step: groups (``build:``, ``pending``), delayed
    creators (``expand…``) and commands run as tasks (``publish:<id>``)."""
    return name.startswith(HIDDEN_PREFIXES) or is_command_task(name)


def _split(name: str) -> tuple[str, str]:
    """``prompt:comic-books-standard/noah-s-ark/3`` → (``prompt 3``, ``comic-books-standard/noah-s-ark``)."""
    step, _, rest = name.partition(":")
    parts = rest.split("/")
    if len(parts) >= 3:
        return f"{step} {parts[2]}", "/".join(parts[:2])
    return step, rest


def stale_reason(task) -> str:
    """Why doit decided to run ``task`` (from cloops' Inputs checker and doit's file checks)."""
    reasons: list[str] = []
    for utd, _args, _kw in getattr(task, "uptodate", []):
        if isinstance(utd, Inputs) and utd.changed:
            reasons += utd.changed
    if not reasons:
        missing = [t for t in task.targets if not os.path.exists(t)]
        if missing:
            reasons.append("missing " + ", ".join(os.path.basename(m) for m in missing[:3]))
    if not reasons and getattr(task, "dep_changed", None):
        reasons.append("changed " + ", ".join(sorted(os.path.relpath(d) if os.path.isabs(d) else
                                                     d.split("/", 3)[-1] for d in task.dep_changed)[:3]))
    return "; ".join(reasons[:4]) or "stale"


_NOTES: dict | None = None


def _notes() -> dict:
    """``cloops.run.execute.NOTES`` (the notes tasks left for their line), imported when the
    first task ended - not at start-up - and then kept: an import statement per task costs."""
    global _NOTES
    if _NOTES is None:
        from .execute import NOTES
        _NOTES = NOTES
    return _NOTES


class CloopsReporter:
    """doit reporter printing with rich (plain text when not a terminal)."""

    desc = "cloops: rich progress and an end-of-run summary"

    def __init__(self, outstream, options):
        from rich.markup import escape  # here, not at import: dodo.py's import stays cheap
        from rich.text import Text

        self._text = Text.assemble  # the per-task lines: styled spans, no markup to parse
        self._esc = escape  # user text (errors, notes, reasons) is never read as markup
        self.options = options or {}
        # the real stdout: doit wraps sys.stdout, and rich's broken-pipe handling needs fileno()
        self.console = make_console(sys.__stdout__, soft_wrap=True)
        self.err = make_console(sys.__stderr__, soft_wrap=True)
        self.t0 = time.monotonic()
        self.started: dict[str, float] = {}
        self.reasons: dict[str, str] = {}
        self.ran: list[str] = []
        self.failed: dict[str, str] = {}
        self.commands = 0  # tasks of commands run as tasks (publish:<id>) started
        self.uptodate = 0
        self.uptodate_bundles: set[str] = set()  # stories whose bundle task was up to date
        self._finishing: dict[tuple[str, str], bool] = {}
        self.runtime_errors: list[str] = []
        # for story seals (cloops.graph.seals): files of each story's tasks as they ended; a story's
        # seal is made when its build:<key> group succeeds and written at the end of the run
        self.files: dict[str, dict[str, list[int] | None]] = {}
        # on a terminal, a live view instead of a line per task (cloops.run.progress); -v,
        # CLOOPS_PROGRESS=lines or output to a pipe or file keeps the lines
        self.view = None
        self._live = self.console.is_terminal and not wants_lines(sys.argv[1:])
        # to a pipe or a file rich renders no colour: a task's lines are then written as
        # their plain text (_lines)
        self._plain = self.console.color_system is None and not self.console.record
        self._services: dict[tuple[str, str], str | None] = {}

    # doit reporter protocol ------------------------------------------------

    def initialize(self, tasks, selected_tasks):
        for line in header_lines():
            self.console.print(line)
        preload_sdks()
        if self._live:
            state = current()
            total = len(state.items) - len(state.sealed) if state is not None else 0
            self.view = LiveView(self.console, total, service_of=self._service_of,
                                 limit_of=self._limit_of, spent=self._spent)
            self.view.start()

    def _service_of(self, name: str) -> str | None:
        """The service task ``name``'s step calls (None: a group, a check or no service)."""
        step = name.partition(":")[0]
        template = _split(name)[1].split("/")[0]
        if (template, step) not in self._services:
            proj = current_project()
            try:
                self._services[(template, step)] = proj.template(template).step(step).service
            except (KeyError, AttributeError):
                self._services[(template, step)] = None
        return self._services[(template, step)]

    def _limit_of(self, service: str) -> tuple[int | None, int | None, str]:
        """``(calls in flight, limit, backend)`` of a service (calls in flight: None when no
        limiter counts them, as for an offline backend)."""
        proj = current_project()
        template = next((t for t, s in self._services if self._services[(t, s)] == service), None)
        if proj is None or template is None:
            return None, None, "?"
        resolved = proj.resolved(template, service)
        if resolved.spec.offline:
            return None, None, f"{resolved.spec.name}, offline"
        from .hub import existing_hub
        hub = existing_hub(proj)
        if hub is None:
            return 0, None, resolved.spec.name
        limiter = hub.limiter(template, service)
        return limiter.in_flight, limiter.concurrency, resolved.spec.name

    def _spent(self) -> float:
        from .hub import existing_hub
        proj = current_project()
        hub = existing_hub(proj) if proj is not None else None
        return hub.ledger.spent_usd if hub is not None else 0.0

    def get_status(self, task):
        pass

    def execute_task(self, task):
        if is_command_task(task.name):
            self.commands += 1
        if task.actions and not _hidden(task.name):
            self.started[task.name] = time.monotonic()
            self.reasons[task.name] = stale_reason(task)
            if self.view is not None:
                self.view.started(task.name)

    def add_failure(self, task, fail):
        if _hidden(task.name):
            return
        msg = fail.get_msg().strip() if hasattr(fail, "get_msg") else str(fail)
        self.failed[task.name] = msg
        step, story = _split(task.name)
        if self.view is not None:
            self.view.ended(task.name, ok=False)
            self.view.story_done(story, ok=False)
        self.console.print(f"[red]✗ {story}  {step}[/red]  "
                           f"{self._esc(msg.splitlines()[-1]) if msg else ''}")

    def _finishes(self, name: str) -> bool:
        """True when task ``name`` is of a step that finishes its story (the bundle)."""
        step = name.partition(":")[0]
        key = _split(name)[1]
        template = key.split("/")[0]
        found = self._finishing.get((template, step))
        if found is None:
            proj = current_project()
            try:
                found = bool(proj and proj.template(template).step(step).finishes_story)
            except KeyError:  # a group or check task
                found = False
            self._finishing[(template, step)] = found
        return found

    def _note_files(self, task, saved: bool = False) -> None:
        """Remember the stat of a finished (or up-to-date) task's files, for its story's seal
        (``saved``: doit has just saved the task's success, stating its file_dep files)."""
        proj = current_project()
        if proj is None:
            return
        files = self.files.setdefault(_split(task.name)[1], {})
        root, join = str(proj.root), os.path.join
        for f in task.targets:
            files[f] = file_stat(join(root, f))
        stats = CachedMD5Checker.saved_stats if saved else {}
        for f in task.file_dep:
            st = stats.pop(f, None)
            files[f] = [st.st_size, st.st_mtime_ns] if st is not None else \
                file_stat(join(root, f))

    def add_success(self, task):
        if task.name.startswith("build:"):
            self._seal_story(task.name.partition(":")[2])
        if task.actions:
            self._note_files(task, saved=True)
        if not task.actions or _hidden(task.name):
            return
        self.ran.append(task.name)
        step, story = _split(task.name)
        notes = _notes().pop(task.name, [])
        if self.view is not None:  # the live view: notes only, with their story and step
            self.view.ended(task.name, ok=True)
            if self._finishes(task.name):
                self.view.story_done(story)
            for line in notes:
                self.console.print(self._text(("!", "yellow"), f" {story}  ", (step, "bold"),
                                              f"  {line}"))
            return
        dt = time.monotonic() - self.started.get(task.name, time.monotonic())
        self._lines([(("✓", "green"), f" {story}  ", (step, "bold"), "  ",
                      (f"({self.reasons.get(task.name, 'stale')}; {dt:.1f}s)", "dim"))]
                    + [("    ", ("!", "yellow"), f" {line}") for line in notes])

    def _lines(self, lines: list[tuple]) -> None:
        """Print lines of styled spans (``text`` or ``(text, style)``; no markup: a note's
        brackets stay as written). To a pipe or a file, rich renders no colour: the spans'
        text is written as it is, without rich's render and terminal checks (they cost more
        than the line on a 25,000-task build - issue 24's engine time per task)."""
        if self._plain:
            self.console.file.write("".join(
                "".join(p if isinstance(p, str) else p[0] for p in parts) + "\n"
                for parts in lines))
            self.console.file.flush()
            return
        for parts in lines:
            self.console.print(self._text(*parts))

    def skip_uptodate(self, task):
        if task.actions:
            self.uptodate += 1
            self._note_files(task)
            if self._finishes(task.name):
                self.uptodate_bundles.add(_split(task.name)[1])
                if self.view is not None:
                    self.view.story_done(_split(task.name)[1])
            if self.view is not None:
                self.view.ended(task.name, ok=True, ran=False)
            for utd, _a, _k in getattr(task, "uptodate", []):
                if isinstance(utd, Inputs) and utd.locked:
                    step, story = _split(task.name)
                    self.console.print(f"[yellow]🔒 {story}  {step}[/yellow]  locked, stale "
                                       f"(not rebuilt): {self._esc(', '.join(utd.changed or []))}")

    def skip_ignore(self, task):
        pass

    def cleanup_error(self, exception):
        self.err.print(f"[red]cleanup error:[/red] {self._esc(exception.get_msg())}")

    def runtime_error(self, msg):
        self.runtime_errors.append(msg)
        self.err.print(f"[red]ERROR:[/red] {self._esc(msg)}")

    def teardown_task(self, task):
        pass

    def _settle(self) -> None:
        """Stories whose tasks ran without failure but whose bundle was up to date (a story
        whose bundle was never reached — a run stopped by SIGTERM/Ctrl-C, or one task asked
        for — is left as it is)."""
        proj = current_project()
        if proj is None or current().dry:
            return
        touched = {_split(n)[1] for n in self.ran}
        failed = {_split(n)[1] for n in self.failed}
        bundled = {_split(n)[1] for n in self.ran if self._finishes(n)}
        settle = sorted((touched - failed - bundled) & self.uptodate_bundles)
        if settle:
            from .execute import settle_story
        for key in settle:
            template, _, sid = key.partition("/")
            try:
                settle_story(proj, template, sid)
            except Exception as exc:  # never lose the summary over a status write
                self.err.print(f"[red]could not update the status of {key}: "
                               f"{self._esc(str(exc))}[/red]")

    def _write_statuses(self) -> None:
        """Write the story status changes still held (:mod:`cloops.run.statuses`) before the
        summary, which reads them; say why any could not be written."""
        statuses = sys.modules.get(f"{__package__}.statuses")
        if statuses is None:
            return  # no task ran in this process (a no-op start does not import it)
        statuses.WRITER.flush()
        statuses.report_errors(lambda text: self.err.print(f"[red]{self._esc(text)}[/red]"))

    def _seal_story(self, key: str) -> None:
        """Make the seal of a story whose ``build:<key>`` group succeeded (every task of it ran
        or was up to date), now rather than at the end of the run."""
        book, sealed, inputs = run_context()
        if book is None or current().dry or key not in inputs or key in sealed or \
                key not in self.files:
            return
        ref, item = inputs[key]
        book.record(ref, item, self.files[key])

    def _seal(self) -> None:
        """Write the seals of the stories this run brought fully up to date."""
        book = run_context()[0]
        if book is None:
            return
        try:
            book.flush()
        except OSError as exc:  # a seal is an optimisation: never lose the summary over it
            self.err.print(f"[yellow]could not record story seals: {self._esc(str(exc))}[/yellow]")

    def complete_run(self):
        if self.view is not None:
            self.view.stop()
        self._settle()
        self._write_statuses()
        self._seal()
        was_sealed = len(run_context()[1])  # stories not checked task by task
        stories = {(_split(n)[1]) for n in self.ran}
        failed_stories = sorted({_split(n)[1] for n in self.failed})
        self.console.print()
        sealed_note = (f"{was_sealed} stories up to date as sealed (every input and file as at "
                       f"their last complete build); " if was_sealed else "")
        if not self.ran and not self.failed and self.commands:
            pass  # only commands run as tasks (publish:<id>): they printed their own outcome
        elif not self.ran and not self.failed:
            self.console.print(f"[bold]Nothing to do:[/bold] {sealed_note}{self.uptodate} "
                               "targets up to date; no service was called.")
        else:
            self.console.print(
                f"[bold]{len(self.ran)} tasks ran[/bold] for {len(stories)} stories; "
                f"{sealed_note}{self.uptodate} targets up to date; "
                f"{len(failed_stories)} stories failed ({time.monotonic() - self.t0:.1f}s).")
        rows = summary_rows()
        if rows:
            from rich.table import Table
            table = Table(title="Calls this run", title_justify="left")
            for col in ("service", "backend", "calls", "cache hits", "retries", "tokens in/out",
                        "images", "cost USD", "saved USD"):
                table.add_column(col, justify="right" if col not in ("service", "backend") else "left")
            for r in rows:
                table.add_row(*[str(x) for x in r])
            self.console.print(table)
            spent = sum(float(r[7]) for r in rows)
            saved = sum(float(r[8]) for r in rows)
            self.console.print(f"Spent ${spent:.4f} this run; the response cache saved ${saved:.4f}. "
                               "`doit report` shows spend per story and step.")
        for name in failed_stories:
            msgs = [m for t, m in self.failed.items() if _split(t)[1] == name]
            self.err.print(f"[red]FAILED[/red] {name}: "
                           f"{self._esc(msgs[0].splitlines()[-1]) if msgs else ''}")
        for line in review_lines(sorted(stories)):
            self.console.print(line)
        for line in stale_completed_report():
            self.console.print(line)
        for line in fleet_lines(sorted(stories | set(failed_stories))):
            self.console.print(line)
        freeze_live_objects()  # the run is over: the interpreter's exit need not traverse it
