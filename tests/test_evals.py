"""No-call checks as build targets: each fails on a planted defect, passes on the shipped offline
build, and re-runs only when what it reads changes (real doit runs, offline backends)."""

from __future__ import annotations

import json
import re

import pytest

from cloops.core import prose
from cloops.graph.kinds.evals import summarize

from conftest import make_project

STD = "comic-books-standard"
KIDS = "comic-books-kids"


def ran(out: str) -> set[str]:
    """The tasks a run's output says ran, as ``"<template>/<id> <step>"``."""
    return {f"{m.group(1)} {m.group(2)}" for m in re.finditer(r"✓ (\S+)  (.+?)  \(", out)}


def evals(project, story="noah-s-ark", template=STD) -> dict:
    return json.loads((project.story_dir(story, template) / "evals.json").read_text())


def result(data: dict, name: str, page=None) -> dict:
    found = [r for r in data["results"] if r["name"] == name and r["page"] == page]
    assert len(found) == 1, (name, page, data["results"])
    return found[0]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """noah-s-ark in both templates, built offline once; tests copy it before planting."""
    root = tmp_path_factory.mktemp("offline")
    project = make_project(root, ["noah-s-ark"], templates=None)
    run = project.doit()
    assert run.rc == 0, run.out + run.err
    return project


@pytest.fixture
def built(offline, tmp_path):
    import shutil
    shutil.copytree(offline.root, tmp_path / "p", symlinks=True)
    from conftest import Project
    return Project(tmp_path / "p")


def test_every_check_passes_on_the_shipped_offline_build(offline):
    for template in (STD, KIDS):
        data = evals(offline, template=template)
        assert data["checks"]["fail"] == 0 and data["needsReview"] is False, data["reviewReasons"]
        assert data["judges"] == "off" and data["score"] is None
        names = {r["name"] for r in data["results"]}
        assert {"page-count", "panels-per-page", "key-moments", "narrative-length",
                "visual-only", "characters-carried", "prompt-length", "anachronisms"} <= names
        # what a model must write (length) is only warned about on a draft, and says why
        length = result(data, "narrative-length")
        assert length["result"] == "warn" and "offline draft" in length["evidence"][0]["note"]
        structural = [r for r in data["results"] if r["name"] != "narrative-length"
                      and r["name"] != "reading-level"]
        assert {r["result"] for r in structural} == {"pass"}
    kids = evals(offline, template=KIDS)
    assert {"sentence-length", "reading-level"} <= {r["name"] for r in kids["results"]}


def test_a_sign_in_a_panel_prompt_fails_visual_only_and_reruns_that_page_only(built):
    p = built.story_dir("noah-s-ark") / "prompts" / "2.txt"
    p.write_text(p.read_text().replace("focus on", "a wooden sign reading GOD IS GOOD, focus on", 1))
    run = built.doit("build:comic-books-standard/noah-s-ark")
    assert run.rc == 0, run.out + run.err
    key = f"{STD}/noah-s-ark"
    # offline, the storyboard draws the page's panels, not its prompt: image 2 comes out the
    # same, so nothing reading it runs again
    assert ran(run.out) == {f"{key} image 2", f"{key} check-prompt 2", f"{key} evals"}
    data = evals(built)
    visual = result(data, "visual-only", page=2)
    assert visual["result"] == "fail"
    ev = visual["evidence"][0]
    assert ev["page"] == 2 and ev["where"] == "panel 1" and {"sign", "reading"} <= set(ev["words"])
    assert data["needsReview"] and "check visual-only failed (page 2 panel 1)" in \
        data["reviewReasons"][0]
    assert result(data, "visual-only", page=1)["result"] == "pass"


def test_a_page_with_four_panels_fails_panels_per_page(built):
    f = built.story_dir("noah-s-ark") / "pages.json"
    plan = json.loads(f.read_text())
    plan["pages"][0]["panels"].append(dict(plan["pages"][0]["panels"][0], panel=4))
    f.write_text(json.dumps(plan, indent=2))
    assert built.doit("build:comic-books-standard/noah-s-ark").rc == 0
    data = evals(built)
    check = result(data, "panels-per-page")
    assert check["result"] == "fail"
    assert check["evidence"][0]["page"] == 1 and "4 panels" in check["evidence"][0]["note"]
    assert result(data, "page-count")["result"] == "pass"
    assert data["needsReview"]


def test_a_missing_key_moment_fails_and_names_it(built):
    moments = json.loads(built.backlog_path().read_text())["items"][0]["input"]["keyMoments"]
    dove = next(m for m in moments if "dove" in m)
    f = built.story_dir("noah-s-ark") / "pages.json"
    plan = json.loads(f.read_text())
    for page in plan["pages"]:
        page["narration"] = page["narration"].replace(_sentence(dove), "The water goes down.")
        page["title"] = page["title"].replace(_sentence(dove).rstrip("."), "Waiting")
        for panel in page["panels"]:
            if panel["moment"] == dove:
                panel["moment"] = "the water goes down"
    f.write_text(json.dumps(plan, indent=2))
    assert built.doit("build:comic-books-standard/noah-s-ark").rc == 0
    check = result(evals(built), "key-moments")
    assert check["result"] == "fail"
    assert dove in check["evidence"][0]["note"] and "dove" in check["evidence"][0]["words"]


def _sentence(m: str) -> str:
    return m[:1].upper() + m[1:] + "."


def test_anachronism_missing_appearance_and_overlong_panel_fail(built):
    p = built.story_dir("noah-s-ark") / "prompts" / "1.txt"
    lines = p.read_text().splitlines()
    panel = next(i for i, line in enumerate(lines) if line.startswith("Panel 2"))
    lines[panel] = ("Panel 2 — medium shot at eye level: Noah hammers a plank beside a stone "
                    "castle. " + "dusty ground " * 80 + ". soft light from the left, long shadows.")
    p.write_text("\n".join(lines) + "\n")
    assert built.doit("build:comic-books-standard/noah-s-ark").rc == 0
    data = evals(built)
    assert result(data, "anachronisms", page=1)["evidence"][0]["words"] == ["castle"]
    carried = result(data, "characters-carried", page=1)
    assert carried["result"] == "fail" and carried["evidence"][0]["words"] == ["Noah"]
    length = result(data, "prompt-length", page=1)
    assert length["result"] == "fail"
    assert any("panel line" in e["note"] and e["where"] == "panel 2" for e in length["evidence"])


def test_a_hand_written_narrative_is_held_to_the_word_count(built):
    f = built.story_dir("noah-s-ark") / "narrative.md"
    f.write_text("# Noah's Ark\n\nNoah builds a boat. The rain comes. A rainbow shines.\n")
    assert built.doit("build:comic-books-standard/noah-s-ark").rc == 0
    check = result(evals(built), "narrative-length")
    assert check["result"] == "fail" and "10 words;" in check["evidence"][0]["note"]


def test_editing_page_2_narration_reruns_only_the_evals_that_read_it(built):
    for template in (STD, KIDS):
        f = built.story_dir("noah-s-ark", template) / "pages.json"
        plan = json.loads(f.read_text())
        plan["pages"][1]["narration"] = ("The rain falls and falls on the big wooden boat, and "
                                         "every animal inside stays safe and dry with Noah.")
        f.write_text(json.dumps(plan, indent=2))
    run = built.doit("build:noah-s-ark")
    assert run.rc == 0, run.out + run.err
    evals_ran = {t for t in ran(run.out) if " check-" in t or " judge-" in t or t.endswith(" evals")}
    std, kids = f"{STD}/noah-s-ark", f"{KIDS}/noah-s-ark"
    # what reads page 2's narration: the key-moment check (the plan's text), the kids' page-2
    # sentence check and reading level; evals.json where a result changed (the kids' sentence
    # check fails). The judges are switched off: they make no task. Not the plan's shape,
    # other pages' narration, any prompt check, nor other pages' images.
    # (and the rule check: the text rules' forbidden words in the narration; issue #22)
    assert evals_ran == {f"{std} check-moments", f"{kids} check-moments",
                         f"{std} check-rules", f"{kids} check-rules",
                         f"{kids} check-narration 2", f"{kids} check-reading", f"{kids} evals"}
    kids_data = evals(built, template=KIDS)
    long = result(kids_data, "sentence-length", page=2)  # a hand edit: no longer a draft
    assert long["result"] == "fail" and long["evidence"][0]["where"] == "sentence 1"
    assert result(kids_data, "sentence-length", page=1)["result"] == "pass"
    reading = result(kids_data, "reading-level")  # measured now that a person wrote some
    assert "Flesch-Kincaid grade" in reading["evidence"][0]["note"]
    assert run.calls == [c for c in run.calls if c["offline"]]  # nothing paid


def test_summary_scores_judgements_and_marks_review_below_the_threshold():
    def judged(page, char, text, draft=False):
        return ("judge-page", {"judge": "judge-page", "page": page, "enabled": True,
                               "draft": draft, "scores": {
                                   "characterConsistency": {"reason": "r", "score": char},
                                   "strayText": {"reason": "letters on the sign", "score": text}}})
    docs = [("check-plan", {"subject": "pages.json", "page": None, "checks": [
                {"name": "page-count", "result": "pass", "evidence": []}]}),
            ("judge-story", {"judge": "judge-story", "page": None, "enabled": True,
                             "draft": False, "scores": {
                                 "faithfulness": {"reason": "r", "score": 5},
                                 "familySafety": {"reason": "r", "score": 5},
                                 "narrationQuality": {"reason": "r", "score": 4}}}),
            judged(1, 4, 5), judged(2, 4, 2), judged(3, 1, 1, draft=True)]
    data = summarize("t/s", docs, 3)
    assert data["scores"] == {"characterConsistency": 4.0, "faithfulness": 5.0,
                              "familySafety": 5.0, "narrationQuality": 4.0, "strayText": 3.5}
    assert data["score"] == 4.3 and data["judges"] == "on"
    assert data["needsReview"] and data["reviewReasons"] == [
        "strayText 2 on page 2 is below the threshold 3: letters on the sign"]
    assert data["judged"]["judge-page"]["3"]["draft"] is True  # listed, never scored
    assert summarize("t/s", docs[:1], 3)["score"] is None


def test_prose_measures():
    assert prose.sentences("Noah builds. Rain falls! Is it over? Yes") == [
        "Noah builds.", "Rain falls!", "Is it over?", "Yes"]
    assert prose.coverage("Goliath challenges Israel", "Goliath shouts a challenge at Israel") == 1
    assert prose.coverage("the dove returns", "a raven flies away") == 0
    terms = prose.lexicon("# comment\nsign\nspeech bubble  # inline\n\n")
    assert terms == ["sign", "speech bubble"]
    assert prose.find_terms("Two signs and speech bubbles; a signature; design", terms) == [
        "signs", "speech bubbles"]
    assert prose.reading_grade("The cat sat on the mat. The dog ran.") < 1
    assert prose.reading_grade("Interpreting Pharaoh's complicated dreams meticulously.") > 8
    # names the pronouncing dictionary does not know are counted by hyphenation
    assert prose.reading_grade("Jonah sails to Tarshish. The Levite passes by Moriah.") > 0


def test_status_and_report_show_the_score_and_the_failed_checks(built):
    p = built.story_dir("noah-s-ark") / "prompts" / "3.txt"
    p.write_text(p.read_text().replace("focus on", "a speech bubble over Noah, focus on", 1))
    assert built.doit("build:comic-books-standard/noah-s-ark").rc == 0
    status = built.doit("status", "comic-books-standard/noah-s-ark")
    assert status.rc == 0, status.err
    head = status.out.splitlines()[0]
    assert "score –" in head and "needs review (1 failed check)" in head
    assert "check visual-only failed (page 3 panel 1)" in status.out
    data = json.loads(built.doit("status", "comic-books-standard/noah-s-ark", "--json").out)
    ev = data["stories"][0]["evals"]
    assert ev["needsReview"] is True and ev["checks"]["fail"] == 1
    assert ev["failed"][0].startswith("visual-only (page 3 panel 1)")
    kids = json.loads(built.doit("status", "comic-books-kids/noah-s-ark", "--json").out)
    assert kids["stories"][0]["evals"]["needsReview"] is False

    report = built.doit("report", "--by", "story")
    assert report.rc == 0, report.err
    row = next(line for line in report.out.splitlines()
               if "comic-books-standard" in line and "noah-s-ark" in line)
    assert "visual-only" in row and "–" in row
    assert "1 stories need review (evals.json): comic-books-standard/noah-s-ark" in report.out
    rows = json.loads(built.doit("report", "--by", "story", "--json").out)["story"]
    mine = next(r for r in rows if r["template"] == STD)
    assert mine["needs_review"] is True and mine["score"] is None


def test_the_build_output_names_the_stories_that_need_review(built):
    p = built.story_dir("noah-s-ark") / "prompts" / "1.txt"
    p.write_text(p.read_text().replace("focus on", "a caption under the ark, focus on", 1))
    run = built.doit("build:comic-books-standard/noah-s-ark")
    assert run.rc == 0, run.out + run.err
    assert "1 stories need review" in run.out
    assert "comic-books-standard/noah-s-ark: check visual-only failed (page 1 panel 1)" in run.out
