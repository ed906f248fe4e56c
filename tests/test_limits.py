"""Per-service limits: never more calls in flight than the limit; starts spaced by the rate."""

from __future__ import annotations

import threading
import time

from cloops.run.limits import RateLimiter, ServiceLimiter


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_rate_limiter_spaces_starts_after_the_burst():
    clock = FakeClock()
    rl = RateLimiter(per_minute=600, burst=3, clock=clock.now, sleep=clock.sleep)
    starts = []
    for _ in range(8):
        rl.acquire()
        starts.append(clock.t)
    assert starts[:3] == [0.0, 0.0, 0.0]  # the burst
    gaps = [round(b - a, 6) for a, b in zip(starts[2:], starts[3:])]
    assert all(abs(g - 0.1) < 1e-6 for g in gaps), gaps  # 600/minute = one per 0.1 s
    # never more than burst + rate * elapsed starts in any window
    assert len(starts) <= 3 + 600 / 60 * starts[-1] + 1e-9


def test_rate_limiter_unlimited_never_waits():
    clock = FakeClock()
    rl = RateLimiter(per_minute=None, clock=clock.now, sleep=clock.sleep)
    for _ in range(100):
        assert rl.acquire() == 0.0
    assert clock.slept == []


def test_service_limiter_never_exceeds_concurrency():
    lim = ServiceLimiter(concurrency=3, per_minute=None)
    seen = []
    lock = threading.Lock()
    in_flight = [0]

    def work():
        with lim.slot():
            with lock:
                in_flight[0] += 1
                seen.append(in_flight[0])
            time.sleep(0.02)
            with lock:
                in_flight[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) == 3 and lim.peak == 3
    assert lim.in_flight == 0


def test_service_limiter_releases_the_slot_on_error():
    lim = ServiceLimiter(concurrency=1, per_minute=None)
    for _ in range(3):
        try:
            with lim.slot():
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    with lim.slot():  # would block forever if a slot leaked
        assert lim.in_flight == 1


# ---------------------------------------------------------------- through a real build

def distinct_answers(path, body):
    """The fake's default answer, unique to each request."""
    from tests.fakes.openai_server import distinct_text
    return distinct_text(path, body)


def test_build_keeps_image_calls_within_the_concurrency_limit(tmp_path):
    """5 stories x (3 pages + cover) images against a fake Replicate that counts what is in
    flight: never more than generation.concurrency, though doit runs 24 threads."""
    from conftest import make_project
    from tests.fakes.openai_server import FakeOpenAI
    from tests.fakes.replicate_server import FakeReplicate
    ids = ["noah-s-ark", "david-and-goliath", "jonah-and-the-whale", "baby-moses", "creation"]
    project = make_project(tmp_path, ids)
    project.edit_config(lambda c: c["generation"].update(concurrency=2, requestsPerMinute=None))
    with FakeOpenAI() as oa, FakeReplicate(token="r8_t", latency_s=0.15) as rp:
        oa.responder = distinct_answers  # no two image requests alike: none deduplicated
        run = project.doit(env={"OPENAI_API_KEY": "sk-t", "OPENAI_BASE_URL": oa.base_url,
                                "REPLICATE_API_TOKEN": "r8_t", "REPLICATE_BASE_URL": rp.base_url,
                                "REPLICATE_POLL_INTERVAL": "0.01"})
        assert run.rc == 0, run.out + run.err
        assert len(rp.creates) >= 5
        assert rp.max_in_flight == 2  # the limit was reached and never exceeded


def test_build_spaces_image_calls_by_the_rate_limit(tmp_path):
    from conftest import make_project
    from tests.fakes.openai_server import FakeOpenAI
    from tests.fakes.replicate_server import FakeReplicate
    project = make_project(tmp_path, ["noah-s-ark", "david-and-goliath"])
    # 120 per minute = one every 0.5 s after a burst of 1 (burst = concurrency)
    project.edit_config(lambda c: c["generation"].update(concurrency=1, requestsPerMinute=120))
    with FakeOpenAI(responder=distinct_answers) as oa, FakeReplicate(token="r8_t") as rp:
        run = project.doit(env={"OPENAI_API_KEY": "sk-t", "OPENAI_BASE_URL": oa.base_url,
                                "REPLICATE_API_TOKEN": "r8_t", "REPLICATE_BASE_URL": rp.base_url,
                                "REPLICATE_POLL_INTERVAL": "0.01"})
        assert run.rc == 0, run.out + run.err
        starts = sorted(r.at for r in rp.creates)
    assert len(starts) >= 3
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.45, gaps


def test_waiting_callers_are_counted_and_saturation_follows():
    lim = ServiceLimiter(2, None)
    gate = threading.Event()

    def call():
        with lim.slot():
            gate.wait(5)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while lim.waiting < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (lim.in_flight, lim.waiting) == (2, 2)
    assert lim.saturated()
    gate.set()
    for t in threads:
        t.join(5)
    assert (lim.in_flight, lim.waiting) == (0, 0) and not lim.saturated()


def test_service_done_frees_the_slot_before_the_call_returns():
    """A Replicate prediction stops counting once terminal: the next one may start while the
    first call is still downloading its output."""
    from cloops.services.base import service_done
    lim = ServiceLimiter(1, None)
    downloading = threading.Event()
    second_started = threading.Event()
    finish = threading.Event()

    def first():
        with lim.slot():
            service_done()
            service_done()  # idempotent
            downloading.set()
            finish.wait(5)

    def second():
        downloading.wait(5)
        with lim.slot():
            second_started.set()

    t1, t2 = threading.Thread(target=first), threading.Thread(target=second)
    t1.start()
    t2.start()
    assert second_started.wait(5), "the slot was not freed by service_done()"
    finish.set()
    t1.join(5)
    t2.join(5)
    assert lim.in_flight == 0 and lim.peak == 1
    service_done()  # outside a slot: nothing happens


def test_a_freed_slot_goes_to_the_waiting_call_with_the_best_priority():
    """With the service at its limit, the call leading soonest to a finished story goes first
    (cloops.run.dispatch's order), not whichever thread the OS wakes."""
    lim = ServiceLimiter(1, None)
    order: list[str] = []
    hold = threading.Event()

    def first():
        with lim.slot((0, 0, 0)):
            hold.wait(5)

    def call(name, priority):
        with lim.slot(priority):
            order.append(name)

    t0 = threading.Thread(target=first)
    t0.start()
    while lim.in_flight < 1:
        time.sleep(0.005)
    waiters = [threading.Thread(target=call, args=a) for a in
               (("story 3 narrative", (3, 0, 0)), ("story 1 image", (1, -3, 2)),
                ("story 1 prompt", (1, -2, 4)), ("story 2 narrative", (2, 0, 0)))]
    for t in waiters:
        t.start()
        time.sleep(0.02)  # queued in this order
    while lim.waiting < 4:
        time.sleep(0.005)
    hold.set()
    for t in (t0, *waiters):
        t.join(5)
    assert order == ["story 1 image", "story 1 prompt", "story 2 narrative", "story 3 narrative"]
    assert lim.peak == 1 and lim.in_flight == 0


def test_a_backends_preparation_runs_outside_the_slot_and_inside_the_retries(tmp_path):
    """Uploading reference images is not what a provider's concurrency limit is about: the
    hub runs ``prepare_image`` before taking the slot (a slot held through uploads sits idle),
    retries it like the call, and skips both for a cache hit."""
    from conftest import make_project
    from cloops.core.errors import TransientServiceError
    from cloops.data.project import load_project
    from cloops.run.hub import CallMeta, ServiceHub
    from cloops.services.base import ImageRequest, ImageResult

    project = make_project(tmp_path, ["noah-s-ark"])
    project.edit_config(lambda c: c["generation"].update(concurrency=1, requestsPerMinute=None))
    hub = ServiceHub(load_project(project.root), sleep=lambda s: None)
    seen: list[tuple[str, int]] = []

    class Uploading:
        name, offline, uses_annotations = "replicate", False, False
        failures = 1

        def prepare_image(self, request):
            seen.append(("prepare", hub.limiter("comic-books-standard", "image").in_flight))
            if self.failures:
                self.failures -= 1
                raise TransientServiceError("upload dropped")

        def generate_image(self, request):
            seen.append(("call", hub.limiter("comic-books-standard", "image").in_flight))
            return ImageResult(jpeg=b"\xff\xd8jpeg", width_px=1, height_px=1)

    stub = Uploading()
    hub.backend = lambda template, service: stub
    meta = CallMeta(template="comic-books-standard", story="noah-s-ark", step="image",
                    target="images/1.jpg")
    request = ImageRequest(prompt="a page", model="bytedance/seedream-4", params={})
    assert hub.generate_image(meta, request).jpeg == b"\xff\xd8jpeg"
    assert seen == [("prepare", 0), ("prepare", 0), ("call", 1)]
    hub.generate_image(meta, request)  # the response cache answers: nothing runs
    assert seen == [("prepare", 0), ("prepare", 0), ("call", 1)]
