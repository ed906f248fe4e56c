"""Publishing: against a real S3 server on 127.0.0.1 (moto's ThreadedMotoServer, through s3fs,
with its IAM authentication switched on so a wrong key is refused), a local folder, and a GCS
emulator on 127.0.0.1 (gcp-storage-emulator with GCS's request preconditions added:
tests/fakes/gcs_server.py; through gcsfs).

Every file must arrive with the right bytes; a second publish uploads nothing; a changed file
is the only upload; a wrong credential gives one clear error naming the variables and no secret.
Publishers sharing a destination - at once, or with one's write landing between another's read
and write - keep each other's index entries and record (on S3, a folder and GCS).
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

from cloops.core.errors import InputError
from cloops.services.storage import (MANIFEST_KEY, PublishAuthError, PublishError, publish,
                               redact_url)

from conftest import BUCKET, WRONG_SECRET, _no_cloud_lookups  # servers: conftest's s3, gcs


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


# --------------------------------------------------------------------------- many publishers

ORDER = ["the-nativity", "jonah", "noah-s-ark", "baby-moses"]


def _story_files(root: Path, sid: str) -> dict[str, Path]:
    out = {}
    # (ending in text: gcp-storage-emulator's multipart parser drops a final "\r" of the bytes)
    for name, data in ((f"{sid}/bundle/1.jpg", os.urandom(2000) + b"end"),
                       (f"{sid}/bundle/story-data.json", json.dumps({"storyId": sid}).encode())):
        path = root / sid / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[f"t/{name}"] = path
    return out


def _merger(put: list[str], drop: tuple[str, ...] = ()):
    """What ``doit publish`` gives ``merge_index``: add ``put``, take ``drop`` out, keep the
    rest (cloops.steer.publish.merge_entries)."""
    from cloops.steer.publish import merge_entries
    return lambda current: merge_entries(current, "t", {s: {"id": s, "title": s} for s in put},
                                         set(drop), ORDER)[0]


@pytest.fixture(params=["s3", "folder", "gcs"])
def place(request, tmp_path):
    """One destination many publishers share: ``url``, ``options``, ``read(key)`` -> bytes or
    None."""
    if request.param == "s3":
        s3 = request.getfixturevalue("aws_env")
        url = f"s3://{BUCKET}/many-{os.urandom(4).hex()}"

        def read(key):
            try:
                return s3_bytes(s3, f"{url.split('/', 3)[3]}/{key}")
            except s3.client.exceptions.NoSuchKey:
                return None
        return SimpleNamespace(url=url, options={"endpoint_url": s3.endpoint}, read=read)
    if request.param == "gcs":
        gcs = request.getfixturevalue("gcs")
        import gcsfs
        url = f"gs://{gcs.bucket}/many-{os.urandom(4).hex()}"
        fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **gcs.options)

        def read(key):
            try:
                return fs.cat_file(f"{url[5:]}/{key}")
            except FileNotFoundError:
                return None
        return SimpleNamespace(url=url, options=gcs.options, read=read)
    root = tmp_path / "shared-folder"

    def read(key):
        return (root / key).read_bytes() if (root / key).is_file() else None
    return SimpleNamespace(url=str(root), options={}, read=read)


def _ids(place) -> list[str]:
    return [s["id"] for s in json.loads(place.read("t/index.json"))["stories"]]


def test_publishers_at_once_keep_each_others_index_entries(place, tmp_path):
    """Three publishers (their own files and stories) started together on one destination:
    the index lists every one's stories, the record every one's objects; a re-run uploads
    nothing; a story one of them withdraws leaves the index, the others' stay."""
    import threading
    mine = {sid: _story_files(tmp_path / f"w{i}", sid)
            for i, sid in enumerate(["the-nativity", "jonah", "baby-moses"])}
    start = threading.Barrier(len(mine))
    reports, errors = {}, []

    def worker(sid):
        try:
            start.wait(10)
            reports[sid] = publish(mine[sid], place.url, merge_index=_merger([sid]),
                                   index_key="t/index.json", storage_options=place.options)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(sid,)) for sid in mine]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert _ids(place) == ["the-nativity", "jonah", "baby-moses"]  # backlog order
    record = json.loads(place.read(MANIFEST_KEY))["objects"]
    assert {k for files in mine.values() for k in files} <= set(record)
    for sid, files in mine.items():
        for key, path in files.items():
            assert place.read(key) == path.read_bytes()
        again = publish(files, place.url, merge_index=_merger([sid]), index_key="t/index.json",
                        storage_options=place.options)
        assert again.uploaded == [] and not again.record_written, (sid, again)
    gone = publish({}, place.url, merge_index=_merger([], drop=("jonah",)),
                   index_key="t/index.json", storage_options=place.options)
    assert gone.uploaded == ["t/index.json"]
    assert _ids(place) == ["the-nativity", "baby-moses"]


def test_a_write_between_the_read_and_the_write_is_merged_not_lost(place, tmp_path,
                                                                   monkeypatch):
    """Another publisher writes the index after this one read it and before it writes: the
    precondition refuses this write (S3 If-Match/If-None-Match 412, GCS ifGenerationMatch
    412, a folder's changed digest under its lock), and it reads, merges and writes again."""
    from cloops.services import conditional
    real_write = conditional.Versioned.write
    fired = []
    other = ["noah-s-ark"]

    def competing(self, path, data, version, **kw):
        if path.endswith("t/index.json") and not fired:
            fired.append(path)  # another publisher's whole publish lands in between
            publish(_story_files(tmp_path / other[0], other[0]), place.url,
                    merge_index=_merger(other), index_key="t/index.json",
                    storage_options=place.options)
        return real_write(self, path, data, version, **kw)
    monkeypatch.setattr(conditional.Versioned, "write", competing)
    first = publish(_story_files(tmp_path / "me", "jonah"), place.url,
                    merge_index=_merger(["jonah"]), index_key="t/index.json",
                    storage_options=place.options)
    assert fired and first.conflicts == 1 and "t/index.json" in first.uploaded
    assert _ids(place) == ["jonah", "noah-s-ark"]
    # and again when the index exists (a replace, not a create)
    fired.clear()
    other[:] = ["the-nativity"]
    second = publish(_story_files(tmp_path / "me2", "baby-moses"), place.url,
                     merge_index=_merger(["baby-moses"]), index_key="t/index.json",
                     storage_options=place.options)
    assert fired and second.conflicts == 1
    assert _ids(place) == ["the-nativity", "jonah", "noah-s-ark", "baby-moses"]
    record = json.loads(place.read(MANIFEST_KEY))["objects"]
    assert "t/noah-s-ark/bundle/1.jpg" in record and "t/jonah/bundle/1.jpg" in record


def test_an_index_that_keeps_changing_is_a_clear_error_after_bounded_tries(tmp_path,
                                                                         monkeypatch):
    import cloops.services.storage as storage
    from cloops.services import conditional

    def refused(self, path, data, version, **kw):
        raise conditional.Refused(path)
    monkeypatch.setattr(storage, "MERGE_WAIT_S", 0.001)
    monkeypatch.setattr(conditional.Versioned, "write", refused)
    with pytest.raises(PublishError, match=r"t/index\.json was changed by another publisher "
                                           r"8 times.*run the publish again"):
        publish(_story_files(tmp_path, "jonah"), str(tmp_path / "dest"),
                merge_index=_merger(["jonah"]), index_key="t/index.json")
    with pytest.raises(InputError, match="not both"):
        publish({}, str(tmp_path / "dest"), index=INDEX, merge_index=_merger([]))


def test_the_gcs_fake_honours_generation_preconditions(gcs):
    """What cloops relies on, against the fake: ifGenerationMatch=0 creates only, =<gen>
    replaces only that generation (HTTP 412 otherwise), and a read's bytes are its version's."""
    import gcsfs
    from cloops.services.conditional import Refused, Versioned
    fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **gcs.options)
    path = f"{gcs.bucket}/preconditions-{os.urandom(4).hex()}/claim.json"
    fs.pipe_file(path, b"one", mode="create")
    with pytest.raises(FileExistsError):  # gcsfs's own create-only upload: 412
        fs.pipe_file(path, b"two", mode="create")
    v = Versioned(fs, "gs")
    data, gen = v.read(path)
    assert data == b"one" and gen == str(fs.info(path)["generation"])
    with pytest.raises(Refused):
        v.write(path, b"x", None)
    new = v.write(path, b"two", gen, content_type="application/json", metadata={"sha256": "s"})
    assert new != gen and v.read(path) == (b"two", new)
    assert fs.info(path)["metadata"] == {"sha256": "s"}
    refused = gcs.refused
    with pytest.raises(Refused):
        v.write(path, b"three", gen)  # the generation read before: stale
    assert gcs.refused == refused + 1 and fs.cat_file(path) == b"two"
    assert v.read(path + "-absent") is None
