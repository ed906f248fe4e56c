"""Structured output in whole builds, through the real ``openai`` SDK against the loopback fake:
an answer that is not JSON is re-asked like a schema violation (and never cached), and an
``openai-chat`` server that refuses ``json_schema`` the way llama-cpp-python's does is asked in
the format it takes, remembered per server.

Images come from the in-process fake backend (``tests/fakes/backends.py``): only the LLM calls
matter here.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO, Project, make_project
from tests.fakes.openai_server import CHAT_PATH, RESPONSES_PATH, FakeOpenAI

STD = "comic-books-standard"
KEY = "sk-structured-test-0123456789"
CUT_SHORT = '{"title": "Noah\'s Ark", "characters": [{"name": "Noah"'
PROSE = "Here is the page plan you asked for: {title: Noah's Ark, pages: 3} (JSON to follow)"


@pytest.fixture
def proj(tmp_path) -> Project:
    root = tmp_path / "p"
    root.mkdir()
    proj = make_project(root, ["noah-s-ark", "david-and-goliath"], only=True)
    proj.edit_config(lambda c: c.update(retry={"baseS": 0.01, "capS": 0.05}))
    return proj


def env_for(oa: FakeOpenAI, **extra: str) -> dict:
    return {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": oa.base_url,
            "CLOOPS_PLUGINS": "tests.fakes.backends", "CLOOPS_IMAGE_BACKEND": "fake-image",
            "PYTHONPATH": str(REPO), **extra}


def is_pages_of(title: str):
    """A ``when`` predicate: the page-plan request of the story titled ``title``."""
    def match(rec) -> bool:
        body = rec.body or {}
        fmt = ((body.get("text") or {}).get("format") or {}).get("name")
        return fmt == "planning" and f"Title: {title}" in body["input"][1]["content"]
    return match


NOAH_PAGES = is_pages_of("Noah's Ark")


def cache_texts(proj: Project) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in (proj.root / "build" / ".cloops" / "cache").rglob("*.json"))


def test_json_that_does_not_parse_twice_is_re_asked_and_the_third_answer_builds(proj):
    with FakeOpenAI() as oa:
        oa.enqueue(text=CUT_SHORT, when=NOAH_PAGES,
                   usage={"input_tokens": 700, "output_tokens": 30, "reasoning_tokens": 5})
        oa.enqueue(text=PROSE, when=NOAH_PAGES,
                   usage={"input_tokens": 800, "output_tokens": 40, "reasoning_tokens": 5})
        run = proj.doit("build:noah-s-ark", env=env_for(oa))
        assert run.rc == 0, run.out + run.err
        asks = [r for r in oa.requests if NOAH_PAGES(r)]
        # a re-run after the build: nothing is asked again (the valid answer is cached under
        # the first question; the invalid ones are not cached at all)
        again = proj.doit("build:noah-s-ark", env=env_for(oa))
        assert again.rc == 0 and len([r for r in oa.requests if NOAH_PAGES(r)]) == 3
    assert [r.status for r in asks] == [200, 200, 200]
    second, third = (r.body["input"][1]["content"] for r in asks[1:])
    assert "not valid JSON" in second and CUT_SHORT in second  # the error and the raw start
    assert "not valid JSON" in third and PROSE[:100] in third
    plan = json.loads((proj.story_dir("noah-s-ark") / "pages.json").read_text())
    assert plan["pages"]
    assert proj.backlog()["items"][0]["status"] == "completed"
    rows = [c for c in run.calls if c["step"] == "pages"]
    assert len(rows) == 3, rows  # three paid attempts in the ledger, each with its tokens
    assert [(c["cache_hit"], c["error"]) for c in rows] == [(0, None)] * 3
    assert [c["input_tokens"] for c in rows][:2] == [700, 800]
    assert all(c["cost_usd"] > 0 for c in rows)
    texts = cache_texts(proj)
    assert CUT_SHORT not in texts and "JSON to follow" not in texts


def test_json_that_never_parses_fails_the_story_with_attempts_raw_output_and_usage(proj):
    with FakeOpenAI() as oa:
        for _ in range(3):  # 1 + llm.schemaRetries (default 2)
            oa.enqueue(text=CUT_SHORT, when=NOAH_PAGES,
                       usage={"input_tokens": 1000, "output_tokens": 200,
                              "reasoning_tokens": 50})
        run = proj.doit("build:noah-s-ark", env=env_for(oa))
    assert run.rc != 0
    error = proj.backlog()["items"][0]["error"]
    for words in ("step 'pages'", "3 attempt", "not valid JSON", "Last raw output",
                  '"characters": [{"name": "Noah"', "3000 input / 600 output tokens"):
        assert words in error, f"{words!r} not in {error}"
    assert len([c for c in run.calls if c["step"] == "pages"]) == 3
    assert CUT_SHORT not in cache_texts(proj)


def test_a_chat_server_refusing_json_schema_like_llama_cpp_python_builds_through_the_fallback(
        proj):
    formats_file = proj.root / "build" / ".cloops" / "chat-formats.json"
    with FakeOpenAI(chat_formats=("text", "json_object")) as oa:
        proj.edit_config(lambda c: c["llm"].update(backend="openai-chat", baseUrl=oa.base_url,
                                                   model="local-model"))
        env = env_for(oa)

        def formats() -> list[str]:
            return [(r.body.get("response_format") or {}).get("type", "none")
                    for r in oa.requests if r.path == CHAT_PATH]
        first = proj.doit("build:noah-s-ark", env=env)
        assert first.rc == 0, first.out + first.err
        sent = formats()
        discovered = sent.count("json_schema")
        # the page plan and the thumbnail prompt may ask at the same moment: each discovers
        assert 1 <= discovered <= 2, sent
        assert all(r.status == 500 for r in oa.requests
                   if (r.body.get("response_format") or {}).get("type") == "json_schema")
        assert json.loads(formats_file.read_text()) == {oa.base_url: "json_object"}
        second = proj.doit("build:david-and-goliath", env=env)
        assert second.rc == 0, second.out + second.err
        later = formats()[len(sent):]
        assert later and "json_schema" not in later, later  # remembered: no discovery again
        assert not [r for r in oa.requests if r.path == RESPONSES_PATH]
    for story in ("noah-s-ark", "david-and-goliath"):
        assert json.loads((proj.story_dir(story) / "pages.json").read_text())["pages"]
    assert {it["status"] for it in proj.backlog()["items"]} == {"completed"}
