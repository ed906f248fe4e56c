"""The response cache: every paid call's result, addressed by the whole request.

Layer: **services**.

The key is the SHA-256 of the canonical JSON of ``{service, backend, request}`` where
``request`` is the request's ``cache_key()`` — model, every parameter, the rendered prompts and
schema. A hit restores the output with no call. Entries are written atomically as soon as a
call returns, so a killed run re-pays nothing, and reverting an edit to a state built before
costs nothing.

Layout: ``<dir>/<key[:2]>/<key>.json`` (LLM results) and ``<key>.jpg`` + ``<key>.json``
(images, the JSON holding size and billing).

The cache also keeps the **jobs in flight** (``<dir>/jobs/<key>.json``): a provider job that
outlives its request (a Replicate prediction, an OpenAI background response: created, then
polled) is noted by request key from the moment its id is known until its answer is in the
cache, so a run killed while it runs (or while its output is downloaded) resumes that job next
time instead of paying for a second one (:func:`current_job`).

With a **shared tier** (:mod:`cloops.services.shared_cache`, config ``cache.shared`` or
``CLOOPS_CACHE_URL``) the same API spans workers: a miss here is looked up there (and copied
here), an answer stored here is stored there create-only, :meth:`ResponseCache.claim` makes
one worker pay while the others wait for its answer, and a job noted here is noted in that
worker's claim too, so whichever worker takes the request over resumes it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..core.fileio import atomic_write_bytes, atomic_write_text, canonical_json, sha256_bytes
from ..core.fileio import read_bytes as _read_bytes
from ..core.fileio import read_text as _read_text
from .base import ImageResult, LLMResult, Usage, VoiceResult

if TYPE_CHECKING:
    from .shared_cache import SharedTier


TEMP_GRACE_S = 3600.0  # a temp file this old was left by a killed run, not one still writing
# A job noted longer ago than this is not resumed: Replicate deletes the inputs and outputs of
# predictions created through the API an hour after they are created (replicate.com/docs,
# "Data retention"), so its output could no longer be downloaded.
JOB_MAX_AGE_S = 3000.0


def cache_key(service: str, backend: str, request_key: dict) -> str:
    """The cache address of a request (hex SHA-256)."""
    payload = {"service": service, "backend": backend, "request": request_key}
    return sha256_bytes(canonical_json(payload).encode("utf-8"))


class ResponseCache:
    """A folder of cached responses. ``enabled=False`` makes every lookup miss (writes still
    happen, so a deliberate re-roll replaces what a later revert would restore)."""

    def __init__(self, directory: Path, *, enabled: bool = True,
                 shared: "SharedTier | None" = None):
        self.dir = Path(directory)
        self.enabled = enabled
        # the shared tier (cloops.services.shared_cache), consulted after this folder and
        # written after it; None: this machine's folder alone
        self.shared = shared

    def _path(self, key: str, suffix: str) -> str:
        """The entry file of ``key`` (a string: every task reads or writes one)."""
        return os.path.join(self.dir, key[:2], key + suffix)

    # -- the shared tier -------------------------------------------------------------------

    def _tiered(self, key: str, read: Callable[[str], Any]) -> Any:
        """``read(key)`` from this folder; on a miss, the shared tier's entry copied here
        first (checksum verified), then read again."""
        if not self.enabled:
            return None
        result = read(key)
        if result is not None or self.shared is None:
            return result
        files = self.shared.fetch(key)
        if files is None:
            return None
        self._write_files(key, files)
        return read(key)

    def _write_files(self, key: str, files: dict[str, bytes]) -> None:
        for suffix in sorted(files, key=lambda s: s == ".json"):  # a meta file has its media
            atomic_write_bytes(self._path(key, suffix), files[suffix])

    def _share(self, key: str, suffixes: tuple[str, ...], read: Callable[[str], Any],
                adopt: bool = True) -> Any:
        """Store the entry just written here in the shared tier; when another worker stored
        the same request first, take its entry (here too) and return its result (None: use
        ours; always with ``adopt`` false: a deliberate new take keeps its own answer)."""
        if self.shared is None or not self.shared.writable:
            return None
        try:
            files = {s: _read_bytes(self._path(key, s)) for s in suffixes}
        except FileNotFoundError:
            return None
        theirs = self.shared.store(key, files)
        if theirs is None or not self.enabled or not adopt:
            return None  # CLOOPS_NO_CACHE or a re-roll: a deliberate new take keeps its own
        self._write_files(key, theirs)
        return read(key)

    def claim(self, key: str, lookup: Callable[[], Any]) -> Any:
        """``lookup()`` (this folder, then the shared tier); on a miss, claim the paying of
        request ``key`` across workers: returns None once this worker holds the claim (pay,
        ``put_*``, then :meth:`release`), or the answer another worker stored while this one
        waited for its live claim (polled with backoff, 0.05 s growing to 2 s). Without a
        writable shared tier: ``lookup()``."""
        result = lookup()
        if result is not None or self.shared is None or not self.enabled:
            return result
        wait = 0.05
        waited = False
        while True:
            state = self.shared.try_claim(key)
            if state != "live":
                # stored just before its holder released the claim? look once more
                result = lookup()
                if result is not None:
                    self.release(key)
                return result
            if not waited:
                self.shared.note_wait()
                waited = True
            time.sleep(wait)
            wait = min(2.0, wait * 1.5)
            result = lookup()
            if result is not None:
                return result

    def release(self, key: str) -> None:
        """Drop this worker's claim on request ``key`` (see :meth:`claim`)."""
        if self.shared is not None:
            self.shared.release(key)

    # -- entries ---------------------------------------------------------------------------

    def get_llm(self, key: str) -> LLMResult | None:
        return self._tiered(key, self._get_llm)

    def _get_llm(self, key: str) -> LLMResult | None:
        try:
            raw = json.loads(_read_text(self._path(key, ".json")))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.touch(key)
        return LLMResult(text=raw["text"], data=raw.get("data"), usage=Usage(**raw["usage"]),
                         model=raw.get("model", ""))

    def put_llm(self, key: str, result: LLMResult, *,
                adopt: bool = True) -> LLMResult | None:
        """Store ``result`` (here, then in the shared tier). Returns None, or the answer
        another worker stored first for the same request (use it instead: every worker then
        builds from one answer)."""
        # not canonical_json: the parsed output keeps the model's key order, so a cache hit
        # writes the same pages.json, byte for byte, as the call it replays
        atomic_write_text(self._path(key, ".json"), json.dumps(
            {"text": result.text, "data": result.data, "usage": result.usage.as_dict(),
             "model": result.model}, ensure_ascii=False, separators=(",", ":")))
        return self._share(key, (".json",), self._get_llm, adopt)

    def get_image(self, key: str) -> ImageResult | None:
        return self._tiered(key, self._get_image)

    def _get_image(self, key: str) -> ImageResult | None:
        try:
            meta = json.loads(_read_text(self._path(key, ".json")))
            jpeg = _read_bytes(self._path(key, ".jpg"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.touch(key)
        return ImageResult(jpeg=jpeg, width_px=meta["width_px"], height_px=meta["height_px"],
                           images_billed=meta.get("images_billed", 1))

    def put_image(self, key: str, result: ImageResult, *,
                  adopt: bool = True) -> ImageResult | None:
        """Store ``result``; returns None or another worker's answer (see :meth:`put_llm`)."""
        # image bytes first: a meta file always has its image
        atomic_write_bytes(self._path(key, ".jpg"), result.jpeg)
        atomic_write_text(self._path(key, ".json"), canonical_json(
            {"width_px": result.width_px, "height_px": result.height_px,
             "images_billed": result.images_billed}))
        return self._share(key, (".jpg", ".json"), self._get_image, adopt)

    def get_voice(self, key: str) -> VoiceResult | None:
        return self._tiered(key, self._get_voice)

    def _get_voice(self, key: str) -> VoiceResult | None:
        try:
            meta = json.loads(_read_text(self._path(key, ".json")))
            mp3 = _read_bytes(self._path(key, ".mp3"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.touch(key)
        return VoiceResult(mp3=mp3, duration_s=meta["duration_s"],
                           timings=tuple(tuple(t) for t in meta["timings"]),
                           characters=meta.get("characters", 0),
                           words=tuple((w, s, e) for w, s, e in meta.get("words") or ()),
                           words_estimated=bool(meta.get("words_estimated", False)))

    def put_voice(self, key: str, result: VoiceResult, *,
                  adopt: bool = True) -> VoiceResult | None:
        """Store ``result``; returns None or another worker's answer (see :meth:`put_llm`)."""
        atomic_write_bytes(self._path(key, ".mp3"), result.mp3)
        atomic_write_text(self._path(key, ".json"), canonical_json(
            {"duration_s": result.duration_s, "timings": [list(t) for t in result.timings],
             "characters": result.characters, "words": [list(w) for w in result.words],
             "words_estimated": result.words_estimated}))
        return self._share(key, (".mp3", ".json"), self._get_voice, adopt)

    def touch(self, key: str) -> None:
        """Mark an entry used now (a hit), so pruning by age keeps what is still in use."""
        for suffix in (".json", ".jpg", ".mp3"):
            try:
                os.utime(self._path(key, suffix))
            except FileNotFoundError:
                pass

    def prune(self, *, older_than_s: float) -> tuple[int, int]:
        """Delete entries not used for ``older_than_s`` seconds, and the temp files of writes a
        killed run left behind (``.<name>.<pid>-<thread>-<n>.tmp``, see
        :func:`cloops.core.fileio.atomic_write_bytes`) once they are :data:`TEMP_GRACE_S` old — a
        write takes milliseconds, so none of a run still going is touched. Returns (entries,
        bytes) removed; temp files count in the bytes only."""
        now = time.time()
        cutoff = now - older_than_s
        removed = freed = 0
        if not self.dir.is_dir():
            return 0, 0
        for meta in self.dir.glob("??/*.json"):  # entries live in <key[:2]>/ folders
            try:
                if meta.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            for p in (meta, meta.with_suffix(".jpg"), meta.with_suffix(".mp3")):
                try:
                    freed += p.stat().st_size
                    p.unlink()
                except FileNotFoundError:
                    pass
            removed += 1
        for tmp in self.dir.glob("*/.*.tmp"):
            try:
                st = tmp.stat()
                if st.st_mtime <= now - TEMP_GRACE_S:
                    tmp.unlink()
                    freed += st.st_size
            except FileNotFoundError:
                pass
        return removed, freed

    # -- jobs in flight ------------------------------------------------------------------------

    def _job_path(self, key: str) -> Path:
        return self.dir / "jobs" / f"{key}.json"

    def job(self, key: str) -> str | None:
        """The id of the provider job started for request ``key`` and not ended, if it was
        noted less than :data:`JOB_MAX_AGE_S` ago (an older note is removed)."""
        path = self._job_path(key)
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
            if time.time() - float(note["at"]) <= JOB_MAX_AGE_S:
                return str(note["id"])
        except FileNotFoundError:
            # another worker's: the claim this worker took over from it (shared tier)
            noted = self.shared.job(key) if self.shared is not None else None
            if noted is not None and time.time() - noted[1] <= JOB_MAX_AGE_S:
                return noted[0]
            if noted is not None:
                self.end_job(key)
            return None
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: as good as none
        self.end_job(key)
        return None

    def start_job(self, key: str, job_id: str) -> None:
        """Note that request ``key`` started provider job ``job_id`` (here, and in this
        worker's claim on the shared tier, so a worker that takes it over resumes it)."""
        atomic_write_text(self._job_path(key), json.dumps({"id": job_id, "at": time.time()}))
        if self.shared is not None:
            self.shared.note_job(key, job_id)

    def end_job(self, key: str) -> None:
        """Forget request ``key``'s job (it ended, or cannot be resumed)."""
        try:
            self._job_path(key).unlink()
        except FileNotFoundError:
            pass
        if self.shared is not None and self.shared.job(key) is not None:
            self.shared.note_job(key, None)

    def stats(self) -> dict[str, Any]:
        """``{"entries": int, "bytes": int}``."""
        n = size = 0
        if self.dir.is_dir():
            for root, dirs, files in os.walk(self.dir):
                if root == str(self.dir) and "jobs" in dirs:
                    dirs.remove("jobs")  # notes of jobs in flight, not entries
                for f in files:
                    if f.endswith(".json"):
                        n += 1
                    size += os.path.getsize(os.path.join(root, f))
        return {"entries": n, "bytes": size}


class Job:
    """The job journal of the call a backend is making (:func:`current_job`): ``resumable()``
    before starting a job, ``started(job_id)`` as soon as its id is known, ``ended()`` once
    nothing more can come of it — the backend calls it when the job failed or cannot be
    resumed, the hub once the answer is in the cache (until then a kill, or a failed download,
    can still resume the job). Without a journal (offline backends, calls outside the hub)
    every method does nothing."""

    def __init__(self, cache: ResponseCache | None = None, key: str = ""):
        self._cache = cache
        self._key = key
        self._noted = False  # a note exists (found or written): ended() must remove it

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache this call is journaled in (None outside a hub call): a backend
        keeps its notes of uploads beside it (:class:`cloops.services.uploads.UploadBook`)."""
        return self._cache

    def resumable(self) -> str | None:
        """The id of a job this same request started in an earlier, interrupted run."""
        job_id = self._cache.job(self._key) if self._cache is not None else None
        self._noted = self._noted or job_id is not None
        return job_id

    def started(self, job_id: str) -> None:
        if self._cache is not None:
            self._cache.start_job(self._key, job_id)
            self._noted = True

    def ended(self) -> None:
        if self._cache is not None and self._noted:
            self._cache.end_job(self._key)
            self._noted = False


_NO_JOB = Job()
_current = threading.local()


@contextmanager
def job_journal(cache: ResponseCache | None, key: str) -> Iterator[Job]:
    """Make ``cache``'s journal of request ``key`` the calling thread's :func:`current_job`
    for the duration, and yield it (the hub wraps each paid call in it, and ends the job once
    the answer is cached)."""
    previous = getattr(_current, "job", None)
    job = Job(cache, key) if cache is not None and key else _NO_JOB
    _current.job = job
    try:
        yield job
    finally:
        _current.job = previous


def current_job() -> Job:
    """The job journal of the call the calling thread is making (a no-op one outside a hub
    call)."""
    return getattr(_current, "job", None) or _NO_JOB
