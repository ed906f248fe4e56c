"""The one path every service call takes: backend choice, response cache, retries, ledger.

Per process there is one :class:`ServiceHub` per project. Templates' steps never see an SDK:
the engine builds a request, the hub answers it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ServiceError, TransientServiceError
from ..ledger import CallRecord, Ledger
from ..project import Project
from .base import (ImageRequest, ImageResult, LLMRequest, LLMResult, VoiceRequest,
                   VoiceResult)
from .cache import ResponseCache, cache_key



@dataclass(frozen=True)
class CallMeta:
    """Who is calling: shown in errors and recorded in the ledger."""

    template: str
    story: str
    step: str
    target: str
    reroll: bool = False  # a deliberate new take: skip the cache lookup (the result is stored)


class ServiceHub:
    """Answers LLM and image requests for one project (thread-safe)."""

    def __init__(self, proj: Project, *, ledger: Ledger | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.proj = proj
        self.ledger = ledger or Ledger(proj.root)
        self._backends: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._sleep = sleep
        no_cache = proj.env.get("CLOOPS_NO_CACHE", "").lower() in ("1", "true", "yes")
        self._caches: dict[str, ResponseCache] = {}
        self._no_cache = no_cache
        self.retries_waited_s = 0.0

    def price(self, template: str, model: str):
        """The :class:`cloops.config.ModelPrice` of ``model`` in ``template``'s config, or None."""
        return self.proj.template(template).config.engine.prices.get(model)

    def _cost_llm(self, template: str, model: str, usage) -> float:
        p = self.price(template, model)
        if p is None:
            return 0.0
        # reasoning tokens are billed as output tokens and already counted in output_tokens
        return (usage.input_tokens * p.input_per_1m + usage.output_tokens * p.output_per_1m) / 1e6

    def _cost_image(self, template: str, model: str, images: int) -> float:
        p = self.price(template, model)
        return images * p.per_image if p is not None else 0.0

    # ------------------------------------------------------------ plumbing

    def backend(self, template: str, service: str):
        """The backend instance serving ``service`` for ``template`` (constructed once)."""
        resolved = self.proj.resolved(template, service)
        key = (template, resolved.spec.name)
        with self._lock:
            if key not in self._backends:
                tpl = self.proj.template(template)
                section = {"llm": tpl.config.engine.llm, "image": tpl.config.engine.generation,
                           "voice": tpl.config.engine.voice}.get(service)
                if service == "image":
                    section = section.model_copy(update={"comfyui": {
                        **section.comfyui, "template_dir": str(tpl.dir)}})
                self._backends[key] = resolved.spec.factory(section, self.proj.env)
            return self._backends[key]

    def cache(self, template: str) -> ResponseCache:
        with self._lock:
            if template not in self._caches:
                cfg = self.proj.template(template).config.engine.cache
                self._caches[template] = ResponseCache(
                    self.proj.root / cfg.dir, enabled=cfg.enabled and not self._no_cache)
            return self._caches[template]

    def _retrying(self, template: str, fn: Callable[[], Any], max_retries: int) -> tuple[Any, int]:
        """Call ``fn``; retry transient errors with exponential backoff and full jitter,
        honouring the server's Retry-After (config ``retry``). Returns ``(result, attempts)``.

        Raises:
            ServiceError: a permanent error at once, a transient one when retries run out
                (its ``attempts`` says how many were made).
        """
        cfg = self.proj.template(template).config.engine.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(), attempt
            except TransientServiceError as exc:
                if attempt > max_retries:
                    exc.attempts = attempt
                    raise
                wait = random.uniform(0, min(cfg.cap_s, cfg.base_s * 2 ** (attempt - 1)))
                if exc.retry_after_s is not None:
                    wait = max(wait, min(exc.retry_after_s, cfg.cap_s))
                self.retries_waited_s += wait
                self._sleep(wait)
            except ServiceError as exc:
                exc.attempts = attempt
                raise

    # ------------------------------------------------------------ calls

    def complete(self, meta: CallMeta, request: LLMRequest) -> LLMResult:
        """Answer an LLM request (cache first for paid backends).

        Raises:
            ServiceError: the call failed (after retries for transient errors).
        """
        backend = self.backend(meta.template, "llm")
        rec = CallRecord(service="llm", backend=backend.name, model=request.model,
                         template=meta.template, story=meta.story, step=meta.step,
                         target=meta.target, offline=backend.offline)
        t0 = time.monotonic()
        cache = None if backend.offline else self.cache(meta.template)
        key = cache_key("llm", backend.name, request.cache_key()) if cache else ""
        result = cache.get_llm(key) if cache and not meta.reroll else None
        if result is not None:
            rec.cache_hit = True
        else:
            try:
                llm_cfg = self.proj.template(meta.template).config.engine.llm
                result, rec.attempts = self._retrying(meta.template, lambda: backend.complete(request),
                                                      0 if backend.offline else llm_cfg.max_retries)
            except ServiceError as exc:
                rec.error = str(exc)[:500]
                rec.attempts = exc.attempts
                rec.duration_s = time.monotonic() - t0
                self.ledger.record(rec)
                raise
            if cache:
                cache.put_llm(key, result)
        u = result.usage
        rec.input_tokens, rec.output_tokens, rec.reasoning_tokens = (
            u.input_tokens, u.output_tokens, u.reasoning_tokens)
        cost = 0.0 if backend.offline else self._cost_llm(meta.template, request.model, u)
        if rec.cache_hit:
            rec.saved_usd = cost
        else:
            rec.cost_usd = cost
        rec.duration_s = time.monotonic() - t0
        self.ledger.record(rec)
        return result

    def generate_image(self, meta: CallMeta, request: ImageRequest) -> ImageResult:
        """Answer an image request (cache first for paid backends).

        Raises:
            ServiceError: the call failed (after retries for transient errors).
        """
        backend = self.backend(meta.template, "image")
        rec = CallRecord(service="image", backend=backend.name, model=request.model,
                         template=meta.template, story=meta.story, step=meta.step,
                         target=meta.target, offline=backend.offline)
        t0 = time.monotonic()
        cache = None if backend.offline else self.cache(meta.template)
        key = cache_key("image", backend.name,
                        request.cache_key(with_annotations=backend.uses_annotations)) if cache else ""
        result = cache.get_image(key) if cache and not meta.reroll else None
        if result is not None:
            rec.cache_hit = True
        else:
            try:
                gen = self.proj.template(meta.template).config.engine.generation
                result, rec.attempts = self._retrying(meta.template,
                                                      lambda: backend.generate_image(request),
                                                      0 if backend.offline else gen.max_retries)
            except ServiceError as exc:
                rec.error = str(exc)[:500]
                rec.attempts = exc.attempts
                rec.duration_s = time.monotonic() - t0
                self.ledger.record(rec)
                raise
            if cache:
                cache.put_image(key, result)
        rec.images = 0 if rec.cache_hit else result.images_billed
        cost = 0.0 if backend.offline else self._cost_image(meta.template, request.model,
                                                            result.images_billed)
        if rec.cache_hit:
            rec.saved_usd = cost
        else:
            rec.cost_usd = cost
        rec.duration_s = time.monotonic() - t0
        self.ledger.record(rec)
        return result


def _synthesize(self, meta: CallMeta, request: VoiceRequest) -> VoiceResult:
    """Answer a voice request (cache first for paid backends).

    Raises:
        ServiceError: the call failed (after retries for transient errors).
    """
    backend = self.backend(meta.template, "voice")
    rec = CallRecord(service="voice", backend=backend.name, model=request.model,
                     template=meta.template, story=meta.story, step=meta.step,
                     target=meta.target, offline=backend.offline)
    t0 = time.monotonic()
    cache = None if backend.offline else self.cache(meta.template)
    key = cache_key("voice", backend.name, request.cache_key()) if cache else ""
    result = cache.get_voice(key) if cache and not meta.reroll else None
    if result is not None:
        rec.cache_hit = True
    else:
        try:
            cfg = self.proj.template(meta.template).config.engine.voice
            result, rec.attempts = self._retrying(meta.template,
                                                  lambda: backend.synthesize(request),
                                                  0 if backend.offline else cfg.max_retries)
        except ServiceError as exc:
            rec.error = str(exc)[:500]
            rec.attempts = exc.attempts
            rec.duration_s = time.monotonic() - t0
            self.ledger.record(rec)
            raise
        if cache:
            cache.put_voice(key, result)
    rec.characters = result.characters
    rec.audio_s = result.duration_s
    price = None if backend.offline else self.price(meta.template, request.model)
    cost = result.characters / 1000 * price.per_1k_characters if price else 0.0
    if rec.cache_hit:
        rec.saved_usd, rec.characters = cost, 0
    else:
        rec.cost_usd = cost
    rec.duration_s = time.monotonic() - t0
    self.ledger.record(rec)
    return result


ServiceHub.synthesize = _synthesize  # type: ignore[attr-defined]

_HUBS: dict[str, ServiceHub] = {}
_HLOCK = threading.Lock()


def hub_for(proj: Project) -> ServiceHub:
    """The process's hub for ``proj``."""
    with _HLOCK:
        key = str(proj.root)
        if key not in _HUBS or _HUBS[key].proj is not proj:
            _HUBS[key] = ServiceHub(proj)
        return _HUBS[key]
