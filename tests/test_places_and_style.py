"""Places and props in the cast, and the style frame: their sheets, the order and limit of the
references in each image request, and what each edit rebuilds — counted call for call.

Fake paid backends answer with the template's offline drafts; ``fake-image-refs``
(tests/fakes/refs_backend.py) records each image request's references. "David and Goliath"
has david, goliath and israel; the king's armour (a prop added by hand) is named in the key
moment "David refuses the king's armour", which the draft plan puts on pages 1 and 2.
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
STD = "comic-books-standard"
DAVID = "david-and-goliath"
ARMOUR = {"id": "armour", "name": "the king's armour", "kind": "prop",
          "appearance": "a bronze helmet with a tall crest and a coat of overlapping bronze scales"}
CAMP = {"id": "camp", "name": "the camp of Israel", "kind": "place",
        "appearance": "rows of brown goat-hair tents on a dry slope above a stony valley"}


def ok(run):
    assert run.rc == 0, run.out + run.err
    return run


def cast_of(project) -> dict:
    return json.loads((project.story_dir(DAVID) / "cast.json").read_text())


def write_cast(project, data) -> None:
    (project.story_dir(DAVID) / "cast.json").write_text(json.dumps(data, indent=2))


def pages_with(project, cid: str) -> set[int]:
    plan = json.loads((project.story_dir(DAVID) / "pages.json").read_text())
    return {i for i, p in enumerate(plan["pages"], 1)
            if any(cid in x["cast"] for x in p["panels"])}


def with_things(project, *things) -> None:
    cast = cast_of(project)
    cast["characters"] += [dict(t) for t in things]
    write_cast(project, cast)


@pytest.fixture
def built(tmp_path):
    project = make_project(tmp_path, [DAVID])
    ok(project.doit(env=FAKE))
    with_things(project, ARMOUR)
    ok(project.doit("build:" + DAVID, env=FAKE))
    return project


def test_a_prop_gets_a_sheet_of_its_own_alone_on_white_and_is_listed_in_the_panels(built):
    sdir = built.story_dir(DAVID)
    prompt = (sdir / "cast" / "armour.txt").read_text()
    assert "The object alone on a plain white background" in prompt
    assert "no people" in prompt and "bronze scales" in prompt
    assert (sdir / "cast" / "armour.jpg").is_file()
    on = pages_with(built, "armour")
    assert on == {1, 2}
    for n in on:  # the page prompt carries the prop's look beside the characters'
        text = (sdir / "prompts" / f"{n}.txt").read_text()
        assert "Places and props: the king's armour: a bronze helmet" in text
    plan = json.loads((sdir / "pages.json").read_text())
    assert "armour" not in plan["coverCast"]  # the draft's cover shows characters


def test_a_place_sheet_is_an_establishing_view_with_no_people(built):
    with_things(built, CAMP)
    ok(built.doit("build:" + DAVID, env=FAKE))
    prompt = (built.story_dir(DAVID) / "cast" / "camp.txt").read_text()
    assert prompt.splitlines()[1].startswith("An establishing view of a place: the camp of Israel")
    assert "No people, no animals, no figures of any kind." in prompt


def test_editing_one_props_look_redraws_its_sheet_and_the_pages_it_is_on_only(built):
    cast = cast_of(built)
    next(c for c in cast["characters"] if c["id"] == "armour")["appearance"] = \
        "an iron helmet and a coat of dark iron rings, too big for a boy"
    write_cast(built, cast)
    run = ok(built.doit("build:" + DAVID, env=FAKE))
    assert sorted((c["step"], c["target"]) for c in run.calls) == sorted([
        ("sheet", "cast/armour.jpg"), ("prompt", "prompts/1.txt"), ("image", "images/1.jpg"),
        ("prompt", "prompts/2.txt"), ("image", "images/2.jpg")])
    assert cast_of(built) == cast  # the hand edit is kept


# ---------------------------------------------------------------- references and the style frame


def add_style_frame(project, strength: str = "close", colour=(180, 90, 40)) -> None:
    Image.new("RGB", (64, 64), colour).save(project.root / "templates" / STD / "style.png")

    def edit(cfg):
        cfg["style"]["referenceImage"] = "style.png"
        cfg["style"]["referenceStrength"] = strength
    project.edit_config(edit)


def recorded(path) -> list[dict]:
    """The recorded requests, the fake LLM's tags (`` [1a2b3c4d]``) taken out of the names."""
    untag = lambda text: re.sub(r" \[[0-9a-f]{8}\]", "", text or "")  # noqa: E731
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{**r, "title": untag(r["title"]), "first": untag(r["first"]),
             "refs": [untag(x) for x in r["refs"]]} for r in rows]


def test_references_go_characters_then_places_and_props_then_the_style_frame_within_the_limit(
        tmp_path):
    project = make_project(tmp_path, [DAVID])
    log = tmp_path / "refs.jsonl"
    env = {**FAKE, "CLOOPS_PLUGINS": "tests.fakes.backends,tests.fakes.refs_backend",
           "CLOOPS_IMAGE_BACKEND": "fake-image-refs", "CLOOPS_TEST_REFLOG": str(log)}
    ok(project.doit(env=env))
    with_things(project, ARMOUR)
    add_style_frame(project)
    project.edit_config(lambda cfg: cfg["generation"].update(
        referenceLimits={"bytedance/seedream-4": 3}))
    log.unlink()
    run = ok(project.doit("build:" + DAVID, env=env))
    calls = {(r["label"], r["title"]): r for r in recorded(log)}
    run.out = re.sub(r" \[[0-9a-f]{8}\]", "", run.out)
    frame = ("the style frame: it shows the art style only, not content — match its linework, "
             "colouring, texture and light closely; take none of its people, places, objects "
             "or composition")
    # page 1: david, goliath, israel and the armour are on it; the model takes 3: the
    # characters first, the frame keeps the last slot, israel and the armour are left out
    page1 = calls[("Page 1 of 3", next(t for lab, t in calls if lab == "Page 1 of 3"))]
    assert page1["refs"] == ["David's reference sheet", "Goliath's reference sheet", frame]
    assert "israel's reference sheet, the reference sheet of the king's armour" in run.out.lower()
    page2 = next(r for r in calls.values() if r["label"] == "Page 2 of 3")
    assert page2["refs"] == ["David's reference sheet", "the reference sheet of the king's armour",
                             frame]
    assert page2["first"].startswith("Image 1 is David's reference sheet. Image 2 is the "
                                     "reference sheet of the king's armour. Image 3 is the "
                                     "style frame: it shows the art style only")
    cover = next(r for r in calls.values() if r["label"] == "Thumbnail")
    assert cover["refs"] == ["David's reference sheet", "Goliath's reference sheet", frame]
    sheets = [r for r in calls.values() if r["label"] in ("Reference sheet", "Prop sheet")]
    assert len(sheets) == 4 and all(r["refs"] == [frame] for r in sheets)
    assert sheets[0]["first"].startswith("Image 1 is the style frame")


def test_replacing_the_style_frame_redraws_every_image_and_nothing_else(built):
    add_style_frame(built)
    first = ok(built.doit("build:" + DAVID, env=FAKE))
    assert first.count(service="llm") == 0
    add_style_frame(built, colour=(20, 60, 200))  # the picture replaced
    run = ok(built.doit("build:" + DAVID, env=FAKE))
    assert run.count(service="llm") == 0
    assert sorted(c["target"] for c in run.calls if c["cache_hit"] == 0) == sorted([
        "cast/david.jpg", "cast/goliath.jpg", "cast/israel.jpg", "cast/armour.jpg",
        "images/1.jpg", "images/2.jpg", "images/3.jpg", "thumbnail.jpg"])
    # the wording of the strength changes the requests too, and nothing but the images
    built.edit_config(lambda cfg: cfg["style"].update(referenceStrength="loose"))
    loose = ok(built.doit("build:" + DAVID, env=FAKE))
    assert loose.count(service="llm") == 0 and loose.count(service="image") == 8
    assert ok(built.doit("build:" + DAVID, env=FAKE)).calls == []


def test_a_missing_style_frame_fails_the_load_naming_the_field(built):
    built.edit_config(lambda cfg: cfg["style"].update(referenceImage="nowhere.png"))
    run = built.doit("list", env=FAKE)
    assert run.rc != 0 and "style.referenceImage" in run.err and "nowhere.png" in run.err


def test_offline_the_storyboard_shows_the_style_frame_beside_each_sheet(tmp_path):
    project = make_project(tmp_path, [DAVID])
    add_style_frame(project, colour=(250, 0, 250))
    ok(project.doit("build:" + DAVID, env={"CLOOPS_LLM_BACKEND": "draft",
                                           "CLOOPS_IMAGE_BACKEND": "storyboard"}))
    sheet = Image.open(project.story_dir(DAVID) / "cast" / "david.jpg").convert("RGB")
    magenta = sum(k for k, p in sheet.getcolors(1 << 24) if p[0] > 200 and p[1] < 60 and p[2] > 200)
    assert magenta > 50  # the frame's thumbnail is drawn in the card's reference strip


# ---------------------------------------------------------------- review site and studio


def test_the_review_page_and_the_studio_show_rules_places_props_and_the_style_frame(tmp_path):
    from cloops.data.project import load_project
    from cloops.steer.review.studio import Studio

    project = make_project(tmp_path, [DAVID])
    add_style_frame(project)
    backlog = project.backlog()
    backlog["items"][0]["input"]["rules"] = [
        {"id": "sling-only", "scope": "visual", "text": "David carries only a sling."}]
    project.write_backlog(backlog)
    offline = {"CLOOPS_LLM_BACKEND": "draft", "CLOOPS_IMAGE_BACKEND": "storyboard"}
    ok(project.doit(env=offline))
    with_things(project, ARMOUR)
    ok(project.doit("build:" + DAVID, env=offline))
    ok(project.doit("review", env=offline))
    page = (tmp_path / "build" / "review" / STD / "stories" / f"{DAVID}.html").read_text()
    assert '<tr data-rule="no-gore">' in page and '<tr data-rule="sling-only">' in page
    assert "David carries only a sling." in page and "this story (backlog)" in page
    assert 'data-style-frame="style.png"' in page and 'src="data:image/jpeg;base64,' in page
    assert "Cast, places and props" in page and '<span class="badge kind">prop</span>' in page
    # characters first, then the prop
    assert page.index('data-character="goliath"') < page.index('data-character="armour"')
    live = Studio(load_project(tmp_path)).story(STD, DAVID)
    assert '<tr data-rule="sling-only">' in live and 'data-style-frame="style.png"' in live
    assert 'data-character="armour"' in live


def test_a_library_place_is_reused_by_name_and_one_edit_redraws_its_pages_only(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark"])
    lib = project.root / "templates" / STD / "cast" / "ark.json"
    lib.write_text(json.dumps({"id": "ark", "name": "the ark", "kind": "place",
                               "appearance": "a huge three-deck boat of dark gopher wood, "
                                             "sealed with pitch, one door in its side"}))
    ok(project.doit(env=FAKE))
    sdir = project.story_dir("noah-s-ark")
    cast = json.loads((sdir / "cast.json").read_text())["characters"]
    assert {"id": "ark", "name": "the ark", "kind": "place", "library": True} in cast
    assert "An establishing view of a place: the ark, a huge three-deck boat" in \
        (sdir / "cast" / "ark.txt").read_text()
    plan = json.loads((sdir / "pages.json").read_text())
    on = {i for i, p in enumerate(plan["pages"], 1) if any("ark" in x["cast"] for x in p["panels"])}
    assert on and "ark" not in plan["coverCast"]
    entry = json.loads(lib.read_text())
    entry["appearance"] = "a long boat of pale cedar planks with a reed roof and a wide ramp"
    lib.write_text(json.dumps(entry))
    run = ok(project.doit("build:noah-s-ark", env=FAKE))
    assert sorted((c["step"], c["target"]) for c in run.calls) == sorted(
        [("sheet", "cast/ark.jpg")] + [(s, f"{d}/{n}.{x}") for n in on
                                        for s, d, x in (("prompt", "prompts", "txt"),
                                                        ("image", "images", "jpg"))])
