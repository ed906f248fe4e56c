"""The response cache's pruning: entries unused for N days, and temp files of killed writes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cloops.services.base import ImageResult, LLMResult, Usage
from cloops.services.cache import TEMP_GRACE_S, ResponseCache


def age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_removes_unused_entries_and_keeps_used_ones(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    cache.put_llm("aa" + "0" * 62, LLMResult(text="old", data=None, usage=Usage(), model="m"))
    cache.put_image("bb" + "0" * 62, ImageResult(jpeg=b"\xff\xd8jpeg", width_px=2, height_px=1))
    cache.put_llm("cc" + "0" * 62, LLMResult(text="new", data=None, usage=Usage(), model="m"))
    for key, suffixes in (("aa", (".json",)), ("bb", (".json", ".jpg")), ("cc", (".json",))):
        for suffix in suffixes:
            age(cache._path(key + "0" * 62, suffix), 10 * 86400)
    assert cache.get_llm("cc" + "0" * 62).text == "new"  # a hit marks it used now

    removed, freed = cache.prune(older_than_s=7 * 86400)

    assert removed == 2 and freed > 0
    assert cache.get_llm("aa" + "0" * 62) is None and cache.get_image("bb" + "0" * 62) is None
    assert not Path(cache._path("bb" + "0" * 62, ".jpg")).exists()
    assert cache.get_llm("cc" + "0" * 62).text == "new"
    assert cache.stats()["entries"] == 1


def test_prune_sweeps_temp_files_of_killed_writes_but_not_fresh_ones(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    cache.put_llm("dd" + "0" * 62, LLMResult(text="kept", data=None, usage=Usage(), model="m"))
    folder = Path(cache._path("dd" + "0" * 62, ".json")).parent
    stale = folder / f".{'dd' + '0' * 62}.json.4242-1-7.tmp"   # left by a killed run
    stale.write_bytes(b"half a")
    age(stale, TEMP_GRACE_S + 60)
    fresh = folder / f".{'ee' + '0' * 62}.json.4243-1-8.tmp"   # a run writing right now
    fresh.write_bytes(b"being written")

    removed, freed = cache.prune(older_than_s=30 * 86400)

    assert (removed, freed) == (0, len(b"half a"))
    assert not stale.exists() and fresh.exists()
    assert cache.get_llm("dd" + "0" * 62).text == "kept"


def test_a_job_is_resumable_until_it_ends_or_is_too_old(tmp_path):
    from cloops.services.cache import JOB_MAX_AGE_S, current_job, job_journal
    cache = ResponseCache(tmp_path / "cache")
    key = "ff" + "0" * 62
    assert cache.job(key) is None
    cache.start_job(key, "pred123")
    assert cache.job(key) == "pred123"
    assert cache.stats()["entries"] == 0  # a note of a job in flight is not an entry
    assert cache.prune(older_than_s=0) == (0, 0)
    assert cache.job(key) == "pred123"
    cache.end_job(key)
    assert cache.job(key) is None

    cache.start_job(key, "pred456")
    note = cache._job_path(key)
    note.write_text(json.dumps({"id": "pred456", "at": time.time() - JOB_MAX_AGE_S - 60}))
    assert cache.job(key) is None and not note.exists()  # its output would be deleted by now
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text("not json")
    assert cache.job(key) is None and not note.exists()
    assert JOB_MAX_AGE_S < 3600  # Replicate deletes API predictions' outputs after an hour

    # the journal a backend sees: the hub's call, else a no-op
    assert current_job().resumable() is None
    current_job().started("ignored")
    with job_journal(cache, key):
        current_job().started("pred789")
        assert current_job().resumable() == "pred789"
        current_job().ended()
        assert current_job().resumable() is None
    assert cache.job(key) is None
