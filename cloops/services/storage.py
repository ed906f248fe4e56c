"""Publish files to cloud storage or a folder, uploading only what changed.

Layer: **services**.

A destination is an fsspec URL (fsspec.readthedocs.io, "URL chaining" and the s3fs/gcsfs docs):

* a local folder: ``/srv/adloops``, ``file:///srv/adloops``, ``build/publish``;
* Amazon S3 or any S3-compatible store: ``s3://bucket/prefix`` (s3fs); credentials from
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``), ``AWS_PROFILE``
  or the instance role, as for every AWS SDK; ``storage_options={"endpoint_url": ...}`` for
  MinIO, R2 or a test server;
* Google Cloud Storage: ``gs://bucket/prefix`` (gcsfs); credentials from
  ``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account JSON file) or the machine's default
  credentials. Firebase Storage is a GCS bucket: ``gs://<project>.firebasestorage.app/prefix``.

**Only what changed.** Beside the objects, the destination holds ``.cloops-publish.json``: the
SHA-256 and size of every object cloops published there. An object is uploaded when its
local SHA-256 differs from that record or the object is missing or of another size (someone
deleted or replaced it); a re-run with nothing changed uploads nothing and rewrites nothing.
Each uploaded object also carries its SHA-256 in its metadata (S3 ``x-amz-meta-sha256``, GCS
``metadata.sha256``), so a consumer can verify a download without the record.

**Never a partial object at a final key.** Per backend:

* S3 and GCS: a single PUT (or a multipart / resumable upload) creates the object only when
  it completes - readers see the old object or the new one, never part of it (AWS S3 user
  guide, "Amazon S3 data consistency model"; GCS docs, "Consistency": uploads are atomic).
  Uploading straight to the final key is therefore safe, and a temp key plus a server-side
  copy would only double the requests.
* a local folder: the file is copied to ``.<name>.<pid>-<n>.tmp`` in the same folder and
  renamed into place (a rename within a file system is atomic on POSIX).
* any other fsspec protocol: the same temp-key-then-move, as atomic as that backend's move.

**Order.** Objects first, then the index (``index.json``, AdLoops' intake: written only once
everything it lists is in place), then the record. An interrupted publish leaves every final
key whole; the next run re-checks and uploads what the record does not vouch for.

**Many publishers, one destination.** The index (given as ``merge_index``) and the record are
read with their version, merged, and written only if still at that version - S3
``If-None-Match: *`` / ``If-Match: <etag>``, GCS ``ifGenerationMatch``, a folder under an
exclusive ``flock`` of ``.<name>.lock`` (:mod:`cloops.services.conditional`). When another
publisher wrote in between (S3 412/409, GCS 412, a folder's changed digest), the merge starts
again from what it wrote, with backoff, up to :data:`MERGE_TRIES` times; then a
:class:`PublishError` names the key and says to run again. So workers publishing their own
stories to one URL at the same time keep each other's entries. Other fsspec protocols compare
then write: not atomic.

**Credentials** are never written to the report, a log line or an error: errors name the
environment variable to fix, and the storage library's own message (which may quote a key)
is dropped after its error code is read.

Licences: fsspec, s3fs and gcsfs are BSD-3-Clause; what they pull in (aiobotocore, botocore,
google-cloud-storage, google-auth) is Apache-2.0. Nothing GPL. Tests add moto (Apache-2.0) and
gcp-storage-emulator (BSD).

Errors::

    CloopsError
    ├── InputError          a bad key, a missing local file, an unknown URL scheme
    └── PublishError        the destination failed: no bucket, unreachable, refused
        └── PublishAuthError    credentials missing or rejected: names the variables to set
"""

from __future__ import annotations

import itertools
import json
import mimetypes
import os
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping

from ..core.errors import CloopsError, InputError
from ..core.fileio import atomic_copy_file, atomic_write_bytes, sha256_bytes, sha256_file
from .conditional import Refused, Versioned, error_code

MANIFEST_KEY = ".cloops-publish.json"
INDEX_KEY = "index.json"
MANIFEST_VERSION = 1
OBJECT_STORES = {"s3", "s3a", "gs", "gcs"}
LOCAL = {"file", "local"}

_CONTENT_TYPES = {".vtt": "text/vtt", ".srt": "application/x-subrip", ".mp4": "video/mp4",
                  ".mp3": "audio/mpeg", ".json": "application/json", ".jpg": "image/jpeg",
                  ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
# storage_options keys whose values are secrets (s3fs, gcsfs, and generic fsspec backends)
_SECRET_OPTIONS = re.compile(r"secret|token|password|passwd|key|credential", re.IGNORECASE)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
               "AWS_SECURITY_TOKEN")
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
               "InvalidClientTokenId", "UnrecognizedClientException", "AllAccessDisabled"}
_SEQ = itertools.count()
MERGE_TRIES = 8  # reads-merges-writes of the index or the record refused before giving up
MERGE_WAIT_S = 0.05  # first wait after a refusal (doubles, up to 2 s, with jitter)


class PublishError(CloopsError):
    """Publishing failed at the destination (missing bucket, unreachable, refused)."""


class PublishAuthError(PublishError):
    """The destination's credentials are missing or were rejected; the message names the
    environment variables to set (never their values)."""


@dataclass
class PublishReport:
    """What a publish did.

    Attributes:
        url: the destination (any user:password in it replaced by ``***``).
        uploaded: keys written, in upload order (the index, when written, is last).
        unchanged: keys already there with the same SHA-256, not uploaded.
        bytes_uploaded: total size of the uploaded objects, in bytes.
        record_written: whether the ``.cloops-publish.json`` record was (re)written.
        conflicts: how many times another publisher changed the index or the record between
            this one's read and its write (each time it read, merged and wrote again).
    """

    url: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    record_written: bool = False
    conflicts: int = 0


# --------------------------------------------------------------------------- keys and secrets

def _check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise InputError."""
    if not isinstance(key, str) or not key:
        raise InputError(f"publish key {key!r} is empty or not text.", field="files")
    parts = PurePosixPath(key).parts
    if (key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts)
            or key != "/".join(parts)):
        raise InputError(f"publish key {key!r} must be a relative path like "
                         "'story/bundle/1.jpg' without '..', '.' or '//'.", field="files")
    if key == MANIFEST_KEY:
        raise InputError(f"publish key {key!r} is reserved for the publish record.",
                         field="files")
    return key


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``."""
    return re.sub(r"(?<=://)[^/@]+@", "***@", url)


def _secrets(storage_options: Mapping[str, Any]) -> list[str]:
    values = [os.environ.get(name, "") for name in _SECRET_ENV]

    def walk(options: Mapping[str, Any]) -> None:
        for k, v in options.items():
            if isinstance(v, Mapping):
                walk(v)
            elif isinstance(v, str) and _SECRET_OPTIONS.search(str(k)):
                values.append(v)
    walk(storage_options)
    return [v for v in values if len(v) >= 4]


def _scrub(text: str, secrets: list[str]) -> str:
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def _content_type(key: str) -> str:
    ext = PurePosixPath(key).suffix.lower()
    return _CONTENT_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


# --------------------------------------------------------------------------- errors

def _auth_fix(protocol: str, url: str) -> str:
    if protocol in ("s3", "s3a"):
        return ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for "
                "temporary keys), or AWS_PROFILE, to a key allowed to list, read and write "
                f"{url}.")
    if protocol in ("gs", "gcs"):
        return ("set GOOGLE_APPLICATION_CREDENTIALS to the path of a service-account JSON key "
                f"with the Storage Object Admin role on {url} (Firebase: Project settings > "
                "Service accounts > Generate new private key).")
    return f"check the credentials in publish.storage_options for {url}."


@contextmanager
def _remote(protocol: str, url: str, secrets: list[str], doing: str) -> Iterator[None]:
    """Turn whatever the storage library raises into a PublishError without secrets."""
    try:
        yield
    except (CloopsError, Refused):
        raise
    except Exception as exc:  # noqa: BLE001 - every library error becomes ours, scrubbed
        code = error_code(exc)
        name = type(exc).__name__
        if protocol in LOCAL and isinstance(exc, OSError):
            raise PublishError(f"{url}: {doing} failed ({exc.strerror or name}). Fix: check "
                               "that the folder is writable and has room.") from None
        missing = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}
        refused = {"CredentialRetrievalError", "RefreshError", "InvalidConfigError"}
        if name in missing:
            raise PublishAuthError(f"{url}: no credentials were found while {doing} ({name})."
                                   f" Fix: {_auth_fix(protocol, url)}") from None
        if (isinstance(exc, PermissionError) or name in refused or code in _AUTH_CODES
                or code in ("401", "403")):
            raise PublishAuthError(
                f"{url}: the storage service refused the credentials while {doing} "
                f"({code or name}). Fix: {_auth_fix(protocol, url)}") from None
        if code in ("NoSuchBucket", "404") or isinstance(exc, FileNotFoundError):
            raise PublishError(f"{url}: not found while {doing} ({code or name}). Fix: create "
                               "the bucket, or correct publish.url.") from None
        detail = _scrub(str(exc), secrets).splitlines()[0][:200] if str(exc) else ""
        raise PublishError(
            f"{url}: {doing} failed ({code or name}{': ' + detail if detail else ''}). Fix: "
            "check that the endpoint is reachable and publish.url is right; run again - "
            "what was uploaded is kept.") from None


# --------------------------------------------------------------------------- destination

class _Destination:
    """An fsspec file system and the root path the keys live under."""

    def __init__(self, url: str, storage_options: Mapping[str, Any]):
        import fsspec
        from fsspec.core import url_to_fs

        self.url = redact_url(url)
        self.secrets = _secrets(storage_options)
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        self.protocol = protocol
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            raise InputError(f"cannot publish to {self.url}: {exc.__class__.__name__} for "
                             f"the scheme '{protocol}'.", field="publish.url",
                             fix="use a folder, s3://bucket/prefix or gs://bucket/prefix "
                                 "(s3fs and gcsfs come with cloops).") from None
        options = dict(storage_options)
        options.setdefault("skip_instance_cache", True)  # no listing cached across publishes
        with _remote(protocol, self.url, self.secrets, "connecting"):
            self.fs, root = url_to_fs(url, **options)
        self.local = protocol in LOCAL
        self.root = str(Path(root).resolve()) if self.local else root.rstrip("/")
        self.versioned = Versioned(None if self.local else self.fs, protocol)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def remote(self, doing: str):
        return _remote(self.protocol, self.url, self.secrets, doing)

    def listing(self) -> dict[str, int]:
        """Sizes of the objects under the root, by key."""
        with self.remote("listing"):
            try:
                self.fs.invalidate_cache()
                found = self.fs.find(self.root, detail=True)
            except FileNotFoundError:
                if self.protocol in OBJECT_STORES:
                    bucket = self.root.split("/", 1)[0]
                    if not self.fs.exists(bucket):
                        raise
                return {}
        out = {}
        prefix = self.root + "/" if self.root else ""
        for name, info in found.items():
            name = str(name)
            if self.local:
                name = str(Path(name))
            if name.startswith(prefix) and info.get("type", "file") == "file":
                out[name[len(prefix):]] = int(info.get("size") or 0)
        return out

    def read_record(self) -> dict[str, dict]:
        """The publish record's objects, or {} when there is none or it is unreadable."""
        with self.remote("reading the publish record"):
            got = self.versioned.read(self.path(MANIFEST_KEY))
        return _record_objects(got[0] if got else None)

    def merge(self, key: str, merge: Callable[[bytes | None], bytes | None],
              report: PublishReport, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Read ``key`` with its version, ``merge`` its bytes (None: absent) into new bytes
        (None or the same bytes: nothing to write), and write them only if ``key`` is still
        at the version read (S3 ``If-Match``/``If-None-Match``, GCS ``ifGenerationMatch``, a
        folder: under a lock; :mod:`cloops.services.conditional`). A refusal - another
        publisher wrote in between - counts in ``report.conflicts`` and reads, merges and
        writes again, with backoff, up to :data:`MERGE_TRIES` times. True when written.

        Raises:
            PublishError: still refused after :data:`MERGE_TRIES` tries (names the key and
                says to run again), or the destination failed.
        """
        wait = MERGE_WAIT_S
        for _ in range(MERGE_TRIES):
            with self.remote(f"reading {key}"):
                got = self.versioned.read(self.path(key))
            current, version = got if got is not None else (None, None)
            new = merge(current)
            if new is None or new == current:
                return False
            try:
                with self.remote(f"uploading {key}"):
                    self.versioned.write(self.path(key), new, version,
                                         **self._meta(key, sha256_bytes(new)))
                return True
            except Refused:
                report.conflicts += 1
                sleep(wait * (0.5 + random.random()))
                wait = min(wait * 2, 2.0)
        raise PublishError(
            f"{self.url}: {key} was changed by another publisher {MERGE_TRIES} times while "
            "this one merged its own changes into it; it was not written. Fix: run the "
            "publish again - the objects uploaded stay, and it merges with what is there then.")

    def _meta(self, key: str, sha: str) -> dict:
        if self.protocol in OBJECT_STORES:
            return {"content_type": _content_type(key), "metadata": {"sha256": sha}}
        return {}

    def _kwargs(self, key: str, sha: str) -> dict:
        if self.protocol in ("s3", "s3a"):
            return {"ContentType": _content_type(key), "Metadata": {"sha256": sha}}
        if self.protocol in ("gs", "gcs"):
            return {"content_type": _content_type(key), "metadata": {"sha256": sha}}
        return {}

    def put(self, key: str, *, local: Path | None = None, data: bytes | None = None,
            sha: str) -> None:
        """Write one object from a local file or bytes, never partially at its final key."""
        target = self.path(key)
        with self.remote(f"uploading {key}"):
            if self.local:
                self._put_local(Path(target), local, data)
            elif self.protocol in OBJECT_STORES:  # PUT is atomic: straight to the key
                if local is not None:
                    self.fs.put_file(str(local), target, **self._kwargs(key, sha))
                else:
                    self.fs.pipe_file(target, data, **self._kwargs(key, sha))
            else:
                parent, name = target.rsplit("/", 1) if "/" in target else ("", target)
                tmp = f"{parent}/.{name}.{os.getpid()}-{next(_SEQ)}.tmp".lstrip("/")
                try:
                    if local is not None:
                        self.fs.put_file(str(local), tmp)
                    else:
                        self.fs.pipe_file(tmp, data)
                    self.fs.mv(tmp, target)
                except BaseException:
                    try:
                        self.fs.rm_file(tmp)
                    except Exception:  # noqa: BLE001 - best effort; the original error matters
                        pass
                    raise

    @staticmethod
    def _put_local(target: Path, local: Path | None, data: bytes | None) -> None:
        if local is not None:
            atomic_copy_file(local, target)
        else:
            atomic_write_bytes(target, data)


# --------------------------------------------------------------------------- publish

def _record_objects(raw: bytes | None) -> dict[str, dict]:
    """The objects of a publish record's bytes, or {} (absent, damaged, another version)."""
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
        objects = data["objects"] if data.get("version") == MANIFEST_VERSION else {}
        return {k: v for k, v in objects.items()
                if isinstance(v, dict) and isinstance(v.get("sha256"), str)}
    except (ValueError, KeyError, AttributeError, TypeError):
        return {}  # damaged: every object is checked and re-uploaded as needed


def _record_bytes(objects: Mapping[str, dict]) -> bytes:
    return json.dumps({"version": MANIFEST_VERSION, "generator": "cloops",
                       "objects": dict(sorted(objects.items()))},
                      indent=1, sort_keys=True).encode() + b"\n"


def _index_bytes(index: Any) -> bytes:
    """The index as bytes: given as bytes, a JSON file's ``Path``, or a dict/list."""
    if isinstance(index, bytes):
        return index
    if isinstance(index, os.PathLike):
        if not Path(index).is_file():
            raise InputError("the index file does not exist.", file=str(index), field="index")
        return Path(index).read_bytes()
    if not isinstance(index, (dict, list)):
        raise InputError(f"the index must be a dict or list, bytes, or a Path, not "
                         f"{type(index).__name__}.", field="index")
    return (json.dumps(index, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()


def publish(files: Mapping[str, str | os.PathLike], url: str, *, index: Any = None,
            merge_index: Callable[[Any], Any] | None = None, index_key: str = INDEX_KEY,
            storage_options: Mapping[str, Any] | None = None,
            log: Callable[[str], None] | None = None) -> PublishReport:
    """Upload ``files`` (``{key: local path}``) under ``url``, then the index, skipping every
    object whose SHA-256 is already there.

    ``key`` is a relative object key (``"noah-s-ark/ads/hook-1.mp4"``); the object goes to
    ``<url>/<key>``. ``storage_options`` go to fsspec (s3fs: ``endpoint_url``,
    ``key``/``secret``, ``client_kwargs``; gcsfs: ``project``, ``token``, ``endpoint_url``).
    ``log`` receives one line per uploaded key (keys and sizes only). A publish of some keys
    keeps the record of the others (one story at a time is fine).

    The index goes to ``index_key`` after every file is in place, and only when it changed.
    Give one of:

    * ``index``: the whole index (a dict or list written as JSON, bytes, or a JSON file's
      ``Path``), written as is - the last publisher's index wins;
    * ``merge_index``: ``f(current) -> new index`` (a dict or list, or bytes), given the
      index the destination holds now (its parsed JSON; None when there is none or it is
      not JSON); ``f`` returning None writes nothing. It is written only if the destination's index is still the one read
      (:meth:`_Destination.merge`); when another publisher wrote in between, ``f`` is called
      again on theirs. So publishers to one destination never lose each other's entries,
      provided each keeps what its ``f`` does not own.

    The record (``.cloops-publish.json``) is merged the same way: this publish's objects are
    added to what the destination's record says, and only the entries of objects this publish
    found missing are dropped, so concurrent publishers keep each other's.

    Returns a :class:`PublishReport`.

    Raises:
        InputError: a bad key, a missing local file, both ``index`` and ``merge_index``, or a
            URL scheme fsspec does not know.
        PublishAuthError: credentials missing or rejected (names the variables to set).
        PublishError: the destination failed (no bucket, unreachable), or the index or the
            record kept changing under concurrent publishers (:data:`MERGE_TRIES` tries);
            objects already uploaded stay and a re-run finishes the job.
    """
    storage_options = dict(storage_options or {})
    say = log or (lambda line: None)
    if index is not None and merge_index is not None:
        raise InputError("give the index or a function merging it, not both.",
                         field="merge_index")
    items: list[tuple[str, Path | None, bytes | None]] = []
    for key, local in files.items():
        _check_key(key)
        path = Path(local)
        if not path.is_file():
            raise InputError("the file to publish does not exist.", file=str(path),
                             field=key, fix="build it first (run doit).")
        items.append((key, path, None))
    if index is not None or merge_index is not None:
        _check_key(index_key)
        if index_key in files:
            raise InputError(f"'{index_key}' is both a file and the index.", field="files")
    if index is not None:
        items.append((index_key, None, _index_bytes(index)))

    dest = _Destination(url, storage_options)
    record = dest.read_record()
    sizes = dest.listing()
    report = PublishReport(url=dest.url)
    mine: dict[str, dict] = {}  # what this publish vouches for
    for key, local, data in items:
        if local is not None:
            sha, size = sha256_file(local), local.stat().st_size
        else:
            sha, size = sha256_bytes(data), len(data)
        known = record.get(key)
        if known and known.get("sha256") == sha and sizes.get(key) == size:
            report.unchanged.append(key)
            mine[key] = known
            continue
        dest.put(key, local=local, data=data, sha=sha)
        mine[key] = {"sha256": sha, "size": size}
        report.uploaded.append(key)
        report.bytes_uploaded += size
        say(f"uploaded {key} ({size} bytes)")

    if merge_index is not None:
        written: list[bytes] = []

        def merged(current: bytes | None) -> bytes | None:
            parsed = None
            if current is not None:
                try:
                    parsed = json.loads(current)
                except ValueError:
                    say(f"{index_key} at the destination is not JSON: it is replaced")
            result = merge_index(parsed)
            if result is None:  # nothing to list and no index there: none is created
                return None
            new = _index_bytes(result)
            written[:] = [new]
            return new
        if dest.merge(index_key, merged, report):
            new = written[0]
            mine[index_key] = {"sha256": sha256_bytes(new), "size": len(new)}
            report.uploaded.append(index_key)
            report.bytes_uploaded += len(new)
            say(f"uploaded {index_key} ({len(new)} bytes)")
        else:
            report.unchanged.append(index_key)
            if index_key in record:
                mine[index_key] = record[index_key]

    # entries of objects this publish found gone; another publisher's changes are kept
    stale = {k: v for k, v in record.items() if k not in sizes and k not in mine}

    def merged_record(current: bytes | None) -> bytes | None:
        objects = _record_objects(current)
        out = {k: v for k, v in objects.items() if stale.get(k) != v}
        out.update(mine)
        if out == objects and current is not None or not out and current is None:
            return None
        return _record_bytes(out)
    report.record_written = dest.merge(MANIFEST_KEY, merged_record, report)
    return report
