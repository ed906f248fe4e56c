"""What a run writes less often without changing what it means (issue 24, item 1): doit's file
check hashes each file once while it is unchanged, and story status changes reach the backlog
together, in order, within the writer's delay."""

from __future__ import annotations

import json
import os
import time

from doit.dependency import MD5Checker

from cloops.data import backlog as backlog_mod
from cloops.run import checker as checker_mod
from cloops.run.checker import CachedMD5Checker
from cloops.run.statuses import StatusWriter


def test_a_file_dep_is_hashed_once_while_unchanged_and_again_after_any_write(tmp_path, monkeypatch):
    hashed = []
    real = checker_mod.get_file_md5
    monkeypatch.setattr(checker_mod, "get_file_md5", lambda p: hashed.append(p) or real(p))
    CachedMD5Checker._digests.clear()
    dep = tmp_path / "pages.json"
    dep.write_text('{"pages": 1}')
    ours, doits = CachedMD5Checker(), MD5Checker()
    for _ in range(5):  # five tasks with this file_dep, none stored yet
        assert ours.get_state(str(dep), None) == doits.get_state(str(dep), None)
    assert len(hashed) == 1
    state = ours.get_state(str(dep), None)
    # the same size, other bytes, written in place and its mtime set back: only the ctime says
    mtime_ns = dep.stat().st_mtime_ns
    dep.write_text('{"pages": 2}')
    os.utime(dep, ns=(mtime_ns, mtime_ns))
    assert ours.check_modified(str(dep), os.stat(dep), (0.5, state[1], state[2]))
    assert ours.get_state(str(dep), None)[2] == doits.get_state(str(dep), None)[2] != state[2]
    assert len(hashed) == 2
    # touched, bytes unchanged: hashed again (new mtime), and not a change, as with doit's
    before = ours.get_state(str(dep), None)
    os.utime(dep, ns=(0, 2 * 10**9))
    st = os.stat(dep)
    assert not ours.check_modified(str(dep), st, (1.0, before[1], before[2]))
    assert ours.get_state(str(dep), before) == (2.0, before[1], before[2])


def _backlog(tmp_path, n=3):
    (tmp_path / "build").mkdir()
    path = tmp_path / "backlogs" / "t.json"
    path.parent.mkdir()
    items = [{"id": f"s{i}", "status": "pending", "input": {"title": f"S{i}", "summary": "s", "keyMoments": ["k"]},
              "completedAt": None, "error": None} for i in range(n)]
    path.write_text(json.dumps({"templateId": "t", "items": items}, indent=2))
    return path


def _statuses(path):
    return {it["id"]: (it["status"], it["error"]) for it in json.loads(path.read_text())["items"]}


def test_status_changes_are_written_together_in_order_within_the_delay(tmp_path, monkeypatch):
    path = _backlog(tmp_path)
    writes = []
    real = backlog_mod.set_statuses
    monkeypatch.setattr(backlog_mod, "set_statuses",
                        lambda *a, **k: writes.append(len(a[2])) or real(*a, **k))
    w = StatusWriter(delay_s=0.2)
    w.set(tmp_path, path, "s0", "in_progress")
    w.set(tmp_path, path, "s1", "in_progress")
    w.set(tmp_path, path, "s0", "failed", error="boom")
    w.set(tmp_path, path, "s1", "completed")
    assert _statuses(path)["s0"] == ("pending", None)  # held for now
    deadline = time.monotonic() + 5
    while w.held() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    assert writes == [4]  # one write for the four changes
    got = _statuses(path)
    assert got == {"s0": ("failed", "boom"), "s1": ("completed", None), "s2": ("pending", None)}
    assert json.loads(path.read_text())["items"][1]["completedAt"].endswith("Z")
    # the index the next start reads agrees with the file
    loaded = backlog_mod.load_backlog(path, root=tmp_path, shown="backlogs/t.json")
    assert {it.id: it.status for it in loaded.items} == {"s0": "failed", "s1": "completed",
                                                        "s2": "pending"}


def test_a_status_write_that_fails_keeps_its_changes_and_says_why(tmp_path):
    path = _backlog(tmp_path)
    good = path.read_text()
    w = StatusWriter(delay_s=60)
    w.set(tmp_path, path, "s2", "completed")
    w.set(tmp_path, path, "gone", "completed")
    path.write_text(good[:-5])  # a person is editing it: not JSON for now
    assert w.flush() == 0
    assert "t.json" in w.errors[str(path)] and w.held() == 2
    assert path.read_text() == good[:-5]  # untouched
    path.write_text(good)
    assert w.flush() == 2
    assert _statuses(path)["s2"] == ("completed", None)
    assert "gone" in w.errors[str(path)]  # a story removed meanwhile is named


def test_at_most_n_threads_run_with_a_turn_and_a_waiting_thread_gives_its_turn_back():
    import threading
    from cloops.core.turns import Turns
    turns = Turns(2, wait_s=5)
    inside, peak, lock = [0], [0], threading.Lock()
    gate = threading.Event()

    def task(waits: bool):
        with turns.held():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            if waits:  # a service call: the turn goes to another thread meanwhile
                with lock:
                    inside[0] -= 1
                with turns.released():
                    gate.wait(5)
                with lock:
                    inside[0] += 1
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    waiting = [threading.Thread(target=task, args=(True,)) for _ in range(4)]
    for t in waiting:
        t.start()
    time.sleep(0.2)  # all four wait on their call, none holds a turn
    busy = [threading.Thread(target=task, args=(False,)) for _ in range(6)]
    t0 = time.monotonic()
    for t in busy:
        t.start()
    for t in busy:
        t.join()
    assert time.monotonic() - t0 < 4  # the waiting four did not keep the turns
    gate.set()
    for t in waiting:
        t.join()
    assert peak[0] == 2


def test_a_thread_that_cannot_get_a_turn_runs_anyway_after_the_wait():
    import threading
    from cloops.core.turns import Turns
    turns = Turns(1, wait_s=0.1)
    release = threading.Event()

    def hog():  # holds its turn while it waits on something else (a lock, say)
        with turns.held():
            release.wait(5)

    t = threading.Thread(target=hog)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    with turns.held():
        ran_after = time.monotonic() - t0
    release.set()
    t.join()
    assert 0.05 < ran_after < 2  # waited its bound, then ran: a courtesy, never a deadlock


def test_doit_state_is_asked_only_for_rows_it_has_once_many_tasks_were_asked(tmp_path):
    from doit.dependency import JSONCodec, SqliteDB
    from cloops.run.checker import ASK_ONE_BY_ONE, install_row_index
    install_row_index()
    db = SqliteDB(str(tmp_path / "state.db"), JSONCodec())
    for i in range(0, 300, 3):  # every third task has a row
        db.set(f"t{i}", "x", i)
    db.dump()

    class Counting:  # the connection, counting what is asked of it
        def __init__(self, conn):
            self.conn, self.asked = conn, 0

        def execute(self, *a):
            self.asked += 1
            return self.conn.execute(*a)

        def cursor(self):
            return self.conn.cursor()

    db = SqliteDB(str(tmp_path / "state.db"), JSONCodec())
    db._conn = counting = Counting(db._conn)
    got = {i: db.get(f"t{i}", "x") for i in range(300)}
    assert got == {i: (i if i % 3 == 0 else None) for i in range(300)}
    # one question per task up to the bound, then only the 100 rows that exist (at most)
    assert counting.asked <= ASK_ONE_BY_ONE + 100
    db.remove("t3")  # forgotten (doit forget): no row, and none remembered
    assert db.get("t3", "x") is None
    db._conn = counting.conn
    db.dump()
    assert SqliteDB(str(tmp_path / "state.db"), JSONCodec()).get("t3", "x") is None


def test_an_up_to_date_check_leaves_no_values_waiting_to_be_taken():
    """A task's Inputs wait in engine._UNTAKEN until its worker takes them; an up-to-date check
    that compared them took them, so nothing is kept for it (a long-lived process - the
    studio - would otherwise keep every checked task's view of its files)."""
    from types import SimpleNamespace

    from cloops.graph import engine
    from cloops.graph.engine import INPUTS_KEY, Inputs

    calls = []
    inputs = Inputs(lambda seen=None: calls.append(seen) or {"config a": "1"})
    task = SimpleNamespace(name="narrative:comic-books-standard/noah")
    engine._UNTAKEN[task.name] = inputs
    assert inputs(task, {INPUTS_KEY: {"config a": "1"}}) is True
    assert task.name not in engine._UNTAKEN and len(calls) == 1
    engine.take_values(task.name)  # the worker's turn, had it run: nothing left to take
    assert len(calls) == 1
    # never built: nothing compared, the values wait for the worker's view of the files
    fresh = Inputs(lambda seen=None: calls.append(seen) or {"config a": "1"})
    engine._UNTAKEN[task.name] = fresh
    assert fresh(task, {}) is False
    engine.take_values(task.name, "the task's view")
    assert calls[-1] == "the task's view" and task.name not in engine._UNTAKEN


def test_task_file_names_are_what_pathlib_would_make():
    """Task file names are joined as strings on the hot path; any name, plain or odd, gives
    the name ``pathlib`` gives (doit matches a file_dep to a target by that name)."""
    from pathlib import Path

    from hypothesis import given
    from hypothesis import strategies as st

    from cloops.graph.engine import _joined

    part = st.sampled_from(["a", "b.json", ".", "..", "", ".cloops", "x y", "é"])
    name = st.lists(part, min_size=1, max_size=4).map("/".join) | st.sampled_from(
        ["/abs/x", "./x", "x/", "x/.", ".", "a//b", "a/./b"])
    base = st.sampled_from(["build/std/s1", ".", "", "build", "/root/p"])

    @given(base, name)
    def same(b, rel):
        assert _joined(b, rel) == str(Path(b) / rel)
    same()


def test_atomic_writes_on_strings_create_folders_and_leave_no_temp_file(tmp_path):
    from cloops.core.fileio import atomic_write_bytes, read_bytes
    target = str(tmp_path / "new" / "deeper" / "f.bin")
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(tmp_path / "new" / "deeper" / "f.bin", b"two")
    assert read_bytes(target) == b"two"
    assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == ["f.bin"]
    (tmp_path / "dir").mkdir()
    try:
        atomic_write_bytes(tmp_path / "dir", b"x")  # a folder in the way: the rename fails
    except OSError:
        pass
    else:
        raise AssertionError("writing over a folder must fail")
    assert [p.name for p in (tmp_path / "dir").iterdir()] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "new"]
