"""Steering by hand — history, restore, locks, takes, status — through real doit runs.

The issue's "done when": a hand edit replaced by a build is in history and comes back byte for
byte; a locked target stays while its story's siblings rebuild, and is rebuilt after unlock; a
second take costs one image call and picking the first back costs nothing, down to the bundle;
``doit status`` names exactly what the next build runs, and why. A property-based test drives
random sequences of these on one story and checks that nothing written by hand is ever lost.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import Project, make_project
from test_rebuild_rules import FAKE, paid

KEY = "comic-books-standard/noah-s-ark"
OTHER = "comic-books-standard/david-and-goliath"
# images that differ on every call (a second take is a new picture), LLM as in FAKE
TAKES = {**FAKE, "CLOOPS_PLUGINS": "tests.fakes.backends,tests.fakes.takes_backends",
         "CLOOPS_IMAGE_BACKEND": "fake-image-takes"}
DONE = re.compile(r"^✓ (\S+)  (\S+)(?: (\d+))?  \(", re.M)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ran(run) -> set[str]:
    """Task names the build output reports as run (``✓ <story>  <step> [n]  (...)``)."""
    return {f"{step}:{key}" + (f"/{n}" if n else "") for key, step, n in DONE.findall(run.out)}


def ok(run):
    assert run.rc == 0, run.out + run.err
    return run


def jdoit(project, *args, env=FAKE) -> dict:
    """Run a steering command with ``--json`` and parse its output."""
    run = ok(project.doit(*args, "--json", env=env))
    return json.loads(run.out)


def status(project, *stories, env=FAKE) -> dict[str, dict]:
    return {s["story"]: s for s in jdoit(project, "status", *stories, env=env)["stories"]}


@pytest.fixture
def one(tmp_path) -> Project:
    """noah-s-ark alone, built with the fake paid backends (images differ per call)."""
    project = make_project(tmp_path, ["noah-s-ark"])
    ok(project.doit(env=TAKES))
    return project


@pytest.fixture
def two(project) -> Project:
    """noah-s-ark and david-and-goliath, built with the deterministic fake paid backends."""
    ok(project.doit(env=FAKE))
    return project


def test_targets_are_addressed_by_path_or_story_key(project):
    task = "image:comic-books-standard/noah-s-ark/2"
    for spelling in (f"build/{KEY}/images/2.jpg", f"{KEY}/images/2.jpg", "noah-s-ark/images/2.jpg",
                     str(project.root / "build" / KEY / "images" / "2.jpg")):
        assert jdoit(project, "history", spelling)["task"] == task, spelling
    assert jdoit(project, "history", "noah-s-ark/pages.json")["task"] == f"pages:{KEY}"
    bad = project.doit("history", "noah-s-ark/images/two.jpg", env=FAKE)
    assert bad.rc == 2 and "is not a target of template comic-books-standard" in bad.err
    bad = project.doit("lock", "no-such-story", env=FAKE)
    assert bad.rc == 2 and "no backlog has a story 'no-such-story'" in bad.err
    bad = project.doit("lock", f"{KEY}/bundle/1.jpg", env=FAKE)
    assert bad.rc == 2 and "copy in the bundle" in bad.err
    assert "Traceback" not in bad.err


def test_replaced_hand_edit_is_in_history_and_restored_byte_for_byte(one):
    sdir = one.story_dir("noah-s-ark")
    pages = sdir / "pages.json"
    plan = json.loads(pages.read_text())
    plan["pages"][1]["narration"] = "The rain drums on the roof for forty days."
    edited = (json.dumps(plan, indent=4) + "\n\n").encode()  # a person's own formatting
    pages.write_bytes(edited)
    step2 = one.prompt_path("step2-planning.md")
    step2.write_text(step2.read_text() + "\nGive every page a strong closing line.\n")
    run = ok(one.doit("build:noah-s-ark", env=TAKES))
    assert paid(run, step="pages") == 1
    assert pages.read_bytes() != edited
    assert "hand edit of pages.json" in run.out  # the build output said so

    hist = jdoit(one, "history", f"build/{KEY}/pages.json")["versions"]
    kept = [v for v in hist if v["why"] == "hand-edit"]
    assert [v["sha256"] for v in kept] == [sha(edited)]
    assert hist[-1]["current"] and hist[-1]["why"] == "generated"
    replaced = pages.read_bytes()

    out = ok(one.doit("restore", f"build/{KEY}/pages.json", str(kept[0]["number"]), env=TAKES))
    assert pages.read_bytes() == edited
    assert "kept as version" in out.out
    hist = jdoit(one, "history", f"{KEY}/pages.json")["versions"]
    assert hist[-1]["current"] and hist[-1]["why"] == "restored"
    assert sha(replaced) in [v["sha256"] for v in hist[:-1]]  # what it replaced is kept too
    st_ = status(one, "noah-s-ark")[KEY]
    assert {"target": "pages.json", "why": "restored"} in st_["handEdited"]
    assert f"pages:{KEY}" not in {r["task"] for r in st_["stale"]}

    # the restored plan is kept as an edit: not regenerated; what is downstream follows it
    run = ok(one.doit("build:noah-s-ark", env=TAKES))
    assert pages.read_bytes() == edited
    assert run.count(step="pages") == 0 and run.count(step="narrative") == 0
    assert ("prompt", "prompts/2.txt") in [(c["step"], c["target"]) for c in run.calls]
    data = json.loads((sdir / "bundle" / "story-data.json").read_text())
    assert data["pages"][1]["narration"] == "The rain drums on the roof for forty days."


def test_locked_target_is_kept_reported_and_rebuilt_after_unlock(two):
    noah = two.story_dir("noah-s-ark") / "pages.json"
    before = noah.read_bytes()
    david_before = (two.story_dir("david-and-goliath") / "pages.json").read_bytes()
    assert "locked" in ok(two.doit("lock", f"build/{KEY}/pages.json", env=FAKE)).out
    step2 = two.prompt_path("step2-planning.md")
    step2.write_text(step2.read_text() + "\nPlan a quiet page before the climax.\n")

    run = ok(two.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE))
    assert noah.read_bytes() == before
    assert {c["story"] for c in run.calls} == {"david-and-goliath"}
    assert paid(run, story="david-and-goliath", step="pages") == 1
    assert (two.story_dir("david-and-goliath") / "pages.json").read_bytes() != david_before

    st_ = status(two)
    assert st_[OTHER]["stale"] == [] and st_[OTHER]["staleLocked"] == []
    assert st_[KEY]["stale"] == []
    (row,) = st_[KEY]["staleLocked"]
    assert row["task"] == f"pages:{KEY}" and row["target"] == "pages.json"
    assert row["reasons"] == ["file system-prompts/step2-planning.md"]
    assert row["recorded"] == "file system-prompts/step2-planning.md"
    assert "pages.json" in st_[KEY]["locked"]["targets"]
    text = ok(two.doit("status", "noah-s-ark", env=FAKE)).out
    assert "locked, stale" in text and "step2-planning.md" in text

    out = ok(two.doit("unlock", "noah-s-ark/pages.json", env=FAKE)).out
    assert "went stale while locked" in out
    assert f"pages:{KEY}" in {r["task"] for r in status(two, "noah-s-ark")[KEY]["stale"]}
    run = ok(two.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE))
    assert paid(run, story="noah-s-ark", step="pages") == 1
    assert {c["story"] for c in run.calls} == {"noah-s-ark"}
    assert noah.read_bytes() != before


def test_second_take_then_pick_the_first_costs_nothing_more(one):
    sdir = one.story_dir("noah-s-ark")
    target = f"build/{KEY}/images/2.jpg"
    first = (sdir / "images" / "2.jpg").read_bytes()

    run = ok(one.doit("take", target, env=TAKES))
    assert [(c["step"], c["target"], c["cache_hit"]) for c in run.calls] == [
        ("image", "images/2.jpg", 0)]  # one paid call, the cache skipped
    second = (sdir / "images" / "2.jpg").read_bytes()
    assert second != first
    assert (sdir / "bundle" / "2.jpg").read_bytes() == second
    takes = jdoit(one, "takes", target, env=TAKES)
    assert [t["sha256"] for t in takes["takes"]] == [sha(first), sha(second)]
    assert takes["current"] == 2

    run = ok(one.doit("pick", target, "1", env=TAKES))
    assert run.calls == []
    assert (sdir / "images" / "2.jpg").read_bytes() == first
    assert jdoit(one, "takes", target, env=TAKES)["current"] == 1
    # what reads image 2: the assembled steps (its vision judge is switched off: no task)
    downstream = {f"story-data:{KEY}", f"bundle:{KEY}"}
    assert {r["task"] for r in status(one, "noah-s-ark", env=TAKES)[KEY]["stale"]} == downstream

    run = ok(one.doit("build:noah-s-ark", env=TAKES))
    assert run.calls == []
    assert ran(run) == downstream  # only assembled steps
    assert (sdir / "bundle" / "2.jpg").read_bytes() == first
    assert ok(one.doit("build:noah-s-ark", env=TAKES)).calls == []


def test_status_names_exactly_what_the_next_build_runs(two):
    step3 = two.prompt_path("step3-prompts.md")
    step3.write_text(step3.read_text() + "\nFrame every page from a child's eye height.\n")
    narrative = two.story_dir("david-and-goliath") / "narrative.md"
    narrative.write_text(narrative.read_text() + "\nThe stone was smooth from the brook.\n")
    st_ = status(two)

    noah = {r["task"]: r["reasons"] for r in st_[KEY]["stale"]}
    n = len(json.loads((two.story_dir("noah-s-ark") / "pages.json").read_text())["pages"])
    expect = {f"prompt:{KEY}/{i}": ["file system-prompts/step3-prompts.md"]
              for i in range(1, n + 1)}
    expect.update({f"image:{KEY}/{i}": [f"because prompt {i} will be rebuilt"]
                   for i in range(1, n + 1)})
    images = ", ".join(f"image {i}" for i in range(1, n + 1))
    expect[f"story-data:{KEY}"] = [f"because {images} will be rebuilt"]
    expect[f"bundle:{KEY}"] = [f"because {images}, story-data will be rebuilt"]
    # the evals that read what is rebuilt: each page prompt's check and evals.json that
    # gathers them (the vision judges are switched off: no task)
    expect.update({f"check-prompt:{KEY}/{i}": [f"because prompt {i} will be rebuilt"]
                   for i in range(1, n + 1)})
    evals = [f"check-prompt {i}" for i in range(1, n + 1)]
    expect[f"evals:{KEY}"] = [f"because {', '.join(evals)} will be rebuilt"]
    assert noah == expect

    david = {r["task"]: r["reasons"] for r in st_[OTHER]["stale"]}
    assert david[f"pages:{OTHER}"] == ["changed narrative.md"]
    assert david[f"thumbnail-prompt:{OTHER}"] == ["changed narrative.md"]
    assert f"narrative:{OTHER}" not in david
    assert st_[OTHER]["handEdited"] == [{"target": "narrative.md", "why": "hand-edit"}]

    run = ok(two.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE))
    # everything that runs was named; what status is sure of runs, but for what reads only
    # values of a rebuilt file ("maybe": the characters' sheets, read from cast.json, which
    # keeps every entry) and the evals.json of checks rebuilt the same
    predicted = set(noah) | set(david)
    sure = {r["task"] for s in (KEY, OTHER) for r in st_[s]["stale"] if not r.get("maybe")}
    assert ran(run) <= predicted
    assert sure - ran(run) <= {f"evals:{KEY}", f"evals:{OTHER}"}
    assert f"sheet:{OTHER}/david" in david and f"sheet:{OTHER}/david" not in ran(run)
    called = {f"{c['step']}:{c['template']}/{c['story']}" +
              (f"/{m.group(1)}" if (m := re.search(r"/(\d+)\.", c["target"])) else "")
              for c in run.calls}
    assert called <= set(noah) | set(david)
    after = status(two)
    assert after[KEY]["stale"] == [] and after[OTHER]["stale"] == []
    assert ok(two.doit("build:noah-s-ark", "build:david-and-goliath", env=FAKE)).calls == []


# ---------------------------------------------------------------- nothing written by hand is lost

EDITABLE = ("pages.json", "prompts/2.txt", "images/2.jpg", "story-data.json")
TAKEABLE = ("prompts/2.txt", "images/2.jpg")
PROMPTS = ("step2-planning.md", "step3-prompts.md")
WORDS = st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=24)

EDIT = st.tuples(st.just("edit"), st.sampled_from(EDITABLE), WORDS, st.booleans())
BUILD = st.tuples(st.just("build"))
LAST = None  # the target edited by hand last (pages.json before any edit)
RESTORE = st.tuples(st.just("restore"), st.sampled_from((LAST, LAST) + EDITABLE),
                    st.integers(0, 9))
STEP = st.one_of(  # edits, builds and restores drawn more often than the rest
    EDIT, EDIT, EDIT, BUILD, BUILD, RESTORE, RESTORE,
    st.tuples(st.just("lock"), st.sampled_from(EDITABLE)),
    st.tuples(st.just("unlock"), st.sampled_from(EDITABLE)),
    st.tuples(st.just("prompt"), st.sampled_from(PROMPTS), st.integers(0, 2)),
    st.tuples(st.just("take"), st.sampled_from(TAKEABLE)),
    st.tuples(st.just("pick"), st.sampled_from((LAST,) + TAKEABLE), st.integers(0, 3)),
)


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    """A built one-story project, copied afresh for every example; rebuilt once after prompt
    edits, so every target has a version in history to restore."""
    root = tmp_path_factory.mktemp("seed")
    project = make_project(root, ["noah-s-ark"])
    ok(project.doit(env=TAKES))
    for name in PROMPTS:
        project.prompt_path(name).write_text(project.prompt_path(name).read_text() + "\nSeed.\n")
    ok(project.doit("build:noah-s-ark", env=TAKES))
    return root


def reachable(sdir: Path, rel: str, *, current: bool = True) -> set[bytes]:
    """Every content of ``rel`` that can still be had: the file (unless ``current=False``), its
    history, its takes."""
    out = set()
    if current and (sdir / rel).is_file():
        out.add((sdir / rel).read_bytes())
    for folder in (sdir / ".cloops" / "history" / rel, sdir / ".cloops" / "takes" / rel):
        if folder.is_dir():
            out |= {p.read_bytes() for p in folder.iterdir() if p.name != "index.json"}
    return out


def hand_text(path: Path, words: str, raw: bool) -> bytes:
    """What a person writes: page 2's narration in a valid plan, else (or when ``raw``: a plan
    the build cannot read) the words as they are."""
    if path.name == "pages.json" and not raw:
        try:
            plan = json.loads(path.read_text())
            plan["pages"][1]["narration"] = words
            return (json.dumps(plan, indent=2) + "\n").encode()
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    return f"{words}\n".encode()


@settings(max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=6))
# and always the sequences where a slip would lose an edit, besides the random ones
@example(steps=[("edit", "pages.json", "my own plan", False), ("restore", LAST, 0)])
@example(steps=[("edit", "images/2.jpg", "not a picture", True), ("take", "images/2.jpg"),
                ("pick", "images/2.jpg", 0)])
@example(steps=[("edit", "prompts/2.txt", "a dove", True), ("lock", "prompts/2.txt"),
                ("prompt", "step3-prompts.md", 1), ("build",), ("unlock", "prompts/2.txt"),
                ("build",)])
@example(steps=[("edit", "pages.json", "first", True), ("prompt", "step2-planning.md", 2), ("build",),
                ("restore", LAST, 0), ("edit", "pages.json", "second", False), ("restore", LAST, 1)])
def test_nothing_written_by_hand_is_ever_lost(seed, steps):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        shutil.copytree(seed, root, symlinks=True)
        project = Project(root)
        sdir = project.story_dir("noah-s-ark")
        originals = {p: project.prompt_path(p).read_text() for p in PROMPTS}
        written: dict[str, list[bytes]] = {}
        last = "pages.json"
        for step in steps:
            op, *a = step
            if op in ("restore", "pick") and a[0] is LAST:
                a[0] = last if op == "restore" or last in TAKEABLE else "images/2.jpg"
            run = None
            if op == "edit":
                rel, words, raw = a
                data = hand_text(sdir / rel, words, raw)
                if (sdir / rel).is_file():  # writing over one's own edit drops it: not a loss
                    mine = (sdir / rel).read_bytes()
                    if mine not in reachable(sdir, rel, current=False):
                        written[rel] = [w for w in written.get(rel, []) if w != mine]
                (sdir / rel).parent.mkdir(parents=True, exist_ok=True)
                (sdir / rel).write_bytes(data)
                written.setdefault(rel, []).append(data)
                last = rel
            elif op in ("lock", "unlock"):
                run = project.doit(op, f"{KEY}/{a[0]}", env=TAKES)
            elif op == "prompt":
                name, variant = a
                project.prompt_path(name).write_text(originals[name] + f"\nVariant {variant}.\n")
            elif op == "build":
                run = project.doit("build:noah-s-ark", env=TAKES)
            elif op == "restore":
                rel, pick = a
                hist = json.loads(project.doit("history", f"{KEY}/{rel}", "--json",
                                               env=TAKES).out)["versions"]
                older = [v for v in hist if not v["current"]]
                if older:
                    n = older[pick % len(older)]["number"]
                    run = project.doit("restore", f"{KEY}/{rel}", str(n), env=TAKES)
            elif op == "take":
                run = project.doit("take", f"{KEY}/{a[0]}", env=TAKES)
            elif op == "pick":
                rel, pick = a
                takes = json.loads(project.doit("takes", f"{KEY}/{rel}", "--json",
                                                env=TAKES).out)["takes"]
                if takes:
                    k = takes[pick % len(takes)]["take"]
                    run = project.doit("pick", f"{KEY}/{rel}", str(k), env=TAKES)
            if run is not None:
                assert "Traceback" not in run.out + run.err, (step, run.out + run.err)
            for rel, contents in written.items():
                have = reachable(sdir, rel)
                for i, data in enumerate(contents):
                    assert data in have, (f"hand edit {i} of {rel} lost after {step}", steps)
