"""Which stories a doit command line needs, and whether it is a dry run.

Layer: **run**. Start-up must not grow with finished work: a bare ``doit`` loads the tasks of the
stories that are not completed, ``doit build:<id>`` those of one story.
"""

from __future__ import annotations

import os
import sys


def dry_mode() -> bool:
    """True for a dry run: ``doit dry`` / ``doit dry:<id>`` or ``CLOOPS_DRY=1``.

    A dry run builds everything up to the image prompts and calls no image or voice service:
    the tasks of media steps (and of what reads their output) are not created at all.
    """
    if os.environ.get("CLOOPS_DRY", "").lower() in ("1", "true", "yes"):
        return True
    return any(a == "dry" or a.startswith("dry:") for a in sys.argv[1:])


DOIT_COMMANDS = {"list", "info", "clean", "forget", "ignore", "dumpdb", "strace", "auto",
                 "tabcompletion", "help", "reset-dep", "run"}


_VALUE_OPTIONS = {"-n", "--process", "-P", "--parallel-type", "-v", "--verbosity", "-f",
                  "--file", "-d", "--dir", "-k", "--seek-file", "--reporter", "--dep-file",
                  "--db-file", "--backend", "--output-file", "-o", "--check_file_uptodate",
                  "--codec-cls", "--pdb", "--by", "--run", "--prune-days", "--dir"}


def parse_argv(argv: list[str]) -> tuple[str, list[str], bool]:
    """``(doit command, task names, always execute)`` of a doit command line.

    ``doit build:x -n 4`` → ``("run", ["build:x"], False)``; ``doit info build:x`` →
    ``("info", ["build:x"], False)``; cloops' own commands (``status``, ``lock``...) come back
    with their name as the command.
    """
    args: list[str] = []
    skip = False
    always = False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUE_OPTIONS:
            skip = True  # the next word is this option's value, not a task
        elif a in ("-a", "--always-execute"):
            always = True
        elif not a.startswith("-"):
            args.append(a)
    command = "run"
    if args and (args[0] in DOIT_COMMANDS or "=" not in args[0] and ":" not in args[0]
                 and args[0] not in (*BUILD_GROUPS, "pending") and not args[0].startswith("expand")):
        command, args = args[0], args[1:]
    # option values (doit -n 4) and var=value pairs are not task names
    return command, [a for a in args if not a.isdigit() and "=" not in a], always


# commands whose arguments are story keys (``<template>/<id>`` or ``<id>``), not task names
STORY_COMMANDS = ("review",)


def _story_keys(backlogs: list, args: list[str]) -> set[str] | None:
    """The stories named by ``args`` (every story when none, or when one is not understood:
    the command then says what is wrong)."""
    keys: set[str] = set()
    for a in args:
        parts = [p for p in a.split("/") if p]
        if parts and parts[0] == "build":
            parts = parts[1:]
        if len(parts) >= 2 and any(b.template == parts[0] and b.get(parts[1]) for b in backlogs):
            keys.add(f"{parts[0]}/{parts[1]}")
            continue
        found = {f"{b.template}/{parts[0]}" for b in backlogs if parts and b.get(parts[0])}
        if not found:
            return None
        keys |= found
    return keys or None


def selected_stories(backlogs: list, command: str, args: list[str],
                     shard=None) -> set[str] | None:
    """The story keys (``<template>/<id>``) whose tasks this doit invocation needs, or None for
    all of them. ``backlogs``: the project's :class:`~cloops.data.backlog.Backlog` list.

    Start-up must not grow with finished work: a bare ``doit`` (the ``pending`` default) needs
    only the stories that are not completed, and ``doit build:<id>`` only that story (found by
    id, without walking the backlog). Any task name not understood here selects every story
    (doit then finds it, or says it does not exist).

    ``shard``: a :class:`cloops.run.fleet.Shard`: the pending stories are only those of that
    shard (a story named on the command line is built whatever its shard).
    """
    if command in STORY_COMMANDS:
        return _story_keys(backlogs, args)
    if command not in ("run", "info", "clean", "forget", "ignore", "list", "strace"):
        return None  # cloops' own commands (status, lock, ...) and doit's others: everything

    def pending() -> set[str]:
        from .fleet import in_shard
        return {f"{b.template}/{it.id}" for b in backlogs for it in b.items
                if it.status != "completed" and in_shard(b.template, it.id, shard)}

    if not args:
        return pending() if command == "run" else None
    keys: set[str] = set()
    for a in args:
        base, _, rest = a.partition(":")
        if base in ("pending", "dry") and not rest:
            keys |= pending()
            continue
        if not rest:
            return None  # a whole group (e.g. `build`) or a name we do not know
        parts = rest.split("/")
        if len(parts) >= 2 and any(b.template == parts[0] and b.get(parts[1]) for b in backlogs):
            keys.add("/".join(parts[:2]))
            continue
        found = {f"{b.template}/{rest}" for b in backlogs if b.get(rest) is not None}
        if not found:
            return None
        keys |= found
    return keys




# the task groups that build a story: build:<id>, dry:<id>
BUILD_GROUPS = ("build", "dry")
# the groups of commands run as tasks, added by a higher layer (cloops.steer.dodo:
# publish:<id>): they build nothing, so the run's reporter leaves them out of its story
# accounting (the command prints its own outcome)
COMMAND_GROUPS: list[str] = []


def add_story_group(name: str) -> None:
    """Make ``<name>:<id>`` name a story for a command run as a task (``publish:<id>``):
    ``doit <name>:<id>`` selects that story only, an unknown id gets :func:`unknown_story`'s
    message, and the reporter does not count the task as a build step. Call before doit loads
    the tasks."""
    if name not in BUILD_GROUPS and name not in COMMAND_GROUPS:
        COMMAND_GROUPS.append(name)


def is_command_task(name: str) -> bool:
    """True for a task of a group :func:`add_story_group` added (``publish:noah-s-ark``)."""
    return bool(COMMAND_GROUPS) and name.partition(":")[0] in COMMAND_GROUPS


def unknown_story(backlogs: list, command: str, args: list[str]) -> str | None:
    """A clear message when a ``build:<id>`` / ``dry:<id>`` (or ``<template>/<id>``) names no
    story of any backlog: the backlogs searched and the nearest ids; None when every story
    named exists (doit reports other unknown task names itself).

    ``backlogs``: the project's :class:`~cloops.data.backlog.Backlog` list.
    """
    if command not in ("run", "info", "clean", "forget", "ignore"):
        return None
    import difflib
    for a in args:
        base, _, rest = a.partition(":")
        if (base not in BUILD_GROUPS and base not in COMMAND_GROUPS) or not rest:
            continue
        parts = rest.split("/")
        if len(parts) == 2 and any(b.template == parts[0] and b.get(parts[1]) for b in backlogs):
            continue
        if len(parts) == 1 and any(b.get(rest) is not None for b in backlogs):
            continue
        wanted = parts[-1]
        ids = sorted({it.id for b in backlogs for it in b.items})
        near = difflib.get_close_matches(wanted, ids, n=3, cutoff=0.5)
        if not near:  # a word of it, then: "moses" finds baby-moses
            near = [i for i in ids if wanted and (wanted in i or i in wanted)][:3]
        searched = ", ".join(f"{getattr(b.path, 'name', b.path)} ({len(b.items)} stories)"
                             for b in backlogs)
        hint = (f"did you mean {' or '.join(f'{base}:{n}' for n in near)}? " if near else "")
        return (f"no story {rest!r} in the backlogs searched: {searched}. Fix: {hint}"
                "`doit list` names every task; a story's id is its \"id\" in backlogs/.")
    return None
