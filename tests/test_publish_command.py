"""``doit publish`` against a real S3 server on 127.0.0.1 (moto, IAM auth enforced; the fixture
of tests/conftest.py) and a local folder: completed stories arrive whole with their ad
components and an index per template; a re-run uploads nothing; drafts, failed stories and
stories that need review are left out, saying why; a wrong credential is one clear error."""

from __future__ import annotations

import json

import pytest

from cloops.core.fileio import sha256_file

from conftest import BUCKET, WRONG_SECRET, make_project
from test_rebuild_rules import FAKE

KIDS = "comic-books-kids"
PUBLISHED = "noah-s-ark"          # built with the fake paid backends: completed
REVIEW = "david-and-goliath"      # completed, but its reading-level check fails: needs review
DRAFT = "jonah-and-the-whale"     # built offline: pending
FAILED = "the-nativity"           # marked failed


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    project = make_project(root, [PUBLISHED, REVIEW, DRAFT, FAILED], templates=(KIDS,), ads=True)
    project.edit_config(lambda c: c["ads"].update(hookDurationS=1, minS=2, maxS=3), KIDS)
    run = project.doit(f"build:{PUBLISHED}", f"build:{REVIEW}", env=FAKE)
    assert run.rc == 0, run.out + run.err
    draft = project.doit(f"build:{DRAFT}")
    assert draft.rc == 0, draft.out + draft.err
    backlog = project.backlog(KIDS)
    for it in backlog["items"]:
        if it["id"] == FAILED:
            it.update(status="failed", error="step 'image' #2: the model refused")
    project.write_backlog(backlog, KIDS)
    status = {it["id"]: it["status"] for it in project.backlog(KIDS)["items"]}
    assert status == {PUBLISHED: "completed", REVIEW: "completed", DRAFT: "pending",
                      FAILED: "failed"}
    evals = json.loads((project.story_dir(REVIEW, KIDS) / "evals.json").read_text())
    assert evals["needsReview"] is True
    return project


def expected_files(project, story: str) -> dict[str, bytes]:
    """Object key (under the template) -> bytes: the bundle, the manifest, the tags and every
    file of every component (clip, poster, overlays, word timings)."""
    sdir = project.story_dir(story, KIDS)
    out = {f"{story}/bundle/{p.name}": p.read_bytes() for p in (sdir / "bundle").iterdir()}
    manifest = json.loads((sdir / "ads" / "manifest.json").read_text())
    for rel in ["ads/manifest.json", "ads/tags.json", *(f for c in manifest["components"]
                                                        for f in c["files"])]:
        out[f"{story}/{rel}"] = (sdir / rel).read_bytes()
    return out


def uploads(out: str) -> list[str]:
    """The objects a publish says it uploaded (one line each: ``uploaded <key> (<n> bytes)``)."""
    return [line.split()[1] for line in out.splitlines() if line.startswith("  uploaded ")]


def aws(s3, **over) -> dict:
    env = {**FAKE, "AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    env.update(over)
    return env


def test_publish_to_s3_uploads_completed_stories_once(built, s3):
    project = built
    prefix = "adloops"
    project.edit_config(lambda c: c.update(publish={
        "url": f"s3://{BUCKET}/{prefix}", "storageOptions": {"endpoint_url": s3.endpoint}}), KIDS)
    first = project.doit("publish", env=aws(s3))
    assert first.rc == 0, first.out + first.err
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    want = expected_files(project, PUBLISHED)
    assert {f"{prefix}/{KIDS}/{k}" for k in want} | {f"{prefix}/{KIDS}/index.json",
                                                    f"{prefix}/.cloops-publish.json"} == keys
    for key, data in want.items():
        got = s3.client.get_object(Bucket=BUCKET, Key=f"{prefix}/{KIDS}/{key}")["Body"].read()
        assert got == data, key
    index = json.loads(s3.client.get_object(
        Bucket=BUCKET, Key=f"{prefix}/{KIDS}/index.json")["Body"].read())
    assert index["templateId"] == KIDS and [s["id"] for s in index["stories"]] == [PUBLISHED]
    story = index["stories"][0]
    assert story["bundle"]["storyData"] == f"{PUBLISHED}/bundle/story-data.json"
    assert story["needsReview"] is False
    types = sorted(c["type"] for c in story["ads"]["components"])
    assert types == ["body", "cta", "cta", "hook", "hook", "hook", "voice"]
    for c in story["ads"]["components"]:
        path = project.root / "build" / KIDS / c["file"]
        assert sha256_file(path) == c["sha256"]
    # every other story is left out, saying why
    assert f"skipped {KIDS}/{REVIEW}: needs review" in first.out
    assert f"skipped {KIDS}/{DRAFT}: not completed (pending" in first.out
    assert f"skipped {KIDS}/{FAILED}: failed" in first.out
    assert "published 1 stories" in first.out

    again = project.doit("publish", env=aws(s3))
    assert again.rc == 0, again.out + again.err
    assert uploads(again.out) == [] and "0 objects uploaded" in again.out

    # --force publishes the story that needs review; the index lists both, in backlog order
    forced = project.doit("publish", "--force", REVIEW, env=aws(s3))
    assert forced.rc == 0, forced.out + forced.err
    index = json.loads(s3.client.get_object(
        Bucket=BUCKET, Key=f"{prefix}/{KIDS}/index.json")["Body"].read())
    assert [(s["id"], s["needsReview"]) for s in index["stories"]] == [
        (PUBLISHED, False), (REVIEW, True)]
    for key, data in expected_files(project, REVIEW).items():
        got = s3.client.get_object(Bucket=BUCKET, Key=f"{prefix}/{KIDS}/{key}")["Body"].read()
        assert got == data, key
    assert uploads(forced.out) and not [u for u in uploads(forced.out) if PUBLISHED in u]

    # a story named that cannot be published says why and exits 1
    draft = project.doit("publish", DRAFT, env=aws(s3))
    assert draft.rc == 1 and "not completed" in draft.out


def test_a_wrong_credential_is_one_clear_error_without_the_secret(built, s3):
    project = built
    project.edit_config(lambda c: c.update(publish={
        "url": f"s3://{BUCKET}/denied-command", "storageOptions": {"endpoint_url": s3.endpoint}}), KIDS)
    run = project.doit("publish", env=aws(s3, AWS_SECRET_ACCESS_KEY=WRONG_SECRET))
    assert run.rc == 2
    errors = [line for line in run.err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "AWS_SECRET_ACCESS_KEY" in errors[0] and "Fix:" in errors[0]
    assert "Traceback" not in run.err
    for secret in (WRONG_SECRET, s3.secret):
        assert secret not in run.out + run.err
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix="denied-command/")
    assert listed.get("KeyCount", 0) == 0


def test_publish_to_the_default_folder(built):
    project = built
    project.edit_config(lambda c: c.pop("publish", None), KIDS)
    run = project.doit("publish", PUBLISHED)
    assert run.rc == 0, run.out + run.err
    dest = project.root / "build" / "published" / KIDS
    for key, data in expected_files(project, PUBLISHED).items():
        assert (dest / key).read_bytes() == data
    index = json.loads((dest / "index.json").read_text())
    assert [s["id"] for s in index["stories"]] == [PUBLISHED]
    assert uploads(project.doit("publish", PUBLISHED).out) == []


def test_publish_task_names_one_story_as_build_does(built, tmp_path):
    """``doit publish:<id>`` publishes that story as ``doit publish <id>`` does, builds nothing,
    fails (exit 1) for a story it leaves out, and an unknown id gets the nearest ids."""
    project = built
    dest = tmp_path / "as-task"
    project.edit_config(lambda c: c.update(publish={"url": str(dest)}), KIDS)
    run = project.doit(f"publish:{PUBLISHED}")
    assert run.rc == 0, run.out + run.err
    for key, data in expected_files(project, PUBLISHED).items():
        assert (dest / KIDS / key).read_bytes() == data
    index = json.loads((dest / KIDS / "index.json").read_text())
    assert [s["id"] for s in index["stories"]] == [PUBLISHED]
    again = project.doit(f"publish:{KIDS}/{PUBLISHED}")
    assert again.rc == 0 and uploads(again.out) == [] and "0 objects uploaded" in again.out
    # nothing was built: the draft stays a draft and is left out, saying why
    draft = project.doit(f"publish:{DRAFT}")
    assert draft.rc == 1 and f"skipped {KIDS}/{DRAFT}: not completed" in draft.out
    assert not (dest / KIDS / DRAFT).exists()
    unknown = project.doit("publish:noah-s-arc")
    assert unknown.rc == 2 and "did you mean publish:noah-s-ark" in unknown.err
    assert "Traceback" not in unknown.err
