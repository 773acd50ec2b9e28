"""``rootleaf root --workers N``: N root processes behind one port, kept alive by a supervisor.

One Python root serves on one event loop, so it uses about one core. The supervisor runs N
copies of the root as child processes (``python -m root.cli ... --worker-listen HOST:PORT``),
each with its own trimmer, feature cache and leaf channels, all bound to the same port with
``SO_REUSEPORT``: the kernel spreads incoming connections over them (gRPC's multiprocessing
example does the same). The supervisor binds the port first (port 0 picks one) and keeps
that socket open without listening, so the port stays reserved while workers restart.

- Metrics: the workers write prometheus-client's multiprocess files into a directory
  (``PROMETHEUS_MULTIPROC_DIR``, a temporary one unless set), and the supervisor alone serves
  ``metrics_port`` with the sum over workers (gauges per ``multiprocess_mode``), plus its
  own ``rootleaf_root_worker_restarts_total`` and ``rootleaf_root_workers``.
- A worker that exits is started again (after a pause that doubles while it keeps dying
  within ``CRASH_WINDOW_S`` of its start, up to ``MAX_BACKOFF_S``).
- SIGTERM/SIGINT are forwarded to every worker, which drains for ``shutdown_grace_s``;
  a worker still running ``KILL_AFTER_S`` later is killed. The port file is written once
  every worker serves. A worker whose supervisor dies (SIGKILL) stops by itself
  (``watch_parent``).

Everything runs on the supervisor's main thread: signal handlers set an event the loop
polls (bounded waits), and the metrics endpoint is prometheus-client's HTTP thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable

from root.config import RootConfig

log = logging.getLogger(__name__)

MAX_DEFAULT_WORKERS = 8
"""``workers = 0`` takes the cores this process may use, at most this many."""
START_TIMEOUT_S = 120.0
"""Every worker must serve within this long at start-up."""
POLL_S = 0.2
CRASH_WINDOW_S = 5.0
MAX_BACKOFF_S = 10.0
KILL_AFTER_S = 10.0
"""Seconds past the drain grace before a worker that has not exited is killed."""


def available_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup CPU quota (a
    Kubernetes CPU limit; cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cpu_quota(cgroup)
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def _cpu_quota(cgroup: Path) -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 = unlimited
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def resolve_workers(workers: int) -> int:
    """``workers`` itself, or for 0 the available cores capped at ``MAX_DEFAULT_WORKERS``."""
    return workers if workers > 0 else min(available_cores(), MAX_DEFAULT_WORKERS)


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen must be host:port to run several workers, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT; the socket keeps the port ours."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _read_port(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    port_file: Path
    failures: int = 0
    """Consecutive exits within ``CRASH_WINDOW_S`` of a start."""
    restart_at: float | None = None


@dataclass(slots=True)
class Supervisor:
    """Runs and keeps ``workers`` root processes for ``config_path``; see the module docstring."""

    config_path: Path
    config: RootConfig
    workers: int
    log_level: str = "INFO"
    on_started: Callable[[int], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _children: list[_Worker] = field(default_factory=list)
    restarts: int = 0
    """Workers started again after exiting (read by the metrics thread)."""

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        host, port = split_listen(self.config.listen)
        reserved = reserve_port(host, port)
        port = reserved.getsockname()[1]
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        metrics_dir = Path(tempfile.mkdtemp(prefix="rootleaf-metrics-")) if own_dir else Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        work_dir = Path(tempfile.mkdtemp(prefix="rootleaf-workers-"))
        previous = {sig: signal.signal(sig, self._signalled) for sig in (signal.SIGTERM, signal.SIGINT)}
        metrics_server = None
        try:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
            spawn = lambda index: self._spawn(index, listen, env, work_dir)  # noqa: E731
            self._children = [spawn(i) for i in range(self.workers)]
            if not self._wait_serving():
                return 0 if self._stop.is_set() else 1  # a signal during start-up is a stop
            if self.config.metrics_port:
                metrics_server = _serve_metrics(self.config.metrics_port, self.config.metrics_host, metrics_dir,
                                                WorkerCollector(self))
            log.info("root supervisor: %d workers on port %d (pids %s)", self.workers, port,
                     [w.proc.pid for w in self._children])
            if self.on_started is not None:
                self.on_started(port)
            while not self._stop.wait(POLL_S):
                self._keep_alive(spawn, metrics_dir)
            log.info("root supervisor: stopping %d workers (grace %.1fs)", len(self._children), self.config.shutdown_grace_s)
            return 0
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            reserved.close()
            shutil.rmtree(work_dir, ignore_errors=True)
            if own_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._children]

    def stop(self) -> None:
        self._stop.set()

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _spawn(self, index: int, listen: str, env: dict[str, str], work_dir: Path) -> _Worker:
        port_file = work_dir / f"worker-{index}.port"
        port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "root.cli", "--config", str(self.config_path), "--workers", str(self.workers),
            "--worker-listen", listen, "--port-file", str(port_file), "--log-level", self.log_level,
        ]
        # Workers share the supervisor's stdout/stderr (one log stream, lines tagged by pid).
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        return _Worker(index, proc, time.monotonic(), port_file)

    def _wait_serving(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(_read_port(w.port_file) is not None for w in self._children):
            dead = [w for w in self._children if w.proc.poll() is not None]
            if dead:
                log.error("root worker %d exited at start-up (code %s)", dead[0].index, dead[0].proc.returncode)
                return False
            if time.monotonic() > deadline:
                log.error("root workers not serving after %.0f s", START_TIMEOUT_S)
                return False
            if self._stop.wait(0.05):
                return False
        return True

    def _keep_alive(self, spawn: Callable[[int], _Worker], metrics_dir: Path) -> None:
        now = time.monotonic()
        for i, worker in enumerate(self._children):
            code = worker.proc.poll()
            if code is None:
                if worker.failures and now - worker.started > CRASH_WINDOW_S:
                    worker.failures = 0
                continue
            if worker.restart_at is None:
                _mark_dead(worker.proc.pid, metrics_dir)
                crashed_early = now - worker.started < CRASH_WINDOW_S
                failures = worker.failures + 1 if crashed_early else 0
                delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (failures - 1)) if failures else 0.0
                log.warning("root worker %d (pid %d) exited with %s; restarting in %.1fs",
                            worker.index, worker.proc.pid, code, delay)
                worker.failures, worker.restart_at = failures, now + delay
            if now >= worker.restart_at:
                fresh = spawn(worker.index)
                fresh.failures = worker.failures
                self._children[i] = fresh
                self.restarts += 1

    def _shutdown(self) -> None:
        live = [w.proc for w in self._children if w.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace_s + KILL_AFTER_S
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("root worker pid %d did not drain in time: killing it", proc.pid)
                proc.kill()
                proc.wait()


def _mark_dead(pid: int, metrics_dir: Path) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))


class WorkerCollector:
    """The supervisor's own series, read from its state when scraped (a collector rather than
    a ``Counter``: with ``PROMETHEUS_MULTIPROC_DIR`` set a counter would also land in the
    workers' files and be counted twice)."""

    RESTARTS = "rootleaf_root_worker_restarts"
    WORKERS = "rootleaf_root_workers"

    def __init__(self, supervisor: Supervisor | None) -> None:
        self._supervisor = supervisor  # None: describe() only (tests list the names)

    def collect(self) -> list[Any]:
        if self._supervisor is None:
            return self.describe()
        return self._families(self._supervisor.restarts, self._supervisor.workers)

    def describe(self) -> list[Any]:
        return self._families(0, 0)

    def _families(self, restarts: int, workers: int) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        return [
            CounterMetricFamily(self.RESTARTS, "Root workers started again after exiting (crash or kill)", value=restarts),
            GaugeMetricFamily(self.WORKERS, "Root worker processes the supervisor keeps", value=workers),
        ]


def _serve_metrics(port: int, host: str, metrics_dir: Path, own: WorkerCollector) -> Any:
    """prometheus-client's HTTP endpoint over every worker's files (summed per series) and
    the supervisor's own series."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    registry.register(own)
    server, _ = start_http_server(port, host, registry=registry)
    return server


def watch_parent(interval_s: float = 1.0) -> threading.Thread:
    """In a worker: SIGTERM ourselves (a normal drain) when the supervisor is gone, so a
    supervisor killed with SIGKILL leaves no workers holding the port. A daemon thread,
    "root-parent-watch", polling the parent pid."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        log.warning("root supervisor (pid %d) is gone: stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="root-parent-watch", daemon=True)
    thread.start()
    return thread


def worker_config(config: RootConfig, listen: str, workers: int) -> RootConfig:
    """A worker's config: the shared port, no metrics endpoint of its own."""
    return dataclasses.replace(config, listen=listen, metrics_port=0, workers=workers)
