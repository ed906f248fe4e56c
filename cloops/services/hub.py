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
from .base import ImageRequest, ImageResult, LLMRequest, LLMResult
from .cache import ResponseCache, cache_key

RETRY_BASE_S = 1.0      # first backoff; doubles each attempt
RETRY_CAP_S = 60.0      # longest single wait


@dataclass(frozen=True)
class CallMeta:
    """Who is calling: shown in errors and recorded in the ledger."""

    template: str
    story: str
    step: str
    target: str


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

    # ------------------------------------------------------------ plumbing

    def backend(self, template: str, service: str):
        """The backend instance serving ``service`` for ``template`` (constructed once)."""
        resolved = self.proj.resolved(template, service)
        key = (template, resolved.spec.name)
        with self._lock:
            if key not in self._backends:
                tpl = self.proj.template(template)
                section = {"llm": tpl.config.engine.llm,
                           "image": tpl.config.engine.generation}.get(service)
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

    def _retrying(self, fn: Callable[[], Any], max_retries: int) -> tuple[Any, int]:
        """Call ``fn``; retry transient errors with exponential backoff and full jitter,
        honouring the server's Retry-After. Returns ``(result, attempts)``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(), attempt
            except TransientServiceError as exc:
                if attempt > max_retries:
                    exc.attempts = attempt
                    raise
                wait = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1))
                wait = random.uniform(0, wait)
                if exc.retry_after_s is not None:
                    wait = max(wait, min(exc.retry_after_s, RETRY_CAP_S))
                self._sleep(wait)

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
        result = cache.get_llm(key) if cache else None
        if result is not None:
            rec.cache_hit = True
        else:
            try:
                llm_cfg = self.proj.template(meta.template).config.engine.llm
                result, rec.attempts = self._retrying(lambda: backend.complete(request),
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
        result = cache.get_image(key) if cache else None
        if result is not None:
            rec.cache_hit = True
        else:
            try:
                gen = self.proj.template(meta.template).config.engine.generation
                result, rec.attempts = self._retrying(lambda: backend.generate_image(request),
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
        rec.duration_s = time.monotonic() - t0
        self.ledger.record(rec)
        return result


_HUBS: dict[str, ServiceHub] = {}
_HLOCK = threading.Lock()


def hub_for(proj: Project) -> ServiceHub:
    """The process's hub for ``proj``."""
    with _HLOCK:
        key = str(proj.root)
        if key not in _HUBS or _HUBS[key].proj is not proj:
            _HUBS[key] = ServiceHub(proj)
        return _HUBS[key]
