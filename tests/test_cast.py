"""The cast: one per story, a reference sheet per character, the sheets passed with every image,
and a series library — rebuild rules counted call for call through real doit runs.

Fake paid backends (tests/fakes/backends.py) answer with the template's offline drafts, so the
cast of "David and Goliath" is david, goliath and israel: goliath and israel are on page 1
only (and goliath on the cover), david on every page.
"""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from conftest import REPO, make_project

FAKE = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_LLM_BACKEND": "fake-llm",
        "CLOOPS_IMAGE_BACKEND": "fake-image", "CLOOPS_VOICE_BACKEND": "fake-voice",
        "PYTHONPATH": str(REPO)}
# an image backend that draws a new picture at every call, as a real model does: for takes
TAKES = {**FAKE, "CLOOPS_PLUGINS": "tests.fakes.backends,tests.fakes.takes_backends",
         "CLOOPS_IMAGE_BACKEND": "fake-image-takes"}
STD = "comic-books-standard"
DAVID = "david-and-goliath"


def ran(out: str) -> set[str]:
    """The tasks a run's output says ran: ``{"sheet goliath", "image 1", ...}``."""
    return {m.group(1) for m in re.finditer(r"✓ \S+  (.+?)  \(", out)}


def paid(run, **where) -> int:
    return run.count(cache_hit=0, **where)


def ok(run):
    assert run.rc == 0, run.out + run.err
    return run


def cast_of(project, story=DAVID) -> dict:
    return json.loads((project.story_dir(story) / "cast.json").read_text())


def plan_of(project, story=DAVID) -> dict:
    return json.loads((project.story_dir(story) / "pages.json").read_text())


def pages_with(project, cid: str, story=DAVID) -> set[int]:
    return {i for i, p in enumerate(plan_of(project, story)["pages"], 1)
            if any(cid in x["cast"] for x in p["panels"])}


def write_cast(project, data, story=DAVID) -> None:
    (project.story_dir(story) / "cast.json").write_text(json.dumps(data, indent=2))


@pytest.fixture
def built(tmp_path):
    project = make_project(tmp_path, [DAVID])
    ok(project.doit(env=FAKE))
    return project


def test_the_cast_is_extracted_once_and_every_image_gets_exactly_its_pages_sheets(built):
    cast = cast_of(built)
    assert [c["id"] for c in cast["characters"]] == ["david", "goliath", "israel"]
    sdir = built.story_dir(DAVID)
    for c in cast["characters"]:
        prompt = (sdir / "cast" / f"{c['id']}.txt").read_text()
        assert c["appearance"].split(" [")[0] in prompt and "plain white background" in prompt
        assert "No text" in prompt and (sdir / "cast" / f"{c['id']}.jpg").is_file()
    assert pages_with(built, "goliath") == {1} and pages_with(built, "israel") == {1}
    assert pages_with(built, "david") == {1, 2, 3}
    # the app's bundle is as before: pages, cover, story-data; the sheets are for review
    assert sorted(p.name for p in (sdir / "bundle").iterdir()) == [
        "1.jpg", "2.jpg", "3.jpg", "story-data.json", "thumbnail.jpg"]
    # a narrative edit re-runs the cast step, which keeps every entry (no re-extraction)
    narrative = sdir / "narrative.md"
    narrative.write_text(narrative.read_text() + "\nThe valley is silent.\n")
    run = ok(built.doit("build:david-and-goliath", env=FAKE))
    assert "cast" in ran(run.out) and cast_of(built) == cast


def test_editing_one_appearance_redraws_only_that_characters_sheet_and_pages(built):
    cast = cast_of(built)
    goliath = next(c for c in cast["characters"] if c["id"] == "goliath")
    goliath["appearance"] = "a giant warrior nine feet tall in bronze scale armour and a crested helmet"
    write_cast(built, cast)
    run = ok(built.doit("build:david-and-goliath", env=FAKE))
    # its sheet prompt and sheet; the prompt and image of page 1 (the only page goliath is
    # on) and of the cover (goliath is on it); the assembled files. Nothing else.
    assert {"sheet-prompt goliath", "sheet goliath", "prompt 1", "image 1", "thumbnail-prompt",
            "thumbnail", "story-data", "bundle"} <= ran(run.out)
    assert not ran(run.out) & {"cast", "pages", "sheet david", "sheet israel", "prompt 2",
                               "prompt 3", "image 2", "image 3", "narrative"}
    assert sorted((c["step"], c["target"]) for c in run.calls) == sorted([
        ("sheet", "cast/goliath.jpg"), ("prompt", "prompts/1.txt"), ("image", "images/1.jpg"),
        ("thumbnail-prompt", "thumbnail-prompt.txt"), ("thumbnail", "thumbnail.jpg")])
    assert cast_of(built) == cast  # the hand edit is kept
    assert "bronze scale armour" in (built.story_dir(DAVID) / "prompts" / "1.txt").read_text()


def test_a_sheet_replaced_by_hand_redraws_its_pages_with_no_llm_call_and_is_kept(built):
    sheet = built.story_dir(DAVID) / "cast" / "israel.jpg"
    Image.new("RGB", (64, 48), (10, 120, 200)).save(sheet, "JPEG")
    mine = sheet.read_bytes()
    run = ok(built.doit("build:david-and-goliath", env=FAKE))
    assert [(c["step"], c["target"], c["cache_hit"]) for c in run.calls] == [
        ("image", "images/1.jpg", 0)]  # page 1 only: israel is not on the cover
    assert sheet.read_bytes() == mine
    assert ok(built.doit("build:david-and-goliath", env=FAKE)).calls == []


def test_picking_an_earlier_take_of_a_sheet_redraws_its_pages_and_calls_no_llm(tmp_path):
    built = make_project(tmp_path, [DAVID])
    ok(built.doit(env=TAKES))
    target = f"{DAVID}/cast/goliath.jpg"
    first = (built.story_dir(DAVID) / "cast" / "goliath.jpg").read_bytes()
    take = ok(built.doit("take", target, env=TAKES))
    assert paid(take, step="sheet") == 1 and take.count(service="llm") == 0
    assert {(c["step"], c["target"]) for c in take.calls if c["step"] != "sheet"} == {
        ("image", "images/1.jpg"), ("thumbnail", "thumbnail.jpg")}
    pick = ok(built.doit("pick", target, "1", env=TAKES))
    assert pick.calls == []
    assert (built.story_dir(DAVID) / "cast" / "goliath.jpg").read_bytes() == first
    run = ok(built.doit("build:david-and-goliath", env=TAKES))
    # the pages with goliath are redrawn with the first sheet: answers already paid for
    assert {(c["step"], c["target"]) for c in run.calls} == {
        ("image", "images/1.jpg"), ("thumbnail", "thumbnail.jpg")}
    assert paid(run) == 0 and run.count(service="llm") == 0


def test_adding_a_character_makes_its_sheet_and_redraws_the_pages_the_plan_puts_it_on(built):
    before = plan_of(built)
    cast = cast_of(built)
    cast["characters"].append({"id": "king", "name": "king", "kind": "person",
                               "appearance": "King Saul, tall and bearded, in a purple robe"})
    write_cast(built, cast)
    run = ok(built.doit("build:david-and-goliath", env=FAKE))
    on = pages_with(built, "king")
    assert on and on != {1, 2, 3}  # the plan places the king on some pages, not all
    after = plan_of(built)
    for page_before, page_after in zip(before["pages"], after["pages"]):  # only cast lists moved
        strip = [{k: v for k, v in p.items() if k != "cast"} for p in page_before["panels"]]
        assert strip == [{k: v for k, v in p.items() if k != "cast"} for p in page_after["panels"]]
        assert page_before["narration"] == page_after["narration"]
    images = {c["target"] for c in run.calls if c["step"] == "image"}
    assert images == {f"images/{n}.jpg" for n in on}
    assert paid(run, step="sheet") == 1 and paid(run, step="pages") == 1  # the plan revised
    assert {c["target"] for c in run.calls if c["step"] == "prompt"} == {
        f"prompts/{n}.txt" for n in on}


def test_status_shows_a_sheet_stale_after_its_appearance_changed(built):
    cast = cast_of(built)
    cast["characters"][2]["appearance"] = "the army of Israel in brown tunics with round shields"
    write_cast(built, cast)
    st = json.loads(ok(built.doit("status", DAVID, "--json", env=FAKE)).out)["stories"][0]
    stale = {r["task"].partition(":")[0] + " " + r["task"].rsplit("/", 1)[-1]
             for r in st["stale"]}
    assert "sheet-prompt israel" in stale and "sheet-prompt david" not in stale
    assert any(h["target"] == "cast.json" for h in st["handEdited"])


# ---------------------------------------------------------------- the series library

MOSES_STORIES = ["baby-moses", "parting-the-red-sea"]


@pytest.fixture
def moses(tmp_path):
    project = make_project(tmp_path, MOSES_STORIES)
    return project


def test_two_stories_share_a_library_character_whose_sheet_is_paid_once(moses):
    run = ok(moses.doit(env=FAKE))
    for story in MOSES_STORIES:
        entry = next(c for c in cast_of(moses, story)["characters"] if c["id"] == "moses")
        assert entry == {"id": "moses", "name": "Moses", "kind": "person", "library": True}
        prompt = (moses.story_dir(story) / "cast" / "moses.txt").read_text()
        assert "long white beard" in prompt  # the library's appearance
    sheets = [c for c in run.calls if c["step"] == "sheet" and c["target"] == "cast/moses.jpg"]
    assert len(sheets) == 2 and sum(1 for c in sheets if not c["cache_hit"]) == 1
    assert (moses.story_dir("baby-moses") / "cast" / "moses.jpg").read_bytes() == \
        (moses.story_dir("parting-the-red-sea") / "cast" / "moses.jpg").read_bytes()


def test_editing_a_library_character_rebuilds_pending_stories_and_reports_completed_ones(moses):
    ok(moses.doit(env=FAKE))  # both completed (the fakes are not offline)
    items = moses.backlog()
    assert {it["status"] for it in items["items"]} == {"completed"}
    items["items"][0]["status"] = "pending"  # baby-moses goes back to pending
    moses.write_backlog(items)
    lib = moses.root / "templates" / STD / "cast" / "moses.json"
    entry = json.loads(lib.read_text())
    entry["appearance"] = "a man of eighty with a short grey beard, a blue robe and a staff"
    lib.write_text(json.dumps(entry))
    run = ok(moses.doit(env=FAKE))
    touched = {c["story"] for c in run.calls}
    assert touched == {"baby-moses"}  # the pending story only; the completed one is reported
    on = pages_with(moses, "moses", "baby-moses")
    assert {c["target"] for c in run.calls if c["step"] == "image"} == {
        f"images/{n}.jpg" for n in on}
    assert paid(run, step="sheet") == 1 and run.count(step="pages") == 0
    assert "parting-the-red-sea" in run.out and "library cast/moses changed" in run.out
    # bringing the completed story up to date redraws what moses is on, from the shared sheet
    again = ok(moses.doit("build:parting-the-red-sea", env=FAKE))
    assert {(c["step"], c["cache_hit"]) for c in again.calls if c["step"] == "sheet"} == {
        ("sheet", 1)}


def test_a_hand_made_library_sheet_is_used_as_it_is_with_no_call(moses):
    lib = moses.root / "templates" / STD / "cast" / "moses.jpg"
    Image.new("RGB", (80, 60), (200, 180, 40)).save(lib, "JPEG")
    run = ok(moses.doit(env=FAKE))
    assert not [c for c in run.calls if c["target"] == "cast/moses.jpg"]
    for story in MOSES_STORIES:
        assert (moses.story_dir(story) / "cast" / "moses.jpg").read_bytes() == lib.read_bytes()
    assert "cast/moses.jpg is" in run.out  # the run says the file was used


def test_promote_makes_a_story_character_a_library_one_and_nothing_is_paid_again(built):
    sheet = (built.story_dir(DAVID) / "cast" / "goliath.jpg").read_bytes()
    out = ok(built.doit("promote", f"{DAVID}/goliath", env=FAKE)).out
    lib = built.root / "templates" / STD / "cast"
    entry = json.loads((lib / "goliath.json").read_text())
    assert entry["id"] == "goliath" and entry["appearance"]
    assert (lib / "goliath.jpg").read_bytes() == sheet
    assert next(c for c in cast_of(built)["characters"] if c["id"] == "goliath") == {
        "id": "goliath", "name": entry["name"], "kind": "person", "library": True}
    assert "goliath is in the library" in out
    run = ok(built.doit("build:david-and-goliath", env=FAKE))
    assert paid(run) == 0 and run.count(service="llm") == 0
    assert not ran(run.out) & {"image 1", "thumbnail", "prompt 1"}
    again = built.doit("promote", f"{DAVID}/goliath", env=FAKE)
    assert again.rc == 2 and "library character already" in again.err


def test_a_library_reference_to_a_missing_entry_fails_that_story_with_the_fix(built):
    cast = cast_of(built)
    cast["characters"][1] = {"id": "goliath", "name": "Goliath", "kind": "person", "library": True}
    write_cast(built, cast)
    run = built.doit("build:david-and-goliath", env=FAKE)
    assert run.rc != 0
    assert "has no 'goliath'" in run.out + run.err and "cast.json" in run.out + run.err
    assert cast_of(built) == cast  # kept as written
