"""The Replicate image backend, driven through the real ``replicate`` SDK against a fake server."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from cloops.data.config import GenerationConfig
from cloops.core.errors import AuthError, PermanentServiceError, TransientServiceError
from cloops.services import registry
from cloops.services.base import ImageBackend, ImageRequest
from cloops.services.cache import ResponseCache, job_journal
from cloops.services.replicate_backend import (ReplicateBackend, create_backend,
                                               parse_retry_after)

try:  # `tests` is a package or a rootdir namespace, depending on how pytest is run
    from tests.fakes.replicate_server import FakeReplicate, problem
except ImportError:  # pragma: no cover
    from fakes.replicate_server import FakeReplicate, problem

TOKEN = "r8_test_token"
PROMPT = "A wooden ark on a stormy sea, comic style"
SEEDREAM_PARAMS = {"size": "1K", "aspect_ratio": "9:16"}
VERSION_ID = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


def make_backend(srv: FakeReplicate, *, base_url: str | None = None,
                 **env: str) -> ReplicateBackend:
    section = GenerationConfig.model_validate(
        {"backend": "replicate", "baseUrl": base_url or srv.base_url, "timeoutS": 5})
    return create_backend(section, {"REPLICATE_API_TOKEN": TOKEN,
                                    "REPLICATE_POLL_INTERVAL": "0.01", **env})


def seedream(**kw) -> ImageRequest:
    args = {"prompt": PROMPT, "model": "bytedance/seedream-4", "params": SEEDREAM_PARAMS,
            "timeout_s": 5.0, **kw}
    return ImageRequest(**args)


def decode_jpeg(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "JPEG"
    return img


def expected_colour(seed: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(seed.encode()).digest()
    return digest[0], digest[1], digest[2]


def assert_colour(img: Image.Image, colour: tuple[int, int, int]) -> None:
    got = img.convert("RGB").getpixel((img.width // 2, img.height // 2))
    assert all(abs(a - b) <= 10 for a, b in zip(got, colour)), (got, colour)


# -- the wire protocol ---------------------------------------------------------------------------

def test_seedream_create_request_and_data_url_list_output():
    with FakeReplicate(output_count=3) as srv:
        result = make_backend(srv).generate_image(seedream())
        [create] = srv.creates
        [pid] = srv.predictions
    assert create.method == "POST"
    assert create.path == "/v1/models/bytedance/seedream-4/predictions"
    assert "prefer" not in create.headers  # the id comes back at once (see the journal tests)
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.body == {"input": {"prompt": PROMPT, "size": "1K", "aspect_ratio": "9:16"}}
    img = decode_jpeg(result.jpeg)
    assert (img.width, img.height) == (result.width_px, result.height_px) == (32, 24)
    assert_colour(img, expected_colour(pid))  # the first of the three outputs
    assert result.images_billed == 3
    assert result.draft is False
    assert len(srv.requests_to(f"/v1/predictions/{pid}", "GET")) == 1  # starting, then polled


def test_prefer_wait_only_when_asked_and_bounded_by_the_request_timeout():
    with FakeReplicate() as srv:
        make_backend(srv).generate_image(seedream(timeout_s=7.0))
        asked = make_backend(srv, CLOOPS_REPLICATE_PREFER_WAIT_S="30")
        asked.generate_image(seedream(timeout_s=7.0))
        asked.generate_image(seedream(timeout_s=600.0))
    assert [c.headers.get("prefer") for c in srv.creates] == [None, "wait=7", "wait=30"]


def test_nano_banana_pro_single_http_url_is_downloaded():
    params = {"aspect_ratio": "9:16", "resolution": "1K", "output_format": "jpg"}
    with FakeReplicate(output_urls="http", output_list=False, image_size=(20, 36)) as srv:
        result = make_backend(srv).generate_image(
            ImageRequest(prompt=PROMPT, model="google/nano-banana-pro", params=params,
                         timeout_s=5.0))
        [create] = srv.creates
        [pid] = srv.predictions
        files = srv.requests_to("/files/", "GET")
    assert create.path == "/v1/models/google/nano-banana-pro/predictions"
    assert create.body["input"] == {"prompt": PROMPT, **params}
    assert [f.path for f in files] == [f"/files/{pid}.png"]
    img = decode_jpeg(result.jpeg)
    assert img.size == (20, 36)
    assert_colour(img, expected_colour(pid))
    assert result.images_billed == 1


def test_starting_prediction_is_polled_until_succeeded():
    with FakeReplicate(output_urls="http") as srv:
        srv.enqueue(polls_before_done=3)
        result = make_backend(srv).generate_image(seedream())
        [pid] = srv.predictions
        polls = srv.requests_to(f"/v1/predictions/{pid}", "GET")
    assert len(polls) == 3
    assert all(p.headers["authorization"] == f"Bearer {TOKEN}" for p in polls)
    assert decode_jpeg(result.jpeg).size == (32, 24)


def test_version_id_uses_the_predictions_endpoint():
    with FakeReplicate() as srv:
        result = make_backend(srv).generate_image(
            seedream(model="someone/custom-model:" + VERSION_ID))
        [create] = srv.creates
    assert create.path == "/v1/predictions"
    assert create.body["version"] == VERSION_ID
    assert create.body["input"]["prompt"] == PROMPT
    decode_jpeg(result.jpeg)


def test_base_url_ending_in_v1_is_accepted():
    with FakeReplicate() as srv:
        result = make_backend(srv, base_url=srv.api_url + "/").generate_image(seedream())
        assert srv.creates[0].path == "/v1/models/bytedance/seedream-4/predictions"
    decode_jpeg(result.jpeg)


# -- the job journal: a kill during generation must not pay twice -----------------------------

def generate_in_thread(backend: ReplicateBackend, cache: ResponseCache, key: str,
                       request: ImageRequest) -> tuple[threading.Thread, list]:
    """Run ``generate_image`` in a thread inside ``cache``'s journal of ``key``, as the hub
    does; the result (or the exception) lands in the returned list."""
    out: list = []

    def run() -> None:
        with job_journal(cache, key) as job:
            try:
                out.append(backend.generate_image(request))
                job.ended()  # the hub: once the image is cached
            except Exception as exc:  # noqa: BLE001 - handed to the test
                out.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_prediction_id_is_journaled_while_the_image_is_generated(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with FakeReplicate(latency_s=1.0) as srv:
        thread, out = generate_in_thread(make_backend(srv), cache, "k1", seedream())
        wait_for(lambda: srv.predictions)
        [pid] = srv.predictions
        # the create has answered and the prediction still runs: its id is on disk
        wait_for(lambda: cache.job("k1") is not None, timeout_s=0.5)
        assert cache.job("k1") == pid
        assert srv.in_flight == 1
        thread.join(10)
    assert not isinstance(out[0], Exception), out
    assert cache.job("k1") is None  # ended with the prediction
    assert len(srv.billed) == 1 and srv.billed[0].create_answered


def test_a_journaled_prediction_is_resumed_not_created_again(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with FakeReplicate(latency_s=0.4) as srv:
        # an earlier run created a prediction for this request and was killed while it ran
        make_backend(srv)._client.models.predictions.create(
            model=("bytedance", "seedream-4"),
            input={"prompt": PROMPT, **SEEDREAM_PARAMS})
        [pid] = srv.predictions
        cache.start_job("k1", pid)
        thread, out = generate_in_thread(make_backend(srv), cache, "k1", seedream())
        thread.join(10)
        assert srv.create_count == 1
        assert srv.requests_to(f"/v1/predictions/{pid}", "GET")
    assert_colour(decode_jpeg(out[0].jpeg), expected_colour(pid))
    assert cache.job("k1") is None


def test_a_failed_download_keeps_the_note_and_the_retry_resumes_the_prediction(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    with FakeReplicate(output_urls="http") as srv:
        srv.enqueue(status=503, on="file")
        thread, out = generate_in_thread(make_backend(srv), cache, "k1", seedream())
        thread.join(10)
        assert isinstance(out[0], TransientServiceError)
        [pid] = srv.predictions
        assert cache.job("k1") == pid  # the image was paid for: keep its prediction
        thread, out = generate_in_thread(make_backend(srv), cache, "k1", seedream())
        thread.join(10)
        assert srv.create_count == 1
    assert_colour(decode_jpeg(out[0].jpeg), expected_colour(pid))
    assert cache.job("k1") is None


def test_the_fake_holds_a_prefer_wait_create_and_bills_a_prediction_its_client_left():
    """The fake is honest about sync mode: the create is held open while the prediction runs,
    and a client that goes away meanwhile never learns the id, but the prediction runs on and
    is billed; a second create of the same input is then counted as lost in the create."""
    import httpx
    body = {"input": {"prompt": PROMPT}}
    url = "/v1/models/bytedance/seedream-4/predictions"
    with FakeReplicate(latency_s=0.6) as srv:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=srv.base_url, headers=headers) as http:
            t0 = time.monotonic()
            held = http.post(url, json=body, headers={"Prefer": "wait=5"}).json()
            assert time.monotonic() - t0 >= 0.55 and held["status"] == "succeeded"
            with pytest.raises(httpx.ReadTimeout):  # a client that dies during the hold
                http.post(url, json={"input": {"prompt": "other"}},
                          headers={"Prefer": "wait=5"}, timeout=0.1)
            again = http.post(url, json={"input": {"prompt": "other"}}).json()
            assert again["status"] == "starting"  # no Prefer: wait: answered at once
        time.sleep(0.7)
        billed = srv.billed
        assert [p.status for p in billed] == ["succeeded"] * 3  # the left one ran on
        assert [p.create_answered for p in billed] == [True, False, True]
        twice = srv.paid_twice()
        assert twice["id_known"] == [] and [p.id for p in twice["create_lost"]] == [again["id"]]


# -- terminal failures ---------------------------------------------------------------------------

@pytest.mark.parametrize("polls", [0, 2])
def test_failed_prediction_is_permanent_with_its_error_and_id(polls):
    with FakeReplicate() as srv:
        srv.enqueue(prediction_status="failed", error="NSFW content detected in output",
                    polls_before_done=polls)
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv).generate_image(seedream())
        [pid] = srv.predictions
    assert not isinstance(info.value, TransientServiceError)
    assert "NSFW content detected in output" in str(info.value)
    assert pid in str(info.value)
    assert info.value.backend == "replicate"


def test_canceled_prediction_is_permanent():
    with FakeReplicate() as srv:
        srv.enqueue(prediction_status="canceled", polls_before_done=1)
        with pytest.raises(PermanentServiceError, match="canceled"):
            make_backend(srv).generate_image(seedream())


@pytest.mark.parametrize("output", [None, [], "not a url", ["data:text/plain;base64,aGVsbG8="]])
def test_succeeded_without_an_image_is_permanent(output):
    with FakeReplicate() as srv:
        srv.enqueue(output=output)
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv).generate_image(seedream())
    assert not isinstance(info.value, (TransientServiceError, AuthError))


def test_timeout_cancels_the_prediction_and_is_transient():
    with FakeReplicate() as srv:
        srv.enqueue(polls_before_done=10_000)
        with pytest.raises(TransientServiceError, match="canceled it") as info:
            make_backend(srv).generate_image(seedream(timeout_s=0.3))
        [pid] = srv.predictions
        assert srv.canceled == [pid]
        assert srv.requests_to(f"/v1/predictions/{pid}/cancel", "POST")
    assert pid in str(info.value)


def test_failed_polls_are_retried_within_the_deadline():
    with FakeReplicate() as srv:
        srv.enqueue(polls_before_done=2)
        srv.enqueue(status=503, on="get")
        srv.enqueue(drop=True, on="get")
        result = make_backend(srv).generate_image(seedream())
        assert srv.create_count == 1  # never a second, paid, prediction
        assert len(srv.requests_to("/v1/predictions/", "GET")) == 4
    decode_jpeg(result.jpeg)


# -- HTTP errors ---------------------------------------------------------------------------------

def test_rejected_token_is_auth_error_without_the_token():
    with FakeReplicate(token="r8_the_right_one") as srv:
        with pytest.raises(AuthError) as info:
            make_backend(srv).generate_image(seedream())
    message = str(info.value)
    assert "REPLICATE_API_TOKEN" in message
    assert TOKEN not in message
    assert info.value.status_code == 401


def test_auth_error_never_echoes_the_token_from_the_api_detail():
    with FakeReplicate() as srv:
        srv.enqueue(status=403, body=problem(403, f"token {TOKEN} may not run this model"))
        with pytest.raises(AuthError) as info:
            make_backend(srv).generate_image(seedream())
    assert TOKEN not in str(info.value)
    assert "may not run this model" in str(info.value)
    assert info.value.status_code == 403


def test_429_is_transient_with_retry_after_and_not_retried_by_the_sdk():
    with FakeReplicate() as srv:
        srv.enqueue(status=429, headers={"Retry-After": "7"})
        with pytest.raises(TransientServiceError) as info:
            make_backend(srv).generate_image(seedream())
        assert srv.create_count == 1
    assert info.value.status_code == 429
    assert info.value.retry_after_s == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_transient(status):
    with FakeReplicate() as srv:
        srv.enqueue(status=status)
        with pytest.raises(TransientServiceError) as info:
            make_backend(srv).generate_image(seedream())
    assert info.value.status_code == status
    assert info.value.retry_after_s is None


def test_dropped_connection_is_transient():
    with FakeReplicate() as srv:
        srv.enqueue(drop=True)
        with pytest.raises(TransientServiceError, match="connection"):
            make_backend(srv).generate_image(seedream())
        assert srv.create_count == 1


def test_connection_refused_is_transient():
    with FakeReplicate() as srv:
        backend = make_backend(srv)
    with pytest.raises(TransientServiceError):
        backend.generate_image(seedream())


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_permanent_with_the_api_detail(status):
    with FakeReplicate() as srv:
        srv.enqueue(status=status,
                    body=problem(status, "- input.size: size must be one of 1K, 2K, 4K"))
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv).generate_image(seedream())
    assert type(info.value) is PermanentServiceError
    assert "size must be one of" in str(info.value)
    assert info.value.status_code == status


def test_expired_output_url_is_permanent():
    with FakeReplicate(output_urls="http") as srv:
        srv.enqueue(status=404, body={"detail": "gone"}, on="file")
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv).generate_image(seedream())
    assert info.value.status_code == 404


# -- construction and registration ---------------------------------------------------------------

def test_missing_token_is_auth_error_at_construction():
    section = GenerationConfig.model_validate({"backend": "replicate"})
    with pytest.raises(AuthError) as info:
        create_backend(section, {})
    assert "REPLICATE_API_TOKEN" in str(info.value)
    assert "storyboard" in str(info.value)


def test_registered_and_picked_by_auto_when_the_token_is_set():
    spec = registry.backends("image")["replicate"]
    assert (spec.offline, spec.key_env, spec.auto_rank) == (False, ("REPLICATE_API_TOKEN",), 10)
    assert spec.factory is create_backend
    assert registry.resolve("image", "auto", {"REPLICATE_API_TOKEN": TOKEN,
                                              "COMFYUI_URL": "http://x"}).spec.name == "replicate"
    backend = spec.factory(GenerationConfig(), {"REPLICATE_API_TOKEN": TOKEN})
    assert isinstance(backend, ImageBackend)
    assert (backend.name, backend.offline, backend.uses_annotations) == ("replicate", False, False)


def test_module_import_does_not_import_the_sdk():
    code = ("import sys, cloops.services.replicate_backend, cloops.services.comfyui_backend; "
            "print(sorted(m for m in ('replicate', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("value, expected", [("7", 7.0), ("0.5", 0.5), (None, None),
                                             ("soon", None)])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


def test_the_first_poll_waits_for_the_models_fastest_recent_run():
    """Polling a prediction that cannot be done yet only costs requests: once a run of the
    model was seen, the next prediction is first polled when that run would have ended."""
    with FakeReplicate(latency_s=0.4) as srv:
        backend = make_backend(srv)
        backend.generate_image(seedream(prompt="first"))
        backend.generate_image(seedream(prompt="second"))
        first, second = srv.creates
        polls = [[r for r in srv.requests_to(f"/v1/predictions/{p}", "GET")]
                 for p in srv.predictions]
    assert len(polls[0]) >= 10  # nothing known: every 0.01 s from the create on
    assert polls[1][0].at - second.at >= 0.4 * 0.95
    assert len(polls[1]) <= 3  # at the run's length, and seldom more than once after


def test_a_slow_first_run_does_not_delay_the_polls_of_the_fast_ones_after_it():
    """A run is timed by Replicate's completed_at - created_at, not by the poll that saw it:
    after a cold first run (0.6 s), a 0.1 s run that was first polled late (at 0.6 s) still
    times the next prediction's first poll at 0.1 s."""
    with FakeReplicate(latency_s=0.6) as srv:
        backend = make_backend(srv)
        backend.generate_image(seedream(prompt="cold"))
        srv.latency_s = 0.1
        backend.generate_image(seedream(prompt="warm, polled late"))
        backend.generate_image(seedream(prompt="warm"))
        polls = [[r for r in srv.requests_to(f"/v1/predictions/{p}", "GET")]
                 for p in srv.predictions]
        creates = srv.creates
        seen = [srv.predictions[p].json(srv.base_url) for p in srv.predictions]
    assert polls[1][0].at - creates[1].at >= 0.6 * 0.95  # timed by the cold run
    assert 0.1 * 0.95 <= polls[2][0].at - creates[2].at < 0.3  # timed by the warm one's own length
    assert 0.09 <= seen[1]["metrics"]["predict_time"] < 0.2  # the fake reports its real run


# -- answers not as Replicate documents them (issue 24, item 4) ----------------------------------

def _sheet_ref():
    from cloops.services.base import Reference
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="JPEG")
    return Reference(label="Noah's reference sheet", jpeg=out.getvalue())


def test_an_upload_answer_without_etag_fails_at_once_naming_endpoint_field_and_server():
    # the SDK's File model requires etag: its pydantic raised "field required", which used to
    # be retried as an unreadable answer
    with FakeReplicate() as srv:
        srv.omit = {"upload": ("etag",)}
        section = GenerationConfig.model_validate({"backend": "replicate", "timeoutS": 5})
        backend = create_backend(section, {"REPLICATE_API_TOKEN": TOKEN,
                                           "REPLICATE_BASE_URL": srv.base_url})
        with pytest.raises(PermanentServiceError) as info:
            backend.generate_image(seedream(references=(_sheet_ref(),)))
        uploads = srv.requests_to("/v1/files", "POST")
    assert not isinstance(info.value, TransientServiceError)
    assert len(uploads) == 1 and srv.creates == []
    message = str(info.value)
    assert "POST /v1/files" in message and "'etag' (field required)" in message
    assert "uploading the reference \"Noah's reference sheet\"" in message
    assert f"the server at REPLICATE_BASE_URL ({srv.base_url}) does not speak Replicate's API" \
        in message
    assert TOKEN not in message


def test_a_prediction_without_status_fails_at_once_naming_the_endpoint_and_field():
    with FakeReplicate() as srv:
        srv.omit = {"create": ("status",)}
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv).generate_image(seedream())
        assert srv.create_count == 1
    message = str(info.value)
    assert "POST /v1/models/bytedance/seedream-4/predictions" in message
    assert "'status' (field required)" in message
    assert "the server at generation.baseUrl" in message  # where this base URL came from


def test_a_poll_answer_with_a_mistyped_field_and_a_body_that_is_not_json_are_permanent():
    with FakeReplicate() as srv:
        srv.enqueue(status=200, body={"id": "x", "status": "done"}, on="get")
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv).generate_image(seedream())
        [pid] = srv.predictions
        assert f"GET /v1/predictions/{pid}" in str(info.value)
        assert "'status'" in str(info.value)
        srv.enqueue(status=201, body=b"<html>a proxy's page</html>")
        with pytest.raises(PermanentServiceError) as info:
            make_backend(srv).generate_image(seedream())
    assert "its body is not valid JSON" in str(info.value)


def test_answers_from_replicates_own_host_name_the_sdk_not_the_server():
    with FakeReplicate() as srv:
        srv.omit = {"create": ("id",)}
        backend = make_backend(srv)
        backend.base_url = "https://api.replicate.com"  # as if the answer came from Replicate
        with pytest.raises(PermanentServiceError) as info:
            backend.generate_image(seedream())
    assert "does not speak" not in str(info.value)
    assert "pip install -U replicate" in str(info.value)
