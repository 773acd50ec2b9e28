"""Model repository: which versions are loaded, hot loading, and version resolution.

Layout: ``<repo>/<model>/<version>/model.pt`` (+ ``module_info.json``). The loader thread
("leaf-repo-loader") owns all loading: it rescans when the watchdog observer reports a
change under the repository and every ``recheck_interval_s`` otherwise. Loaded state is a
dict of immutable ``ModelSlot`` values replaced as a whole (copy-on-write): a request reads
one slot and keeps its ``LoadedVersion`` until it finishes, so a swap never affects
requests in flight. A version that fails to load is logged and counted, retried only when
its file changes, and never replaces a loaded one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from contract.names import name_problem
from contract.versions import version_key
from leaf import metrics
from leaf.config import LeafConfig
from leaf.device import Placement
from leaf.errors import ModelNotFound, ModelUnavailable, VersionNotLoaded
from leaf.export import MODEL_FILE
from leaf.model import FileStamp, LoadedVersion, ModelLoadError, load_version

log = logging.getLogger(__name__)

# Events that mean something changed on disk (reads of model files emit opened/closed events).
_CHANGE_EVENTS = frozenset({"created", "deleted", "modified", "moved", "closed"})
# After a change event, wait for this long without further events before rescanning, so a
# file being copied in is loaded once it is complete; bounded by _SETTLE_MAX_ROUNDS.
_SETTLE_S = 0.05
_SETTLE_MAX_ROUNDS = 40
# Metric label for refused repository entries (unsafe names, symlinks out of the repository).
UNSAFE_LABEL = "_refused"


@dataclass(frozen=True, slots=True)
class ModelSlot:
    """The loaded versions of one model (oldest first) and the last load errors."""

    name: str
    versions: tuple[LoadedVersion, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def latest(self) -> LoadedVersion | None:
        return self.versions[-1] if self.versions else None

    def get(self, version: str) -> LoadedVersion | None:
        for loaded in self.versions:
            if loaded.version == version:
                return loaded
        return None


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _CHANGE_EVENTS:
            self._event.set()


class Repository:
    """Loads and hot-reloads the models a leaf hosts; resolves (model, version) requests."""

    def __init__(
        self,
        config: LeafConfig,
        placement: Placement,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._placement = placement
        self._on_change = on_change
        self._slots: dict[str, ModelSlot] = {}
        # (model, version) -> (stamp of the file that failed, reason); loader thread only.
        self._failed: dict[tuple[str, str], tuple[FileStamp, str]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._scanned = threading.Condition()
        self._scans = 0
        self._requested = 0  # rescan requests issued (tickets)
        self._served = 0  # highest ticket whose scan started after it was issued, and finished
        self._thread: threading.Thread | None = None
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._refused: set[Path] = set()  # unsafe entries already reported; loader thread only

    # -- reads (any thread) -------------------------------------------------------------

    def slots(self) -> Mapping[str, ModelSlot]:
        return self._slots

    def resolve(self, model: str, version: str) -> LoadedVersion:
        """The version to serve: the one asked for, or the latest loaded when ``version`` is
        empty. A named version that is not loaded raises ``VersionNotLoaded``: the caller
        built the request for that version's signature, so no other version may serve it."""
        slot = self._slots.get(model)
        if slot is None:
            raise ModelNotFound(f"model {model!r} is not hosted by this leaf")
        if version:
            loaded = slot.get(version)
            if loaded is not None:
                return loaded
            raise VersionNotLoaded(
                f"model {model!r} version {version!r} is not loaded here "
                f"(loaded: {[v.version for v in slot.versions]})"
            )
        latest = slot.latest
        if latest is None:
            reasons = "; ".join(f"{v}: {r}" for v, r in sorted(slot.errors.items()))
            raise ModelUnavailable(
                f"model {model!r} has no loaded version" + (f" ({reasons})" if reasons else "")
            )
        return latest

    def rescan(self) -> int:
        """Ask the loader thread to rescan now; returns a ticket for ``wait_for_rescan``."""
        with self._scanned:
            self._requested += 1
            ticket = self._requested
        self._wake.set()
        return ticket

    def wait_for_rescan(self, ticket: int, timeout: float) -> bool:
        """Block until a scan that started after ``rescan`` returned ``ticket`` has finished."""
        with self._scanned:
            return self._scanned.wait_for(lambda: self._served >= ticket, timeout=timeout)

    @property
    def scans(self) -> int:
        """Completed scans so far."""
        return self._scans

    # -- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        """Initial synchronous scan (caller's thread), before the loader thread starts."""
        self._scan()

    def start(self) -> None:
        """Start watching the repository and the periodic re-check."""
        repo = self._config.repo
        observer = Observer()
        if repo.is_dir():
            observer.schedule(_Wake(self._wake), str(repo), recursive=True)
        observer.name = "leaf-repo-watch"
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name="leaf-repo-loader", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        interval = self._config.recheck_interval_s
        while not self._stop.is_set():
            self._wake.wait(interval)
            if self._stop.is_set():
                return
            for _ in range(_SETTLE_MAX_ROUNDS):
                self._wake.clear()
                if not self._wake.wait(_SETTLE_S) or self._stop.is_set():
                    break
            self._wake.clear()
            with self._scanned:
                ticket = self._requested
            try:
                self._scan()
            except Exception:  # a scan must never kill the loader; the next one retries
                log.exception("repository scan of %s failed", self._config.repo)
            with self._scanned:
                self._served = max(self._served, ticket)
                self._scanned.notify_all()

    # -- loading (loader thread) --------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        """True when ``path`` (symlinks resolved) stays inside the repository: archives are
        code, so a leaf loads only from its configured repository."""
        try:
            return path.resolve().is_relative_to(self._config.repo.resolve())
        except (OSError, RuntimeError):
            return False

    def _refuse(self, path: Path, reason: str) -> None:
        if path not in self._refused:  # logged once per path, not on every scan
            self._refused.add(path)
            metrics.MODEL_LOADS.labels(UNSAFE_LABEL, "error").inc()
            log.error("model repository: ignoring %r: %s", str(path), reason)

    def _model_names(self) -> list[str]:
        if self._config.models is not None:
            return list(self._config.models)
        repo = self._config.repo
        try:
            entries = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            log.error("cannot list model repository %s: %s", repo, exc)
            return list(self._slots)
        names = []
        for entry in entries:
            problem = name_problem(entry.name)
            if problem:
                self._refuse(entry, f"model directory name {problem}")
            else:
                names.append(entry.name)
        return names

    def _scan(self) -> None:
        names = self._model_names()
        for name in names:
            if self._stop.is_set():
                return
            slot = self._scan_model(name)
            if slot != self._slots.get(name):
                self._publish({**self._slots, name: slot})
        gone = set(self._slots) - set(names)
        if gone:
            self._publish({k: v for k, v in self._slots.items() if k not in gone})
        with self._scanned:
            self._scans += 1
            self._scanned.notify_all()

    def _publish(self, slots: dict[str, ModelSlot]) -> None:
        self._slots = slots
        for name, slot in slots.items():
            metrics.LOADED_VERSIONS.labels(name).set(len(slot.versions))
        if self._on_change is not None:
            self._on_change()

    def _on_disk(self, model: str) -> dict[str, FileStamp]:
        stamps: dict[str, FileStamp] = {}
        model_dir = self._config.repo / model
        if not self._inside(model_dir):
            self._refuse(model_dir, "points outside the repository")
            return stamps
        try:
            entries = list(model_dir.iterdir())
        except OSError:
            return stamps
        for entry in entries:
            if entry.name.startswith("."):
                continue
            problem = name_problem(entry.name)
            if problem:
                self._refuse(entry, f"version directory name {problem}")
                continue
            if not self._inside(entry / MODEL_FILE):
                self._refuse(entry, "model file points outside the repository")
                continue
            try:
                stamps[entry.name] = FileStamp.of(entry / MODEL_FILE)
            except OSError:
                continue
        return stamps

    def _scan_model(self, model: str) -> ModelSlot:
        old = self._slots.get(model, ModelSlot(model))
        stamps = self._on_disk(model)
        errors: dict[str, str] = {}
        excluded: set[str] = set()
        for version, stamp in stamps.items():
            failed = self._failed.get((model, version))
            if failed is not None and failed[0] == stamp:
                errors[version] = failed[1]
                if old.get(version) is None:
                    excluded.add(version)
        loaded: dict[str, LoadedVersion] = {}
        # Each round either finishes or excludes one more version: bounded by the count.
        for _ in range(len(stamps) + 1):
            candidates = sorted((v for v in stamps if v not in excluded), key=version_key)
            target = self._config.versions.select(candidates)
            loaded = {}
            retry = False
            for version in target:
                previous = old.get(version)
                if previous is not None and (previous.stamp == stamps[version] or version in errors):
                    loaded[version] = previous
                    continue
                result = self._load(model, version, stamps[version])
                if isinstance(result, LoadedVersion):
                    loaded[version] = result
                    errors.pop(version, None)
                    continue
                errors[version] = result
                if previous is not None:
                    loaded[version] = previous  # a failed reload never replaces a good load
                else:
                    excluded.add(version)
                    retry = True
            if not retry:
                break
        versions = tuple(loaded[v] for v in sorted(loaded, key=version_key))
        if [v.version for v in versions] != [v.version for v in old.versions]:
            log.info("model %s: serving versions %s", model, [v.version for v in versions])
        return ModelSlot(model, versions, errors)

    def _load(self, model: str, version: str, stamp: FileStamp) -> LoadedVersion | str:
        started = time.perf_counter()
        try:
            loaded = load_version(
                model,
                version,
                self._config.repo / model / version,
                self._placement,
                self._config.decode_limits,
                self._config.max_candidates,
            )
        except ModelLoadError as exc:
            reason = str(exc)
            self._failed[(model, version)] = (stamp, reason)
            metrics.MODEL_LOADS.labels(model, "error").inc()
            log.error("model load failed: %s", reason)
            return reason
        self._failed.pop((model, version), None)
        metrics.MODEL_LOADS.labels(model, "ok").inc()
        log.info("loaded %s/%s in %.2fs", model, version, time.perf_counter() - started)
        if loaded.stamp != stamp:
            # The file changed while loading; the next event or re-check loads it again.
            self._wake.set()
        return loaded
