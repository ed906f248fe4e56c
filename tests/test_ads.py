"""Ad components built through doit: hook lines and tags (LLM), hook and body clips (rendered),
the manifest — each rebuilt exactly when what it uses changes, counting calls (the ledger) and
renders (the tasks a run's output says ran); every clip probed; the overlay modes checked
pixel by pixel."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import jsonschema
import numpy as np
import pytest
from PIL import Image

from cloops.core.fileio import sha256_file
from cloops.graph.kinds.ads import page_panels
from cloops.services.media import (SAFE_AREA, BodyPage, Box, Soundtrack, probe, render_body_clip,
                                   render_hook_clip)

from cloops.services.media.ffmpeg import ffmpeg_exe

from conftest import REPO, make_project
from test_media import assert_vertical_clip, diff_box, frames_of, sha
from test_rebuild_rules import FAKE
from test_step_kinds import ran

KIDS = "comic-books-kids"
STD = "comic-books-standard"
HOOK_TASKS = {"hook-clip 1", "hook-clip 2", "hook-clip 3"}
CTA_TASKS = {"cta-clip 1", "cta-clip 2"}
VOICE_TASKS = {"hook-voice 1", "hook-voice 2", "hook-voice 3", "cta-voice 1", "cta-voice 2"}
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
    assert VOICE_TASKS | CTA_TASKS <= ran(first.out)
    data = manifest(sdir)
    assert sorted(by_id(data)) == ["body", "cta-1", "cta-2", "hook-1", "hook-2", "hook-3",
                                   "voice"]
    assert by_id(data)["voice"]["file"] == "ads/voice.m4a"
    assert by_id(data)["voice"]["type"] == "voice"
    assert {c["audio"] for c in data["components"]} == {"voice"}  # every line is spoken
    assert by_id(data)["cta-2"]["ctaType"] in {"LEARN_MORE", "WATCH_MORE", "LISTEN_NOW",
                                               "DOWNLOAD", "INSTALL_MOBILE_APP", "USE_APP",
                                               "SIGN_UP"}
    cast = {c["id"] for c in json.loads((sdir / "cast.json").read_text())["characters"]}
    assert {c["id"] for c in data["tags"]["characters"]} <= cast
    assert by_id(data)["hook-2"]["source"]["artifacts"]["ads/hooks.json#2"]

    again = kids.doit("build:noah-s-ark", env=FAKE)
    assert again.rc == 0 and ran(again.out) == set() and again.calls == []

    # hook line 2 edited by hand: its spoken take (one voice call), its clip and the manifest;
    # no other clip
    clips = ["hook-1.mp4", "hook-2.mp4", "hook-3.mp4", "body.mp4", "cta-1.mp4", "cta-2.mp4"]
    before = shas(sdir, clips)
    hooks[1]["line"] = "Who shuts the door of the ark?"
    (sdir / "ads" / "hooks.json").write_text(json.dumps({"hooks": hooks}, indent=2))
    edit = kids.doit("build:noah-s-ark", env=FAKE)
    assert edit.rc == 0, edit.out + edit.err
    assert ran(edit.out) == {"hook-voice 2", "hook-clip 2", "ad-manifest"}
    assert paid(edit) == 1 and paid(edit, service="voice", step="hook-voice") == 1
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
    assert fixed.rc == 0 and paid(fixed) == 0
    assert ran(fixed.out) == {"hook-clip 3", "ad-manifest"}

    # CTA line 2 edited by hand: its spoken take (one voice call), its card (and poster) and
    # the manifest; nothing else
    ctas = json.loads((sdir / "ads" / "ctas.json").read_text())["ctas"]
    ctas[1]["line"] = "Hear how it ends"
    (sdir / "ads" / "ctas.json").write_text(json.dumps({"ctas": ctas}, indent=2))
    before = shas(sdir, clips + ["cta-1.jpg", "cta-2.jpg"])
    cta = kids.doit("build:noah-s-ark", env=FAKE)
    assert cta.rc == 0, cta.out + cta.err
    assert ran(cta.out) == {"cta-voice 2", "cta-clip 2", "ad-manifest"}
    assert paid(cta) == 1 and paid(cta, service="voice", step="cta-voice") == 1
    now = shas(sdir, clips + ["cta-1.jpg", "cta-2.jpg"])
    assert [c for c in now if now[c] != before[c]] == ["cta-2.mp4", "cta-2.jpg"]
    assert by_id(manifest(sdir))["cta-2"]["ctaText"] == "Hear how it ends"
    after = shas(sdir, clips)

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

    # a spoken line longer than its 1 s hook is said up to 1.25 times faster, and then the
    # clip is made as long as it needs (and the run says so)
    for c in manifest(sdir)["components"]:
        if c["type"] == "hook":
            spoken = json.loads((sdir / "ads" / "voice" / f"{c['id']}.json").read_text())
            seg = spoken["segments"][0]
            needed = math.ceil((0.25 + (seg["endS"] - seg["startS"]) / 1.25 + 0.35) * 30) / 30
            assert c["durationS"] == pytest.approx(max(1.0, needed), abs=0.002)
            assert c["source"]["artifacts"]["tempo"] == "1.2500"
    assert "runs" in first.out and "instead of 1 s" in first.out

    # ads.hookDurationS: every hook clip (and the manifest), no call, not the body
    kids.edit_config(lambda c: c["ads"].update(hookDurationS=4), KIDS)
    dur = kids.doit("build:noah-s-ark", env=FAKE)
    assert dur.rc == 0, dur.out + dur.err
    assert ran(dur.out) == HOOK_TASKS | {"ad-manifest"} and dur.calls == []
    assert {c["durationS"] for c in manifest(sdir)["components"] if c["type"] == "hook"} == {4.0}

    # the loudness target: every clip and audio component re-renders; no paid call
    kids.edit_config(lambda c: c["ads"].update(loudness={"integratedLufs": -16}), KIDS)
    loud = kids.doit("build:noah-s-ark", env=FAKE)
    assert loud.rc == 0, loud.out + loud.err
    assert ran(loud.out) == HOOK_TASKS | CTA_TASKS | {"body-clip", "ad-manifest"}
    assert paid(loud) == 0
    for c in manifest(sdir)["components"]:
        assert abs(c["loudness"]["integratedLufs"] + 16) <= 1.0, c["id"]
        assert c["loudness"]["truePeakDbtp"] <= -1.0, c["id"]

    # the body's overlay mode alone: the body's files and the manifest; no hook, no CTA
    kids.edit_config(lambda c: c["ads"].update(overlay={"body": "both"}), KIDS)
    body_only = kids.doit("build:noah-s-ark", env=FAKE)
    assert body_only.rc == 0, body_only.out + body_only.err
    assert ran(body_only.out) == {"body-clip", "ad-manifest"} and body_only.calls == []
    data = by_id(manifest(sdir))
    assert data["body"]["overlay"]["mode"] == "both"
    assert {"ads/body.mp4", "ads/body-clean.mp4", "ads/body.vtt", "ads/body.srt",
            "ads/body.jpg"} <= set(data["body"]["files"])

    # the overlay mode of every type: every clip (and the manifest), no call; the text moves
    # beside them
    kids.edit_config(lambda c: c["ads"].update(overlay="separate"), KIDS)
    sep = kids.doit("build:noah-s-ark", env=FAKE)
    assert sep.rc == 0, sep.out + sep.err
    assert ran(sep.out) == HOOK_TASKS | CTA_TASKS | {"body-clip", "ad-manifest"}
    assert sep.calls == []
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
        "body.jpg", "body.mp4", "body.words.json", "cta-1.jpg", "cta-1.mp4", "cta-2.jpg",
        "cta-2.mp4", "ctas.json", "hook-1.jpg", "hook-1.mp4", "hook-2.jpg", "hook-2.mp4",
        "hook-3.jpg", "hook-3.mp4", "hooks.json", "manifest.json", "tags.json", "voice",
        "voice.m4a"]
    assert kids.doit("build:noah-s-ark", env=FAKE).calls == []

    # a clip replaced by hand is kept; the manifest says so, measures its loudness itself and
    # knows no text boxes for it
    shutil.copyfile(sdir / "ads" / "cta-2.mp4", sdir / "ads" / "cta-1.mp4")
    hand = kids.doit("build:noah-s-ark", env=FAKE)
    assert hand.rc == 0, hand.out + hand.err
    assert ran(hand.out) == {"ad-manifest"} and hand.calls == []
    cta1 = by_id(manifest(sdir))["cta-1"]
    assert cta1["source"]["handEdited"] is True and cta1["overlay"]["textBoxes"] is None
    assert abs(cta1["loudness"]["integratedLufs"] + 16) <= 1.0
    assert sha256_file(sdir / "ads" / "cta-1.mp4") == sha256_file(sdir / "ads" / "cta-2.mp4")


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
    assert ran(on.out) == {"ad-hooks", "ad-ctas", "ad-tags", "body-clip",
                           "ad-manifest"} | HOOK_TASKS | CTA_TASKS
    assert paid(on) == 3 and {c["step"] for c in on.calls} == {"ad-hooks", "ad-ctas", "ad-tags"}
    data = manifest(sdir)
    assert sorted(by_id(data)) == ["body", "cta-1", "cta-2", "hook-1", "hook-2", "hook-3"]
    assert {c["audio"] for c in data["components"]} == {"silent"}  # no voice, no music
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

    # a music bed: without a voice the hooks and CTAs carry it, the body too, and the bed
    # alone is a component of type audio - at the one loudness; no call
    bed = project.root / "templates" / STD / "bed.mp3"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "aevalsrc=0.2*sin(2*PI*220*t)+0.1*sin(2*PI*330*t):s=44100:d=2", "-ac", "2",
                    "-c:a", "libmp3lame", str(bed)], check=True)
    project.edit_config(lambda c: c["ads"].update(music="bed.mp3"))
    music = project.doit("build:noah-s-ark", env=FAKE)
    assert music.rc == 0, music.out + music.err
    assert ran(music.out) == HOOK_TASKS | CTA_TASKS | {"body-clip", "ad-manifest"}
    assert music.calls == []
    data = by_id(manifest(sdir))
    assert {data[k]["audio"] for k in data if k != "music"} == {"music"}
    assert data["music"]["type"] == "audio" and data["music"]["file"] == "ads/music.m4a"
    for c in data.values():
        assert abs(c["loudness"]["integratedLufs"] + 14) <= 1.0, c["id"]


# ---------------------------------------------------------------- probing what the build made


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The kids story built offline (storyboards, piper): 2 s hooks and a 4-6 s body, baked;
    then again with the overlays separate (the baked clips kept under ``baked/``). Drawn in
    the full format (``ads.drafts: full``): what a clip of real pictures is
    (tests/test_draft_clips.py covers the 540x960 proxies offline drafts get by default)."""
    root = tmp_path_factory.mktemp("offline")
    project = make_project(root, ["noah-s-ark"], templates=(KIDS,), ads=True)
    project.edit_config(lambda c: c["ads"].update(hookDurationS=2, minS=4, maxS=6,
                                                  drafts="full"), KIDS)
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
    data = by_id(manifest(sdir))
    for folder in (baked, sdir / "ads"):
        for k in (1, 2, 3):  # 2 s, or as long as the spoken line needs
            hook = data[f"hook-{k}"]
            assert hook["durationS"] >= 2.0
            assert_vertical_clip(folder / f"hook-{k}.mp4", round(hook["durationS"] * 30) / 30)
        for k in (1, 2):
            assert_vertical_clip(folder / f"cta-{k}.mp4",
                                 round(data[f"cta-{k}"]["durationS"] * 30) / 30)
        body = probe(folder / "body.mp4")
        assert 4.0 <= body["duration_s"] <= 6.05
        assert_vertical_clip(folder / "body.mp4", body["video_duration_s"])
    for c in data.values():
        if c["type"] in ("hook", "body", "cta"):
            assert (c["width"], c["height"], c["fps"], c["codecs"]) == (1080, 1920, 30.0,
                                                                        ["h264", "aac"])
            assert Image.open(sdir / c["poster"]).size == (1080, 1920)
        if c["type"] != "overlay":  # one loudness, measured after encoding
            assert abs(c["loudness"]["integratedLufs"] + 14) <= 1.0, c["id"]
            assert c["loudness"]["truePeakDbtp"] <= -1.0, c["id"]
            assert c["measured"]["speechWithin1_5s"] is True, c["id"]
    words = json.loads((sdir / "ads" / "body.words.json").read_text())
    assert words["estimated"] is True and words["words"]  # piper: estimated from sentences
    starts = [w["startS"] for w in words["words"]]
    assert starts == sorted(starts) and starts[-1] < data["body"]["durationS"]


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
    spoken = json.loads((sdir / "ads" / "voice" / "hook-1.json").read_text())["segments"]
    record = by_id(manifest(sdir))["hook-1"]
    tempo = float(record["source"]["artifacts"].get("tempo", 1))  # a long line said faster
    offset = 0.25 - spoken[0]["startS"] / tempo
    track = Soundtrack(voice=str(sdir / "ads" / "voice" / "hook-1.mp3"), voice_offset_s=offset,
                       voice_tempo=tempo, speech=tuple(
                           (s["startS"] / tempo + offset, s["endS"] / tempo + offset)
                           for s in spoken))
    duration = record["durationS"]
    clean = render_hook_clip(image, sdir.parent / "clean-hook.mp4", line="",
                             duration_s=duration, crop_box=tuple(crop), soundtrack=track)
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
    words = json.loads((sdir / "voice.json").read_text())["words"]
    silent = render_body_clip(pages, sdir.parent / "clean-body.mp4",
                              voice_mp3=sdir / "voice.mp3", min_s=4, max_s=6,
                              speech=[(w["startS"], w["endS"]) for w in words])
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
