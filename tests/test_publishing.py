"""Publishing: against a real S3 server on 127.0.0.1 (moto's ThreadedMotoServer, through s3fs,
with its IAM authentication switched on so a wrong key is refused), a local folder, and a GCS
emulator on 127.0.0.1 (gcp-storage-emulator, through gcsfs).

Every file must arrive with the right bytes; a second publish uploads nothing; a changed file
is the only upload; a wrong credential gives one clear error naming the variables and no secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

from cloops.core.errors import InputError
from cloops.services.storage import (MANIFEST_KEY, PublishAuthError, PublishError, publish,
                               redact_url)

from conftest import BUCKET, WRONG_SECRET, _no_cloud_lookups  # the S3 server: conftest's s3


@pytest.fixture
def aws_env(s3, monkeypatch):
    _no_cloud_lookups(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    return s3


@pytest.fixture
def bundle(tmp_path) -> dict[str, Path]:
    """Files of one story as the engine would hand them over: key -> local path."""
    src = tmp_path / "src"
    files = {"noah-s-ark/bundle/1.jpg": os.urandom(3000),
             "noah-s-ark/bundle/story-data.json": b'{"storyId": "noah-s-ark"}\n',
             "noah-s-ark/ads/hook-1.mp4": os.urandom(70_000),
             "noah-s-ark/ads/body.vtt": b"WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.000\nHi\n"}
    out = {}
    for key, data in files.items():
        path = src / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[key] = path
    return out


INDEX = {"templateId": "comic-books-kids", "stories": [{"id": "noah-s-ark"}]}


def s3_bytes(s3, key: str) -> bytes:
    return s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


# --------------------------------------------------------------------------- S3

def test_s3_every_file_arrives_then_a_rerun_uploads_nothing(aws_env, bundle, tmp_path):
    s3 = aws_env
    url = f"s3://{BUCKET}/run1"
    opts = {"endpoint_url": s3.endpoint}
    lines: list[str] = []
    first = publish(bundle, url, index=INDEX, storage_options=opts, log=lines.append)
    assert first.uploaded == [*bundle, "index.json"]  # the index last
    assert first.record_written and first.unchanged == []
    for key, path in bundle.items():
        assert s3_bytes(s3, f"run1/{key}") == path.read_bytes()
        head = s3.client.head_object(Bucket=BUCKET, Key=f"run1/{key}")
        assert head["Metadata"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s3.client.head_object(Bucket=BUCKET, Key="run1/noah-s-ark/ads/hook-1.mp4")[
        "ContentType"] == "video/mp4"
    assert json.loads(s3_bytes(s3, "run1/index.json")) == INDEX
    record = json.loads(s3_bytes(s3, f"run1/{MANIFEST_KEY}"))
    assert set(record["objects"]) == {*bundle, "index.json"}
    assert len(lines) == 5 and not any(s3.secret in ln for ln in lines)

    second = publish(bundle, url, index=INDEX, storage_options=opts)
    assert second.uploaded == [] and not second.record_written
    assert sorted(second.unchanged) == sorted([*bundle, "index.json"])

    bundle["noah-s-ark/bundle/1.jpg"].write_bytes(b"a new page image")
    third = publish(bundle, url, index=INDEX, storage_options=opts)
    assert third.uploaded == ["noah-s-ark/bundle/1.jpg"]
    assert s3_bytes(s3, "run1/noah-s-ark/bundle/1.jpg") == b"a new page image"

    # an object deleted behind cloops' back is uploaded again, whatever the record says
    s3.client.delete_object(Bucket=BUCKET, Key="run1/noah-s-ark/ads/body.vtt")
    fourth = publish(bundle, url, index=INDEX, storage_options=opts)
    assert fourth.uploaded == ["noah-s-ark/ads/body.vtt"]


def test_s3_publishing_one_story_keeps_the_record_of_the_others(aws_env, bundle, tmp_path):
    opts = {"endpoint_url": aws_env.endpoint}
    url = f"s3://{BUCKET}/run2"
    publish(bundle, url, storage_options=opts)
    other = tmp_path / "other.jpg"
    other.write_bytes(b"jonah")
    publish({"jonah/bundle/1.jpg": other}, url, storage_options=opts)
    again = publish(bundle, url, storage_options=opts)
    assert again.uploaded == []


@pytest.mark.parametrize("which", ["secret", "key id"])
def test_s3_wrong_credential_is_one_clear_error_without_the_secret(aws_env, bundle,
                                                                   monkeypatch, which):
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    lines: list[str] = []
    with pytest.raises(PublishAuthError) as err:
        publish(bundle, f"s3://{BUCKET}/denied", index=INDEX,
                storage_options={"endpoint_url": aws_env.endpoint}, log=lines.append)
    message = str(err.value)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "Fix:" in message and f"s3://{BUCKET}/denied" in message
    shown = "".join(traceback.format_exception(err.value)) + "".join(lines)
    for secret in (WRONG_SECRET, aws_env.secret):
        assert secret not in shown
    assert err.value.__cause__ is None and err.value.__suppress_context__
    listed = aws_env.client.list_objects_v2(Bucket=BUCKET, Prefix="denied/")
    assert listed.get("KeyCount", 0) == 0  # nothing was written


def test_s3_secret_in_storage_options_is_not_leaked_either(aws_env, bundle, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(PublishAuthError) as err:
        publish(bundle, f"s3://{BUCKET}/denied", storage_options={
            "endpoint_url": aws_env.endpoint, "key": aws_env.key_id, "secret": WRONG_SECRET})
    assert WRONG_SECRET not in "".join(traceback.format_exception(err.value))


def test_s3_missing_bucket_says_so(aws_env, bundle):
    with pytest.raises(PublishError, match="not found.*create the bucket") as err:
        publish(bundle, "s3://no-such-bucket-here/x",
                storage_options={"endpoint_url": aws_env.endpoint})
    assert not isinstance(err.value, PublishAuthError)


# --------------------------------------------------------------------------- local folder

def test_local_folder_publish_skips_unchanged_and_writes_the_index_last(bundle, tmp_path):
    dest = tmp_path / "published"
    first = publish(bundle, str(dest), index=INDEX)
    assert first.uploaded[-1] == "index.json" and len(first.uploaded) == 5
    for key, path in bundle.items():
        assert (dest / key).read_bytes() == path.read_bytes()
    assert json.loads((dest / "index.json").read_text()) == INDEX
    assert (dest / MANIFEST_KEY).is_file()
    record_before = (dest / MANIFEST_KEY).read_bytes()
    again = publish(bundle, f"file://{dest}", index=INDEX)
    assert again.uploaded == [] and (dest / MANIFEST_KEY).read_bytes() == record_before
    changed_index = dict(INDEX, stories=[{"id": "noah-s-ark"}, {"id": "jonah"}])
    third = publish(bundle, str(dest), index=changed_index)
    assert third.uploaded == ["index.json"]
    assert not list(dest.rglob(".*.tmp"))


def test_local_failure_leaves_no_partial_file_and_a_rerun_finishes(bundle, tmp_path,
                                                                   monkeypatch):
    import cloops.services.storage as publishing

    dest = tmp_path / "published"
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # the disk fills up on the third object
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(publishing.os, "replace", failing_replace)
    with pytest.raises(PublishError, match="uploading noah-s-ark/ads/hook-1.mp4 failed "
                                           r"\(No space left on device\).*writable"):
        publish(bundle, str(dest), index=INDEX)
    assert not (dest / "noah-s-ark/ads/hook-1.mp4").exists()
    assert not list(dest.rglob(".*.tmp"))
    assert not (dest / MANIFEST_KEY).exists() and not (dest / "index.json").exists()
    monkeypatch.setattr(publishing.os, "replace", real_replace)
    rerun = publish(bundle, str(dest), index=INDEX)
    # the record was never written, so nothing is vouched for: all are checked and written
    assert rerun.uploaded[-1] == "index.json"
    assert (dest / "noah-s-ark/ads/hook-1.mp4").read_bytes() == \
        bundle["noah-s-ark/ads/hook-1.mp4"].read_bytes()


def test_other_fsspec_backends_go_through_a_temp_key(bundle):
    """memory:// stands for any backend without atomic PUTs: temp key, then move."""
    import fsspec

    url = f"memory://cloops-test-{os.getpid()}/ads"
    first = publish(bundle, url, index=INDEX)
    assert first.uploaded[-1] == "index.json"
    fs = fsspec.filesystem("memory")
    root = f"/cloops-test-{os.getpid()}/ads"
    for key, path in bundle.items():
        assert fs.cat_file(f"{root}/{key}") == path.read_bytes()
    assert not [p for p in fs.find(root) if p.endswith(".tmp")]
    assert publish(bundle, url, index=INDEX).uploaded == []
    fs.rm(f"/cloops-test-{os.getpid()}", recursive=True)


def test_bad_keys_and_missing_files_are_input_errors(bundle, tmp_path):
    path = next(iter(bundle.values()))
    for key in ("../escape.jpg", "/abs.jpg", "a//b.jpg", "a/./b", MANIFEST_KEY, ""):
        with pytest.raises(InputError):
            publish({key: path}, str(tmp_path / "out"))
    with pytest.raises(InputError, match="does not exist"):
        publish({"a.jpg": tmp_path / "nope.jpg"}, str(tmp_path / "out"))
    with pytest.raises(InputError, match="publish.url"):
        publish({"a.jpg": path}, "nosuchscheme://bucket/x")
    with pytest.raises(InputError, match="index"):
        publish({"a.jpg": path}, str(tmp_path / "out"), index="index.json")
    assert not (tmp_path / "out").exists()


def test_redact_url():
    assert redact_url("ftp://user:pw@host/x") == "ftp://***@host/x"
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"


# --------------------------------------------------------------------------- GCS emulator

@pytest.fixture(scope="module")
def gcs():
    """gcp-storage-emulator on 127.0.0.1 with a Firebase-style bucket."""
    pytest.importorskip("gcp_storage_emulator")
    with pytest.MonkeyPatch.context() as mp:
        _no_cloud_lookups(mp)
        # gcsfs 2026.x picks its class at import; the experimental one asks Google's
        # storage-control API (not the emulator) for the bucket type
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import gcsfs
        if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
            pytest.skip("gcsfs was imported with its experimental class: it would call Google")
        from gcp_storage_emulator.server import create_server

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        bucket = "cloops-demo.firebasestorage.app"
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
        server.start()
        try:
            yield SimpleNamespace(endpoint=f"http://127.0.0.1:{port}", bucket=bucket)
        finally:
            server.stop()


def test_gcs_firebase_bucket_publish_and_rerun(gcs, bundle):
    import gcsfs

    opts = {"endpoint_url": gcs.endpoint, "token": "anon", "project": "cloops-demo"}
    url = f"gs://{gcs.bucket}/ads"
    first = publish(bundle, url, index=INDEX, storage_options=opts)
    assert first.uploaded == [*bundle, "index.json"]
    fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **opts)
    for key, path in bundle.items():
        assert fs.cat_file(f"{gcs.bucket}/ads/{key}") == path.read_bytes()
    info = fs.info(f"{gcs.bucket}/ads/noah-s-ark/ads/hook-1.mp4")
    assert info["contentType"] == "video/mp4"
    assert info["metadata"]["sha256"] == hashlib.sha256(
        bundle["noah-s-ark/ads/hook-1.mp4"].read_bytes()).hexdigest()
    second = publish(bundle, url, index=INDEX, storage_options=opts)
    assert second.uploaded == [] and not second.record_written
