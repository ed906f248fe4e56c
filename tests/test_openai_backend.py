"""The OpenAI backends, driven through the real ``openai`` SDK against a loopback fake server."""

from __future__ import annotations

import json
import pickle

import pytest

from cloops.data.config import LLMConfig
from cloops.core.errors import (AuthError, IncompleteError, InputError, PermanentServiceError,
                                RefusalError, TransientServiceError)
from cloops.services import registry
from cloops.services.base import LLMBackend, LLMRequest
from cloops.services.openai_backend import (OpenAIChatBackend, OpenAIResponsesBackend,
                                            make_chat_backend, make_responses_backend)

try:  # `tests` is a package or a rootdir namespace, depending on how pytest is run
    from tests.fakes.openai_server import CHAT_PATH, RESPONSES_PATH, FakeOpenAI, instance_for
except ImportError:  # pragma: no cover
    from fakes.openai_server import CHAT_PATH, RESPONSES_PATH, FakeOpenAI, instance_for

KEY = "sk-test-xyz"

PAGES_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "pages"],
    "properties": {
        "title": {"type": "string"},
        "pages": {
            "type": "array", "minItems": 4, "maxItems": 4,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["pageNumber", "narration", "mood"],
                "properties": {
                    "pageNumber": {"type": "integer"},
                    "narration": {"type": "string"},
                    "mood": {"type": "string", "enum": ["calm", "tense"]},
                },
            },
        },
    },
}


def request(**kw) -> LLMRequest:
    base = dict(system="You write comics.", user="Noah builds an ark.", model="gpt-5.1",
                reasoning="low", verbosity="medium", schema=PAGES_SCHEMA, schema_name="pages",
                timeout_s=5.0)
    base.update(kw)
    return LLMRequest(**base)


@pytest.fixture
def srv():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def backend(srv):
    return OpenAIResponsesBackend(api_key=KEY, base_url=srv.base_url, max_retries=0)


def test_request_body_has_model_messages_reasoning_and_strict_schema(srv, backend):
    backend.complete(request())
    assert srv.count == 1
    rec = srv.last
    assert (rec.method, rec.path) == ("POST", RESPONSES_PATH)
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    body = rec.body
    assert body["model"] == "gpt-5.1"
    assert body["input"] == [{"role": "system", "content": "You write comics."},
                             {"role": "user", "content": "Noah builds an ark."}]
    assert body["reasoning"] == {"effort": "low"}
    assert body["text"] == {"format": {"type": "json_schema", "name": "pages",
                                       "schema": PAGES_SCHEMA, "strict": True},
                            "verbosity": "medium"}


def test_result_is_parsed_json_with_usage_and_model(srv, backend):
    answer = {"title": "The Ark", "pages": [
        {"pageNumber": n, "narration": f"Page {n}.", "mood": "calm"} for n in range(1, 5)]}
    srv.enqueue(text=json.dumps(answer), model="gpt-5.1-2025-11-13",
                usage={"input_tokens": 321, "output_tokens": 210, "reasoning_tokens": 150})
    result = backend.complete(request())
    assert result.data == answer
    assert json.loads(result.text) == answer
    assert result.usage.as_dict() == {"input_tokens": 321, "output_tokens": 210,
                                      "reasoning_tokens": 150}
    assert result.model == "gpt-5.1-2025-11-13"
    assert result.draft is False


def test_output_text_is_read_past_a_leading_reasoning_item(srv, backend):
    srv.enqueue(text='{"title": "T", "pages": []}')
    result = backend.complete(request())
    # the fake puts a reasoning item first, as GPT-5.1 does: output[0] has no text
    assert result.data == {"title": "T", "pages": []}


def test_default_responder_answers_schema_valid_json(srv, backend):
    data = backend.complete(request()).data
    assert isinstance(data["title"], str) and data["title"]
    assert [p["pageNumber"] for p in data["pages"]] == [1, 2, 3, 4]  # minItems 4, counting
    assert {p["mood"] for p in data["pages"]} <= {"calm", "tense"}
    assert set(data["pages"][0]) == {"pageNumber", "narration", "mood"}


def test_plain_text_request_omits_format_and_none_settings(srv, backend):
    result = backend.complete(request(schema=None, reasoning=None, verbosity=None))
    body = srv.last.body
    assert "text" not in body and "reasoning" not in body
    assert result.data is None
    assert "Noah builds an ark." in result.text

    backend.complete(request(schema=None, verbosity="high"))
    assert srv.last.body["text"] == {"verbosity": "high"}


def test_refusal_raises_refusal_error(srv, backend):
    srv.enqueue(refusal="I can't help with that.")
    with pytest.raises(RefusalError, match="I can't help with that") as info:
        backend.complete(request())
    assert info.value.service == "llm" and info.value.backend == "openai"


def test_incomplete_raises_incomplete_error_with_reason_and_fix(srv, backend):
    srv.enqueue(incomplete="max_output_tokens",
                usage={"output_tokens": 4000, "reasoning_tokens": 4000})
    with pytest.raises(IncompleteError, match="max_output_tokens") as info:
        backend.complete(request())
    assert "llm.reasoning" in str(info.value)
    assert info.value.usage.reasoning_tokens == 4000


def test_output_that_is_not_json_comes_back_with_its_parse_error(srv, backend):
    """Not raised: the caller re-asks it like a schema violation, and it was paid for."""
    srv.enqueue(text='{"title": "cut off', usage={"input_tokens": 10, "output_tokens": 20})
    result = backend.complete(request())
    assert result.text == '{"title": "cut off' and result.data is None
    assert "Unterminated string" in result.parse_error
    assert (result.usage.input_tokens, result.usage.output_tokens) == (10, 20)


def test_json_inside_prose_or_a_fence_is_extracted(srv, backend):
    answer = {"title": "Ark", "pages": []}
    srv.enqueue(text=f"Here is the plan:\n{json.dumps(answer)}\nHope this helps!")
    assert backend.complete(request()).data == answer
    srv.enqueue(text=f"```json\n{json.dumps(answer)}\n```")
    result = backend.complete(request())
    assert (result.data, result.parse_error) == (answer, None)


def test_401_raises_auth_error_without_the_key(srv, backend):
    srv.enqueue(status=401)
    with pytest.raises(AuthError) as info:
        backend.complete(request())
    message = str(info.value)
    assert "OPENAI_API_KEY" in message
    assert KEY not in message and "xyz" not in message
    assert info.value.status_code == 401
    assert KEY not in repr(backend)


def test_403_raises_auth_error(srv, backend):
    srv.enqueue(status=403)
    with pytest.raises(AuthError, match="403"):
        backend.complete(request())


def test_400_raises_permanent_error_with_api_message(srv, backend):
    srv.enqueue(status=400, body={"error": {"message": "Invalid schema for response_format "
                                            "'pages': 'additionalProperties' is required",
                                            "type": "invalid_request_error",
                                            "param": "text.format.schema", "code": None}})
    with pytest.raises(PermanentServiceError, match="additionalProperties") as info:
        backend.complete(request())
    assert not isinstance(info.value, (TransientServiceError, AuthError))
    assert info.value.status_code == 400


def test_404_names_the_model_setting(srv, backend):
    srv.enqueue(status=404)
    with pytest.raises(PermanentServiceError, match="llm.model"):
        backend.complete(request())


def test_429_without_sdk_retries_is_transient_with_retry_after(srv, backend):
    srv.enqueue(status=429, headers={"retry-after": "7"})
    with pytest.raises(TransientServiceError) as info:
        backend.complete(request())
    assert info.value.status_code == 429
    assert info.value.retry_after_s == 7.0
    assert srv.count == 1  # max_retries=0: the SDK did not retry


def test_insufficient_quota_is_permanent(srv, backend):
    srv.enqueue(status=429, body={"error": {"message": "You exceeded your current quota.",
                                            "type": "insufficient_quota", "param": None,
                                            "code": "insufficient_quota"}})
    with pytest.raises(PermanentServiceError, match="quota"):
        backend.complete(request())


def test_sdk_retries_429_then_succeeds(srv):
    backend = OpenAIResponsesBackend(api_key=KEY, base_url=srv.base_url, max_retries=1)
    srv.enqueue(status=429, headers={"retry-after-ms": "10"})
    assert backend.complete(request()).data["title"]
    assert srv.count == 2


def test_500_and_dropped_connection_and_timeout_are_transient(srv, backend):
    srv.enqueue(status=500)
    with pytest.raises(TransientServiceError) as info:
        backend.complete(request())
    assert info.value.status_code == 500

    srv.enqueue(drop=True)
    with pytest.raises(TransientServiceError, match="could not reach"):
        backend.complete(request())

    srv.enqueue(delay_s=2)
    with pytest.raises(TransientServiceError, match="timed out"):
        backend.complete(request(timeout_s=0.3))


def test_failed_status_is_permanent(srv, backend):
    srv.enqueue(body={**_response_like(srv, backend), "status": "failed",
                      "error": {"code": "server_error", "message": "boom"}})
    with pytest.raises(PermanentServiceError, match="boom"):
        backend.complete(request())


def _response_like(srv, backend) -> dict:
    """A real-shaped Response body captured from the fake (for hand-edited variants)."""
    import urllib.request
    req = urllib.request.Request(srv.base_url + "/responses", method="POST",
                                 data=json.dumps({"model": "gpt-5.1", "input": "hi"}).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_usage_without_output_details_counts_zero_reasoning(srv, backend):
    body = _response_like(srv, backend)
    body["usage"] = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    body["output"][1]["content"][0]["text"] = '{"title": "x", "pages": []}'
    srv.enqueue(body=body)
    usage = backend.complete(request()).usage
    assert usage.as_dict() == {"input_tokens": 5, "output_tokens": 7, "reasoning_tokens": 0}


# ---------------------------------------------------------------- factories and registry

def test_missing_key_raises_auth_error_naming_the_variable():
    with pytest.raises(AuthError) as info:
        make_responses_backend(LLMConfig(), {})
    assert str(info.value).startswith("OPENAI_API_KEY is not set")
    assert '"draft"' in str(info.value)


def test_factory_uses_key_base_url_and_retries_from_config(srv):
    section = LLMConfig.model_validate({"baseUrl": srv.base_url, "maxRetries": 0})
    backend = make_responses_backend(section, {"OPENAI_API_KEY": KEY})
    assert isinstance(backend, LLMBackend) and backend.offline is False
    backend.complete(request())
    assert srv.last.headers["authorization"] == f"Bearer {KEY}"

    env_backend = make_responses_backend(LLMConfig(max_retries=0),
                                         {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": srv.base_url})
    env_backend.complete(request())
    assert srv.count == 2


def test_backend_pickles_without_its_client(srv, backend):
    backend.complete(request())
    clone = pickle.loads(pickle.dumps(backend))
    clone.complete(request())
    assert srv.count == 2


def test_registered_specs():
    specs = registry.backends("llm")
    assert specs["openai"].key_env == ("OPENAI_API_KEY",)
    assert specs["openai"].auto_rank == 10 and not specs["openai"].offline
    assert specs["openai"].describe == "OpenAI Responses API"
    assert specs["openai-chat"].key_env == ()
    assert registry.resolve("llm", "auto", {"OPENAI_API_KEY": KEY}).spec.name == "openai"


# ---------------------------------------------------------------- chat completions

@pytest.fixture
def chat(srv):
    return OpenAIChatBackend(base_url=srv.base_url, max_retries=0)


def test_chat_sends_response_format_and_parses_reply(srv, chat):
    answer = {"title": "Ark", "pages": []}
    srv.enqueue(text=json.dumps(answer), usage={"prompt_tokens": 11, "completion_tokens": 22})
    result = chat.complete(request(model="llama3.1"))
    rec = srv.last
    assert rec.path == CHAT_PATH
    assert rec.headers["authorization"] == "Bearer not-needed"
    assert rec.body["model"] == "llama3.1"
    assert rec.body["messages"] == [{"role": "system", "content": "You write comics."},
                                    {"role": "user", "content": "Noah builds an ark."}]
    assert rec.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "pages", "schema": PAGES_SCHEMA, "strict": True}}
    assert result.data == answer
    assert result.usage.as_dict() == {"input_tokens": 11, "output_tokens": 22,
                                      "reasoning_tokens": 0}


def test_chat_plain_text_and_fenced_json(srv, chat):
    chat.complete(request(schema=None))
    assert "response_format" not in srv.last.body
    srv.enqueue(text='<think>hmm</think>\n```json\n{"title": "x", "pages": []}\n```')
    assert chat.complete(request()).data == {"title": "x", "pages": []}


def test_chat_refusal_length_and_auth(srv, chat):
    srv.enqueue(refusal="No.")
    with pytest.raises(RefusalError, match="No."):
        chat.complete(request())
    srv.enqueue(incomplete="length", text='{"ti')
    with pytest.raises(IncompleteError, match="length") as info:
        chat.complete(request())
    assert info.value.backend == "openai-chat" and info.value.raw_output == '{"ti'
    srv.enqueue(status=401)
    with pytest.raises(AuthError):
        chat.complete(request())


def test_chat_factory_needs_base_url(srv):
    with pytest.raises(InputError, match="llm.baseUrl"):
        make_chat_backend(LLMConfig(), {"OPENAI_API_KEY": KEY})
    backend = make_chat_backend(LLMConfig(base_url=srv.base_url, max_retries=0),
                                {"LLM_API_KEY": "sk-local-server"})
    backend.complete(request())
    assert srv.last.headers["authorization"] == "Bearer sk-local-server"


def test_chat_never_sends_the_openai_key_to_another_server(srv):
    """OPENAI_API_KEY goes to OpenAI's host only: a local or third-party server at llm.baseUrl
    gets LLM_API_KEY, else a placeholder."""
    from cloops.services.openai_backend import CHAT_PLACEHOLDER_KEY, chat_key
    backend = make_chat_backend(LLMConfig(base_url=srv.base_url, max_retries=0),
                                {"OPENAI_API_KEY": KEY})
    backend.complete(request())
    assert srv.last.headers["authorization"] == f"Bearer {CHAT_PLACEHOLDER_KEY}"
    assert KEY not in json.dumps(srv.last.headers)
    assert chat_key("https://api.openai.com/v1", {"OPENAI_API_KEY": KEY}) == KEY
    assert chat_key("https://api.openai.com.evil.example/v1", {"OPENAI_API_KEY": KEY}) == \
        CHAT_PLACEHOLDER_KEY
    assert chat_key("https://api.openai.com/v1", {"OPENAI_API_KEY": KEY,
                                                  "LLM_API_KEY": "sk-x"}) == "sk-x"


def test_generator_honours_enum_bounds_and_refs():
    schema = {"type": "object", "$defs": {"tag": {"type": "string", "enum": ["a", "b"]}},
              "properties": {"tags": {"type": "array", "items": {"$ref": "#/$defs/tag"},
                                      "maxItems": 2},
                             "count": {"type": "integer", "minimum": 5},
                             "note": {"type": ["string", "null"]}}}
    data = instance_for(schema)
    assert data["tags"] == ["a", "b"]
    assert data["count"] == 5
    assert isinstance(data["note"], str)


@pytest.mark.parametrize("cls_name, path", [("OpenAIResponsesBackend", "/v1/responses"),
                                            ("OpenAIChatBackend", "/v1/chat/completions")])
def test_warm_up_parses_its_canned_answer_without_the_network(cls_name, path):
    """warm_up() builds the SDK's request and response types in the main thread: its request
    must have the shape of real ones (else the first real calls still build the request types,
    in every thread at once) and its canned body must stay valid for the SDK in use (else the
    warm-up silently does nothing)."""
    import httpx
    import openai
    from cloops.services import openai_backend, wire
    cls = getattr(openai_backend, cls_name)
    seen = []

    def answer(request):
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=cls._WARM_BODY)

    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        cls._warm_call(openai.OpenAI(api_key="warm-up", base_url="http://warm-up.invalid/v1",
                                     max_retries=0, http_client=http))
    real = cls.request_params(LLMRequest(system="s", user="u", model="m", reasoning="low",
                                         verbosity="low", schema={"type": "object"}))
    assert [p for p, _ in seen] == [path]
    assert set(seen[0][1]) == set(real)  # every field a real request sends
    wire._TLS.clear()
    cls.warm_up()  # and the real entry point neither raises nor reaches a server
    assert wire._TLS, "warm_up loads the shared TLS context"


# ---------------------------------------------------------------- images shown to the model

JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\nfake-png"


def test_images_are_sent_as_input_image_parts_after_the_text(srv, backend):
    backend.complete(request(images=(("image/jpeg", JPEG), ("image/png", PNG))))
    user = srv.last.body["input"][1]
    assert user["role"] == "user"
    assert [p["type"] for p in user["content"]] == ["input_text", "input_image", "input_image"]
    assert user["content"][0]["text"] == "Noah builds an ark."
    assert {p["detail"] for p in user["content"][1:]} == {"auto"}
    assert user["content"][1]["image_url"].startswith("data:image/jpeg;base64,")
    assert srv.last.images == [("image/jpeg", JPEG), ("image/png", PNG)]


def test_chat_sends_images_as_image_url_parts(srv, chat):
    chat.complete(request(model="llava", images=(("image/jpeg", JPEG),)))
    content = srv.last.body["messages"][1]["content"]
    assert [p["type"] for p in content] == ["text", "image_url"]
    assert srv.last.images == [("image/jpeg", JPEG)]


def test_images_are_part_of_the_cache_key_and_absent_without_them():
    plain = request()
    assert "images" not in plain.cache_key()  # keys of requests without images are unchanged
    one = request(images=(("image/jpeg", JPEG),))
    other = request(images=(("image/jpeg", JPEG + b"x"),))
    assert one.cache_key() != plain.cache_key() != other.cache_key() != one.cache_key()
    assert "fake-jpeg" not in repr(one)  # bytes never printed


def test_the_fake_rejects_an_image_part_the_api_would(srv, backend):
    params = OpenAIResponsesBackend.request_params(request(images=(("image/jpeg", JPEG),)))
    del params["input"][1]["content"][1]["detail"]
    import openai
    with pytest.raises(openai.BadRequestError, match="detail"):
        backend.client.responses.create(**params)
# -- background mode ---------------------------------------------------------------------------

def background_backend(srv: FakeOpenAI, **kw) -> OpenAIResponsesBackend:
    return OpenAIResponsesBackend(api_key=KEY, base_url=srv.base_url, max_retries=0,
                                  background=True, poll_interval_s=0.01, **kw)


def test_background_creates_then_polls_until_completed(srv):
    srv.latency_s = 0.3
    result = background_backend(srv).complete(request())
    create, *polls = srv.requests
    assert (create.method, create.path, create.body["background"]) == ("POST", RESPONSES_PATH, True)
    assert create.reply["status"] == "queued" and create.reply["output"] == []
    assert polls and all(p.method == "GET" and p.path == f"{RESPONSES_PATH}/{create.reply['id']}"
                         for p in polls)
    assert polls[-1].at - create.at >= 0.29  # polled while the model ran, until it finished
    assert result.data["title"] and len(result.data["pages"]) == 4
    assert result.usage.output_tokens > 0
    [run] = srv.billed
    assert run.background and run.answered


def test_background_id_is_journaled_while_the_model_runs_and_resumed(tmp_path, srv):
    """A run killed while its background response runs: the next run of the same request
    polls that response instead of creating (and paying for) another."""
    import threading
    import time

    from cloops.services.cache import ResponseCache, job_journal
    cache = ResponseCache(tmp_path / "cache")
    srv.latency_s = 0.5
    done: list = []

    def first_run() -> None:
        with job_journal(cache, "k"):
            # a poll that takes longer than the model: as if the process were killed while polling
            srv.enqueue(delay_s=5, when=lambda r: r.method == "GET")
            try:
                done.append(background_backend(srv).complete(request(timeout_s=1.0)))
            except Exception as exc:  # noqa: BLE001
                done.append(exc)
    thread = threading.Thread(target=first_run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while cache.job("k") is None:
        assert time.monotonic() < deadline, "the response id was never journaled"
        time.sleep(0.005)
    while srv.pending:  # the first run's poll took the slow reply: it is "killed" in there
        assert time.monotonic() < deadline, "the first run never polled"
        time.sleep(0.005)
    [run] = srv.billed
    assert cache.job("k") == run.id and time.monotonic() < run.done_at  # noted while running
    with job_journal(cache, "k") as job:  # the next run
        result = background_backend(srv).complete(request())
        job.ended()
    assert len(srv.billed) == 1 and srv.paid_twice() == {"id_known": [], "create_lost": []}
    assert result.text == run.final["output"][1]["content"][0]["text"]
    assert cache.job("k") is None
    srv.stop()  # cuts the first run's held poll short
    thread.join(10)


def test_background_response_still_running_at_the_timeout_is_cancelled(srv):
    srv.latency_s = 30
    with pytest.raises(TransientServiceError, match="cancelled it") as info:
        background_backend(srv).complete(request(timeout_s=0.3))
    [run] = srv.billed
    assert run.cancelled and run.id in str(info.value)
    assert srv.requests_to(f"{RESPONSES_PATH}/{run.id}/cancel", "POST")


def test_background_failed_polls_are_retried_not_created_again(srv):
    srv.latency_s = 0.2
    srv.enqueue(status=503, when=lambda r: r.method == "GET")
    srv.enqueue(drop=True, when=lambda r: r.method == "GET")
    result = background_backend(srv).complete(request())
    assert len(srv.billed) == 1 and len(srv.requests_to(RESPONSES_PATH, "POST")) == 1
    assert result.data is not None


def test_background_refusal_and_incomplete_raise_as_in_the_foreground(srv):
    srv.enqueue(refusal="I can't help with that.")
    with pytest.raises(RefusalError):
        background_backend(srv).complete(request())
    srv.enqueue(incomplete="max_output_tokens")
    with pytest.raises(IncompleteError, match="max_output_tokens"):
        background_backend(srv).complete(request())


def test_background_comes_from_config():
    section = LLMConfig.model_validate({"background": True, "pollIntervalS": 2})
    backend = make_responses_backend(section, {"OPENAI_API_KEY": KEY})
    assert (backend.background, backend.poll_interval_s) == (True, 2.0)
    assert make_responses_backend(LLMConfig(), {"OPENAI_API_KEY": KEY}).background is False


# -- openai-chat: the structured-output format each server takes --------------------------------

def formats_sent(srv: FakeOpenAI) -> list[str]:
    return [(r.body.get("response_format") or {}).get("type", "none")
            for r in srv.requests if r.path == CHAT_PATH]


def test_chat_falls_back_to_json_object_with_the_schema_like_llama_cpp_python(tmp_path):
    with FakeOpenAI(chat_formats=("text", "json_object")) as srv:
        backend = make_chat_backend(LLMConfig(base_url=srv.base_url),
                                    {"CLOOPS_STATE_DIR": str(tmp_path)})
        result = backend.complete(request(model="local"))
        assert formats_sent(srv) == ["json_schema", "json_object"]
        refused, taken = srv.requests
        assert refused.status == 500 and "Input should be 'text' or 'json_object'" in \
            json.dumps(refused.reply)
        assert taken.body["response_format"] == {"type": "json_object", "schema": PAGES_SCHEMA}
        assert json.dumps(PAGES_SCHEMA, separators=(",", ":")) in taken.body["messages"][0]["content"]
        assert result.data is not None and result.parse_error is None
        # remembered for this server: the next call, and a new backend (a later run), ask in
        # the accepted format at once
        backend.complete(request(model="local"))
        make_chat_backend(LLMConfig(base_url=srv.base_url + "/"),
                          {"CLOOPS_STATE_DIR": str(tmp_path)}).complete(request(model="local"))
        assert formats_sent(srv) == ["json_schema", "json_object", "json_object", "json_object"]
    assert json.loads((tmp_path / "chat-formats.json").read_text()) == \
        {srv.base_url: "json_object"}


def test_chat_server_taking_no_format_gets_the_schema_in_the_instructions(srv):
    srv.chat_formats = ("text",)
    answer = {"title": "Ark", "pages": [{"pageNumber": 1, "narration": "n", "mood": "calm"}] * 4}
    srv.responder = lambda path, body: f"Sure! Here you go:\n```json\n{json.dumps(answer)}\n```"
    backend = OpenAIChatBackend(base_url=srv.base_url, max_retries=0)
    assert backend.complete(request(model="local")).data == answer
    assert formats_sent(srv) == ["json_schema", "json_object", "none"]
    assert json.dumps(PAGES_SCHEMA, separators=(",", ":")) in srv.last.body["messages"][0]["content"]
    backend.complete(request(model="local"))
    assert formats_sent(srv)[3:] == ["none"]


def test_chat_server_error_that_is_not_about_the_format_is_transient_without_fallback(srv, chat):
    srv.enqueue(status=500)
    with pytest.raises(TransientServiceError):
        chat.complete(request())
    assert formats_sent(srv) == ["json_schema"]
    chat.complete(request())
    assert formats_sent(srv) == ["json_schema", "json_schema"]


def test_chat_backend_with_its_format_memory_pickles(tmp_path, srv):
    backend = make_chat_backend(LLMConfig(base_url=srv.base_url),
                                {"CLOOPS_STATE_DIR": str(tmp_path)})
    backend.complete(request())
    copy = pickle.loads(pickle.dumps(backend))
    assert copy.formats.get(srv.base_url) == "json_schema"
    assert copy.complete(request(schema=None)).text


# ---------------------------------------------------------------- answers not as documented (#24)

def test_a_responses_answer_without_output_fails_at_once_naming_endpoint_and_field(srv, backend):
    # the SDK builds its objects without validating: a missing field was an AttributeError
    srv.omit = ("output",)
    with pytest.raises(PermanentServiceError) as info:
        backend.complete(request())
    message = str(info.value)
    assert len(srv.bodies(RESPONSES_PATH)) == 1
    assert f"the answer of {srv.base_url} to POST /responses" in message
    assert "not what OpenAI's Responses API documents: the field 'output' (missing)" in message
    assert f"the server at OPENAI_BASE_URL ({srv.base_url}) does not speak" in message
    assert KEY not in message


def test_a_message_part_without_text_and_a_body_that_is_not_json_are_permanent(srv, backend):
    srv.omit = ("output.1.content.0.text",)
    with pytest.raises(PermanentServiceError, match=r"'output\.1\.content\.0\.text' \(missing\)"):
        backend.complete(request())
    srv.omit = ()
    srv.enqueue(body=b"<html>a proxy's login page</html>", headers={"content-type": "text/html"})
    with pytest.raises(PermanentServiceError, match="its body is not JSON"):
        backend.complete(request())


def test_a_chat_answer_without_choices_names_the_chat_endpoint_and_llm_base_url(srv):
    srv.omit = ("choices",)
    section = LLMConfig.model_validate({"backend": "openai-chat", "baseUrl": srv.base_url})
    chat = make_chat_backend(section, {})
    with pytest.raises(PermanentServiceError) as info:
        chat.complete(request())
    message = str(info.value)
    assert "POST /chat/completions" in message and "the field 'choices' (missing)" in message
    assert f"the server at llm.baseUrl ({srv.base_url}) does not speak the OpenAI Chat " \
           "Completions API" in message


def test_the_backend_imports_openai_without_aiohttp():
    """openai imports its aiohttp transport (for the async client's DefaultAioHttpClient) at
    import: the backend, which calls the sync client only, turns that one import off when
    nothing imported either yet (0.1-0.2 s of a build's first LLM call), and the sync client
    it makes is openai's own."""
    import subprocess
    import sys
    code = ("import sys, cloops.services.openai_backend as b, openai\n"
            "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
            "client = openai.OpenAI(api_key='sk-test', base_url='http://127.0.0.1:9/v1')\n"
            "assert type(client._client).__module__ == 'openai._base_client'\n"
            "try:\n"
            "    openai.DefaultAioHttpClient()\n"
            "except RuntimeError as exc:\n"
            "    assert 'aiohttp' in str(exc)\n"
            "else:\n"
            "    raise AssertionError('the aiohttp client was made')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
