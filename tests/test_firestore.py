"""Firestore, against a real emulator on 127.0.0.1: ``doit publish`` writes a document per story
and per ad component (only those that changed; withdrawn, never deleted), and a collection is a
backlog (built, its statuses written back under a precondition that keeps an app's edit).

The emulator is the npm package ``@firestore-emulator/server`` (tests/firestore/: ``npm ci``
there; ``.ci/run`` does it) run by Debian's ``node``; the official ``google-cloud-firestore``
client reaches it through ``FIRESTORE_EMULATOR_HOST``. Without node or the package the tests
are skipped, saying which.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from cloops.core.fileio import sha256_file
from cloops.data import firestore_backlog as fb
from cloops.data import project as project_mod
from cloops.services.firestore import (Firestore, FirestoreAuthError, FirestoreError, _calls,
                                       document_size)

from conftest import REPO, _no_cloud_lookups, make_project
from test_rebuild_rules import FAKE

EMULATOR_DIR = REPO / "tests" / "firestore"
KIDS = "comic-books-kids"
STANDARD = "comic-books-standard"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator on 127.0.0.1 and a free port: ``.host`` is ``127.0.0.1:<port>``."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no node: apt-get install nodejs npm, then npm ci in tests/firestore "
                    "(.ci/run does both)")
    package = EMULATOR_DIR / "node_modules" / "@firestore-emulator" / "server"
    npm = shutil.which("npm")
    if not package.is_dir() and npm is not None:
        # the README's test command on a machine with node: install the pinned package once
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=EMULATOR_DIR, capture_output=True, timeout=600)
    if not package.is_dir():
        pytest.skip("@firestore-emulator/server is not installed and `npm ci` in "
                    "tests/firestore could not install it (no npm, or no registry); "
                    ".ci/run installs nodejs, npm and the package")
    log = tmp_path_factory.mktemp("firestore") / "emulator.log"
    err = open(log, "w")
    proc = subprocess.Popen([node, "start.mjs", "0", "--watch-stdin"], cwd=EMULATOR_DIR, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err, text=True)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    if not first or not first[0].startswith("listening "):
        proc.kill()
        pytest.fail(f"the Firestore emulator did not start: {log.read_text()[:500]}")
    host = f"127.0.0.1:{int(first[0].split()[1])}"
    try:
        yield SimpleNamespace(host=host)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        err.close()


@pytest.fixture
def fs(emulator, monkeypatch):
    """The emulator for this process; a project id of the test's own (isolated data)."""
    _no_cloud_lookups(monkeypatch)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")  # not gRPC's notes on the emulator closing
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    fb._CLIENTS.clear()
    fb._SEEN.clear()
    project_mod.reset()
    pid = f"demo-{uuid.uuid4().hex[:10]}"
    yield SimpleNamespace(host=emulator.host, project=pid, db=Firestore(pid))
    fb._CLIENTS.clear()
    fb._SEEN.clear()
    project_mod.reset()


def docs(fs, collection: str) -> dict[str, dict]:
    return {s.id: s.data for s in fs.db.stream(collection)}


# --------------------------------------------------------------------------- the publish sink

PUBLISHED, REVIEW, DRAFT, FAILED = ("noah-s-ark", "david-and-goliath", "jonah-and-the-whale",
                                    "the-nativity")


def fake_story(project, story: str, *, extra_type: str | None = None) -> None:
    """A completed story's files as a build leaves them (cheaply: no render), with the manifest
    shapes the ad kit makes: ``files`` lists, cta/voice/audio components."""
    sdir = project.story_dir(story, KIDS)
    (sdir / "bundle").mkdir(parents=True, exist_ok=True)
    (sdir / "ads").mkdir(parents=True, exist_ok=True)
    (sdir / "bundle" / "story-data.json").write_text(json.dumps({"storyId": story}))
    (sdir / "bundle" / "1.jpg").write_bytes(b"\xff\xd8 page 1 " + story.encode())
    files = {"ads/hook-1.mp4": b"hook", "ads/hook-1-poster.jpg": b"poster",
             "ads/body.mp4": b"body", "ads/body.vtt": b"WEBVTT\n", "ads/body.srt": b"1\n",
             "ads/cta.mp4": b"cta", "ads/voice.m4a": b"voice", "ads/music.m4a": b"music",
             "ads/sticker.png": b"sticker"}
    for rel, data in files.items():
        (sdir / rel).write_bytes(data + story.encode())

    def rec(cid, kind, file, more=(), **kw):
        return {"id": cid, "type": kind, "file": file, "sha256": sha256_file(sdir / file),
                "files": [file, *more], "durationS": 3.0,
                "source": {"template": KIDS, "story": story, "handEdited": False,
                           "artifacts": {"images/1.jpg": "ab" * 32, "ads/hooks.json#1": "cd" * 8}},
                **kw}
    components = [rec("hook-1", "hook", "ads/hook-1.mp4", ["ads/hook-1-poster.jpg"],
                      hookText="Would you build a boat?"),
                  {**rec("body", "body", "ads/body.mp4"),  # the older shape: captions, no files
                   "files": None, "captions": {"vtt": "ads/body.vtt", "srt": "ads/body.srt"}},
                  rec("cta-1", "cta", "ads/cta.mp4", button="LEARN_MORE"),
                  rec("voice", "voice", "ads/voice.m4a"),
                  rec("music", "audio", "ads/music.m4a")]
    if extra_type:
        components.append(rec("sticker-1", extra_type, "ads/sticker.png"))
    manifest = {"format": 1, "template": KIDS, "story": story, "title": story.title(),
                "tags": {"mood": "hopeful", "themes": ["trust"]}, "components": components}
    (sdir / "ads" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (sdir / "ads" / "tags.json").write_text(json.dumps(manifest["tags"]))


@pytest.fixture
def kids(tmp_path, fs):
    """A kids project with four stories: one completed and one that needs review (both with
    fake built files), a draft (pending) and a failed one; ``publish.firestore`` set."""
    project = make_project(tmp_path, [PUBLISHED, REVIEW, DRAFT, FAILED], templates=(KIDS,),
                           ads=True)
    backlog = project.backlog(KIDS)
    status = {PUBLISHED: "completed", REVIEW: "completed", DRAFT: "pending", FAILED: "failed"}
    for it in backlog["items"]:
        it["status"] = status[it["id"]]
        if it["status"] == "failed":
            it["error"] = "step 'image' #2: the model refused"
    project.write_backlog(backlog, KIDS)
    for story in (PUBLISHED, REVIEW, DRAFT):
        fake_story(project, story)
    (project.story_dir(REVIEW, KIDS) / "evals.json").write_text(json.dumps(
        {"needsReview": True, "reviewReasons": ["reading level 7.1 over 3"]}))
    project.edit_config(lambda c: c.update(publish={
        "url": "published", "firestore": {"project": fs.project}}), KIDS)
    return project


def publish(project, keys=None, **kw):
    from cloops.steer.publish import publish_stories
    project_mod.reset()
    proj = project_mod.load_project(project.root)
    return publish_stories(proj, keys, **kw)


def test_publish_writes_a_document_per_story_and_component(kids, fs):
    out = publish(kids)
    assert [p.story_id for p in out.published] == [PUBLISHED]
    stories = docs(fs, "stories")
    assert set(stories) == {f"{KIDS}~{PUBLISHED}"}  # no draft, no failed, no needs-review
    story = stories[f"{KIDS}~{PUBLISHED}"]
    base = (kids.root / "published" / KIDS / PUBLISHED).as_uri()
    sdir = kids.story_dir(PUBLISHED, KIDS)
    assert story["title"] == "Noah's Ark" and story["template"] == KIDS
    assert story["status"] == "published" and story["tags"]["mood"] == "hopeful"
    assert story["storyDataUrl"] == f"{base}/bundle/story-data.json"
    assert story["bundleUrl"] == f"{base}/bundle/"
    assert sorted(story["bundleFiles"]) == [f"{base}/bundle/1.jpg",
                                            f"{base}/bundle/story-data.json"]
    assert story["manifestSha256"] == sha256_file(sdir / "ads" / "manifest.json")
    assert story["publishedAt"].endswith("Z")
    want = {"hooks": "hook-1", "bodies": "body", "ctas": "cta-1", "voices": "voice",
            "audios": "music"}
    assert {r["collection"]: r["id"] for r in story["components"]} == want
    manifest = json.loads((sdir / "ads" / "manifest.json").read_text())
    for collection, cid in want.items():
        got = docs(fs, collection)
        assert set(got) == {f"{KIDS}~{PUBLISHED}~{cid}"}, collection
        doc = got[f"{KIDS}~{PUBLISHED}~{cid}"]
        record = next(c for c in manifest["components"] if c["id"] == cid)
        for k, v in record.items():
            assert doc[k] == v, (cid, k)
        assert doc["url"] == f"{base}/{record['file']}"
        assert doc["sourceDigests"] == record["source"]["artifacts"]
        assert doc["status"] == "published" and doc["publishedAt"] == story["publishedAt"]
        for f in doc["fileUrls"]:  # every file of the component is there, at its URL
            assert Path(f["url"].removeprefix("file://")).read_bytes() == \
                (sdir / f["file"]).read_bytes()
    files = {f["file"] for f in docs(fs, "hooks")[f"{KIDS}~{PUBLISHED}~hook-1"]["fileUrls"]}
    assert files == {"ads/hook-1.mp4", "ads/hook-1-poster.jpg"}
    files = {f["file"] for f in docs(fs, "bodies")[f"{KIDS}~{PUBLISHED}~body"]["fileUrls"]}
    assert files == {"ads/body.mp4", "ads/body.vtt", "ads/body.srt"}
    assert out.documents[0][1].written and out.documents[0][1].unchanged == 0


def test_a_second_publish_writes_no_document(kids, fs):
    publish(kids)
    before = {c: docs(fs, c) for c in ("stories", "hooks", "bodies", "ctas")}
    out = publish(kids)
    report = out.documents[0][1]
    assert report.written == [] and report.withdrawn == [] and report.unchanged == 6
    assert {c: docs(fs, c) for c in before} == before  # publishedAt too
    # one changed component: that document alone (and the story's, whose digest moved)
    sdir = kids.story_dir(PUBLISHED, KIDS)
    manifest = json.loads((sdir / "ads" / "manifest.json").read_text())
    manifest["components"][2]["button"] = "WATCH_MORE"
    (sdir / "ads" / "manifest.json").write_text(json.dumps(manifest))
    report = publish(kids).documents[0][1]
    assert sorted(report.written) == [f"ctas/{KIDS}~{PUBLISHED}~cta-1", f"stories/{KIDS}~{PUBLISHED}"]
    # a component the manifest no longer lists: its document is withdrawn, not deleted
    del manifest["components"][3]
    (sdir / "ads" / "manifest.json").write_text(json.dumps(manifest))
    report = publish(kids).documents[0][1]
    assert report.withdrawn == [f"voices/{KIDS}~{PUBLISHED}~voice"]
    assert docs(fs, "voices")[f"{KIDS}~{PUBLISHED}~voice"]["status"] == "withdrawn"


def test_a_published_story_that_fails_its_evals_is_withdrawn(kids, fs):
    publish(kids, force=True)  # the needs-review story too
    assert set(docs(fs, "stories")) == {f"{KIDS}~{PUBLISHED}", f"{KIDS}~{REVIEW}"}
    # now its evals fail (without --force), and the other story fails a rebuild
    backlog = kids.backlog(KIDS)
    for it in backlog["items"]:
        if it["id"] == PUBLISHED:
            it.update(status="failed", error="step 'voice': refused")
    kids.write_backlog(backlog, KIDS)
    report = publish(kids).documents[0][1]
    assert len(report.withdrawn) == 12 and report.written == []
    for c in ("stories", "hooks", "bodies", "ctas", "voices", "audios"):
        for doc_id, doc in docs(fs, c).items():
            assert doc["status"] == "withdrawn", (c, doc_id)  # kept, never deleted
            assert doc["withdrawnReason"].startswith(("failed", "needs review"))
    assert docs(fs, "stories")[f"{KIDS}~{REVIEW}"]["withdrawnReason"].startswith("needs review")
    assert publish(kids).documents[0][1].withdrawn == []  # once
    assert not docs(fs, "stories").get(f"{KIDS}~{DRAFT}")


def test_collections_are_configurable_and_new_types_need_no_code(kids, fs):
    fake_story(kids, PUBLISHED, extra_type="sticker")
    kids.edit_config(lambda c: c["publish"]["firestore"].update(
        collections={"hook": "adHooks", "story": "comics"}), KIDS)
    publish(kids, [(KIDS, PUBLISHED)])
    assert set(docs(fs, "comics")) == {f"{KIDS}~{PUBLISHED}"}
    assert set(docs(fs, "adHooks")) == {f"{KIDS}~{PUBLISHED}~hook-1"}
    assert set(docs(fs, "stickers")) == {f"{KIDS}~{PUBLISHED}~sticker-1"}
    assert docs(fs, "stories") == {} and docs(fs, "hooks") == {}


def test_a_document_over_one_mib_is_refused_before_any_write(fs):
    big = {"text": "x" * 1_100_000}
    assert document_size("c/d", big) > 1_048_576
    with pytest.raises(FirestoreError, match="1 MiB"):
        fs.db.write([("c", "small", {"a": 1}), ("c", "big", big)])
    assert docs(fs, "c") == {}
    assert fs.db.write([("c", f"d{i}", {"i": i}) for i in range(620)]) == 620  # two commits
    assert len(docs(fs, "c")) == 620


def test_a_denied_permission_is_one_clear_error_without_the_secret():
    from google.api_core import exceptions
    secret = "ya29.SECRET-token-5f4e3d"
    with pytest.raises(FirestoreAuthError) as err:
        with _calls("my-app", "publish.firestore.project in templates/x/config.json", "writing"):
            raise exceptions.PermissionDenied(f"Missing or insufficient permissions {secret}")
    msg = str(err.value)
    assert "publish.firestore.project" in msg and "GOOGLE_APPLICATION_CREDENTIALS" in msg
    assert secret not in msg and "my-app" in msg


# --------------------------------------------------------------------------- the backlog

def story_doc(title: str, status: str = "pending") -> dict:
    return {"status": status, "input": {"title": title, "summary": f"{title}, told simply.",
                                        "keyMoments": ["a beginning", "an end"]},
            "completedAt": None, "error": None}


def test_a_collection_is_a_backlog(tmp_path, fs):
    """Built through doit: the pending story is built and its status arrives in its document;
    a malformed document stops a full run with a clear error and changes nothing, while
    ``doit build:<id>`` reads only that story's document."""
    project = make_project(tmp_path, [], templates=())
    url = f"firestore://{fs.project}/stories"
    project.edit_config(lambda c: c.update(datasource=url), STANDARD)
    fs.db.write([("stories", "noah-s-ark", story_doc("Noah's Ark")),
                 ("stories", "creation", story_doc("The Creation", "completed")),
                 ("stories", "bad-story", {"status": "pending", "input": {"summary": "no title",
                                                                         "keyMoments": ["x"]}})])
    before = docs(fs, "stories")
    env = {**FAKE, "FIRESTORE_EMULATOR_HOST": fs.host}
    run = project.doit(env=env)
    assert run.rc == 2, run.out + run.err
    assert f"{url}/bad-story" in run.err and "input.title" in run.err
    assert docs(fs, "stories") == before  # nothing written
    run = project.doit("build:noah-s-ark", env=env)
    assert run.rc == 0, run.out + run.err
    after = docs(fs, "stories")
    assert after["noah-s-ark"]["status"] == "completed"
    assert after["noah-s-ark"]["completedAt"].endswith("Z") and after["noah-s-ark"]["error"] is None
    assert after["creation"] == before["creation"] and after["bad-story"] == before["bad-story"]
    assert (project.story_dir("noah-s-ark") / "bundle" / "story-data.json").is_file()
    # the app fixes its document: a bare doit builds the pending stories, only those
    fs.db.write([("stories", "bad-story", story_doc("A Fixed Story"))])
    run = project.doit(env=env)
    assert run.rc == 0, run.out + run.err
    final = docs(fs, "stories")
    assert final["bad-story"]["status"] == "completed"
    assert final["creation"] == before["creation"]
    assert not project.story_dir("creation").exists()


def test_a_malformed_document_names_the_document_and_field(fs):
    url = f"firestore://{fs.project}/stories"
    fs.db.write([("stories", "ok", story_doc("Fine")),
                 ("stories", "broken", {"status": "done", "input": story_doc("x")["input"]})])
    with pytest.raises(fb.InputError) as err:
        fb.FirestoreBacklog(url, STANDARD).items
    assert f"{url}/broken" in str(err.value) and "status" in str(err.value)
    assert fb.FirestoreBacklog(url, STANDARD).get("ok").input["title"] == "Fine"
    assert docs(fs, "stories")["ok"] == story_doc("Fine")
    assert "field 'status'" in str(err.value)
    fs.db.write([("others", "Bad Id", story_doc("x"))])
    with pytest.raises(fb.InputError, match="not a slug"):
        fb.FirestoreBacklog(f"firestore://{fs.project}/others", STANDARD).items


def test_a_status_write_racing_an_edit_in_the_app_keeps_the_edit(fs, monkeypatch):
    url = f"firestore://{fs.project}/stories"
    fs.db.write([("stories", "noah-s-ark", story_doc("Noah's Ark")),
                 ("stories", "creation", story_doc("The Creation"))])
    backlog = fb.FirestoreBacklog(url, STANDARD)
    assert [it.id for it in backlog.items] == ["creation", "noah-s-ark"]
    # the run's own writes follow each other
    assert fb.set_status(url, "noah-s-ark", "in_progress", completed_at=None, error=None)
    assert not fb.set_status(url, "noah-s-ark", "in_progress", completed_at=None, error=None)
    # the app edits the summary while the story builds: the completion is not written
    edited = {**story_doc("Noah's Ark", "in_progress"),
              "input": {**story_doc("Noah's Ark")["input"], "summary": "Edited in the app."}}
    fs.db.write([("stories", "noah-s-ark", edited)])
    with pytest.raises(fb.EditedMeanwhile, match=r"input changed.*next run"):
        fb.set_status(url, "noah-s-ark", "completed", completed_at="2026-12-04T22:00:00Z",
                      error=None)
    assert docs(fs, "stories")["noah-s-ark"] == edited
    # the edit lands between the run's read and its write: the update-time precondition
    # refuses the write, the re-read sees the edit
    real_get = Firestore.get

    def get_then_edit(self, collection, doc_id):
        snap = real_get(self, collection, doc_id)
        if doc_id == "creation" and not getattr(get_then_edit, "done", False):
            get_then_edit.done = True
            fs.db.write([("stories", "creation", {**story_doc("The Creation"),
                                                  "input": {**story_doc("x")["input"],
                                                            "title": "Creation (app)"}})])
        return snap
    monkeypatch.setattr(Firestore, "get", get_then_edit)
    with pytest.raises(fb.EditedMeanwhile):
        fb.set_status(url, "creation", "in_progress", completed_at=None, error=None)
    assert docs(fs, "stories")["creation"]["input"]["title"] == "Creation (app)"
    assert docs(fs, "stories")["creation"]["status"] == "pending"


def test_doit_publish_says_what_the_documents_came_to(kids, fs):
    env = {"FIRESTORE_EMULATOR_HOST": fs.host}
    first = kids.doit("publish", env=env)
    assert first.rc == 0, first.out + first.err
    assert f"firestore {fs.project}/(default) ({KIDS}): 6 documents written, 0 unchanged" \
        in first.out
    again = kids.doit("publish", env=env)
    assert "0 documents written, 6 unchanged, 0 marked withdrawn" in again.out, again.out


@pytest.mark.parametrize("edit, field", [
    (lambda c: c.update(publish={"firestore": {"project": "Not A Project"}}),
     "publish.firestore.project"),
    (lambda c: c.update(publish={"firestore": {"project": "my-app", "collections":
                                               {"hook": "a/b"}}}),
     "publish.firestore.collections"),
    (lambda c: c.update(datasource="firestore://x/stories"), "datasource"),
])
def test_bad_firestore_settings_name_the_field(tmp_path, edit, field):
    project = make_project(tmp_path, ["noah-s-ark"])
    project.edit_config(edit, STANDARD)
    run = project.doit("list")
    assert run.rc == 2 and field in run.err and "config.json" in run.err, run.out + run.err


def test_a_failed_database_keeps_the_objects_and_a_rerun_writes_the_documents(kids, fs,
                                                                           monkeypatch):
    real_write = Firestore.write

    def refused(self, docs, **kw):
        raise FirestoreAuthError("Firestore project 'x': permission denied while writing.")
    monkeypatch.setattr(Firestore, "write", refused)
    with pytest.raises(FirestoreAuthError):
        publish(kids)
    story_data = kids.root / "published" / KIDS / PUBLISHED / "bundle" / "story-data.json"
    assert story_data.is_file() and docs(fs, "stories") == {}  # the objects are up, no document
    monkeypatch.setattr(Firestore, "write", real_write)
    out = publish(kids)
    assert sum(len(r.uploaded) for _t, r in out.reports) == 0  # nothing uploaded again
    assert len(out.documents[0][1].written) == 6
    assert set(docs(fs, "stories")) == {f"{KIDS}~{PUBLISHED}"}


@pytest.mark.parametrize("error, kind", [("PermissionDenied", FirestoreAuthError),
                                         ("Unauthenticated", FirestoreAuthError),
                                         ("NotFound", FirestoreError)])
def test_a_wrong_project_names_the_setting(error, kind):
    from google.api_core import exceptions
    with pytest.raises(kind) as err:
        with _calls("wrong-project", "publish.firestore.project in templates/x/config.json",
                    "reading stories"):
            raise getattr(exceptions, error)("The database (default) does not exist for "
                                             "project wrong-project")
    assert "publish.firestore.project" in str(err.value) and "wrong-project" in str(err.value)


def test_an_edit_in_the_app_during_a_doit_run_is_kept_and_the_run_says_so(tmp_path, fs):
    """A real run against the fake paid servers, held at its second call while the app edits
    the story's summary: the completion is not written, the run says why, the edit stays."""
    from tests.fakes.gate import Gate
    from test_robustness import env_for, fakes
    project = make_project(tmp_path, [], templates=())
    url = f"firestore://{fs.project}/stories"
    project.edit_config(lambda c: c.update(datasource=url), STANDARD)
    fs.db.write([("stories", "noah-s-ark", story_doc("Noah's Ark"))])
    gate = Gate()
    oa, rp = fakes(gate)
    with oa, rp:
        gate.hold_after(1)
        started = project.start("build:noah-s-ark", env={
            **env_for(oa, rp), "FIRESTORE_EMULATOR_HOST": fs.host, "GRPC_VERBOSITY": "ERROR"})
        assert gate.wait_held(60)
        during = docs(fs, "stories")["noah-s-ark"]
        assert during["status"] == "in_progress"
        edited = {**during, "input": {**during["input"], "summary": "Edited in the app."}}
        fs.db.write([("stories", "noah-s-ark", edited)])
        gate.release()
        run = started.finish(timeout=300)
    assert run.rc != 0
    assert "edited in the app while the run built it" in run.out + run.err
    assert docs(fs, "stories")["noah-s-ark"] == edited  # the edit and its status, untouched


def test_an_unreachable_emulator_is_a_clear_error_not_a_hang(monkeypatch):
    import socket
    import cloops.services.firestore as firestore_mod
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _no_cloud_lookups(monkeypatch)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")
    monkeypatch.setattr(firestore_mod, "RETRY_S", 1.0)
    fb._CLIENTS.clear()
    with pytest.raises(FirestoreError, match="FIRESTORE_EMULATOR_HOST") as err:
        fb.FirestoreBacklog("firestore://demo-cloops/stories", STANDARD).items
    assert "unreachable" in str(err.value)
    fb._CLIENTS.clear()


def test_no_credentials_is_one_clear_error(tmp_path, monkeypatch):
    _no_cloud_lookups(monkeypatch)  # NO_GCE_CHECK: no metadata-server lookup
    for name in ("FIRESTORE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    with pytest.raises(FirestoreAuthError) as err:
        Firestore("my-app-123", setting="publish.firestore.project in templates/x/config.json")
    msg = str(err.value)
    assert "publish.firestore.project" in msg and "GOOGLE_APPLICATION_CREDENTIALS" in msg
    assert "FIRESTORE_EMULATOR_HOST" in msg
