"""The Replicate image backend, driven through the real ``replicate`` SDK against a fake server."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys

import pytest
from PIL import Image

from cloops.data.config import GenerationConfig
from cloops.core.errors import AuthError, PermanentServiceError, TransientServiceError
from cloops.services import registry
from cloops.services.base import ImageBackend, ImageRequest
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
    assert create.headers["prefer"].startswith("wait")
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.body == {"input": {"prompt": PROMPT, "size": "1K", "aspect_ratio": "9:16"}}
    img = decode_jpeg(result.jpeg)
    assert (img.width, img.height) == (result.width_px, result.height_px) == (32, 24)
    assert_colour(img, expected_colour(pid))  # the first of the three outputs
    assert result.images_billed == 3
    assert result.draft is False
    assert not srv.requests_to("/v1/predictions/")  # terminal at once: no polling


def test_prefer_wait_is_bounded_by_the_request_timeout():
    with FakeReplicate() as srv:
        make_backend(srv).generate_image(seedream(timeout_s=7.0))
        make_backend(srv).generate_image(seedream(timeout_s=600.0))
    assert [c.headers["prefer"] for c in srv.creates] == ["wait=7", "wait=60"]


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
