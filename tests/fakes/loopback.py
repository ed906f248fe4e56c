"""What every loopback fake shares: an HTTP/1.1 server on 127.0.0.1 (ephemeral port) in a daemon
thread that records each request and hands it to the fake.

- :class:`LoopbackServer`: records every request (:class:`RecordedRequest`, stamped when its
  request line arrived) and calls the fake's ``handle(handler, rec)``, which answers through
  :meth:`~LoopbackServer.send_json` / :meth:`~LoopbackServer.send_bytes` /
  :meth:`~LoopbackServer.drop`. A request's ``status`` is set once its reply was sent in full.
- :class:`ScriptedServer`: a :class:`LoopbackServer` whose requests take the first queued
  :class:`Reply` that fits them (a scripted fault or answer), else the fake's own ``render``;
  the reply goes out ``delay_s`` (or the fake's ``latency_s``) after the request arrived, the
  fake's own work included in that time, as a server's would be.

Both are used as context managers (``with FakeX() as srv:``) or through ``start``/``stop``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs


@dataclass
class RecordedRequest:
    """One request as received.

    Attributes:
        method: ``"GET"``/``"POST"``...
        path: the path, without the query string.
        headers: header names lower-cased (``headers["authorization"]``).
        body: the parsed JSON body, None when empty or not JSON.
        raw: the body bytes.
        query: each query parameter's (last) value.
        target: the request target as sent (path and query string).
        status: the status of the reply sent in full; None: not answered (yet).
        at: when its request line arrived (``time.monotonic()``).
        reply: the JSON (or bytes) body of a :class:`ScriptedServer`'s reply, once sent.
        images: images the request showed a model, decoded by the fake that answered it
            (``[(mime type, bytes)]``; the OpenAI fake's ``request_images``).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = b""
    query: dict[str, str] = field(default_factory=dict)
    target: str = ""
    status: int | None = None
    at: float = field(default_factory=time.monotonic)
    reply: Any = None
    images: list = field(default_factory=list)


def without(body: Any, paths: tuple[str, ...] | list[str]) -> Any:
    """A deep copy of a JSON ``body`` without the fields at the dotted ``paths`` (``"etag"``,
    ``"output.1.content.0.text"``; a number indexes a list): an answer that is not what the
    API documents, for the tests of what a backend does with one."""
    if not paths:
        return body
    body = json.loads(json.dumps(body))
    for path in paths:
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.get(part, {})
        if isinstance(node, dict):
            node.pop(last, None)
    return body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    disable_nagle_algorithm = True  # else headers+body writes cost a 40 ms delayed ACK
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def parse_request(self) -> bool:
        self.arrived = time.monotonic()  # the request line is in: the call has begun
        return super().parse_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._sent_status = code
        super().send_response(code, message)

    def _dispatch(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if fake.gate is not None and not fake.gate.admit():
            return fake.drop(self)
        path, _, qs = self.path.partition("?")
        rec = fake.record_class(
            self.command, path, {k.lower(): v for k, v in self.headers.items()}, body, raw,
            query={k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()},
            target=self.path, at=self.arrived)
        with fake.lock:
            fake.requests.append(rec)
        self._sent_status = None
        fake.handle(self, rec)  # a reply cut short (the client left) raises: status stays None
        if self._sent_status is not None:
            with fake.lock:
                rec.status = self._sent_status

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: "LoopbackServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-reply is expected in fault tests


class LoopbackServer:
    """A fake HTTP service on ``host`` (127.0.0.1), bound when made, served once started.

    Args:
        gate: a :class:`tests.fakes.gate.Gate` (shared with other fakes) every request passes
            before it is recorded, to hold requests at a chosen moment.

    Attributes:
        requests: every :class:`RecordedRequest` received, in order (faults included).
        lock: guards ``requests`` and the fake's own state (re-entrant).

    Subclasses implement ``handle(handler, recorded)``; ``record_class`` may name a subclass of
    :class:`RecordedRequest`.
    """

    record_class: type[RecordedRequest] = RecordedRequest
    thread_name = "fake-server"

    def __init__(self, gate: Any = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.gate = gate
        self.requests: list[RecordedRequest] = []
        self.lock = threading.RLock()
        self._stopping = threading.Event()  # cuts scripted delays short on stop()
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}"

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True,
                                            name=self.thread_name)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    close = stop

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- what tests read ---------------------------------------------------------------------

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    @property
    def last(self) -> RecordedRequest:
        """The most recent request (IndexError when none)."""
        with self.lock:
            return self.requests[-1]

    @property
    def answered(self) -> list[RecordedRequest]:
        """The requests whose reply was sent in full."""
        with self.lock:
            return [r for r in self.requests if r.status is not None]

    def requests_to(self, prefix: str, method: str | None = None) -> list[RecordedRequest]:
        """The recorded requests whose path starts with ``prefix`` (and have ``method``)."""
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)
                    and (method is None or r.method == method)]

    # -- answering ---------------------------------------------------------------------------

    def handle(self, handler: BaseHTTPRequestHandler, rec: RecordedRequest) -> None:
        raise NotImplementedError

    @staticmethod
    def send_bytes(handler: BaseHTTPRequestHandler, status: int, data: bytes,
                   content_type: str, headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    @classmethod
    def send_json(cls, handler: BaseHTTPRequestHandler, status: int, body: Any,
                  headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        cls.send_bytes(handler, status, data, "application/json", headers)

    @staticmethod
    def drop(handler: BaseHTTPRequestHandler) -> None:
        """Close the connection without any reply (the client sees a disconnect)."""
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class Reply:
    """A scripted reply (see :meth:`ScriptedServer.enqueue`)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    when: Callable[[RecordedRequest], bool] | None = None  # None: any request takes it


class ScriptedServer(LoopbackServer):
    """A :class:`LoopbackServer` answering from a queue of scripted replies, else ``render``.

    Attributes:
        latency_s: every reply is sent this long after its request arrived (a service's think
            time; the fake's own work happens within it), unless the reply has a ``delay_s``.
        in_flight / max_in_flight: requests being answered now / the most at once.

    Subclasses implement ``render(rec, reply) -> (status, payload, headers)`` (payload: JSON or
    bytes) and may set ``bytes_content_type`` and ``reply_headers(rec)``.
    """

    reply_class: type[Reply] = Reply
    bytes_content_type = "application/octet-stream"

    def __init__(self, gate: Any = None, *, host: str = "127.0.0.1", port: int = 0,
                 latency_s: float = 0.0) -> None:
        super().__init__(gate, host=host, port=port)
        self.latency_s = latency_s
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[Reply] = deque()

    def _script(self, reply: Reply) -> None:
        with self.lock:
            self._queue.append(reply)

    @property
    def pending(self) -> int:
        """How many scripted replies are still queued."""
        with self.lock:
            return len(self._queue)

    def _pop(self, rec: RecordedRequest) -> Reply:
        with self.lock:
            for reply in self._queue:
                if reply.when is None or reply.when(rec):
                    self._queue.remove(reply)
                    return reply
            return self.reply_class()

    def render(self, rec: RecordedRequest, reply: Reply) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def reply_headers(self, rec: RecordedRequest) -> dict[str, str]:
        """Headers every reply carries (e.g. a request id)."""
        return {}

    def handle(self, handler: BaseHTTPRequestHandler, rec: RecordedRequest) -> None:
        reply = self._pop(rec)
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            rendered = None if reply.drop else self.render(rec, reply)
            wait_s = reply.delay_s or self.latency_s
            if wait_s:
                self._stopping.wait(max(0.0, rec.at + wait_s - time.monotonic()))
        finally:
            with self.lock:
                self.in_flight -= 1
        if rendered is None:
            return self.drop(handler)
        status, payload, headers = rendered
        headers = {**self.reply_headers(rec), **headers}
        if isinstance(payload, bytes):
            data, ctype = payload, headers.pop("content-type", self.bytes_content_type)
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_bytes(handler, status, data, ctype, headers)
        with self.lock:
            rec.reply = payload
