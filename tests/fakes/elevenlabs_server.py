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
import math
import re
import struct
from typing import Any

from . import loopback
from .loopback import Reply, ScriptedServer, without

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


class RecordedRequest(loopback.RecordedRequest):
    """One request as received (:class:`tests.fakes.loopback.RecordedRequest`), with the voice
    it asks for."""

    @property
    def voice_id(self) -> str | None:
        match = _TTS_PATH.match(self.path)
        return match["voice"] if match else None


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

class FakeElevenLabs(ScriptedServer):
    """A scriptable fake ElevenLabs API on ``127.0.0.1`` (ephemeral port), in a background thread
    (:class:`tests.fakes.loopback.ScriptedServer`).

    Args:
        api_key: the key the ``xi-api-key`` header must carry (401 otherwise); None accepts any.

    Attributes:
        base_url: ``"http://127.0.0.1:PORT"`` (no ``/v1``) for ``ElevenLabs(base_url=...)``.
        requests: every :class:`RecordedRequest` received, in order (faults included).

    Use as a context manager (``with FakeElevenLabs() as srv:``) or call :meth:`start` /
    :meth:`stop`.
    """

    record_class = RecordedRequest
    bytes_content_type = "audio/mpeg"
    thread_name = "fake-elevenlabs"

    def __init__(self, *, api_key: str | None = "test-elevenlabs-key", host: str = "127.0.0.1",
                 port: int = 0):
        super().__init__(host=host, port=port)
        self.api_key = api_key
        # dotted fields left out of every /with-timestamps answer (``("audio_base64",)``): an
        # answer not as the API documents it
        self.omit: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        return self.root_url

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
        self._script(Reply(status=status, body=body, headers=dict(headers or {}),
                           delay_s=delay_s, drop=drop))

    def reply_headers(self, rec: RecordedRequest) -> dict[str, str]:
        return {"request-id": f"req_{self.count}"}

    def render(self, rec: RecordedRequest, reply: Reply) -> tuple[int, Any, dict[str, str]]:
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
        return 200, without({"audio_base64": base64.b64encode(mp3).decode("ascii"),
                             "alignment": alignment, "normalized_alignment": alignment},
                            self.omit), headers
