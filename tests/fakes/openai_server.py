"""A fake OpenAI server on 127.0.0.1 that speaks the wire protocol, for tests through the real SDK.

openai >= 3 sends over ``httpx2`` (respx cannot intercept it), so tests point the SDK's
``base_url`` here instead::

    with FakeOpenAI() as srv:
        client = openai.OpenAI(api_key="sk-test", base_url=srv.base_url, max_retries=0)
        srv.enqueue(status=429, headers={"retry-after": "0"})
        ...
        assert srv.requests[-1].body["model"] == "gpt-5.1"

Endpoints: ``POST /v1/responses`` (a Response object of the real shape: a ``reasoning`` item
first, then the ``message``) and ``POST /v1/chat/completions`` (a ``chat.completion``). Each
request takes the next scripted reply from the queue (:meth:`FakeOpenAI.enqueue`); when the queue
is empty the default responder answers with a schema-valid JSON instance of the request's
``text.format.schema`` (``response_format.json_schema.schema`` for chat) or plain text.
Shapes follow openai-python 3.x ``types/responses/response.py`` and ``types/chat/chat_completion.py``.

Background mode (developers.openai.com, guides/background): ``POST /v1/responses`` with
``"background": true`` answers at once with the response ``queued`` (no output, no usage) and
its id; the model runs ``latency_s`` (or the reply's ``delay_s``) from the request's arrival,
whether or not its client stays. ``GET /v1/responses/{id}`` returns it ``in_progress`` until
then, and the finished response after; ``POST /v1/responses/{id}/cancel`` cancels it
(``cancelled``). Every model run is billed (``billed``, ``paid_twice``) from the moment its
request arrived, background or not, whether or not its client stays for the answer.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from .loopback import RecordedRequest, Reply as _Reply, ScriptedServer, without

RESPONSES_PATH = "/v1/responses"
CHAT_PATH = "/v1/chat/completions"
_STORED = re.compile(r"^/v1/responses/(?P<id>resp_[A-Za-z0-9]+)(?P<cancel>/cancel)?$")
PENDING = ("queued", "in_progress")  # a background response not finished yet


@dataclass
class Reply(_Reply):
    """A scripted reply (see :meth:`FakeOpenAI.enqueue`)."""

    text: str | None = None
    refusal: str | None = None
    incomplete: str | None = None
    usage: dict[str, int] | None = None
    model: str | None = None


_ERROR_TYPES = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", None),  # message built from the key
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Project does not have access to this model."),
    404: ("invalid_request_error", "model_not_found",
          "The model does not exist or you do not have access to it."),
    408: ("server_error", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_body(status: int, message: str | None = None, *, code: str | None = None,
               type_: str | None = None, param: str | None = None) -> dict:
    """The JSON body OpenAI sends with an error status: ``{"error": {message, type, param, code}}``."""
    d_type, d_code, d_msg = _ERROR_TYPES.get(status, ("invalid_request_error", None, "Error."))
    return {"error": {"message": message or d_msg or "Error.", "type": type_ or d_type,
                      "param": param, "code": code if code is not None else d_code}}


def llama_cpp_python_refusal(fmt: str, accepted: tuple[str, ...]) -> dict:
    """The body the llama-cpp-python server (``python -m llama_cpp.server``) answers, with HTTP
    500, to a ``response_format`` type it does not take: its ``RouteErrorHandler``
    (``llama_cpp/server/errors.py``) wraps the request's pydantic validation error as an
    ``internal_server_error`` (ggml-org/llama.cpp#23463)."""
    allowed = " or ".join(f"'{a}'" for a in accepted)
    detail = [{"type": "literal_error", "loc": ["body", "response_format", "type"],
               "msg": f"Input should be {allowed}", "input": fmt,
               "ctx": {"expected": allowed}}]
    return {"error": {"message": str(detail), "type": "internal_server_error", "param": None,
                      "code": None}}


# ---------------------------------------------------------------- schema instance generator

def _words(name: str) -> str:
    out = []
    for i, ch in enumerate(name.replace("_", " ").replace("-", " ")):
        if ch.isupper() and i and name[i - 1].islower():
            out.append(" ")
        out.append(ch.lower())
    return "".join(out).strip() or "value"


class _Generator:
    """Make a JSON instance of a (strict-subset) JSON schema: every property present, strings
    readable and derived from the property name, integers counting from 1 per property name,
    arrays of 3 items (clamped to minItems/maxItems), enums honoured (cycling), booleans false.

    A string with a ``pattern`` is an id: ``id-1``, ``id-2``, ``id-3`` in turn, across the whole
    answer and every answer, so ids one answer defines (a cast) are the ids another refers to
    (a page plan's panels)."""

    ID_POOL = 3

    def __init__(self, root: dict):
        self.root = root
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    def _resolve(self, schema: dict) -> dict:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 20:
            ref = schema["$ref"]
            node: Any = self.root
            if ref.startswith("#"):
                for part in [p for p in ref[1:].split("/") if p]:
                    node = node[part.replace("~1", "/").replace("~0", "~")]
            schema, seen = node, seen + 1
        return schema

    def make(self, schema: Any, name: str = "value") -> Any:
        schema = self._resolve(schema) if isinstance(schema, dict) else {}
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            values = schema["enum"]
            return values[(self._count(name + "#enum") - 1) % len(values)]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                branches = [b for b in schema[key] if self._resolve(b).get("type") != "null"]
                return self.make((branches or schema[key])[0], name)
        type_ = schema.get("type")
        if isinstance(type_, list):
            non_null = [t for t in type_ if t != "null"]
            type_ = non_null[0] if non_null else "null"
        if type_ is None:
            type_ = ("object" if "properties" in schema else
                     "array" if "items" in schema else "string")
        if type_ == "object":
            props = schema.get("properties") or {}
            return {key: self.make(sub, key) for key, sub in props.items()}
        if type_ == "array":
            n = 3
            if "minItems" in schema:
                n = max(n, schema["minItems"])
            if "maxItems" in schema:
                n = min(n, schema["maxItems"])
            item_name = name[:-1] if name.endswith("s") and len(name) > 3 else f"{name} item"
            return [self.make(schema.get("items", {}), item_name) for _ in range(n)]
        if type_ in ("integer", "number"):
            value = self._count(name)
            if "minimum" in schema:
                value = max(value, schema["minimum"])
            if "maximum" in schema:
                value = min(value, schema["maximum"])
            return int(value) if type_ == "integer" else float(value)
        if type_ == "boolean":
            return False
        if type_ == "null":
            return None
        if "pattern" in schema:
            return f"id-{(self._count('#id') - 1) % self.ID_POOL + 1}"
        text = f"{_words(name).capitalize()} {self._count(name)}"
        min_len = schema.get("minLength", 0)
        if len(text) < min_len:
            text = (text + " " + "lorem ipsum" * min_len)[:min_len]
        if "maxLength" in schema:
            text = text[:schema["maxLength"]]
        return text


def instance_for(schema: dict) -> Any:
    """Return a JSON instance of ``schema`` (see :class:`_Generator`)."""
    return _Generator(schema).make(schema, "value")


# ---------------------------------------------------------------- reply bodies

def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _response_object(req: dict, reply: Reply, text: str | None) -> dict:
    """A Responses API ``response`` object for request body ``req``."""
    effort = (req.get("reasoning") or {}).get("effort")
    text_cfg = req.get("text") or {}
    fmt = text_cfg.get("format") or {"type": "text"}
    msg_text = text or ""
    reasoning_tokens = 0 if effort == "none" else 64
    input_text = json.dumps(req.get("input", ""))
    usage = {"input_tokens": _tokens(input_text),
             "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": _tokens(msg_text) + reasoning_tokens,
             "output_tokens_details": {"reasoning_tokens": reasoning_tokens}}
    if reply.usage:
        usage.update({k: v for k, v in reply.usage.items() if k != "reasoning_tokens"})
        if "reasoning_tokens" in reply.usage:
            usage["output_tokens_details"] = {"reasoning_tokens": reply.usage["reasoning_tokens"]}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    output: list[dict] = [{"type": "reasoning", "id": _new_id("rs"), "summary": []}]
    status, incomplete_details = "completed", None
    if reply.refusal is not None:
        output.append({"type": "message", "id": _new_id("msg"), "status": "completed",
                       "role": "assistant",
                       "content": [{"type": "refusal", "refusal": reply.refusal}]})
    elif reply.incomplete is not None:
        status, incomplete_details = "incomplete", {"reason": reply.incomplete}
        if text is not None:  # partial text; otherwise the reasoning used up the budget
            output.append({"type": "message", "id": _new_id("msg"), "status": "incomplete",
                           "role": "assistant",
                           "content": [{"type": "output_text", "text": msg_text,
                                        "annotations": [], "logprobs": []}]})
    else:
        output.append({"type": "message", "id": _new_id("msg"), "status": "completed",
                       "role": "assistant",
                       "content": [{"type": "output_text", "text": msg_text,
                                    "annotations": [], "logprobs": []}]})
    now = int(time.time())
    return {
        "id": _new_id("resp"), "object": "response", "created_at": now, "status": status,
        "background": False, "completed_at": now if status == "completed" else None,
        "error": None, "incomplete_details": incomplete_details, "instructions": None,
        "max_output_tokens": req.get("max_output_tokens"), "max_tool_calls": None,
        "model": reply.model or req.get("model", "gpt-5.1"), "output": output,
        "parallel_tool_calls": True, "previous_response_id": None, "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": effort, "summary": None}, "safety_identifier": None,
        "service_tier": "default", "store": True, "temperature": 1.0,
        "text": {"format": fmt, "verbosity": text_cfg.get("verbosity", "medium")},
        "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0,
        "truncation": "disabled", "usage": usage, "user": None, "metadata": {},
    }


def _chat_object(req: dict, reply: Reply, text: str | None) -> dict:
    """A ``chat.completion`` object for request body ``req``."""
    content = None if reply.refusal is not None else (text or "")
    finish = "length" if reply.incomplete is not None else "stop"
    if reply.incomplete == "content_filter":
        finish = "content_filter"
    prompt = _tokens(json.dumps(req.get("messages", "")))
    completion = _tokens(content or reply.refusal or "")
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0,
                                           "rejected_prediction_tokens": 0}}
    if reply.usage:
        usage.update({k: v for k, v in reply.usage.items() if k != "reasoning_tokens"})
        if "reasoning_tokens" in reply.usage:
            usage["completion_tokens_details"]["reasoning_tokens"] = reply.usage["reasoning_tokens"]
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": _new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
        "model": reply.model or req.get("model", "gpt-5.1"),
        "choices": [{"index": 0, "logprobs": None, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content,
                                 "refusal": reply.refusal, "annotations": []}}],
        "usage": usage, "service_tier": "default", "system_fingerprint": None,
    }


def _request_schema(path: str, req: dict) -> dict | None:
    if path == CHAT_PATH:
        rf = req.get("response_format") or {}
        if rf.get("type") == "json_object":  # llama-cpp-python's form: the schema beside it
            return rf.get("schema")
        return (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" \
            else None
    fmt = (req.get("text") or {}).get("format") or {}
    return fmt.get("schema") if fmt.get("type") == "json_schema" else None


def _last_user_text(path: str, req: dict) -> str:
    items = req.get("messages") if path == CHAT_PATH else req.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def request_images(path: str, req: dict) -> list[tuple[str, bytes]]:
    """The images a request shows the model, in order, as ``(mime type, bytes)``: the
    Responses API's ``input_image`` parts and Chat Completions' ``image_url`` parts, decoded
    from their data URLs.

    Raises:
        ValueError: a part is malformed as the real API would reject it (no ``detail`` on an
            ``input_image``, an image URL that is not a base64 data URL).
    """
    import base64
    import re
    items = req.get("messages") if path == CHAT_PATH else req.get("input")
    out: list[tuple[str, bytes]] = []
    for item in items if isinstance(items, list) else []:
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "input_image":
                if part.get("detail") not in ("low", "high", "auto", "original"):
                    raise ValueError("input_image.detail is required: low, high, auto or original")
                url = part.get("image_url")
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url")
            else:
                continue
            m = re.fullmatch(r"data:(image/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=]+)", url or "")
            if m is None:
                raise ValueError(f"invalid image URL {str(url)[:40]!r}: expected a base64 data URL")
            out.append((m.group(1), base64.b64decode(m.group(2), validate=True)))
    return out


def default_text(path: str, req: dict) -> str:
    """What the default responder says: a schema instance as JSON text, or plain text."""
    schema = _request_schema(path, req)
    if schema is not None:
        return json.dumps(instance_for(schema), ensure_ascii=False)
    return f"Fake reply to: {_last_user_text(path, req)[:80]}"


def distinct_text(path: str, req: dict, transform: Any = None) -> str:
    """The default answer with every string tagged by a hash of the request's input, so that
    different requests never get equal answers (nothing downstream is deduplicated).
    ``transform(data, req)`` may reshape the JSON answer before tagging."""
    import hashlib
    text = default_text(path, req)
    tag = hashlib.sha256(json.dumps(req.get("input") or req.get("messages"),
                                    sort_keys=True).encode()).hexdigest()[:8]
    try:
        data = json.loads(text)
    except ValueError:
        return f"{text} [{tag}]"
    if transform is not None:
        data = transform(data, req)

    def walk(v: Any, schema: Any) -> Any:
        schema = schema if isinstance(schema, dict) else {}
        if isinstance(v, str):  # ids and enum values stay valid, as a real model keeps them
            return v if "pattern" in schema or "enum" in schema else f"{v} [{tag}]"
        if isinstance(v, list):
            return [walk(x, schema.get("items")) for x in v]
        if isinstance(v, dict):
            props = schema.get("properties") or {}
            return {k: walk(x, props.get(k)) for k, x in v.items()}
        return v
    return json.dumps(walk(data, _request_schema(path, req)))


# ---------------------------------------------------------------- background responses

@dataclass
class ModelRun:
    """One run of the model the fake bills: a background response or a foreground call.

    Attributes:
        request: the request that started it.
        final: the finished ``response`` (or ``chat.completion``) object.
        done_at: ``time.monotonic()`` from which it is finished.
        background: True for a background response (created, then polled).
        cancelled: cancelled before it finished.
        polls: ``GET /v1/responses/{id}`` requests that saw it.
    """

    request: RecordedRequest
    final: dict
    done_at: float = 0.0
    background: bool = False
    cancelled: bool = False
    polls: int = 0

    @property
    def id(self) -> str:
        return self.final["id"]

    @property
    def answered(self) -> bool:
        """Whether the reply that carried its id (a background create) or its answer (a
        foreground call) was sent in full to the client."""
        return self.request.status is not None

    @property
    def fingerprint(self) -> str:
        return json.dumps(self.request.body, sort_keys=True)

    def state(self, now: float) -> dict:
        """The response as ``GET /v1/responses/{id}`` shows it ``now``."""
        if self.cancelled:
            return {**self.final, "status": "cancelled", "output": [], "usage": None,
                    "completed_at": None, "incomplete_details": None}
        if now >= self.done_at:
            return self.final
        return {**self.final, "status": "in_progress", "output": [], "usage": None,
                "completed_at": None, "incomplete_details": None}


# ---------------------------------------------------------------- the server

class FakeOpenAI(ScriptedServer):
    """A scriptable fake OpenAI API on ``127.0.0.1`` (ephemeral port), in a background thread
    (:class:`tests.fakes.loopback.ScriptedServer`).

    Args:
        gate: a :class:`tests.fakes.gate.Gate` (shared with other fakes) that every request
            passes before it is handled, to hold requests at a chosen moment.
        latency_s: every reply is sent this long after its request arrived (a model's think
            time; the fake's own work happens within it).
        responder: ``responder(path, body) -> str | None``: the output text for requests with
            no queued reply (None: the default schema instance).
        chat_formats: the ``response_format.type`` values ``/v1/chat/completions`` accepts;
            another is refused the way the llama-cpp-python server refuses ``json_schema``
            (HTTP 500, :func:`llama_cpp_python_refusal`). ``("text", "json_object")`` is that
            server, which takes ``{"type": "json_object", "schema": ...}``.

    Attributes:
        base_url: ``"http://127.0.0.1:PORT/v1"`` to pass to ``openai.OpenAI(base_url=...)``.
        requests: every :class:`RecordedRequest` received, in order (faults included); a
            request's ``status`` (and ``reply``) is set once its reply was sent in full; an
            answered request's ``images`` are the images it showed the model
            (:func:`request_images`: ``[(mime type, bytes)]``).
        answered: the requests whose reply was sent in full.
        count: ``len(requests)``.

    Use as a context manager (``with FakeOpenAI() as srv:``) or call :meth:`start` /
    :meth:`stop`.
    """

    reply_class = Reply
    bytes_content_type = "application/json"
    thread_name = "fake-openai"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, gate: Any = None,
                 latency_s: float = 0.0, responder: Any = None,
                 chat_formats: tuple[str, ...] = ("text", "json_object", "json_schema")):
        super().__init__(gate, host=host, port=port, latency_s=latency_s)
        self.responder = responder
        self.chat_formats = chat_formats
        self.runs: list[ModelRun] = []
        self.stored: dict[str, ModelRun] = {}
        # dotted fields left out of every answer built (``("output",)``): an answer not as the
        # API documents it
        self.omit: tuple[str, ...] = ()

    # billing
    @property
    def billed(self) -> list[ModelRun]:
        """Every model run, in order of arrival (background or not, answered or not: the
        model runs on when its client leaves)."""
        with self.lock:
            return sorted(self.runs, key=lambda r: r.request.at)

    def paid_twice(self) -> dict[str, list[ModelRun]]:
        """The model runs made again for a request already billed, in two lists: ``"id_known"``
        (an earlier run of it was a background response whose create reached the client: its
        id could have been resumed) and ``"create_lost"`` (no earlier run's id or answer
        reached the client: it died, or gave up, inside the call's own round trip). A second
        foreground run after a first one's answer was delivered is ``"id_known"`` too."""
        out: dict[str, list[ModelRun]] = {"id_known": [], "create_lost": []}
        seen: dict[str, list[ModelRun]] = {}
        for run in self.billed:
            earlier = seen.setdefault(run.fingerprint, [])
            if earlier:
                known = any(r.answered for r in earlier)
                out["id_known" if known else "create_lost"].append(run)
            earlier.append(run)
        return out

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    # scripting
    def enqueue(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
                delay_s: float = 0, drop: bool = False, text: str | None = None,
                refusal: str | None = None, incomplete: str | None = None, *,
                usage: dict[str, int] | None = None, model: str | None = None,
                when: Callable[[RecordedRequest], bool] | None = None) -> None:
        """Queue the reply to the next request (first in, first out, any endpoint).

        Args:
            status: HTTP status. Non-200 without ``body`` sends OpenAI's error JSON for it
                (401's message echoes the bearer key, to test that it is never shown).
            body: the exact JSON body (dict/list) or bytes to send instead of a built one.
            headers: extra response headers, e.g. ``{"retry-after": "0"}``.
            delay_s: seconds to wait before answering (a slow reply; ``stop()`` cuts it short).
            drop: close the connection without any reply.
            text: the output text (default: the default responder's text).
            refusal: answer with a refusal content item (chat: ``message.refusal``).
            incomplete: answer ``status: "incomplete"`` with this ``incomplete_details.reason``
                (chat: ``finish_reason: "length"``, or ``"content_filter"``); with ``text``
                a partial message is included, else only the reasoning item.
            usage: override usage numbers (``input_tokens``, ``output_tokens``,
                ``reasoning_tokens``; for chat ``prompt_tokens``, ``completion_tokens``).
            model: the ``model`` to report (default: the requested one).
            when: only a request for which ``when(request)`` is true takes this reply (others
                take the next reply queued without ``when``, or the default); lets a test aim a
                fault at one call when tasks run in parallel.
        """
        self._script(Reply(status=status, body=body, headers=dict(headers or {}),
                           delay_s=delay_s, drop=drop, text=text, refusal=refusal,
                           incomplete=incomplete, usage=usage, model=model, when=when))

    def bodies(self, path: str | None = None) -> list[Any]:
        """The JSON bodies received (only those to ``path``, e.g. ``"/v1/responses"``, if given)."""
        with self.lock:
            return [r.body for r in self.requests if path is None or r.path == path]

    def reply_headers(self, rec: RecordedRequest) -> dict[str, str]:
        return {"x-request-id": _new_id("req")}

    def handle(self, handler, rec: RecordedRequest) -> None:
        stored = _STORED.match(rec.path)
        if stored and (rec.method == "GET" or (rec.method == "POST" and stored["cancel"])):
            return self._stored(handler, rec, stored["id"], bool(stored["cancel"]))
        body = rec.body if isinstance(rec.body, dict) else {}
        if rec.method == "POST" and rec.path == RESPONSES_PATH and body.get("background"):
            return self._background(handler, rec)
        super().handle(handler, rec)

    def _background(self, handler, rec: RecordedRequest) -> None:
        """A background create: answered at once (``queued``); the model runs on."""
        reply = self._pop(rec)
        if reply.drop:
            return self.drop(handler)
        status, payload, headers = self.render(rec, reply)
        if status != 200 or reply.body is not None:  # refused: nothing runs, nothing is billed
            if reply.delay_s:
                self._stopping.wait(max(0.0, rec.at + reply.delay_s - time.monotonic()))
            return self.send_json(handler, status, payload,
                                  {**self.reply_headers(rec), **headers})
        payload["background"] = True
        run = ModelRun(request=rec, final=payload, background=True,
                       done_at=rec.at + (reply.delay_s or self.latency_s))
        with self.lock:
            self.runs.append(run)
            self.stored[run.id] = run
            created = {**run.state(rec.at), "status": "queued"}
        self.send_json(handler, 200, created, {**self.reply_headers(rec), **headers})
        with self.lock:
            rec.reply = created

    def _stored(self, handler, rec: RecordedRequest, rid: str, cancel: bool) -> None:
        """``GET /v1/responses/{id}`` and ``POST /v1/responses/{id}/cancel``."""
        reply = self._pop(rec)  # a scripted fault or a slow reply may be aimed at a poll
        if reply.delay_s:
            self._stopping.wait(max(0.0, rec.at + reply.delay_s - time.monotonic()))
        if reply.drop:
            return self.drop(handler)
        headers = self.reply_headers(rec)
        if reply.status != 200 or reply.body is not None:
            status, payload, extra = self.render(rec, reply)
            return self.send_json(handler, status, payload, {**headers, **extra})
        with self.lock:
            run = self.stored.get(rid)
            if run is None:
                return self.send_json(handler, 404, error_body(
                    404, f"Response with id '{rid}' not found.", code=None), headers)
            now = time.monotonic()
            if cancel and now < run.done_at:
                run.cancelled = True
            if not cancel:
                run.polls += 1
            state = run.state(now)
        self.send_json(handler, 200, state, headers)

    def render(self, rec: RecordedRequest, reply: Reply) -> tuple[int, Any, dict[str, str]]:
        headers = dict(reply.headers)
        if reply.body is not None:
            return reply.status, reply.body, headers
        if reply.status != 200:
            message = None
            if reply.status == 401:
                key = rec.headers.get("authorization", "").removeprefix("Bearer ")
                # The real API masks the middle of the key; echoing it whole makes
                # "the key never reaches our messages" tests stricter.
                message = (f"Incorrect API key provided: {key}. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.")
            return reply.status, error_body(reply.status, message), headers
        req = rec.body if isinstance(rec.body, dict) else {}
        if rec.method != "POST" or rec.path not in (RESPONSES_PATH, CHAT_PATH):
            return 404, error_body(404, f"Invalid URL ({rec.method} {rec.path})",
                                   code="unknown_url"), headers
        try:
            rec.images = request_images(rec.path, req)
        except ValueError as exc:  # as the real API: 400 invalid_request_error
            return 400, error_body(400, str(exc), param="input"), headers
        fmt = (req.get("response_format") or {}).get("type", "text")
        if rec.path == CHAT_PATH and fmt not in self.chat_formats:
            return 500, llama_cpp_python_refusal(fmt, self.chat_formats), headers
        text = reply.text
        if text is None and reply.refusal is None and reply.incomplete is None:
            text = self.responder(rec.path, req) if self.responder else None
            if text is None:
                text = default_text(rec.path, req)
        build = _chat_object if rec.path == CHAT_PATH else _response_object
        payload = without(build(req, reply, text), self.omit)
        if not req.get("background"):
            # the model ran and produced its answer: billed, whether or not it reaches the client
            with self.lock:
                self.runs.append(ModelRun(request=rec, final=payload,
                                          done_at=rec.at + (reply.delay_s or self.latency_s)))
        return 200, payload, headers
