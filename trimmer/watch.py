"""File watching for hot reload: a watchdog observer on each bundle file's directory, and
the debouncing scheduler thread that turns events and a periodic re-check into reloads.

Directories, not files, are watched: an atomic rename replaces the file's inode, and a
Kubernetes ConfigMap update swaps the ``..data`` symlink the file points through, so the
events name ``..data`` or ``..2026_...`` rather than the file. Any event in a watched
directory therefore marks every bundle living there as dirty; the reload compares the
content hash, so a spurious event costs one read and one sha256.

Threads: ``trimmer-observer`` (watchdog's dispatcher) and ``trimmer-watch:<dir>`` (one
inotify emitter per directory) only call ``ReloadScheduler.mark``; ``trimmer-reload``
owns the pending set and runs every reload. ``_pending`` is guarded by ``_cond``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Iterable, Mapping

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from trimmer.config import TrimmerConfig

__all__ = ["DirectoryWatcher", "ReloadScheduler"]

log = logging.getLogger(__name__)

# Changes only: our own reads raise opened / closed_no_write events, which must not
# trigger the reload that reads the file again.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
]

_POLL_INTERVAL_S = 0.25


class ReloadScheduler:
    """Debounces change marks and calls ``reload(bundles, reason)`` on its own thread."""

    def __init__(
        self,
        bundles: Iterable[str],
        reload: Callable[[list[str], str], None],
        config: TrimmerConfig,
        on_recheck: Callable[[], None] | None = None,
    ) -> None:
        self._bundles = sorted(bundles)
        self._reload = reload
        self._config = config
        self._on_recheck = on_recheck
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[float, float]] = {}  # bundle -> (first, last) mark time
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="trimmer-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def mark(self, bundles: Iterable[str]) -> None:
        """Note a change (any thread); the reload follows after the debounce delay."""
        now = time.monotonic()
        with self._cond:
            for bundle in bundles:
                first, _ = self._pending.get(bundle, (now, now))
                self._pending[bundle] = (first, now)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _due(self, now: float) -> tuple[list[str], float]:
        """Bundles whose debounce ran out, and the next deadline among the rest."""
        debounce, cap = self._config.debounce_s, self._config.max_debounce_s
        due: list[str] = []
        next_at = float("inf")
        for bundle, (first, last) in self._pending.items():
            at = min(last + debounce, first + cap)
            if at <= now:
                due.append(bundle)
            else:
                next_at = min(next_at, at)
        return due, next_at

    def _run(self) -> None:
        interval = self._config.recheck_interval_s
        next_recheck = time.monotonic() + interval if interval > 0 else float("inf")
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    due, next_at = self._due(now)
                    recheck = now >= next_recheck
                    if due or recheck:
                        break
                    wake_at = min(next_at, next_recheck)
                    # Nothing pending and no re-check (recheck_interval_s = 0): wait for a mark.
                    self._cond.wait(None if wake_at == float("inf") else wake_at - now)
                if recheck:
                    self._pending.clear()
                    due = list(self._bundles)
                    next_recheck = now + interval
                else:
                    for bundle in due:
                        del self._pending[bundle]
            try:
                if recheck and self._on_recheck is not None:
                    self._on_recheck()
                self._reload(sorted(due), "recheck" if recheck else "event")
            except Exception:  # the thread must outlive any single bad reload
                log.exception("trimmer reload of %s failed unexpectedly", due)


class _Handler(FileSystemEventHandler):
    def __init__(self, directories: Mapping[str, tuple[str, ...]], mark: Callable[[Iterable[str]], None]) -> None:
        self._directories = directories
        self._mark = mark

    def on_any_event(self, event: FileSystemEvent) -> None:
        hit: set[str] = set()
        for raw in (event.src_path, event.dest_path):
            if not raw:
                continue
            path = os.fsdecode(raw)
            for candidate in (path, os.path.dirname(path)):
                hit.update(self._directories.get(candidate, ()))
        if hit:
            self._mark(hit)


def _make_observer() -> BaseObserver:
    """The platform observer (inotify on Linux), or stat polling if it cannot start (for
    example when the per-user inotify instance limit is reached)."""
    observer: BaseObserver
    try:
        observer = Observer()
    except OSError as exc:
        log.warning("trimmer: native file watching unavailable (%s); polling directories instead", exc)
        observer = PollingObserver(timeout=_POLL_INTERVAL_S)
    observer.name = "trimmer-observer"
    return observer


class DirectoryWatcher:
    """One watchdog observer watching each bundle directory (non-recursively)."""

    def __init__(self, directories: Mapping[str, tuple[str, ...]], mark: Callable[[Iterable[str]], None]) -> None:
        self._directories = dict(directories)
        self._handler = _Handler(self._directories, mark)
        self._observer = _make_observer()
        self._watches: dict[str, ObservedWatch] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._observer.start()
        self.ensure()

    def ensure(self) -> None:
        """Watch every directory that exists and is not watched yet (start-up and re-check:
        a directory created later, or deleted and re-created, gets its watch back)."""
        with self._lock:
            alive = {e.watch: e.is_alive() for e in self._observer.emitters}
            for directory in self._directories:
                watch = self._watches.get(directory)
                if watch is not None and alive.get(watch, False) and os.path.isdir(directory):
                    continue
                if watch is not None:
                    self._unschedule(watch)
                    del self._watches[directory]
                if not os.path.isdir(directory):
                    continue
                try:
                    watch = self._observer.schedule(self._handler, directory, event_filter=_EVENT_FILTER)
                except OSError as exc:
                    log.warning("trimmer: cannot watch %s (%s); relying on the periodic re-check", directory, exc)
                    continue
                self._watches[directory] = watch
                for emitter in self._observer.emitters:
                    if emitter.watch == watch:
                        emitter.name = f"trimmer-watch:{directory}"

    def _unschedule(self, watch: ObservedWatch) -> None:
        try:
            self._observer.unschedule(watch)
        except (KeyError, OSError):
            pass

    @property
    def watched(self) -> list[str]:
        with self._lock:
            return sorted(self._watches)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout)
            self._watches.clear()
