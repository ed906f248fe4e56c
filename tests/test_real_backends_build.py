"""A whole build through the real ``openai`` and ``replicate`` SDKs against loopback fakes.

``auto`` picks the real backends because keys are set; ``OPENAI_BASE_URL`` and
``REPLICATE_BASE_URL`` point the SDKs at fake servers on 127.0.0.1 that speak the same wire
protocol. Nothing reaches the network.
"""

from __future__ import annotations

import io
import json

from PIL import Image

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.replicate_server import FakeReplicate

OPENAI_KEY = "sk-test-e2e-0123456789abcdef"
REPLICATE_TOKEN = "r8_test_token"


def _env(oa, rp) -> dict:
    return {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": oa.base_url,
            "REPLICATE_API_TOKEN": REPLICATE_TOKEN, "REPLICATE_BASE_URL": rp.base_url,
            "REPLICATE_POLL_INTERVAL": "0.01"}


def test_build_one_story_through_real_sdks(project):
    with FakeOpenAI() as oa, FakeReplicate(token=REPLICATE_TOKEN) as rp:
        run = project.doit("build:comic-books-standard/noah-s-ark", env=_env(oa, rp))
        assert run.rc == 0, run.out + run.err
        assert "llm: openai" in run.out and "image: replicate" in run.out

        bodies = [r.body for r in oa.requests if r.path.endswith("/responses")]
        sdir = project.story_dir("noah-s-ark")
        plan_data = json.loads((sdir / "pages.json").read_text())
        n = len(plan_data["pages"])
        cast = json.loads((sdir / "cast.json").read_text())["characters"]
        # narrative, cast, pages, one per page, thumbnail
        assert len(bodies) == 1 + 1 + 1 + n + 1
        for b in bodies:
            assert b["model"] == "gpt-5.1"
            assert b["input"][0]["role"] == "system" and b["input"][1]["role"] == "user"
            assert b["reasoning"]["effort"] in ("low", "medium")
        narrative, plan = bodies[0], bodies[2]
        assert narrative["reasoning"]["effort"] == "medium"  # llm.steps.narrative override
        assert "format" not in narrative.get("text", {})  # plain text step
        fmt = plan["text"]["format"]
        assert fmt["type"] == "json_schema" and fmt["strict"] is True
        assert fmt["name"] == "planning" and fmt["schema"]["required"] == ["title", "coverCast", "pages"]
        assert bodies[1]["text"]["format"]["name"] == "cast"
        assert plan["text"]["verbosity"] == "medium"
        assert "Noah's Ark" in narrative["input"][1]["content"]

        creates = rp.creates
        prompts = {(sdir / "prompts" / f"{i}.txt").read_text().strip() for i in range(1, n + 1)}
        # the fake answers every page alike: identical image requests are paid once (cache)
        sheets = [c for c in creates if c.body["input"].get("aspect_ratio") == "4:3"]
        pages = [c for c in creates if c.body["input"].get("aspect_ratio") == "9:16"]
        cover = [c for c in creates if c.body["input"].get("aspect_ratio") == "1:1"]
        assert len(sheets) == len(cast) and len(pages) == len(prompts) and len(cover) == 1
        assert len(creates) == len(sheets) + len(pages) + len(cover)  # aspect_ratio always sent
        for c in creates:
            assert c.path == "/v1/models/bytedance/seedream-4/predictions"
            assert c.body["input"]["size"] == "1K"
        assert all("image_input" not in c.body["input"] for c in sheets)

        # every page image carries exactly the sheets of its page's cast, in cast order, and
        # its prompt names them in that order
        order = [c["id"] for c in cast]
        by_prompt = {c.body["input"]["prompt"]: c for c in pages + cover}
        for i, page in enumerate(plan_data["pages"], 1):
            on_page = {cid for p in page["panels"] for cid in p["cast"]}
            want = [cid for cid in order if cid in on_page]
            text = (sdir / "prompts" / f"{i}.txt").read_text().strip()
            create = next(c for p, c in by_prompt.items() if p.endswith(text))
            sent = create.body["input"]["image_input"]
            assert [rp.upload_url_bytes(u) for u in sent] == [
                (sdir / "cast" / f"{cid}.jpg").read_bytes() for cid in want]
            names = {c["id"]: c["name"] for c in cast}
            assert create.body["input"]["prompt"].startswith(
                " ".join(f"Image {k} is {names[cid]}'s reference sheet." for k, cid in
                         enumerate(want, 1)))
        cover_sent = cover[0].body["input"]["image_input"]
        assert [rp.upload_url_bytes(u) for u in cover_sent] == [
            (sdir / "cast" / f"{cid}.jpg").read_bytes() for cid in plan_data["coverCast"]]
        # one upload per distinct sheet content, however many pages it went with
        distinct = {(sdir / "cast" / f"{cid}.jpg").read_bytes() for cid in order}
        assert sorted(rp.uploads.values()) == sorted(distinct)

        for i in range(1, n + 1):
            img = Image.open(io.BytesIO((sdir / "images" / f"{i}.jpg").read_bytes()))
            assert img.format == "JPEG"
        assert Image.open(sdir / "bundle" / "thumbnail.jpg").format == "JPEG"
        status = {it["id"]: it["status"] for it in project.backlog()["items"]}
        assert status["noah-s-ark"] == "completed"
        assert status["david-and-goliath"] == "pending"

        # a second run is served by nothing: no request reaches either fake
        before = (len(oa.requests), len(rp.requests))
        again = project.doit("build:comic-books-standard/noah-s-ark", env=_env(oa, rp))
        assert again.rc == 0 and again.calls == []
        assert (len(oa.requests), len(rp.requests)) == before

    # no key ever lands in build/ (targets, ledger, cache, doit state) or the output
    for path in (project.root / "build").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert OPENAI_KEY.encode() not in data, path
            assert REPLICATE_TOKEN.encode() not in data, path
    assert OPENAI_KEY not in run.out + run.err


def test_auto_falls_back_to_offline_and_says_so(project):
    run = project.doit("dry:noah-s-ark")
    assert run.rc == 0
    assert "llm: draft" in run.out and "OFFLINE" in run.out


def test_an_answer_the_sdk_cannot_read_fails_the_story_once_and_plainly(project):
    # issue 24: Replicate's upload answer without `etag` made the SDK's pydantic raise "field
    # required"; the build retried it dozens of times and said nothing of where it came from
    with FakeOpenAI() as oa, FakeReplicate(token=REPLICATE_TOKEN) as rp:
        rp.omit = {"upload": ("etag",)}
        run = project.doit("build:comic-books-standard/noah-s-ark", env=_env(oa, rp))
        uploads = rp.requests_to("/v1/files", "POST")
    assert run.rc != 0
    item = next(it for it in project.backlog()["items"] if it["id"] == "noah-s-ark")
    error = item["error"]
    assert item["status"] == "failed"
    assert error.startswith("comic-books-standard/noah-s-ark step '")  # the story and step
    assert "(image service, backend replicate)" in error  # the service; one attempt
    assert "POST /v1/files" in error and "'etag' (field required)" in error
    assert "the server at REPLICATE_BASE_URL" in error and "does not speak Replicate's API" in error
    assert "attempts" not in error  # tried once: no retry of an answer that cannot change
    assert uploads and error in run.out + run.err
