"""Judged evals: an LLM judge through the real ``openai`` SDK against the loopback fake, shown
the page image, cached like any call; reference sheets when a story has them."""

from __future__ import annotations

import dataclasses
import io
import json

from PIL import Image

from cloops.graph.kinds.judge import DRAFT_REASON, JudgeStep, draft_judgement
from cloops.graph.steps import StepContext, StepRun, file
from cloops.services.base import LLMResult
from tests.fakes.openai_server import FakeOpenAI

from conftest import REPO, make_project

KEY = "sk-test-judge-0123456789"
IMAGES = {"CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_IMAGE_BACKEND": "fake-image",
          "PYTHONPATH": str(REPO)}


def _judges_on(c: dict) -> None:
    c["evals"]["judge"].update(story=True, pages=True)


def test_judges_see_the_page_image_through_the_sdk_and_are_cached(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark"])
    project.edit_config(_judges_on)
    with FakeOpenAI() as oa:
        env = {**IMAGES, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": oa.base_url}
        run = project.doit("build:noah-s-ark", env=env)
        assert run.rc == 0, run.out + run.err
        sdir = project.story_dir("noah-s-ark")
        pages = len(json.loads((sdir / "pages.json").read_text())["pages"])

        def judged(name):
            return [r for r in oa.requests if r.path == "/v1/responses"
                    and r.body["text"].get("format", {}).get("name") == name]
        page_reqs, story_reqs = judged("judge-page"), judged("judge-story")
        assert len(page_reqs) == pages and len(story_reqs) == 1
        assert story_reqs[0].images == []
        assert "Key moments:" in story_reqs[0].body["input"][1]["content"]
        plan = json.loads((sdir / "pages.json").read_text())["pages"]
        order = [c["id"] for c in json.loads((sdir / "cast.json").read_text())["characters"]]
        for rec in page_reqs:
            user = rec.body["input"][1]
            n = int(user["content"][0]["text"].split("\nPage ")[1].split(":")[0])
            on_page = {i for p in plan[n - 1]["panels"] for i in p["cast"]}
            sheets = [f"cast/{i}.jpg" for i in order if i in on_page]
            assert [p["type"] for p in user["content"]] == ["input_text"] + ["input_image"] * (
                1 + len(sheets))
            assert user["content"][1]["image_url"].startswith("data:image/jpeg;base64,")
            assert rec.body["text"]["format"]["strict"] is True
            # the page image on disk, byte for byte, then the reference sheets of its cast
            assert rec.images == [("image/jpeg", (sdir / rel).read_bytes())
                                  for rel in [f"images/{n}.jpg", *sheets]]
            assert f"1. the page image images/{n}.jpg" in user["content"][0]["text"]
        paid = [c for c in run.calls if c["step"] in ("judge-story", "judge-page")]
        assert len(paid) == pages + 1 and not any(c["cache_hit"] for c in paid)
        assert all(c["cost_usd"] > 0 for c in paid)  # priced as any gpt-5.1 call

        data = json.loads((sdir / "evals.json").read_text())
        assert data["judges"] == "on" and isinstance(data["score"], float)
        assert set(data["scores"]) == {"faithfulness", "familySafety", "narrationQuality",
                                       "characterConsistency", "strayText"}
        page1 = json.loads((sdir / "evals" / "judge" / "pages" / "1.json").read_text())
        assert page1["images"][0] == "images/1.jpg" and page1["draft"] is False
        assert all(i.startswith("cast/") for i in page1["images"][1:])

        # judged again from scratch: the response cache answers, nothing reaches the fake
        before = len(oa.requests)
        for rel in ["evals/judge/story.json"] + [f"evals/judge/pages/{n}.json"
                                                   for n in range(1, pages + 1)]:
            (sdir / rel).unlink()
        again = project.doit("build:noah-s-ark", env=env)
        assert again.rc == 0, again.out + again.err
        assert len(oa.requests) == before
        hits = [c for c in again.calls if c["step"] in ("judge-story", "judge-page")]
        assert len(hits) == pages + 1 and all(c["cache_hit"] for c in hits)
        assert sum(c["cost_usd"] for c in again.calls) == 0


def test_judges_are_opt_in_and_offline_gives_a_marked_draft(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark"])
    off = project.doit("build:noah-s-ark")
    assert off.rc == 0 and not [c for c in off.calls if c["step"].startswith("judge")]
    sdir = project.story_dir("noah-s-ark")
    assert not (sdir / "evals" / "judge").exists()  # switched off: no task, no file
    assert json.loads((sdir / "evals.json").read_text())["judges"] == "off"

    project.edit_config(_judges_on)
    on = project.doit("build:noah-s-ark")
    assert on.rc == 0, on.out + on.err
    steps = {c["step"] for c in on.calls}
    assert steps == {"judge-story", "judge-page"}  # switching a judge on pays for that only
    story = json.loads((sdir / "evals" / "judge" / "story.json").read_text())
    assert story["draft"] is True and story["scores"]["faithfulness"]["reason"] == DRAFT_REASON
    data = json.loads((sdir / "evals.json").read_text())
    assert data["judges"] == "draft" and data["score"] is None  # a draft is never a score


class RecordingServices:
    """The :class:`cloops.graph.steps.Services` a judge calls, recording its requests."""

    class Backend:
        name, offline = "recording", False

    def __init__(self):
        self.requests = []

    def backend(self, service):
        return self.Backend()

    def complete(self, request, *, accept=None):
        self.requests.append(request)
        return LLMResult(text="{}", data=draft_judgement(request.schema), model=request.model)

    def remember(self, request, result):
        pass


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_reference_sheets_go_after_the_page_image_and_missing_ones_are_left_out(tmp_path):
    from cloops.data.template import load_template
    tpl = load_template(REPO, "comic-books-standard")
    base = tpl.step("judge-page")
    step = dataclasses.replace(base, inputs={**base.inputs, "sheets": file("cast.json")},
                               references=("sheets",))
    assert isinstance(step, JudgeStep)
    sdir = tmp_path / "story"
    (sdir / "images").mkdir(parents=True)
    (sdir / "cast").mkdir()
    page, noah = _jpeg((10, 20, 30)), _jpeg((200, 20, 30))
    (sdir / "images" / "2.jpg").write_bytes(page)
    (sdir / "cast" / "noah.jpg").write_bytes(noah)
    written = {}
    services = RecordingServices()
    inputs = {"page": {"title": "Rain", "panels": [{"moment": "Noah waits",
                                                    "visualAnchor": "rain"}]},
              "characters": [{"name": "Noah", "appearance": "an old man"}],
              "image": str(sdir / "images" / "2.jpg"),
              "sheets": ["cast/noah.jpg", "cast/shem.jpg"]}  # shem's sheet does not exist
    ctx = StepContext(template=tpl.name, story_id="noah-s-ark", story={}, config=tpl.config,
                      n=2, count=3, story_dir=sdir)
    tpl.config.raw["evals"]["judge"]["pages"] = True
    try:
        step.execute(StepRun(step=step, template=tpl, inputs=inputs, ctx=ctx, services=services,
                             rel="evals/judge/pages/2.json",
                             write=lambda rel, data, **kw: written.update({rel: data})))
    finally:
        tpl.config.raw["evals"]["judge"]["pages"] = False
    (req,) = services.requests
    assert req.images == (("image/jpeg", page), ("image/jpeg", noah))
    assert req.user.endswith("Images attached, in order:\n1. the page image images/2.jpg\n"
                             "2. reference sheet cast/noah.jpg")
    assert written["evals/judge/pages/2.json"]["images"] == ["images/2.jpg", "cast/noah.jpg"]
    assert set(written["evals/judge/pages/2.json"]["scores"]) == {"characterConsistency",
                                                                  "strayText"}
