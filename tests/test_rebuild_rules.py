"""The rebuild rules (BRIEF: "the product's contract"), through real doit runs.

Two stories are built with fake paid backends (a plugin that answers from a hash of the whole
request, so changing a prompt changes the output as a real model would). Each test changes one
thing and asserts exactly which calls the next build makes: that count is the product.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO

FAKE = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_LLM_BACKEND": "fake-llm",
        "CLOOPS_IMAGE_BACKEND": "fake-image", "CLOOPS_VOICE_BACKEND": "fake-voice",
        "PYTHONPATH": str(REPO)}
STORIES = ("noah-s-ark", "david-and-goliath")


def paid(run, **where):
    """Calls that reached a backend (not cache hits)."""
    return run.count(cache_hit=0, **where)


def pages_of(project, story):
    return len(json.loads((project.story_dir(story) / "pages.json").read_text())["pages"])


def cast_of(project, story):
    """The number of characters in a story's cast.json (one reference sheet each)."""
    return len(json.loads((project.story_dir(story) / "cast.json").read_text())["characters"])


@pytest.fixture
def built(project):
    first = project.doit(env=FAKE)
    assert first.rc == 0, first.out + first.err
    return project


def test_first_build_makes_every_artifact_once(project):
    run = project.doit(env=FAKE)
    assert run.rc == 0, run.out + run.err
    for story in STORIES:
        n = pages_of(project, story)
        assert 3 <= n <= 5
        per_story = [c for c in run.calls if c["story"] == story]
        steps = {}
        for c in per_story:
            steps[c["step"]] = steps.get(c["step"], 0) + 1
        assert steps == {"narrative": 1, "cast": 1, "pages": 1, "sheet": cast_of(project, story),
                         "prompt": n, "image": n, "thumbnail-prompt": 1, "thumbnail": 1}
        bundle = project.story_dir(story) / "bundle"
        assert sorted(p.name for p in bundle.iterdir()) == sorted(
            [f"{i}.jpg" for i in range(1, n + 1)] + ["thumbnail.jpg", "story-data.json"])
    # fake backends are not offline: the stories are completed
    statuses = {it["id"]: it["status"] for it in project.backlog()["items"]}
    assert statuses == {s: "completed" for s in STORIES}


def test_nothing_changed_nothing_runs(built):
    run = built.doit(env=FAKE)
    assert run.rc == 0
    assert run.calls == []
    assert "Nothing to do" in run.out
    # and after the backlog's status writes of the first run, a build of one story is a no-op too
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.calls == [] and run.rc == 0


def test_edit_step3_prompt_rebuilds_prompts_and_images_only(built):
    p = built.prompt_path("step3-prompts.md")
    p.write_text(p.read_text() + "\nPrefer dramatic low camera angles.\n")
    run = built.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)
    assert run.rc == 0, run.out + run.err
    for story in STORIES:
        n = pages_of(built, story)
        assert paid(run, story=story, step="prompt") == n
        assert paid(run, story=story, step="image") == n
    assert paid(run, step="narrative") == 0
    assert paid(run, step="pages") == 0
    assert paid(run, step="thumbnail-prompt") == 0
    assert paid(run, step="thumbnail") == 0


def test_change_image_size_calls_images_only(built):
    built.edit_config(lambda c: c["generation"]["params"].update(size="2K"))
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.rc == 0, run.out + run.err
    n = pages_of(built, "noah-s-ark")
    k = cast_of(built, "noah-s-ark")
    assert run.count(service="llm") == 0
    assert paid(run, step="image") == n
    assert paid(run, step="thumbnail") == 1
    assert paid(run, step="sheet") == k  # the sheets are images too
    assert len(run.calls) == n + 1 + k


def test_change_art_style_rebuilds_only_steps_using_it(built):
    built.edit_config(lambda c: c["style"].update(artStyle="woodcut print"))
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.rc == 0, run.out + run.err
    n = pages_of(built, "noah-s-ark")
    assert run.by_step() == {"sheet": cast_of(built, "noah-s-ark"), "prompt": n, "image": n,
                             "thumbnail-prompt": 1, "thumbnail": 1}
    assert "woodcut print" in (built.story_dir("noah-s-ark") / "prompts" / "1.txt").read_text()


def test_hand_edit_one_page_narration_rebuilds_that_page_only(built):
    sdir = built.story_dir("noah-s-ark")
    pages_file = sdir / "pages.json"
    plan = json.loads(pages_file.read_text())
    plan["pages"][1]["narration"] = "Rain falls for forty days and forty nights."
    edited = json.dumps(plan, indent=2)
    pages_file.write_text(edited)
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.rc == 0, run.out + run.err
    assert [(c["step"], c["target"]) for c in run.calls] == [
        ("prompt", "prompts/2.txt"), ("image", "images/2.jpg")]
    assert pages_file.read_text() == edited  # the hand edit is intact
    data = json.loads((sdir / "story-data.json").read_text())
    assert data["pages"][1]["narration"] == "Rain falls for forty days and forty nights."
    bundled = json.loads((sdir / "bundle" / "story-data.json").read_text())
    assert bundled == data
    assert (sdir / "bundle" / "2.jpg").read_bytes() == (sdir / "images" / "2.jpg").read_bytes()


def test_hand_edit_image_prompt_pays_one_image(built):
    p = built.story_dir("noah-s-ark") / "prompts" / "3.txt"
    p.write_text("A single dove with an olive leaf over calm water.\n")
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.rc == 0, run.out + run.err
    assert [(c["step"], c["target"]) for c in run.calls] == [("image", "images/3.jpg")]
    assert p.read_text() == "A single dove with an olive leaf over calm water.\n"


def test_new_key_moment_rebuilds_that_story_only(built):
    data = built.backlog()
    for it in data["items"]:
        if it["id"] == "david-and-goliath":
            it["input"]["keyMoments"].append("the Philistines flee")
            it["status"] = "pending"
    built.write_backlog(data)
    run = built.doit(env=FAKE)
    assert run.rc == 0, run.out + run.err
    assert {c["story"] for c in run.calls} == {"david-and-goliath"}
    assert paid(run, step="narrative") == 1


def test_revert_costs_nothing(built):
    p = built.prompt_path("step3-prompts.md")
    original = p.read_text()
    p.write_text(original + "\nUse a muted palette.\n")
    assert built.doit("build:noah-s-ark", env=FAKE).rc == 0
    p.write_text(original)
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.rc == 0
    assert run.calls, "the reverted prompts are rebuilt (from the cache)"
    assert paid(run) == 0
    status = {it["id"]: it["status"] for it in built.backlog()["items"]}
    assert status["noah-s-ark"] == "completed"  # not left in_progress
    # a deliberate re-roll bypasses the cache
    p.write_text(original + "\nUse a muted palette.\n")
    run = built.doit("build:noah-s-ark", env={**FAKE, "CLOOPS_NO_CACHE": "1"})
    assert paid(run, step="prompt") == pages_of(built, "noah-s-ark")


def test_backlog_status_write_never_triggers_a_rebuild(built):
    data = built.backlog()
    data["items"][0]["status"] = "failed"
    data["items"][0]["error"] = "set by hand"
    built.write_backlog(data)
    run = built.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)
    assert run.calls == []


def test_completed_stale_stories_are_reported_not_rebuilt(built):
    p = built.prompt_path("step1-narrative.md")
    p.write_text(p.read_text() + "\nKeep sentences short.\n")
    run = built.doit(env=FAKE)
    assert run.rc == 0
    assert run.calls == []
    assert "2 completed stories are stale" in run.out
    assert "comic-books-standard/noah-s-ark: changed narrative: file system-prompts/step1-narrative.md" in run.out
    # completed stories cost nothing at start-up: their tasks are not even created
    assert "Nothing to do: 0 targets up to date" in run.out
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert {c["story"] for c in run.calls} == {"noah-s-ark"}
    assert paid(run, step="narrative") == 1


def test_overwritten_hand_edit_is_kept_in_history(built):
    sdir = built.story_dir("noah-s-ark")
    p = sdir / "prompts" / "1.txt"
    p.write_text("my careful hand-written prompt\n")
    built.doit("build:noah-s-ark", env=FAKE)
    step3 = built.prompt_path("step3-prompts.md")
    step3.write_text(step3.read_text() + "\nMore sky.\n")
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.rc == 0
    assert p.read_text() != "my careful hand-written prompt\n"
    kept = list((sdir / ".cloops" / "history" / "prompts" / "1.txt").glob("*hand-edit*"))
    assert len(kept) == 1 and kept[0].read_text() == "my careful hand-written prompt\n"
    assert "hand edit of prompts/1.txt" in run.out


def test_offline_build_is_never_completed(project):
    run = project.doit()  # no keys: draft + storyboard
    assert run.rc == 0, run.out + run.err
    assert "OFFLINE" in run.out
    assert {it["status"] for it in project.backlog()["items"]} == {"pending"}
    assert run.count(backend="draft") > 0 and run.count(backend="storyboard") > 0
    # a key (here: the fake paid backends) makes the drafts stale: rebuilt for real
    run = project.doit(env=FAKE)
    assert run.count(backend="fake-llm") > 0
    assert {it["status"] for it in project.backlog()["items"]} == {"completed"}


def test_dry_run_calls_no_image_service(project):
    run = project.doit("dry:noah-s-ark", env=FAKE)
    assert run.rc == 0, run.out + run.err
    assert run.count(service="image") == 0
    n = pages_of(project, "noah-s-ark")
    assert run.by_step() == {"narrative": 1, "cast": 1, "pages": 1, "prompt": n,
                             "thumbnail-prompt": 1}
    assert not (project.story_dir("noah-s-ark") / "images").exists()
    assert (project.story_dir("noah-s-ark") / "cast" / "noah.txt").exists()  # no call: made
    assert not (project.story_dir("noah-s-ark") / "cast" / "noah.jpg").exists()
    assert not (project.story_dir("david-and-goliath")).exists()
    assert {it["status"] for it in project.backlog()["items"]} == {"pending"}
    # the full build afterwards pays only for the images
    run = project.doit("build:noah-s-ark", env=FAKE)
    assert run.count(service="llm") == 0
    assert paid(run, service="image") == n + 1 + cast_of(project, "noah-s-ark")


def test_info_says_why_a_target_is_stale(built):
    built.edit_config(lambda c: c["style"].update(inkStyle="thin pencil lines"))
    info = built.doit("info", "prompt:comic-books-standard/noah-s-ark/1", env=FAKE)
    assert info.rc == 1, info.out + info.err  # doit info exits 1 for a task that would run
    assert "status     : run" in info.out
    assert "changed: config style.inkStyle" in info.out
    info = built.doit("info", "narrative:comic-books-standard/noah-s-ark", env=FAKE)
    assert "up-to-date" in info.out


def test_clean_removes_targets(built):
    run = built.doit("clean", "build:noah-s-ark", env=FAKE)
    assert run.rc == 0, run.out + run.err
    sdir = built.story_dir("noah-s-ark")
    assert not (sdir / "narrative.md").exists()
    assert not (sdir / "bundle").exists() and not (sdir / "images").exists()
    assert (built.story_dir("david-and-goliath") / "narrative.md").exists()


def test_clean_keeps_hand_edits_in_history(built):
    sdir = built.story_dir("noah-s-ark")
    (sdir / "narrative.md").write_text("my own retelling\n")
    assert built.doit("clean", "build:noah-s-ark", env=FAKE).rc == 0
    kept = list((sdir / ".cloops" / "history" / "narrative.md").glob("*hand-edit*"))
    assert [k.read_text() for k in kept] == ["my own retelling\n"]
    # forgotten: the next build makes it again, from the response cache
    run = built.doit("build:noah-s-ark", env=FAKE)
    assert run.rc == 0 and (sdir / "narrative.md").exists()
    assert paid(run) == 0


def test_the_schema_sent_says_the_config_and_a_page_count_edit_rebuilds_as_before(project,
                                                                                 tmp_path):
    # issue 24, item 5: the page plan's schema is derived from config and the cast (shape=),
    # so a constrained decoder cannot write what the plan's check rejects
    from cloops.data.schemas import strict_schema_problems
    log = tmp_path / "schemas.jsonl"
    env = {**FAKE, "FAKE_LLM_SCHEMAS": str(log)}
    assert project.doit(env=env).rc == 0

    def plans() -> list[dict]:
        sent = [json.loads(line) for line in log.read_text().splitlines()]
        log.write_text("")
        return [s for s in sent if s["name"] == "planning"]

    first = plans()
    assert len(first) == len(STORIES)
    settings = json.loads(project.config_path().read_text())["settings"]
    casts = {story: sorted(c["id"] for c in json.loads(
        (project.story_dir(story) / "cast.json").read_text())["characters"]) for story in STORIES}
    for sent in first:
        schema = sent["schema"]
        assert strict_schema_problems(schema) == []
        pages = schema["properties"]["pages"]
        assert (pages["minItems"], pages["maxItems"]) == (settings["pageCount"]["min"],
                                                          settings["pageCount"]["max"])
        panels = pages["items"]["properties"]["panels"]
        per = settings["panelsPerPage"]
        assert (panels["minItems"], panels["maxItems"]) == (per, per)
        enum = panels["items"]["properties"]["cast"]["items"]["enum"]
        assert enum == schema["properties"]["coverCast"]["items"]["enum"]
        assert sorted(enum) in casts.values()  # that story's cast ids, and only they

    project.edit_config(lambda d: d["settings"]["pageCount"].update(max=6))
    run = project.doit("build:noah-s-ark", env=env)
    assert run.rc == 0, run.out + run.err
    [second] = plans()
    assert second["schema"]["properties"]["pages"]["maxItems"] == 6
    # rebuilds what a page-count edit always rebuilt: the plan and the pages that follow from
    # it; the narrative, the cast, the sheets and the cover (its cast unchanged) do not
    n = pages_of(project, "noah-s-ark")
    assert run.by_step() == {"pages": 1, "prompt": n, "image": n}
