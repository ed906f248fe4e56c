"""comic-books-kids: a variant by inheritance, with a narrated voice track and per-page timings."""

from __future__ import annotations

import json

import mutagen.mp3

from conftest import make_project
from test_rebuild_rules import FAKE

KIDS = "comic-books-kids"
STD = "comic-books-standard"


def by(run, template):
    return [c for c in run.calls if c["template"] == template and not c["cache_hit"]]


def test_kids_backlog_builds_offline_with_voice(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark", "jonah-and-the-whale"], templates=(KIDS,))
    assert len(json.loads((tmp_path / "backlogs" / f"{KIDS}.json").read_text())["items"]) == 2
    run = project.doit("build:comic-books-kids/noah-s-ark")
    assert run.rc == 0, run.out + run.err
    assert "voice: piper" in run.out
    sdir = project.story_dir("noah-s-ark", KIDS)
    bundle = sdir / "bundle"
    data = json.loads((bundle / "story-data.json").read_text())
    n = data["totalPages"]
    assert 3 <= n <= 4  # the kids' pageCount
    assert {p.name for p in bundle.iterdir()} == (
        {f"{i}.jpg" for i in range(1, n + 1)} | {"thumbnail.jpg", "story-data.json", "voice.mp3"})
    assert data["audioFile"] == "voice.mp3"
    duration = mutagen.mp3.MP3(bundle / "voice.mp3").info.length
    timings = json.loads((sdir / "voice.json").read_text())
    assert abs(duration - timings["durationS"]) < 0.3
    last = 0.0
    for page in data["pages"]:
        assert last <= page["audioStartS"] < page["audioEndS"] <= duration + 0.05
        last = page["audioEndS"]
    # the narration spoken is the pages' narration, one segment per page
    assert [s["text"] for s in timings["segments"]] == [p["narration"] for p in data["pages"]]
    # kids prompts: the kids art style reached the image prompts
    assert "watercolor" in (sdir / "prompts" / "1.txt").read_text()


def test_variant_rebuild_rules(both_templates):
    project = both_templates
    first = project.doit(env=FAKE)
    assert first.rc == 0, first.out + first.err
    assert by(first, KIDS) and by(first, STD)

    # voice settings: voices only
    project.edit_config(lambda c: c["voice"]["settings"].update(stability=0.3), KIDS)
    run = project.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)
    assert run.rc == 0, run.out + run.err
    assert {c["step"] for c in by(run, KIDS)} == {"voice"} and len(by(run, KIDS)) == 2
    assert by(run, STD) == []

    # one story's narration script edited by hand: that story's voice only
    script = project.story_dir("noah-s-ark", KIDS) / "narration-script.md"
    script.write_text(script.read_text().replace("## Page 1\n\n", "## Page 1\n\nLong ago, ", 1))
    run = project.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)
    assert [(c["story"], c["step"]) for c in by(run, KIDS)] == [("noah-s-ark", "voice")]
    assert by(run, STD) == []
    assert "Long ago, " in script.read_text()
    data = json.loads((project.story_dir("noah-s-ark", KIDS) / "bundle" / "story-data.json").read_text())
    assert data["pages"][0]["audioEndS"] > 0

    # the kids art style: kids prompts, sheets and images only, nothing of the standard template
    project.edit_config(lambda c: c["style"].update(artStyle="crayon drawing"), KIDS)
    run = project.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)
    assert {c["step"] for c in by(run, KIDS)} == {"sheet", "prompt", "image", "thumbnail-prompt",
                                                  "thumbnail"}
    assert by(run, STD) == []

    # the base's step-3 prompt is inherited: editing it rebuilds both templates' prompts
    p = project.prompt_path("step3-prompts.md", STD)
    p.write_text(p.read_text() + "\nKeep backgrounds simple.\n")
    run = project.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)
    assert {c["step"] for c in by(run, KIDS)} == {"prompt", "image"}
    assert {c["step"] for c in by(run, STD)} == {"prompt", "image"}

    # the kids' own step-1 prompt replaces the base's: editing the base's step 1 leaves kids alone
    p = project.prompt_path("step1-narrative.md", STD)
    p.write_text(p.read_text() + "\nMention the weather.\n")
    run = project.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)
    assert by(run, KIDS) == []
    assert {c["step"] for c in by(run, STD)} >= {"narrative"}


def test_variant_overrides_are_validated(both_templates):
    project = both_templates
    project.edit_config(lambda c: c["settings"].update(maxSentenceWords=2), KIDS)
    run = project.doit(env=FAKE)
    assert run.rc == 2
    assert "comic-books-kids/config.json" in run.err and "settings.maxSentenceWords" in run.err
