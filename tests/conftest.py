"""Shared fixtures: a throwaway cloops project in a temp dir, built by a real doit process.

``project.doit("build:noah-s-ark")`` runs ``python -m doit`` there (no keys in the environment,
so offline backends unless a test points the SDKs at a fake server) and returns a
:class:`Run` whose ``calls`` are this run's rows of the usage ledger — the count of calls a
build makes is what the engine tests assert.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
SECRET_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLM_API_KEY", "REPLICATE_API_TOKEN",
               "REPLICATE_BASE_URL", "COMFYUI_URL", "ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL",
               "CLOOPS_LLM_BACKEND", "CLOOPS_IMAGE_BACKEND", "CLOOPS_VOICE_BACKEND",
               "CLOOPS_NO_CACHE", "CLOOPS_DEBUG",
               # a fleet's variables (tests/test_fleet.py sets them where it means to)
               "CLOOPS_CACHE_URL", "CLOOPS_CACHE_MODE", "CLOOPS_SHARD", "CLOOPS_SHARD_COUNT",
               "CLOOPS_WORKER_ID", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT")


@dataclass
class Run:
    rc: int
    out: str
    err: str
    calls: list[dict]

    def count(self, **where) -> int:
        """Calls matching every ``column=value`` (e.g. ``service="image", cache_hit=0``)."""
        return sum(1 for c in self.calls if all(c.get(k) == v for k, v in where.items()))

    def by_step(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.calls:
            out[c["step"]] = out.get(c["step"], 0) + 1
        return out


class Project:
    """A copy of the repo's templates and dodo.py with a chosen backlog."""

    def __init__(self, root: Path):
        self.root = root

    def story_dir(self, story: str, template: str = "comic-books-standard") -> Path:
        return self.root / "build" / template / story

    def backlog_path(self, template: str = "comic-books-standard") -> Path:
        return self.root / "backlogs" / f"{template}.json"

    def backlog(self, template: str = "comic-books-standard") -> dict:
        return json.loads(self.backlog_path(template).read_text())

    def write_backlog(self, data: dict, template: str = "comic-books-standard") -> None:
        self.backlog_path(template).write_text(json.dumps(data, indent=2))

    def config_path(self, template: str = "comic-books-standard") -> Path:
        return self.root / "templates" / template / "config.json"

    def edit_config(self, fn, template: str = "comic-books-standard") -> None:
        p = self.config_path(template)
        data = json.loads(p.read_text())
        fn(data)
        p.write_text(json.dumps(data, indent=2))

    def prompt_path(self, name: str, template: str = "comic-books-standard") -> Path:
        return self.root / "templates" / template / "system-prompts" / name

    def _env(self, run_id: str, env: dict | None) -> dict:
        full_env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
        full_env["CLOOPS_RUN_ID"] = run_id
        full_env["NO_PROXY"] = "127.0.0.1,localhost"
        full_env["COLUMNS"] = "200"
        full_env.update(env or {})
        return full_env

    def doit(self, *args: str, env: dict | None = None, timeout: float = 300) -> Run:
        run_id = uuid.uuid4().hex
        proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=self.root,
                              env=self._env(run_id, env), capture_output=True, text=True,
                              timeout=timeout)
        return Run(proc.returncode, proc.stdout, proc.stderr, self.calls(run_id))

    def start(self, *args: str, env: dict | None = None) -> "Started":
        """Start ``python -m doit`` without waiting (as :meth:`doit`); ``.finish()`` collects it."""
        run_id = uuid.uuid4().hex
        proc = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=self.root,
                                env=self._env(run_id, env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        return Started(self, proc, run_id)

    def calls(self, run_id: str) -> list[dict]:
        path = self.root / "build" / ".cloops" / "ledger.sqlite"
        if not path.exists():
            return []
        con = sqlite3.connect(path)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(
                "SELECT * FROM calls WHERE run_id=? ORDER BY id", (run_id,))]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()


@dataclass
class Started:
    """A doit process started by :meth:`Project.start`."""

    project: Project
    proc: subprocess.Popen
    run_id: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self, timeout: float = 300) -> Run:
        """Wait for the process to end (it may have been killed) and return its :class:`Run`."""
        out, err = self.proc.communicate(timeout=timeout)
        return Run(self.proc.returncode, out, err, self.project.calls(self.run_id))


def make_project(tmp: Path, story_ids: list[str] | None = None, *, small_images: bool = True,
                 templates: tuple[str, ...] | None = ("comic-books-standard",),
                 ads: bool = False, only: bool = False) -> Project:
    """A temp project: every template, and the backlogs of ``templates`` (None: all) with
    only ``story_ids`` (default: all stories). ``only``: the other templates' folders are
    left out too (their steps and calls would add to every count).

    ``ads``: keep the ad components as the templates ship them (the kids template renders
    them); by default they are switched off, so that tests of everything else do not spend
    a minute of CPU rendering clips (tests/test_ads.py switches them on)."""
    shutil.copytree(REPO / "templates", tmp / "templates")
    if only and templates is not None:
        for d in (tmp / "templates").iterdir():
            if d.is_dir() and d.name not in templates:
                shutil.rmtree(d)
    shutil.copy(REPO / "dodo.py", tmp / "dodo.py")
    (tmp / "backlogs").mkdir()
    for src in (REPO / "backlogs").glob("*.json"):
        if templates is not None and src.stem not in templates:
            continue
        data = json.loads(src.read_text())
        if story_ids is not None:
            data["items"] = [it for it in data["items"] if it["id"] in story_ids]
        (tmp / "backlogs" / src.name).write_text(json.dumps(data, indent=2))
    proj = Project(tmp)
    if not ads:
        for cfg in (tmp / "templates").glob("*/config.json"):
            data = json.loads(cfg.read_text())
            if "ads" in data:
                data["ads"]["enabled"] = False
                cfg.write_text(json.dumps(data, indent=2))
    if small_images:
        for cfg in (tmp / "templates").glob("*/config.json"):
            data = json.loads(cfg.read_text())
            if "generation" in data and "params" in data["generation"]:
                data["generation"]["params"]["size"] = "1K"
                # Replicate's 600/minute spacing would only slow the fakes down; the rate
                # limiter has tests of its own
                data["generation"]["requestsPerMinute"] = None
                cfg.write_text(json.dumps(data, indent=2))
    return proj


@pytest.fixture
def project(tmp_path) -> Project:
    """Two stories of comic-books-standard (noah-s-ark, david-and-goliath), 1K images."""
    return make_project(tmp_path, ["noah-s-ark", "david-and-goliath"])


@pytest.fixture
def both_templates(tmp_path) -> Project:
    """noah-s-ark and david-and-goliath in comic-books-standard and comic-books-kids."""
    return make_project(tmp_path, ["noah-s-ark", "david-and-goliath"], templates=None)


def child_processors() -> set[int]:
    """The processors a child process started now may use (what FFmpeg would get)."""
    code = "import os; print(*os.sched_getaffinity(0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return {int(cpu) for cpu in out.split()}


@pytest.fixture
def own_processors():
    """The processors this process may use (a set of ints, or None where the OS cannot say),
    given back to the test thread afterwards: a test that pins threads (cloops.core.cpus)
    leaves no pin behind for the next one."""
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    yield before
    if before is not None:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------- a real S3 server (moto)

BUCKET = "cloops-ads"
WRONG_SECRET = "wrong-SECRET-9f8e7d6c5b4a"


def _no_cloud_lookups(mp: pytest.MonkeyPatch) -> None:
    """Keep the AWS/Google SDKs on loopback: no metadata-server or config-file lookups."""
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setenv("AWS_CONFIG_FILE", os.devnull)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("NO_GCE_CHECK", "true")
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY",
                 "http_proxy", "https_proxy"):
        mp.delenv(name, raising=False)


def _moto_auth(endpoint: str, initial_no_auth: str) -> None:
    """Moto's switch for IAM authentication: after ``initial_no_auth`` more requests ("0":
    at once, "inf": never) every request must be signed by a known key with a policy."""
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=initial_no_auth.encode(),
                                 method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with a bucket and an IAM user's key; auth enforced.

    Moto keeps its accounts in the process, not the server: each module's server finds the
    bucket of an earlier one and gets an IAM user of its own."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        _no_cloud_lookups(mp)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        _moto_auth(endpoint, "inf")  # an earlier module's server may have left it on
        setup = dict(endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="setup", aws_secret_access_key="setup")
        s3_setup = boto3.client("s3", **setup)
        if BUCKET not in {b["Name"] for b in s3_setup.list_buckets().get("Buckets", [])}:
            s3_setup.create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **setup)
        user = f"publisher-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="ads", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        _moto_auth(endpoint, "0")
        try:
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id=key["AccessKeyId"],
                                  aws_secret_access_key=key["SecretAccessKey"])
            yield SimpleNamespace(endpoint=endpoint, key_id=key["AccessKeyId"],
                                  secret=key["SecretAccessKey"], client=client)
        finally:
            _moto_auth(endpoint, "inf")
            server.stop()



# ---------------------------------------------------------------- GCS (gcp-storage-emulator)

GCS_BUCKET = "cloops-demo.firebasestorage.app"


@pytest.fixture(scope="module")
def gcs():
    """GCS on 127.0.0.1 with a Firebase-style bucket: gcp-storage-emulator with the request
    preconditions (``ifGenerationMatch``) it lacks added (tests/fakes/gcs_server.py).
    ``options``: gcsfs's storage options for it."""
    pytest.importorskip("gcp_storage_emulator")
    with pytest.MonkeyPatch.context() as mp:
        _no_cloud_lookups(mp)
        # gcsfs 2026.x picks its class at import; the experimental one asks Google's
        # storage-control API (not the emulator) for the bucket type
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import gcsfs
        if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
            pytest.skip("gcsfs was imported with its experimental class: it would call Google")
        from tests.fakes.gcs_server import gcs_server

        with gcs_server(GCS_BUCKET) as srv:
            srv.options = {"endpoint_url": srv.endpoint, "token": "anon",
                           "project": "cloops-demo"}
            yield srv
