"""Firestore documents: read, write in batches, update under a precondition.

Layer: **services**. A thin driver over the official ``google-cloud-firestore`` client
(Apache-2.0; cloud.google.com/python/docs/reference/firestore): it knows documents, not
stories. :mod:`cloops.steer.publish` writes AdLoops' documents through it and
:mod:`cloops.data.firestore_backlog` reads a backlog from it.

**Credentials** the usual Google way: application default credentials (``gcloud auth
application-default login``, the machine's service account) or ``GOOGLE_APPLICATION_CREDENTIALS``
(the path of a service-account JSON key). With ``FIRESTORE_EMULATOR_HOST=host:port`` set, the
client talks to that emulator without credentials (the client library's own rule).

**Limits** (Firestore docs, "Usage and limits"): at most 500 writes per commit and 1 MiB
(1,048,576 bytes) per document. :meth:`Firestore.write` splits its writes into commits of at most
500 writes and about 9 MiB, and refuses, before writing anything, a document larger than 1 MiB
(its size estimated as Firestore counts it: the name, each field name + 1, strings as UTF-8 + 1,
numbers 8 bytes, ...). A commit is atomic; a failure in a later commit keeps the earlier ones.

**Errors** never quote a credential: the client's message is kept only for errors that carry
no request metadata (not found, precondition), and cut to its first line::

    CloopsError
    └── FirestoreError          the database failed: not found, unreachable
        ├── FirestoreAuthError  no credentials, or permission denied: names the setting/variable
        └── FirestoreConflict   an update's precondition failed (the document changed)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping

from ..core.errors import CloopsError

MAX_WRITES = 500                 # writes per commit (Firestore limit)
MAX_DOCUMENT_BYTES = 1_048_576   # 1 MiB per document (Firestore limit)
MAX_COMMIT_BYTES = 9 * 1_048_576  # a commit request may be 10 MiB: keep a margin
TIMEOUT_S = 20.0                 # per attempt
RETRY_S = 30.0                   # retrying transient errors (unavailable, 429, 5xx) at most this long


def _retry():
    """Retry transient errors with backoff for at most ``RETRY_S`` seconds (the client's own
    default retries a stream for minutes: a wrong FIRESTORE_EMULATOR_HOST would hang)."""
    from google.api_core import retry as retries
    return retries.Retry(predicate=retries.if_transient_error, initial=0.5, maximum=4.0,
                         multiplier=2.0, timeout=RETRY_S)


class FirestoreError(CloopsError):
    """A Firestore call failed (project or database not found, unreachable, refused)."""


class FirestoreAuthError(FirestoreError):
    """Credentials missing or without permission; the message names the setting and the
    environment variable to fix (never a value)."""


class FirestoreConflict(FirestoreError):
    """An update's precondition failed: the document changed since it was read."""


@dataclass(frozen=True)
class Snapshot:
    """One document as read.

    Attributes:
        id: the document id.
        data: its fields (Firestore timestamps come back as ``datetime``), or None when the
            document does not exist.
        update_time: when it was last written (``datetime``, UTC), or None when missing.
    """

    id: str
    data: dict[str, Any] | None
    update_time: datetime | None

    @property
    def exists(self) -> bool:
        return self.data is not None


def document_size(name: str, data: Mapping[str, Any]) -> int:
    """The storage size of a document in bytes as Firestore counts it (docs: "Storage size
    calculations"): its name's path segments + 16, plus each field's name + 1 and value (string:
    UTF-8 + 1, number 8, boolean 1, null 1, timestamp 8, map/array: the sum of its parts), + 32."""
    def value(v: Any) -> int:
        if v is None or isinstance(v, bool):
            return 1
        if isinstance(v, (int, float, datetime)):
            return 8
        if isinstance(v, str):
            return len(v.encode("utf-8")) + 1
        if isinstance(v, bytes):
            return len(v)
        if isinstance(v, Mapping):
            return sum(len(str(k).encode("utf-8")) + 1 + value(x) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return sum(value(x) for x in v)
        return len(str(v).encode("utf-8")) + 1
    return sum(len(p.encode("utf-8")) + 1 for p in name.split("/")) + 16 + value(dict(data)) + 32


def _fix(setting: str, project: str) -> str:
    return (f"check {setting} ({project!r}: the Google Cloud project id) and set "
            "GOOGLE_APPLICATION_CREDENTIALS to the path of a service-account JSON key with the "
            "Cloud Datastore User role on that project (or run `gcloud auth "
            "application-default login`); for a local emulator set FIRESTORE_EMULATOR_HOST.")


@contextmanager
def _calls(project: str, setting: str, doing: str) -> Iterator[None]:
    """Turn what the client raises into a :class:`FirestoreError` without secrets."""
    try:
        yield
    except CloopsError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library error becomes ours
        name = type(exc).__name__
        where = f"Firestore project {project!r}"
        if name in ("DefaultCredentialsError", "RefreshError", "TransportError"):
            raise FirestoreAuthError(f"{where}: no usable credentials while {doing} ({name}). "
                                     f"Fix: {_fix(setting, project)}") from None
        if name in ("PermissionDenied", "Unauthenticated", "Forbidden", "Unauthorized"):
            raise FirestoreAuthError(f"{where}: permission denied while {doing} ({name}). "
                                     f"Fix: {_fix(setting, project)}") from None
        if name == "FailedPrecondition":
            raise FirestoreConflict(f"{where}: the document changed while {doing}.") from None
        if name == "NotFound":
            detail = str(getattr(exc, "message", "") or "").splitlines()[0][:160] \
                if str(getattr(exc, "message", "") or "") else ""
            raise FirestoreError(f"{where}: not found while {doing}"
                                 f"{' (' + detail + ')' if detail else ''}. Fix: "
                                 f"{_fix(setting, project)}") from None
        if name in ("ServiceUnavailable", "DeadlineExceeded", "RetryError", "TimeoutError"):
            host = os.environ.get("FIRESTORE_EMULATOR_HOST")
            hint = (f"the emulator at FIRESTORE_EMULATOR_HOST={host} is not answering: start "
                    "it, or unset the variable" if host else
                    "check the network and that the project's Firestore database exists")
            raise FirestoreError(f"{where}: unreachable while {doing} ({name}). Fix: {hint}; run "
                                 "again - what was written is kept.") from None
        raise FirestoreError(f"{where}: {doing} failed ({name}). Fix: run again - what was "
                             "written is kept; if it persists, check the project and "
                             "credentials.") from None


class Firestore:
    """One Firestore database.

    Args:
        project: the Google Cloud project id.
        database: the database id (``"(default)"``).
        setting: where the project was configured (``"publish.firestore.project"``), named by
            every error about it.

    Raises:
        FirestoreAuthError: no credentials (outside the emulator).
    """

    def __init__(self, project: str, database: str = "(default)", *,
                 setting: str = "publish.firestore.project"):
        self.project = project
        self.database = database
        self.setting = setting
        with self._calls("connecting"):
            from google.cloud import firestore  # imported only when a database is used
            self._client = firestore.Client(project=project, database=database)

    def _calls(self, doing: str):
        return _calls(self.project, self.setting, doing)

    def _doc(self, collection: str, doc_id: str):
        return self._client.collection(collection).document(doc_id)

    @staticmethod
    def _snap(s) -> Snapshot:
        return Snapshot(s.id, s.to_dict() if s.exists else None,
                        s.update_time if s.exists else None)

    def get(self, collection: str, doc_id: str) -> Snapshot:
        """One document (``Snapshot.data`` None when it does not exist)."""
        with self._calls(f"reading {collection}/{doc_id}"):
            return self._snap(self._doc(collection, doc_id).get(retry=_retry(), timeout=TIMEOUT_S))

    def get_many(self, collection: str, ids: Iterable[str]) -> dict[str, Snapshot]:
        """Several documents of one collection by id, in one round trip per 300 ids."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, Snapshot] = {}
        with self._calls(f"reading {collection}"):
            for start in range(0, len(ids), 300):
                refs = [self._doc(collection, i) for i in ids[start:start + 300]]
                for s in self._client.get_all(refs, retry=_retry(), timeout=TIMEOUT_S):
                    out[s.id] = self._snap(s)
        return out

    def stream(self, collection: str) -> list[Snapshot]:
        """Every document of a collection, by document id."""
        with self._calls(f"reading the collection {collection}"):
            return [self._snap(s) for s in self._client.collection(collection).stream(
                retry=_retry(), timeout=TIMEOUT_S)]

    def write(self, docs: Iterable[tuple[str, str, Mapping[str, Any]]], *,
              merge: bool = False) -> int:
        """Write ``(collection, id, fields)`` documents (replacing them; ``merge``: only the
        given fields), in commits within Firestore's limits. Returns the number written.

        Raises:
            FirestoreError: a document over 1 MiB (nothing written), or a failed commit (the
                commits before it stay).
        """
        docs = list(docs)
        for collection, doc_id, data in docs:
            size = document_size(f"{collection}/{doc_id}", data)
            if size > MAX_DOCUMENT_BYTES:
                raise FirestoreError(f"Firestore document {collection}/{doc_id} would be "
                                     f"{size:,} bytes, over Firestore's 1 MiB limit: nothing "
                                     "was written. Fix: shorten what it holds (its manifest "
                                     "record or tags).")
        batches: list[list] = [[]]
        size = 0
        for doc in docs:
            n = document_size(f"{doc[0]}/{doc[1]}", doc[2])
            if len(batches[-1]) >= MAX_WRITES or (batches[-1] and size + n > MAX_COMMIT_BYTES):
                batches.append([])
                size = 0
            batches[-1].append(doc)
            size += n
        written = 0
        for chunk in batches:
            if not chunk:
                continue
            with self._calls(f"writing {len(chunk)} documents to {chunk[0][0]}"):
                batch = self._client.batch()
                for collection, doc_id, data in chunk:
                    batch.set(self._doc(collection, doc_id), dict(data), merge=merge)
                batch.commit(retry=_retry(), timeout=TIMEOUT_S)
            written += len(chunk)
        return written

    def update_if(self, collection: str, doc_id: str, fields: Mapping[str, Any],
                  update_time: datetime) -> datetime:
        """Update ``fields`` of one document only if it was last written at ``update_time``
        (Firestore's ``currentDocument.updateTime`` precondition). Returns the new update time.

        Raises:
            FirestoreConflict: the document was written since (or is gone).
            FirestoreError: the call failed.
        """
        with self._calls(f"updating {collection}/{doc_id}"):
            option = self._client.write_option(last_update_time=update_time)
            try:
                result = self._doc(collection, doc_id).update(dict(fields), option=option,
                                                              retry=_retry(), timeout=TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001
                if type(exc).__name__ == "NotFound":
                    raise FirestoreConflict(f"Firestore document {collection}/{doc_id} was "
                                            "deleted.") from None
                raise
            return result.update_time
