"""Story seals (cloops.graph.seals): a fully built, unchanged story is checked in one comparison.

The contract does not move: every change that makes a task stale breaks the seal (the story is
then checked task by task and rebuilds exactly what it did before), nothing is rebuilt because
of a seal, and commands that must see or run every task (list, info, forget, -a) still do.
"""

from __future__ import annotations

import json
import os

import pytest

from cloops.data.backlog import Item
from cloops.data.project import StoryRef, load_project, reset
from cloops.graph.seals import SealBook, file_stat
from conftest import REPO

FAKE = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_LLM_BACKEND": "fake-llm",
        "CLOOPS_IMAGE_BACKEND": "fake-image", "CLOOPS_VOICE_BACKEND": "fake-voice",
        "PYTHONPATH": str(REPO)}
KEY = "comic-books-standard/noah-s-ark"


def ok(run):
    assert run.rc == 0, run.out + run.err
    return run


def sealed_count(run) -> int:
    """How many stories the run found sealed (0 when it says nothing about seals)."""
    import re
    m = re.search(r"(\d+) stories up to date as sealed", run.out)
    return int(m.group(1)) if m else 0


def seals(project) -> dict:
    path = project.root / "build" / "comic-books-standard" / ".cloops" / "seals.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def built(project):
    ok(project.doit(env=FAKE))
    return project


def test_a_complete_build_seals_each_story_with_every_file_it_depends_on(built):
    rec = seals(built)
    assert set(rec) == {"noah-s-ark", "david-and-goliath"}
    files = rec["noah-s-ark"]["files"]
    n = len(json.loads((built.story_dir("noah-s-ark") / "pages.json").read_text())["pages"])
    for rel in ("narrative.md", "pages.json", "story-data.json", "bundle/thumbnail.jpg",
                *[f"prompts/{i}.txt" for i in range(1, n + 1)],
                *[f"images/{i}.jpg" for i in range(1, n + 1)]):
        assert files[rel] == file_stat(built.story_dir("noah-s-ark") / rel), rel
    assert files[".cloops/locks.json"] is None  # no lock: its absence is part of the seal


def test_sealed_stories_create_no_tasks_and_say_so(built):
    run = ok(built.doit("build", env=FAKE))
    assert run.calls == []
    assert sealed_count(run) == 2
    assert "0 targets up to date" in run.out  # not one task was even checked
    # commands that look at tasks see them all
    listed = ok(built.doit("list", "--all", env=FAKE)).out
    assert f"image:{KEY}/1" in listed and f"narrative:{KEY}" in listed
    info = ok(built.doit("info", f"narrative:{KEY}", env=FAKE)).out
    assert "narrative.md" in info


def test_a_touched_file_is_checked_task_by_task_and_sealed_again(built):
    f = built.story_dir("noah-s-ark") / "prompts" / "2.txt"
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    run = ok(built.doit("build", env=FAKE))
    assert run.calls == []  # same content: doit's own check finds nothing to do
    assert sealed_count(run) == 1  # david-and-goliath only
    assert seals(built)["noah-s-ark"]["files"]["prompts/2.txt"] == file_stat(f)
    assert sealed_count(ok(built.doit("build", env=FAKE))) == 2


@pytest.mark.parametrize("change, expect_sealed", [
    ("prompt", 0), ("config", 0), ("story input", 1), ("hand edit", 1), ("deleted target", 1),
    ("lock", 1), ("backend", 0)])
def test_every_kind_of_change_breaks_the_seal(built, change, expect_sealed):
    sdir = built.story_dir("noah-s-ark")
    env = dict(FAKE)
    if change == "prompt":
        p = built.prompt_path("step3-prompts.md")
        p.write_text(p.read_text() + "\nPrefer wide shots.\n")
    elif change == "config":
        built.edit_config(lambda c: c["generation"]["params"].update(size="2K"))
    elif change == "story input":
        data = built.backlog()
        data["items"][0]["input"]["summary"] += " With a rainbow."
        built.write_backlog(data)
    elif change == "hand edit":
        (sdir / "prompts" / "1.txt").write_text("A hand-written prompt.\n")
    elif change == "deleted target":
        (sdir / "images" / "1.jpg").unlink()
    elif change == "lock":
        ok(built.doit("lock", "noah-s-ark/pages.json", env=FAKE))
    elif change == "backend":
        env["CLOOPS_IMAGE_BACKEND"] = "storyboard"
    run = ok(built.doit("build", env=env))
    assert sealed_count(run) == expect_sealed
    if change in ("hand edit", "deleted target"):
        assert [(c["step"], c["target"]) for c in run.calls] == [("image", "images/1.jpg")]


def test_forget_and_always_execute_reach_the_tasks_of_a_sealed_story(built):
    ok(built.doit("forget", f"image:{KEY}/1", env=FAKE))
    run = ok(built.doit("build:noah-s-ark", env=FAKE))
    assert [(c["step"], c["cache_hit"]) for c in run.calls] == [("image", 1)]  # re-run, not re-paid
    assert sealed_count(ok(built.doit("build:noah-s-ark", env=FAKE))) == 1
    run = ok(built.doit("-a", "build:noah-s-ark", env=FAKE))
    assert sealed_count(run) == 0
    assert run.calls and all(c["cache_hit"] == 1 for c in run.calls)


def test_a_failed_story_or_a_dry_run_is_not_sealed(project):
    ok(project.doit("dry", env=FAKE))
    assert seals(project) == {}
    ok(project.doit(env=FAKE))
    (project.story_dir("noah-s-ark") / "pages.json").write_text("{not json")
    before = seals(project)["noah-s-ark"]
    run = project.doit("build", env=FAKE)
    assert run.rc != 0 and "noah-s-ark" in run.err
    assert sealed_count(run) == 1  # david-and-goliath
    assert seals(project)["noah-s-ark"] == before  # not re-sealed over the bad file
    assert sealed_count(project.doit("build", env=FAKE)) == 1


def test_a_file_edited_during_the_run_is_not_sealed(built):
    reset()
    proj = load_project(built.root)
    book = SealBook(proj)
    ref = StoryRef("comic-books-standard", "noah-s-ark", str(built.backlog_path()))
    item = Item("noah-s-ark", "completed", built.backlog()["items"][0]["input"])
    rel = "build/comic-books-standard/noah-s-ark/narrative.md"
    noted = {rel: file_stat(built.root / rel)}
    (built.root / rel).write_text("edited while the run went on\n")
    assert book.seal({ref: (item, noted)}) == 0
    assert book.seal({ref: (item, {rel: file_stat(built.root / rel)})}) == 1
    reset()


def test_a_run_with_every_selected_story_sealed_starts_no_worker_threads(built, monkeypatch):
    # issue 24, item 2: no step task can run, so doit's pool of 24 threads is not started and
    # joined (the plain runner still runs the story's group task)
    from cloops.run.dodo import DEFAULT_JOBS, dodo_namespace
    for key, value in FAKE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CLOOPS_JOBS", raising=False)
    monkeypatch.setattr("cloops.services.registry._loaded", False)  # load CLOOPS_PLUGINS

    def workers(*argv: str) -> int:
        monkeypatch.setattr("sys.argv", ["doit", *argv])
        reset()
        return dodo_namespace(built.root)["DOIT_CONFIG"]["num_process"]

    assert workers("build:noah-s-ark") == 0
    os.utime(built.story_dir("noah-s-ark") / "narrative.md")  # a touch breaks the seal
    assert workers("build:noah-s-ark") == DEFAULT_JOBS
