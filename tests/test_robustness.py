"""Robustness of whole builds through the real ``openai`` and ``replicate`` SDKs.

Every test runs real ``python -m doit`` processes against the loopback fakes (keys set, so
``auto`` picks the real backends): transient faults are retried and the build completes;
permanent faults fail their story only, at once and with a clear message; a build killed at any
moment and run again pays for nothing twice; reverting costs nothing; the ledger and
``doit report`` agree with what the servers answered; no key is ever written or printed.

"Paid calls" are what the fakes answered: ``POST /v1/responses`` answered 200 and Replicate
prediction creates answered 201. A request that was in flight when its client died and never got
an answer is not billed.
"""

from __future__ import annotations

import io
import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import Project, Run, make_project
from tests.fakes.gate import Gate
from tests.fakes.openai_server import FakeOpenAI, distinct_text, error_body
from tests.fakes.replicate_server import FakeReplicate, problem

OPENAI_KEY = "sk-robust-SECRET-0123456789abcdef"
REPLICATE_TOKEN = "r8_robust_SECRET_0123456789"
SECRETS = (OPENAI_KEY, REPLICATE_TOKEN, "SECRET-0123456789", "SECRET_0123456789")
STD = "comic-books-standard"
STORIES = ("noah-s-ark", "david-and-goliath")
PRICE_IN, PRICE_OUT, PRICE_IMAGE = 1.25, 10.0, 0.03  # the template's price table, per 1M / image


# ---------------------------------------------------------------- helpers

def std_project(root: Path) -> Project:
    """The two stories in ``comic-books-standard`` alone (other templates would add their own
    calls to every count), with fast retries."""
    root.mkdir(parents=True, exist_ok=True)
    proj = make_project(root, list(STORIES), only=True)
    proj.edit_config(lambda c: c.update(retry={"baseS": 0.01, "capS": 0.05}))
    return proj


@pytest.fixture
def proj(tmp_path) -> Project:
    return std_project(tmp_path / "p")


def env_for(oa: FakeOpenAI, rp: FakeReplicate, **extra: str) -> dict:
    return {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": oa.base_url,
            "REPLICATE_API_TOKEN": REPLICATE_TOKEN, "REPLICATE_BASE_URL": rp.base_url,
            "REPLICATE_POLL_INTERVAL": "0.01", **extra}


def fakes(gate: Gate | None = None) -> tuple[FakeOpenAI, FakeReplicate]:
    return FakeOpenAI(gate=gate), FakeReplicate(token=REPLICATE_TOKEN, gate=gate,
                                                colour_by="input")


def llm_requests(oa: FakeOpenAI) -> list:
    return [r for r in oa.requests if r.path == "/v1/responses"]


def paid_requests(oa: FakeOpenAI, rp: FakeReplicate) -> list[str]:
    """What the fakes answered and would bill, as sorted request fingerprints (a reference
    image by the digest of what was uploaded: upload URLs differ from run to run)."""
    out = [json.dumps(r.body, sort_keys=True) for r in oa.answered
           if r.path == "/v1/responses" and r.status == 200]
    for r in rp.creates:
        if r.status is not None and r.status < 400:
            body = json.loads(json.dumps(r.body))
            refs = body.get("input", {}).get("image_input")
            if refs:
                body["input"]["image_input"] = [
                    hashlib.sha256(rp.upload_url_bytes(u) or b"").hexdigest() for u in refs]
            out.append(json.dumps(body, sort_keys=True))
    return sorted(out)


def user_text(body: dict) -> str:
    return body["input"][1]["content"]


def fmt_name(body: dict) -> str | None:
    return ((body.get("text") or {}).get("format") or {}).get("name")


TITLES = {"noah-s-ark": "Noah's Ark", "david-and-goliath": "David and Goliath"}
FORMATS = {"narrative": None, "pages": "planning", "thumbnail-prompt": "thumbnail"}


def call_of(story: str, step: str):
    """A ``when`` predicate: the request of ``step`` (narrative, pages, thumbnail-prompt) of
    ``story`` (tasks run in parallel threads: faults are aimed at one call)."""
    fmt, title = FORMATS[step], TITLES[story]
    return lambda r: fmt_name(r.body) == fmt and f"Title: {title}" in user_text(r.body)


NOAH = call_of("noah-s-ark", "narrative")


def statuses(proj: Project) -> dict[str, dict]:
    return {it["id"]: it for it in proj.backlog()["items"]}


def ran_tasks(run: Run) -> set[tuple[str, str]]:
    """The tasks a run reported as done: ``{(template/story, step)}``."""
    return {(m[1], m[2]) for m in re.finditer(r"^✓ (\S+)\s+(.+?)\s+\(", run.out, re.M)}


def paid_rows(run: Run, service: str) -> list[dict]:
    return [c for c in run.calls if c["service"] == service and not c["cache_hit"]]


def assert_ledger_matches_servers(calls: list[dict], oa: FakeOpenAI, rp: FakeReplicate) -> None:
    """Every request the fakes received is an attempt of a ledger row (no hidden SDK retry)."""
    llm = sum(c["attempts"] for c in calls if c["service"] == "llm" and not c["cache_hit"])
    img = sum(c["attempts"] for c in calls if c["service"] == "image" and not c["cache_hit"])
    assert llm == len(llm_requests(oa)), "LLM requests received != attempts in the ledger"
    assert img == len(rp.creates), "prediction creates received != attempts in the ledger"


def assert_story_built(proj: Project, story: str) -> None:
    """Completed, and its bundle holds exactly its pages, the thumbnail and story-data.json."""
    assert statuses(proj)[story]["status"] == "completed", statuses(proj)[story]
    sdir = proj.story_dir(story)
    data = json.loads((sdir / "story-data.json").read_text())
    n = data["totalPages"]
    assert n == len(data["pages"]) >= 1
    bundle = sdir / "bundle"
    assert {p.name for p in bundle.iterdir()} == \
        {f"{i}.jpg" for i in range(1, n + 1)} | {"thumbnail.jpg", "story-data.json"}
    assert json.loads((bundle / "story-data.json").read_text()) == data
    for p in bundle.glob("*.jpg"):
        assert Image.open(io.BytesIO(p.read_bytes())).format == "JPEG"


def assert_targets_valid(proj: Project, *, no_temp: bool = True) -> None:
    """Every file under build/ is whole: JSON parses, JPEGs decode; no temp files are left in
    the story folders (targets and their bookkeeping)."""
    for path in (proj.root / "build").rglob("*"):
        name = path.name
        if no_temp and STD in path.parts:
            assert not (name.endswith((".tmp", ".old")) or ".tmp." in name), \
                f"temp file left: {path}"
        if not path.is_file():
            continue
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jpg":
            img = Image.open(io.BytesIO(path.read_bytes()))
            img.load()
            assert img.format == "JPEG", path
        elif path.suffix in (".md", ".txt"):
            assert path.read_text(encoding="utf-8").strip(), f"empty target {path}"


def assert_no_secrets(proj: Project, runs: list[Run]) -> None:
    """No key in build/ (targets, ledger, cache, doit state), the backlogs or any output."""
    for path in list((proj.root / "build").rglob("*")) + list((proj.root / "backlogs").rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for s in SECRETS:
                assert s.encode() not in data, f"{s!r} found in {path}"
    for run in runs:
        for s in SECRETS:
            assert s not in run.out and s not in run.err, f"{s!r} printed by a run"


def story_files(proj: Project) -> dict[str, bytes]:
    """The text and JSON files of both stories (not the .cloops bookkeeping; images differ by
    the order their predictions were created in)."""
    base = proj.root / "build" / STD
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and ".cloops" not in p.parts and p.suffix != ".jpg"}


# ---------------------------------------------------------------- 1. transient faults

LLM_FAULTS = [
    # (fault, story, step, the replies before success, min seconds between the first two tries)
    ("429 retry-after-ms", "noah-s-ark", "narrative",
     [dict(status=429, headers={"retry-after-ms": "400"})], 0.4),
    ("429 Retry-After", "david-and-goliath", "narrative",
     [dict(status=429, headers={"Retry-After": "1"})], 1.0),
    ("500", "noah-s-ark", "pages", [dict(status=500)], 0),
    ("503 twice", "david-and-goliath", "pages", [dict(status=503), dict(status=503)], 0),
    ("dropped connection", "noah-s-ark", "thumbnail-prompt", [dict(drop=True)], 0),
    ("slower than llm.timeoutS", "david-and-goliath", "thumbnail-prompt",
     [dict(delay_s=2.5)], 1.0),
]


def _check_llm_faults(run: Run, oa: FakeOpenAI, rp: FakeReplicate) -> None:
    rows = paid_rows(run, "llm")
    by_call = {(c["story"], c["step"]): c for c in rows if c["step"] in FORMATS}
    for fault, story, step, replies, min_gap_s in LLM_FAULTS:
        tries = [r for r in llm_requests(oa) if call_of(story, step)(r)]
        assert len(tries) == len(replies) + 1, f"{fault}: {len(tries)} requests"
        assert by_call[(story, step)]["attempts"] == len(replies) + 1, f"{fault}: ledger"
        if min_gap_s:
            assert tries[1].at - tries[0].at >= min_gap_s * 0.95, f"{fault}: waited too little"
    faulted = {(story, step) for _, story, step, _, _ in LLM_FAULTS}
    assert all(c["attempts"] == 1 for c in rows if (c["story"], c["step"]) not in faulted)


def _check_replicate_faults(run: Run, oa: FakeOpenAI, rp: FakeReplicate) -> None:
    rows = paid_rows(run, "image")
    assert sorted(r.status for r in rp.creates if r.status != 201) == [429, 500]
    assert sum(c["attempts"] - 1 for c in rows) == 2  # both retried, on the call they hit
    # every create answers "starting" at once; the one scripted to run longer is polled on
    polled = sorted(rp.predictions.values(), key=lambda p: p.polls)
    assert polled[-1].polls >= 3, "the long prediction was not polled until it ended"
    assert [p.polls for p in polled[:-1]] == [1] * (len(polled) - 1)
    assert all(p.status == "succeeded" for p in polled)


def _llm_faults(proj, oa, rp):
    proj.edit_config(lambda c: (c.update(retry={"baseS": 0.01, "capS": 5}),
                                c["llm"].update(timeoutS=1)))
    for _, story, step, replies, _ in LLM_FAULTS:
        for kw in replies:
            oa.enqueue(when=call_of(story, step), **kw)


def _replicate_faults(proj, oa, rp):
    # the SDK never retries a create (a POST): the hub must
    rp.enqueue(429, headers={"Retry-After": "0"}, on="create")
    rp.enqueue(500, on="create")
    rp.enqueue(polls_before_done=3, on="create")  # "starting", then succeeded after polls


TRANSIENT = {"openai": ("llm", _llm_faults, _check_llm_faults),
             "replicate": ("image", _replicate_faults, _check_replicate_faults)}


@pytest.mark.parametrize("case", list(TRANSIENT))
def test_transient_faults_are_retried_and_the_build_completes(proj, case):
    service, setup, check = TRANSIENT[case]
    oa, rp = fakes()
    with oa, rp:
        setup(proj, oa, rp)
        run = proj.doit(env=env_for(oa, rp))
        assert run.rc == 0, run.out + run.err
        for story in STORIES:
            assert_story_built(proj, story)
        assert all(c["error"] is None for c in run.calls)
        assert_ledger_matches_servers(run.calls, oa, rp)
        check(run, oa, rp)
    assert_no_secrets(proj, [run])


# ---------------------------------------------------------------- 2. permanent faults

def _schema_violations(proj, oa, rp):
    for _ in range(3):  # 1 + llm.schemaRetries (default 2): the same invalid answer each time
        oa.enqueue(text='{"title": "Noah"}', when=call_of("noah-s-ark", "pages"),
                   usage={"input_tokens": 1000, "output_tokens": 200, "reasoning_tokens": 50})


PERMANENT = {
    # id: (setup, step, service, words the message must contain)
    "openai-401": (lambda p, oa, rp: oa.enqueue(401, when=NOAH), "narrative", "llm",
                   ["HTTP 401", "OPENAI_API_KEY", "Fix:"]),
    "openai-400": (lambda p, oa, rp: oa.enqueue(400, when=NOAH, body=error_body(
        400, "Invalid value: 'max'. Supported values are: 'low', 'medium' and 'high'.",
        param="reasoning.effort", code="invalid_value")), "narrative", "llm",
        ["HTTP 400", "Supported values are", "Fix:"]),
    "openai-refusal": (lambda p, oa, rp: oa.enqueue(refusal="I'm sorry, I cannot help with that.",
                                                    when=NOAH),
                       "narrative", "llm", ["refused", "I cannot help with that", "Fix:"]),
    "openai-incomplete": (lambda p, oa, rp: oa.enqueue(incomplete="max_output_tokens", when=NOAH),
                          "narrative", "llm",
                          ["incomplete", "max_output_tokens", "Fix:", "llm.reasoning"]),
    "openai-schema-violated-every-attempt": (
        _schema_violations, "pages", "llm",
        ["3 attempt", "Last raw output", '{"title": "Noah"}',
         "3000 input / 600 output tokens", "'coverCast' is a required property"]),
    "replicate-prediction-failed": (lambda p, oa, rp: rp.enqueue(
        prediction_status="failed", error="NSFW content detected", on="create"), "image",
        "image", ["failed", "NSFW content detected", "Fix:"]),
    "replicate-401": (lambda p, oa, rp: rp.enqueue(
        401, body=problem(401, f"Invalid token {REPLICATE_TOKEN}"), on="create"), "image",
        "image", ["HTTP 401", "REPLICATE_API_TOKEN", "Fix:"]),
}


@pytest.mark.parametrize("case", list(PERMANENT))
def test_permanent_fault_fails_its_story_only_without_retry(proj, case):
    setup, step, service, words = PERMANENT[case]
    oa, rp = fakes()
    with oa, rp:
        setup(proj, oa, rp)
        run = proj.doit(env=env_for(oa, rp))
        assert run.rc != 0, run.out
        items = statuses(proj)
        (failed_story,) = [s for s in STORIES if items[s]["status"] == "failed"] or [None]
        assert failed_story, items
        if service == "llm":
            assert failed_story == "noah-s-ark"  # the story the fault was aimed at
        (other,) = set(STORIES) - {failed_story}
        assert_story_built(proj, other)  # the other story completes
        assert f"FAILED {STD}/{failed_story}" in run.out + run.err
        # not retried: one request for the failed call (1 + schemaRetries asks when invalid)
        assert_ledger_matches_servers(run.calls, oa, rp)
        failed = [(c["story"], c["step"], c["attempts"]) for c in run.calls if c["error"]]
        if service == "image":  # the first create made: a sheet, a page image or the cover
            assert len(failed) == 1 and failed[0][1] in ("sheet", "image", "thumbnail"), failed
            step = failed[0][1]
        error = items[failed_story]["error"]
        for w in [f"{STD}/{failed_story}", f"step '{step}'", f"({service} service", *words]:
            assert w in error, f"{w!r} not in the backlog error: {error}"
        runs = [run]
        if case.startswith("openai-schema"):
            asks = [r for r in llm_requests(oa) if call_of("noah-s-ark", "pages")(r)]
            assert len(asks) == 3, f"{len(asks)} requests for the invalid step, not 1 + 2"
            assert all(r.status == 200 for r in asks)
            # invalid answers are not replayed from the cache: the next run asks again
            runs.append(proj.doit("build:noah-s-ark", env=env_for(oa, rp)))
            assert runs[-1].rc == 0, runs[-1].out + runs[-1].err
            assert len([r for r in llm_requests(oa) if call_of("noah-s-ark", "pages")(r)]) == 4
            assert_story_built(proj, "noah-s-ark")
        else:
            assert failed == [(failed_story, step, 1)]
        if service == "llm" and not case.startswith("openai-schema"):
            assert len([r for r in llm_requests(oa) if NOAH(r)]) == 1
    assert_no_secrets(proj, runs)


# ---------------------------------------------------------------- 3. crash safety

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One clean build: its paid requests, the tasks it ran and the files it made."""
    proj = std_project(tmp_path_factory.mktemp("reference"))
    oa, rp = fakes()
    with oa, rp:
        run = proj.doit(env=env_for(oa, rp))
        assert run.rc == 0, run.out + run.err
        paid = paid_requests(oa, rp)
    tasks = ran_tasks(run)
    assert len(tasks) >= 20 and len(paid) >= 10
    return {"paid": paid, "tasks": tasks, "files": story_files(proj)}


def _kill_when_held(st, gate: Gate, sig: int, oa=None, rp=None) -> Run:
    """Signal ``st`` once the calls it has in flight are all held at the gate: every request
    let through was answered, and its answer is in the ledger (written after the cache).
    Tasks run in threads, so this is the moment "the calls in flight die unanswered"."""
    paid_before = len(paid_requests(oa, rp)) if oa is not None else 0
    admitted_before = gate.admitted
    try:
        held = gate.wait_held(60, until=lambda: st.proc.poll() is not None)
        assert held, (f"the run ended before the gate held a request ({gate.admitted} "
                      "requests let through):\n" + st.finish().out)
        deadline = time.monotonic() + 30
        while oa is not None and time.monotonic() < deadline:
            answered = len(paid_requests(oa, rp)) - paid_before
            recorded = sum(not c["cache_hit"] for c in st.project.calls(st.run_id))
            if answered == gate.admitted - admitted_before and recorded >= answered:
                break
            time.sleep(0.01)
        os.kill(st.pid, sig)
        return st.finish(timeout=30)
    finally:
        if st.proc.poll() is None:
            st.proc.kill()
            st.proc.wait()
        gate.release(drop=True)


def test_sigkill_at_ten_moments_then_rerun_pays_nothing_twice(tmp_path, reference):
    proj = std_project(tmp_path / "p")
    total = len(reference["paid"])
    holds = [1 + i * (total - 1) // 9 for i in range(10)]  # the paid call each kill interrupts
    assert len(set(holds)) == 10
    gate = Gate()
    oa, rp = fakes(gate)
    runs = []
    with oa, rp:
        env = env_for(oa, rp)
        for n in holds:
            gate.hold_after(n - 1 - gate.admitted)
            killed = _kill_when_held(proj.start(env=env), gate, signal.SIGKILL, oa, rp)
            assert killed.rc == -signal.SIGKILL
            runs.append(killed)
            assert_targets_valid(proj, no_temp=False)  # whatever exists is whole
        assert gate.dropped >= 10
        final = proj.doit(env=env)
        runs.append(final)
        assert final.rc == 0, final.out + final.err
        assert paid_requests(oa, rp) == reference["paid"], "a paid call was made twice"
    for story in STORIES:
        assert_story_built(proj, story)
    assert_targets_valid(proj)
    assert story_files(proj) == reference["files"]
    assert_no_secrets(proj, runs)


def test_sigterm_stops_and_the_next_run_redoes_nothing_finished(tmp_path, reference):
    proj = std_project(tmp_path / "p")
    gate = Gate()
    oa, rp = fakes(gate)
    with oa, rp:
        env = env_for(oa, rp)
        gate.hold_after(len(reference["paid"]) // 2)
        t0 = time.monotonic()
        stopped = _kill_when_held(proj.start(env=env), gate, signal.SIGTERM, oa, rp)
        # a guard against a hang, not a timing: the held calls never answer, so only the
        # signal ends this run (a shared machine has taken 31 s to get here)
        assert time.monotonic() - t0 < 180
        assert gate.dropped >= 1  # it stopped without waiting for its calls' answers
        assert "Traceback" not in stopped.err and "stopped (signal 15)" in stopped.err, stopped.err
        done = ran_tasks(stopped)
        assert done and done < reference["tasks"], stopped.out + stopped.err
        rerun = proj.doit(env=env)
        assert rerun.rc == 0, rerun.out + rerun.err
        redone = ran_tasks(rerun)
        assert not (redone & done), f"finished before SIGTERM, run again: {redone & done}"
        assert redone | done <= reference["tasks"]
        # what it does not run again is up to date: doit's state of the stopped run was saved
        # (a task saved in the instant of the signal may not have been reported done)
        uptodate = int(re.search(r"(\d+) targets up to date", rerun.out)[1])
        assert len(redone) + uptodate == len(reference["tasks"]), rerun.out
        assert uptodate >= len(done)
        assert paid_requests(oa, rp) == reference["paid"], "a paid call was made twice"
    for story in STORIES:
        assert_story_built(proj, story)
    assert_targets_valid(proj)
    assert_no_secrets(proj, [stopped, rerun])


def test_sigkill_while_polling_a_prediction_pays_once(proj):
    """A prediction still running when the run is killed is resumed by the next run (its id
    was noted in the job journal), not created and paid for again."""
    gate = Gate()
    oa, rp = fakes(gate)
    with oa, rp:
        env = env_for(oa, rp)
        rp.enqueue(polls_before_done=1000, on="create")  # noah's first image: slow
        # let everything through up to that create, then hold its first poll
        gate.hold_after(10_000)
        st = proj.start("build:noah-s-ark", env=env)
        deadline = time.monotonic() + 60
        while not rp.creates and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.hold_after(0)
        # kill "while polling": every request let through was answered, a poll is held, every
        # LLM answer is in the ledger (so cached), and every prediction created is either in
        # the ledger or noted in the job journal (the run notes one as soon as its create
        # answers, before its first poll; a kill before that note loses the id, as a kill
        # during the create call itself would)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answered = len(oa.answered) + len(rp.answered)
            rows = [c for c in st.project.calls(st.run_id) if not c["cache_hit"]]
            images = sum(c["service"] == "image" for c in rows)
            created = [r for r in rp.creates if r.status == 201]
            if gate.held and answered == gate.admitted and \
                    len(rows) - images >= len([r for r in oa.answered if r.status == 200]) and \
                    created and len(journaled_ids(proj)) + images >= len(created):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the run never reached 'polling the noted predictions'")
        os.kill(st.pid, signal.SIGKILL)
        assert st.finish(timeout=30).rc == -signal.SIGKILL
        gate.release(drop=True)
        run = proj.doit("build:noah-s-ark", env=env)
        assert run.rc == 0, run.out + run.err
        paid = [json.dumps(r.body, sort_keys=True) for r in rp.creates if r.status == 201]
        assert len(paid) == len(set(paid)), "a prediction was paid for twice"
        assert rp.paid_twice() == {"id_known": [], "create_lost": []}
        slow = max(rp.predictions, key=lambda pid: rp.predictions[pid].polls
                   + rp.predictions[pid].polls_left)  # the one scripted to run long
        assert rp.predictions[slow].status == "succeeded"
        # the killed run's poll was dropped at the gate (never recorded): a recorded poll of
        # that prediction is the re-run resuming it
        assert rp.requests_to(f"/v1/predictions/{slow}", "GET"), "the re-run did not resume it"
        assert not list((proj.root / "build" / ".cloops").rglob("jobs/*.json")), \
            "the job journal is empty once the prediction ended"


# ------------------------------------------------ 3b. kills while the provider is generating

def journaled_ids(proj: Project) -> set[str]:
    """The provider job ids noted in the job journal now (``build/.cloops/cache/jobs``)."""
    ids = set()
    for note in (proj.root / "build" / ".cloops" / "cache" / "jobs").glob("*.json"):
        try:
            ids.add(json.loads(note.read_text())["id"])
        except (OSError, ValueError, KeyError):
            pass  # being replaced right now
    return ids


def kill_during_generation(proj: Project, env: dict, running, moments: list[float]) -> set[str]:
    """Start the build once per moment and SIGKILL it ``moment`` seconds after one of its paid
    jobs is generating: ``running(since)`` lists the provider jobs running now that the run
    started at ``since`` created (their create answered) or polled. Returns every job id that
    was in the journal at the instant of a kill."""
    journaled: set[str] = set()
    for moment in moments:
        st = proj.start(env=env)
        since = time.monotonic()
        try:
            deadline = since + 60
            while not running(since):
                assert st.proc.poll() is None, "the build ended before a job ran:\n" + \
                    st.finish().out
                assert time.monotonic() < deadline, "no job was generating"
                time.sleep(0.005)
            time.sleep(moment)
            journaled |= journaled_ids(proj)
            os.kill(st.pid, signal.SIGKILL)
            assert st.finish(timeout=30).rc == -signal.SIGKILL
        finally:
            if st.proc.poll() is None:
                st.proc.kill()
                st.proc.wait()
    return journaled


def paid_twice_report(billed: list, journaled: set[str]) -> tuple[list, list]:
    """Split the jobs a fake billed again for an input it had billed before into (paid again
    although an earlier job of that input was in the journal when its run was killed, paid
    again after a kill inside the create's own round trip: no earlier job's id was noted)."""
    bad, round_trip = [], []
    earlier: dict[str, list] = {}
    for job in billed:
        before = earlier.setdefault(job.fingerprint, [])
        if before:
            (bad if any(j.id in journaled for j in before) else round_trip).append(job)
        before.append(job)
    return bad, round_trip


MOMENTS = [0.05 * k for k in range(1, 11)]  # seconds after a job started generating


def test_sigkill_at_ten_moments_during_image_generation_pays_no_image_twice(proj):
    """Through the real replicate SDK, against a fake that runs (and bills) a prediction whose
    client went away: ten kills while images are generated, then a build that finishes."""
    # one image at a time, each generating 5 s: ten runs' start-ups (2-3 s on a busy machine)
    # fit in the 8 images' time, so every kill lands while one is generating (created by that
    # run or resumed by it)
    proj.edit_config(lambda c: c["generation"].update(concurrency=1))
    oa = FakeOpenAI(responder=distinct_text)  # no two image prompts alike
    rp = FakeReplicate(token=REPLICATE_TOKEN, latency_s=5.0)
    with oa, rp:
        env = env_for(oa, rp)

        def running(since: float) -> list[str]:
            now = time.monotonic()
            return [p.id for p in rp.billed if not p.terminal and p.done_at > now and (
                (p.request.at >= since and p.create_answered) or any(
                    r.at >= since for r in rp.requests_to(f"/v1/predictions/{p.id}", "GET")))]
        journaled = kill_during_generation(proj, env, running, MOMENTS)
        final = proj.doit(env=env)
        assert final.rc == 0, final.out + final.err
        twice = rp.paid_twice()
        bad, round_trip = paid_twice_report(rp.billed, journaled)
        assert not bad, f"paid twice although their id was journaled: {[p.id for p in bad]}"
        # the one way left to pay twice: a kill inside the create's own round trip (the first
        # moments come 50 ms after the create answered: on a loaded machine the run may not
        # have noted the id yet)
        assert len(round_trip) <= 2, \
            f"{len(round_trip)} predictions paid again after a kill inside their create"
        assert len(twice["id_known"]) <= len(round_trip)
        inputs = {p.fingerprint for p in rp.billed}
        assert len(rp.billed) == len(inputs) + len(round_trip)
        assert journaled, "no prediction was ever journaled while it ran"
    for story in STORIES:
        assert_story_built(proj, story)
    assert_targets_valid(proj)
    assert not journaled_ids(proj), "the journal is empty once every image is cached"


def test_sigkill_at_ten_moments_during_background_llm_calls_pays_no_call_twice(proj):
    """The same with ``llm.background`` on, through the real openai SDK: each response is
    created in the background, its id journaled and polled; ten kills while the model runs."""
    proj.edit_config(lambda c: c["llm"].update(background=True, pollIntervalS=0.01,
                                               concurrency=1))
    # one call at a time, each 3.5 s: the 12 calls outlast ten runs' start-ups
    oa = FakeOpenAI(latency_s=3.5, responder=distinct_text)  # no two requests alike
    rp = FakeReplicate(token=REPLICATE_TOKEN)
    with oa, rp:
        env = env_for(oa, rp)

        def running(since: float) -> list[str]:
            now = time.monotonic()
            return [r.id for r in oa.billed if not r.cancelled
                    and r.done_at > now and ((r.request.at >= since and r.answered) or any(
                        q.at >= since for q in oa.requests_to(f"/v1/responses/{r.id}", "GET")))]
        journaled = kill_during_generation(proj, env, running, MOMENTS)
        final = proj.doit(env=env)
        assert final.rc == 0, final.out + final.err
        twice = oa.paid_twice()
        bad, round_trip = paid_twice_report(oa.billed, journaled)
        assert not bad, f"paid twice although their id was journaled: {[r.id for r in bad]}"
        assert len(round_trip) <= 2, \
            f"{len(round_trip)} calls paid again after a kill inside their create"
        assert len(twice["id_known"]) <= len(round_trip)
        assert all(r.background for r in oa.billed)
        assert journaled, "no response was ever journaled while it ran"
    for story in STORIES:
        assert_story_built(proj, story)
    assert_targets_valid(proj)
    assert not journaled_ids(proj)


# ---------------------------------------------------------------- 4. revert and re-roll

def test_revert_costs_nothing_and_a_reroll_reaches_the_service(proj):
    oa, rp = fakes()
    with oa, rp:
        env = env_for(oa, rp)
        assert proj.doit("build:noah-s-ark", env=env).rc == 0
        p = proj.prompt_path("step3-prompts.md")
        original = p.read_text()
        p.write_text(original + "\nUse a muted palette.\n")
        edited = proj.doit("build:noah-s-ark", env=env)
        assert edited.rc == 0, edited.out + edited.err
        pages = len(json.loads((proj.story_dir("noah-s-ark") / "pages.json").read_text())["pages"])
        assert len(paid_rows(edited, "llm")) == pages  # the edited step, nothing upstream

        p.write_text(original)
        before = (len(oa.requests), len(rp.requests))
        reverted = proj.doit("build:noah-s-ark", env=env)
        assert reverted.rc == 0, reverted.out + reverted.err
        assert (len(oa.requests), len(rp.requests)) == before, "the revert reached a service"
        assert reverted.calls and all(c["cache_hit"] for c in reverted.calls)
        assert sum(c["cost_usd"] for c in reverted.calls) == 0
        assert sum(c["saved_usd"] for c in reverted.calls) > 0
        assert statuses(proj)["noah-s-ark"]["status"] == "completed"

        p.write_text(original + "\nUse a muted palette.\n")  # cached too, but re-rolled:
        before = len(llm_requests(oa))
        reroll = proj.doit("build:noah-s-ark", env={**env, "CLOOPS_NO_CACHE": "1"})
        assert reroll.rc == 0, reroll.out + reroll.err
        assert len(llm_requests(oa)) - before == pages
        assert len(paid_rows(reroll, "llm")) == pages
    assert_no_secrets(proj, [edited, reverted, reroll])


# ---------------------------------------------------------------- 5. ledger, report, costs

def test_ledger_and_report_match_what_the_servers_answered(proj):
    oa, rp = fakes()
    with oa, rp:
        oa.enqueue(429, headers={"retry-after-ms": "10"}, when=NOAH)
        oa.enqueue(usage={"input_tokens": 1000, "output_tokens": 2000, "reasoning_tokens": 500},
                   when=NOAH)
        rp.enqueue(503, on="create")
        run = proj.doit(env=env_for(oa, rp))
        assert run.rc == 0, run.out + run.err
        assert_ledger_matches_servers(run.calls, oa, rp)
        llm, img = paid_rows(run, "llm"), paid_rows(run, "image")

        answered = [r for r in llm_requests(oa) if r.status == 200]
        assert len(answered) == len(llm)
        for key in ("input_tokens", "output_tokens"):
            assert sum(c[key] for c in llm) == sum(r.reply["usage"][key] for r in answered)
        assert sum(c["reasoning_tokens"] for c in llm) == sum(
            r.reply["usage"]["output_tokens_details"]["reasoning_tokens"] for r in answered)
        (first,) = [c for c in llm if (c["story"], c["step"]) == ("noah-s-ark", "narrative")]
        assert (first["attempts"], first["input_tokens"], first["output_tokens"],
                first["reasoning_tokens"]) == (2, 1000, 2000, 500)
        assert first["cost_usd"] == pytest.approx((1000 * PRICE_IN + 2000 * PRICE_OUT) / 1e6)
        for c in llm:
            assert c["cost_usd"] == pytest.approx(
                (c["input_tokens"] * PRICE_IN + c["output_tokens"] * PRICE_OUT) / 1e6)
        created = [r for r in rp.creates if r.status == 201]
        assert sum(c["images"] for c in img) == len(created)
        assert sorted(c["attempts"] for c in img) == [1] * (len(img) - 1) + [2]
        for c in img:
            assert c["cost_usd"] == pytest.approx(c["images"] * PRICE_IMAGE)
        hits = [c for c in run.calls if c["cache_hit"]]
        assert hits and all(c["cost_usd"] == 0 and c["saved_usd"] > 0 for c in hits)

    cost = sum(c["cost_usd"] for c in run.calls)
    expected = (sum(r.reply["usage"]["input_tokens"] * PRICE_IN
                    + r.reply["usage"]["output_tokens"] * PRICE_OUT for r in answered) / 1e6
                + len(created) * PRICE_IMAGE)
    assert cost == pytest.approx(expected)
    assert f"Spent ${cost:.4f} this run" in run.out

    rep = proj.doit("report", "--json")
    assert rep.rc == 0, rep.err
    data = json.loads(rep.out)
    for group in ("template", "story", "step"):
        rows = data[group]
        assert sum(r["calls"] for r in rows) == len(llm) + len(img)
        assert sum(r["cache_hits"] for r in rows) == len(hits)
        assert sum(r["retries"] for r in rows) == 2
        assert sum(r["input_tokens"] for r in rows) == sum(c["input_tokens"] for c in llm)
        assert sum(r["images"] for r in rows) == len(created)
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(cost)
    text = proj.doit("report", "--by", "template")
    assert text.rc == 0, text.err
    total = next(line for line in text.out.splitlines() if "total" in line)
    assert f"{cost:.4f}" in total and f" {len(llm) + len(img)} " in total, total
    assert_no_secrets(proj, [run, rep, text])


def test_temp_files_of_live_writers_survive_the_cleanup(tmp_path):
    """A story's first task clears the temp files a killed run left; a write still in flight
    (doit's up-to-date check marking a lock stale in another thread, another ``doit``) keeps its
    temp file, or its rename would fail (found by the hand-edit property test in CI)."""
    import subprocess
    import sys
    import threading

    from cloops.core.fileio import remove_temp_files

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    meta = tmp_path / ".cloops"
    meta.mkdir()
    dead = meta / f".locks.json.{gone.pid}-{threading.get_ident()}-0.tmp"
    mine = meta / f".locks.json.{os.getpid()}-{threading.get_ident()}-7.tmp"
    other = meta / f".state.json.{os.getppid()}-1-2.tmp"  # a live process that is not this one
    stored = meta / f".page.jpg.{gone.pid}-3.tmp"  # the storage writer's name: pid and counter
    for f in (dead, mine, other, stored):
        f.write_text("half")
    assert remove_temp_files(tmp_path) == 2
    assert not dead.exists() and not stored.exists()
    assert mine.exists() and other.exists()
