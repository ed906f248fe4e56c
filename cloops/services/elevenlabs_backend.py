"""Voice backend on ElevenLabs text-to-speech, through the official ``elevenlabs`` SDK (2.x).

Layer: **services**.

One :meth:`ElevenLabsBackend.synthesize` call is ONE request, so the voice flows naturally from
page to page::

    POST {base_url}/v1/text-to-speech/{voice_id}/with-timestamps?output_format=mp3_44100_128
    xi-api-key: <key>
    {"text": "<segment 1>\\n\\n<segment 2>...", "model_id": "eleven_multilingual_v2",
     "voice_settings": {"stability": 0.5, ...}}          # voice_settings omitted when empty
    -> 200 {"audio_base64": "<MP3>", "alignment": {"characters": [...],
            "character_start_times_seconds": [...], "character_end_times_seconds": [...]},
            "normalized_alignment": {...}}

The segments are joined with a paragraph break (:data:`SEGMENT_JOINER`); each segment's
``(start_s, end_s)`` is read from the character alignment at its span in the joined text (first
to last non-blank character). ``duration_s`` is the MP3's length from its frames (``mutagen``),
else the alignment's last end time. ``characters`` is ``len(joined text)`` (ElevenLabs bills
per character of the request text).

Error mapping at the boundary (the SDK raises ``elevenlabs.core.api_error.ApiError`` with
``.status_code``/``.headers``/``.body`` for any non-2xx, and lets ``httpx`` errors through):

=============================================  ============================================
401, 403                                       :class:`AuthError` (names ELEVENLABS_API_KEY,
                                               never the key)
401/400 with ``detail.status == quota_exceeded``  :class:`PermanentServiceError` (no credit)
429, 408, 409, 5xx, connection error, timeout  :class:`TransientServiceError`
                                               (``retry_after_s`` from ``retry-after(-ms)``)
400, 404, 422, other 4xx                       :class:`PermanentServiceError` (API detail)
an answer not as documented: a body that is    :class:`PermanentServiceError`, at once: names
not JSON (the SDK raises ``ApiError`` with a   the endpoint and the field (or the content
2xx status), ``audio_base64`` missing or not   type); with a base URL of another host, "the
base64, an alignment that is not lists of      server at ELEVENLABS_BASE_URL does not speak
numbers                                        ElevenLabs' API" (a retry gets the same answer)
=============================================  ============================================

SDK facts this relies on (read from elevenlabs 2.78 ``text_to_speech/raw_client.py``,
``core/http_client.py``, ``base_client.py``, ``types/audio_with_timestamps_response.py``):
request paths are ``v1/...`` joined to ``base_url``, so ``base_url`` is the host root
(``https://api.elevenlabs.io``; a trailing ``/v1`` is stripped here); the key goes in the
``xi-api-key`` header; ``output_format`` is a query parameter and ``model_id``/``voice_settings``
are JSON body fields; the response model exposes ``audio_base_64`` (wire name ``audio_base64``)
and ``alignment``; the SDK retries 408/409/429/5xx twice by default unless
``request_options["max_retries"]`` says otherwise: this backend passes 0 (cloops retries in its
hub). API error bodies are ``{"detail": {"status": str, "message": str}}`` (ElevenLabs help
"API - Error Code 400 or 401") or FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` for 422.

``elevenlabs`` is imported lazily in the constructor (the import costs ~0.5 s and this module is
imported on every doit start). The API key is never put into a message, log line or repr.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from typing import Any, Mapping, Sequence

from ..core.errors import (AuthError, InputError, PermanentServiceError, ServiceError,
                      TransientServiceError)
from .base import VoiceRequest, VoiceResult
from .registry import BackendSpec, register
from .wire import not_as_documented_fix, retry_after_s, scrub, tls_context

KEY_ENV = "ELEVENLABS_API_KEY"
BASE_URL_ENV = "ELEVENLABS_BASE_URL"
DEFAULT_BASE_URL = "https://api.elevenlabs.io"
# ElevenLabs' own API hosts: the SDK's environments (elevenlabs 2.78 ``environment.py``)
API_HOSTS = ("api.elevenlabs.io", "api.us.elevenlabs.io", "api.eu.residency.elevenlabs.io",
             "api.in.residency.elevenlabs.io", "api.sg.residency.elevenlabs.io")
ENDPOINT = "POST /v1/text-to-speech/{voice_id}/with-timestamps"
SEGMENT_JOINER = "\n\n"  # a paragraph break: a natural pause between pages
_TRANSIENT_STATUS = {408, 409, 425, 429}

MISSING_KEY_MESSAGE = (f"{KEY_ENV} is not set: add it to the environment or to .env, or set "
                       "voice.backend to \"piper\" to speak offline drafts.")


def _scrub(text: str, key: str | None) -> str:
    """Remove the API key (and anything key-shaped) from ``text``."""
    return scrub(text, key)


parse_retry_after = retry_after_s  # headers -> seconds (kept under its old name)


def _plain(value: Any) -> Any:
    """A pydantic model (older SDKs parse 422 bodies into ``HttpValidationError``) as plain
    dicts/lists; other values unchanged."""
    dump = getattr(value, "model_dump", None) or getattr(value, "dict", None)
    if callable(dump) and not isinstance(value, dict):
        try:
            return dump()
        except Exception:  # pragma: no cover - not a pydantic model after all
            return value
    return value


def api_detail(body: Any) -> tuple[str | None, str]:
    """Return ``(status, message)`` of an ElevenLabs error body.

    Shapes: ``{"detail": {"status": "invalid_api_key", "message": "..."}}``,
    ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`` (422), ``{"detail": "..."}``
    or plain text. ``status`` is None when the body has none.
    """
    body = _plain(body)
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        status = detail.get("status") or detail.get("code")
        message = detail.get("message") or detail.get("msg") or ""
        return (str(status) if status else None), str(message or status or detail)
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return None, "; ".join(parts)
    if detail is None or detail == "":
        return None, "no details"
    return None, " ".join(str(detail).split())[:500]


def not_as_documented(problem: str, *, base_url: str | None, voice_id: str = "",
                      source: str = BASE_URL_ENV) -> PermanentServiceError:
    """The permanent error of an answer that is not what ElevenLabs' API documents: names the
    server, the endpoint (:data:`ENDPOINT`), ``problem`` (the field, or the body's content
    type) and the fix (:func:`cloops.services.wire.not_as_documented_fix`; ``source`` is where
    ``base_url`` came from)."""
    where = base_url or DEFAULT_BASE_URL
    fix = not_as_documented_fix("ElevenLabs' API", base_url=base_url, source=source,
                                official_hosts=API_HOSTS, package="elevenlabs")
    endpoint = ENDPOINT.replace("{voice_id}", voice_id) if voice_id else ENDPOINT
    return PermanentServiceError(f"the answer of ElevenLabs at {where} to {endpoint} is not "
                                 f"what its API documents: {problem}. Fix: {fix}",
                                 service="voice", backend="elevenlabs")


def convert_error(exc: BaseException, *, base_url: str | None, key: str | None = None,
                  timeout_s: float | None = None, voice_id: str = "",
                  source: str = BASE_URL_ENV) -> ServiceError:
    """Turn an ``elevenlabs`` SDK / ``httpx`` exception into a :class:`ServiceError`.

    ``base_url`` is named in connection errors, ``key`` is scrubbed from every message.
    Returns (does not raise) the error.
    """
    import httpx
    from elevenlabs.core.api_error import ApiError

    where = base_url or DEFAULT_BASE_URL
    common: dict[str, Any] = {"service": "voice", "backend": "elevenlabs"}
    if isinstance(exc, httpx.TimeoutException):
        return TransientServiceError(
            f"the ElevenLabs call to {where} timed out"
            + (f" after {timeout_s:g} s" if timeout_s else "")
            + ". Fix: retry later, or raise voice.timeoutS for long narrations.", **common)
    if isinstance(exc, httpx.TransportError):
        fix = ("check that the server at voice.baseUrl / ELEVENLABS_BASE_URL is running"
               if base_url else "check the network connection")
        return TransientServiceError(
            f"could not reach ElevenLabs at {where} ({type(exc).__name__}: "
            f"{_scrub(str(exc), key)}). Fix: {fix}.", **common)
    if isinstance(exc, ApiError):
        status = exc.status_code
        code, msg = api_detail(exc.body)
        msg = _scrub(msg, key)
        label = f"HTTP {status}" + (f", {code}" if code else "")
        common["status_code"] = status
        if code == "quota_exceeded":
            return PermanentServiceError(
                f"the ElevenLabs account has not enough character quota left ({label}): {msg} "
                "Fix: add credits or enable usage-based billing at "
                "https://elevenlabs.io/app/subscription, or set voice.backend to \"piper\".",
                **common)
        if status in (401, 403):
            what = "rejected the API key" if status == 401 else "refused access with this API key"
            return AuthError(
                f"ElevenLabs at {where} {what} ({label}): {msg} Fix: check {KEY_ENV} (in the "
                "environment or .env): set it to a valid key from "
                "https://elevenlabs.io/app/settings/api-keys with text-to-speech access, or set "
                "voice.backend to \"piper\" to speak offline drafts.", **common)
        retry_after = parse_retry_after(exc.headers)
        if status is not None and (status in _TRANSIENT_STATUS or status >= 500):
            fix = ("wait and re-run; lower the build's concurrency if it keeps happening"
                   if status == 429 else "re-run later")
            return TransientServiceError(f"ElevenLabs at {where} failed ({label}): {msg} "
                                         f"Fix: {fix}.", retry_after_s=retry_after, **common)
        if status == 404:
            return PermanentServiceError(
                f"ElevenLabs at {where} answered {label}: {msg} Fix: check voice.voiceId "
                f"({voice_id!r}) names a voice of this account"
                + (", and that voice.baseUrl is the API root (without /v1)" if base_url else "")
                + ".", **common)
        if status is not None and 200 <= status < 300:
            # the SDK could not read a 2xx answer: its body is not JSON, or not of the shape
            # its models take (ParsingError)
            ctype = str((exc.headers or {}).get("content-type") or "").split(";")[0].strip()
            body = exc.body if isinstance(exc.body, str) else None
            problem = (f"its body is {ctype or 'of no content type'}, not JSON"
                       if ctype and not ctype.endswith("json") else
                       f"its body is not JSON (it began {body[:60]!r})" if body is not None
                       else f"the SDK could not read it ({label}: {msg})")
            error = not_as_documented(_scrub(problem, key), base_url=base_url,
                                      voice_id=voice_id, source=source)
            error.status_code = status
            return error
        return PermanentServiceError(
            f"ElevenLabs at {where} rejected the request ({label}): {msg} Fix: correct "
            "voice.model, voice.outputFormat, voice.settings or the narration text as the "
            "message says.", **common)
    return PermanentServiceError(f"the ElevenLabs SDK failed: {type(exc).__name__}: "
                                 f"{_scrub(str(exc), key)}", **common)


def segment_spans(segments: Sequence[str], joiner: str = SEGMENT_JOINER) -> tuple[str, list[tuple[int, int]]]:
    """Join ``segments`` with ``joiner``; return ``(text, [(first, last_exclusive), ...])`` —
    each segment's character span in ``text`` (Python string indices)."""
    spans = []
    pos = 0
    for i, seg in enumerate(segments):
        if i:
            pos += len(joiner)
        spans.append((pos, pos + len(seg)))
        pos += len(seg)
    return joiner.join(segments), spans


def timings_from_alignment(text: str, spans: Sequence[tuple[int, int]],
                           starts: Sequence[float], ends: Sequence[float],
                           duration_s: float) -> tuple[tuple[float, float], ...]:
    """Per-segment ``(start_s, end_s)`` from a character alignment of ``text``.

    ``starts``/``ends`` are ``character_start_times_seconds``/``character_end_times_seconds``,
    one per character of ``text``; when their length differs from ``len(text)`` (the API may
    count characters differently) indices are mapped proportionally. A segment runs from the
    start of its first non-blank character to the end of its last. The result is clamped to
    ``[0, duration_s]`` and made monotonic (each start >= the previous end).
    """
    n = min(len(starts), len(ends))
    out: list[tuple[float, float]] = []
    prev_end = 0.0
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if n == 0:
            s = e = prev_end
        else:
            if n == len(text):
                ia, ib = a, max(a, b - 1)
            else:
                ia = min(n - 1, a * n // max(1, len(text)))
                ib = min(n - 1, max(ia, (max(a, b - 1)) * n // max(1, len(text))))
            s, e = float(starts[ia]), float(ends[ib])
        s = min(max(s, prev_end, 0.0), duration_s)
        e = min(max(e, s), duration_s)
        out.append((s, e))
        prev_end = e
    return tuple(out)


def words_from_alignment(text: str, starts: Sequence[float], ends: Sequence[float],
                         duration_s: float) -> tuple[tuple[str, float, float], ...]:
    """Each word of ``text`` (a run of non-space characters) with the start of its first
    character and the end of its last, from ElevenLabs' character alignment
    (``character_start_times_seconds`` / ``character_end_times_seconds``; indices mapped
    proportionally when the counts differ from ``len(text)``), clamped to ``[0, duration_s]``
    and in order. Returns ``((word, start_s, end_s), ...)``."""
    import re as _re
    n = min(len(starts), len(ends))
    if n == 0:
        return ()

    def index(i: int) -> int:
        return i if n == len(text) else min(n - 1, i * n // max(1, len(text)))

    out: list[tuple[str, float, float]] = []
    prev = 0.0
    for m in _re.finditer(r"\S+", text):
        s = min(max(float(starts[index(m.start())]), prev, 0.0), duration_s)
        e = min(max(float(ends[index(m.end() - 1)]), s), duration_s)
        out.append((m.group(0), round(s, 3), round(e, 3)))
        prev = s
    return tuple(out)


def mp3_duration_s(mp3: bytes) -> float | None:
    """Length of an MP3 in seconds from its frames (``mutagen``), or None when unreadable."""
    try:
        from mutagen.mp3 import MP3
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    try:
        length = MP3(io.BytesIO(mp3)).info.length
    except Exception:  # mutagen raises its own HeaderNotFoundError / MutagenError
        return None
    return float(length) if length and length > 0 else None


class ElevenLabsBackend:
    """Voice backend on ElevenLabs ``text-to-speech/{voice_id}/with-timestamps``.

    Args:
        api_key: the ElevenLabs key (kept private: never in messages or repr).
        base_url: API host root (``https://api.elevenlabs.io``; a trailing ``/v1`` is dropped);
            None for the SDK's default.
        timeout_s: client default timeout in seconds (each call uses ``request.timeout_s``).

    Raises:
        AuthError: ``api_key`` is empty (names ELEVENLABS_API_KEY and the offline ``piper``).
        InputError: the ``elevenlabs`` package is not installed.
    """

    name = "elevenlabs"
    offline = False

    def __init__(self, api_key: str | None, *, base_url: str | None = None,
                 timeout_s: float = 300.0, base_url_source: str = BASE_URL_ENV):
        if not api_key:
            raise AuthError(MISSING_KEY_MESSAGE, service="voice", backend=self.name)
        self._api_key = api_key
        base = (base_url or "").strip().rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.base_url = base or None
        self.base_url_source = base_url_source  # named when that server's answers are not ours
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._client: Any = self._make_client()

    def _make_client(self) -> Any:
        try:
            from elevenlabs.client import ElevenLabs
        except ImportError as exc:
            raise InputError(f"the ElevenLabs SDK is not installed ({exc}).",
                             field="voice.backend",
                             fix="pip install \"elevenlabs>=2.20,<3\", or set voice.backend to "
                                 "\"piper\".") from None
        import httpx
        # the SDK's default client, with the process's one TLS context (no CA bundle load)
        http = httpx.Client(timeout=self.timeout_s, follow_redirects=True, verify=tls_context())
        return ElevenLabs(api_key=self._api_key, base_url=self.base_url or DEFAULT_BASE_URL,
                          timeout=self.timeout_s, httpx_client=http)

    def __repr__(self) -> str:  # never shows the key
        return f"ElevenLabsBackend(base_url={self.base_url or DEFAULT_BASE_URL!r})"

    def __getstate__(self) -> dict:
        # picklable for doit's process-parallel mode: the client and lock are remade
        state = dict(self.__dict__)
        state.pop("_client", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._client = self._make_client()

    @property
    def client(self) -> Any:
        """The ``elevenlabs.client.ElevenLabs`` client."""
        return self._client

    @staticmethod
    def voice_settings(request: VoiceRequest) -> dict[str, Any] | None:
        """``request.settings`` without None values, or None when nothing is left."""
        settings = {k: v for k, v in (request.settings or {}).items() if v is not None}
        return settings or None

    def request_params(self, request: VoiceRequest) -> dict[str, Any]:
        """The keyword arguments of ``client.text_to_speech.convert_with_timestamps``."""
        text, _ = segment_spans(request.segments)
        params: dict[str, Any] = {"voice_id": request.voice_id, "text": text,
                                  "model_id": request.model,
                                  "output_format": request.output_format,
                                  "request_options": {"max_retries": 0,  # cloops retries (hub)
                                                      "timeout_in_seconds": request.timeout_s}}
        settings = self.voice_settings(request)
        if settings is not None:
            params["voice_settings"] = settings
        return params

    def synthesize(self, request: VoiceRequest) -> VoiceResult:
        """Speak all segments in one request; return the MP3, its length and per-segment timings.

        Returns:
            :class:`VoiceResult` with ``mp3`` (the decoded ``audio_base64``), ``duration_s``
            (seconds, from the MP3 frames), ``timings`` (one ``(start_s, end_s)`` per segment,
            monotonic, within ``[0, duration_s]``), ``characters`` = ``len(joined text)``.

        Raises:
            InputError: ``request.output_format`` is not an ``mp3_*`` format, or no segments.
            AuthError: key rejected (401/403).
            TransientServiceError: 429, 408, 409, 5xx, timeout or connection error
                (``retry_after_s`` is the server's ``retry-after`` when sent).
            PermanentServiceError: 400/404/422, quota exceeded, or a malformed answer.
        """
        if not request.output_format.startswith("mp3_"):
            raise InputError(f"the voice track must be MP3, but outputFormat is "
                             f"{request.output_format!r}.", field="voice.outputFormat",
                             fix="use an mp3_* format such as \"mp3_44100_128\".")
        if not request.segments:
            raise InputError("a voice request needs at least one segment.", field="segments")
        import httpx
        from elevenlabs.core.api_error import ApiError

        text, spans = segment_spans(request.segments)
        try:
            response = self.client.text_to_speech.convert_with_timestamps(
                **self.request_params(request))
        except (ApiError, httpx.HTTPError) as exc:
            raise convert_error(exc, base_url=self.base_url, key=self._api_key,
                                timeout_s=request.timeout_s, voice_id=request.voice_id,
                                source=self.base_url_source) from None
        return self._result(response, text, spans, request.voice_id)

    def _malformed(self, what: str, voice_id: str = "") -> PermanentServiceError:
        return not_as_documented(what, base_url=self.base_url, voice_id=voice_id,
                                 source=self.base_url_source)

    def _result(self, response: Any, text: str, spans: list[tuple[int, int]],
                voice_id: str = "") -> VoiceResult:
        """The :class:`VoiceResult` of an answer, its fields checked first.

        Raises:
            PermanentServiceError: a field is missing or not of its documented type
                (:meth:`_malformed`: names the endpoint, the field and the fix).
        """
        audio_b64 = getattr(response, "audio_base_64", None)
        if not audio_b64 and isinstance(response, dict):
            audio_b64 = response.get("audio_base64")
        if not audio_b64:
            raise self._malformed("the field 'audio_base64' (missing)", voice_id)
        if not isinstance(audio_b64, (str, bytes)):
            raise self._malformed(f"the field 'audio_base64' (a {type(audio_b64).__name__}, "
                                  "not a string)", voice_id)
        try:
            mp3 = base64.b64decode(audio_b64, validate=False)
        except (binascii.Error, ValueError):
            raise self._malformed("the field 'audio_base64' (not base64)", voice_id) from None
        alignment = getattr(response, "alignment", None)
        times = {}
        for name in ("character_start_times_seconds", "character_end_times_seconds"):
            values = (alignment.get(name) if isinstance(alignment, dict)
                      else getattr(alignment, name, None)) or []
            if not isinstance(values, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise self._malformed(f"the field 'alignment.{name}' (not a list of numbers)",
                                      voice_id)
            times[name] = list(values)
        starts = times["character_start_times_seconds"]
        ends = times["character_end_times_seconds"]
        duration = mp3_duration_s(mp3)
        if duration is None:
            if not ends:
                raise self._malformed("the field 'audio_base64' (not a readable MP3) and no "
                                      "alignment", voice_id)
            duration = float(max(ends))
        aligned = bool(starts and ends)
        if not starts or not ends:  # no alignment: split by character count
            total = max(1, sum(b - a for a, b in spans))
            acc = 0
            starts, ends = [], []
            for i, ch in enumerate(text):
                starts.append(duration * acc / total)
                if any(a <= i < b for a, b in spans):
                    acc += 1
                ends.append(duration * acc / total)
        timings = timings_from_alignment(text, spans, starts, ends, duration)
        return VoiceResult(mp3=mp3, duration_s=duration, timings=timings, characters=len(text),
                           draft=False, words=words_from_alignment(text, starts, ends, duration),
                           words_estimated=not aligned)


def create_backend(section: Any, env: Mapping[str, str]) -> ElevenLabsBackend:
    """Registry factory: build from ``voice`` (:class:`cloops.data.config.VoiceConfig`).

    ``base_url``: ``voice.baseUrl``, else ``ELEVENLABS_BASE_URL``, else the SDK default.

    Raises:
        AuthError: ``ELEVENLABS_API_KEY`` is not set.
    """
    return ElevenLabsBackend(env.get(KEY_ENV), base_url=section.base_url
                             or env.get(BASE_URL_ENV) or None, timeout_s=section.timeout_s,
                             base_url_source="voice.baseUrl" if section.base_url
                             else BASE_URL_ENV)


SPEC = register(BackendSpec(name="elevenlabs", service="voice", offline=False,
                            imports=("httpx", "elevenlabs"),
                            key_env=(KEY_ENV,), auto_rank=10, factory=create_backend,
                            describe="ElevenLabs"))
