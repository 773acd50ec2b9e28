"""A small writer-preferring read-write lock.

Readers share the lock; a writer holds it alone. As soon as a writer is waiting, new
readers queue behind it, so a steady stream of overlapping lookups cannot starve a
reload (the reverse is accepted: reloads are rare and short). Not reentrant: a thread
that holds the read side must not ask for it again while a writer may be waiting.

Why our own class: the maintained PyPI candidates either prefer readers, are
asyncio-only, or pull in a dependency for ~60 lines of ``threading.Condition`` code;
this one is small enough to read in one sitting and is tested in ``test_rwlock.py``.

State (``_readers``, ``_writer``, ``_writers_waiting``) is guarded by ``_mutex``; any
thread may use the lock.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Callable

__all__ = ["RWLock"]


class _Guard:
    """Reusable context manager for one side of the lock (no generator per use)."""

    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire: Callable[[], bool], release: Callable[[], None]) -> None:
        self._acquire = acquire
        self._release = release

    def __enter__(self) -> None:
        self._acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()


class RWLock:
    """Writer-preferring read-write lock (shared readers, exclusive writer)."""

    __slots__ = ("_mutex", "_can_read", "_can_write", "_readers", "_writer", "_writers_waiting",
                 "read_locked", "write_locked")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._can_read = threading.Condition(self._mutex)
        self._can_write = threading.Condition(self._mutex)
        self._readers = 0
        self._writer: int | None = None  # thread ident of the holder
        self._writers_waiting = 0
        self.read_locked = _Guard(self.acquire_read, self.release_read)
        """``with lock.read_locked:`` holds the shared side."""
        self.write_locked = _Guard(self.acquire_write, self.release_write)
        """``with lock.write_locked:`` holds the exclusive side."""

    def acquire_read(self, timeout: float | None = None) -> bool:
        """Take the shared side; False if ``timeout`` (seconds) passed first."""
        with self._mutex:
            if self._writer is None and not self._writers_waiting:
                self._readers += 1  # fast path: no writer holds or wants the lock
                return True
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._writer is not None or self._writers_waiting:
                if deadline is None:
                    self._can_read.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._can_read.wait(remaining)
            self._readers += 1
            return True

    def release_read(self) -> None:
        with self._mutex:
            if self._readers <= 0:
                raise RuntimeError("release_read() without a matching acquire_read()")
            self._readers -= 1
            if self._readers == 0 and self._writers_waiting:
                self._can_write.notify()

    def acquire_write(self, timeout: float | None = None) -> bool:
        """Take the exclusive side; False if ``timeout`` (seconds) passed first."""
        me = threading.get_ident()
        with self._mutex:
            if self._writer == me:
                raise RuntimeError("RWLock is not reentrant: this thread already holds the write side")
            deadline = None if timeout is None else time.monotonic() + timeout
            self._writers_waiting += 1
            acquired = False
            try:
                while True:
                    if self._writer is None and not self._readers:
                        acquired = True
                        self._writer = me
                        return True
                    if deadline is None:
                        self._can_write.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        self._can_write.wait(remaining)
            finally:
                self._writers_waiting -= 1
                if not acquired and self._writer is None and not self._writers_waiting:
                    # This writer gave up (timeout or interrupt) and was holding readers back.
                    self._can_read.notify_all()

    def release_write(self) -> None:
        with self._mutex:
            if self._writer != threading.get_ident():
                raise RuntimeError("release_write() by a thread that does not hold the write side")
            self._writer = None
            if self._writers_waiting:
                self._can_write.notify()
            else:
                self._can_read.notify_all()

    @property
    def readers(self) -> int:
        """Number of threads holding the shared side now (for tests and debugging)."""
        return self._readers

    @property
    def writers_waiting(self) -> int:
        """Number of writers queued for the exclusive side now."""
        return self._writers_waiting

    @property
    def write_held(self) -> bool:
        return self._writer is not None
