"""The one path every service call takes: backend choice, response cache, retries, ledger.

Layer: **run**. Per process there is one :class:`ServiceHub` per project. Steps never see an
SDK: a step kind builds a request and asks :class:`TaskServices` (the hub bound to its task,
what :class:`cloops.graph.steps.Services` describes), the hub answers it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..core.errors import ServiceError, TransientServiceError
from ..core.turns import TASK_TURNS
from ..data.project import STATE_DIR, Project
from ..services import registry
from ..services.base import (ImageRequest, ImageResult, LLMRequest, LLMResult, VoiceRequest,
                             VoiceResult)
from ..services.cache import ResponseCache, cache_key, job_journal
from .dispatch import call_priority
from .fleet import follow_ledger, shared_tier, worker_limits
from .ledger import CallRecord, Ledger
from .limits import ServiceLimiter


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
        self._limiters: dict[tuple[str, str], ServiceLimiter] = {}
        self._inflight: dict[str, threading.Event] = {}

    def price(self, template: str, model: str):
        """The :class:`cloops.data.config.ModelPrice` of ``model`` in ``template``'s config, or None."""
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
        backend = self._backends.get(key)
        if backend is not None:
            return backend
        # the SDK's first import (and warm-up) once per process, outside the hub's lock: other
        # services' calls go on meanwhile
        registry.preload(resolved.spec)
        with self._lock:
            if key not in self._backends:
                tpl = self.proj.template(template)
                section = {"llm": tpl.config.engine.llm, "image": tpl.config.engine.generation,
                           "voice": tpl.config.engine.voice}.get(service)
                if service == "image":
                    section = section.model_copy(update={"comfyui": {
                        **section.comfyui, "template_dir": str(tpl.dir)}})
                # CLOOPS_STATE_DIR: where a backend may keep what it learnt about its server
                env = {"CLOOPS_STATE_DIR": str(self.proj.root / STATE_DIR), **self.proj.env}
                self._backends[key] = resolved.spec.factory(section, env)
            return self._backends[key]

    def limiter(self, template: str, service: str) -> ServiceLimiter:
        """The limiter of the backend serving ``service`` (shared by every template using that
        backend; limits from the first template that calls it)."""
        name = self.proj.resolved(template, service).spec.name
        with self._lock:
            if (service, name) not in self._limiters:
                eng = self.proj.template(template).config.engine
                section = {"llm": eng.llm, "image": eng.generation, "voice": eng.voice}[service]
                # with shards, each worker takes its part of the account's limits
                concurrency, per_minute, _ = worker_limits(
                    self.proj, template, service, section.concurrency,
                    section.requests_per_minute)
                self._limiters[(service, name)] = ServiceLimiter(concurrency, per_minute)
            return self._limiters[(service, name)]

    def _limited(self, template: str, service: str, fn: Callable[[], Any],
                 priority: tuple = ()) -> Callable[[], Any]:
        if self.backend(template, service).offline:
            return fn  # no provider behind it: nothing to protect
        limiter = self.limiter(template, service)

        def call():
            with limiter.slot(priority):
                return fn()
        return call

    def cache(self, template: str) -> ResponseCache:
        with self._lock:
            if template not in self._caches:
                cfg = self.proj.template(template).config.engine.cache
                shared = shared_tier(self.proj, template)  # cache.shared / CLOOPS_CACHE_URL
                follow_ledger(shared, self.ledger)
                self._caches[template] = ResponseCache(
                    self.proj.root / cfg.dir, enabled=cfg.enabled and not self._no_cache,
                    shared=shared)
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
                self._sleep(wait)
            except ServiceError as exc:
                exc.attempts = attempt
                raise

    # ------------------------------------------------------------ calls

    def _serve(self, meta: CallMeta, service: str, request, call: Callable[[Any], Any],
               get: str, put: str, account: Callable[[Any, CallRecord, Any], None],
               accept: Callable[[Any], bool] | None = None,
               prepare: Callable[[Any], None] | None = None):
        """The path of every call: cache → (single flight) → limits → retries → cache → ledger.

        ``call(backend)`` makes the request; ``prepare(backend)``, if given, runs before each
        attempt outside the service slot (uploads the provider's limit is not about, which
        would otherwise hold a slot idle); ``get``/``put`` name the cache's methods;
        ``account(result, rec, backend)`` fills usage and cost into the ledger record.
        Identical requests in flight at once are paid once: the others wait for the first and
        take its result from the cache. ``accept(result)`` false: the result is returned but
        never cached, and a cached one is not used (an answer that failed validation is asked
        again, not replayed).
        """
        backend = self.backend(meta.template, service)
        rec = CallRecord(service=service, backend=backend.name, model=request.model,
                         template=meta.template, story=meta.story, step=meta.step,
                         target=meta.target, offline=backend.offline)
        t0 = time.monotonic()
        cache = None if backend.offline else self.cache(meta.template)
        key = ""
        if cache is not None:
            with_ann = service == "image" and backend.uses_annotations
            rkey = request.cache_key(with_annotations=True) if with_ann else request.cache_key()
            key = cache_key(service, backend.name, rkey)
        result = None
        owner = False
        while cache is not None and not meta.reroll:
            result = getattr(cache, get)(key)
            if result is not None and (accept is None or accept(result)):
                rec.cache_hit = True
                break
            result = None
            with self._lock:
                waiting = self._inflight.get(key)
                if waiting is None:
                    self._inflight[key] = threading.Event()
                    owner = True
            if owner:
                # the previous owner may have stored its answer between our look-up and our
                # claim: look once more before paying; with a shared tier, claim the request
                # across workers too (or wait for the answer of the worker paying for it)
                def usable():
                    found = getattr(cache, get)(key)
                    return found if found is not None and (
                        accept is None or accept(found)) else None
                with TASK_TURNS.released():  # a shared tier answers over the network
                    again = cache.claim(key, usable)
                if again is not None:
                    result, rec.cache_hit = again, True
                break
            with TASK_TURNS.released():
                waiting.wait()  # the same request is being paid for: take its answer
        try:
            if result is None:
                section = {"llm": "llm", "image": "generation", "voice": "voice"}[service]
                retries = getattr(self.proj.template(meta.template).config.engine, section).max_retries
                try:
                    # a job the provider runs past the request is noted under the request's key
                    # (cloops.services.cache.current_job) until its answer is cached: a killed
                    # run's job is resumed, not paid for twice
                    limited = self._limited(meta.template, service, lambda: call(backend),
                                            call_priority(meta.template, meta.story, meta.step))

                    def attempt():
                        if prepare is not None:
                            prepare(backend)
                        return limited()
                    # the call, its limiter's wait and its backoff: this thread waits
                    # (cloops.core.turns)
                    with job_journal(cache, key) as job, TASK_TURNS.released():
                        result, rec.attempts = self._retrying(
                            meta.template, attempt, 0 if backend.offline else retries)
                except ServiceError as exc:
                    rec.error = str(exc)[:500]
                    rec.attempts = exc.attempts
                    rec.duration_s = time.monotonic() - t0
                    self.ledger.record(rec)
                    raise
                if cache is not None and (accept is None or accept(result)):
                    # another worker's answer to the same request, stored first, wins (not
                    # over a deliberate new take)
                    theirs = getattr(cache, put)(key, result, adopt=not meta.reroll)
                    if theirs is not None:
                        result = theirs
                job.ended()
        finally:
            if owner:
                cache.release(key)  # the shared tier's claim, if this worker held one
                with self._lock:
                    self._inflight.pop(key).set()
        account(result, rec, backend)
        rec.duration_s = time.monotonic() - t0
        self.ledger.record(rec)
        return result

    def _book(self, rec: CallRecord, cost: float) -> None:
        if rec.cache_hit:
            rec.saved_usd = cost
        else:
            rec.cost_usd = cost

    def complete(self, meta: CallMeta, request: LLMRequest,
                 accept: Callable[[LLMResult], bool] | None = None) -> LLMResult:
        """Answer an LLM request (cache first for paid backends). ``accept``: see :meth:`_serve`.

        Raises:
            ServiceError: the call failed (after retries for transient errors).
        """
        def account(result: LLMResult, rec: CallRecord, backend) -> None:
            u = result.usage
            if not rec.cache_hit:  # as images and characters: a cache hit used no tokens
                rec.input_tokens, rec.output_tokens, rec.reasoning_tokens = (
                    u.input_tokens, u.output_tokens, u.reasoning_tokens)
            self._book(rec, 0.0 if backend.offline else self._cost_llm(meta.template, request.model, u))
        return self._serve(meta, "llm", request, lambda b: b.complete(request),
                           "get_llm", "put_llm", account, accept)

    def remember(self, meta: CallMeta, request: LLMRequest, result: LLMResult) -> None:
        """Cache ``result`` as the answer to ``request`` too: a step that re-asked until the
        answer was valid stores it under its first question, so a later run (a revert, a
        re-run after a kill) gets it at once, free, without re-asking."""
        backend = self.backend(meta.template, "llm")
        if not backend.offline:
            self.cache(meta.template).put_llm(
                cache_key("llm", backend.name, request.cache_key()), result)

    def cached(self, meta: CallMeta, request: LLMRequest) -> LLMResult | None:
        """The response cache's answer to ``request``, or None — no call, no ledger row (a
        step asking whether a file is what that answer made). Offline backends: None."""
        backend = self.backend(meta.template, "llm")
        if backend.offline or self._no_cache:
            return None
        return self.cache(meta.template).get_llm(
            cache_key("llm", backend.name, request.cache_key()))

    def generate_image(self, meta: CallMeta, request: ImageRequest) -> ImageResult:
        """Answer an image request (cache first for paid backends).

        Raises:
            ServiceError: the call failed (after retries for transient errors).
        """
        def account(result: ImageResult, rec: CallRecord, backend) -> None:
            rec.images = 0 if rec.cache_hit else result.images_billed
            self._book(rec, 0.0 if backend.offline else
                       self._cost_image(meta.template, request.model, result.images_billed))

        def prepare(backend) -> None:  # e.g. Replicate's reference uploads, outside the slot
            hook = getattr(backend, "prepare_image", None)
            if hook is not None:
                hook(request)
        return self._serve(meta, "image", request, lambda b: b.generate_image(request),
                           "get_image", "put_image", account, prepare=prepare)

    def synthesize(self, meta: CallMeta, request: VoiceRequest) -> VoiceResult:
        """Answer a voice request (cache first for paid backends).

        Raises:
            ServiceError: the call failed (after retries for transient errors).
        """
        def account(result: VoiceResult, rec: CallRecord, backend) -> None:
            rec.audio_s = result.duration_s
            price = None if backend.offline else self.price(meta.template, request.model)
            self._book(rec, result.characters / 1000 * price.per_1k_characters if price else 0.0)
            rec.characters = 0 if rec.cache_hit else result.characters
        return self._serve(meta, "voice", request, lambda b: b.synthesize(request),
                           "get_voice", "put_voice", account)


class TaskServices:
    """The hub bound to one task: the :class:`cloops.graph.steps.Services` a step kind calls.

    Every call is recorded under the task's :class:`CallMeta` (template, story, step, target).
    """

    def __init__(self, hub: ServiceHub, meta: CallMeta):
        self.hub = hub
        self.meta = meta

    def backend(self, service: str):
        """The backend instance serving ``service`` for the task's template."""
        return self.hub.backend(self.meta.template, service)

    def complete(self, request: LLMRequest, *,
                 accept: Callable[[LLMResult], bool] | None = None) -> LLMResult:
        """See :meth:`ServiceHub.complete`."""
        return self.hub.complete(self.meta, request, accept)

    def cached(self, request: LLMRequest) -> LLMResult | None:
        """See :meth:`ServiceHub.cached`."""
        return self.hub.cached(self.meta, request)

    def remember(self, request: LLMRequest, result: LLMResult) -> None:
        """See :meth:`ServiceHub.remember`."""
        self.hub.remember(self.meta, request, result)

    def generate_image(self, request: ImageRequest) -> ImageResult:
        """See :meth:`ServiceHub.generate_image`."""
        return self.hub.generate_image(self.meta, request)

    def synthesize(self, request: VoiceRequest) -> VoiceResult:
        """See :meth:`ServiceHub.synthesize`."""
        return self.hub.synthesize(self.meta, request)


_HUBS: dict[str, ServiceHub] = {}
_HLOCK = threading.Lock()


def hub_for(proj: Project) -> ServiceHub:
    """The process's hub for ``proj``."""
    with _HLOCK:
        key = str(proj.root)
        if key not in _HUBS or _HUBS[key].proj is not proj:
            _HUBS[key] = ServiceHub(proj)
        return _HUBS[key]


def existing_hub(proj: Project) -> ServiceHub | None:
    """The process's hub for ``proj`` if one was made (no service was called otherwise)."""
    with _HLOCK:
        hub = _HUBS.get(str(proj.root))
        return hub if hub is not None and hub.proj is proj else None
