"""The trimmer's writer-preferring read-write lock."""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest

from tests.waiting import eventually
from trimmer.rwlock import RWLock


def start(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def test_readers_hold_the_lock_together() -> None:
    lock = RWLock()
    n = 6
    inside = threading.Barrier(n, timeout=5)
    failures: list[BaseException] = []

    def reader() -> None:
        with lock.read_locked:
            try:
                inside.wait()  # only passes if all n readers hold the shared side at once
            except threading.BrokenBarrierError as exc:
                failures.append(exc)

    threads = [start(reader, f"reader-{i}") for i in range(n)]
    for t in threads:
        t.join(10)
    assert not failures
    assert lock.readers == 0


def test_writer_excludes_readers_and_writers() -> None:
    lock = RWLock()
    assert lock.acquire_write()
    assert lock.write_held
    result: dict[str, bool] = {}

    def others() -> None:
        result["read"] = lock.acquire_read(timeout=0.05)
        result["write"] = lock.acquire_write(timeout=0.05)

    start(others, "contender").join(5)
    assert result == {"read": False, "write": False}
    lock.release_write()
    assert lock.acquire_read(timeout=1)
    lock.release_read()


def test_mutual_exclusion_under_contention() -> None:
    lock = RWLock()
    state = {"readers": 0, "writers": 0, "violations": 0, "writes": 0}
    guard = threading.Lock()
    stop = time.monotonic() + 1.0

    def note(kind: str, delta: int) -> None:
        with guard:
            state[kind] += delta
            if state["writers"] > 1 or (state["writers"] and state["readers"]):
                state["violations"] += 1

    def reader() -> None:
        for _ in range(20_000):
            if time.monotonic() > stop:
                return
            with lock.read_locked:
                note("readers", 1)
                note("readers", -1)

    def writer() -> None:
        for _ in range(2_000):
            if time.monotonic() > stop:
                return
            with lock.write_locked:
                note("writers", 1)
                state["writes"] += 1
                note("writers", -1)

    threads = [start(reader, f"r{i}") for i in range(4)] + [start(writer, f"w{i}") for i in range(2)]
    for t in threads:
        t.join(10)
    assert state["violations"] == 0
    assert state["writes"] > 0
    assert lock.readers == 0 and not lock.write_held and lock.writers_waiting == 0


def test_waiting_writer_blocks_new_readers() -> None:
    lock = RWLock()
    lock.acquire_read()
    got_write = threading.Event()

    def writer() -> None:
        with lock.write_locked:
            got_write.set()

    w = start(writer, "writer")
    eventually(lambda: lock.writers_waiting == 1, "the writer waits")
    # Writer preference: a new reader queues behind the waiting writer.
    assert not lock.acquire_read(timeout=0)
    assert not got_write.is_set()
    lock.release_read()
    assert got_write.wait(5)
    w.join(5)
    assert lock.acquire_read(timeout=1)
    lock.release_read()


def test_writer_not_starved_by_overlapping_readers() -> None:
    lock = RWLock()
    stop = threading.Event()
    reads = [0]

    def reader() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            with lock.read_locked:
                reads[0] += 1
                stop.wait(0.002)  # hold the shared side so readers always overlap

    readers = [start(reader, f"reader-{i}") for i in range(4)]
    eventually(lambda: reads[0] > 20, "readers overlapping")
    acquired = lock.acquire_write(timeout=5)
    # Held exclusively: every reader left and none entered behind the waiting writer.
    held_alone = acquired and lock.write_held and lock.readers == 0
    if acquired:
        lock.release_write()
    stop.set()
    for t in readers:
        t.join(5)
    assert acquired, "writer starved by a stream of readers"
    assert held_alone


def test_writer_that_gives_up_releases_queued_readers() -> None:
    lock = RWLock()
    lock.acquire_read()
    writer_result: list[bool] = []
    reader_in = threading.Event()

    def writer() -> None:
        writer_result.append(lock.acquire_write(timeout=0.2))

    def late_reader() -> None:
        with lock.read_locked:
            reader_in.set()

    w = start(writer, "writer")
    eventually(lambda: lock.writers_waiting == 1, "the writer waits")
    r = start(late_reader, "late-reader")
    w.join(5)
    assert writer_result == [False]
    assert reader_in.wait(5)  # woken when the only waiting writer gave up
    r.join(5)
    lock.release_read()
    assert lock.readers == 0


def test_misuse_raises() -> None:
    lock = RWLock()
    with pytest.raises(RuntimeError, match="release_read"):
        lock.release_read()
    with pytest.raises(RuntimeError, match="release_write"):
        lock.release_write()
    lock.acquire_write()
    with pytest.raises(RuntimeError, match="not reentrant"):
        lock.acquire_write()
    errors: list[BaseException] = []

    def foreign_release() -> None:
        try:
            lock.release_write()
        except RuntimeError as exc:
            errors.append(exc)

    start(foreign_release, "foreign").join(5)
    assert len(errors) == 1
    lock.release_write()
