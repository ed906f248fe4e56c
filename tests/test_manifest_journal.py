"""The story manifest's journal (cloops.graph.targets): a target's record is appended, not the
whole manifest rewritten, and what every reader sees is the same (issue 24, item 1)."""

from __future__ import annotations

import json
import threading

from cloops.graph.targets import (JOURNAL_FILE, JOURNAL_LINES, MANIFEST_FILE, META_DIR,
                                  is_hand_edited, read_manifest, remove_target, write_target)


def test_records_are_appended_then_written_whole_and_removals_are_recorded(tmp_path):
    for i in range(3):
        write_target(tmp_path, f"prompts/{i}.txt", f"page {i}".encode(), made_by="fake m",
                     offline=False, source=f"s{i}")
    meta = tmp_path / META_DIR
    assert not (meta / MANIFEST_FILE).exists()  # three appends, no rewrite
    assert len((meta / JOURNAL_FILE).read_text().splitlines()) == 3
    manifest = read_manifest(tmp_path)
    assert sorted(manifest) == ["prompts/0.txt", "prompts/1.txt", "prompts/2.txt"]
    assert manifest["prompts/1.txt"]["source"] == "s1" and manifest["prompts/1.txt"]["madeBy"] == "fake m"
    assert not is_hand_edited(tmp_path, "prompts/2.txt")
    remove_target(tmp_path, "prompts/0.txt")
    assert "prompts/0.txt" not in read_manifest(tmp_path)
    for k in range(JOURNAL_LINES + 1):  # the journal is folded into manifest.json
        write_target(tmp_path, "prompts/1.txt", f"take {k}".encode(), made_by="fake m",
                     offline=False)
    whole = json.loads((meta / MANIFEST_FILE).read_text())
    assert sorted(whole) == ["prompts/1.txt", "prompts/2.txt"]
    assert read_manifest(tmp_path)["prompts/1.txt"]["sha256"] == \
        __import__("hashlib").sha256(f"take {JOURNAL_LINES}".encode()).hexdigest()
    assert len((meta / JOURNAL_FILE).read_text().splitlines()) < JOURNAL_LINES


def test_a_torn_last_line_from_a_kill_is_ignored_and_that_target_looks_edited(tmp_path):
    write_target(tmp_path, "narrative.md", b"one", made_by="m", offline=False)
    write_target(tmp_path, "cast.json", b"{}", made_by="m", offline=False)
    journal = tmp_path / META_DIR / JOURNAL_FILE
    journal.write_bytes(journal.read_bytes()[:-7])  # killed during the second append
    assert list(read_manifest(tmp_path)) == ["narrative.md"]
    assert is_hand_edited(tmp_path, "cast.json")  # kept, as after a kill before the rewrite
    write_target(tmp_path, "images/1.jpg", b"jpeg", made_by="m", offline=False)
    assert sorted(read_manifest(tmp_path)) == ["images/1.jpg", "narrative.md"]


def test_readers_see_every_record_while_writers_fold_the_journal(tmp_path):
    rels = [f"prompts/{i}.txt" for i in range(8)]
    for rel in rels:
        write_target(tmp_path, rel, b"0", made_by="m", offline=False)
    stop, seen_missing = threading.Event(), []

    def read():
        while not stop.is_set():
            missing = set(rels) - set(read_manifest(tmp_path))
            if missing:
                seen_missing.append(missing)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for k in range(1, 3 * JOURNAL_LINES):
            write_target(tmp_path, rels[k % len(rels)], str(k).encode(), made_by="m",
                         offline=False)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert seen_missing == []


def _fresh_manifest(story_dir):
    """What a process with nothing remembered reads: the files alone."""
    from cloops.graph import targets
    with targets._klock:
        targets._known.clear()
    return read_manifest(story_dir)


def test_what_another_process_wrote_is_read_although_this_one_remembers_the_manifest(tmp_path):
    write_target(tmp_path, "narrative.md", b"one", made_by="m", offline=False)
    meta = tmp_path / META_DIR
    read_manifest(tmp_path)  # remembered here
    # another process appends a record (doit restore, a second worker)
    with open(meta / JOURNAL_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(["cast.json", {"sha256": "x", "madeBy": "other"}]) + "\n")
    assert read_manifest(tmp_path)["cast.json"]["madeBy"] == "other"
    # ... then folds the journal into manifest.json and removes it
    whole = dict(read_manifest(tmp_path), **{"pages.json": {"sha256": "y", "madeBy": "folded"}})
    (meta / MANIFEST_FILE).write_text(json.dumps(whole))
    (meta / JOURNAL_FILE).unlink()
    assert sorted(read_manifest(tmp_path)) == ["cast.json", "narrative.md", "pages.json"]
    # a torn append of the other process, then this one's write: the torn line is skipped
    with open(meta / JOURNAL_FILE, "a", encoding="utf-8") as fh:
        fh.write('["images/1.jpg", {"sha2')
    assert sorted(read_manifest(tmp_path)) == ["cast.json", "narrative.md", "pages.json"]
    write_target(tmp_path, "images/2.jpg", b"jpeg", made_by="m", offline=False)
    got = read_manifest(tmp_path)
    assert sorted(got) == ["cast.json", "images/2.jpg", "narrative.md", "pages.json"]
    assert got == _fresh_manifest(tmp_path)


def test_the_remembered_manifest_is_what_the_files_say_after_every_write(tmp_path):
    rels = [f"prompts/{i}.txt" for i in range(5)]
    for k in range(2 * JOURNAL_LINES + 3):
        write_target(tmp_path, rels[k % 5], str(k).encode(), made_by="m", offline=False)
        if k % 7 == 0:
            remove_target(tmp_path, rels[(k + 1) % 5])
        remembered = read_manifest(tmp_path)
        assert remembered == _fresh_manifest(tmp_path), k
    remembered = read_manifest(tmp_path)
    remembered.clear()  # a caller's change does not reach what is remembered
    assert read_manifest(tmp_path) == _fresh_manifest(tmp_path) != {}
