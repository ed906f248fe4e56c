"""GCS on 127.0.0.1 for gcsfs: the PyPI ``gcp-storage-emulator`` with the request
preconditions it lacks.

``gcp-storage-emulator`` (2026.7) ignores ``ifGenerationMatch`` altogether: an upload with
``ifGenerationMatch=0`` overwrites an existing object, and a download with a stale
``ifGenerationMatch`` returns the current bytes (checked: tests/test_publishing.py
``test_the_gcs_fake_honours_generation_preconditions`` shows it). Real GCS refuses both with HTTP
412 (cloud.google.com/storage/docs/request-preconditions: "If the precondition is not met, the
request fails with a 412 Precondition Failed"; ``ifGenerationMatch=0`` "succeeds only if there
are no live versions of the object"). So this fake wraps the emulator's handlers of

* ``POST /upload/storage/v1/b/{bucket}/o`` (``objects.insert``, ``uploadType`` ``media`` and
  ``multipart``: the object's name from ``name`` or the multipart metadata),
* ``GET /download/storage/v1/b/{bucket}/o/{object}`` (the media download) and
  ``GET /storage/v1/b/{bucket}/o/{object}`` (``objects.get``, metadata),

checking ``ifGenerationMatch`` and ``ifGenerationNotMatch`` against the live object's generation
first, and answering 412 with GCS's error body (reason ``conditionNotMet``) when it does not
hold. Everything else is the emulator's. Its HTTP server handles one request at a time, so a
check and the write after it are atomic, as the service's are.

    with gcs_server("cloops-demo.firebasestorage.app") as srv:
        fs = gcsfs.GCSFileSystem(endpoint_url=srv.endpoint, token="anon", project="p")

``srv.refused`` counts the 412s answered. ``srv.before_write`` (None, or a callable taking the
object's name and the request's query, ``{param: [values]}``) runs inside the server before each
media or multipart upload is checked and stored; there ``srv.put_now(name, data)`` stores a
competing object at once — so a test can put another writer's write exactly between a client's
read and its write.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from http import HTTPStatus
from types import SimpleNamespace
from typing import Iterator

PRECONDITION_FAILED = {"error": {
    "code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
    "errors": [{"message": "At least one of the pre-conditions you specified did not hold.",
                "domain": "global", "reason": "conditionNotMet",
                "locationType": "header", "location": "If-Match"}]}}


def _generation(storage, bucket: str, name: str) -> str:
    from gcp_storage_emulator.exceptions import NotFound
    try:
        return str(storage.get_file_obj(bucket, name).get("generation") or "0")
    except NotFound:
        return "0"  # "0": no live object (GCS's meaning of ifGenerationMatch=0)


def _holds(query: dict, generation: str) -> bool:
    match = query.get("ifGenerationMatch")
    not_match = query.get("ifGenerationNotMatch")
    if match and match[0] != generation:
        return False
    if not_match and not_match[0] == generation:
        return False
    return True


@contextmanager
def gcs_server(bucket: str) -> Iterator[SimpleNamespace]:
    """Serve GCS on a free port of 127.0.0.1 with ``bucket``; yields ``endpoint``, ``bucket``,
    ``refused`` (412s answered) and ``before_write`` (a hook, see the module docstring)."""
    import gcp_storage_emulator.server as server
    from gcp_storage_emulator.handlers import objects

    state = SimpleNamespace(refused=0, before_write=None, storage=None)

    def put_now(name: str, data: bytes) -> None:
        """Store ``data`` as a new generation of ``name`` (from ``before_write`` only)."""
        obj = objects._make_object_resource(state.endpoint, bucket, name,
                                            "application/octet-stream", str(len(data)))
        state.storage.create_file(bucket, name, data, objects._checksums(data, obj))
    state.put_now = put_now

    def refuse(response):
        state.refused += 1
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json(PRECONDITION_FAILED)

    def insert(request, response, storage, *args, **kwargs):
        state.storage = storage
        kind = (request.query.get("uploadType") or [""])[0]
        if kind in ("media", "multipart"):
            name = (request.query.get("name") or [None])[0]
            if name is None and kind == "multipart":
                name = (request.data or {}).get("meta", {}).get("name")
            if name is not None and state.before_write is not None:
                state.before_write(name, request.query)
            if name is not None and ("ifGenerationMatch" in request.query
                                     or "ifGenerationNotMatch" in request.query):
                if not _holds(request.query, _generation(
                        storage, request.params["bucket_name"], name)):
                    return refuse(response)
        return objects.insert(request, response, storage, *args, **kwargs)

    def guarded(handler):
        def read(request, response, storage, *args, **kwargs):
            gen = _generation(storage, request.params["bucket_name"],
                              request.params["object_id"])
            if gen != "0" and not _holds(request.query, gen):
                return refuse(response)
            return handler(request, response, storage, *args, **kwargs)
        return read

    wrapped = {objects.insert: insert, objects.download: guarded(objects.download),
               objects.get: guarded(objects.get)}
    original = server.HANDLERS
    server.HANDLERS = tuple((regex, {m: wrapped.get(h, h) for m, h in handlers.items()})
                            for regex, handlers in original)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    srv.start()
    try:
        state.endpoint = f"http://127.0.0.1:{port}"
        state.bucket = bucket
        yield state
    finally:
        srv.stop()
        server.HANDLERS = original
