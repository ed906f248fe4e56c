"""``doit studio``: the review pages served live on loopback, with controls that act through the
steering functions — driven in headless Chromium — and the requests it refuses.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re

import pytest

from conftest import REPO, make_project
from studio_harness import Page, browser, raw, running_studio
from test_steering import TAKES

STD = "comic-books-standard"
KEY = f"{STD}/noah-s-ark"
DOCS_SHOT = REPO / "docs" / "studio-story-page.png"


def ok(run):
    assert run.rc == 0, run.out + run.err
    return run


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def taken(tmp_path, monkeypatch):
    """noah-s-ark built with fake paid backends whose every image differs, with two takes of
    page 2's image (take 2 current); the studio's process has the same backends."""
    project = make_project(tmp_path, ["noah-s-ark"])
    for k, v in TAKES.items():
        monkeypatch.setenv(k, v)
    for plugin in TAKES["CLOOPS_PLUGINS"].split(","):  # the studio's own process resolves them
        importlib.import_module(plugin)
    ok(project.doit(env=TAKES))
    ok(project.doit("take", "noah-s-ark/images/2.jpg", env=TAKES))
    return project


def token_of(html: str) -> str:
    return re.search(r'name="cloops-token" content="([^"]+)"', html).group(1)


def stale_tasks(project) -> set[str]:
    data = json.loads(ok(project.doit("status", KEY, "--json", env=TAKES)).out)
    return {r["task"].partition(":")[0] for r in data["stories"][0]["stale"]}


def test_pick_in_the_page_changes_the_file_and_only_downstream_goes_stale(taken):
    image = taken.story_dir("noah-s-ark") / "images" / "2.jpg"
    takes_dir = taken.story_dir("noah-s-ark") / ".cloops" / "takes" / "images" / "2.jpg"
    take1 = (takes_dir / "1.jpg").read_bytes()
    assert image.read_bytes() != take1
    assert stale_tasks(taken) == set()
    with running_studio(taken.root) as (base, _studio), browser() as b:
        page = Page(b)
        page.page.goto(f"{base}/review/{STD}/stories/noah-s-ark.html")
        takes = page.page.locator('.takes[data-target="comic-books-standard/noah-s-ark/images/2.jpg"]')
        assert takes.locator(".take.current").get_attribute("data-take") == "2"
        assert all(i["w"] > 0 for i in page.images_loaded())
        with page.page.expect_navigation():
            takes.locator('button[data-action="pick"][data-take="1"]').click()
        assert image.read_bytes() == take1  # the target file changed
        takes = page.page.locator('.takes[data-target="comic-books-standard/noah-s-ark/images/2.jpg"]')
        assert takes.locator(".take.current").get_attribute("data-take") == "1"
        assert "take 1 of images/2.jpg is in place" in page.page.locator("#flash").inner_text()
        assert page.errors == []
    # only what is downstream of the image is stale: the story data and the bundle
    assert stale_tasks(taken) == {"story-data", "bundle"}


def test_editing_a_narration_in_the_page_is_a_hand_edit_the_next_build_keeps(taken):
    pages = taken.story_dir("noah-s-ark") / "pages.json"
    text = "The rain drums on the roof of the ark for forty days."
    with running_studio(taken.root) as (base, _studio), browser() as b:
        page = Page(b)
        page.page.goto(f"{base}/review/{STD}/stories/noah-s-ark.html")
        box = page.page.locator("#page-2 textarea.narration")
        box.fill(text)
        with page.page.expect_navigation():
            page.page.locator("#page-2 button", has_text="save narration").click()
        assert "saved as a hand edit" in page.page.locator("#flash").inner_text()
        assert page.page.locator("#page-2 textarea.narration").input_value() == text
        assert page.errors == []
    assert json.loads(pages.read_text())["pages"][1]["narration"] == text
    history = json.loads(ok(taken.doit("history", f"{KEY}/pages.json", "--json", env=TAKES)).out)
    assert [v["why"] for v in history["versions"]] == ["generated", "hand-edit"]
    assert stale_tasks(taken) >= {"prompt", "image", "story-data"} and "pages" not in stale_tasks(taken)
    run = ok(taken.doit("build:noah-s-ark", env=TAKES))
    assert json.loads(pages.read_text())["pages"][1]["narration"] == text  # kept
    assert "prompt 2" in run.out and "prompt 1 " not in run.out
    assert not re.search(r"noah-s-ark  pages  \(", run.out)  # the plan itself is not rebuilt


def test_a_new_take_shows_its_cost_first_then_streams_the_build(taken):
    with running_studio(taken.root) as (base, _studio), browser() as b:
        page = Page(b)
        page.page.goto(f"{base}/review/{STD}/stories/noah-s-ark.html")
        button = page.page.locator(
            '#page-1 button[data-action="take"][data-target="comic-books-standard/noah-s-ark/images/1.jpg"]')
        assert "≈ $0.0300" in button.inner_text()  # prices.bytedance/seedream-4.perImage
        button.click()
        assert "confirm" in button.inner_text() and "about $0.0300" in button.inner_text()
        with page.page.expect_navigation(timeout=120_000):
            button.click()
        assert "build finished" in page.page.locator("#flash").inner_text()
        takes = page.page.locator('.takes[data-target="comic-books-standard/noah-s-ark/images/1.jpg"]')
        assert takes.locator(".take").count() == 2
        assert takes.locator(".take.current").get_attribute("data-take") == "2"
        assert page.errors == []


def test_lock_unlock_and_restore_through_the_studio(taken):
    with running_studio(taken.root) as (base, studio):
        status, html = raw(base, "GET", f"/review/{STD}/stories/noah-s-ark.html")
        token = token_of(html)
        post = {"X-Cloops-Token": token}
        st, body = raw(base, "POST", "/api/lock", headers=post,
                       body={"target": f"{KEY}/narrative.md"})
        assert st == 200 and "locked" in json.loads(body)["message"]
        locks = json.loads((taken.story_dir("noah-s-ark") / ".cloops" / "locks.json").read_text())
        assert "narrative.md" in locks["targets"]
        st, body = raw(base, "POST", "/api/unlock", headers=post,
                       body={"target": f"{KEY}/narrative.md"})
        assert st == 200 and "unlocked" in json.loads(body)["message"]
        prompt = taken.story_dir("noah-s-ark") / "prompts" / "1.txt"
        first = prompt.read_text()
        st, body = raw(base, "POST", "/api/edit", headers=post,
                       body={"target": f"{KEY}/prompts/1.txt", "text": "A prompt of my own."})
        assert st == 200 and prompt.read_text() == "A prompt of my own.\n"
        st, body = raw(base, "POST", "/api/restore", headers=post,
                       body={"target": f"{KEY}/prompts/1.txt", "version": 1})
        assert st == 200 and prompt.read_text() == first
        st, body = raw(base, "GET", f"/api/estimate?target={KEY}/images/1.jpg")
        assert st == 200 and json.loads(body)["usd"] == pytest.approx(0.03)


def test_an_offline_story_page_in_the_studio(tmp_path):
    """Every image of the live page loads, with no console error (and the README's picture
    is taken here: ``CLOOPS_SCREENSHOT=1`` writes docs/studio-story-page.png)."""
    project = make_project(tmp_path, ["noah-s-ark"])
    ok(project.doit())
    prompt = project.story_dir("noah-s-ark") / "prompts" / "3.txt"
    prompt.write_text(prompt.read_text().replace("Mood: calm and clear.", "Mood: hopeful."))
    with running_studio(project.root) as (base, _studio), browser() as b:
        page = Page(b, height=1100)
        page.page.goto(f"{base}/review/index.html")
        with page.page.expect_navigation():
            page.page.locator("a", has_text=STD).first.click()
        assert all(i["w"] > 0 for i in page.images_loaded())
        with page.page.expect_navigation():
            page.page.locator(".card").first.click()
        assert page.page.url.endswith(f"/review/{STD}/stories/noah-s-ark.html")
        images = page.images_loaded()
        assert len(images) >= 4 and all(i["w"] > 0 for i in images)
        assert "changed prompts/3.txt" in page.page.locator(".stale-list").inner_text()
        assert page.errors == []
        if os.environ.get("CLOOPS_SCREENSHOT"):
            page.page.evaluate("() => window.scrollTo(0, 0)")
            page.page.screenshot(path=str(DOCS_SHOT))


# ---------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One offline story, built, and the studio serving it: ``(project, base URL, token)``."""
    project = make_project(tmp_path_factory.mktemp("served"), ["noah-s-ark"])
    ok(project.doit())
    (project.root / "secret.txt").write_text("outside build/")
    with running_studio(project.root) as (base, studio):
        yield project, base, studio.token


def test_paths_outside_build_are_refused(served):
    project, base, _ = served
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/comic-books-standard/../../secret.txt",
                 "/..%2fsecret.txt", "/.cloops/ledger.sqlite", "/review/.cloops/state.json"):
        status, body = raw(base, "GET", path)
        assert status in (403, 404), (path, status)
        assert "outside build/" not in body, path
    status, body = raw(base, "GET", "/../secret.txt")
    assert status == 403 and "leaves the build folder" in body
    status, _ = raw(base, "GET", f"/{KEY}/images/1.jpg")
    assert status == 200


def test_a_foreign_host_or_a_post_without_the_token_is_refused(served):
    project, base, token = served
    narrative = project.story_dir("noah-s-ark") / "narrative.md"
    before = narrative.read_bytes()
    edit = {"target": f"{KEY}/narrative.md", "text": "hijacked"}
    status, body = raw(base, "POST", "/api/edit", body=edit)
    assert status == 403 and "session token" in body
    status, body = raw(base, "POST", "/api/edit", body=edit, headers={"X-Cloops-Token": "wrong"})
    assert status == 403
    status, body = raw(base, "POST", "/api/edit", body=edit,
                       headers={"X-Cloops-Token": token, "Host": "evil.example:80"})
    assert status == 400 and "is not this studio" in body
    status, body = raw(base, "GET", "/review/index.html", headers={"Host": "evil.example"})
    assert status == 400
    status, body = raw(base, "POST", "/api/edit", body=edit,
                       headers={"X-Cloops-Token": token, "Origin": "http://evil.example"})
    assert status == 403 and "another origin" in body
    status, body = raw(base, "GET", "/api/edit")  # a change is never a GET
    assert status == 405
    assert narrative.read_bytes() == before


def test_unknown_story_or_target_is_a_clear_404(served):
    project, base, token = served
    status, body = raw(base, "GET", f"/review/{STD}/stories/no-such-story.html")
    assert status == 404 and "has no story &#39;no-such-story&#39;" in body
    status, body = raw(base, "GET", "/review/no-such-template/index.html")
    assert status == 404 and "no template" in body
    status, body = raw(base, "POST", "/api/pick", headers={"X-Cloops-Token": token},
                       body={"target": "comic-books-standard/no-such-story/images/1.jpg", "take": 1})
    assert status == 404 and "no-such-story" in json.loads(body)["error"]
    status, body = raw(base, "POST", "/api/lock", headers={"X-Cloops-Token": token},
                       body={"target": f"{KEY}/images/two.jpg"})
    assert status == 404 and "is not a target" in json.loads(body)["error"]
    status, body = raw(base, "GET", f"/{KEY}/images/9.jpg")
    assert status == 404


def test_a_malformed_edit_changes_nothing(served):
    project, base, token = served
    pages = project.story_dir("noah-s-ark") / "pages.json"
    before = pages.read_bytes()
    status, body = raw(base, "POST", "/api/edit", headers={"X-Cloops-Token": token},
                       body={"target": f"{KEY}/pages.json", "text": '{"pages": [ {"narration": '})
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    status, body = raw(base, "POST", "/api/edit", headers={"X-Cloops-Token": token},
                       body={"target": f"{KEY}/pages.json", "field": ["pages", 9, "narration"],
                             "value": "x"})
    assert status == 400 and "has no text at pages/9/narration" in json.loads(body)["error"]
    status, body = raw(base, "POST", "/api/edit", headers={"X-Cloops-Token": token},
                       body="{not json")
    assert status == 400
    assert pages.read_bytes() == before
    assert not (project.story_dir("noah-s-ark") / ".cloops" / "history" / "pages.json").exists()


def test_bound_to_another_address_every_request_needs_the_token(tmp_path):
    from cloops.data.project import load_project, reset
    from cloops.steer.review.studio import Refused, Studio
    make_project(tmp_path, ["noah-s-ark"])
    reset()
    studio = Studio(load_project(tmp_path), host="0.0.0.0")
    with pytest.raises(Refused) as refused:
        studio.check("GET", {"host": "0.0.0.0:8321"}, {}, {})
    assert refused.value.status == 403 and "?token=" in refused.value.message
    studio.check("GET", {"host": "0.0.0.0:8321"}, {"token": studio.token}, {})
    studio.check("GET", {"host": "0.0.0.0:8321"}, {}, {"cloops_token": studio.token})
    loopback = Studio(load_project(tmp_path))
    loopback.check("GET", {"host": "127.0.0.1:8321"}, {}, {})  # a GET on loopback needs none
