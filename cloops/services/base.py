"""Requests, results and protocols shared by every backend.

Layer: **services**.

A backend turns one request into one result, converting its SDK's exceptions into
:mod:`cloops.core.errors` at the boundary. Requests are plain frozen data: their ``cache_key()`` is
the whole request (what a response cache is addressed by), minus what never reaches the
service (``draft``, ``annotations`` for backends that do not use them).
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

REASONING_EFFORTS = ("none", "low", "medium", "high")  # gpt-5.1; source: OpenAI GPT-5.1 docs
VERBOSITIES = ("low", "medium", "high")


@dataclass(frozen=True)
class Usage:
    """Token usage of one LLM call (OpenAI Responses API ``usage``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "reasoning_tokens": self.reasoning_tokens}


@dataclass(frozen=True)
class LLMRequest:
    """One LLM call.

    Attributes:
        system: the rendered system prompt (variables injected, knowledge appended).
        user: the user message.
        model: model id, e.g. ``"gpt-5.1"`` (config, never code).
        reasoning: ``none|low|medium|high`` or None to leave the model default.
        verbosity: ``low|medium|high`` or None.
        schema: a strict JSON schema (root object, ``additionalProperties: false`` everywhere,
            every property required) or None for plain text output.
        schema_name: the schema's name as sent in ``text.format.name`` (``[a-zA-Z0-9_-]``).
        timeout_s: per-request timeout in seconds.
        draft: what the offline draft backend returns (built by the template from the story
            input); never sent to a real service and not part of the cache key.
        images: images shown to the model with the user message, in order, as
            ``(mime type, bytes)`` pairs (``("image/jpeg", b"...")``); part of the cache key by
            their SHA-256 (only when there are any, so requests without images keep their key).
    """

    system: str
    user: str
    model: str
    reasoning: str | None = None
    verbosity: str | None = None
    schema: dict | None = None
    schema_name: str = "output"
    timeout_s: float = 300.0
    draft: Any = field(default=None, compare=False)
    images: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    def cache_key(self) -> dict:
        """Return everything that determines the response, as JSON-able data."""
        key = {"system": self.system, "user": self.user, "model": self.model,
               "reasoning": self.reasoning, "verbosity": self.verbosity,
               "schema": self.schema, "schema_name": self.schema_name}
        if self.images:
            key["images"] = [[mime, hashlib.sha256(data).hexdigest()]
                             for mime, data in self.images]
        return key


@dataclass(frozen=True)
class LLMResult:
    """The answer to an :class:`LLMRequest`.

    Attributes:
        text: the raw output text (JSON text when the request had a schema).
        data: the parsed JSON when the request had a schema, else None.
        usage: token counts.
        model: the model that answered.
        draft: True when made offline with no model call.
        parse_error: with a schema, why ``text`` holds no JSON value (the parse error,
            :func:`cloops.services.structured.extract_json`); ``data`` is then None. Such an
            answer was paid for: the caller re-asks it like a schema violation, and it is
            never cached.
    """

    text: str
    data: Any = None
    usage: Usage = Usage()
    model: str = ""
    draft: bool = False
    parse_error: str | None = None


# How many reference images a model takes in ``image_input`` (sources: replicate.com model
# pages, checked 2026-11: bytedance/seedream-4 "1-10 images"; seedream-4.5 and seedream-5-lite
# up to 14; google/nano-banana-pro up to 14 — Google advises up to 5 images of people for
# character consistency; google/nano-banana (gemini-2.5-flash-image) "works best with up to 3").
# A model not listed gets none unless config ``generation.referenceLimits`` names it: other
# models take references under other names, or not at all.
MODEL_REFERENCE_LIMITS: dict[str, int] = {
    "bytedance/seedream-4": 10,
    "bytedance/seedream-4.5": 14,
    "bytedance/seedream-5-lite": 14,
    "google/nano-banana-pro": 14,
    "google/nano-banana": 3,
}


@dataclass(frozen=True)
class Reference:
    """A reference image passed with an image request (a character's sheet).

    Attributes:
        label: what the prompt calls it (``"Noah's reference sheet"``).
        jpeg: the image bytes (JPEG).
        sha256: hex digest of ``jpeg`` (the cache key holds this, not the bytes).
    """

    label: str
    jpeg: bytes = field(repr=False)
    sha256: str = ""

    def __post_init__(self):
        if not self.sha256:
            import hashlib
            object.__setattr__(self, "sha256", hashlib.sha256(self.jpeg).hexdigest())


@dataclass(frozen=True)
class ImageRequest:
    """One image generation.

    Attributes:
        prompt: the full image prompt (visual description only).
        model: model id, e.g. ``"bytedance/seedream-4"``.
        params: the model's own input parameters besides the prompt (``size``,
            ``aspect_ratio``, ...), sent as-is.
        annotations: context for backends that lay out text themselves (the offline storyboard):
            ``{"title": str, "narration": str, "panels": [{"moment": str, ...}], "label": str}``.
            Only part of the cache key / dependency for backends with ``uses_annotations``.
        timeout_s: how long to wait for the image, in seconds.
        references: reference images in the order the prompt names them ("Image 1 is ...");
            sent as the model's ``reference_param`` (Replicate), into reference image nodes
            (ComfyUI), drawn as thumbnails (storyboard). Their digests are in the cache key.
        reference_param: the model input that takes them (``image_input``).
    """

    prompt: str
    model: str
    params: dict = field(default_factory=dict)
    annotations: dict | None = field(default=None, compare=False)
    timeout_s: float = 600.0
    references: tuple[Reference, ...] = ()
    reference_param: str = "image_input"

    def cache_key(self, *, with_annotations: bool = False) -> dict:
        key = {"prompt": self.prompt, "model": self.model, "params": self.params}
        if self.references:
            key["references"] = [[r.label, r.sha256] for r in self.references]
            key["reference_param"] = self.reference_param
        if with_annotations:
            key["annotations"] = self.annotations
        return key


@dataclass(frozen=True)
class ImageResult:
    """A generated image, already converted to JPEG.

    Attributes:
        jpeg: JPEG bytes.
        width_px / height_px: pixel size.
        images_billed: how many images the service charged for (seedream-4 may return several).
        draft: True when rendered offline.
        references_used: how many of the request's references the backend passed on (fewer
            when, say, a ComfyUI workflow has fewer reference image nodes).
    """

    jpeg: bytes
    width_px: int
    height_px: int
    images_billed: int = 1
    draft: bool = False
    references_used: int = 0


@runtime_checkable
class LLMBackend(Protocol):
    """Something that answers :class:`LLMRequest` s.

    Attributes:
        name: backend name as written in config (``"openai"``, ``"draft"``).
        offline: True when it calls no paid service (its output is a draft).
    """

    name: str
    offline: bool

    def complete(self, request: LLMRequest) -> LLMResult:
        """Return the model's answer. Raises :class:`cloops.core.errors.ServiceError`."""
        ...


@runtime_checkable
class ImageBackend(Protocol):
    """Something that turns an :class:`ImageRequest` into a JPEG.

    Attributes:
        name: backend name as written in config (``"replicate"``, ``"storyboard"``).
        offline: True when it calls no paid service.
        uses_annotations: True when the output depends on ``request.annotations``.

    A backend may also have ``prepare_image(request) -> None``: work before the call that the
    provider's concurrency limit is not about (uploading reference images). The hub runs it
    outside the service slot, inside the retries, only when the call is not a cache hit.
    """

    name: str
    offline: bool
    uses_annotations: bool

    def generate_image(self, request: ImageRequest) -> ImageResult:
        """Return the image. Raises :class:`cloops.core.errors.ServiceError`."""
        ...


@dataclass(frozen=True)
class VoiceRequest:
    """One narrated voice track.

    Attributes:
        segments: the texts to speak in order (one per page); timings are reported per segment.
        voice_id: ElevenLabs voice id (ignored by offline voices).
        model: ElevenLabs model id, e.g. ``"eleven_multilingual_v2"``.
        output_format: ElevenLabs output format, e.g. ``"mp3_44100_128"``.
        settings: voice settings (stability, similarity_boost, style, use_speaker_boost, speed).
        pause_s: silence between segments, seconds.
        timeout_s: per-request timeout, seconds.
    """

    segments: tuple[str, ...]
    voice_id: str
    model: str
    output_format: str = "mp3_44100_128"
    settings: dict = field(default_factory=dict)
    pause_s: float = 0.6
    timeout_s: float = 300.0

    def cache_key(self) -> dict:
        return {"segments": list(self.segments), "voice_id": self.voice_id, "model": self.model,
                "output_format": self.output_format, "settings": self.settings,
                "pause_s": self.pause_s}


@dataclass(frozen=True)
class VoiceResult:
    """A voice track.

    Attributes:
        mp3: MP3 bytes.
        duration_s: length of the track, seconds.
        timings: ``[(start_s, end_s), ...]`` of each segment's speech within the track.
        characters: characters billed (ElevenLabs bills per character).
        draft: True when synthesized offline.
        words: ``((word, start_s, end_s), ...)``: each spoken word of the segments in order
            (punctuation kept on the word), or empty when the backend gave none.
        words_estimated: True when the word times are estimated (spread over a sentence's
            or segment's time by length) rather than aligned by the provider.
    """

    mp3: bytes
    duration_s: float
    timings: tuple[tuple[float, float], ...]
    characters: int = 0
    draft: bool = False
    words: tuple[tuple[str, float, float], ...] = ()
    words_estimated: bool = False


def estimate_words(texts: "list[str] | tuple[str, ...]",
                   spans: "list[tuple[float, float]] | tuple[tuple[float, float], ...]"
                   ) -> tuple[tuple[str, float, float], ...]:
    """Word times estimated from the times of the pieces they are in: each piece's words
    (split on whitespace) share its ``(start_s, end_s)`` in proportion to their length in
    characters plus one (the gap after a word). Returns ``((word, start_s, end_s), ...)``."""
    out: list[tuple[str, float, float]] = []
    for text, (start, end) in zip(texts, spans):
        words = str(text).split()
        if not words:
            continue
        weights = [len(w) + 1 for w in words]
        total = float(sum(weights))
        t = float(start)
        span = max(0.0, float(end) - float(start))
        for w, k in zip(words, weights):
            step = span * k / total
            out.append((w, round(t, 3), round(t + step * len(w) / k, 3)))
            t += step
    return tuple(out)


@runtime_checkable
class VoiceBackend(Protocol):
    """Something that speaks a :class:`VoiceRequest` into an MP3."""

    name: str
    offline: bool

    def synthesize(self, request: VoiceRequest) -> VoiceResult:
        """Return the track. Raises :class:`cloops.core.errors.ServiceError`."""
        ...


# ---------------------------------------------------------------- the end of a provider's part

_slot = threading.local()


@contextmanager
def service_slot(release: Callable[[], None]) -> Iterator[None]:
    """Make ``release`` what :func:`service_done` calls in this thread while the block runs.

    The caller's limiter (:class:`cloops.run.limits.ServiceLimiter`) holds a slot of the
    provider's concurrency limit around a backend call and hands its release here, so the
    backend can end the slot early without knowing who limits it.
    """
    outer = getattr(_slot, "release", None)
    _slot.release = release
    try:
        yield
    finally:
        _slot.release = outer


def service_done() -> None:
    """End the calling thread's current service slot now (no-op outside a slot, or when ended).

    For backends whose call has a tail the provider's limit does not cover: a Replicate
    prediction counts against the concurrency limit until it is terminal, not while its output
    file downloads from the delivery CDN, so the next prediction may start then.
    """
    release = getattr(_slot, "release", None)
    if release is not None:
        release()
