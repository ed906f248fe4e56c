"""The interpreter's threads on one processor (cloops.core.cpus): pinned, inherited, given
back to what is not Python, moved off a processor others keep busy."""

from __future__ import annotations

import os
import threading

import pytest

from cloops.core import cpus
from conftest import child_processors

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2
    or cpus._cpu_now() is None,
    reason="needs Linux and at least two processors this process may use")


@pytest.fixture
def fresh(monkeypatch, own_processors):
    """A process without a pin; the processors it may use (given back afterwards)."""
    monkeypatch.delenv("CLOOPS_PIN", raising=False)
    monkeypatch.setattr(cpus, "_PIN", [])
    return own_processors


def _affinity_of_new_thread() -> set[int]:
    seen: list[set[int]] = []
    t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    t.start()
    t.join()
    return seen[0]


def test_pin_puts_this_thread_and_its_new_threads_on_one_processor(fresh):
    pin = cpus.pin()
    assert pin is not None and cpus.current() is pin
    assert os.sched_getaffinity(0) == {pin.cpu}
    assert pin.allowed == fresh
    assert _affinity_of_new_thread() == {pin.cpu}  # doit's workers, started after the pin
    assert cpus.pin() is pin  # the first pin stands


def test_unpinned_gives_children_and_pools_every_processor(fresh):
    pin = cpus.pin()
    assert child_processors() == {pin.cpu}  # what FFmpeg would get without unpinned()
    with cpus.unpinned():
        assert os.sched_getaffinity(0) == fresh
        assert child_processors() == fresh
        assert _affinity_of_new_thread() == fresh  # a render's frame pool
    assert os.sched_getaffinity(0) == {pin.cpu}


def test_nothing_pinned_when_switched_off_or_alone(fresh, monkeypatch):
    monkeypatch.setenv("CLOOPS_PIN", "0")
    assert cpus.pin() is None
    assert os.sched_getaffinity(0) == fresh
    with cpus.unpinned():  # no pin: nothing to give back
        assert os.sched_getaffinity(0) == fresh
    monkeypatch.delenv("CLOOPS_PIN")
    cpus._PIN.clear()  # as in a new process
    os.sched_setaffinity(0, {min(fresh)})  # one processor allowed: nothing to choose
    assert cpus.pin() is None


def _ticks(busy: dict[int, int], total: int) -> dict[int, tuple[int, int]]:
    return {cpu: (b, total) for cpu, b in busy.items()}


def test_check_moves_the_pinned_threads_off_a_processor_others_keep_busy(fresh, monkeypatch):
    pin = cpus.pin()
    other = min(fresh - {pin.cpu})
    worker_cpu: list[set[int]] = []
    go, stop = threading.Event(), threading.Event()

    def worker():  # a task thread, started after the pin
        go.set()
        stop.wait(10)
        worker_cpu.append(os.sched_getaffinity(0))
    t = threading.Thread(target=worker)
    t.start()
    go.wait(10)
    hz = os.sysconf("SC_CLK_TCK")
    times = iter([
        _ticks({pin.cpu: 0, other: 0}, 0),
        # a second later: the pinned processor 90 % busy, this process used 10 % of it
        _ticks({pin.cpu: int(0.9 * hz), other: int(0.05 * hz)}, hz),
    ])
    ours = iter([0.0, 0.1])
    monkeypatch.setattr(cpus, "_busy_times", lambda: next(times))
    monkeypatch.setattr(cpus.os, "times", lambda: (next(ours), 0.0, 0.0, 0.0, 0.0))
    start = pin._next_check
    pin.check(start)  # the first look: nothing to compare with
    assert pin.moves == 0
    pin.check(start + 0.5)  # between looks: returns at once (no tick read)
    pin.check(start + cpus.CHECK_EVERY_S)
    assert pin.moves == 1 and pin.cpu == other
    assert os.sched_getaffinity(0) == {other}
    stop.set()
    t.join()
    assert worker_cpu == [{other}]
    with cpus.unpinned():
        pass
    assert os.sched_getaffinity(0) == {other}  # given back to where the threads are now


def test_check_stays_when_the_business_is_ours(fresh, monkeypatch):
    pin = cpus.pin()
    other = min(fresh - {pin.cpu})
    hz = os.sysconf("SC_CLK_TCK")
    times = iter([_ticks({pin.cpu: 0, other: 0}, 0),
                  _ticks({pin.cpu: hz, other: 0}, hz)])  # busy the whole second: with us
    ours = iter([0.0, 1.0])
    monkeypatch.setattr(cpus, "_busy_times", lambda: next(times))
    monkeypatch.setattr(cpus.os, "times", lambda: (next(ours), 0.0, 0.0, 0.0, 0.0))
    pin.check(pin._next_check)
    pin.check(pin._next_check)
    assert pin.moves == 0 and os.sched_getaffinity(0) == {pin.cpu}


def test_cpu_now_reads_the_processor_this_thread_runs_on(fresh):
    for cpu in sorted(fresh)[:2]:
        os.sched_setaffinity(0, {cpu})
        assert cpus._cpu_now() == cpu
