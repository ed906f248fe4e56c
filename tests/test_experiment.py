"""Prompt experiments: a variant that changes only the step-3 prompt, built over a sample of the
base's backlog, pays (against fakes) for the page prompts and images of the sample and nothing
upstream; ``doit compare`` prints both columns."""

from __future__ import annotations

import json

from cloops.steer.experiment import compact, sample_ids

from conftest import make_project
from test_rebuild_rules import FAKE

STD = "comic-books-standard"
WIDE = "comic-books-standard-wide"
STORIES = ["noah-s-ark", "david-and-goliath", "jonah-and-the-whale", "the-nativity"]


def _variant(project) -> None:
    vdir = project.root / "templates" / WIDE
    (vdir / "system-prompts").mkdir(parents=True)
    (vdir / "config.json").write_text(json.dumps({"name": WIDE, "extends": STD}))
    base = project.prompt_path("step3-prompts.md").read_text()
    (vdir / "system-prompts" / "step3-prompts.md").write_text(
        base + "\n10. Prefer wide shots that show the whole landscape.\n")


def test_an_experiment_pays_for_what_its_prompt_changes_and_compare_prints_both(tmp_path):
    project = make_project(tmp_path, STORIES)
    project.edit_config(lambda c: c["evals"]["judge"].update(story=True, pages=True))
    base = project.doit(env=FAKE)
    assert base.rc == 0, base.out + base.err
    _variant(project)

    run = project.doit("experiment", WIDE, "--sample", "2", env=FAKE)
    assert run.rc == 0, run.out + run.err
    sample = sample_ids(STORIES, 2)
    log = json.loads((project.root / "backlogs" / f"{WIDE}.json").read_text())
    assert [it["id"] for it in log["items"]] == sample
    assert log["experiment"]["base"] == STD and log["experiment"]["sample"] == 2
    assert f"2 stories sampled from backlogs/{STD}.json" in run.out

    pages = {s: len(json.loads((project.story_dir(s) / "pages.json").read_text())["pages"])
             for s in sample}
    paid = [c for c in run.calls if not c["cache_hit"]]
    assert {c["template"] for c in run.calls} == {WIDE}
    # only what the new step-3 prompt changes: each page's prompt, image and its vision judge
    for s in sample:
        mine = [(c["step"]) for c in paid if c["story"] == s]
        assert sorted(mine) == sorted(["prompt", "image", "judge-page"] * pages[s])
    # upstream and beside it, the shared response cache answers
    hits = {c["step"] for c in run.calls if c["cache_hit"]}
    assert hits == {"narrative", "cast", "pages", "sheet", "thumbnail-prompt", "thumbnail",
                    "judge-story"}
    assert not {c["step"] for c in paid} & hits
    for s in sample:
        for rel in ("narrative.md", "pages.json", "thumbnail.jpg"):
            assert (project.story_dir(s, WIDE) / rel).read_bytes() == \
                (project.story_dir(s) / rel).read_bytes()

    # the comparison the experiment ended with: both columns, the cost, what differs
    assert f"base = {STD}, variant = {WIDE}" in run.out
    assert "score base" in run.out and "score variant" in run.out and "paid variant" in run.out
    assert "3.00 → 3.00" in run.out  # the judged criteria (fake judges answer the middle)
    cmp = project.doit("compare", STD, WIDE, "--json")
    assert cmp.rc == 0, cmp.err
    data = json.loads(cmp.out)
    assert [r["story"] for r in data["stories"]] == sample
    for r in data["stories"]:
        assert r["base"]["score"] is not None and r["variant"]["score"] is not None
        n = pages[r["story"]]
        differ = set(r["differ"])
        assert {f"prompts/{i}.txt" for i in range(1, n + 1)} <= differ
        assert {f"images/{i}.jpg" for i in range(1, n + 1)} <= differ
        assert not differ & {"narrative.md", "pages.json", "thumbnail-prompt.txt",
                             "thumbnail.jpg", "evals/judge/story.json"}
        assert 0 < r["variant"]["paidUsd"] < r["base"]["paidUsd"]
    total = data["total"]
    assert total["variant"]["paidUsd"] == round(sum(r["variant"]["paidUsd"]
                                                    for r in data["stories"]), 6)
    table = project.doit("compare", STD, WIDE)
    assert "total" in table.out and "prompts/{1,2" in table.out

    # the same experiment again: nothing to pay
    again = project.doit("experiment", WIDE, "--sample", "2", env=FAKE)
    assert again.rc == 0 and [c for c in again.calls if not c["cache_hit"]] == []


def test_experiment_errors_name_the_fix(tmp_path):
    project = make_project(tmp_path, STORIES[:1])
    run = project.doit("experiment", "nope")
    assert run.rc == 2 and "templates/nope/config.json" in run.err and "extends" in run.err
    (project.root / "backlogs" / f"{WIDE}.json").write_text(json.dumps(
        {"templateId": WIDE, "items": []}))
    _variant(project)
    run = project.doit("experiment", WIDE)
    assert run.rc == 2 and "not an experiment" in run.err and "Traceback" not in run.err
    run = project.doit("compare", STD, "nope")
    assert run.rc == 2 and "doit experiment nope" in run.err


def test_sample_is_deterministic_and_kept_in_backlog_order():
    ids = [f"story-{i}" for i in range(30)]
    a = sample_ids(ids, 10)
    assert a == sample_ids(ids, 10) and len(a) == 10
    assert a == [i for i in ids if i in set(a)]
    assert set(sample_ids(ids, 5)) <= set(a)  # a smaller sample is part of a larger one
    assert sample_ids(ids, 100) == ids
    assert compact(["images/1.jpg", "images/2.jpg", "evals.json"]) == \
        "images/{1,2}.jpg, evals.json"
