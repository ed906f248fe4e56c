"""The backlog index: a validated backlog is not parsed and validated again while unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloops.data import backlog as backlog_mod
from cloops.data.backlog import load_backlog, set_status
from cloops.core.errors import InputError
from cloops.core.fileio import sha256_json

SHOWN = "backlogs/comic-books-standard.json"


def item(i: int, **extra) -> dict:
    # keys deliberately not in sorted order: the index must keep the input's own order
    return {"id": f"story-{i}", "status": "pending",
            "input": {"title": f"Story {i}", "summary": "S.", "keyMoments": ["a", "b"], **extra},
            "completedAt": None, "error": None}


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "build").mkdir()
    (tmp_path / "backlogs").mkdir()
    (tmp_path / SHOWN).write_text(json.dumps(
        {"templateId": "comic-books-standard",
         "items": [item(1), item(2, reference="Gen 6"), item(3)]}, indent=2))
    return tmp_path


def load(root: Path):
    return load_backlog(root / SHOWN, shown=SHOWN, root=root)


def no_validation(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("validated again")
    monkeypatch.setattr(backlog_mod, "validate_item", boom)


def test_second_load_reads_the_index_and_gives_the_same_items(root, monkeypatch):
    first = load(root)
    assert (root / backlog_mod.INDEX_DIR).is_dir()
    no_validation(monkeypatch)
    second = load(root)
    assert second.template == "comic-books-standard"
    assert second.items == first.items
    assert list(second.get("story-2").input) == ["title", "summary", "keyMoments", "reference"]
    assert second.get("story-2").input_digest == sha256_json(first.get("story-2").input)[:16]
    assert second.get("nope") is None


def test_an_edit_is_validated_in_full_despite_the_index(root):
    load(root)
    data = json.loads((root / SHOWN).read_text())
    data["items"][1]["input"]["keyMoments"] = []
    (root / SHOWN).write_text(json.dumps(data))
    with pytest.raises(InputError) as exc:
        load(root)
    assert "items[1].input.keyMoments" in str(exc.value)


def test_a_status_write_carries_the_index_over(root, monkeypatch):
    load(root)
    assert set_status(root, root / SHOWN, "story-3", "completed")
    no_validation(monkeypatch)
    b = load(root)
    it = b.get("story-3")
    assert it.status == "completed" and it.completed_at
    assert [i.status for i in b.items] == ["pending", "pending", "completed"]


def test_a_damaged_index_is_ignored(root):
    load(root)
    for f in (root / backlog_mod.INDEX_DIR).iterdir():
        f.write_bytes(b"not a pickle")
    assert [i.id for i in load(root).items] == ["story-1", "story-2", "story-3"]


def test_no_index_outside_a_project_folder(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"templateId": "t", "items": [item(1)]}))
    load_backlog(tmp_path / "b.json", shown="b.json", root=tmp_path)
    assert not (tmp_path / "build").exists()


def test_a_status_write_changes_only_that_item(root):
    path = root / SHOWN
    before = path.read_text()
    assert set_status(root, path, "story-2", "failed", error="boom")
    after = path.read_text()
    data = json.loads(before)
    data["items"][1].update(status="failed", error="boom")
    assert json.loads(after) == data
    # the other items' bytes are untouched, whatever their layout
    head = before.index('"story-2"')
    assert after[:head] == before[:head]
    assert after.endswith(before[before.index('"story-3"'):])


def test_a_compact_backlog_stays_compact(root):
    path = root / SHOWN
    path.write_text(json.dumps(json.loads(path.read_text())))
    assert set_status(root, path, "story-1", "in_progress")
    text = path.read_text()
    assert "\n" not in text and json.loads(text)["items"][0]["status"] == "in_progress"


def test_an_unchanged_file_is_neither_read_nor_hashed_and_a_same_size_edit_is_seen(root,
                                                                                   monkeypatch):
    # issue 24, item 2: the file's (size, mtime, ctime, inode) as the index recorded them
    # stand for its bytes (~6 ms of reading and hashing at 10,000 stories)
    import os
    monkeypatch.setattr(backlog_mod, "RACY_NS", 0)  # the file was written a moment ago
    load(root)
    hashed = []
    real = backlog_mod.sha256_bytes
    monkeypatch.setattr(backlog_mod, "sha256_bytes", lambda b: hashed.append(1) or real(b))
    assert load(root).get("story-1").input["title"] == "Story 1"
    assert hashed == []
    # the same number of bytes, the old mtime put back: the change is too recent to trust a
    # stamp (a file clock's tick), and later the ctime tells it apart
    monkeypatch.undo()
    path = root / SHOWN
    st = os.stat(path)
    path.write_text(path.read_text().replace("Story 1", "Story 9"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    assert load(root).get("story-1").input["title"] == "Story 9"
    assert status_after_write(root) == "completed"


def status_after_write(root: Path) -> str:
    assert set_status(root, root / SHOWN, "story-2", "completed")
    return load(root).get("story-2").status


def test_several_status_changes_are_spliced_in_one_pass_as_one_by_one():
    """splice_items finds every changed item in one scan of the text (the status writer
    writes ~20 changes at once into a 1,000-story backlog); the result is what splicing
    them one at a time gives, in every layout, and None where the text has no such item."""
    import random

    from cloops.data.backlog import splice_item, splice_items
    rng = random.Random(24)
    items = [item(i) for i in range(1, 41)]
    for layout in ({"indent": 2}, {"indent": 4}, {"indent": "\t"}, {}, {"separators": (",", ":")}):
        text = json.dumps({"templateId": "t", "note": [1, {"items": []}], "items": items},
                          ensure_ascii=False, **layout)
        for _ in range(20):
            picked = rng.sample(range(len(items)), rng.randint(1, 8))
            new = {i: {**items[i], "status": "completed", "completedAt": f"2026-12-05T{i:02d}:00:00Z",
                       "error": None} for i in picked}
            one_by_one = text
            for i in sorted(new, reverse=True):
                one_by_one = splice_item(one_by_one, i, new[i])
            together = splice_items(text, new)
            assert together == one_by_one
            expected = [new.get(i, it) for i, it in enumerate(items)]
            assert json.loads(together)["items"] == expected
        assert splice_items(text, {len(items): items[0]}) is None
        assert splice_items(text, {}) == text
