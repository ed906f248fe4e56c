"""``doit review``: a static site of every story that opens from disk, rewritten only where a
story changed; previews; any target a template declares is shown (cast, ads, evals).

The browser checks drive Debian's headless Chromium through Playwright over the offline build
of a subset of the shipped backlogs (both templates).
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO, make_project
from studio_harness import Page, browser

STD = "comic-books-standard"
KIDS = "comic-books-kids"


def ok(run):
    assert run.rc == 0, run.out + run.err
    return run


def site_files(root: Path) -> dict[str, int]:
    """Every file of the review site (its bookkeeping left out) → mtime in ns."""
    review = root / "build" / "review"
    return {p.relative_to(review).as_posix(): p.stat().st_mtime_ns for p in review.rglob("*")
            if p.is_file() and ".cloops" not in p.parts}


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """noah-s-ark and david-and-goliath in both shipped templates, built offline (drafts:
    storyboard pages, piper voice), with the review site written."""
    root = tmp_path_factory.mktemp("offline")
    project = make_project(root, ["noah-s-ark", "david-and-goliath"], templates=None)
    ok(project.doit())
    ok(project.doit("review"))
    return project


def test_review_writes_an_index_per_template_and_a_page_per_story(offline):
    review = offline.root / "build" / "review"
    top = (review / "index.html").read_text()
    assert f'href="{STD}/index.html"' in top and f'href="{KIDS}/index.html"' in top
    index = (review / STD / "index.html").read_text()
    assert 'href="stories/noah-s-ark.html"' in index and "Noah&#39;s Ark" in index
    assert "draft" in index and "pending" in index  # offline drafts stay pending
    page = (review / KIDS / "stories" / "noah-s-ark.html").read_text()
    plan = json.loads((offline.story_dir("noah-s-ark", KIDS) / "pages.json").read_text())
    for p in plan["pages"]:
        assert p["narration"].replace("'", "&#39;") in page
    assert (offline.story_dir("noah-s-ark", KIDS) / "prompts" / "2.txt").read_text().split("\n")[1] \
        .replace("'", "&#39;") in page
    timings = json.loads((offline.story_dir("noah-s-ark", KIDS) / "voice.json").read_text())
    for seg in timings["segments"]:  # a play button per page at its timings
        assert f'data-start="{seg["startS"]}" data-end="{seg["endS"]}"' in page
    assert "Every target, by step" in page and "no calls" in page  # cost per step
    assert "data-action" not in page  # the static site has no controls
    assert "https://" not in page and "http://" not in page  # nothing fetched from the internet


def test_pages_show_previews_and_link_full_size(offline):
    review = offline.root / "build" / "review"
    page = (review / STD / "stories" / "noah-s-ark.html").read_text()
    previews = re.findall(r'src="\.\./\.\./(previews/[^"]+)"', page)
    assert previews, "the page images are shown through previews"
    for rel in previews:
        from PIL import Image
        with Image.open(review / rel) as im:
            assert max(im.size) <= 640
    assert 'href="../../../comic-books-standard/noah-s-ark/images/1.jpg"' in page


def test_the_site_opens_from_disk_every_image_loads_no_console_error(offline, tmp_path):
    review = offline.root / "build" / "review"
    with browser() as b:
        for rel in ("index.html", f"{STD}/index.html", f"{KIDS}/index.html",
                    f"{STD}/stories/noah-s-ark.html", f"{KIDS}/stories/david-and-goliath.html"):
            page = Page(b)
            page.page.goto((review / rel).as_uri())
            images = page.images_loaded()
            assert rel == "index.html" or images, rel
            assert all(i["w"] > 0 for i in images), (rel, [i for i in images if not i["w"]])
            assert page.errors == [], (rel, page.errors)
        # a play button seeks the voice track to its page
        page = Page(b)
        page.page.goto((review / KIDS / "stories" / "noah-s-ark.html").as_uri())
        button = page.page.locator("button.play").nth(1)
        start = float(button.get_attribute("data-start"))
        button.click()
        page.page.wait_for_function(
            f"() => document.getElementById('voice-track').currentTime >= {start}", timeout=10_000)
        assert page.errors == []


def test_a_rerun_rewrites_only_the_page_of_the_story_that_changed_and_the_index(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark", "david-and-goliath", "jonah-and-the-whale"])
    ok(project.doit())
    ok(project.doit("review"))
    before = site_files(project.root)
    out = ok(project.doit("review")).out
    assert site_files(project.root) == before, "nothing changed: nothing is rewritten"
    assert "0 files written" in out

    prompt = project.story_dir("noah-s-ark") / "prompts" / "2.txt"
    prompt.write_text("A hand-written prompt: Noah counts the animals at dusk.\n")
    ok(project.doit("review"))
    after = site_files(project.root)
    changed = {rel for rel, t in after.items() if before.get(rel) != t}
    assert f"{STD}/stories/noah-s-ark.html" in changed and f"{STD}/index.html" in changed
    assert changed <= {f"{STD}/stories/noah-s-ark.html", f"{STD}/index.html", "index.html"}, changed
    page = (project.root / "build" / "review" / STD / "stories" / "noah-s-ark.html").read_text()
    assert "hand-edited" in page and "Noah counts the animals at dusk" in page
    assert "changed prompts/2.txt" in page  # what is stale and why

    # one story named: its page only (and the index)
    prompt.write_text("Another hand-written prompt.\n")
    ok(project.doit("review", "noah-s-ark"))
    again = site_files(project.root)
    assert {rel for rel, t in again.items() if after.get(rel) != t} <= {
        f"{STD}/stories/noah-s-ark.html", f"{STD}/index.html", "index.html"}


def test_unknown_story_is_a_clear_error(offline):
    run = offline.doit("review", "no-such-story")
    assert run.rc == 2 and "no backlog has a story 'no-such-story'" in run.err
    assert "Traceback" not in run.err


def test_any_declared_target_is_shown_cast_sheets_ads_and_evals(tmp_path):
    """A template with a cast, ad components and evals (as other issues add them) is shown
    without a change to the review code."""
    project = make_project(tmp_path, ["noah-s-ark"])
    shutil.copytree(REPO / "tests" / "templates" / "comic-extras",
                    tmp_path / "templates" / "comic-extras")
    data = json.loads((REPO / "backlogs" / f"{STD}.json").read_text())
    items = [it for it in data["items"] if it["id"] == "noah-s-ark"]
    (tmp_path / "backlogs" / "comic-extras.json").write_text(json.dumps(
        {"templateId": "comic-extras", "items": items}))
    (tmp_path / "backlogs" / f"{STD}.json").unlink()
    ok(project.doit())
    ok(project.doit("review"))
    page = (tmp_path / "build" / "review" / "comic-extras" / "stories" / "noah-s-ark.html").read_text()
    sdir = tmp_path / "build" / "comic-extras" / "noah-s-ark"
    noah = json.loads((sdir / "cast.json").read_text())["characters"][0]
    assert html.escape(noah["appearance"], quote=False) in page and "from cast.json" in page
    assert "comic-extras/noah-s-ark/cast/noah.jpg" in page  # the sheet, with its preview
    assert "front, from the side and from the back" in page  # its prompt, cast/noah.txt
    assert '<video controls preload="metadata" src="../../../comic-extras/noah-s-ark/ads/body.mp4">' in page
    assert "What if the rain never stopped?" in page
    checks = [r["name"] for r in json.loads((sdir / "evals.json").read_text())["results"]]
    assert checks and all(name in page for name in checks)
    with browser() as b:
        p = Page(b)
        p.page.goto((tmp_path / "build" / "review" / "comic-extras" / "stories" /
                     "noah-s-ark.html").as_uri())
        assert all(i["w"] > 0 for i in p.images_loaded())
