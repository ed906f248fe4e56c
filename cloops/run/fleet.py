"""Many workers, one backlog: shards, per-worker limits, the shared cache tier of a run, and
each worker's ledger rows on the shared URL.

Layer: **run**. cloops schedules nothing itself: an existing engine starts the workers
(Kubernetes Indexed Jobs, Cloud Run Jobs, GNU parallel over ssh: ``deploy/``), each with the
templates, the backlog and the shared URL; this module makes any number of them safe at once.

* **Shards** (:func:`shard_from_env`): ``CLOOPS_SHARD=i/N``; or ``JOB_COMPLETION_INDEX`` (a
  Kubernetes Indexed Job's pod index, 0…completions−1) with ``CLOOPS_SHARD_COUNT``; or Cloud
  Run Jobs' ``CLOUD_RUN_TASK_INDEX`` / ``CLOUD_RUN_TASK_COUNT``. A worker builds the pending
  stories whose stable hash of ``template/id`` (SHA-256, first 8 bytes, modulo N) is i.
* **Per-worker limits** (:func:`worker_limits`): each service's configured account limits
  divided by N, rounded up, unless ``limits.perWorker.<service>`` sets them.
* **The shared tier** (:func:`shared_tier`): ``CLOOPS_CACHE_URL`` or ``cache.shared``,
  checked at start (:func:`check_shared`: one clear error naming the URL and the variable).
* **The ledger** (:class:`LedgerUploader`): this run's rows go to
  ``ledger/<worker>/<run_id>.jsonl`` on the shared URL every few seconds and at the end (a
  worker killed loses at most the last few seconds' rows); ``doit report --shared`` merges
  them. The statuses this worker wrote go to ``statuses/<template>/<worker>.json`` there too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from ..core.errors import InputError

UPLOAD_EVERY_S = 5.0  # ledger rows reach the shared URL this often (GCS: ~1 write/s per name)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based); ``source`` names the variables it came from."""

    index: int
    count: int
    source: str

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The shard this worker builds, from ``env`` (None: every story).

    Raises:
        InputError: a malformed value, naming the variable and the expected form.
    """
    def number(name: str, value: str) -> int:
        try:
            n = int(value.strip())
        except ValueError:
            raise InputError(f"{name}={value!r} is not a whole number.", field=name,
                             fix="set it to a number, e.g. CLOOPS_SHARD=0/4.") from None
        return n

    if env.get("CLOOPS_SHARD"):
        raw = env["CLOOPS_SHARD"]
        i, sep, n = raw.partition("/")
        if not sep:
            raise InputError(f"CLOOPS_SHARD={raw!r} is not of the form i/N.", field="CLOOPS_SHARD",
                             fix="set it to this worker's index and the number of workers, "
                                 "e.g. 0/4 … 3/4.")
        shard = Shard(number("CLOOPS_SHARD", i), number("CLOOPS_SHARD", n), "CLOOPS_SHARD")
    elif env.get("JOB_COMPLETION_INDEX") and env.get("CLOOPS_SHARD_COUNT"):
        shard = Shard(number("JOB_COMPLETION_INDEX", env["JOB_COMPLETION_INDEX"]),
                      number("CLOOPS_SHARD_COUNT", env["CLOOPS_SHARD_COUNT"]),
                      "JOB_COMPLETION_INDEX/CLOOPS_SHARD_COUNT")
    elif env.get("CLOUD_RUN_TASK_INDEX") and env.get("CLOUD_RUN_TASK_COUNT"):
        shard = Shard(number("CLOUD_RUN_TASK_INDEX", env["CLOUD_RUN_TASK_INDEX"]),
                      number("CLOUD_RUN_TASK_COUNT", env["CLOUD_RUN_TASK_COUNT"]),
                      "CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT")
    else:
        return None
    if shard.count < 1 or not 0 <= shard.index < shard.count:
        raise InputError(f"shard {shard} (from {shard.source}) is out of range: the index must "
                         "be 0 … count−1 and the count at least 1.", field=shard.source,
                         fix="set e.g. CLOOPS_SHARD=0/4 for the first of four workers.")
    return shard


def shard_of(template: str, story_id: str, count: int) -> int:
    """The shard (0 … count−1) of story ``template/story_id``: stable across machines and
    Python versions (SHA-256 of the UTF-8 key, first 8 bytes, modulo ``count``)."""
    digest = hashlib.sha256(f"{template}/{story_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(template: str, story_id: str, shard: Shard | None) -> bool:
    """True when ``shard`` (None: every story) builds ``template/story_id``."""
    return shard is None or shard_of(template, story_id, shard.count) == shard.index


def worker_limits(proj: Any, template: str, service: str, concurrency: int | None,
                  per_minute: float | None) -> tuple[int | None, float | None, str]:
    """``(concurrency, requests per minute, how)`` for this worker: the account limits
    divided by the shard count (rounded up), or ``limits.perWorker.<service>``."""
    eng = proj.template(template).config.engine
    override = eng.limits.per_worker.get(service)
    if override is not None:
        return (override.concurrency or concurrency,
                override.requests_per_minute or per_minute, "limits.perWorker")
    shard = shard_from_env(proj.env)
    if shard is None or shard.count == 1:
        return concurrency, per_minute, ""
    n = shard.count
    return (math.ceil(concurrency / n) if concurrency else None,
            float(math.ceil(per_minute / n)) if per_minute else None,
            f"account limits ÷ {n}, rounded up")


def worker_id(env: Mapping[str, str]) -> str:
    """``CLOOPS_WORKER_ID``, else ``[s<i>-]<hostname>-<pid>`` (a pod's hostname is its name)."""
    if env.get("CLOOPS_WORKER_ID"):
        return env["CLOOPS_WORKER_ID"]
    shard = shard_from_env(env)
    prefix = f"s{shard.index}of{shard.count}-" if shard is not None else ""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- the shared tier

@dataclass(frozen=True)
class SharedSetting:
    """Where the shared tier is and what set it."""

    url: str
    source: str
    mode: str
    options: dict
    lease_s: float


def shared_setting(proj: Any, template: str) -> SharedSetting | None:
    """The shared tier ``template`` uses: ``CLOOPS_CACHE_URL`` (then ``CLOOPS_CACHE_MODE``)
    over ``cache.shared`` / ``cache.sharedMode``; None when neither is set.

    Raises:
        InputError: ``CLOOPS_CACHE_MODE`` is neither ``read`` nor ``write``.
    """
    cfg = proj.template(template).config.engine.cache
    env = proj.env
    url, source = env.get("CLOOPS_CACHE_URL") or cfg.shared, "CLOOPS_CACHE_URL"
    if not env.get("CLOOPS_CACHE_URL"):
        source = f"cache.shared in templates/{template}/config.json"
    if not url:
        return None
    mode = env.get("CLOOPS_CACHE_MODE") or cfg.shared_mode
    if mode not in ("read", "write"):
        raise InputError(f"CLOOPS_CACHE_MODE={mode!r} is not a mode.", field="CLOOPS_CACHE_MODE",
                         fix="set it to 'read' (profit, never write) or 'write'.")
    if "://" not in url and not os.path.isabs(url):
        url = str(proj.root / url)
    return SharedSetting(url, source, mode, dict(cfg.shared_options), cfg.lease_s)


_TIERS: dict[tuple, Any] = {}
_TLOCK = threading.Lock()


def shared_tier(proj: Any, template: str):
    """The process's :class:`~cloops.services.shared_cache.SharedTier` for ``template`` (one
    per URL and mode), or None without a shared URL."""
    setting = shared_setting(proj, template)
    if setting is None:
        return None
    key = (setting.url, setting.mode, json.dumps(setting.options, sort_keys=True, default=str))
    with _TLOCK:
        tier = _TIERS.get(key)
        if tier is None:
            from ..services.shared_cache import SharedTier
            tier = _TIERS[key] = SharedTier(
                setting.url, source=setting.source, storage_options=setting.options,
                mode=setting.mode, lease_s=setting.lease_s, worker=worker_id(proj.env))
        return tier


def tiers() -> list:
    """Every shared tier this process opened."""
    with _TLOCK:
        return list(_TIERS.values())


def check_shared(proj: Any) -> None:
    """Open and probe the shared tier of every template with a backlog (run start).

    Raises:
        SharedCacheError: one is unreachable (the message names the URL and the variable).
        InputError: a bad ``CLOOPS_CACHE_MODE`` or shard variable.
    """
    shard_from_env(proj.env)
    checked = set()
    for b in proj.backlogs:
        tier = shared_tier(proj, b.template)
        if tier is not None and id(tier) not in checked:
            tier.check()
            checked.add(id(tier))


def header_lines(proj: Any) -> list[str]:
    """The run header's lines about the fleet: the shard, this worker's limits, the tier."""
    lines = []
    shard = shard_from_env(proj.env)
    if shard is not None:
        lines.append(f"[bold]shard {shard}[/bold] (from {shard.source}): this worker builds the "
                     "pending stories whose hash of template/id falls in it · worker "
                     f"{worker_id(proj.env)}")
    for b in proj.backlogs:
        eng = proj.template(b.template).config.engine
        parts = []
        for service, section in (("llm", eng.llm), ("image", eng.generation),
                                 ("voice", eng.voice)):
            conc, rpm, how = worker_limits(proj, b.template, service, section.concurrency,
                                           section.requests_per_minute)
            if how:
                parts.append(f"{service} {conc} in flight"
                             + (f", {rpm:g}/min" if rpm else "") + f" ({how})")
        if parts:
            lines.append(f"  {b.template} limits per worker: " + " · ".join(parts))
        setting = shared_setting(proj, b.template)
        if setting is not None:
            from ..services.shared_cache import redact_url
            lines.append(f"  {b.template} shared cache: {redact_url(setting.url)} "
                         f"({'read-only' if setting.mode == 'read' else 'read-write'}, "
                         f"from {setting.source})")
    return list(dict.fromkeys(lines))


# --------------------------------------------------------------------------- the ledger

class LedgerUploader:
    """Uploads a run's ledger rows to ``ledger/<worker>/<run_id>.jsonl`` on the tier, every
    :data:`UPLOAD_EVERY_S` seconds while rows come in and once at the end (:meth:`flush`)."""

    def __init__(self, tier: Any, ledger: Any):
        self.tier = tier
        self.ledger = ledger
        self.rel = f"ledger/{tier.worker}/{ledger.run_id}.jsonl"
        self._sent = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cloops-ledger-up")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(UPLOAD_EVERY_S):
            self.flush()

    def flush(self) -> bool:
        """Upload the rows if any came since the last upload; False when not uploaded."""
        with self._lock:
            rows = self.ledger.calls()
            if len(rows) == self._sent or not self.tier.writable:
                return False
            data = "".join(json.dumps({**r, "worker": self.tier.worker}, default=str) + "\n"
                           for r in rows).encode("utf-8")
            ok = self.tier.write(self.rel, data)
            if ok:
                self._sent = len(rows)
            return ok

    def stop(self) -> None:
        self._stop.set()
        self.flush()


_UPLOADERS: dict[int, LedgerUploader] = {}


def follow_ledger(tier: Any, ledger: Any) -> None:
    """Start uploading ``ledger``'s rows to ``tier`` (once per tier; nothing in read mode)."""
    if tier is None or tier.mode == "read":
        return
    with _TLOCK:
        if id(tier) not in _UPLOADERS:
            _UPLOADERS[id(tier)] = LedgerUploader(tier, ledger)


def finish(proj: Any, statuses: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """End of run: the last ledger upload, this worker's statuses to the shared URL, and the
    lines to print (what each tier did, its problems, where the statuses went).

    ``statuses``: ``{"<template>/<id>": {"status", "completedAt", "error"}}`` of the stories
    this worker built."""
    with _TLOCK:
        uploaders = list(_UPLOADERS.values())
    for up in uploaders:
        up.stop()
    lines = []
    shard = shard_from_env(proj.env)
    by_template: dict[str, dict] = {}
    for key, st in (statuses or {}).items():
        t, _, sid = key.partition("/")
        by_template.setdefault(t, {})[sid] = dict(st)
    for t, items in sorted(by_template.items()):
        backlog = next((b for b in proj.backlogs if b.template == t), None)
        where = f"backlogs/{backlog.path.name}" if backlog is not None else "its backlog"
        shared_note = ""
        tier = shared_tier(proj, t)
        if tier is not None and tier.writable:
            rel = f"statuses/{t}/{tier.worker}.json"
            if tier.write(rel, json.dumps(items, indent=1, default=str).encode("utf-8")):
                shared_note = f" and {tier.url}/{rel}"
        scope = f"shard {shard}'s" if shard is not None else "its"
        lines.append(f"statuses of {len(items)} {t} stories ({scope} only) written to {where} on "
                     f"this machine{shared_note}")
    for tier in tiers():
        lines.append(tier.summary())
        for p in tier.problems:
            lines.append(f"[bold red]{p}[/bold red]" if tier.lost else f"[yellow]{p}[/yellow]")
    return lines
