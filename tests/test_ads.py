"""Ad components built through doit: hook lines and tags (LLM), hook and body clips (rendered),
the manifest — each rebuilt exactly when what it uses changes, counting calls (the ledger) and
renders (the tasks a run's output says ran); every clip probed; the overlay modes checked
pixel by pixel."""

from __future__ import annotations

import json
import shutil

import jsonschema
import numpy as np
import pytest
from PIL import Image

from cloops.core.fileio import sha256_file
from cloops.graph.kinds.ads import page_panels
from cloops.services.media import SAFE_AREA, BodyPage, Box, probe, render_body_clip, render_hook_clip

from conftest import REPO, make_project
from test_media import assert_vertical_clip, diff_box, frames_of, sha
from test_rebuild_rules import FAKE
from test_step_kinds import ran

KIDS = "comic-books-kids"
STD = "comic-books-standard"
HOOK_TASKS = {"hook-clip 1", "hook-clip 2", "hook-clip 3"}
SCHEMA = json.loads((REPO / "templates" / STD / "schemas" / "ad-manifest.json").read_text())


def paid(run, **where) -> int:
    return run.count(cache_hit=0, **where)


def manifest(sdir) -> dict:
    data = json.loads((sdir / "ads" / "manifest.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    for c in data["components"]:
        assert c["sha256"] == sha256_file(sdir / c["file"]), c["file"]
    return data


def by_id(data: dict) -> dict[str, dict]:
    return {c["id"]: c for c in data["components"]}


def shas(sdir, names) -> dict[str, str]:
    return {n: sha256_file(sdir / "ads" / n) for n in names}


@pytest.fixture
def kids(tmp_path):
    """One kids story with its ads on, short clips (1 s hooks, a 2-4 s body)."""
    project = make_project(tmp_path, ["noah-s-ark"], templates=(KIDS,), ads=True)
    project.edit_config(lambda c: c["ads"].update(hookDurationS=1, minS=2, maxS=4), KIDS)
    return project


def test_kids_ads_rebuild_exactly_what_each_edit_reaches(kids):
    first = kids.doit("build:noah-s-ark", env=FAKE)
    assert first.rc == 0, first.out + first.err
    sdir = kids.story_dir("noah-s-ark", KIDS)
    assert {"ad-hooks", "ad-tags", "body-clip", "ad-manifest"} | HOOK_TASKS <= ran(first.out)
    assert kids.backlog(KIDS)["items"][0]["status"] == "completed"
    hooks = json.loads((sdir / "ads" / "hooks.json").read_text())["hooks"]
    assert [h["id"] for h in hooks] == ["1", "2", "3"]
    data = manifest(sdir)
    assert sorted(by_id(data)) == ["body", "hook-1", "hook-2", "hook-3", "voice"]
    assert by_id(data)["voice"]["file"] == "voice.mp3"
    cast = {c["id"] for c in json.loads((sdir / "cast.json").read_text())["characters"]}
    assert {c["id"] for c in data["tags"]["characters"]} <= cast
    assert by_id(data)["hook-2"]["source"]["artifacts"]["ads/hooks.json#2"]

    again = kids.doit("build:noah-s-ark", env=FAKE)
    assert again.rc == 0 and ran(again.out) == set() and again.calls == []

    # hook line 2 edited by hand: its clip and the manifest, no call, no other clip
    clips = ["hook-1.mp4", "hook-2.mp4", "hook-3.mp4", "body.mp4"]
    before = shas(sdir, clips)
    hooks[1]["line"] = "Who shuts the door of the ark?"
    (sdir / "ads" / "hooks.json").write_text(json.dumps({"hooks": hooks}, indent=2))
    edit = kids.doit("build:noah-s-ark", env=FAKE)
    assert edit.rc == 0, edit.out + edit.err
    assert ran(edit.out) == {"hook-clip 2", "ad-manifest"}
    assert edit.calls == []
    after = shas(sdir, clips)
    assert [c for c in clips if before[c] != after[c]] == ["hook-2.mp4"]
    assert by_id(manifest(sdir))["hook-2"]["hookText"] == "Who shuts the door of the ark?"
    assert json.loads((sdir / "ads" / "hooks.json").read_text())["hooks"] == hooks  # kept

    # a line opening on a page the story does not have: the story fails, naming the field
    wrong = [dict(h) for h in hooks]
    wrong[2]["page"] = 9
    (sdir / "ads" / "hooks.json").write_text(json.dumps({"hooks": wrong}, indent=2))
    bad = kids.doit("build:noah-s-ark", env=FAKE)
    assert bad.rc != 0 and bad.calls == [] and not ran(bad.out) & HOOK_TASKS
    assert "ads/hooks.json, field 'hooks[3].page'" in bad.out + bad.err
    (sdir / "ads" / "hooks.json").write_text(json.dumps({"hooks": hooks}, indent=2))
    fixed = kids.doit("build:noah-s-ark", env=FAKE)  # doit runs what failed once more
    assert fixed.rc == 0 and fixed.calls == []
    assert ran(fixed.out) == {"hook-clip 3", "ad-manifest"}

    # page 2's narration edited by hand (the script the voice reads): one voice call, the
    # voice and the body re-render; no hook clip, no other call
    script = sdir / "narration-script.md"
    text = script.read_text()
    cut = text.index("## Page 2")
    script.write_text(text[:cut] + "## Page 2\n\nTwo by two, the animals came aboard.\n\n"
                      + text[text.index("## Page 3"):])
    narr = kids.doit("build:noah-s-ark", env=FAKE)
    assert narr.rc == 0, narr.out + narr.err
    assert ran(narr.out) == {"voice", "story-data", "bundle", "body-clip", "ad-manifest"}
    assert paid(narr) == 1 and paid(narr, service="voice") == 1
    changed = shas(sdir, clips)  # (the 4 s body ends inside page 1: its bytes may not change)
    assert [c for c in clips if changed[c] != after[c]] in ([], ["body.mp4"])
    body = by_id(manifest(sdir))["body"]
    assert body["source"]["artifacts"]["voice.mp3"] == sha256_file(sdir / "voice.mp3")

    # ads.hookDurationS: every hook clip (and the manifest), no call, not the body
    kids.edit_config(lambda c: c["ads"].update(hookDurationS=2), KIDS)
    dur = kids.doit("build:noah-s-ark", env=FAKE)
    assert dur.rc == 0, dur.out + dur.err
    assert ran(dur.out) == HOOK_TASKS | {"ad-manifest"} and dur.calls == []
    assert {c["durationS"] for c in manifest(sdir)["components"] if c["type"] == "hook"} == {2.0}

    # the overlay mode: every clip (and the manifest), no call; the text moves beside them
    kids.edit_config(lambda c: c["ads"].update(overlay="separate"), KIDS)
    sep = kids.doit("build:noah-s-ark", env=FAKE)
    assert sep.rc == 0, sep.out + sep.err
    assert ran(sep.out) == HOOK_TASKS | {"body-clip", "ad-manifest"} and sep.calls == []
    data = by_id(manifest(sdir))
    assert data["hook-1"]["overlayBaked"] is False
    assert data["hook-1"]["overlayFile"] == "ads/hook-1-overlay.png"
    assert data["hook-1-overlay"]["type"] == "overlay" and data["hook-1-overlay"]["for"] == "hook-1"
    assert data["body"]["captions"] == {"vtt": "ads/body.vtt", "srt": "ads/body.srt"}
    assert (sdir / "ads" / "body.vtt").read_text().startswith("WEBVTT")

    # back to baked: the overlays and captions go (kept in history), nothing is paid
    kids.edit_config(lambda c: c["ads"].update(overlay="baked"), KIDS)
    baked = kids.doit("build:noah-s-ark", env=FAKE)
    assert baked.rc == 0 and baked.calls == []
    assert sorted(p.name for p in (sdir / "ads").iterdir()) == [
        "body.mp4", "hook-1.mp4", "hook-2.mp4", "hook-3.mp4", "hooks.json", "manifest.json",
        "tags.json"]
    assert kids.doit("build:noah-s-ark", env=FAKE).calls == []


def test_standard_ads_are_opt_in_and_follow_the_pages(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark"], ads=True)
    off = project.doit("build:noah-s-ark", env=FAKE)
    assert off.rc == 0, off.out + off.err
    sdir = project.story_dir("noah-s-ark")
    assert not (sdir / "ads").exists()  # comic-books-standard ships with ads.enabled false
    assert "ad-hooks" not in project.doit("list", "--all").out

    # switching them on pays for the hook lines and the tags, and renders the clips
    project.edit_config(lambda c: c["ads"].update(enabled=True, hookDurationS=1, minS=2,
                                                  maxS=6))
    on = project.doit("build:noah-s-ark", env=FAKE)
    assert on.rc == 0, on.out + on.err
    assert ran(on.out) == {"ad-hooks", "ad-tags", "body-clip", "ad-manifest"} | HOOK_TASKS
    assert paid(on) == 2 and {c["step"] for c in on.calls} == {"ad-hooks", "ad-tags"}
    data = manifest(sdir)
    assert sorted(by_id(data)) == ["body", "hook-1", "hook-2", "hook-3"]  # no voice
    assert 2 <= by_id(data)["body"]["durationS"] <= 6
    opens = {h["id"]: h["page"] for h in
             json.loads((sdir / "ads" / "hooks.json").read_text())["hooks"]}

    # page 2's narration (no voice track: the body is timed by reading pace): the body
    # re-renders; a hook clip only when the page it opens on was redrawn (page 2's prompt
    # reads its narration)
    plan = json.loads((sdir / "pages.json").read_text())
    plan["pages"][1]["narration"] = "The animals came, two by two, and the ark was full."
    (sdir / "pages.json").write_text(json.dumps(plan, indent=2))
    edit = project.doit("build:noah-s-ark", env=FAKE)
    assert edit.rc == 0, edit.out + edit.err
    rendered = ran(edit.out) & (HOOK_TASKS | {"body-clip"})
    assert rendered == {"body-clip"} | {f"hook-clip {k}" for k, p in opens.items() if p == 2}
    assert "ad-hooks" not in ran(edit.out) and "ad-tags" not in ran(edit.out)


# ---------------------------------------------------------------- probing what the build made


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The kids story built offline (storyboards, piper): 2 s hooks and a 4-6 s body, baked;
    then again with the overlays separate (the baked clips kept under ``baked/``)."""
    root = tmp_path_factory.mktemp("offline")
    project = make_project(root, ["noah-s-ark"], templates=(KIDS,), ads=True)
    project.edit_config(lambda c: c["ads"].update(hookDurationS=2, minS=4, maxS=6), KIDS)
    first = project.doit("build:noah-s-ark")
    assert first.rc == 0, first.out + first.err
    sdir = project.story_dir("noah-s-ark", KIDS)
    shutil.copytree(sdir / "ads", root / "baked")
    project.edit_config(lambda c: c["ads"].update(overlay="separate"), KIDS)
    second = project.doit("build:noah-s-ark")
    assert second.rc == 0, second.out + second.err
    return project, sdir, root / "baked"


def test_every_clip_is_a_vertical_ad_of_the_configured_length(offline):
    _project, sdir, baked = offline
    for folder in (baked, sdir / "ads"):
        for k in (1, 2, 3):
            assert_vertical_clip(folder / f"hook-{k}.mp4", 2.0)
        body = probe(folder / "body.mp4")
        assert 4.0 <= body["duration_s"] <= 6.05
        assert_vertical_clip(folder / "body.mp4", body["video_duration_s"])
    data = manifest(sdir)
    for c in data["components"]:
        if c["type"] in ("hook", "body"):
            assert (c["width"], c["height"], c["fps"], c["codecs"]) == (1080, 1920, 30.0,
                                                                        ["h264", "aac"])


def test_offline_hooks_open_on_their_panel_and_the_body_shows_the_pages_panels(offline):
    _project, sdir, _baked = offline
    hooks = json.loads((sdir / "ads" / "hooks.json").read_text())["hooks"]
    for h in hooks:
        panels = page_panels(sdir / "images" / f"{h['page']}.jpg", 3)
        assert panels and len(panels) == 3  # the storyboard's three, not its reference strip


def test_separate_clips_are_clean_and_the_text_is_beside_them(offline):
    _project, sdir, baked = offline
    hook = json.loads((sdir / "ads" / "hooks.json").read_text())["hooks"][0]
    image = sdir / "images" / f"{hook['page']}.jpg"
    crop = page_panels(image, 3)[hook["panel"] - 1]
    clean = render_hook_clip(image, sdir.parent / "clean-hook.mp4", line="", duration_s=2.0,
                             crop_box=tuple(crop))
    assert sha(sdir / "ads" / "hook-1.mp4") == sha(clean.path)  # not a text pixel in it
    png = Image.open(sdir / "ads" / "hook-1-overlay.png")
    assert png.mode == "RGBA" and png.size == (1080, 1920)
    alpha = np.asarray(png.getchannel("A"))
    assert alpha.min() == 0 and alpha.max() == 255
    ys, xs = np.nonzero(alpha)
    assert SAFE_AREA.contains(Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    # the baked hook is the clean one with the line drawn inside the safe area
    for a, b in zip(frames_of(baked / "hook-1.mp4", [0, 30, 59]),
                    frames_of(sdir / "ads" / "hook-1.mp4", [0, 30, 59])):
        box = diff_box(a, b)
        assert box is not None and SAFE_AREA.contains(box), box

    timings = json.loads((sdir / "voice.json").read_text())["segments"]
    counts = [len(p["panels"]) for p in json.loads((sdir / "pages.json").read_text())["pages"]]
    pages = [BodyPage(sdir / "images" / f"{i}.jpg", "", s["startS"], s["endS"],
                      panels=page_panels(sdir / "images" / f"{i}.jpg", n) or [])
             for i, (s, n) in enumerate(zip(timings, counts), 1)]
    silent = render_body_clip(pages, sdir.parent / "clean-body.mp4",
                              voice_mp3=sdir / "voice.mp3", min_s=4, max_s=6)
    assert sha(sdir / "ads" / "body.mp4") == sha(silent.path)  # no caption pixel in it
    vtt = (sdir / "ads" / "body.vtt").read_text()
    srt = (sdir / "ads" / "body.srt").read_text()
    assert vtt.startswith("WEBVTT") and " --> " in srt
    # the baked body's captions, where the cues say, lie inside the safe area
    cues = [line.split(" --> ") for line in vtt.splitlines() if " --> " in line]
    picks = [round((_secs(a) + _secs(b)) / 2 * 30) for a, b in cues]
    for a, b in zip(frames_of(baked / "body.mp4", picks), frames_of(silent.path, picks)):
        box = diff_box(a, b)
        assert box is not None and SAFE_AREA.contains(box), box


def _secs(stamp: str) -> float:
    h, m, s = stamp.strip().split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)
