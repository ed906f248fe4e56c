"""Reading JSON out of a model's answer, wording a re-ask, remembering servers' formats."""

from __future__ import annotations

import json

import pytest

from cloops.services.structured import (FormatMemory, JSONNotFound, extract_json,
                                        format_rejected, reask_feedback)

PLAN = {"title": "Ark", "pages": [{"n": 1}]}


@pytest.mark.parametrize("text", [
    json.dumps(PLAN),
    f"<think>The user wants a plan {{maybe}}.</think>\n{json.dumps(PLAN)}",
    f"```json\n{json.dumps(PLAN, indent=2)}\n```",
    f"```\n{json.dumps(PLAN)}\n```",
    f"Sure! Here is the plan you asked for:\n\n{json.dumps(PLAN)}\n\nLet me know {{if}} it helps.",
    f"Notes {{draft}} first. Then: {json.dumps(PLAN)} trailing",
])
def test_json_is_found_past_think_blocks_fences_and_prose(text):
    assert extract_json(text) == PLAN


@pytest.mark.parametrize("text, error", [
    ('{"title": "Ark", "pages": [', "Expecting value"),          # cut short
    ('{"title": "Ark",, "pages": []}', "Expecting property name"),  # a stray comma
    ("I cannot produce JSON for this.", "Expecting value"),
    ("", "Expecting value"),
])
def test_text_without_json_raises_with_the_parse_error(text, error):
    with pytest.raises(JSONNotFound, match=error):
        extract_json(text)


def test_reask_quotes_the_start_of_an_unparseable_answer():
    raw = '{"title": "Ark", "pages": [' + "x" * 500
    text = reask_feedback(["the answer is not valid JSON (Expecting value: line 1)"], raw,
                          not_json=True)
    assert "Expecting value: line 1" in text
    assert raw[:300] + "..." in text and raw[:301] not in text
    assert "no code fence" in text
    schema_only = reask_feedback(["pages: [] is too short"], raw, not_json=False)
    assert raw[:20] not in schema_only and "pages: [] is too short" in schema_only


def test_format_rejections_are_told_from_other_server_errors():
    llama = "{'msg': \"Input should be 'text' or 'json_object'\"}"
    assert format_rejected(500, llama)
    assert format_rejected(400, "response_format type must be one of text, json_object")
    assert not format_rejected(500, "The server had an error while processing your request.")
    assert not format_rejected(429, llama)


def test_format_memory_is_kept_per_server_in_a_file(tmp_path):
    path = tmp_path / "state" / "chat-formats.json"
    mem = FormatMemory(path)
    assert mem.get("http://a/v1") is None
    mem.set("http://a/v1/", "json_object")
    mem.set("http://b/v1", "instructions")
    again = FormatMemory(path)
    assert (again.get("http://a/v1"), again.get("http://b/v1/")) == ("json_object", "instructions")
    path.write_text("not json")
    assert FormatMemory(path).get("http://a/v1") is None  # unreadable: discovered again
