"""Fake paid backends for engine tests, loaded as a plugin (``CLOOPS_PLUGINS=tests.fakes.backends``).

They register the way any third-party backend would, are not ``offline`` (so the response
cache, the ledger and ``completed`` status behave as with real services) and answer
deterministically from the whole request: change the system prompt, the user message or an
image param and the output changes, as it would with a real model.
"""

from __future__ import annotations

import math

import hashlib
import io
import json
import os
import threading

from cloops.services.base import ImageRequest, ImageResult, LLMRequest, LLMResult, Usage
from cloops.services.registry import BackendSpec, register


def _h(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _tag(value, tag: str, schema: dict | None = None):
    """``value`` with every free-text string tagged; strings the schema constrains (an enum,
    a pattern: ids, kinds) are kept, as a real model's answer would keep them valid."""
    schema = schema if isinstance(schema, dict) else {}
    if isinstance(value, str):
        if "enum" in schema or "pattern" in schema:
            return value
        return f"{value} [{tag}]"
    if isinstance(value, list):
        return [_tag(v, tag, schema.get("items")) for v in value]
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        return {k: _tag(v, tag, props.get(k)) for k, v in value.items()}
    return value


SCHEMAS_ENV = "FAKE_LLM_SCHEMAS"  # a file: every schema sent is appended to it, one JSON a line
_SCHEMAS_LOCK = threading.Lock()


class FakeLLM:
    """Answers with the template's draft, every string tagged with a hash of the request.

    With ``FAKE_LLM_SCHEMAS`` set, each request's ``{"name", "user", "schema"}`` is appended to
    that file (what a test of the schema sent reads)."""

    name = "fake-llm"
    offline = False

    def complete(self, request: LLMRequest) -> LLMResult:
        log = os.environ.get(SCHEMAS_ENV)
        if log and request.schema is not None:
            line = json.dumps({"name": request.schema_name, "user": request.user,
                               "schema": request.schema})
            with _SCHEMAS_LOCK, open(log, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        # the tag in decimal digits: a hex tag ("[5e0ae3ba]") reads as a long word to the
        # reading-level check, whose verdict then depended on the request's hash
        tag = str(int(_h(request.cache_key()), 16) % 10 ** 8).zfill(8)
        usage = Usage(input_tokens=len(request.system + request.user) // 4, output_tokens=50,
                      reasoning_tokens=10)
        if request.schema is not None:
            data = _tag(request.draft, tag, request.schema)
            return LLMResult(text=json.dumps(data), data=data, usage=usage, model=request.model)
        return LLMResult(text=f"{request.draft}\n<!-- {tag} -->\n", usage=usage,
                         model=request.model)


class FakeImage:
    """A small JPEG whose colour is a hash of the prompt, model and params."""

    name = "fake-image"
    offline = False
    uses_annotations = False

    def generate_image(self, request: ImageRequest) -> ImageResult:
        h = bytes.fromhex(_h(request.prompt, request.model, request.params)[:6])
        from PIL import Image  # when drawing: a start-up with nothing to draw does not load it
        img = Image.new("RGB", (48, 64), tuple(h))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return ImageResult(jpeg=buf.getvalue(), width_px=48, height_px=64)


register(BackendSpec(name="fake-llm", service="llm", offline=False,
                     factory=lambda section, env: FakeLLM(), describe="test fake LLM"))
register(BackendSpec(name="fake-image", service="image", offline=False,
                     factory=lambda section, env: FakeImage(), describe="test fake images"))


class FakeVoice:
    """A tone as MP3 (220 Hz while a segment is "spoken", silence in the pauses): 0.05 s per
    character of each segment, with the pause between - sound the ad kit can normalize."""

    name = "fake-voice"
    offline = False

    def synthesize(self, request):
        import lameenc
        from cloops.services.base import VoiceResult
        rate = 8000
        pcm = bytearray()
        timings = []
        t = 0.0
        for i, seg in enumerate(request.segments):
            if i:
                pcm += b"\0\0" * int(request.pause_s * rate)
                t += request.pause_s
            n = int(len(seg) * 0.05 * rate)
            pcm += b"".join(int(9000 * math.sin(2 * math.pi * 220 * k / rate)).to_bytes(
                2, "little", signed=True) for k in range(n))
            timings.append((round(t, 3), round(t + n / rate, 3)))
            t += n / rate
        enc = lameenc.Encoder()
        enc.set_bit_rate(32)
        enc.set_in_sample_rate(rate)
        enc.set_channels(1)
        enc.set_quality(7)
        mp3 = bytes(enc.encode(bytes(pcm)) + enc.flush())
        return VoiceResult(mp3=mp3, duration_s=round(t, 3), timings=tuple(timings),
                           characters=sum(len(s) for s in request.segments))


register(BackendSpec(name="fake-voice", service="voice", offline=False,
                     factory=lambda section, env: FakeVoice(), describe="test fake voice"))
