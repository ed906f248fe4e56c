"""OpenAI LLM backends: the Responses API (``openai``) and any Chat Completions server
(``openai-chat``: Ollama, vLLM, LM Studio, llama.cpp server).

Layer: **services**.

Both call the official ``openai`` SDK (>= 3, which sends over ``httpx2``) and convert its
exceptions into :mod:`cloops.core.errors` here, at the boundary::

    openai.AuthenticationError (401), PermissionDeniedError (403)   -> AuthError
    RateLimitError (429), InternalServerError (5xx), 408, 409,
    APIConnectionError, APITimeoutError                              -> TransientServiceError
    429 with code ``insufficient_quota`` (no credit left)            -> PermanentServiceError
    BadRequestError (400), NotFoundError (404),
    UnprocessableEntityError (422), other 4xx                        -> PermanentServiceError
    a ``refusal`` content item / ``message.refusal``                 -> RefusalError
    ``status == "incomplete"`` / ``finish_reason == "length"``       -> IncompleteError
    a background response still running at ``request.timeout_s``     -> TransientServiceError
                                                                        (after cancelling it)
    an answer not as the API documents (a field the backend reads
    missing or mistyped, a body that is not JSON)                    -> PermanentServiceError,
        naming the endpoint and the field; with a base URL of another host, "the server at
        OPENAI_BASE_URL (or llm.baseUrl) does not speak ...": a retry gets the same answer

The SDK builds its response objects without validating them (``construct``): a missing field
surfaces only when it is read, and a body whose content type is not JSON comes back as a
``str``. So the fields this backend reads are checked here (:func:`responses_problem`,
:func:`chat_problem`) before they are used.

API facts (checked against the openai-python 3.x sources, ``resources/responses`` and
``types/responses/response.py``, and the OpenAI Structured Outputs / GPT-5.1 docs): a Response's
``output`` may start with a ``reasoning`` item, so the text is read from ``output_text``; a
refusal is a message content item ``{"type": "refusal", "refusal": str}``; ``usage`` has
``input_tokens``, ``output_tokens`` and ``output_tokens_details.reasoning_tokens``. The SDK
itself retries 408/409/429/5xx and connection errors ``max_retries`` times.

Output that is not JSON when a schema was requested is not an error here: JSON is looked for
past a ``<think>`` block, a code fence or prose around it
(:func:`cloops.services.structured.extract_json`), and when there is none the result comes back
with ``parse_error`` set and ``data`` None, for the caller to re-ask like a schema violation
(the answer was paid for: its usage counts).

``openai-chat`` asks for JSON the way the server takes it
(:data:`cloops.services.structured.CHAT_FORMATS`): ``response_format`` ``json_schema``; when
the server rejects that the way llama-cpp-python's does (HTTP 500 "Input should be 'text' or
'json_object'"), ``{"type": "json_object", "schema": ...}``; when that is rejected too, the
schema in the system prompt alone. What a server accepted is remembered per base URL in
``build/.cloops/chat-formats.json`` (:class:`cloops.services.structured.FormatMemory`).

Background mode (``llm.background``, backend ``openai``): ``responses.create(...,
background=True)`` answers at once with the response ``queued`` or ``in_progress`` and its id,
which is noted in the call's job journal (:func:`cloops.services.cache.current_job`);
``responses.retrieve(id)`` is polled until the status is terminal (``completed``, ``failed``,
``incomplete``, ``cancelled``). A run killed meanwhile resumes that response next time instead of
paying for the call again. OpenAI stores a background response's data about 10 minutes for
polling (longer with ``store=true``, the API's default), so background mode is not Zero Data
Retention compatible (developers.openai.com/api/docs/guides/background).

``openai`` is imported lazily (on the first call): this module is imported on every doit start.
The API key is never put into a message, log line or repr.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ..core.errors import (AuthError, IncompleteError, InputError, PermanentServiceError,
                           RefusalError, ServiceError, TransientServiceError)
from .base import LLMRequest, LLMResult, Usage
from .cache import Job, current_job
from .registry import BackendSpec, register
from .structured import (CHAT_FORMATS, MEMORY_FILE, FormatMemory, JSONNotFound, extract_json,
                         format_rejected, schema_instructions)
from .wire import not_as_documented_fix, retry_after_s, scrub, tls_context


KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
CHAT_PLACEHOLDER_KEY = "not-needed"  # local Chat Completions servers ignore the key
CHAT_KEY_ENV = "LLM_API_KEY"  # the key of the Chat Completions server at llm.baseUrl
STATE_DIR_ENV = "CLOOPS_STATE_DIR"  # set by the hub: the project's build/.cloops
OPENAI_HOSTS = ("api.openai.com",)  # where OPENAI_API_KEY may be sent by openai-chat

# openai 3.x imports its aiohttp transport when it is imported (``openai/_base_client.py``:
# ``from ._vendor.httpx_aiohttp import ...``, for ``DefaultAioHttpClient``, an option of the
# async client), and with it aiohttp, before a build's first LLM call: ``import openai`` took
# 0.59 s with it and 0.47 s without on the benchmark machine (best of 8, alternating;
# ``benchmarks/README.md``). cloops calls the sync client only. When neither is imported yet,
# that one import fails as openai expects when aiohttp is not installed (a ``None`` in
# ``sys.modules`` stops an import): openai then defines ``DefaultAioHttpClient`` as a class
# that says so if it is used.
AIOHTTP_TRANSPORT = "openai._vendor.httpx_aiohttp"
if "openai" not in sys.modules and "aiohttp" not in sys.modules:
    sys.modules.setdefault(AIOHTTP_TRANSPORT, None)

PENDING = ("queued", "in_progress")  # a background response not finished yet
MISSING_KEY_MESSAGE = (f"{KEY_ENV} is not set: add it to the environment or to .env, "
                       "or set llm.backend to \"draft\" to build offline drafts.")

# Fixes named in IncompleteError messages, by ``incomplete_details.reason`` / ``finish_reason``.
_INCOMPLETE_FIXES = {
    "max_output_tokens": ("the output token limit was reached (reasoning tokens count towards "
                          "it). Fix: lower llm.reasoning (or llm.steps.<step>.reasoning), or ask "
                          "for less output (e.g. fewer pages or shorter narration)."),
    "length": ("the server's output token limit was reached. Fix: raise the model's max tokens "
               "/ context size on the server, or ask for less output."),
    "content_filter": ("the content filter stopped the output. Fix: reword the story input or "
                       "the system prompt."),
}

def _scrub(text: str, key: str | None) -> str:
    """Remove the API key (and anything key-shaped, e.g. OpenAI's masked echo) from ``text``."""
    return scrub(text, key if key != CHAT_PLACEHOLDER_KEY else None)


def _api_message(exc: Any) -> str:
    """The API's own error message (``error.message`` of the body), else the SDK's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        msg = body.get("message")
        if isinstance(msg, str) and msg:
            return msg
    return str(getattr(exc, "message", None) or exc)


def convert_error(exc: BaseException, *, backend: str, base_url: str | None,
                  key: str | None = None, timeout_s: float | None = None) -> ServiceError:
    """Turn an ``openai`` SDK exception into a :class:`cloops.core.errors.ServiceError`.

    ``backend`` is ``"openai"`` or ``"openai-chat"``; ``base_url`` is named in connection
    errors; ``key`` is scrubbed from every message. Returns (does not raise) the error.
    """
    import openai

    where = base_url or DEFAULT_BASE_URL
    common: dict[str, Any] = {"service": "llm", "backend": backend}
    local = backend != "openai"
    if isinstance(exc, openai.APITimeoutError):
        return TransientServiceError(
            f"LLM call to {where} timed out"
            + (f" after {timeout_s:g} s" if timeout_s else "")
            + ". Fix: retry later, or raise llm.timeoutS for slow steps.", **common)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {_scrub(str(cause), key)})" if cause else ""
        fix = ("check that the server is running and llm.baseUrl / OPENAI_BASE_URL is right"
               if local or base_url else "check the network connection")
        return TransientServiceError(f"could not reach the LLM service at {where}{detail}. "
                                     f"Fix: {fix}.", **common)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        msg = _scrub(_api_message(exc), key)
        code = getattr(exc, "code", None)
        common["status_code"] = status
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            what = ("rejected the API key" if status == 401
                    else "refused access with this API key")
            fix = (f"check {CHAT_KEY_ENV if local else KEY_ENV} (in the environment or .env): "
                   "set it to a valid key"
                   + (" for the server at llm.baseUrl" if local else
                      " from https://platform.openai.com/api-keys with access to the model")
                   + ", or set llm.backend to \"draft\" to build offline drafts")
            return AuthError(f"{where} {what} (HTTP {status}): {msg} Fix: {fix}.", **common)
        retry_after = retry_after_s(getattr(exc.response, "headers", None))
        if isinstance(exc, openai.RateLimitError):
            if code == "insufficient_quota" or getattr(exc, "type", None) == "insufficient_quota":
                return PermanentServiceError(
                    f"the OpenAI account has no quota left (HTTP 429 insufficient_quota): {msg} "
                    "Fix: add credit or raise the limit at https://platform.openai.com/settings"
                    "/organization/billing.", **common)
            return TransientServiceError(
                f"rate limited by {where} (HTTP 429): {msg} Fix: wait and re-run; lower the "
                "LLM concurrency if it keeps happening.", retry_after_s=retry_after, **common)
        if status in (408, 409) or status >= 500:
            return TransientServiceError(f"the LLM service at {where} failed (HTTP {status}): "
                                         f"{msg} Fix: re-run later.",
                                         retry_after_s=retry_after, **common)
        if isinstance(exc, openai.NotFoundError):
            fix = ("check llm.model (or llm.steps.<step>.model) names a model this key can use"
                   + (", and that llm.baseUrl ends with the server's /v1 path" if local else ""))
            return PermanentServiceError(f"{where} answered HTTP 404: {msg} Fix: {fix}.",
                                         **common)
        return PermanentServiceError(
            f"{where} rejected the request (HTTP {status}"
            + (f", {code}" if code else "") + f"): {msg} Fix: correct the model, reasoning, "
            "verbosity or schema settings named in the message.", **common)
    return PermanentServiceError(f"the OpenAI SDK failed: {type(exc).__name__}: "
                                 f"{_scrub(str(exc), key)}", **common)


def _parsed(text: str, request: LLMRequest) -> tuple[Any, str | None]:
    """``(data, parse_error)`` of an answer: the JSON in it when the request has a schema
    (``(None, None)`` without one; ``(None, error)`` when it holds no JSON)."""
    if request.schema is None:
        return None, None
    try:
        return extract_json(text), None
    except JSONNotFound as exc:
        return None, str(exc)


_ABSENT = object()


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` of an SDK object (or ``obj[name]`` of a dict); :data:`_ABSENT` when unset."""
    if isinstance(obj, dict):
        return obj.get(name, _ABSENT)
    return getattr(obj, name, _ABSENT)


def _wrong(name: str, value: Any, want: str) -> str:
    """``"the field 'name' (missing)"`` or ``"... (a dict, not a list)"``."""
    how = ("missing" if value is _ABSENT or value is None
           else f"a {type(value).__name__}, not {want}")
    return f"the field '{name}' ({how})"


def _not_json(body: Any) -> str | None:
    """The problem of an answer the SDK returned as text (its content type was not JSON)."""
    if isinstance(body, (str, bytes)):
        start = body[:60] if isinstance(body, str) else body[:60].decode("utf-8", "replace")
        return f"its body is not JSON (it began {start!r})"
    return None


def responses_problem(response: Any) -> str | None:
    """What makes a Responses API answer unreadable, as a phrase naming the field
    (``"the field 'output' (missing)"``), or None when every field this backend reads is as
    documented (openai-python ``types/responses/response.py``: ``output`` a list of items with a
    ``type``; a ``message`` item's ``content`` a list of parts; ``output_text`` parts carry a
    string ``text``, ``refusal`` parts a string ``refusal``; ``status`` a string)."""
    problem = _not_json(response)
    if problem:
        return problem
    status = _field(response, "status")
    if status is not _ABSENT and status is not None and not isinstance(status, str):
        return _wrong("status", status, "a string")
    output = _field(response, "output")
    if (output is _ABSENT or output is None) and status in PENDING:
        return None  # a background response still running has no output yet
    if not isinstance(output, list):
        return _wrong("output", output, "a list")
    for i, item in enumerate(output):
        kind = _field(item, "type")
        if not isinstance(kind, str):
            return _wrong(f"output.{i}.type", kind, "a string")
        if kind != "message":
            continue
        content = _field(item, "content")
        if not isinstance(content, list):
            return _wrong(f"output.{i}.content", content, "a list")
        for k, part in enumerate(content):
            key = {"output_text": "text", "refusal": "refusal"}.get(_field(part, "type"))
            if key is not None and not isinstance(_field(part, key), str):
                return _wrong(f"output.{i}.content.{k}.{key}", _field(part, key), "a string")
    return None


def chat_problem(completion: Any) -> str | None:
    """What makes a ``chat.completion`` answer unreadable, as a phrase naming the field, or None
    (openai-python ``types/chat/chat_completion.py``: ``choices`` a list; each choice a
    ``message`` whose ``content`` is a string or null)."""
    problem = _not_json(completion)
    if problem:
        return problem
    choices = _field(completion, "choices")
    if not isinstance(choices, list):
        return _wrong("choices", choices, "a list")
    if not choices:
        return None  # an empty list is an answer: "no choices" (the model is not loaded)
    message = _field(choices[0], "message")
    if message is _ABSENT or message is None or isinstance(message, (str, list, int, float)):
        return _wrong("choices.0.message", message, "an object")
    content = _field(message, "content")
    if content is not _ABSENT and content is not None and not isinstance(content, str):
        return _wrong("choices.0.message.content", content, "a string")
    return None


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class _SDKBackend:
    """Shared client handling: the ``openai.OpenAI`` client is made on the first call."""

    name = ""
    offline = False
    api = "OpenAI's API"  # what the server at base_url is expected to speak (named in errors)
    base_url_source = BASE_URL_ENV  # where base_url came from (a factory sets llm.baseUrl)

    def __init__(self, *, api_key: str, base_url: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 2):
        self._api_key = api_key
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return (f"{type(self).__name__}(base_url={self.base_url or DEFAULT_BASE_URL!r}, "
                f"max_retries={self.max_retries})")

    def __getstate__(self) -> dict:
        # picklable for doit's process-parallel mode: the client and lock are remade
        state = dict(self.__dict__)
        state["_client"] = None
        state.pop("_lock", None)
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client of the calling thread: one per worker thread, because
        one client's connection pool lock, shared by dozens of threads, serializes them."""
        local = self.__dict__.setdefault("_local", threading.local())
        client = getattr(local, "client", None)
        if client is None:
            import openai
            client = local.client = openai.OpenAI(
                api_key=self._api_key, base_url=self.base_url, timeout=self.timeout_s,
                max_retries=self.max_retries,
                # the SDK's default httpx client, with one TLS context for every thread:
                # building a context (loading the CA bundle) costs ~40 ms of CPU per client
                http_client=openai.DefaultHttpxClient(verify=tls_context()))
            self._client = client
        return client

    # a canned answer, parsed once by warm_up()
    _WARM_BODY: dict = {}
    # a request shaped like every real one (system + user message, reasoning, verbosity, a
    # strict JSON schema), so warm_up() walks the SDK's request types too
    _WARM_REQUEST = LLMRequest(
        system="warm-up", user="warm-up", model="warm-up", reasoning="low", verbosity="low",
        schema={"type": "object", "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"], "additionalProperties": False}, schema_name="warm_up")

    @staticmethod
    def request_params(request: LLMRequest) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _warm_call(cls, client: Any) -> None:
        raise NotImplementedError

    @classmethod
    def warm_up(cls) -> None:
        """Do once, in the calling (main) thread, what every worker thread's first call would
        otherwise do at the same moment, before worker threads call the service:

        - load the CA bundle into the shared TLS context (:func:`cloops.services.wire.tls_context`)
          and import the SDK's HTTP transport, by making (and closing) one real client;
        - send one request shaped like the real ones (:attr:`_WARM_REQUEST`) and parse one
          canned response (:attr:`_WARM_BODY`) through the SDK. The SDK resolves the type hints
          of its request ``TypedDict`` s and builds a pydantic ``TypeAdapter`` per response type
          on first use, caching both with unlocked ``functools.lru_cache`` s (openai
          ``_utils/_transform.py``, ``_models._CachedTypeAdapter``): dozens of threads making
          their first call at once would each build them (measured: 80 ms of CPU for the first
          call after the import, 3 ms for later ones).

        The request goes to ``httpx.MockTransport``: nothing leaves the process. Best effort: any
        failure is ignored (the first real call then does the work).
        """
        import httpx
        import openai
        body = cls._WARM_BODY
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
        try:
            openai.DefaultHttpxClient(verify=tls_context()).close()
            with httpx.Client(transport=transport) as http:
                client = openai.OpenAI(api_key="warm-up", base_url="http://warm-up.invalid/v1",
                                       max_retries=0, http_client=http)
                cls._warm_call(client)
        except Exception:  # noqa: BLE001 - an optimisation must never stop a build
            pass

    def _convert(self, exc: BaseException, request: LLMRequest) -> ServiceError:
        return convert_error(exc, backend=self.name, base_url=self.base_url, key=self._api_key,
                             timeout_s=request.timeout_s)

    def _error(self, cls: type[ServiceError], message: str, **kw: Any) -> ServiceError:
        return cls(_scrub(message, self._api_key), service="llm", backend=self.name, **kw)

    def _not_as_documented(self, problem: str, endpoint: str) -> ServiceError:
        """The permanent error of an answer that is not what :attr:`api` documents: names the
        server, the endpoint (``"POST /responses"``) and the field, and the fix."""
        where = self.base_url or DEFAULT_BASE_URL
        fix = not_as_documented_fix(self.api, base_url=self.base_url,
                                    source=self.base_url_source, official_hosts=OPENAI_HOSTS,
                                    package="openai")
        return self._error(PermanentServiceError,
                           f"the answer of {where} to {endpoint} is not what {self.api} "
                           f"documents: {problem}. Fix: {fix}")


class OpenAIResponsesBackend(_SDKBackend):
    """LLM backend on the OpenAI Responses API (``POST {base_url}/responses``).

    Args:
        api_key: the OpenAI key (kept private: never in messages or repr).
        base_url: API root ending in ``/v1``; None for ``https://api.openai.com/v1``.
        timeout_s: client default timeout in seconds (each call uses ``request.timeout_s``).
        max_retries: the SDK's own retries of 408/409/429/5xx and connection errors.
        background: create responses in background mode and poll them (module doc).
        poll_interval_s: seconds between ``responses.retrieve`` polls in background mode.

    Sends ``model``, ``input`` (a system and a user message; with ``request.images`` the user
    message's content is an ``input_text`` part and ``input_image`` parts:
    :func:`responses_user_content`), ``reasoning.effort`` (omitted when
    None), ``text.format`` (strict ``json_schema``, omitted without a schema) and
    ``text.verbosity`` (omitted when None); ``background: true`` in background mode.
    """

    name = "openai"
    api = "OpenAI's Responses API"

    def __init__(self, *, api_key: str, base_url: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 2, background: bool = False, poll_interval_s: float = 1.0):
        super().__init__(api_key=api_key, base_url=base_url, timeout_s=timeout_s,
                         max_retries=max_retries)
        self.background = background
        self.poll_interval_s = max(0.0, float(poll_interval_s))

    # a minimal ``response`` object (openai-python ``types/responses/response.py``)
    _WARM_BODY = {
        "id": "resp_warm", "object": "response", "created_at": 0, "status": "completed",
        "model": "warm-up", "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "output": [{"type": "reasoning", "id": "rs_warm", "summary": []},
                   {"type": "message", "id": "msg_warm", "status": "completed",
                    "role": "assistant", "content": [{"type": "output_text", "text": "{}",
                                                      "annotations": []}]}],
        "usage": {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 2}}

    @classmethod
    def _warm_call(cls, client: Any) -> None:
        client.responses.create(**cls.request_params(cls._WARM_REQUEST)).output_text

    @staticmethod
    def request_params(request: LLMRequest) -> dict[str, Any]:
        """Return the keyword arguments of ``client.responses.create`` for ``request``."""
        params: dict[str, Any] = {
            "model": request.model,
            "input": [{"role": "system", "content": request.system},
                      {"role": "user", "content": responses_user_content(request)}],
        }
        if request.reasoning is not None:
            params["reasoning"] = {"effort": request.reasoning}
        text: dict[str, Any] = {}
        if request.schema is not None:
            text["format"] = {"type": "json_schema", "name": request.schema_name,
                              "schema": request.schema, "strict": True}
        if request.verbosity is not None:
            text["verbosity"] = request.verbosity
        if text:
            params["text"] = text
        return params

    def complete(self, request: LLMRequest) -> LLMResult:
        """Ask the model; return its text, the parsed JSON (with a schema), usage and model.

        Raises:
            AuthError: key rejected (401/403).
            TransientServiceError: 429, 5xx, timeout or connection error after the SDK's
                retries; ``retry_after_s`` is the server's ``retry-after`` when sent.
            RefusalError: the model refused (the refusal text is in the message).
            IncompleteError: ``status == "incomplete"`` (names the reason and the fix).
            PermanentServiceError: 400/404/422, ``status == "failed"`` and other errors.
            TransientServiceError (background mode): the response was still running after
                ``request.timeout_s`` (it is cancelled).

        Output that holds no JSON although a schema was given is returned with
        ``parse_error`` set (module doc), not raised.
        """
        import openai

        if self.background:
            return self._complete_in_background(request)
        try:
            response = self.client.responses.create(**self.request_params(request),
                                                    timeout=request.timeout_s)
        except openai.OpenAIError as exc:
            raise self._convert(exc, request) from None
        return self._result(response, request, "POST /responses")

    # -- background mode -----------------------------------------------------------------------

    def _complete_in_background(self, request: LLMRequest) -> LLMResult:
        """Create (or resume) a background response, note its id, poll it to a terminal status.

        The note is ended here when nothing can come of the response (failed, cancelled, gone,
        refused, incomplete); on success the hub ends it once the answer is cached.
        """
        import openai

        deadline = time.monotonic() + request.timeout_s
        job = current_job()
        response = self._resume(job, request)
        created = None
        if response is None:
            try:
                response = created = self.client.responses.create(
                    **self.request_params(request), background=True,
                    timeout=min(request.timeout_s, 60.0))
            except openai.OpenAIError as exc:
                raise self._convert(exc, request) from None
            if getattr(response, "status", None) in PENDING:
                if not isinstance(getattr(response, "id", None), str):
                    raise self._not_as_documented("the field 'id' (missing)", "POST /responses")
                job.started(response.id)  # a kill from here on resumes it
        response = self._poll(response, deadline, request, job)
        try:
            return self._result(response, request, "POST /responses" if response is created
                                else f"GET /responses/{getattr(response, 'id', '{id}')}")
        except PermanentServiceError:
            job.ended()
            raise

    def _resume(self, job: Job, request: LLMRequest) -> Any:
        """The background response an interrupted run created for this same request, if it can
        still give its answer (pending or finished); None otherwise (and the note is dropped).

        Raises:
            TransientServiceError: OpenAI could not be asked (the hub retries; creating a second
                response meanwhile would pay twice).
        """
        import openai

        rid = job.resumable()
        if rid is None:
            return None
        try:
            response = self.client.responses.retrieve(rid, timeout=min(request.timeout_s, 60.0))
        except openai.OpenAIError as exc:
            error = self._convert(exc, request)
            if isinstance(error, TransientServiceError):
                raise error from None
            response = None  # gone (404: expired or never stored) or refused: start afresh
        if response is None or getattr(response, "status", None) in ("failed", "cancelled"):
            job.ended()
            return None
        return response

    def _poll(self, response: Any, deadline: float, request: LLMRequest, job: Job) -> Any:
        """Retrieve ``response`` every :attr:`poll_interval_s` until its status is terminal;
        cancel it (and end its note) and raise when ``deadline`` passes.

        A failed poll (429/5xx/dropped connection) is retried until the deadline rather than
        raised: raising would make the caller create, and pay for, a second response.
        """
        import openai

        while getattr(response, "status", None) in PENDING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    self.client.responses.cancel(response.id, timeout=10.0)
                except openai.OpenAIError:
                    pass  # best effort: the timeout is what matters
                job.ended()
                raise self._error(
                    TransientServiceError,
                    f"the background response {response.id} of {request.model} was still "
                    f"{response.status!r} after {request.timeout_s:g} s; cancelled it. Fix: "
                    "re-run, or raise llm.timeoutS for slow steps.")
            time.sleep(min(self.poll_interval_s, remaining))
            try:
                response = self.client.responses.retrieve(
                    response.id, timeout=max(1.0, min(60.0, deadline - time.monotonic())))
            except openai.OpenAIError as exc:
                error = self._convert(exc, request)
                if not isinstance(error, TransientServiceError):
                    if isinstance(exc, openai.NotFoundError):
                        job.ended()  # expired or deleted: nothing left to resume
                    raise error from None
                pause = error.retry_after_s or self.poll_interval_s
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        return response

    def _result(self, response: Any, request: LLMRequest, endpoint: str) -> LLMResult:
        problem = responses_problem(response)
        if problem is not None:
            raise self._not_as_documented(problem, endpoint)
        usage = _responses_usage(getattr(response, "usage", None))
        status = getattr(response, "status", None)
        model = getattr(response, "model", None) or request.model
        if status == "cancelled":
            raise self._error(PermanentServiceError,
                              f"the background response {getattr(response, 'id', '?')} of "
                              f"{model} was cancelled before it finished. Fix: re-run; check "
                              "whether someone cancelled it.", usage=usage)
        if status == "failed":
            err = getattr(response, "error", None)
            detail = (f"{getattr(err, 'code', '')}: {getattr(err, 'message', '')}" if err
                      else "no error details")
            raise self._error(PermanentServiceError,
                              f"the model {model} failed to answer ({detail}). "
                              "Fix: re-run; if it persists, check the request settings.",
                              usage=usage)
        refusal = _find_refusal(getattr(response, "output", None) or [])
        if refusal is not None:
            raise self._error(RefusalError, f"the model {model} refused: {_shorten(refusal)!r}. "
                              "Fix: reword the story input or the step's system prompt.",
                              raw_output=refusal, usage=usage)
        text = response.output_text or ""
        if status == "incomplete":
            details = getattr(response, "incomplete_details", None)
            reason = getattr(details, "reason", None) or "unknown"
            fix = _INCOMPLETE_FIXES.get(reason, "Fix: re-run, or lower llm.reasoning.")
            raise self._error(IncompleteError,
                              f"the response of {model} is incomplete (reason: {reason}, "
                              f"{usage.output_tokens} output tokens of which "
                              f"{usage.reasoning_tokens} reasoning): {fix}",
                              raw_output=text, usage=usage)
        data, parse_error = _parsed(text, request)
        return LLMResult(text=text, data=data, usage=usage, model=model, parse_error=parse_error)


class OpenAIChatBackend(_SDKBackend):
    """LLM backend on any OpenAI-compatible Chat Completions server
    (``POST {base_url}/chat/completions``: Ollama, vLLM, LM Studio, llama.cpp server).

    Args:
        base_url: the server's API root, e.g. ``http://localhost:11434/v1`` (required).
        api_key: sent as the bearer token; local servers ignore it (``"not-needed"``).
        timeout_s / max_retries: as for :class:`OpenAIResponsesBackend`.
        formats: where to remember which structured-output format each server accepted
            (None: in memory only).

    Sends ``model``, ``messages`` (system, user) and, with a schema, the structured-output
    format the server takes (module doc): ``response_format`` ``{"type": "json_schema",
    "json_schema": {"name", "schema", "strict": true}}`` first. ``reasoning`` and
    ``verbosity`` are not sent (many such servers reject unknown fields). JSON is read past a
    leading ``<think>`` block, a code fence or prose.
    """

    name = "openai-chat"
    api = "the OpenAI Chat Completions API"

    # a minimal ``chat.completion`` object (openai-python ``types/chat/chat_completion.py``)
    _WARM_BODY = {
        "id": "chatcmpl_warm", "object": "chat.completion", "created": 0, "model": "warm-up",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "{}"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    @classmethod
    def _warm_call(cls, client: Any) -> None:
        client.chat.completions.create(**cls.request_params(cls._WARM_REQUEST))

    def __init__(self, *, base_url: str, api_key: str = CHAT_PLACEHOLDER_KEY,
                 timeout_s: float = 300.0, max_retries: int = 2,
                 formats: FormatMemory | None = None):
        super().__init__(api_key=api_key or CHAT_PLACEHOLDER_KEY, base_url=base_url,
                         timeout_s=timeout_s, max_retries=max_retries)
        self.formats = formats or FormatMemory(None)

    @staticmethod
    def request_params(request: LLMRequest, fmt: str = "json_schema") -> dict[str, Any]:
        """Return the keyword arguments of ``client.chat.completions.create``, asking for JSON
        in format ``fmt`` (one of :data:`cloops.services.structured.CHAT_FORMATS`) when the
        request has a schema."""
        system = request.system
        if request.schema is not None and fmt != "json_schema":
            system += schema_instructions(request.schema)
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": chat_user_content(request)}],
        }
        if request.schema is not None and fmt == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema,
                                "strict": True}}
        elif request.schema is not None and fmt == "json_object":
            params["response_format"] = {"type": "json_object", "schema": request.schema}
        return params

    def _create(self, request: LLMRequest) -> Any:
        """Send the request in the first format the server takes, starting with the one it
        accepted last (:class:`cloops.services.structured.FormatMemory`); remember it.

        Raises:
            openai.OpenAIError: as the SDK raised it (the last format's rejection included).
        """
        import openai

        if request.schema is None:  # plain text: no format to fall back from
            return self.client.chat.completions.create(**self.request_params(request),
                                                       timeout=request.timeout_s)
        known = self.formats.get(self.base_url)
        formats = CHAT_FORMATS[CHAT_FORMATS.index(known):] if known else CHAT_FORMATS
        for fmt in formats:
            try:
                completion = self.client.chat.completions.create(
                    **self.request_params(request, fmt), timeout=request.timeout_s)
            except openai.APIStatusError as exc:
                body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body)
                if fmt != formats[-1] and format_rejected(exc.status_code,
                                                          f"{body} {exc.message}"):
                    continue  # this server does not take that response_format: the next one
                raise
            self.formats.set(self.base_url, fmt)
            return completion
        raise AssertionError("unreachable: the last format's error is raised")  # pragma: no cover

    def complete(self, request: LLMRequest) -> LLMResult:
        """Ask the model; return its text, the parsed JSON (with a schema), usage and model.

        Raises: as :meth:`OpenAIResponsesBackend.complete`; ``finish_reason`` ``length`` or
        ``content_filter`` raises IncompleteError, ``message.refusal`` RefusalError. Output
        with no JSON in it comes back with ``parse_error`` set.
        """
        import openai

        try:
            completion = self._create(request)
        except openai.OpenAIError as exc:
            raise self._convert(exc, request) from None
        problem = chat_problem(completion)
        if problem is not None:
            raise self._not_as_documented(problem, "POST /chat/completions")
        usage = _chat_usage(getattr(completion, "usage", None))
        model = getattr(completion, "model", None) or request.model
        choices = getattr(completion, "choices", None) or []
        if not choices:
            raise self._error(PermanentServiceError,
                              f"the server at {self.base_url} returned no choices for model "
                              f"{model}. Fix: check the model is loaded on the server.",
                              usage=usage)
        choice = choices[0]
        message = choice.message
        if getattr(message, "refusal", None):
            raise self._error(RefusalError,
                              f"the model {model} refused: {_shorten(message.refusal)!r}. "
                              "Fix: reword the story input or the step's system prompt.",
                              raw_output=message.refusal, usage=usage)
        text = message.content or ""
        reason = getattr(choice, "finish_reason", None)
        if reason in ("length", "content_filter"):
            raise self._error(IncompleteError,
                              f"the response of {model} is incomplete (finish_reason: {reason}, "
                              f"{usage.output_tokens} output tokens): {_INCOMPLETE_FIXES[reason]}",
                              raw_output=text, usage=usage)
        data, parse_error = _parsed(text, request)
        return LLMResult(text=text, data=data, usage=usage, model=model, parse_error=parse_error)


def data_url(mime: str, data: bytes) -> str:
    """``data:<mime>;base64,<data>``: an image sent inline (the API takes a URL or a data URL)."""
    import base64
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def responses_user_content(request: LLMRequest) -> str | list[dict[str, Any]]:
    """The user message's ``content`` for the Responses API: the text alone, or with images an
    ``input_text`` part followed by one ``input_image`` part per image (a data URL,
    ``detail: "auto"``; openai-python ``types/responses/response_input_image_param.py``:
    ``detail`` and ``type`` are required)."""
    if not request.images:
        return request.user
    return [{"type": "input_text", "text": request.user},
            *({"type": "input_image", "image_url": data_url(mime, data), "detail": "auto"}
              for mime, data in request.images)]


def chat_user_content(request: LLMRequest) -> str | list[dict[str, Any]]:
    """The user message's ``content`` for Chat Completions: the text alone, or a ``text`` part
    and one ``image_url`` part per image (openai-python
    ``types/chat/chat_completion_content_part_image_param.py``)."""
    if not request.images:
        return request.user
    return [{"type": "text", "text": request.user},
            *({"type": "image_url", "image_url": {"url": data_url(mime, data)}}
              for mime, data in request.images)]


def _find_refusal(output: list) -> str | None:
    """Return the text of the first ``refusal`` content item of a message output item."""
    for item in output:
        if getattr(item, "type", None) != "message":
            continue
        for part in getattr(item, "content", None) or []:
            if getattr(part, "type", None) == "refusal":
                return getattr(part, "refusal", None) or ""
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _responses_usage(usage: Any) -> Usage:
    """Usage of a Response; missing parts (e.g. ``output_tokens_details``) count 0."""
    if usage is None:
        return Usage()
    details = getattr(usage, "output_tokens_details", None)
    return Usage(input_tokens=_int(getattr(usage, "input_tokens", 0)),
                 output_tokens=_int(getattr(usage, "output_tokens", 0)),
                 reasoning_tokens=_int(getattr(details, "reasoning_tokens", 0)))


def _chat_usage(usage: Any) -> Usage:
    """Usage of a chat.completion (``prompt_tokens``/``completion_tokens``)."""
    if usage is None:
        return Usage()
    details = getattr(usage, "completion_tokens_details", None)
    return Usage(input_tokens=_int(getattr(usage, "prompt_tokens", 0)),
                 output_tokens=_int(getattr(usage, "completion_tokens", 0)),
                 reasoning_tokens=_int(getattr(details, "reasoning_tokens", 0)))


def _base_url(section: Any, env: Mapping[str, str]) -> str | None:
    return section.base_url or env.get(BASE_URL_ENV) or None


def make_responses_backend(section: Any, env: Mapping[str, str]) -> OpenAIResponsesBackend:
    """Factory of ``openai``: the key from ``env["OPENAI_API_KEY"]``.

    Raises:
        AuthError: ``OPENAI_API_KEY`` is not set.
    """
    key = env.get(KEY_ENV)
    if not key:
        raise AuthError(MISSING_KEY_MESSAGE, service="llm", backend="openai")
    backend = OpenAIResponsesBackend(api_key=key, base_url=_base_url(section, env),
                                     timeout_s=section.timeout_s, max_retries=0,  # cloops retries
                                     background=section.background,
                                     poll_interval_s=section.poll_interval_s)
    if section.base_url:
        backend.base_url_source = "llm.baseUrl"
    return backend


def make_chat_backend(section: Any, env: Mapping[str, str]) -> OpenAIChatBackend:
    """Factory of ``openai-chat``: ``llm.baseUrl`` or ``OPENAI_BASE_URL`` is required; the key is
    :func:`chat_key`'s; the formats servers accepted are remembered under ``CLOOPS_STATE_DIR``
    (the hub sets it to the project's ``build/.cloops``).

    Raises:
        InputError: no base URL is configured.
    """
    base_url = _base_url(section, env)
    if not base_url:
        raise InputError("backend \"openai-chat\" needs the server's URL, but it is not set.",
                         field="llm.baseUrl",
                         fix="set llm.baseUrl to the server's OpenAI-compatible API root, e.g. "
                             "\"http://localhost:11434/v1\" (Ollama) or "
                             "\"http://localhost:8000/v1\" (vLLM), or set OPENAI_BASE_URL.")
    state = env.get(STATE_DIR_ENV)
    backend = OpenAIChatBackend(base_url=base_url, api_key=chat_key(base_url, env),
                                timeout_s=section.timeout_s, max_retries=0,  # cloops retries
                                formats=FormatMemory(Path(state) / MEMORY_FILE if state else None))
    if section.base_url:
        backend.base_url_source = "llm.baseUrl"
    return backend


def chat_key(base_url: str, env: Mapping[str, str]) -> str:
    """The key ``openai-chat`` sends to the server at ``base_url``: ``LLM_API_KEY``; else
    ``OPENAI_API_KEY``, but only to OpenAI's own API host (:data:`OPENAI_HOSTS`) — an OpenAI
    key is never sent to another server; else a placeholder (local servers ignore it)."""
    import urllib.parse

    if env.get(CHAT_KEY_ENV):
        return env[CHAT_KEY_ENV]
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    if host in OPENAI_HOSTS and env.get(KEY_ENV):
        return env[KEY_ENV]
    return CHAT_PLACEHOLDER_KEY


OPENAI_SPEC = register(BackendSpec(name="openai", service="llm", offline=False, imports=("openai",),
                                   factory=make_responses_backend, key_env=(KEY_ENV,),
                                   auto_rank=10, describe="OpenAI Responses API",
                                   warm_up=OpenAIResponsesBackend.warm_up))
OPENAI_CHAT_SPEC = register(BackendSpec(name="openai-chat", service="llm", offline=False, imports=("openai",),
                                        factory=make_chat_backend, key_env=(),
                                        describe="OpenAI-compatible Chat Completions",
                                        warm_up=OpenAIChatBackend.warm_up))
