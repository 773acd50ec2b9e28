"""``FeatureTrimmer``: per-model allowlists from bundle files, hot-reloaded, looked up cheaply.

Each bundle file loads into its own ``BundleMap``; after any load that changes a map, the
consolidated ``Snapshot`` is rebuilt from all good maps and swapped in under the write side
of a writer-preferring ``RWLock``. Lookups take the read side only long enough to grab the
snapshot reference, then answer from the immutable snapshot (precomputed decisions).

Failure isolation: a bundle whose file is missing, unreadable, too large or invalid keeps
its last good map (or, never loaded, contributes nothing: its models go untrimmed), is
logged at ERROR once per distinct failure, counted, and shown in ``status()``; other
bundles keep loading. A later good file recovers it.

Threads: loads run on ``trimmer-reload`` (events, re-check) or on the caller of
``reload_now``/the constructor, serialised by ``_load_mutex``, which owns ``_states``.
``_snapshot`` and ``_statuses`` are published under the write lock and read under the
read lock from any thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from enum import Enum
from types import TracebackType
from typing import Callable, Container, Mapping

from trimmer import metrics
from contract.bundle_file import BundleError, BundleMap, parse_bundle
from trimmer.config import TrimmerConfig
from trimmer.kill_switch import KillSwitch
from trimmer.rwlock import RWLock
from trimmer.snapshot import EMPTY_SNAPSHOT, UNSERVED, UNTRIMMED, Snapshot, TrimDecision, build_snapshot
from trimmer.watch import DirectoryWatcher, ReloadScheduler

__all__ = ["BundleStatus", "FeatureTrimmer", "ReloadResult"]

log = logging.getLogger(__name__)

_KILL_SWITCH = "\0kill-switch"
"""The kill switch's name among the watched files (no bundle name can contain NUL)."""


class ReloadResult(str, Enum):
    """Outcome of one bundle load attempt (also the ``result`` label of the reload counter)."""

    OK = "ok"  # new content parsed and swapped in
    UNCHANGED = "unchanged"  # same content hash (or same failure) as last time: nothing to do
    ERROR = "error"  # unusable file: the last good map stays


@dataclass(frozen=True, slots=True)
class BundleStatus:
    """What ``status()`` reports per bundle (mirrors ``rootleaf.v1.BundleStatus``)."""

    name: str
    path: str
    model_count: int
    """Models in the last good map."""
    version_count: int
    """Model versions in the last good map."""
    last_good_load_unix: float | None
    """Unix time of the last successful load; None if the bundle never loaded."""
    last_error: str | None
    """Why the current file is unusable; None when it loaded cleanly."""
    content_hash: str | None
    """sha256 hex of the file content of the last good load; None if never loaded."""
    shadowed_models: tuple[str, ...] = ()
    """Models this bundle lists that a bundle with an earlier name provides instead."""


@dataclass(slots=True)
class _BundleState:
    """Loading-side state of one bundle (owned by whoever holds ``_load_mutex``)."""

    name: str
    path: str
    map: BundleMap | None = None
    good_hash: str | None = None
    good_at: float | None = None
    last_error: str | None = None
    seen: str | None = None  # content hash or failure text of the last file state handled


class _LoadFailure(Exception):
    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


def _read(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:  # follows the ConfigMap symlink chain
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise _LoadFailure("missing", f"file not found: {path}") from None
    except OSError as exc:
        raise _LoadFailure("unreadable", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise _LoadFailure("too_large", f"{path} is larger than max_file_bytes={max_bytes}")
    return data


class FeatureTrimmer:
    """Versioned per-model feature allowlists from bundle files, with hot reload."""

    def __init__(
        self,
        bundles: Mapping[str, str | os.PathLike[str]],
        watch: bool = True,
        *,
        config: TrimmerConfig | None = None,
        recheck_interval_s: float | None = None,
        debounce_s: float | None = None,
        kill_switch: str | os.PathLike[str] | None = None,
    ) -> None:
        """``bundles`` maps bundle name -> path of its bundle-level ``module_info.json``.
        ``watch`` False loads once (``reload_now`` still works); the keyword tunables
        override the matching ``config`` fields. ``kill_switch``: the file that turns
        trimming off for some or all models (``trimmer.kill_switch``), watched like a bundle."""
        cfg = config or TrimmerConfig()
        if recheck_interval_s is not None:
            cfg = replace(cfg, recheck_interval_s=recheck_interval_s)
        if debounce_s is not None:
            cfg = replace(cfg, debounce_s=debounce_s, max_debounce_s=max(cfg.max_debounce_s, debounce_s))
        self._config = cfg
        self._states: dict[str, _BundleState] = {}
        for name, path in bundles.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"bundle name must be a non-empty string, got {name!r}")
            text = os.fspath(path)
            if not isinstance(text, str) or not text:
                raise ValueError(f"bundle {name!r}: path must be a non-empty path, got {path!r}")
            # Absolute but not resolved: the watch must stay on the ConfigMap mount directory.
            self._states[name] = _BundleState(name=name, path=os.path.abspath(text))
        self._lock = RWLock()
        self._load_mutex = threading.Lock()
        self._changed = threading.Condition()
        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._statuses: dict[str, BundleStatus] = {}
        self._closed = False
        self._watcher: DirectoryWatcher | None = None
        self._scheduler: ReloadScheduler | None = None
        self._kill = KillSwitch(kill_switch) if kill_switch is not None else None
        if self._kill is not None:
            self._kill.reload()
        if watch:
            directories: dict[str, tuple[str, ...]] = {}
            watched = [(state.path, state.name) for state in self._states.values()]
            if self._kill is not None:
                watched.append((self._kill.path, _KILL_SWITCH))
            for path, name in watched:
                directory = os.path.dirname(path)
                directories[directory] = (*directories.get(directory, ()), name)
            self._scheduler = ReloadScheduler(
                [name for _, name in watched], self._reload_batch, cfg, self._ensure_watches
            )
            self._watcher = DirectoryWatcher(directories, self._scheduler.mark)
            self._watcher.start()  # before the first load, so no change falls in between
        self._load(sorted(self._states), startup=True)
        if self._scheduler is not None:
            self._scheduler.start()

    # ---- lookups (any thread, hot path) ----

    def lookup(
        self, model: str, version: str | None = None, servable: Container[str] | None = None
    ) -> TrimDecision:
        """The allowlist for ``model``: the exact version, else the latest, else untrimmed.

        With ``servable`` (the versions that some leaf can run now), "latest" means the newest
        bundle version in ``servable``, and a version the bundle lists but ``servable`` lacks
        is not substituted: the decision is of kind "unserved" (send nothing). A version the
        bundle does not list falls back to that latest, as without ``servable``.
        """
        lock = self._lock
        lock.acquire_read()
        try:
            snapshot = self._snapshot
        finally:
            lock.release_read()
        entry = snapshot.models.get(model)
        kill = self._kill
        if entry is None or (kill is not None and kill.is_off(model)):
            metrics.LOOKUP_UNTRIMMED.inc()
            return UNTRIMMED
        if version is not None:
            decision = entry.exact.get(version)
            if decision is not None:
                if servable is None or version in servable:
                    metrics.LOOKUP_EXACT.inc()
                    return decision
                metrics.LOOKUP_UNSERVED.inc()
                return entry.unserved[version]
        if servable is None or entry.latest.version in servable:
            metrics.LOOKUP_LATEST.inc()
            return entry.latest
        for candidate in reversed(entry.versions):
            if candidate in servable:
                metrics.LOOKUP_LATEST.inc()
                return entry.latest_of[candidate]
        metrics.LOOKUP_UNSERVED.inc()
        return UNSERVED

    def models(self) -> dict[str, tuple[str, ...]]:
        """Every model with an allowlist -> its versions, oldest first."""
        with self._lock.read_locked:
            snapshot = self._snapshot
        return {model: entry.versions for model, entry in snapshot.models.items()}

    @property
    def generation(self) -> int:
        """Increases with every consolidated-map swap."""
        with self._lock.read_locked:
            return self._snapshot.generation

    # ---- status ----

    def status(self) -> dict[str, BundleStatus]:
        """Per bundle (by name): path, counts, last good load, last error, content hash."""
        with self._lock.read_locked:
            return dict(self._statuses)

    @property
    def config(self) -> TrimmerConfig:
        return self._config

    @property
    def watched_directories(self) -> list[str]:
        return [] if self._watcher is None else self._watcher.watched

    # ---- reloading ----

    def reload_now(self, bundle: str | None = None) -> dict[str, ReloadResult]:
        """Load one bundle (or all) on the calling thread, now; returns each result."""
        if bundle is not None and bundle not in self._states:
            raise KeyError(f"unknown bundle {bundle!r}; known: {sorted(self._states)}")
        return self._load([bundle] if bundle is not None else sorted(self._states), startup=False)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds (checked after every load pass) or ``timeout``."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def wait_for_content_hash(self, bundle: str, content_hash: str, timeout: float) -> bool:
        """Block until ``bundle``'s last good load has ``content_hash`` (rollout verification)."""
        if bundle not in self._states:
            raise KeyError(f"unknown bundle {bundle!r}; known: {sorted(self._states)}")
        return self.wait_until(lambda: self.status()[bundle].content_hash == content_hash, timeout)

    @property
    def trimming_off(self) -> frozenset[str]:
        """Models the kill switch turns trimming off for now (``"*"`` = all)."""
        return frozenset() if self._kill is None else self._kill.off

    def reload_kill_switch(self) -> bool:
        """Read the kill switch file now (on the calling thread); True when its state changed."""
        if self._kill is None:
            return False
        with self._load_mutex:
            changed = self._kill.reload()
        with self._changed:
            self._changed.notify_all()
        return changed

    def _reload_batch(self, bundles: list[str], reason: str) -> None:
        log.debug("trimmer: reloading %s (%s)", bundles, reason)
        if _KILL_SWITCH in bundles:
            self.reload_kill_switch()
            bundles = [b for b in bundles if b != _KILL_SWITCH]
        if bundles:
            self._load(bundles, startup=False)

    def _ensure_watches(self) -> None:
        if self._watcher is not None:
            self._watcher.ensure()

    def _load(self, names: list[str], *, startup: bool) -> dict[str, ReloadResult]:
        with self._load_mutex:
            results = {name: self._load_one(self._states[name], startup) for name in names}
            maps_changed = any(r is ReloadResult.OK for r in results.values())
            previous = self._snapshot
            snapshot = previous
            if maps_changed or startup:
                good = {s.name: s.map for s in self._states.values() if s.map is not None}
                snapshot = build_snapshot(good, previous.generation + 1)
                self._report_new_conflicts(previous, snapshot)
            statuses = self._build_statuses(snapshot)
            with self._lock.write_locked:
                self._snapshot = snapshot
                self._statuses = statuses
        with self._changed:
            self._changed.notify_all()
        return results

    def _load_one(self, state: _BundleState, startup: bool) -> ReloadResult:
        name = state.name
        try:
            data = _read(state.path, self._config.max_file_bytes)
            content_hash = hashlib.sha256(data).hexdigest()
            if content_hash == state.good_hash:
                if state.last_error is not None:
                    log.info("trimmer: bundle %r is back to its last good content", name)
                    metrics.BUNDLE_HEALTHY.labels(name).set(1)
                state.seen, state.last_error = content_hash, None
                return self._count(name, ReloadResult.UNCHANGED)
            if content_hash == state.seen:
                return self._count(name, ReloadResult.UNCHANGED)
            state.seen = content_hash
            try:
                bundle_map = parse_bundle(data)
            except BundleError as exc:
                raise _LoadFailure("invalid", f"{state.path}: {exc.reason}") from None
        except _LoadFailure as failure:
            if failure.cause != "invalid":
                if state.seen == failure.reason:
                    return self._count(name, ReloadResult.UNCHANGED)
                state.seen = failure.reason
            return self._fail(state, failure, startup)
        old_hash = state.good_hash
        state.map, state.good_hash, state.good_at, state.last_error = bundle_map, content_hash, time.time(), None
        metrics.LAST_SUCCESS.labels(name).set(state.good_at)
        metrics.BUNDLE_HEALTHY.labels(name).set(1)
        if old_hash is not None:
            try:
                metrics.BUNDLE_INFO.remove(name, old_hash)
            except KeyError:
                pass
        metrics.BUNDLE_INFO.labels(name, content_hash).set(1)
        log.info(
            "trimmer: loaded bundle %r (%d models, %d versions, sha256 %s)",
            name, bundle_map.model_count, bundle_map.version_count, content_hash[:12],
        )
        return self._count(name, ReloadResult.OK)

    def _fail(self, state: _BundleState, failure: _LoadFailure, startup: bool) -> ReloadResult:
        state.last_error = failure.reason
        metrics.LOAD_ERRORS.labels(state.name, failure.cause).inc()
        metrics.BUNDLE_HEALTHY.labels(state.name).set(0)
        if state.map is None:
            log.error(
                "trimmer: bundle %r failed to load%s, its models go untrimmed: %s",
                state.name, " at start-up" if startup else "", failure.reason,
            )
        else:
            log.error(
                "trimmer: bundle %r failed to reload, keeping the map loaded at %s: %s",
                state.name, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(state.good_at)), failure.reason,
            )
        return self._count(state.name, ReloadResult.ERROR)

    @staticmethod
    def _count(bundle: str, result: ReloadResult) -> ReloadResult:
        metrics.RELOADS.labels(bundle, result.value).inc()
        return result

    @staticmethod
    def _report_new_conflicts(previous: Snapshot, snapshot: Snapshot) -> None:
        known = set(previous.conflicts)
        for conflict in snapshot.conflicts:
            if conflict in known:
                continue
            log.warning(
                "trimmer: model %r is listed by bundles %s; using bundle %r (first by name)",
                conflict.model, [conflict.winner, *conflict.shadowed], conflict.winner,
            )
            metrics.MODEL_CONFLICTS.labels(conflict.model, conflict.winner, ",".join(conflict.shadowed)).inc()

    def _build_statuses(self, snapshot: Snapshot) -> dict[str, BundleStatus]:
        shadowed: dict[str, list[str]] = {}
        for conflict in snapshot.conflicts:
            for bundle in conflict.shadowed:
                shadowed.setdefault(bundle, []).append(conflict.model)
        return {
            s.name: BundleStatus(
                name=s.name,
                path=s.path,
                model_count=s.map.model_count if s.map is not None else 0,
                version_count=s.map.version_count if s.map is not None else 0,
                last_good_load_unix=s.good_at,
                last_error=s.last_error,
                content_hash=s.good_hash,
                shadowed_models=tuple(shadowed.get(s.name, ())),
            )
            for s in self._states.values()
        }

    # ---- lifecycle ----

    def close(self) -> None:
        """Stop watching and re-checking (idempotent); lookups keep answering from the last map."""
        if self._closed:
            return
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._watcher is not None:
            self._watcher.stop()

    def __enter__(self) -> "FeatureTrimmer":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
