"""Image backend on Replicate, through the official ``replicate`` SDK (1.0.7).

Layer: **services**.

One :meth:`ReplicateBackend.generate_image` call is one prediction:

1. ``POST /v1/models/{owner}/{name}/predictions``, or ``POST /v1/predictions`` with
   ``{"version": ...}`` for an ``owner/name:version`` model id. No ``Prefer: wait`` header:
   Replicate answers at once with the prediction ``starting`` and its id, which is noted in the
   call's job journal (:func:`cloops.services.cache.current_job`) before the image is generated.
   With ``Prefer: wait`` Replicate holds the create open while the image is generated (5-30 s
   for seedream-4), so a run killed meanwhile never learned the id, and the next run paid for
   the image again; what the wait saved is at most one poll interval per image
   (``benchmarks/README.md`` measures the trade). ``CLOOPS_REPLICATE_PREFER_WAIT_S`` (seconds,
   default 0) brings the header back, for measuring that trade only;
2. while the prediction is not terminal (``succeeded|failed|canceled``), ``GET
   /v1/predictions/{id}`` every ``poll_interval_s`` until ``request.timeout_s`` has passed, then
   ``POST /v1/predictions/{id}/cancel`` and raise :class:`TransientServiceError`. The first
   poll waits for the shortest run this backend has seen of the model lately (the fastest of
   the last :data:`RECENT_RUNS`): polling a prediction that cannot be done yet costs requests
   (Replicate limits them per minute) and CPU, and gains nothing. A run's length is Replicate's
   own, ``completed_at - created_at`` of the prediction (both the server's clock), not when a
   poll happened to see it done: a poll that came late, or a slow first run (a cold boot),
   does not push the next predictions' first polls later;
3. download the first output at once (Replicate deletes outputs after one hour): ``data:`` URLs
   are decoded, ``http(s)`` URLs fetched with httpx; convert it to JPEG.

What a kill can still cost: a kill between the create reaching Replicate and its id being
noted (one HTTP round trip and a file write) leaves a prediction the next run cannot know of,
which it pays again.

Error mapping at the boundary (the SDK raises ``replicate.exceptions.ReplicateError`` with
``.status``/``.detail`` and lets httpx errors through; it never retries a create, a POST):

================================================  =========================================
429, 408, 5xx, connection error, timeout          :class:`TransientServiceError`
                                                  (``retry_after_s`` from ``Retry-After``)
401, 403                                          :class:`AuthError` (names REPLICATE_API_TOKEN)
other 4xx (400, 404, 422, ...)                    :class:`PermanentServiceError` (API detail)
prediction ``failed`` / ``canceled`` / no output  :class:`PermanentServiceError`
an answer the SDK cannot read: a field missing    :class:`PermanentServiceError`, at once: names
or mistyped (the SDK's pydantic models raise       the endpoint and the field; with a base URL
``ValidationError``), a body that is not JSON,     of another host, "the server at
JSON of another shape                              REPLICATE_BASE_URL does not speak Replicate's
                                                   API" (a retry gets the same answer)
================================================  =========================================

SDK facts this relies on (read from replicate 1.0.7's ``client.py``, ``prediction.py``,
``model.py``): request paths already start with ``/v1``, so ``base_url`` is the host root
(``https://api.replicate.com``; a trailing ``/v1`` is stripped here, it would give ``/v1/v1/``);
``ReplicateError`` keeps no response headers, so ``Retry-After`` is read through an httpx
response hook; the SDK's ``RetryTransport`` retries GETs on 429/503/504 up to 10 times sleeping
``Retry-After`` seconds uncapped, which would overrun ``timeout_s``, so this backend mounts a plain
transport and retries failed polls itself, within the deadline.
"""

from __future__ import annotations

import base64
import collections
import os
import re
import threading
import time
import urllib.parse
from typing import Any, Mapping

from ..core.errors import (AuthError, PermanentServiceError, ServiceError,
                      TransientServiceError)
from .imaging import to_jpeg
from .base import ImageRequest, ImageResult, service_done
from .cache import Job, current_job
from .registry import BackendSpec, register
from .wire import answer_problem, not_as_documented_fix, parse_retry_after, tls_context

TOKEN_ENV = "REPLICATE_API_TOKEN"
BASE_URL_ENV = "REPLICATE_BASE_URL"
POLL_INTERVAL_ENV = "REPLICATE_POLL_INTERVAL"  # the SDK's own variable, seconds
DEFAULT_POLL_INTERVAL_S = 0.5  # the SDK's default
PREFER_WAIT_ENV = "CLOOPS_REPLICATE_PREFER_WAIT_S"  # 0 (default): no Prefer: wait (module doc)
MAX_PREFER_WAIT_S = 60  # Replicate holds a ``Prefer: wait`` request at most 60 s
RECENT_RUNS = 20  # per model, the run times (created_at to completed_at) the first poll is timed by
TERMINAL = ("succeeded", "failed", "canceled")
API_HOSTS = ("api.replicate.com",)  # Replicate's own API: any other base URL is another server
_TRANSIENT_STATUS = {408, 425, 429}
_MODEL_REF = re.compile(r"^(?P<owner>[^/:\s]+)/(?P<name>[^/:\s]+)(:(?P<version>\S+))?$")


def parse_model_ref(model: str) -> tuple[str, str, str | None]:
    """Split ``"owner/name"`` or ``"owner/name:version"`` into ``(owner, name, version|None)``.

    Raises:
        PermanentServiceError: the id has neither form.
    """
    match = _MODEL_REF.match(model.strip())
    if not match:
        raise PermanentServiceError(
            f"invalid Replicate model id {model!r}. Fix: set generation.model to "
            "\"owner/name\" (e.g. \"bytedance/seedream-4\") or \"owner/name:version\".",
            service="image", backend="replicate")
    return match["owner"], match["name"], match["version"]


def decode_data_url(url: str) -> bytes:
    """Return the bytes of a ``data:[<mime>][;base64],<payload>`` URL.

    Raises:
        PermanentServiceError: the URL has no comma or its base64 payload is corrupt.
    """
    header, sep, payload = url.partition(",")
    if not sep:
        raise PermanentServiceError(f"Replicate returned a malformed data: URL ({url[:60]}...).",
                                    service="image", backend="replicate")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (ValueError, TypeError) as exc:
            raise PermanentServiceError(f"Replicate returned a corrupt base64 data: URL ({exc}).",
                                        service="image", backend="replicate") from exc
    return urllib.parse.unquote_to_bytes(payload)


def run_seconds(prediction: Any) -> float | None:
    """How long a terminal prediction took from its create to its end, by Replicate's clock:
    ``completed_at - created_at`` (ISO 8601 timestamps, e.g. ``2025-09-08T16:19:34.765994Z``;
    replicate.com/docs/reference/http, "Get a prediction"). None when either is missing or
    unreadable, or the difference is negative."""
    from datetime import datetime
    try:
        start = datetime.fromisoformat(str(prediction.created_at).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(prediction.completed_at).replace("Z", "+00:00"))
        seconds = (end - start).total_seconds()
    except (AttributeError, TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _root_url(base_url: str | None) -> str | None:
    """Strip a trailing ``/`` and ``/v1``: the SDK's paths already start with ``/v1``."""
    if not base_url:
        return None
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    return url


class ReplicateBackend:
    """Generate images with a Replicate model (e.g. ``bytedance/seedream-4``).

    Attributes:
        name: ``"replicate"``.
        offline: False (every call is paid).
        uses_annotations: False (only the prompt and params reach the model).
        base_url: the API root actually used (None: the SDK's default / ``REPLICATE_BASE_URL``).
        poll_interval_s: seconds between ``GET /v1/predictions/{id}`` polls.
        prefer_wait_s: seconds a create asks Replicate to hold it (``Prefer: wait=N``); 0 (the
            default) sends no such header, so the prediction's id is known at once.

    Thread-safe: one backend may serve several threads (the SDK's httpx client is).
    """

    name = "replicate"
    offline = False
    uses_annotations = False

    def __init__(self, api_token: str | None, *, base_url: str | None = None,
                 http_timeout_s: float = 30.0, poll_interval_s: float | None = None,
                 prefer_wait_s: float = 0.0, base_url_source: str = BASE_URL_ENV):
        """Make the SDK client; no network call happens here.

        Args:
            api_token: the Replicate API token (``r8_...``).
            base_url: the API root, e.g. ``https://api.replicate.com`` (a trailing ``/v1`` is
                accepted); None uses ``REPLICATE_BASE_URL`` or the SDK default.
            http_timeout_s: the timeout of each HTTP call except a ``Prefer: wait`` create,
                whose read timeout the SDK sets to the wait + 0.5 s.
            poll_interval_s: seconds between polls; None reads ``REPLICATE_POLL_INTERVAL``
                (default 0.5).
            prefer_wait_s: see the attribute (0 keeps a kill during generation from paying
                twice; anything else is for measuring, see the module doc).
            base_url_source: where ``base_url`` came from (``REPLICATE_BASE_URL`` or
                ``generation.baseUrl``), named when that server's answers are not Replicate's.

        Raises:
            AuthError: ``api_token`` is empty.
        """
        if not api_token:
            raise AuthError(
                f"the replicate image backend needs {TOKEN_ENV}, which is not set. Fix: put "
                f"{TOKEN_ENV}=r8_... in the environment or .env, or set "
                "generation.backend: \"storyboard\" in config.json to draw offline drafts.",
                service="image", backend="replicate")
        import httpx  # lazily: importing this module must stay cheap
        import replicate

        self._httpx = httpx
        self._replicate = replicate
        self._token = api_token
        self.base_url = _root_url(base_url)
        self.base_url_source = base_url_source
        if poll_interval_s is None:
            poll_interval_s = float(os.environ.get(POLL_INTERVAL_ENV, DEFAULT_POLL_INTERVAL_S))
        self.poll_interval_s = max(0.0, float(poll_interval_s))
        self.prefer_wait_s = max(0.0, min(float(MAX_PREFER_WAIT_S), float(prefer_wait_s)))
        self._local = threading.local()
        self._uploads: dict[int, Any] = {}
        self._upload_locks: dict[str, threading.Lock] = {}
        self._uploads_guard = threading.Lock()
        self._runs: dict[str, collections.deque] = {}  # model -> recent run times, seconds
        self._runs_lock = threading.Lock()
        timeout = httpx.Timeout(http_timeout_s, connect=min(10.0, http_timeout_s))
        transport = httpx.HTTPTransport(verify=tls_context())
        self._client = replicate.Client(
            api_token=api_token, base_url=self.base_url, timeout=timeout, transport=transport,
            # A plain transport for every URL replaces the SDK's RetryTransport (see module doc).
            mounts={"all://": transport},
            event_hooks={"response": [self._remember_response]})
        self._client.poll_interval = self.poll_interval_s
        self._http = httpx.Client(timeout=timeout, follow_redirects=True,
                                  verify=tls_context())
        api_root = self.base_url or os.environ.get(BASE_URL_ENV) or "https://api.replicate.com"
        self._api_origin = _origin(api_root)

    # -- the protocol --------------------------------------------------------------------------

    def prepare_image(self, request: ImageRequest) -> None:
        """Upload the request's reference images not uploaded yet (the hub calls this outside
        the prediction slot: Replicate's concurrency limit is about running predictions, and
        a slot held through uploads would leave it idle). :meth:`generate_image` then finds
        their URLs noted.

        Raises:
            TransientServiceError / AuthError / PermanentServiceError: an upload failed.
        """
        if request.references:
            self._reference_urls(request)

    def generate_image(self, request: ImageRequest) -> ImageResult:
        """Run one prediction and return its first output as JPEG.

        Sends ``input = {"prompt": request.prompt, **request.params}`` unchanged, plus the
        reference images' URLs under ``request.reference_param`` (``image_input``) when the
        request has references (:meth:`_reference_urls`). The prediction's id, answered at once
        by its create, is noted in the call's job journal
        (:func:`cloops.services.cache.current_job`) until its image is cached: if the run is killed
        while the image is generated, the next run of the same request polls that prediction
        instead of paying for a second one.

        Returns:
            :class:`ImageResult` with JPEG bytes, the pixel size, and ``images_billed`` = the
            number of outputs (seedream-4 returns a list, nano-banana-pro one URL).

        Raises:
            TransientServiceError: 429/5xx/connection error/timeout, or the prediction was not
                done within ``request.timeout_s`` (it is then canceled).
            AuthError: the token was rejected (401/403).
            PermanentServiceError: bad input (400/404/422), the prediction failed or was
                canceled, or its output is not an image.
        """
        deadline = time.monotonic() + request.timeout_s
        owner, model_name, version = parse_model_ref(request.model)
        payload = {"prompt": request.prompt, **request.params}
        if request.references:
            payload[request.reference_param] = self._reference_urls(request)
        # no Prefer: wait unless asked for (None: the SDK sends no header); never past the timeout
        wait = (int(max(1, min(self.prefer_wait_s, request.timeout_s)))
                if self.prefer_wait_s else None)
        job = current_job()
        prediction = self._resume(job, request)
        created_at = None  # monotonic, for a prediction this call created
        if prediction is None:
            created_at = time.monotonic()
            with self._mapped(request.model, "creating the prediction"):
                if version:
                    prediction = self._client.predictions.create(version=version, input=payload,
                                                                 wait=wait)
                else:
                    prediction = self._client.models.predictions.create(
                        model=(owner, model_name), input=payload, wait=wait)
            if prediction.status not in TERMINAL:
                job.started(prediction.id)  # still running: a kill from here on resumes it
        self._wait(prediction, deadline, request, job, created_at)
        service_done()  # the prediction is terminal: the download below takes no Replicate slot
        try:
            return self._result(prediction, request)
        except PermanentServiceError:
            job.ended()  # failed, canceled or no image: nothing to resume
            raise
        # on success the hub ends the note once the image is cached: a kill or a failed
        # download until then resumes this prediction (its output lives an hour)

    # -- steps ---------------------------------------------------------------------------------

    def _reference_urls(self, request: ImageRequest) -> list[str]:
        """The URLs of the request's reference images, in order, each uploaded once per content.

        Uploaded through Replicate's Files API (``POST /v1/files``) rather than sent as
        ``data:`` URIs: a sheet goes with every page it is on (a library character's with every
        story), and Replicate recommends data URIs only under 1 MB (replicate.com/docs,
        "Input files") while a 2K sheet is often larger. An upload is noted by sha256 beside
        the response cache (:class:`cloops.services.uploads.UploadBook`) with its expiry, and
        reused until shortly before it expires.

        Raises:
            TransientServiceError / AuthError / PermanentServiceError: the upload failed.
        """
        import io

        from .uploads import UploadBook
        job = current_job()
        book = self._uploads.get(id(job.cache))
        if book is None:
            book = self._uploads[id(job.cache)] = UploadBook(
                job.cache.dir if job.cache is not None else None, "replicate")
        urls = []
        for ref in request.references:
            with self._upload_lock(ref.sha256):
                url = book.url(ref.sha256)
                if url is None:
                    doing = f"uploading the reference {ref.label!r}"
                    with self._mapped(request.model, doing):
                        made = self._client.files.create(
                            io.BytesIO(ref.jpeg), filename=f"{ref.sha256[:16]}.jpg",
                            content_type="image/jpeg")
                    url = (made.urls or {}).get("get")
                    if not isinstance(url, str) or not url:
                        raise self._not_as_documented("the field 'urls.get' (missing)",
                                                      request.model, doing)
                    book.note(ref.sha256, url, getattr(made, "expires_at", None))
            urls.append(url)
        return urls

    def _upload_lock(self, sha256: str) -> threading.Lock:
        """One lock per content: two pages needing the same sheet at once upload it once."""
        with self._uploads_guard:
            return self._upload_locks.setdefault(sha256, threading.Lock())

    def _resume(self, job: Job, request: ImageRequest) -> Any:
        """The prediction an interrupted run created for this same request, if it can still
        give its output (running or succeeded); None otherwise (and the note is dropped).

        Raises:
            TransientServiceError: Replicate could not be asked (the hub retries; creating a
                second prediction meanwhile would pay twice).
        """
        pid = job.resumable()
        if pid is None:
            return None
        try:
            with self._mapped(request.model, f"resuming prediction {pid}"):
                prediction = self._client.predictions.get(pid)
        except PermanentServiceError:  # gone (404) or refused: start afresh
            prediction = None
        if prediction is None or prediction.status in ("failed", "canceled"):
            job.ended()
            return None
        return prediction

    def _first_poll_at(self, model: str, created_at: float | None) -> float:
        """When to poll a prediction first (monotonic): when the fastest recent run of
        ``model`` would have finished, counted from its create; at once when none was seen yet
        or the prediction was resumed (its start is not known)."""
        with self._runs_lock:
            runs = self._runs.get(model)
            fastest = min(runs) if runs else None
        if created_at is None or fastest is None:
            return 0.0
        return created_at + fastest

    def _ran(self, model: str, prediction: Any, seen_s: float) -> None:
        """Note how long a succeeded prediction of ``model`` ran: Replicate's
        ``completed_at - created_at`` (:func:`run_seconds`), or ``seen_s`` (create to the poll
        that saw it done) when those are missing or unreadable."""
        seconds = run_seconds(prediction)
        if seconds is None or seconds > seen_s:  # another clock than the create's round trip
            seconds = seen_s
        with self._runs_lock:
            self._runs.setdefault(model, collections.deque(maxlen=RECENT_RUNS)).append(seconds)

    def _wait(self, prediction: Any, deadline: float, request: ImageRequest, job: Job,
              created_at: float | None = None) -> None:
        """Poll until the prediction is terminal; cancel it (and end its ``job`` note) and raise
        when the deadline passes. ``created_at``: when this call created it (None: resumed).

        A failed poll (429/5xx/dropped connection) is retried until the deadline rather than
        raised: raising would make the caller create, and pay for, a second prediction.
        """
        next_poll = max(self._first_poll_at(request.model, created_at),
                        time.monotonic() + self.poll_interval_s)
        while prediction.status not in TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel(prediction)
                job.ended()
                raise TransientServiceError(
                    f"Replicate prediction {prediction.id} ({request.model}) was still "
                    f"{prediction.status!r} after {request.timeout_s:g} s; canceled it. Fix: "
                    "retry later or raise generation.timeoutS.",
                    service="image", backend="replicate")
            time.sleep(max(0.0, min(next_poll, deadline) - time.monotonic()))
            next_poll = time.monotonic() + self.poll_interval_s
            try:
                with self._mapped(request.model, f"polling prediction {prediction.id}"):
                    prediction.reload()
            except TransientServiceError as exc:
                pause = exc.retry_after_s or self.poll_interval_s
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        if created_at is not None and prediction.status == "succeeded":
            self._ran(request.model, prediction, time.monotonic() - created_at)

    def _cancel(self, prediction: Any) -> None:
        try:
            prediction.cancel()
        except Exception:  # noqa: BLE001 - best effort: the timeout error is what matters
            pass

    def _result(self, prediction: Any, request: ImageRequest) -> ImageResult:
        pid = prediction.id
        if prediction.status == "failed":
            raise PermanentServiceError(
                f"Replicate prediction {pid} ({request.model}) failed: "
                f"{self._clean(prediction.error or 'no error message')}. Fix: check the "
                "prompt (content filters) and generation.params against the model's schema.",
                service="image", backend="replicate")
        if prediction.status == "canceled":
            raise PermanentServiceError(
                f"Replicate prediction {pid} ({request.model}) was canceled before it finished "
                "(output None). Fix: run again; check whether someone canceled it on "
                "replicate.com.", service="image", backend="replicate")
        output = prediction.output
        urls = [output] if isinstance(output, str) else output
        if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
            raise PermanentServiceError(
                f"Replicate prediction {pid} ({request.model}) succeeded without an image URL "
                f"(output {str(output)[:120]!r}). Fix: use an image model or check its params.",
                service="image", backend="replicate")
        data = self._download(urls[0], request)
        try:
            jpeg, width_px, height_px = to_jpeg(data, source=f"Replicate {request.model}")
        except ServiceError as exc:
            exc.backend = exc.backend or "replicate"
            raise
        return ImageResult(jpeg=jpeg, width_px=width_px, height_px=height_px,
                           images_billed=len(urls), references_used=len(request.references))

    def _download(self, url: str, request: ImageRequest) -> bytes:
        """Return the bytes behind an output URL (``data:`` or ``http(s):``)."""
        if url.startswith("data:"):
            return decode_data_url(url)
        if not url.startswith(("http://", "https://")):
            raise PermanentServiceError(
                f"Replicate returned an output that is not a URL: {url[:120]!r}.",
                service="image", backend="replicate")
        # Output files (replicate.delivery) need no key: send it only to the API's own origin.
        headers = ({"Authorization": f"Bearer {self._token}"}
                   if _origin(url) == self._api_origin else {})
        with self._mapped(request.model, f"downloading {url}"):
            response = self._http.get(url, headers=headers,
                                      timeout=max(1.0, request.timeout_s))
            response.raise_for_status()
            return response.content

    # -- error mapping -------------------------------------------------------------------------

    def _remember_response(self, response: Any) -> None:
        # ReplicateError keeps no headers; keep the last response's per thread for Retry-After,
        # and which endpoint answered (named when the SDK cannot read the answer).
        self._local.status = response.status_code
        self._local.headers = response.headers
        request = response.request
        self._local.endpoint = f"{request.method} {request.url.path}"

    def _clean(self, text: str) -> str:
        """Never let the token into a message."""
        return text.replace(self._token, "r8_***") if self._token else text

    def _mapped(self, model: str, doing: str) -> "_ErrorMapper":
        return _ErrorMapper(self, model, doing)

    def _convert(self, exc: BaseException, model: str, doing: str) -> ServiceError | None:
        httpx = self._httpx
        replicate_error = self._replicate.exceptions.ReplicateError
        if isinstance(exc, replicate_error):
            status = exc.status
            detail = exc.detail or exc.title or "no detail"
            headers = getattr(self._local, "headers", None)
            same = getattr(self._local, "status", None) == status
            retry_after = parse_retry_after(headers.get("retry-after")) if same and headers \
                else None
        elif isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            detail = exc.response.reason_phrase or "no detail"
            retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        elif isinstance(exc, httpx.TimeoutException):
            return TransientServiceError(
                f"Replicate timed out while {doing} ({model}): {type(exc).__name__}. "
                "Fix: retry; raise generation.timeoutS if it keeps happening.",
                service="image", backend="replicate")
        elif isinstance(exc, httpx.TransportError):
            return TransientServiceError(
                f"connection to Replicate failed while {doing} ({model}): "
                f"{type(exc).__name__}: {self._clean(str(exc)) or 'connection dropped'}. "
                "Fix: check the network (and generation.baseUrl / REPLICATE_BASE_URL); retry.",
                service="image", backend="replicate")
        elif isinstance(exc, (ValueError, TypeError, AttributeError, KeyError)):
            # the SDK could not read a 2xx answer (errors answer ReplicateError, above): a field
            # missing or mistyped (pydantic's ValidationError is a ValueError), a body that is
            # not JSON, JSON of another shape. The same request gets the same answer: permanent.
            headers = getattr(self._local, "headers", None)
            return self._not_as_documented(
                answer_problem(exc, headers.get("content-type") if headers is not None
                               else None), model, doing)
        else:
            return None
        detail = self._clean(str(detail))
        if status in (401, 403):
            return AuthError(
                f"Replicate rejected {TOKEN_ENV} (HTTP {status}: {detail}) while {doing}. "
                f"Fix: set {TOKEN_ENV} to a valid token from replicate.com/account/api-tokens, "
                "or set generation.backend: \"storyboard\" to draw offline drafts.",
                service="image", backend="replicate", status_code=status)
        if status is not None and (status in _TRANSIENT_STATUS or status >= 500):
            return TransientServiceError(
                f"Replicate answered HTTP {status} while {doing} ({model}): {detail}. "
                "Fix: retry later.", service="image", backend="replicate",
                status_code=status, retry_after_s=retry_after)
        return PermanentServiceError(
            f"Replicate answered HTTP {status} while {doing} ({model}): {detail}. Fix: check "
            "generation.model and generation.params against the model's API schema.",
            service="image", backend="replicate", status_code=status)

    def _not_as_documented(self, problem: str, model: str, doing: str) -> PermanentServiceError:
        """The error of an answer that is not what Replicate's API documents (``problem``: the
        field, or the body's content type, :func:`cloops.services.wire.answer_problem`): names
        the endpoint that answered last in this thread and the fix
        (:func:`cloops.services.wire.not_as_documented_fix`)."""
        endpoint = getattr(self._local, "endpoint", None) or "the API"
        api_root = self.base_url or os.environ.get(BASE_URL_ENV) or None
        fix = not_as_documented_fix("Replicate's API", base_url=api_root,
                                    source=self.base_url_source, official_hosts=API_HOSTS,
                                    package="replicate")
        return PermanentServiceError(
            f"Replicate's answer to {endpoint} while {doing} ({model}) is not what its API "
            f"documents: {self._clean(problem)}. Fix: {fix}",
            service="image", backend="replicate", status_code=getattr(self._local, "status", None))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()


class _ErrorMapper:
    """``with`` block that converts SDK/httpx exceptions into :mod:`cloops.core.errors`."""

    def __init__(self, backend: ReplicateBackend, model: str, doing: str):
        self.backend, self.model, self.doing = backend, model, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, ServiceError):
            return False
        converted = self.backend._convert(exc, self.model, self.doing)
        if converted is None:
            return False
        raise converted from exc


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def create_backend(section: Any, env: Mapping[str, str]) -> ReplicateBackend:
    """Registry factory: build from ``generation`` (:class:`cloops.data.config.GenerationConfig`).

    ``base_url``: ``generation.baseUrl``, else ``REPLICATE_BASE_URL``, else the SDK default;
    ``REPLICATE_POLL_INTERVAL`` and ``CLOOPS_REPLICATE_PREFER_WAIT_S`` (see the module doc).

    Raises:
        AuthError: ``REPLICATE_API_TOKEN`` is not set.
    """
    interval = env.get(POLL_INTERVAL_ENV)
    return ReplicateBackend(
        env.get(TOKEN_ENV), base_url=section.base_url or env.get(BASE_URL_ENV) or None,
        http_timeout_s=min(60.0, float(section.timeout_s)),
        poll_interval_s=float(interval) if interval else None,
        prefer_wait_s=float(env.get(PREFER_WAIT_ENV) or 0),
        base_url_source="generation.baseUrl" if section.base_url else BASE_URL_ENV)


SPEC = register(BackendSpec(name="replicate", service="image", offline=False,
                            imports=("httpx", "replicate"),
                            key_env=(TOKEN_ENV,), auto_rank=10, factory=create_backend,
                            describe="Replicate"))
