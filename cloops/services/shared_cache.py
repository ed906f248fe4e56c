"""The shared tier of the response cache: entries, claims and job notes on an fsspec URL, so
that any number of workers (machines, pods, processes) building one backlog pay once for
each distinct request.

Layer: **services**. :class:`cloops.services.cache.ResponseCache` consults it behind its
own ``get``/``put``/job API: a lookup goes local → shared → *claim* → pay → store.

Layout under the URL (``s3://bucket/prefix``, ``gs://bucket/prefix`` or a folder)::

    entries/<key[:2]>/<key>      one object per answer (create-only), checksummed
    claims/<key>.json            who is paying for a request now, until when, its job id
    ledger/<worker>/<run>.jsonl  each worker's ledger rows (cloops.run.fleet)

**Entries** are written create-only (S3 ``If-None-Match: *``; a local folder: a hard link
that fails when the name exists). A refused create (S3 412) means another worker stored
the same request first: its entry is used. An entry is a JSON header line
``{"v": 1, "files": [[suffix, size], ...], "sha256": hex}`` then the bytes of the local
cache's files of that key, concatenated; ``sha256`` covers the ``files`` list and the bytes.
A body that does not match its checksum is a miss, reported (:attr:`SharedTier.problems`),
and the next answer replaces exactly that version (S3 ``If-Match: <etag>``). Remote caches
that teams trust do the same (Bazel's, sccache's; BRIEF.md "Create-only writes").

**Claims.** Before paying, a worker creates ``claims/<key>.json`` create-only:
``{"holder", "until" (epoch s), "job", "jobAt"}``. A worker that finds a live claim waits for
the entry with backoff instead of paying; the holder renews its lease every third of
``lease_s`` from a background thread. An expired claim (its holder died) is taken over by
replacing that version only (S3 ``If-Match``), never by delete-then-create, and keeps the
job id its holder noted (a Replicate prediction, an OpenAI background response), so the taker
resumes that job instead of paying again. Lease expiry compares wall clocks across machines:
keep them in sync (NTP) to well under ``lease_s``.

**Losing the tier.** Every operation is retried (:data:`ATTEMPTS`); when it still fails the
tier is marked lost for the rest of the run, a warning says so once, and every call goes on
with the local cache alone (:attr:`SharedTier.lost`). At start, :meth:`SharedTier.check`
raises :class:`SharedCacheError` naming the URL and the variable that set it.

``mode="read"`` (config ``cache.sharedMode: read``) reads entries and never writes anything:
no entry, no claim, no ledger.

Stores (:mod:`cloops.services.conditional` does the conditional reads and writes):

* S3 through s3fs: ``call_s3("put_object", IfNoneMatch="*" | IfMatch=etag)`` (needs
  botocore > 1.35.20); 412 and 409 are refusals.
* GCS (``gs://``) through gcsfs: entries and claims are created with
  ``ifGenerationMatch=0`` and a claim is taken over or renewed with
  ``ifGenerationMatch=<the generation read>`` on a single multipart upload, so a take-over is
  atomic as on S3: of two workers taking over one expired claim at the same instant, one gets
  HTTP 412 and waits (cloud.google.com/storage/docs/request-preconditions).
* a folder through the OS: create is a hard link that fails when the name exists; replace
  compares the digest and renames under an exclusive ``flock`` of a lock file beside it.
* any other fsspec protocol: ``pipe_file(mode="create")`` to create, and compare-then-write
  to replace, which is not atomic (two workers may both take over one expired claim).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..core.errors import CloopsError
from ..core.fileio import canonical_json
from .conditional import GCS, S3, Refused, Versioned, error_code
from .storage import _scrub, _secrets, redact_url

ATTEMPTS = 3  # tries of one shared-tier operation before the tier is declared lost
RETRY_WAIT_S = 0.3  # first wait between tries (doubles)
DEFAULT_LEASE_S = 60.0
ENTRY_VERSION = 1
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
         "InvalidToken", "AllAccessDisabled", "401", "403"}


class SharedCacheError(CloopsError):
    """The shared tier cannot be used at start (unreachable, no bucket, refused). The
    message names the URL (credentials redacted) and the variable or config key that set it."""


class _Refused(Exception):
    """A precondition failed (S3 412, an existing name): not an error of the tier."""


def default_worker_id() -> str:
    """``CLOOPS_WORKER_ID``, else ``<hostname>-<pid>`` (a Kubernetes pod's name is its
    hostname)."""
    return os.environ.get("CLOOPS_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- stores

class _Store:
    """Conditional object operations on one root. ``version`` is opaque (an ETag, a digest).

    ``read`` → ``(bytes, version)`` or None; ``create`` raises :class:`_Refused` when the name
    exists; ``replace`` raises it when the object is not at ``version``; other failures raise
    whatever the library raises (the tier retries them)."""

    def read(self, rel: str) -> tuple[bytes, str] | None: ...
    def create(self, rel: str, data: bytes) -> str: ...
    def replace(self, rel: str, data: bytes, version: str) -> str: ...
    def delete(self, rel: str) -> None: ...
    def write(self, rel: str, data: bytes) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def probe(self) -> None: ...


class _LocalStore(_Store):
    """A folder (local disk or a network mount). Create: write a temp file and hard-link it to
    the name (fails when the name exists). Replace: under an exclusive ``flock`` of a lock file
    beside it, compare the digest and rename."""

    def __init__(self, root: str):
        self.root = Path(root)

    def _p(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel):
        try:
            data = self._p(rel).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        return tmp

    def create(self, rel, data):
        path = self._p(rel)
        tmp = self._temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _Refused(rel) from None
        finally:
            tmp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def replace(self, rel, data, version):
        path = self._p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            now = self.read(rel)
            if now is None or now[1] != version:
                raise _Refused(rel)
            os.replace(self._temp(path, data), path)
        return hashlib.sha256(data).hexdigest()

    def delete(self, rel):
        self._p(rel).unlink(missing_ok=True)

    def write(self, rel, data):
        path = self._p(rel)
        os.replace(self._temp(path, data), path)

    def list(self, prefix):
        base = self._p(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def probe(self):
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(self.root))


class _FsspecStore(_Store):
    """Any fsspec file system. S3 and GCS get real preconditions
    (:class:`~cloops.services.conditional.Versioned`: S3 ``If-None-Match``/``If-Match``,
    GCS ``ifGenerationMatch``); any other protocol compares then writes (not atomic)."""

    def __init__(self, fs: Any, root: str, protocol: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.s3 = protocol in S3
        self.gcs = protocol in GCS
        self.versioned = Versioned(fs, protocol)
        self.bucket, _, self.prefix = self.root.partition("/")

    def _p(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read(self, rel):
        return self.versioned.read(self._p(rel))

    def create(self, rel, data):
        if self.versioned.atomic:
            try:
                return self.versioned.write(self._p(rel), data, None)
            except Refused:
                raise _Refused(rel) from None
        try:
            self.fs.pipe_file(self._p(rel), data, mode="create")
        except FileExistsError:
            raise _Refused(rel) from None
        got = self.read(rel)
        return got[1] if got else ""

    def replace(self, rel, data, version):
        try:
            return self.versioned.write(self._p(rel), data, version)
        except Refused:
            raise _Refused(rel) from None

    def delete(self, rel):
        try:
            self.fs.rm_file(self._p(rel))
        except FileNotFoundError:
            pass

    def write(self, rel, data):
        self.fs.pipe_file(self._p(rel), data)

    def list(self, prefix):
        try:
            found = self.fs.find(self._p(prefix))
        except FileNotFoundError:
            return []
        n = len(self.root) + 1
        return sorted(p[n:] for p in found)

    def probe(self):
        if self.s3:
            self.fs.call_s3("head_bucket", Bucket=self.bucket)
        elif self.gcs:  # a prefix exists only once something is under it: ask for the bucket
            self.fs.call("GET", "b/{}", self.bucket, json_out=True)
        elif not self.fs.exists(self.root):
            raise FileNotFoundError(errno.ENOENT, "not found", self.root)


# --------------------------------------------------------------------------- entries

def pack_entry(files: Mapping[str, bytes]) -> bytes:
    """One shared entry: a JSON header line, then the files' bytes in the order listed.

    ``files``: ``{suffix: bytes}`` (``{".json": b"...", ".jpg": b"..."}``)."""
    order = sorted(files, key=lambda s: (s == ".json", s))  # media first, meta last
    listing = [[s, len(files[s])] for s in order]
    body = b"".join(files[s] for s in order)
    digest = hashlib.sha256(canonical_json(listing).encode() + b"\n" + body).hexdigest()
    header = json.dumps({"v": ENTRY_VERSION, "files": listing, "sha256": digest},
                        separators=(",", ":")).encode()
    return header + b"\n" + body


def unpack_entry(data: bytes) -> dict[str, bytes] | None:
    """The files of an entry made by :func:`pack_entry`, or None when its header cannot be
    read or its body does not match its sha256."""
    head, sep, body = data.partition(b"\n")
    try:
        meta = json.loads(head)
        listing = [[str(s), int(n)] for s, n in meta["files"]]
        want = str(meta["sha256"])
    except (ValueError, KeyError, TypeError):
        return None
    got = hashlib.sha256(canonical_json(listing).encode() + b"\n" + body).hexdigest()
    if not sep or got != want:
        return None
    out, at = {}, 0
    for suffix, n in listing:
        out[suffix] = body[at:at + n]
        at += n
    return out if at == len(body) else None


# --------------------------------------------------------------------------- the tier

class SharedTier:
    """The shared tier at ``url`` (thread-safe; one per URL and process).

    Args:
        url: an fsspec URL (``s3://bucket/prefix``, ``gs://…``, a folder).
        source: what set it, for messages (``"CLOOPS_CACHE_URL"``,
            ``"cache.shared in templates/x/config.json"``).
        storage_options: passed to fsspec (``endpoint_url`` for a test server or MinIO).
        mode: ``"write"`` (claims, entries) or ``"read"`` (never writes).
        lease_s: a claim's lease, seconds; renewed every ``lease_s / 3`` while held.
        worker: this worker's id (claims name it; the ledger is kept under it).
        warn: prints one loud line (default: stderr).

    Attributes:
        lost: the tier failed mid-run and is no longer used (``lost_reason`` says why).
        problems: lines to report at the end of the run (corrupt entries, the loss).
        counts: ``{"hits", "stored", "raced", "corrupt", "waited", "taken_over"}``.
    """

    def __init__(self, url: str, *, source: str = "CLOOPS_CACHE_URL",
                 storage_options: Mapping[str, Any] | None = None, mode: str = "write",
                 lease_s: float = DEFAULT_LEASE_S, worker: str | None = None,
                 warn: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.url = redact_url(url)
        self.source = source
        self.mode = mode
        self.lease_s = float(lease_s)
        self.worker = worker or default_worker_id()
        self._warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self._clock = clock
        self._sleep = sleep
        self._secrets = _secrets(storage_options or {})
        self.lost = False
        self.lost_reason = ""
        self.problems: list[str] = []
        self.counts = {"hits": 0, "stored": 0, "raced": 0, "corrupt": 0, "waited": 0,
                       "taken_over": 0}
        self._lock = threading.RLock()
        self._held: dict[str, tuple[str, dict]] = {}  # key -> (version, claim body)
        self._key_locks: dict[str, threading.Lock] = {}
        self._corrupt: dict[str, str] = {}  # key -> version of a corrupt entry to replace
        self._renewer: threading.Thread | None = None
        self._store = self._open(url, dict(storage_options or {}))

    # -- plumbing --------------------------------------------------------------------------

    def _open(self, url: str, options: dict) -> _Store:
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        if protocol in ("file", "local"):
            return _LocalStore(url.split("://", 1)[1] if "://" in url else url)
        import fsspec
        from fsspec.core import url_to_fs
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError):
            raise SharedCacheError(
                f"the shared response cache {self.url} (set by {self.source}) has a scheme "
                f"cloops cannot open ('{protocol}'). Fix: use s3://bucket/prefix, "
                "gs://bucket/prefix or a folder.") from None
        options.setdefault("skip_instance_cache", True)
        if protocol in ("s3", "s3a"):
            # fail fast: the tier retries on its own and then goes on without it
            cfg = dict(options.get("config_kwargs") or {})
            cfg.setdefault("connect_timeout", 3)
            cfg.setdefault("read_timeout", 30)
            cfg.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
            options["config_kwargs"] = cfg
            options.setdefault("use_listings_cache", False)
        fs, root = url_to_fs(url, **options)
        if protocol in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own retries (a class attribute, 5 by default)
        return _FsspecStore(fs, root, protocol)

    def _describe(self, exc: BaseException) -> str:
        code = error_code(exc)
        name = type(exc).__name__
        if code in _AUTH or isinstance(exc, PermissionError):
            return f"the credentials were refused ({code or name})"
        if code in ("NoSuchBucket", "404") or isinstance(exc, FileNotFoundError):
            return f"not found ({code or name})"
        detail = _scrub(str(exc), self._secrets).splitlines()[0][:160] if str(exc) else ""
        return f"{code or name}{': ' + detail if detail else ''}"

    @property
    def writable(self) -> bool:
        return self.mode != "read" and not self.lost

    @property
    def active(self) -> bool:
        return not self.lost

    def check(self) -> None:
        """Make sure the tier answers (at the start of a run).

        Raises:
            SharedCacheError: unreachable, no such bucket or folder, credentials refused;
                the message names the URL and :attr:`source`.
        """
        try:
            self._store.probe()
        except Exception as exc:  # noqa: BLE001 - every library error becomes ours, scrubbed
            raise SharedCacheError(
                f"the shared response cache {self.url} (set by {self.source}) cannot be "
                f"used: {self._describe(exc)}. Fix: check the URL and that it is reachable "
                "from this machine (S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the "
                "instance role; GCS: GOOGLE_APPLICATION_CREDENTIALS), or unset "
                f"{self.source} to build with the local cache alone.") from None

    def _op(self, doing: str, fn: Callable[[], Any], default: Any = None) -> Any:
        """``fn()`` retried :data:`ATTEMPTS` times; then the tier is lost and ``default``
        returned. :class:`_Refused` passes through (it is an answer, not a failure)."""
        if self.lost:
            return default
        wait = RETRY_WAIT_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn()
            except _Refused:
                raise
            except Exception as exc:  # noqa: BLE001
                why = self._describe(exc)
                if attempt < ATTEMPTS:
                    self._sleep(wait)
                    wait *= 2
                    continue
                self._lose(f"{doing} failed {ATTEMPTS} times ({why})")
                return default
        return default

    def _lose(self, why: str) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
            self.lost_reason = why
            self._held.clear()
        line = (f"SHARED CACHE LOST: {self.url} ({self.source}): {why}. This worker goes on "
                "with its local cache alone: requests other workers pay for may be paid again.")
        self.problems.append(line)
        self._warn(line)

    # -- entries ---------------------------------------------------------------------------

    @staticmethod
    def _entry(key: str) -> str:
        return f"entries/{key[:2]}/{key}"

    def fetch(self, key: str) -> dict[str, bytes] | None:
        """The files of ``key``'s entry (``{suffix: bytes}``), or None (absent, corrupt — then
        reported — or the tier is lost)."""
        got = self._op("reading an entry", lambda: self._store.read(self._entry(key)))
        if got is None:
            return None
        data, version = got
        files = unpack_entry(data)
        if files is None:
            with self._lock:
                first = key not in self._corrupt
                self._corrupt[key] = version
                self.counts["corrupt"] += first
            if first:
                line = (f"shared cache entry entries/{key[:2]}/{key} at {self.url} does not "
                        "match its sha256: treated as a miss (it is replaced once answered)")
                self.problems.append(line)
                self._warn(line)
            return None
        with self._lock:
            self.counts["hits"] += 1
        return files

    def store(self, key: str, files: Mapping[str, bytes]) -> dict[str, bytes] | None:
        """Store ``key``'s answer create-only. Returns None when stored (or not stored: read
        mode, tier lost), or the files of the entry another worker stored first (to use
        instead of ``files``)."""
        if not self.writable:
            return None
        data = pack_entry(files)
        rel = self._entry(key)
        with self._lock:
            corrupt = self._corrupt.get(key)
        try:
            if corrupt is not None:
                self._op("replacing a corrupt entry",
                         lambda: self._store.replace(rel, data, corrupt))
                with self._lock:
                    self._corrupt.pop(key, None)
            else:
                self._op("storing an entry", lambda: self._store.create(rel, data))
        except _Refused:
            theirs = self.fetch(key)
            if theirs is None and corrupt is None:
                # S3 409: a conflicting write under way, not stored yet: try once more
                try:
                    self._op("storing an entry", lambda: self._store.create(rel, data))
                    return None
                except _Refused:
                    theirs = self.fetch(key)
            with self._lock:
                self.counts["raced"] += 1
            return theirs if theirs is not None and theirs != dict(files) else None
        with self._lock:
            self.counts["stored"] += not self.lost
        return None

    # -- claims ----------------------------------------------------------------------------

    @staticmethod
    def _claim(key: str) -> str:
        return f"claims/{key}.json"

    def try_claim(self, key: str) -> str:
        """Claim the paying of request ``key``: ``"held"`` (this worker pays; a job an
        expired holder noted is kept, see :meth:`job`), ``"live"`` (another worker holds a
        live claim: wait for its entry) or ``"off"`` (read mode or tier lost: pay without)."""
        if not self.writable:
            return "off"
        rel = self._claim(key)
        for _ in range(8):  # each turn is a race lost to another worker: bounded
            now = self._clock()
            body = {"holder": self.worker, "until": now + self.lease_s, "job": None,
                    "jobAt": None}
            try:
                version = self._op("creating a claim", lambda: self._store.create(
                    rel, canonical_json(body).encode()))
            except _Refused:
                version = None
            else:
                if self.lost:
                    return "off"
                self._hold(key, version, body)
                return "held"
            got = self._op("reading a claim", lambda: self._store.read(rel))
            if self.lost:
                return "off"
            if got is None:
                continue  # released meanwhile: create again
            data, version = got
            try:
                old = json.loads(data)
                until = float(old["until"])
            except (ValueError, KeyError, TypeError):
                old, until = {}, 0.0  # unreadable: as good as expired
            if until > now:
                return "live"
            body = {"holder": self.worker, "until": now + self.lease_s,
                    "job": old.get("job"), "jobAt": old.get("jobAt"),
                    "takenFrom": old.get("holder")}
            try:
                new = self._op("taking over a claim", lambda: self._store.replace(
                    rel, canonical_json(body).encode(), version))
            except _Refused:
                continue  # another worker took it over (or its holder renewed it) first
            if self.lost:
                return "off"
            with self._lock:
                self.counts["taken_over"] += 1
            self._warn(f"shared cache: took over the expired claim of worker "
                       f"{old.get('holder', '?')} on request {key[:12]}"
                       + (f" (resuming its job {body['job']})" if body.get("job") else ""))
            self._hold(key, new, body)
            return "held"
        return "live"

    def _hold(self, key: str, version: str, body: dict) -> None:
        with self._lock:
            self._held[key] = (version, body)
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                                 name="cloops-claim-lease")
                self._renewer.start()

    def _key_lock(self, key: str) -> threading.Lock:
        """One lock per claimed key: its renewal, job notes and release never interleave,
        and a slow store delays only that key, not the tier."""
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _rewrite(self, key: str, **changes: Any) -> None:
        """Replace this worker's claim on ``key`` with ``changes`` (its version only)."""
        with self._key_lock(key):
            with self._lock:
                held = self._held.get(key)
            if held is None or self.lost:
                return
            version, body = held
            body = {**body, **changes}
            try:
                new = self._op("renewing a claim", lambda: self._store.replace(
                    self._claim(key), canonical_json(body).encode(), version))
            except _Refused:
                with self._lock:
                    self._held.pop(key, None)
                self._warn(f"shared cache: the claim on request {key[:12]} was taken over by "
                           "another worker (this one was too slow to renew it)")
                return
            if new is not None:
                with self._lock:
                    self._held[key] = (new, body)

    def _renew_loop(self) -> None:
        while True:
            self._sleep(max(0.05, self.lease_s / 3))
            with self._lock:
                keys = list(self._held)
                if self.lost:
                    return
            for key in keys:
                self._rewrite(key, until=self._clock() + self.lease_s)

    def release(self, key: str) -> None:
        """Drop this worker's claim on ``key`` (its answer is stored, or it failed: another
        worker may try)."""
        with self._key_lock(key):
            with self._lock:
                held = self._held.pop(key, None)
                self._key_locks.pop(key, None)
            if held is not None:
                self._op("releasing a claim", lambda: self._store.delete(self._claim(key)))

    def job(self, key: str) -> tuple[str, float] | None:
        """``(job id, noted at epoch s)`` in this worker's claim on ``key``, or None."""
        with self._lock:
            held = self._held.get(key)
        if held is None or not held[1].get("job"):
            return None
        return str(held[1]["job"]), float(held[1].get("jobAt") or 0.0)

    def note_job(self, key: str, job_id: str | None) -> None:
        """Note (or with None, clear) the provider job of this worker's claim on ``key``."""
        self._rewrite(key, job=job_id, jobAt=self._clock() if job_id else None)

    def note_wait(self) -> None:
        """Count one wait for another worker's answer (for :meth:`summary`)."""
        with self._lock:
            self.counts["waited"] += 1

    # -- other objects ---------------------------------------------------------------------

    def write(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` unconditionally (ledger rows); False in read mode or when lost."""
        if not self.writable:
            return False
        self._op(f"writing {rel}", lambda: self._store.write(rel, data))
        return not self.lost

    def read(self, rel: str) -> bytes | None:
        got = self._op(f"reading {rel}", lambda: self._store.read(rel))
        return got[0] if got else None

    def list(self, prefix: str) -> list[str]:
        return self._op(f"listing {prefix}", lambda: self._store.list(prefix), default=[])

    def summary(self) -> str:
        """One line: what the tier did this run."""
        c = self.counts
        state = "LOST" if self.lost else ("read-only" if self.mode == "read" else "read-write")
        return (f"shared cache {self.url} ({state}, worker {self.worker}): {c['hits']} hits, "
                f"{c['stored']} stored, {c['raced']} stored first by another worker, "
                f"{c['waited']} waits for another worker's answer, {c['taken_over']} claims "
                f"taken over, {c['corrupt']} corrupt entries")
