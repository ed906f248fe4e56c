"""A fake Replicate API on 127.0.0.1 speaking the wire protocol of the ``replicate`` SDK (1.0.7).

Point the SDK at it with ``base_url=srv.base_url`` (the host root: the SDK's paths already start
with ``/v1``, so a base URL ending in ``/v1`` would request ``/v1/v1/...``)::

    with FakeReplicate() as srv:
        client = replicate.Client(api_token="r8_test_token", base_url=srv.base_url)
        srv.enqueue(status=429, headers={"Retry-After": "3"})
        ...
        assert not srv.paid_twice()["id_known"]

Endpoints (shapes from the SDK's ``prediction.py``/``model.py`` and Replicate's HTTP API docs):

* ``POST /v1/models/{owner}/{name}/predictions`` and ``POST /v1/predictions`` (``{"version",
  "input"}``): create a prediction, HTTP 201. The prediction exists, runs and is billed from the
  moment the create arrives: it runs ``latency_s`` (counted from the create's arrival) and is
  terminal once that time has passed and ``polls_before_done`` GETs have seen it.

  Without ``Prefer: wait`` the create answers at once with the prediction ``starting``. With
  ``Prefer: wait[=N]`` the create is held open while the prediction runs, at most N seconds
  (60 for a bare ``wait``), and answers with its state then (terminal, or still ``starting``
  when the wait ran out or polls are scripted), as Replicate's "sync mode" does. A client that
  goes away while its create is held never gets the id; the prediction runs on and is billed
  all the same (``billed``, ``create_answered``).
* ``GET /v1/predictions/{id}``: the prediction (``processing`` while it runs).
* ``POST /v1/predictions/{id}/cancel``: cancels it (``status: canceled``, ``output: null``).
* ``GET /files/{id}.png`` (``/files/{id}-{k}.png`` for the k-th extra output): PNG bytes, a
  different colour per prediction. No auth needed, as on replicate.delivery.
* ``POST /v1/files`` (multipart ``content``, as the SDK's ``files.create`` sends it): an upload,
  answered with the Files API's object (``urls.get``, ``expires_at`` a day later); ``uploads``
  keeps each one's bytes.

``/v1`` requests without ``Authorization: Bearer <token>`` get 401 (problem JSON, RFC 7807:
``{"title", "detail", "status"}``, what ``ReplicateError.from_response`` reads).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import select
import socket
import string
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from .loopback import LoopbackServer, RecordedRequest, without

DEFAULT_TOKEN = "r8_test_token"
_UNSET: Any = object()

_CREATE_MODEL = re.compile(r"^/v1/models/(?P<owner>[^/]+)/(?P<name>[^/]+)/predictions$")
_GET = re.compile(r"^/v1/predictions/(?P<id>[a-z0-9]+)$")
_CANCEL = re.compile(r"^/v1/predictions/(?P<id>[a-z0-9]+)/cancel$")
_FILE = re.compile(r"^/files/(?P<name>[A-Za-z0-9_-]+)\.png$")
_UPLOADS = "/v1/files"

_TITLES = {400: "Bad Request", 401: "Unauthenticated", 403: "Forbidden", 404: "Not found",
           422: "Input validation failed", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def problem(status: int, detail: str | None = None) -> dict:
    """Replicate's error body (RFC 7807 problem details): ``{"title", "detail", "status"}``."""
    title = _TITLES.get(status, "Error")
    return {"title": title, "detail": detail or f"fake {title.lower()}", "status": status}


def png_bytes(size: tuple[int, int] = (32, 24), seed: str = "") -> bytes:
    """A small solid PNG whose colour is derived from ``seed`` (``size`` in px)."""
    from PIL import Image

    digest = hashlib.sha256(seed.encode()).digest()
    img = Image.new("RGB", size, (digest[0], digest[1], digest[2]))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@dataclass
class Reply:
    """A scripted reply (see :meth:`FakeReplicate.enqueue`)."""

    status: int = 201
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    prediction_status: str = "succeeded"
    polls_before_done: int = 0
    error: str | None = None
    output: Any = _UNSET
    on: str = "create"


@dataclass
class FakePrediction:
    """Server-side state of one prediction; ``json()`` is what the API returns."""

    id: str
    model: str
    version: str
    input: dict
    final_status: str
    polls_left: int
    error: str | None
    output: Any
    status: str = "starting"
    created_at: str = ""
    completed_at: str | None = None
    polls: int = 0
    done_at: float = 0.0  # time.monotonic() from which it may be terminal (it runs until then)
    request: RecordedRequest | None = None  # its create request
    released_at: float = 0.0  # time.monotonic() when the last scripted poll saw it (0: none)

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled")

    @property
    def create_answered(self) -> bool:
        """Whether its create's reply, which carried its id, was sent in full to the client."""
        return self.request is not None and self.request.status is not None

    @property
    def fingerprint(self) -> str:
        """Its create request's body as canonical JSON: equal for the same input and model."""
        body = self.request.body if self.request is not None else {"input": self.input}
        return json.dumps(body, sort_keys=True)

    def advance(self, now: float) -> None:
        """Finish it once it has run its time and the scripted polls have seen it. As on
        Replicate, ``completed_at`` is when it finished (its run time was up, or the last
        scripted poll held it), not when a poll happened to look."""
        if not self.terminal and now >= self.done_at and self.polls_left <= 0:
            self.finish(max(self.done_at, self.released_at))

    def finish(self, at: float | None = None) -> None:
        """Make it terminal; ``at``: when it finished (time.monotonic(); None: now)."""
        self.status = self.final_status
        self.completed_at = _now(None if at is None else time.monotonic() - at)
        if self.status != "succeeded":
            self.output = None
        if self.status == "failed" and not self.error:
            self.error = "fake prediction failed"

    def json(self, base: str) -> dict:
        done = self.status in ("succeeded", "failed", "canceled")
        return {
            "id": self.id, "model": self.model, "version": self.version, "input": self.input,
            "logs": "", "output": self.output if done else None, "data_removed": False,
            "error": self.error if self.status == "failed" else None, "status": self.status,
            "source": "api", "created_at": self.created_at,
            "started_at": self.created_at if self.status != "starting" else None,
            "completed_at": self.completed_at,
            "urls": {"get": f"{base}/v1/predictions/{self.id}",
                     "cancel": f"{base}/v1/predictions/{self.id}/cancel",
                     "web": f"https://replicate.com/p/{self.id}"},
            "metrics": ({"predict_time": round(_seconds_between(self.created_at,
                                                                self.completed_at), 6)}
                        if self.status == "succeeded" else {}),
        }


def _prefer_wait_s(prefer: str) -> float:
    """Seconds a ``Prefer`` header asks the create to be held (0: none). ``wait`` alone is 60 s,
    ``wait=N`` N seconds, at most 60 (Replicate's sync-mode limit)."""
    match = re.match(r"^\s*wait(?:\s*=\s*(\d+))?\s*$", prefer or "")
    if not match:
        return 0.0
    return float(min(60, int(match[1]))) if match[1] else 60.0


def _client_gone(handler: BaseHTTPRequestHandler) -> bool:
    """True when the client closed its end of the connection (it died or gave up)."""
    sock = handler.connection
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _now(ago_s: float | None = None) -> str:
    """An API timestamp (ISO 8601, UTC, ``Z``): now, or ``ago_s`` seconds before now."""
    at = datetime.now(timezone.utc)
    if ago_s:
        at -= timedelta(seconds=ago_s)
    return at.isoformat().replace("+00:00", "Z")


def _seconds_between(start: str, end: str | None) -> float:
    if not start or not end:
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())


class FakeReplicate(LoopbackServer):
    """A scriptable fake of Replicate's prediction API
    (:class:`tests.fakes.loopback.LoopbackServer`).

    Args:
        token: the only API token accepted (None: accept any request).
        output_urls: ``"data"`` (outputs are ``data:image/png;base64,...`` URLs) or ``"http"``
            (``http://127.0.0.1:PORT/files/{id}.png``, served by this server).
        output_count: outputs per succeeded prediction.
        output_list: True: ``output`` is a list of URLs (seedream-4); False: one URL string
            (nano-banana-pro; only the first of ``output_count``).
        image_size: output PNG size ``(width_px, height_px)``.
        colour_by: ``"prediction"`` (each prediction's images from its id) or ``"input"``
            (from its input: runs that make the same predictions in another order get the same
            images, as the kill tests compare runs).

    Attributes:
        base_url: ``http://127.0.0.1:PORT``, the SDK's ``base_url``.
        api_url: ``base_url + "/v1"``.
        requests: every :class:`RecordedRequest`, in arrival order.
        creates: the prediction-create requests (both routes), including scripted failures.
        create_count: ``len(creates)``.
        predictions: ``{id: FakePrediction}`` of the predictions created.
        billed: the predictions created, in order (see :meth:`paid_twice`).
        in_flight / max_in_flight: predictions running now / the most at once.
        canceled: ids of predictions canceled through the API.
    """

    thread_name = "fake-replicate"

    def __init__(self, *, token: str | None = DEFAULT_TOKEN, output_urls: str = "data",
                 output_count: int = 1, output_list: bool = True,
                 image_size: tuple[int, int] = (32, 24), gate: Any = None,
                 latency_s: float = 0.0, colour_by: str = "prediction"):
        """``latency_s``: each prediction runs this long, counted from the arrival of its create
        request (a create with ``Prefer: wait`` is held open that long); ``max_in_flight``
        records the most predictions running at once."""
        super().__init__(gate)
        self.latency_s = latency_s
        self.colour_by = colour_by
        self.max_in_flight = 0
        if output_urls not in ("data", "http"):
            raise ValueError("output_urls must be 'data' or 'http'")
        self.token = token
        self.output_urls = output_urls
        self.output_count = output_count
        self.output_list = output_list
        self.image_size = image_size
        self.queue: deque[Reply] = deque()
        self.predictions: dict[str, FakePrediction] = {}
        self.canceled: list[str] = []
        self.uploads: dict[str, bytes] = {}  # file id -> the uploaded bytes
        # request kind ("create", "get", "upload") -> dotted fields left out of every answer of
        # that kind (an answer not as Replicate documents it: ``{"upload": ("etag",)}``)
        self.omit: dict[str, tuple[str, ...]] = {}
        self._seen: dict[str, int] = {}  # prediction input -> how many were created
        self._seeds: dict[str, str] = {}  # prediction id -> what its images derive from
        self._rng = random.Random(7)

    @property
    def base_url(self) -> str:
        return self.root_url

    @property
    def api_url(self) -> str:
        return self.root_url + "/v1"

    @property
    def creates(self) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and
                    (r.path == "/v1/predictions" or _CREATE_MODEL.match(r.path))]

    @property
    def create_count(self) -> int:
        return len(self.creates)

    @property
    def in_flight(self) -> int:
        """Predictions running now (created, not yet through their ``latency_s``)."""
        now = time.monotonic()
        with self.lock:
            return sum(1 for p in self.predictions.values()
                       if not p.terminal and p.done_at > now)

    @property
    def billed(self) -> list[FakePrediction]:
        """Every prediction created, in creation order: each runs and is billed whether or not
        its client stayed to see it (a canceled one too, for the time it ran)."""
        now = time.monotonic()
        with self.lock:
            for pred in self.predictions.values():
                pred.advance(now)
            return list(self.predictions.values())

    def paid_twice(self) -> dict[str, list[FakePrediction]]:
        """The predictions created again for an input already billed, in two lists:

        - ``"id_known"``: an earlier prediction of that input had its create answered, so its
          client knew its id (and could have resumed it): paid twice for nothing;
        - ``"create_lost"``: every earlier one's create went unanswered (the client died, or
          gave up, inside the create's own round trip): the client could not know it existed.
        """
        out: dict[str, list[FakePrediction]] = {"id_known": [], "create_lost": []}
        seen: dict[str, list[FakePrediction]] = {}
        for pred in self.billed:
            earlier = seen.setdefault(pred.fingerprint, [])
            if earlier:
                known = any(p.create_answered for p in earlier)
                out["id_known" if known else "create_lost"].append(pred)
            earlier.append(pred)
        return out

    def enqueue(self, status: int = 201, body: Any = None, headers: dict | None = None,
                delay_s: float = 0, drop: bool = False, prediction_status: str = "succeeded",
                polls_before_done: int = 0, error: str | None = None, output: Any = _UNSET,
                on: str = "create") -> None:
        """Script the reply to the next request of kind ``on``.

        Args:
            status: HTTP status. A status >= 400 answers ``body`` (default: problem JSON for
                that status) and creates nothing.
            body: a JSON-able body (or bytes) to answer verbatim instead of the normal reply.
            headers: extra response headers, e.g. ``{"Retry-After": "3"}``.
            delay_s: seconds to wait before answering.
            drop: close the connection without replying.
            prediction_status: the created prediction's terminal status: ``"succeeded"``,
                ``"failed"`` or ``"canceled"``.
            polls_before_done: GETs that see it ``starting``/``processing`` before it is
                terminal (0: terminal once it has run ``latency_s``; without ``Prefer: wait``
                the create reply always says ``starting``).
            error: the ``error`` text of a failed prediction.
            output: the ``output`` of a succeeded prediction, instead of generated URLs.
            on: which request consumes this reply: ``"create"``, ``"get"``, ``"cancel"``,
                ``"file"``, ``"upload"`` or ``"any"``.
        """
        if on not in ("create", "get", "cancel", "file", "upload", "any"):
            raise ValueError(f"unknown request kind {on!r}")
        with self.lock:
            self.queue.append(Reply(status=status, body=body, headers=dict(headers or {}),
                                    delay_s=delay_s, drop=drop,
                                    prediction_status=prediction_status,
                                    polls_before_done=polls_before_done, error=error,
                                    output=output, on=on))

    # -- dispatch ------------------------------------------------------------------------------

    def _next_reply(self, kind: str) -> Reply | None:
        with self.lock:
            for reply in self.queue:
                if reply.on in (kind, "any"):
                    self.queue.remove(reply)
                    return reply
        return None

    def handle(self, handler: BaseHTTPRequestHandler, rec: RecordedRequest) -> None:
        path = rec.path.split("?", 1)[0]
        if rec.method == "POST" and (path == "/v1/predictions" or _CREATE_MODEL.match(path)):
            kind = "create"
        elif rec.method == "POST" and _CANCEL.match(path):
            kind = "cancel"
        elif rec.method == "GET" and _GET.match(path):
            kind = "get"
        elif rec.method == "GET" and _FILE.match(path):
            kind = "file"
        elif rec.method == "POST" and path == _UPLOADS:
            kind = "upload"
        else:
            kind = "other"
        reply = self._next_reply(kind) if kind != "other" else None
        if reply is not None:
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if reply.drop:
                return self.drop(handler)
            if reply.status >= 400 or reply.body is not None:
                body = reply.body if reply.body is not None else problem(reply.status)
                return self.send_json(handler, reply.status, body, reply.headers)
        if path.startswith("/v1/") and self.token is not None and \
                rec.headers.get("authorization") != f"Bearer {self.token}":
            return self.send_json(handler, 401, problem(
                401, "You did not pass a valid authentication token"))
        route: dict[str, Callable[..., None]] = {
            "create": self._create, "get": self._get, "cancel": self._cancel, "file": self._file,
            "upload": self._upload}
        if kind == "other":
            detail = f"no route for {rec.method} {path}"
            if path.startswith("/v1/v1/"):
                detail += " (base_url must be the host root: the SDK adds /v1 itself)"
            return self.send_json(handler, 404, problem(404, detail))
        route[kind](handler, rec, path, reply or Reply())

    def _new_id(self) -> str:
        return "".join(self._rng.choice(string.ascii_lowercase + string.digits)
                       for _ in range(26))

    def _image_seed(self, pid: str, k: int) -> str:
        """What the k-th output image of ``pid`` is drawn from: its id (``colour_by=
        "prediction"``), or its input and how many times that same input was created before
        (``"input"``: the same input gives the same image in every run, whatever order the
        predictions are made in, and a second prediction of it — a re-roll — another)."""
        name = pid if k == 0 else f"{pid}-{k}"
        seed = self._seeds.get(pid) if self.colour_by == "input" else None
        return f"{seed}-{k}" if seed else name

    def _outputs(self, pid: str) -> Any:
        urls = []
        for k in range(max(1, self.output_count)):
            name = pid if k == 0 else f"{pid}-{k}"
            if self.output_urls == "data":
                data = png_bytes(self.image_size, self._image_seed(pid, k))
                urls.append("data:image/png;base64," + base64.b64encode(data).decode())
            else:
                urls.append(f"{self.base_url}/files/{name}.png")
        return urls if self.output_list else urls[0]

    def _create(self, handler, rec: RecordedRequest, path: str, reply: Reply) -> None:
        body = rec.body if isinstance(rec.body, dict) else {}
        match = _CREATE_MODEL.match(path)
        if match:
            model, version = f"{match['owner']}/{match['name']}", "hidden"
        else:
            version = str(body.get("version") or "")
            if not version:
                return self.send_json(handler, 422, problem(422, "version is required"))
            model = "fake/version-model"
        if not isinstance(body.get("input"), dict):
            return self.send_json(handler, 422, problem(422, "input is required"))
        if reply.prediction_status not in ("succeeded", "failed", "canceled"):
            raise ValueError(f"bad prediction_status {reply.prediction_status!r}")
        pid = self._new_id()
        wait_s = _prefer_wait_s(rec.headers.get("prefer", ""))
        polls = reply.polls_before_done
        fingerprint = json.dumps(body["input"], sort_keys=True)
        with self.lock:
            self._seen[fingerprint] = self._seen.get(fingerprint, 0) + 1
            seed = hashlib.sha256(f"{fingerprint}#{self._seen[fingerprint]}".encode()).hexdigest()
        self._seeds[pid] = seed
        output = self._outputs(pid) if reply.output is _UNSET else reply.output
        pred = FakePrediction(id=pid, model=model, version=version, input=body["input"],
                              final_status=reply.prediction_status, polls_left=polls,
                              error=reply.error, output=output,
                              created_at=_now(time.monotonic() - rec.at),
                              done_at=rec.at + self.latency_s, request=rec)
        # the prediction exists (and is billed) from now on, whatever happens to this request
        with self.lock:
            self.predictions[pid] = pred
            running = sum(1 for p in self.predictions.values()
                          if not p.terminal and p.done_at > time.monotonic())
            self.max_in_flight = max(self.max_in_flight, running)
        if wait_s:
            # sync mode: hold the create open while the prediction runs, up to the wait
            until = min(pred.done_at, rec.at + wait_s)
            while time.monotonic() < until and not self._stopping.is_set():
                if _client_gone(handler):
                    return  # no reply: the client never learns the id; the prediction runs on
                self._stopping.wait(min(0.01, max(0.0, until - time.monotonic())))
        with self.lock:
            if wait_s:  # otherwise it has only just started, however short its run
                pred.advance(time.monotonic())
            data = without(pred.json(self.base_url), self.omit.get("create", ()))
        self.send_json(handler, reply.status if reply.status < 400 else 201, data, reply.headers)

    def _get(self, handler, rec: RecordedRequest, path: str, reply: Reply) -> None:
        pid = _GET.match(path)["id"]
        with self.lock:
            pred = self.predictions.get(pid)
            if pred is None:
                return self.send_json(handler, 404, problem(404, "Prediction not found"))
            pred.polls += 1
            if not pred.terminal:
                pred.polls_left -= 1
                if pred.polls_left == 0:
                    pred.released_at = time.monotonic()
                pred.advance(time.monotonic())
                if not pred.terminal:
                    pred.status = "processing"
            data = without(pred.json(self.base_url), self.omit.get("get", ()))
        self.send_json(handler, 200, data, reply.headers)

    def _cancel(self, handler, rec: RecordedRequest, path: str, reply: Reply) -> None:
        pid = _CANCEL.match(path)["id"]
        with self.lock:
            pred = self.predictions.get(pid)
            if pred is None:
                return self.send_json(handler, 404, problem(404, "Prediction not found"))
            if pred.status not in ("succeeded", "failed", "canceled"):
                pred.final_status = "canceled"
                pred.finish()
            self.canceled.append(pid)
            data = pred.json(self.base_url)
        self.send_json(handler, 200, data, reply.headers)

    def _upload(self, handler, rec: RecordedRequest, path: str, reply: Reply) -> None:
        """``POST /v1/files``: the multipart part named ``content`` is the file."""
        from email.parser import BytesParser
        ctype = rec.headers.get("content-type", "")
        msg = BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + rec.raw)
        content, filename, part_type = None, "file", "application/octet-stream"
        for part in msg.walk():
            if part.get_param("name", header="content-disposition") == "content":
                content = part.get_payload(decode=True)
                filename = part.get_filename() or filename
                part_type = part.get_content_type()
        if content is None:
            return self.send_json(handler, 422, problem(422, "content is required"))
        fid = self._new_id()
        with self.lock:
            self.uploads[fid] = content
        expires = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat().replace(
            "+00:00", "Z")
        self.send_json(handler, 201, without({
            "id": fid, "name": filename, "content_type": part_type, "size": len(content),
            "etag": hashlib.md5(content).hexdigest(),
            "checksums": {"sha256": hashlib.sha256(content).hexdigest()}, "metadata": {},
            "created_at": _now(), "expires_at": expires,
            "urls": {"get": f"{self.api_url}/files/{fid}"}}, self.omit.get("upload", ())),
            reply.headers)

    def upload_url_bytes(self, url: str) -> bytes | None:
        """The bytes uploaded at a ``urls.get`` this server answered, or None."""
        return self.uploads.get(url.rsplit("/", 1)[-1])

    def request_key(self, prediction: FakePrediction) -> str:
        """The prediction's request as canonical JSON with its reference images named by the
        SHA-256 of the bytes uploaded at their URLs: the same request sent by two workers,
        whose uploads of one file get different URLs, gives the same key."""
        body = json.loads(json.dumps(prediction.request.body))
        refs = body.get("input", {}).get("image_input")
        if refs:
            body["input"]["image_input"] = [
                hashlib.sha256(self.upload_url_bytes(u) or b"").hexdigest() for u in refs]
        return json.dumps(body, sort_keys=True)

    def _file(self, handler, rec: RecordedRequest, path: str, reply: Reply) -> None:
        name = _FILE.match(path)["name"]
        pid = name.split("-", 1)[0]
        if pid not in self.predictions:
            return self.send_json(handler, 404, problem(404, "file not found"))
        k = int(name.split("-", 1)[1]) if "-" in name else 0
        self.send_bytes(handler, 200, png_bytes(self.image_size, self._image_seed(pid, k)),
                        "image/png", reply.headers)
