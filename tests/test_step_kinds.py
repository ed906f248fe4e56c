"""A step kind of a template's own: declared in its ``workflow.py`` alone, built through doit
with exact rebuild behaviour (tests/templates/comic-digest: a digest of each page image)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass

import pytest

from cloops.graph.kinds import load_kinds
from cloops.graph.steps import Step, step_kind

from conftest import REPO, make_project

TEMPLATE = "comic-digest"


@pytest.fixture
def digest_project(tmp_path):
    proj = make_project(tmp_path, ["noah-s-ark"])
    shutil.copytree(REPO / "tests" / "templates" / TEMPLATE, tmp_path / "templates" / TEMPLATE)
    data = json.loads((REPO / "backlogs" / "comic-books-standard.json").read_text())
    items = [it for it in data["items"] if it["id"] == "noah-s-ark"]
    (tmp_path / "backlogs" / f"{TEMPLATE}.json").write_text(json.dumps(
        {"templateId": TEMPLATE, "items": items}, indent=2))
    (tmp_path / "backlogs" / "comic-books-standard.json").unlink()
    return proj


def ran(out: str) -> set[str]:
    """The tasks a run's output says ran: ``{"digest 2", "story-data", ...}``."""
    return {m.group(1) for m in re.finditer(r"✓ \S+  (.+?)  \(", out)}


def test_a_template_declares_a_step_kind_and_doit_builds_it(digest_project):
    p = digest_project
    first = p.doit("build:noah-s-ark")
    assert first.rc == 0, first.out + first.err
    sdir = p.story_dir("noah-s-ark", TEMPLATE)
    pages = len(json.loads((sdir / "pages.json").read_text())["pages"])
    for n in range(1, pages + 1):
        want = hashlib.sha256((sdir / "images" / f"{n}.jpg").read_bytes()).hexdigest()
        assert (sdir / "digests" / f"{n}.txt").read_text() == f"page image: {want}\n"
    assert {f"digest {n}" for n in range(1, pages + 1)} <= ran(first.out)
    # the bundle stays last: the new step was added before it
    assert first.out.index("digest 1") < first.out.index("bundle")

    again = p.doit("build:noah-s-ark")
    assert again.rc == 0 and ran(again.out) == set() and again.calls == []

    # page 2's image replaced by hand: digest 2 (and what assembles), no call, nothing else
    from PIL import Image
    Image.new("RGB", (90, 160), (200, 30, 30)).save(sdir / "images" / "2.jpg", "JPEG")
    edit = p.doit("build:noah-s-ark")
    assert edit.rc == 0, edit.out + edit.err
    # (and page 2's vision judge, switched off: it reads the image and writes the same file)
    assert ran(edit.out) == {"digest 2", "story-data", "bundle"}
    assert edit.calls == []
    want = hashlib.sha256((sdir / "images" / "2.jpg").read_bytes()).hexdigest()
    assert (sdir / "digests" / "2.txt").read_text() == f"page image: {want}\n"

    # the config value the kind uses: every digest, and no service call
    p.edit_config(lambda c: c["digest"].update(algorithm="sha1"), TEMPLATE)
    cfg = p.doit("build:noah-s-ark")
    assert cfg.rc == 0, cfg.out + cfg.err
    assert ran(cfg.out) == {f"digest {n}" for n in range(1, pages + 1)}
    assert cfg.calls == []
    want = hashlib.sha1((sdir / "images" / "1.jpg").read_bytes()).hexdigest()
    assert (sdir / "digests" / "1.txt").read_text() == f"page image: {want}\n"

    # doit info says why a digest is stale after the kind's own value dependency changed
    wf = p.root / "templates" / TEMPLATE / "workflow.py"
    wf.write_text(wf.read_text().replace('prefix="page image: "', 'prefix="image: "'))
    info = p.doit("info", "digest:comic-digest/noah-s-ark/1")
    assert "digest prefix" in info.out, info.out
    status = p.doit("status", "noah-s-ark", "--json")
    stale = {r["target"] for r in json.loads(status.out)["stories"][0]["stale"]}
    assert {f"digests/{n}.txt" for n in range(1, pages + 1)} <= stale
    assert "images/1.jpg" not in stale


def test_an_unregistered_step_class_is_refused_with_the_fix(digest_project):
    wf = digest_project.root / "templates" / TEMPLATE / "workflow.py"
    wf.write_text(wf.read_text().replace('@step_kind("digest")\n', ""))
    run = digest_project.doit("build:noah-s-ark")
    assert run.rc == 2
    assert "not a registered step kind" in run.err and "@step_kind" in run.err
    assert "workflow.py" in run.err and "Traceback" not in run.err


def test_registering_a_kind_needs_a_step_with_execute():
    with pytest.raises(TypeError, match="execute"):
        @step_kind("no-execute")
        @dataclass(frozen=True)
        class NoExecute(Step):
            pass
    with pytest.raises(TypeError, match="not a subclass"):
        step_kind("not-a-step")(dict)
    assert "no-execute" not in load_kinds()
    assert {"llm", "image", "voice", "assemble", "bundle"} <= set(load_kinds())
