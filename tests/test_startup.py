"""Which stories a doit command line needs (start-up must not grow with finished work)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloops.data.backlog import Backlog, Item
from cloops.run.selection import parse_argv, selected_stories

STD = Backlog(Path("backlogs/comic-books-standard.json"), "comic-books-standard", [
    Item("noah-s-ark", "completed", {}), Item("ruth", "pending", {}), Item("jonah", "failed", {})])
KIDS = Backlog(Path("backlogs/comic-books-kids.json"), "comic-books-kids", [
    Item("noah-s-ark", "pending", {})])


def sel(*argv):
    return selected_stories([STD, KIDS], *parse_argv(list(argv))[:2])


def test_parse_argv():
    assert parse_argv([]) == ("run", [], False)
    assert parse_argv(["-n", "4", "build:ruth", "-a"]) == ("run", ["build:ruth"], True)
    assert parse_argv(["info", "narrative:comic-books-standard/ruth"]) == (
        "info", ["narrative:comic-books-standard/ruth"], False)
    assert parse_argv(["status", "ruth"])[0] == "status"
    assert parse_argv(["run", "--always-execute", "pending"]) == ("run", ["pending"], True)


@pytest.mark.parametrize("argv, expected", [
    ((), {"comic-books-standard/ruth", "comic-books-standard/jonah", "comic-books-kids/noah-s-ark"}),
    (("build:ruth",), {"comic-books-standard/ruth"}),
    (("build:noah-s-ark",), {"comic-books-standard/noah-s-ark", "comic-books-kids/noah-s-ark"}),
    (("build:comic-books-kids/noah-s-ark",), {"comic-books-kids/noah-s-ark"}),
    (("image:comic-books-standard/noah-s-ark/3",), {"comic-books-standard/noah-s-ark"}),
    (("dry:ruth", "build:jonah"), {"comic-books-standard/ruth", "comic-books-standard/jonah"}),
    (("build",), None),                    # every story
    (("build:nobody",), None),             # doit says it does not exist
    (("list",), None), (("status",), None), (("forget", "build:ruth"), {"comic-books-standard/ruth"}),
])
def test_selected_stories(argv, expected):
    assert sel(*argv) == expected


def test_relax_gc_raises_the_young_threshold_and_keeps_a_higher_one():
    import gc

    from cloops.run.tuning import GC_YOUNG_THRESHOLD, relax_gc
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        relax_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        gc.set_threshold(GC_YOUNG_THRESHOLD * 5, 3, 4)
        relax_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD * 5, 3, 4)
    finally:
        gc.set_threshold(*saved)


def test_an_unknown_story_names_the_backlogs_searched_and_the_nearest_ids():
    from cloops.run.selection import unknown_story

    def msg(*argv):
        command, names, _ = parse_argv(list(argv))
        return unknown_story([STD, KIDS], command, names)

    assert msg("build:ruth") is None and msg("build:comic-books-kids/noah-s-ark") is None
    assert msg("dry:jonah") is None and msg("build") is None and msg("list") is None
    text = msg("build:noah-s-arc")
    assert "no story 'noah-s-arc'" in text and "build:noah-s-ark" in text
    assert "comic-books-standard.json (3 stories)" in text and "comic-books-kids.json" in text
    assert "build:jonah" in msg("-n", "2", "build:jona")
    assert "did you mean" not in msg("build:zzzzzz")


def test_doit_build_of_an_unknown_story_is_one_clear_error(tmp_path):
    from conftest import make_project
    project = make_project(tmp_path, ["noah-s-ark"])
    run = project.doit("build:noah-s-arc")
    assert run.rc == 2 and "Traceback" not in run.err
    assert "did you mean build:noah-s-ark?" in run.err and "comic-books-standard.json" in run.err


def test_the_first_service_called_is_preloaded_first_past_steps_that_call_none(tmp_path,
                                                                            monkeypatch):
    """Both shipped templates open with a ``rules`` step, which calls no service: the LLM of
    the narrative after it is still what a build calls first. preload_sdks imports its SDK in
    the main thread before tasks start, and the others in the background, shallowest first."""
    import threading

    from conftest import make_project

    from cloops.data.project import load_project
    from cloops.graph.plan import plan_of
    from cloops.run import tuning
    from cloops.services import registry

    make_project(tmp_path, templates=None, ads=True)
    proj = load_project(tmp_path)
    for name in ("comic-books-standard", "comic-books-kids"):
        tpl = proj.template(name)
        depth = plan_of(tpl).depth
        # what depth 0 alone would find: no service at all
        assert {s.service for s in tpl.steps if depth[s.name] == 0} == {None}, name
        assert tuning.first_services(tpl) == {"llm"}, name
    kids = tuning.service_depths(proj.template("comic-books-kids"))
    assert sorted(kids, key=kids.get) == ["llm", "voice", "image"]

    preloaded: list[tuple[str, str]] = []
    done = threading.Event()

    def preload(spec):
        preloaded.append((spec.name, threading.current_thread().name))
        if len(preloaded) == 3:
            done.set()
    monkeypatch.setattr(registry, "preload", preload)
    monkeypatch.setattr(tuning, "current_project", lambda: proj)
    monkeypatch.setattr(tuning, "run_context", lambda: (None, set(), {}))
    monkeypatch.setattr(tuning, "tune_malloc", lambda: True)
    monkeypatch.setattr(tuning, "freeze_live_objects", lambda: None)
    tuning.preload_sdks()  # no keys: the offline backends, one per service
    assert preloaded[0] == (proj.resolved("comic-books-kids", "llm").spec.name,
                            threading.current_thread().name)
    assert done.wait(10)
    rest = [proj.resolved("comic-books-kids", s).spec.name for s in ("voice", "image")]
    assert preloaded[1:] == [(n, "cloops-preload") for n in rest]
