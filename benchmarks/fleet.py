"""cloops fleet benchmark: 1, 2 and 4 workers on this machine building one backlog through a
shared response-cache tier, under the same account limits in total.

Run from the repository root (after ``pip install -e '.[test]'``)::

    python benchmarks/fleet.py            # 8 stories
    python benchmarks/fleet.py --quick    # 4 stories

Each worker is a real ``doit`` process with its own project copy and build folder
(``CLOOPS_SHARD=i/N``), all sharing one S3 bucket prefix on a moto server on 127.0.0.1
(``CLOOPS_CACHE_URL``), and paying the loopback fakes of ``tests/fakes`` (real ``openai`` and
``replicate`` SDKs) that answer after a fixed latency. The account's limits are the same for
every fleet size (``llm.concurrency``, ``generation.concurrency``); each worker takes its
share (divided by N, rounded up, as ``cloops.run.fleet.worker_limits`` does).

Printed per fleet size: the stories of each shard, the makespan (first start to last exit),
the ideal (the busiest service's paid calls × latency ÷ the account's concurrency, or one
story's chain of calls, whichever is longer — start-up not included), the bound that static
shards set (the largest shard's share of the calls at one worker's share of the limits) and
the requests paid twice across the fleet (target 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STD = "comic-books-standard"
LLM_LATENCY_S = 0.4
IMAGE_LATENCY_S = 1.5
ACCOUNT = {"llm": 4, "image": 4}  # calls in flight for the whole account
# one story's longest chain of calls: (LLM: narrative, cast, pages, sheet prompt, page prompt;
# images: the sheet, then the page)
CHAIN = (5, 2)
SECRETS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL",
           "CLOOPS_SHARD", "CLOOPS_CACHE_URL", "CLOOPS_NO_CACHE")


def project(root: Path, stories: list[str], url: str, endpoint: str) -> Path:
    """A worker's project: comic-books-standard with ``stories``, ads off, 1K images."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "templates" / STD, root / "templates" / STD)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    (root / "backlogs").mkdir()
    data = json.loads((REPO / "backlogs" / f"{STD}.json").read_text())
    data["items"] = [it for it in data["items"] if it["id"] in stories]
    (root / "backlogs" / f"{STD}.json").write_text(json.dumps(data, indent=2))
    cfg_path = root / "templates" / STD / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["ads"]["enabled"] = False
    cfg["generation"]["params"]["size"] = "1K"
    cfg["generation"].update(concurrency=ACCOUNT["image"], requestsPerMinute=None)
    cfg["llm"].update(concurrency=ACCOUNT["llm"])
    cfg["retry"] = {"baseS": 0.01, "capS": 0.05}
    cfg["cache"] = {"shared": url, "sharedOptions": {"endpoint_url": endpoint}}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return root


def billed(oa, rp) -> list[str]:
    return [r.fingerprint for r in oa.billed] + [rp.request_key(p) for p in rp.billed]


def run_fleet(n: int, stories: list[str], endpoint: str, tmp: Path) -> dict:
    from tests.fakes.openai_server import FakeOpenAI, distinct_text
    from tests.fakes.replicate_server import FakeReplicate
    url = f"s3://bench/fleet-{n}-{uuid.uuid4().hex[:6]}"
    oa = FakeOpenAI(latency_s=LLM_LATENCY_S, responder=distinct_text)
    rp = FakeReplicate(token="r8_bench", latency_s=IMAGE_LATENCY_S, colour_by="input")
    with oa, rp:
        env = {k: v for k, v in os.environ.items() if k not in SECRETS}
        env.update(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=oa.base_url,
                   REPLICATE_API_TOKEN="r8_bench", REPLICATE_BASE_URL=rp.base_url,
                   REPLICATE_POLL_INTERVAL="0.05", AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                   AWS_EC2_METADATA_DISABLED="true", NO_PROXY="127.0.0.1,localhost",
                   CLOOPS_PROGRESS="lines")
        roots = [project(tmp / f"n{n}-w{i}", stories, url, endpoint) for i in range(n)]
        t0 = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-m", "doit"], cwd=r,
                                  env={**env, "CLOOPS_SHARD": f"{i}/{n}",
                                       "CLOOPS_WORKER_ID": f"w{i}"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i, r in enumerate(roots)]
        outs = [p.communicate(timeout=900)[0] for p in procs]
        makespan = time.monotonic() - t0
        for p, out in zip(procs, outs):
            if p.returncode != 0:
                raise SystemExit(f"a worker failed (rc {p.returncode}):\n{out[-3000:]}")
        jobs = billed(oa, rp)
        llm_paid, images_paid = len(oa.billed), len(rp.billed)
    twice = len(jobs) - len(set(jobs))
    chain = CHAIN[0] * LLM_LATENCY_S + CHAIN[1] * IMAGE_LATENCY_S
    ideal = max(llm_paid * LLM_LATENCY_S / ACCOUNT["llm"],
                images_paid * IMAGE_LATENCY_S / ACCOUNT["image"], chain)
    # with static shards each worker has only its share of the limits: the largest shard
    # bounds the makespan (the stories' calls spread evenly over the stories)
    from cloops.run.fleet import shard_of
    sizes = [sum(shard_of(STD, s, n) == k for s in stories) for k in range(n)]
    per_worker = max(llm_paid * LLM_LATENCY_S / -(-ACCOUNT["llm"] // n),
                     images_paid * IMAGE_LATENCY_S / -(-ACCOUNT["image"] // n))
    sharded = max(chain, max(sizes) / len(stories) * per_worker)
    return {"workers": n, "makespan_s": makespan, "ideal_s": ideal, "sharded_s": sharded,
            "shards": sizes, "llm_paid": llm_paid, "images_paid": images_paid,
            "paid_twice": twice}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 stories instead of 8")
    ap.add_argument("--workers", default="1,2,4", help="fleet sizes, comma-separated")
    args = ap.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer
    data = json.loads((REPO / "backlogs" / f"{STD}.json").read_text())
    stories = [it["id"] for it in data["items"]][:4 if args.quick else 8]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="bench")
    print(f"fleet benchmark: {len(stories)} stories of {STD}; fakes answer after "
          f"{LLM_LATENCY_S} s (LLM) and {IMAGE_LATENCY_S} s (image); the account allows "
          f"{ACCOUNT['llm']} LLM and {ACCOUNT['image']} image calls in flight; "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'stories/shard':>14} {'makespan s':>11} {'ideal s':>8} "
          f"{'ratio':>6} {'shard bound s':>14} {'LLM paid':>9} {'images paid':>12} "
          f"{'paid twice':>11}")
    try:
        with tempfile.TemporaryDirectory(prefix="cloops-fleet-") as tmp:
            for n in (int(x) for x in args.workers.split(",")):
                r = run_fleet(n, stories, endpoint, Path(tmp))
                shards = "/".join(str(k) for k in r["shards"])
                print(f"{r['workers']:>7} {shards:>14} {r['makespan_s']:>11.1f} "
                      f"{r['ideal_s']:>8.1f} {r['makespan_s'] / r['ideal_s']:>6.2f} "
                      f"{r['sharded_s']:>14.1f} {r['llm_paid']:>9} {r['images_paid']:>12} "
                      f"{r['paid_twice']:>11}   (target 0)", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
