"""The Docker engine the image is built and run with: reach a running one, or start one.

``ensure_engine()`` returns an ``Engine`` for a daemon that answers ``docker version``; when
none does and this process may start one (root, ``dockerd`` installed: Debian's
``docker.io``), it starts ``dockerd --storage-driver=overlay2 --iptables=false --bridge=none``
(``vfs`` when overlay2 does not start) and ``Engine.close()`` stops it again. The engine
needs no bridge or iptables: everything runs with ``--network host``. Functions run on the
caller's thread; every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger("rootleaf.deploy.engine")

STORAGE_DRIVERS = ("overlay2", "vfs")
"""Tried in this order: overlay2 shares layers (fast builds); vfs copies them (works anywhere)."""


class EngineError(RuntimeError):
    """No container engine could be reached or started, or a docker command failed."""


def docker_cli() -> str | None:
    """The ``docker`` client to use: the engine package's own (its built-in BuildKit builds
    without the buildx plug-in, which a newer stand-alone client needs), else any on PATH."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(slots=True)
class Engine:
    """A reachable Docker daemon; ``started`` is the ``dockerd`` this process started, if any."""

    cli: str
    storage_driver: str
    started: subprocess.Popen[bytes] | None = None

    def run(self, args: Sequence[str], timeout_s: float = 120.0, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` with output captured; raises ``EngineError`` on failure when ``check``."""
        try:
            done = subprocess.run([self.cli, *args], capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired:
            raise EngineError(f"docker {' '.join(args[:2])}: no answer in {timeout_s:g} s") from None
        if check and done.returncode != 0:
            raise EngineError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def close(self, grace_s: float = 30.0) -> None:
        """Stop the daemon if this process started it (SIGTERM, bounded wait, SIGKILL)."""
        proc, self.started = self.started, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
        log.info("stopped dockerd (pid %d)", proc.pid)


def _answers(cli: str) -> str | None:
    """The storage driver of the daemon ``cli`` reaches, or None when none answers."""
    try:
        done = subprocess.run([cli, "info", "--format", "{{.Driver}}"], capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def unavailable_reason() -> str | None:
    """Why no engine can be reached or started here (None: one can)."""
    cli = docker_cli()
    if cli is None:
        return "no docker client (install Debian's docker.io: ./run installs it as root)"
    if _answers(cli):
        return None
    if shutil.which("dockerd") is None:
        return "no Docker daemon answers and dockerd is not installed (Debian's docker.io)"
    if os.geteuid() != 0:
        return "no Docker daemon answers and only root can start dockerd"
    return None


def ensure_engine(state_dir: str | Path, start_timeout_s: float = 60.0) -> Engine:
    """An engine that answers: the running one, else a ``dockerd`` started here (see module)."""
    reason = unavailable_reason()
    if reason:
        raise EngineError(reason)
    cli = docker_cli()
    assert cli is not None
    driver = _answers(cli)
    if driver:
        return Engine(cli, driver)
    dockerd = shutil.which("dockerd")
    assert dockerd is not None
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    failures = []
    for driver in STORAGE_DRIVERS:
        log_path = state / f"dockerd-{driver}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [dockerd, f"--storage-driver={driver}", "--iptables=false", "--bridge=none"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(cli) == driver:
                log.info("started dockerd (pid %d, storage driver %s)", proc.pid, driver)
                return Engine(cli, driver, proc)
            time.sleep(0.5)
        Engine(cli, driver, proc).close()
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        failures.append(f"{driver}: " + " | ".join(tail))
    raise EngineError("dockerd did not start: " + "; ".join(failures))
