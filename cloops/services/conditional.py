"""Conditional writes: read an object with its version, create it only when it is absent,
replace it only at the version read — so that concurrent writers (workers of a fleet,
publishers to one bucket) never overwrite each other's changes unseen.

Layer: **services**. Used by the shared response cache (:mod:`cloops.services.shared_cache`:
claims and corrupt entries) and by publishing (:mod:`cloops.services.storage`: the index and
the publish record, merged with what the destination holds).

A *version* is opaque text:

* **S3** (s3fs's aiobotocore client, ``call_s3``): the ETag. ``PutObject`` with
  ``IfNoneMatch="*"`` creates only; with ``IfMatch=<etag>`` replaces only that version. A
  refusal is HTTP 412 ``PreconditionFailed``; 409 ``ConditionalRequestConflict`` means a
  concurrent conditional write to the key is under way — both are :class:`Refused` (re-read,
  decide again). Source: AWS S3 API reference, PutObject, "If-Match"/"If-None-Match" and
  "Conditional writes" in the user guide; botocore > 1.35.20 knows both parameters;
  ``moto[server]`` 5.x honours both (BRIEF.md, "Create-only writes on object stores").
* **GCS** (gcsfs's authenticated session, ``fs.call``): the object's ``generation``. A read is
  ``objects.get`` (metadata: the generation) then the media download with
  ``ifGenerationMatch=<generation>`` (so the bytes are that generation's; a 412 there means it
  was replaced in between: read again). A write is a single multipart ``objects.insert``
  (``uploadType=multipart``, as gcsfs's own ``simple_upload`` sends it) with
  ``ifGenerationMatch=0`` (create only) or ``=<generation>`` (replace only that generation).
  A refusal is HTTP 412 ``conditionNotMet`` (gcsfs raises ``FileExistsError`` for it).
  Source: cloud.google.com/storage/docs/request-preconditions and the JSON API reference of
  ``objects.insert``/``objects.get``. A single-request upload is atomic: readers see the old
  object or the new one. Writes to one object name are rate-limited to about one per second:
  callers back off between tries.
* **a folder** (a local disk or a network mount): the SHA-256 of the bytes. Every write takes
  an exclusive ``fcntl.flock`` on ``.<name>.lock`` beside the file, compares, then renames a
  temp file into place (atomic within a file system). Every writer of that file through this
  module takes the same lock, so compare-and-rename is atomic among them.
* **any other fsspec file system** (``memory://``, …): the SHA-256 of the bytes, compared then
  written — *not* atomic; two writers at the same instant may both succeed.

Errors::

    Refused        a precondition failed: the object exists (create), is not at the version
                   read (replace), or a concurrent conditional write conflicted (S3 409).
                   Not a failure of the store: re-read and decide again.
    anything else  what the storage library raised (network, credentials, no bucket): callers
                   translate it into their own error without secrets.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

S3 = {"s3", "s3a"}
GCS = {"gs", "gcs"}
LOCAL = {"file", "local"}
READ_TRIES = 5  # a GCS object replaced between its metadata and its bytes: read again
_SEQ = itertools.count()
_REFUSED_S3 = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class Refused(Exception):
    """A precondition failed (the object exists, or is not at the version read): an answer of
    the store, not a failure. The message is the object's path."""


def error_code(exc: BaseException) -> str | None:
    """The storage service's error code found in ``exc`` or its causes (botocore ClientError
    ``Error.Code``, gcsfs HttpError ``code``), without its message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        code = getattr(exc, "code", None)
        if isinstance(code, int):
            return str(code)
        exc = exc.__cause__ or exc.__context__
    return None


class Versioned:
    """Conditional reads and writes of whole objects on one file system.

    Args:
        fs: an fsspec file system (s3fs ``S3FileSystem``, gcsfs ``GCSFileSystem``, any other);
            None for a local folder.
        protocol: ``"s3"``, ``"gs"``, ``"file"``, … (the URL's scheme).

    Paths are what ``fs`` takes (``bucket/key``), or OS paths for a folder.
    """

    def __init__(self, fs: Any, protocol: str):
        self.fs = fs
        self.protocol = protocol.lower()

    @property
    def atomic(self) -> bool:
        """Whether :meth:`write`'s precondition is checked atomically by the store."""
        return self.protocol in S3 | GCS | LOCAL

    # -- reads -------------------------------------------------------------------------------

    def read(self, path: str) -> tuple[bytes, str] | None:
        """``(bytes, version)`` of the object at ``path``, or None when there is none.

        Raises: whatever the storage library raises (network, credentials, no bucket).
        """
        if self.protocol in S3:
            return self._s3_read(path)
        if self.protocol in GCS:
            return self._gcs_read(path)
        if self.protocol in LOCAL:
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                return None
            return data, hashlib.sha256(data).hexdigest()
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _s3_read(self, path: str) -> tuple[bytes, str] | None:
        bucket, _, key = path.partition("/")
        try:
            out = self.fs.call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - s3fs translates some ClientErrors, not all
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return _read_body(self.fs, out["Body"]), str(out.get("ETag", ""))

    def _gcs_location(self) -> str:
        # gcsfs's public ``base`` is "<location>/storage/v1/"; uploads and media downloads
        # live beside it ("<location>/upload/storage/v1", "<location>/download/storage/v1")
        return self.fs.base.rstrip("/").rsplit("/storage/v1", 1)[0]

    def _gcs_read(self, path: str) -> tuple[bytes, str] | None:
        bucket, key, _ = self.fs.split_path(path)
        for _ in range(READ_TRIES):
            try:
                meta = self.fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)
            except FileNotFoundError:
                return None
            generation = str(meta["generation"])
            try:
                _headers, data = self.fs.call(
                    "GET", self._gcs_location() + "/download/storage/v1/b/{}/o/{}", bucket,
                    key, alt="media", ifGenerationMatch=generation)
            except FileNotFoundError:
                return None  # deleted in between
            except FileExistsError:
                continue  # 412: replaced in between; read the new generation
            return bytes(data), generation
        raise OSError(f"gs://{bucket}/{key} was replaced {READ_TRIES} times while being read")

    # -- writes ------------------------------------------------------------------------------

    def write(self, path: str, data: bytes, version: str | None, *,
              content_type: str | None = None,
              metadata: Mapping[str, str] | None = None) -> str:
        """Write ``data`` at ``path`` only if it is absent (``version`` None) or still at
        ``version``; return the new version. ``content_type`` and ``metadata`` (custom
        metadata, e.g. ``{"sha256": …}``) go with the object on S3 and GCS.

        Raises:
            Refused: the precondition failed (see the module's docstring).
            anything else the storage library raises.
        """
        if self.protocol in S3:
            return self._s3_write(path, data, version, content_type, metadata)
        if self.protocol in GCS:
            return self._gcs_write(path, data, version, content_type, metadata)
        if self.protocol in LOCAL:
            return self._local_write(Path(path), data, version)
        now = self.read(path)  # not atomic: see the module's docstring
        if (now is None) != (version is None) or (now is not None and now[1] != version):
            raise Refused(path)
        self.fs.pipe_file(path, data)
        return hashlib.sha256(data).hexdigest()

    def _s3_write(self, path, data, version, content_type, metadata) -> str:
        bucket, _, key = path.partition("/")
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = dict(metadata)
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond,
                                  **extra)
        except Exception as exc:  # noqa: BLE001 - s3fs turns some ClientErrors into OSErrors
            if isinstance(exc, FileExistsError) or error_code(exc) in _REFUSED_S3:
                raise Refused(path) from None
            raise
        self.fs.invalidate_cache(path)
        return str(out.get("ETag", ""))

    def _gcs_write(self, path, data, version, content_type, metadata) -> str:
        bucket, key, _ = self.fs.split_path(path)
        resource: dict[str, Any] = {"name": key}
        if metadata:
            resource["metadata"] = dict(metadata)
        boundary = uuid.uuid4().hex  # never inside the JSON part; random against the bytes
        ctype = content_type or "application/octet-stream"
        body = (f"--{boundary}\nContent-Type: application/json; charset=UTF-8\n\n"
                f"{json.dumps(resource)}\n--{boundary}\nContent-Type: {ctype}\n\n").encode() \
            + bytes(data) + f"\n--{boundary}--".encode()
        try:
            out = self.fs.call(
                "POST", self._gcs_location() + "/upload/storage/v1/b/{}/o", bucket,
                uploadType="multipart", ifGenerationMatch="0" if version is None else version,
                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
                data=body, json_out=True)
        except FileExistsError:  # gcsfs: HTTP 412, a precondition did not hold
            raise Refused(path) from None
        self.fs.invalidate_cache(path)
        return str(out["generation"])

    @staticmethod
    @contextmanager
    def locked(path: Path) -> Iterator[None]:
        """Hold the exclusive lock every writer of ``path`` through this module takes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _local_write(self, path: Path, data: bytes, version: str | None) -> str:
        with self.locked(path):
            try:
                now = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                now = None
            if now != version:
                raise Refused(str(path))
            tmp = path.parent / f".{path.name}.{os.getpid()}-{next(_SEQ)}.tmp"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return hashlib.sha256(data).hexdigest()


def _read_body(fs: Any, body: Any) -> bytes:
    """The bytes of an aiobotocore streaming body, read on s3fs's event loop."""
    from fsspec.asyn import sync

    async def read():
        try:
            return await body.read()
        finally:
            body.close()
    return sync(fs.loop, read)
