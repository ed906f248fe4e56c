"""Many workers, one backlog: real ``python -m doit`` workers, each with its own project copy and
build folder, share a response-cache tier on a moto S3 server on 127.0.0.1 and pay the loopback
fakes (real openai and replicate SDKs) once for each distinct request across the fleet.

"Paid" is what the fakes billed: every OpenAI model run and every Replicate prediction, a
reference image counted by the digest of the bytes uploaded (each worker uploads its own copy:
uploads are free, predictions are not).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import BUCKET, Project, _no_cloud_lookups, make_project
from tests.fakes.openai_server import FakeOpenAI, distinct_text
from tests.fakes.replicate_server import FakeReplicate

OPENAI_KEY = "sk-fleet-SECRET-0123456789abcdef"
REPLICATE_TOKEN = "r8_fleet_SECRET_0123456789"
STD = "comic-books-standard"
SHARD0 = ["baby-moses", "jonah-and-the-whale"]  # fleet.shard_of(..., 2) == 0
SHARD1 = ["noah-s-ark", "david-and-goliath"]  # == 1
STORIES = SHARD0 + SHARD1


# ---------------------------------------------------------------- helpers

def worker_project(root: Path, stories: list[str], url: str, endpoint: str, *,
                   lease_s: float = 10.0, **llm) -> Project:
    """A fresh worker: the templates, a backlog of ``stories`` and the shared URL; an empty
    build folder. comic-books-standard alone, fast retries, ads off."""
    root.mkdir(parents=True)
    proj = make_project(root, stories, only=True)

    def edit(c):
        c.update(retry={"baseS": 0.01, "capS": 0.05})
        c["cache"] = {"shared": url, "sharedOptions": {"endpoint_url": endpoint},
                      "leaseS": lease_s}
        c["llm"].update(llm)
    proj.edit_config(edit)
    return proj


def billed(oa: FakeOpenAI, rp: FakeReplicate) -> list[tuple[str, str, bool]]:
    """Every job the fakes billed as ``(fingerprint, id, its id reached the client)``."""
    return [(r.fingerprint, r.id, r.answered) for r in oa.billed] + \
        [(rp.request_key(p), p.id, p.create_answered) for p in rp.billed]


def paid_twice(jobs) -> list[str]:
    seen, twice = set(), []
    for fp, _, _ in jobs:
        (twice.append(fp) if fp in seen else seen.add(fp))
    return twice


def bucket_objects(client, prefix: str) -> dict[str, str]:
    """``{key: etag}`` under ``prefix`` in the test bucket."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["ETag"]
    return out


def noted_jobs(client, prefix: str) -> set[str]:
    """The job ids noted in the claims on the bucket now."""
    ids = set()
    for key in bucket_objects(client, f"{prefix}/claims/"):
        try:
            body = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        except Exception:  # noqa: BLE001 - released meanwhile
            continue
        if body.get("job"):
            ids.add(body["job"])
    return ids


def built(proj: Project, story: str) -> bool:
    status = {it["id"]: it["status"] for it in proj.backlog()["items"]}[story]
    bundle = proj.story_dir(story) / "bundle"
    return status == "completed" and (bundle / "story-data.json").is_file()


def no_secrets(runs, s3) -> None:
    for run in runs:
        for secret in (OPENAI_KEY, REPLICATE_TOKEN, s3.secret):
            assert secret not in run.out and secret not in run.err


@pytest.fixture(scope="module")
def aws(s3):
    with pytest.MonkeyPatch.context() as mp:
        _no_cloud_lookups(mp)
        yield s3


def env_for(oa, rp, s3, **extra) -> dict:
    return {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": oa.base_url,
            "REPLICATE_API_TOKEN": REPLICATE_TOKEN, "REPLICATE_BASE_URL": rp.base_url,
            "REPLICATE_POLL_INTERVAL": "0.01", "AWS_ACCESS_KEY_ID": s3.key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret, **extra}


# ---------------------------------------------------------------- the fleet

@pytest.fixture(scope="module")
def fleet(aws, tmp_path_factory):
    """Three workers at once against one bucket prefix: shard 0/2, shard 1/2, and shard 1/2
    again (given the same shard by mistake). The fakes answer every request alike across
    stories (the default responder), so the shards share many requests, the cast's sheets
    among them."""
    tmp = tmp_path_factory.mktemp("fleet")
    prefix = f"fleet-{uuid.uuid4().hex[:8]}"
    url = f"s3://{BUCKET}/{prefix}"
    oa = FakeOpenAI(latency_s=0.05)
    rp = FakeReplicate(token=REPLICATE_TOKEN, latency_s=0.3, colour_by="input")
    with oa, rp:
        env = env_for(oa, rp, aws)
        workers = [worker_project(tmp / f"w{i}", STORIES, url, aws.endpoint) for i in range(3)]
        started = [w.start(env={**env, "CLOOPS_SHARD": shard, "CLOOPS_WORKER_ID": f"w{i}"})
                   for i, (w, shard) in enumerate(zip(workers, ["0/2", "1/2", "1/2"]))]
        runs = [s.finish(timeout=240) for s in started]
        yield SimpleNamespace(oa=oa, rp=rp, env=env, url=url, prefix=prefix, tmp=tmp,
                              workers=workers, runs=runs, s3=aws)


def test_three_workers_pay_once_for_every_distinct_request(fleet):
    for run in fleet.runs:
        assert run.rc == 0, run.out + run.err
    w0, w1, w2 = fleet.workers
    assert all(built(w0, s) for s in SHARD0) and not any(built(w0, s) for s in SHARD1)
    assert all(built(w1, s) for s in SHARD1) and all(built(w2, s) for s in SHARD1)
    assert "shard 0/2" in fleet.runs[0].out and "shard 1/2" in fleet.runs[1].out
    # each worker takes half the account's limits (generation.concurrency 8 -> 4)
    assert "image 4 in flight" in fleet.runs[0].out
    # (whether the twins of shard 1 waited for each other's answers or found them stored
    # depends on how far apart they ran; the folder-tier test below waits deterministically)
    jobs = billed(fleet.oa, fleet.rp)
    assert jobs and not paid_twice(jobs), "a request was paid twice across the fleet"
    # every call a worker made was paid by exactly one of them; the others were answered
    paid_rows = sum(r.count(cache_hit=0, offline=0) for r in fleet.runs)
    assert paid_rows == len(jobs)
    # the shards share requests (same answers, same sheets): shard 0's worker got some of
    # shard 1's answers, and the duplicate worker of shard 1 paid for little or nothing
    # that its twin paid for
    assert all(r.count(cache_hit=1) > 0 for r in fleet.runs)
    assert fleet.runs[1].count(cache_hit=0) + fleet.runs[2].count(cache_hit=0) <= \
        fleet.runs[1].count()
    # no claim is left behind, and each worker's ledger is on the bucket
    keys = bucket_objects(fleet.s3.client, fleet.prefix + "/")
    assert not [k for k in keys if "/claims/" in k]
    assert {k.split("/")[2] for k in keys if "/ledger/" in k} == {"w0", "w1", "w2"}
    assert "shared cache s3://" in fleet.runs[0].out
    assert "statuses of 2 comic-books-standard stories (shard 0/2's only)" in fleet.runs[0].out
    no_secrets(fleet.runs, fleet.s3)


def test_report_shared_merges_every_workers_ledger(fleet):
    w0 = fleet.workers[0]
    env = {**fleet.env, "CLOOPS_CACHE_URL": fleet.url}
    rep = w0.doit("report", "--shared", "--json", env=env)
    assert rep.rc == 0, rep.out + rep.err
    data = json.loads(rep.out)
    workers = {r["worker"]: r for r in data["worker"]}
    assert set(workers) == {"w0", "w1", "w2"}
    assert sum(r["calls"] for r in data["worker"]) == len(billed(fleet.oa, fleet.rp))
    stories = {r["story"] for r in data["story"]}
    assert set(STORIES) <= stories
    text = w0.doit("report", "--shared", "--by", "worker", env=env)
    assert text.rc == 0 and "Spend per worker" in text.out


def test_a_corrupted_entry_is_a_miss_reported_and_replaced(fleet):
    client = fleet.s3.client
    entries = sorted(k for k in bucket_objects(client, fleet.prefix + "/entries/"))
    victim = entries[len(entries) // 2]
    body = client.get_object(Bucket=BUCKET, Key=victim)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=victim, Body=body[:-1] + bytes([body[-1] ^ 0xFF]))
    before = len(billed(fleet.oa, fleet.rp))
    fresh = worker_project(fleet.tmp / "corrupt", STORIES, fleet.url, fleet.s3.endpoint)
    run = fresh.doit(env=fleet.env)
    assert run.rc == 0, run.out + run.err
    assert "does not match its sha256" in run.out + run.err
    assert victim.rsplit("/", 1)[1] in run.out + run.err
    assert len(billed(fleet.oa, fleet.rp)) == before + 1, "only the corrupt entry is paid again"
    assert all(built(fresh, s) for s in STORIES)
    from cloops.services.shared_cache import unpack_entry
    replaced = client.get_object(Bucket=BUCKET, Key=victim)["Body"].read()
    assert unpack_entry(replaced) is not None, "the corrupt entry was not replaced"


def test_a_read_only_worker_profits_and_writes_nothing(fleet):
    client = fleet.s3.client
    before = bucket_objects(client, fleet.prefix + "/")
    paid = len(billed(fleet.oa, fleet.rp))
    # one story the fleet built, one it did not
    reader = worker_project(fleet.tmp / "reader", ["noah-s-ark", "the-nativity"], fleet.url,
                            fleet.s3.endpoint)
    run = reader.doit(env={**fleet.env, "CLOOPS_CACHE_MODE": "read"})
    assert run.rc == 0, run.out + run.err
    assert built(reader, "noah-s-ark") and built(reader, "the-nativity")
    assert bucket_objects(client, fleet.prefix + "/") == before, "a read-only worker wrote"
    assert "read-only" in run.out
    # noah-s-ark's requests were all answered by the tier; the new story paid for its own
    noah = [c for c in run.calls if c["story"] == "noah-s-ark"]
    assert noah and all(c["cache_hit"] for c in noah)
    assert len(billed(fleet.oa, fleet.rp)) > paid


def test_the_tier_unreachable_at_start_is_one_clear_error(fleet, tmp_path):
    proj = worker_project(tmp_path / "w", ["noah-s-ark"], f"s3://{BUCKET}/x", fleet.s3.endpoint)
    run = proj.doit(env={**fleet.env, "CLOOPS_CACHE_URL": "s3://no-such-bucket-23/cache"})
    assert run.rc == 2
    assert "s3://no-such-bucket-23/cache" in run.err and "CLOOPS_CACHE_URL" in run.err
    assert "Traceback" not in run.err
    # set in the config, pointing at nothing listening: it names the config key
    proj.edit_config(lambda c: c["cache"].update(sharedOptions={
        "endpoint_url": "http://127.0.0.1:9"}))
    run = proj.doit(env=fleet.env)
    assert run.rc == 2 and "cache.shared" in run.err and f"s3://{BUCKET}/x" in run.err
    assert not list((proj.root / "build").rglob("*.jpg"))
    no_secrets([run], fleet.s3)


def test_the_tier_lost_mid_run_is_retried_then_the_build_goes_on_loudly(fleet, tmp_path):
    from moto.server import ThreadedMotoServer
    # a second endpoint to the same moto backend (moto keeps its state in the process): stopping
    # it loses the tier for the worker using it
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        prefix = f"lost-{uuid.uuid4().hex[:8]}"
        proj = worker_project(tmp_path / "w", ["the-good-samaritan"], f"s3://{BUCKET}/{prefix}",
                              f"http://{host}:{port}")
        st = proj.start(env=fleet.env)
        deadline = time.monotonic() + 60
        while not bucket_objects(fleet.s3.client, f"{prefix}/entries/"):
            assert time.monotonic() < deadline and st.proc.poll() is None, "nothing stored"
            time.sleep(0.02)
    finally:
        server.stop()
    run = st.finish(timeout=240)
    assert run.rc == 0, run.out + run.err
    assert built(proj, "the-good-samaritan")
    assert "SHARED CACHE LOST" in run.err and f"s3://{BUCKET}/{prefix}" in run.err
    assert "LOST" in run.out  # and the run's end says it again


# ---------------------------------------------------------------- a worker killed

def test_a_worker_killed_mid_build_is_replaced_and_nothing_noted_is_paid_twice(aws, tmp_path):
    """Background LLM calls and predictions, each running a while; the worker is SIGKILLed
    while jobs are noted in its claims; a fresh worker on an empty folder takes the claims
    over once their lease expires and resumes those jobs."""
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    url = f"s3://{BUCKET}/{prefix}"
    oa = FakeOpenAI(latency_s=1.0, responder=distinct_text)
    rp = FakeReplicate(token=REPLICATE_TOKEN, latency_s=1.5, colour_by="input")
    with oa, rp:
        env = env_for(oa, rp, aws)
        # a short lease: the fresh worker takes the dead one's claims over 2 s after
        first = worker_project(tmp_path / "first", SHARD1, url, aws.endpoint, lease_s=2.0,
                               background=True, pollIntervalS=0.02)
        st = first.start(env=env)
        deadline = time.monotonic() + 90
        journaled: set[str] = set()
        # kill once an image prediction is noted (LLM responses were noted before it)
        while not (journaled & {p.id for p in rp.billed}):
            assert time.monotonic() < deadline and st.proc.poll() is None, \
                "no prediction was ever noted in a claim"
            journaled |= noted_jobs(aws.client, prefix)
            time.sleep(0.02)
        journaled |= noted_jobs(aws.client, prefix)
        os.kill(st.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert st.finish(timeout=30).rc == -signal.SIGKILL
        fresh = worker_project(tmp_path / "fresh", SHARD1, url, aws.endpoint, lease_s=2.0,
                               background=True, pollIntervalS=0.02)
        run = fresh.doit(env=env)
        assert run.rc == 0, run.out + run.err
        assert all(built(fresh, s) for s in SHARD1)
        jobs = billed(oa, rp)
        twice = paid_twice(jobs)
        by_fp: dict[str, list] = {}
        for fp, jid, answered in jobs:
            by_fp.setdefault(fp, []).append((jid, answered))
        # a job paid again although an earlier one of the same request was noted: never
        bad = [fp for fp in twice if any(jid in journaled for jid, _ in by_fp[fp][:-1])]
        assert not bad, "a noted job was created again"
        # what remains: creates in their round trip when the worker died (their id never
        # reached it, or not yet its claim), as on one machine
        assert len(twice) <= 2
        resumed = [j for j in journaled if any(
            r.at > killed_at for r in rp.requests_to(f"/v1/predictions/{j}", "GET")
            + oa.requests_to(f"/v1/responses/{j}", "GET"))]
        assert resumed, "the fresh worker resumed none of the noted jobs"
        assert "took over the expired claim" in run.err
        assert not [k for k in bucket_objects(aws.client, prefix + "/") if "/claims/" in k]
        no_secrets([run], aws)


# ---------------------------------------------------------------- units: shards, limits, a folder

def test_shards_come_from_cloops_shard_kubernetes_or_cloud_run():
    from cloops.core.errors import InputError
    from cloops.run.fleet import Shard, in_shard, shard_from_env, shard_of
    assert shard_from_env({}) is None
    assert shard_from_env({"CLOOPS_SHARD": "1/4"}) == Shard(1, 4, "CLOOPS_SHARD")
    k8s = shard_from_env({"JOB_COMPLETION_INDEX": "2", "CLOOPS_SHARD_COUNT": "3"})
    assert (k8s.index, k8s.count) == (2, 3)
    assert shard_from_env({"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "5"}).count == 5
    for bad in ("4/4", "x/2", "3", "-1/2"):
        with pytest.raises(InputError, match="CLOOPS_SHARD"):
            shard_from_env({"CLOOPS_SHARD": bad})
    # stable across machines and runs: the hash of template/id, not Python's hash()
    assert [shard_of(STD, s, 2) for s in STORIES] == [0, 0, 1, 1]
    ids = [f"story-{i}" for i in range(400)]
    for n in (1, 3, 7):
        parts = [sum(in_shard(STD, i, Shard(k, n, "t")) for i in ids) for k in range(n)]
        assert sum(parts) == len(ids) and min(parts) > len(ids) / n * 0.7


def test_each_worker_takes_its_share_of_the_account_limits(tmp_path):
    from cloops.data.project import load_project
    from cloops.run.fleet import worker_limits
    (tmp_path / "a").mkdir()
    proj = make_project(tmp_path / "a", ["noah-s-ark"])
    loaded = load_project(proj.root)
    loaded.env = {"CLOOPS_SHARD": "0/3"}
    assert worker_limits(loaded, STD, "image", 8, 600) == \
        (3, 200.0, "account limits ÷ 3, rounded up")
    assert worker_limits(loaded, STD, "llm", 2, None)[:2] == (1, None)
    (tmp_path / "b").mkdir()  # templates are cached per process: another project
    proj = make_project(tmp_path / "b", ["noah-s-ark"])
    proj.edit_config(lambda c: c.update(limits={"perWorker": {"image": {"concurrency": 5}}}))
    loaded = load_project(proj.root)
    loaded.env = {"CLOOPS_SHARD": "0/3"}
    assert worker_limits(loaded, STD, "image", 8, 600) == (5, 600, "limits.perWorker")


def test_a_folder_tier_claims_waits_takes_over_and_checks_bodies(tmp_path):
    from cloops.services.base import LLMResult, Usage
    from cloops.services.cache import ResponseCache
    from cloops.services.shared_cache import SharedTier, pack_entry, unpack_entry
    files = {".jpg": b"\xff\xd8jpeg", ".json": b'{"w":1}'}
    assert unpack_entry(pack_entry(files)) == files
    packed = pack_entry(files)
    assert unpack_entry(packed[:-1] + b"X") is None and unpack_entry(b"junk") is None
    shared = tmp_path / "shared"
    shared.mkdir()
    warned = []
    a = SharedTier(str(shared), worker="a", lease_s=1.0, warn=warned.append)
    b = SharedTier(str(shared), worker="b", lease_s=1.0, warn=warned.append)
    ca, cb = ResponseCache(tmp_path / "a", shared=a), ResponseCache(tmp_path / "b", shared=b)
    key = "ab" * 32
    assert ca.claim(key, lambda: ca.get_llm(key)) is None  # a holds it
    assert b.try_claim(key) == "live"
    ca.start_job(key, "pred-1")
    ca.put_llm(key, LLMResult(text="answer", data=None, usage=Usage(), model="m"))
    ca.release(key)
    assert cb.claim(key, lambda: cb.get_llm(key)).text == "answer"  # from the tier
    # a dies holding a claim with a job noted: b takes it over after the lease, with the job
    other = "cd" * 32
    assert a.try_claim(other) == "held"
    a.note_job(other, "pred-2")
    a._held.clear()  # dead: no renewal, no release
    assert b.try_claim(other) == "live"
    time.sleep(1.1)
    assert cb.claim(other, lambda: cb.get_llm(other)) is None and cb.job(other) == "pred-2"
    assert any("took over" in w for w in warned)
    # a live claim: b waits for a's answer instead of paying
    import threading
    waiting_key = "12" * 32
    assert ca.claim(waiting_key, lambda: ca.get_llm(waiting_key)) is None
    got = []
    waiter = threading.Thread(target=lambda: got.append(
        cb.claim(waiting_key, lambda: cb.get_llm(waiting_key))))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and b.counts["waited"] == 1
    ca.put_llm(waiting_key, LLMResult(text="waited for", data=None, usage=Usage(), model="m"))
    ca.release(waiting_key)
    waiter.join(10)
    assert got[0].text == "waited for"
    # stored first by another worker: its answer is used, here too — not by a re-roll
    mine = LLMResult(text="mine", data=None, usage=Usage(), model="m")
    assert cb.put_llm(key, mine).text == "answer" and cb.get_llm(key).text == "answer"
    assert cb.put_llm(key, mine, adopt=False) is None and cb.get_llm(key).text == "mine"
    # read mode: never writes
    r = SharedTier(str(shared), worker="r", mode="read")
    cr = ResponseCache(tmp_path / "r", shared=r)
    before = sorted(p.name for p in shared.rglob("*"))
    third = "ef" * 32
    assert cr.claim(third, lambda: cr.get_llm(third)) is None
    cr.put_llm(third, LLMResult(text="mine", data=None, usage=Usage(), model="m"))
    cr.start_job(third, "x")
    assert sorted(p.name for p in shared.rglob("*")) == before


# ---------------------------------------------------------------- GCS: atomic claim take-over

def test_a_gcs_tier_takes_an_expired_claim_over_atomically(gcs):
    """Two workers find one dead worker's claim expired; the other one's take-over lands
    between this one's read of the claim and its write: GCS refuses the write (HTTP 412 on
    ifGenerationMatch=<the generation read>), so this worker waits instead of paying too."""
    from cloops.services.shared_cache import SharedTier
    url = f"gs://{gcs.bucket}/tier-{uuid.uuid4().hex[:8]}"
    warned: list[str] = []

    def tier(worker):
        return SharedTier(url, storage_options=gcs.options, worker=worker, lease_s=0.5,
                          warn=warned.append)
    dead, a, b = tier("dead"), tier("a"), tier("b")
    dead.check()
    key = "ab" * 32
    assert dead.try_claim(key) == "held"
    dead.note_job(key, "pred-1")
    dead._held.clear()  # dead: no renewal, no release
    time.sleep(0.6)
    claim = f"tier-{url.rsplit('-', 1)[1]}/claims/{key}.json"
    taken = []

    def a_takes_it_over_first(name, query):
        # in the server, as b's take-over arrives: a's take-over is stored first
        if name == claim and query.get("ifGenerationMatch", ["0"])[0] != "0" and not taken:
            taken.append(name)
            gcs.put_now(name, json.dumps({"holder": "a", "until": time.time() + 60,
                                          "job": "pred-1", "jobAt": 1.0}).encode())
    gcs.before_write = a_takes_it_over_first
    try:
        refused = gcs.refused
        assert b.try_claim(key) == "live", "b took over a claim a had just taken over"
    finally:
        gcs.before_write = None
    assert taken and gcs.refused > refused
    assert a.try_claim(key) == "live"  # a's own (test-written) claim: live
    assert b.job(key) is None and b.counts["taken_over"] == 0
    # at the same instant from two threads: exactly one of them takes the claim over
    import threading
    other = "cd" * 32
    assert dead.try_claim(other) == "held"
    dead._held.clear()
    time.sleep(0.6)
    go = threading.Barrier(2)
    got = {}

    def race(t):
        go.wait(10)
        got[t.worker] = t.try_claim(other)
    threads = [threading.Thread(target=race, args=(t,)) for t in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got.values()) == ["held", "live"], got
    assert sum("took over the expired claim" in w for w in warned) == 1


# ---------------------------------------------------------------- many workers publish

PUB = ["the-nativity", "jonah-and-the-whale", "noah-s-ark", "baby-moses"]  # shards of 3: 0 1 1 2


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    """comic-books-standard's PUB stories built once with the in-process fake backends."""
    from test_rebuild_rules import FAKE
    root = tmp_path_factory.mktemp("pub") / "built"
    root.mkdir()
    proj = make_project(root, PUB, only=True)
    run = proj.doit(env=FAKE)
    assert run.rc == 0, run.out + run.err
    assert all(built(proj, s) for s in PUB)
    return SimpleNamespace(project=proj, env=FAKE)


def shard_workers(built_once, tmp: Path, count: int) -> list[Project]:
    """``count`` workers, each a copy of the project in which only its shard's stories are
    built and completed, as each worker of a fleet has them (the others pending)."""
    from cloops.run.fleet import shard_of
    workers = []
    for i in range(count):
        root = tmp / f"w{i}"
        shutil.copytree(built_once.project.root, root)
        w = Project(root)
        backlog = w.backlog()
        for it in backlog["items"]:
            if shard_of(STD, it["id"], count) != i:
                shutil.rmtree(w.story_dir(it["id"]))
                it["status"] = "pending"
                it.pop("completedAt", None)
        w.write_backlog(backlog)
        workers.append(w)
    return workers


@pytest.mark.parametrize("where", ["s3", "folder"])
def test_each_worker_publishes_its_shard_and_the_index_keeps_every_workers_stories(
        built_once, aws, tmp_path, where):
    """Three workers with their own disks publish their shards to one destination at once
    (`CLOOPS_SHARD=i/3 doit publish`): the index lists every worker's stories; a re-run
    uploads nothing; a story a worker withdraws leaves the index and the others stay."""
    env = {**built_once.env, "AWS_ACCESS_KEY_ID": aws.key_id,
           "AWS_SECRET_ACCESS_KEY": aws.secret}
    if where == "s3":
        prefix = f"pub-{uuid.uuid4().hex[:8]}"
        url, options = f"s3://{BUCKET}/{prefix}", {"endpoint_url": aws.endpoint}

        def read(key):
            return aws.client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()
    else:
        folder = tmp_path / "published"
        url, options = str(folder), {}

        def read(key):
            return (folder / key).read_bytes()
    workers = shard_workers(built_once, tmp_path, 3)
    for w in workers:
        w.edit_config(lambda c: c.update(publish={"url": url, "storageOptions": options}))

    def publish_all(*only):
        started = [(i, w.start("publish", env={**env, "CLOOPS_SHARD": f"{i}/3"}))
                   for i, w in enumerate(workers) if not only or i in only]
        runs = {i: s.finish(timeout=240) for i, s in started}
        for i, run in runs.items():
            assert run.rc == 0, run.out + run.err
            assert f"shard {i}/3 (from CLOOPS_SHARD)" in run.out
        no_secrets(runs.values(), aws)
        return runs

    def listed():
        return [s["id"] for s in json.loads(read(f"{STD}/index.json"))["stories"]]
    order = [it["id"] for it in built_once.project.backlog()["items"]]  # the backlog's
    assert sorted(order) == sorted(PUB)
    first = publish_all()
    assert listed() == order, "a worker's stories are missing from the index"
    assert "published 1 stories" in first[0].out and "published 2 stories" in first[1].out
    for i, w in enumerate(workers):
        for sid in PUB:
            bundle = w.story_dir(sid) / "bundle"
            if bundle.is_dir():
                for f in bundle.iterdir():
                    assert read(f"{STD}/{sid}/bundle/{f.name}") == f.read_bytes()
    record = json.loads(read(".cloops-publish.json"))["objects"]
    assert {k.split("/")[1] for k in record if k.count("/") >= 2} == set(PUB)

    again = publish_all()
    for run in again.values():
        assert "0 objects uploaded" in run.out, run.out

    # worker 1's jonah-and-the-whale has failed since: it takes it out, and only it
    w1 = workers[1]
    backlog = w1.backlog()
    for it in backlog["items"]:
        if it["id"] == "jonah-and-the-whale":
            it.update(status="failed", error="step 'image' #2: the model refused")
    w1.write_backlog(backlog)
    withdrawn = publish_all(1)[1]
    assert f"taken out of the index (no longer published): {STD}/jonah-and-the-whale" in \
        withdrawn.out
    assert listed() == [s for s in order if s != "jonah-and-the-whale"]
    assert "0 objects uploaded" in publish_all()[0].out
    assert listed() == [s for s in order if s != "jonah-and-the-whale"]
