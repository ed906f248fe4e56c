"""Rules every page obeys (a template's ``rules``, a story's ``input.rules``), places and props
in the cast, and the style frame — rebuild rules counted call for call through real doit runs.

Fake paid backends (tests/fakes/backends.py) answer with the template's offline drafts; a
recording image backend (tests/fakes/refs_backend.py) keeps each request's reference labels.
The cast of "David and Goliath" is david, goliath and israel; goliath and israel are on page 1
only (and goliath on the cover), david on every page.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO, make_project

from cloops.core.errors import InputError
from cloops.data import rules as rulebook

FAKE = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_LLM_BACKEND": "fake-llm",
        "CLOOPS_IMAGE_BACKEND": "fake-image", "CLOOPS_VOICE_BACKEND": "fake-voice",
        "PYTHONPATH": str(REPO)}
STD = "comic-books-standard"
DAVID = "david-and-goliath"
TEXT_STEPS = {"narrative", "pages"}
VISUAL_CALLS = {"prompt", "image", "thumbnail-prompt", "thumbnail", "sheet"}


def ok(run):
    assert run.rc == 0, run.out + run.err
    return run


def steps_called(run) -> set[str]:
    return {c["step"] for c in run.calls}


def set_rules(project, fn) -> None:
    def edit(cfg):
        cfg["rules"] = fn(cfg.get("rules", []))
    project.edit_config(edit)


def edit_rule(rule_id: str, **change):
    def fn(rules):
        return [{**r, **change} if r["id"] == rule_id else r for r in rules]
    return fn


@pytest.fixture
def built(tmp_path):
    project = make_project(tmp_path, [DAVID])
    ok(project.doit(env=FAKE))
    return project


# ---------------------------------------------------------------- rules: validation


def test_a_bad_rule_is_refused_naming_the_field_and_the_fix():
    good = [{"id": "no-gore", "text": "No gore.", "scope": "both", "forbid": ["gore", "/blood(y|ied)/"]}]
    assert rulebook.validate_rules(good, file="c.json", field="rules")[0]["forbid"] == \
        ["gore", "/blood(y|ied)/"]
    for bad, where in ([{"id": "x", "text": "t", "scope": "words"}], "rules[0].scope"), \
                      ([{"id": "X y", "text": "t", "scope": "text"}], "rules[0].id"), \
                      ([{"id": "x", "text": " ", "scope": "text"}], "rules[0].text"), \
                      ([{"id": "x", "text": "t", "scope": "text", "forbid": ["/(/"]}],
                       "rules[0].forbid[0]"), \
                      ([{"id": "x", "text": "t", "scope": "text"}] * 2, "rules[1].id"), \
                      ([{"id": "x", "text": "t", "scope": "text", "when": 1}], "rules[0]"):
        with pytest.raises(InputError) as exc:
            rulebook.validate_rules(bad, file="c.json", field="rules")
        assert exc.value.field == where and "c.json" in str(exc.value)


def test_forbidden_words_are_whole_words_any_case_and_patterns_are_regexes():
    assert rulebook.forbidden("The Gore-tex coat; GORE everywhere", ["gore"]) == ["GORE"]
    assert rulebook.forbidden("a bloodied sword", ["/blood(y|ied)/"]) == ["bloodied"]
    assert rulebook.forbidden("the face  of God", ["face of God"]) == ["face  of God"]
    assert rulebook.forbidden("goring", ["gore"]) == []


def test_a_bad_rule_in_config_or_backlog_fails_the_load_with_the_file_and_field(built):
    set_rules(built, lambda rules: rules + [{"id": "x", "text": "t", "scope": "pictures"}])
    run = built.doit("list", env=FAKE)
    assert run.rc != 0 and "config.json" in run.err and "rules" in run.err \
        and "pictures" in run.err
    set_rules(built, lambda rules: rules[:-1])
    backlog = built.backlog()
    backlog["items"][0]["input"]["rules"] = [{"id": "x", "text": "t"}]
    built.write_backlog(backlog)
    run = built.doit("list", env=FAKE)
    assert run.rc != 0 and "items[0].input.rules[0].scope" in run.err


# ---------------------------------------------------------------- rules: what they rebuild


def test_the_shipped_rules_reach_the_steps_they_govern(built):
    sdir = built.story_dir(DAVID)
    rules = json.loads((sdir / "rules.json").read_text())
    assert {r["id"] for r in rules["rules"]} >= {"god-as-light", "no-gore"}
    gore = next(r["text"] for r in rules["rules"] if r["id"] == "no-gore")
    light = next(r["text"] for r in rules["rules"] if r["id"] == "god-as-light")
    assert gore in rules["text"] and gore in rules["visual"]
    assert light in rules["visual"] and light not in rules["text"]
    for rel in ("cast/david.txt",):  # an assembled sheet prompt carries the visual rules
        text = (sdir / rel).read_text()
        assert light in text and gore in text


def test_editing_a_visual_rule_rebuilds_prompts_and_images_not_narratives(built):
    set_rules(built, edit_rule("god-as-light", text="God is shown only as warm golden light."))
    report = ok(built.doit(env=FAKE))  # a completed story is reported, not rebuilt
    assert report.calls == [] and "changed rules: config rules" in report.out
    run = ok(built.doit("build:" + DAVID, env=FAKE))
    called = steps_called(run)
    assert not called & TEXT_STEPS and run.count(step="cast") == 0
    # every page prompt, image, sheet and the cover: each once
    assert run.count(step="prompt") == 3 and run.count(step="image") == 3
    assert run.count(step="sheet") == 3
    assert run.count(step="thumbnail-prompt") == 1 and run.count(step="thumbnail") == 1
    assert len(run.calls) == 3 + 3 + 3 + 2
    assert "golden light" in (built.story_dir(DAVID) / "cast" / "goliath.txt").read_text()
    assert ok(built.doit("build:" + DAVID, env=FAKE)).calls == []


def test_editing_a_text_rule_rebuilds_from_the_narrative_on_and_not_the_sheets(tmp_path):
    project = make_project(tmp_path, [DAVID])
    set_rules(project, lambda rules: rules + [
        {"id": "plain-words", "text": "Use plain words a child knows.", "scope": "text"}])
    ok(project.doit(env=FAKE))
    set_rules(project, edit_rule("plain-words", text="Use short, plain words a child knows."))
    run = ok(project.doit("build:" + DAVID, env=FAKE))
    assert run.count(step="narrative") == 1 and run.count(step="pages") == 1
    # the sheet prompts are not told text rules: no sheet is redrawn for a text rule
    sheets = [c for c in run.calls if c["step"] == "sheet"]
    assert all(c["cache_hit"] for c in sheets)
    # a rule's forbidden words alone re-run only the no-call check
    set_rules(project, edit_rule("plain-words", forbid=["thus"]))
    again = ok(project.doit("build:" + DAVID, env=FAKE))
    assert again.calls == []
    checks = json.loads((project.story_dir(DAVID) / "evals" / "checks" / "rules.json")
                        .read_text())
    assert "rule plain-words" in {c["name"] for c in checks["checks"]}


def test_a_storys_own_rule_touches_that_story_only(tmp_path):
    project = make_project(tmp_path, [DAVID, "baby-moses"])
    ok(project.doit(env=FAKE))
    backlog = project.backlog()
    for it in backlog["items"]:
        it["status"] = "pending"
        if it["id"] == DAVID:
            it["input"]["rules"] = [{"id": "sling-not-sword", "scope": "visual",
                                     "text": "David carries only a shepherd's sling."}]
    project.write_backlog(backlog)
    run = ok(project.doit(env=FAKE))
    assert {c["story"] for c in run.calls} == {DAVID}
    assert not steps_called(run) & TEXT_STEPS
    assert run.count(step="prompt") == 3 and run.count(step="sheet") == 3
    own = json.loads((project.story_dir(DAVID) / "rules.json").read_text())["rules"][-1]
    assert own["id"] == "sling-not-sword" and own["from"] == "story"


def test_a_forbidden_word_planted_in_a_pages_narration_is_caught_naming_the_page(built):
    plan_path = built.story_dir(DAVID) / "pages.json"
    plan = json.loads(plan_path.read_text())
    plan["pages"][1]["narration"] += " The giant's corpse lies in the valley."
    plan_path.write_text(json.dumps(plan, indent=2))
    ok(built.doit("build:" + DAVID, env=FAKE))
    checks = json.loads((built.story_dir(DAVID) / "evals" / "checks" / "rules.json").read_text())
    gore = next(c for c in checks["checks"] if c["name"] == "rule no-gore")
    assert gore["result"] == "fail"
    assert [(e["page"], e["where"], e["words"]) for e in gore["evidence"]] == [
        (2, "narration", ["corpse"])]
    assert "page 2 narration" in gore["evidence"][0]["note"]
    evals = json.loads((built.story_dir(DAVID) / "evals.json").read_text())
    assert evals["needsReview"] and any("rule no-gore" in r for r in evals["reviewReasons"])


def test_a_forbidden_word_in_a_page_prompt_is_caught_by_that_pages_check_only(built):
    prompt = built.story_dir(DAVID) / "prompts" / "2.txt"
    prompt.write_text(prompt.read_text().replace("focus on", "a bloodied sword, focus on", 1))
    run = ok(built.doit("build:" + DAVID, env=FAKE))
    assert "check-prompt 2" in run.out and "check-prompt 1" not in run.out
    checks = json.loads((built.story_dir(DAVID) / "evals" / "checks" / "prompts" / "2.json")
                        .read_text())
    gore = next(c for c in checks["checks"] if c["name"] == "rule no-gore")
    assert gore["result"] == "fail" and gore["evidence"][0]["page"] == 2
    assert gore["evidence"][0]["words"] == ["bloodied"]
    # a visual-only rule is not looked for in the narration, a text rule in no prompt
    text_checks = json.loads((built.story_dir(DAVID) / "evals" / "checks" / "rules.json")
                             .read_text())
    assert {c["name"] for c in text_checks["checks"]} == {"rule no-gore"}
    assert "rule god-as-light" in {c["name"] for c in checks["checks"]}


def test_the_judges_are_asked_one_question_per_rule_and_a_broken_rule_needs_review():
    from cloops.data.template import load_template
    from cloops.graph.kinds.evals import summarize
    from cloops.graph.steps import StepContext

    tpl = load_template(REPO, STD)
    wf = __import__("sys").modules["cloops_templates." + STD.replace("-", "_")]
    ctx = StepContext(template=STD, story_id=DAVID, story={}, config=tpl.config, n=2, count=3,
                      story_dir=None)
    rules = [{"id": "no-gore", "text": "No gore.", "scope": "both"},
             {"id": "god-as-light", "text": "God is light.", "scope": "visual"}]
    page = {"title": "The stone", "panels": [{"moment": "David throws", "visualAnchor": "sling"}]}
    user = wf.judge_page_user({"page": page, "characters": [],
                               "rules": wf.visual_rule_questions(rules)}, ctx)
    assert "- no-gore: No gore." in user and "- god-as-light: God is light." in user
    story_user = wf.judge_story_user({"story": {"title": "T", "summary": "S", "keyMoments": ["m"]},
                                      "narrative": "n", "pages": {"pages": []},
                                      "rules": wf.text_rule_questions(rules)}, ctx)
    assert "- no-gore: No gore." in story_user and "god-as-light" not in story_user
    doc = {"judge": "judge-page", "page": 2, "enabled": True, "draft": False,
           "scores": {"strayText": {"reason": "none", "score": 5}},
           "rules": [{"id": "god-as-light", "obeyed": False,
                      "reason": "panel 1 shows God as a bearded man"}]}
    out = summarize(f"{STD}/{DAVID}", [("judge-page", doc)], 3)
    assert out["needsReview"] and out["reviewReasons"] == [
        "rule god-as-light broken on page 2: panel 1 shows God as a bearded man"]
    assert out["judged"]["judge-page"]["2"]["rules"][0]["obeyed"] is False
