"""A fake ElevenLabs text-to-speech API on 127.0.0.1, for tests through the real ``elevenlabs`` SDK.

The SDK joins ``v1/...`` paths to its ``base_url``, so tests pass the host root::

    with FakeElevenLabs(api_key="test-key") as srv:
        client = ElevenLabs(api_key="test-key", base_url=srv.base_url)
        srv.enqueue(status=429, headers={"retry-after": "0"})
        ...
        assert srv.last.query["output_format"] == "mp3_44100_128"

Endpoints (shapes from elevenlabs-python 2.x ``text_to_speech/raw_client.py`` and
``types/audio_with_timestamps_response.py``):

* ``POST /v1/text-to-speech/{voice_id}/with-timestamps`` -> JSON ``{"audio_base64": str,
  "alignment": {"characters": [...], "character_start_times_seconds": [...],
  "character_end_times_seconds": [...]}, "normalized_alignment": {...}}``;
* ``POST /v1/text-to-speech/{voice_id}`` -> ``audio/mpeg`` bytes.

The audio is a real MP3 (lameenc, mono, at the ``output_format``'s sample rate and bitrate) of
a quiet tone lasting :data:`SECONDS_PER_CHAR` per character of ``text`` (at least
:data:`MIN_SECONDS`); the alignment spreads the characters evenly over it. Only ``mp3_*``
formats are served (others answer 422). A missing or wrong ``xi-api-key`` answers 401 with
ElevenLabs' ``{"detail": {"status": "invalid_api_key", "message": ...}}`` (the message echoes
the key sent, so "the key is never shown" tests are strict).
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

SECONDS_PER_CHAR = 0.02
MIN_SECONDS = 0.2
_TTS_PATH = re.compile(r"^/v1/text-to-speech/(?P<voice>[^/]+)(?P<ts>/with-timestamps)?$")

_ERRORS = {
    400: ("invalid_request", "Invalid request."),
    401: ("invalid_api_key", "Invalid API key"),
    403: ("missing_permissions", "The API key you used is missing the permission "
                                 "text_to_speech to execute this operation."),
    404: ("voice_not_found", "A voice with the voice_id was not found."),
    429: ("too_many_concurrent_requests", "Too many concurrent requests."),
    500: ("internal_error", "An internal server error occurred."),
    503: ("system_busy", "The system is experiencing heavy traffic, please try again later."),
}


@dataclass
class RecordedRequest:
    """One request as received: ``headers`` keys are lower-case; ``query`` maps each query
    parameter to its (last) value; ``body`` is the parsed JSON (None when empty or not JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: Any
    raw: bytes = b""

    @property
    def voice_id(self) -> str | None:
        match = _TTS_PATH.match(self.path)
        return match["voice"] if match else None


@dataclass
class Reply:
    """A scripted reply (see :meth:`FakeElevenLabs.enqueue`)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False


def error_body(status: int, message: str | None = None, code: str | None = None) -> dict:
    """ElevenLabs' error JSON for ``status``: ``{"detail": {"status", "message"}}``."""
    default_code, default_msg = _ERRORS.get(status, ("error", f"HTTP {status}"))
    return {"detail": {"status": code or default_code, "message": message or default_msg}}


def parse_output_format(fmt: str) -> tuple[int, int] | None:
    """``"mp3_44100_128"`` -> ``(44100, 128)``; None for non-MP3 or unknown formats."""
    match = re.fullmatch(r"mp3_(\d+)_(\d+)", fmt or "")
    return (int(match[1]), int(match[2])) if match else None


def make_mp3(seconds: float, sample_rate: int = 44100, bitrate_kbps: int = 128) -> bytes:
    """A real CBR mono MP3 of a quiet 220 Hz tone lasting ``seconds`` (lameenc)."""
    import lameenc

    n = max(1, int(round(seconds * sample_rate)))
    step = 2 * math.pi * 220 / sample_rate
    pcm = struct.pack(f"<{n}h", *(int(1000 * math.sin(step * i)) for i in range(n)))
    enc = lameenc.Encoder()
    enc.set_bit_rate(bitrate_kbps)
    enc.set_in_sample_rate(sample_rate)
    enc.set_channels(1)
    enc.set_quality(7)
    return bytes(enc.encode(pcm)) + bytes(enc.flush())


def speech_seconds(text: str) -> float:
    """How long the fake speaks ``text``: :data:`SECONDS_PER_CHAR` per character."""
    return max(MIN_SECONDS, SECONDS_PER_CHAR * len(text))


def alignment_for(text: str, seconds: float) -> dict[str, list]:
    """A character alignment spreading ``text`` evenly over ``seconds``."""
    n = max(1, len(text))
    dt = seconds / n
    return {"characters": list(text),
            "character_start_times_seconds": [round(i * dt, 3) for i in range(len(text))],
            "character_end_times_seconds": [round((i + 1) * dt, 3) for i in range(len(text))]}


# ---------------------------------------------------------------- the server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx's connection pool expects
    disable_nagle_algorithm = True  # else headers+body writes cost a 40 ms delayed ACK
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path, _, qs = self.path.partition("?")
        query = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
        rec = RecordedRequest(self.command, path,
                              {k.lower(): v for k, v in self.headers.items()}, query, body, raw)
        reply = fake._record_and_pop(rec)
        if reply.delay_s:
            fake._stopping.wait(reply.delay_s)
        if reply.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        status, payload, headers = fake._render(rec, reply)
        if isinstance(payload, bytes):
            data, ctype = payload, headers.pop("content-type", "audio/mpeg")
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", f"req_{fake.count}")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: "FakeElevenLabs"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-reply is expected in fault tests


class FakeElevenLabs:
    """A scriptable fake ElevenLabs API on ``127.0.0.1`` (ephemeral port), in a background thread.

    Args:
        api_key: the key the ``xi-api-key`` header must carry (401 otherwise); None accepts any.

    Attributes:
        base_url: ``"http://127.0.0.1:PORT"`` (no ``/v1``) for ``ElevenLabs(base_url=...)``.
        requests: every :class:`RecordedRequest` received, in order (faults included).

    Use as a context manager (``with FakeElevenLabs() as srv:``) or call :meth:`start` /
    :meth:`stop`.
    """

    def __init__(self, *, api_key: str | None = "test-elevenlabs-key", host: str = "127.0.0.1",
                 port: int = 0):
        self.api_key = api_key
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    # lifecycle
    def start(self) -> "FakeElevenLabs":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True,
                                            name="fake-elevenlabs")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "FakeElevenLabs":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # scripting
    def enqueue(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
                delay_s: float = 0, drop: bool = False) -> None:
        """Queue the reply to the next request (first in, first out, any endpoint).

        Args:
            status: HTTP status. Non-200 without ``body`` sends ElevenLabs' error JSON for it.
            body: the exact JSON body (dict/list) or bytes to send instead of a built one
                (with status 200 on ``/with-timestamps``: replaces the audio+alignment JSON).
            headers: extra response headers, e.g. ``{"retry-after": "0"}``.
            delay_s: seconds to wait before answering (a slow reply; ``stop()`` cuts it short).
            drop: close the connection without any reply.
        """
        with self._lock:
            self._queue.append(Reply(status=status, body=body, headers=dict(headers or {}),
                                     delay_s=delay_s, drop=drop))

    @property
    def pending(self) -> int:
        """How many scripted replies are still queued."""
        with self._lock:
            return len(self._queue)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def last(self) -> RecordedRequest:
        """The most recent request (IndexError when none)."""
        with self._lock:
            return self.requests[-1]

    # internals (called from handler threads)
    def _record_and_pop(self, rec: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(rec)
            return self._queue.popleft() if self._queue else Reply()

    def _render(self, rec: RecordedRequest, reply: Reply) -> tuple[int, Any, dict[str, str]]:
        headers = dict(reply.headers)
        if reply.body is not None:
            return reply.status, reply.body, headers
        if reply.status != 200:
            return reply.status, error_body(reply.status), headers
        sent_key = rec.headers.get("xi-api-key")
        if self.api_key is not None and sent_key != self.api_key:
            message = (f"Invalid API key: {sent_key}" if sent_key
                       else "Missing the xi-api-key header.")
            return 401, error_body(401, message,
                                   "invalid_api_key" if sent_key else "needs_authorization"), headers
        match = _TTS_PATH.match(rec.path)
        if rec.method != "POST" or match is None:
            return 404, {"detail": "Not Found"}, headers
        req = rec.body if isinstance(rec.body, dict) else {}
        text = req.get("text")
        if not isinstance(text, str) or not text:
            return 422, {"detail": [{"type": "missing", "loc": ["body", "text"],
                                     "msg": "Field required", "input": req}]}, headers
        fmt = rec.query.get("output_format", "mp3_44100_128")
        parsed = parse_output_format(fmt)
        if parsed is None:
            return 422, {"detail": [{"type": "literal_error", "loc": ["query", "output_format"],
                                     "msg": f"the fake serves mp3_* formats only, not {fmt!r}",
                                     "input": fmt}]}, headers
        seconds = speech_seconds(text)
        mp3 = make_mp3(seconds, *parsed)
        if not match["ts"]:
            return 200, mp3, headers
        alignment = alignment_for(text, seconds)
        return 200, {"audio_base64": base64.b64encode(mp3).decode("ascii"),
                     "alignment": alignment, "normalized_alignment": alignment}, headers
