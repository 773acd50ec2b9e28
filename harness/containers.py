"""Servers of the local cluster as containers of the rootleaf image: another kind of process
handle for ``harness.processes``.

``spawn_container`` runs ``docker run --rm --network host`` attached, its output going to
the same log file a process would write, and returns a ``Proc`` whose handle is a
``Container``: ``poll``/``wait`` follow the attached client (it exits with the container's
code), ``terminate``/``kill`` signal the container by name, and ``pid`` is the server's own
process on this host (the container's init, so CPU figures, ``pid_alive`` and
``rootleaf down`` work as for a process). The container runs as the image's user; paths are
mounted at the same place they have here: the cluster directory read-only, the server's
own directory read-write (port file), its model repository or bundle directory read-only
on top, and any directory the caller names read-write (the soak's leaf request records).
Functions run on the caller's thread; waits are bounded.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from deploy.engine import Engine
from harness.processes import ClusterError, Proc

log = logging.getLogger("rootleaf.harness.containers")

IMAGE_UID = 10001
"""The image's user (deploy/docker/Dockerfile ``USER``): owns what a container writes."""
PORT_ENV = "ROOTLEAF_PORT"
"""Tells the image's HEALTHCHECK which gRPC port to probe."""


@dataclass(frozen=True, slots=True)
class Mount:
    path: Path
    writable: bool = False

    def flag(self) -> str:
        return f"type=bind,source={self.path},target={self.path}" + ("" if self.writable else ",readonly")


class Container:
    """A running container, by name, with the attached ``docker run`` client (Popen-like)."""

    def __init__(self, engine: Engine, name: str, client: subprocess.Popen[bytes], pid: int) -> None:
        self.engine = engine
        self.name = name
        self.client = client
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return self.client.returncode

    def poll(self) -> int | None:
        return self.client.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.client.wait(timeout)

    def send_signal(self, sig: int) -> None:
        self._signal(signal.Signals(sig).name.removeprefix("SIG"))

    def terminate(self) -> None:
        self._signal("TERM")

    def kill(self) -> None:
        self._signal("KILL")

    def health(self) -> str:
        """The image HEALTHCHECK's verdict: "starting", "healthy", "unhealthy" ("" once gone)."""
        done = self.engine.run(["inspect", "--format", "{{.State.Health.Status}}", self.name], check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def _signal(self, name: str) -> None:
        if self.client.poll() is None:
            # A container that stopped meanwhile answers an error: nothing left to signal.
            self.engine.run(["kill", "--signal", name, self.name], timeout_s=30, check=False)


def readable_by_image(path: Path) -> None:
    """Let the image's user list and enter ``path`` (a temporary directory is often 0700)."""
    mode = path.stat().st_mode
    if mode & 0o005 != 0o005:
        path.chmod(mode | 0o005)


def writable_by_image(path: Path) -> None:
    """Create ``path`` so that the image's user may write there."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, IMAGE_UID, IMAGE_UID)
    else:
        path.chmod(0o777)


def spawn_container(
    engine: Engine, image: str, name: str, args: Sequence[str], log_path: Path, port_file: Path, port: int,
    mounts: Sequence[Mount], start_timeout_s: float = 60.0,
) -> Proc:
    """Start ``rootleaf ARGS`` in a container of ``image`` (see the module docstring)."""
    port_file.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    container = f"{name}-{uuid.uuid4().hex[:8]}"  # fresh per start: a removed one's name may linger a moment
    argv = [engine.cli, "run", "--rm", "--name", container, "--network", "host", "--env", f"{PORT_ENV}={port}",
            "--label", "org.rootleaf.cluster=1"]
    for mount in mounts:
        argv += ["--mount", mount.flag()]
    argv += [image, *args]
    with open(log_path, "ab") as log_file:
        client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + start_timeout_s
    pid = 0
    while not pid:
        if client.poll() is not None:
            raise ClusterError(f"{name}: docker run exited with code {client.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            client.kill()
            client.wait(30)
            raise ClusterError(f"{name}: container did not start in {start_timeout_s:g} s:\n{_tail(log_path)}")
        done = engine.run(["inspect", "--format", "{{.State.Pid}}", container], timeout_s=30, check=False)
        pid = int(done.stdout.strip() or 0) if done.returncode == 0 else 0
        if not pid:
            time.sleep(0.1)
    log.info("started %s (container %s, pid %d): %s", name, container, pid, " ".join(args))
    return Proc(name, Container(engine, container, client, pid), log_path, port_file)


def spawn_server(
    engine: Engine, image: str, name: str, args: Sequence[str], log_path: Path, port_file: Path, port: int,
    cluster_dir: Path, reads: Path, writes: Sequence[Path] = (),
) -> Proc:
    """A cluster server in a container: ``cluster_dir`` read-only, the directory of its log
    and port file writable, ``reads`` (its models or bundles) read-only on top, ``writes``
    (directories it shares with other servers) writable."""
    own_dir = log_path.parent
    for path in (own_dir, *writes):
        writable_by_image(path)
    for path in (cluster_dir, reads):
        readable_by_image(path)
    mounts = [Mount(cluster_dir), Mount(own_dir, writable=True), Mount(reads),
              *(Mount(path, writable=True) for path in writes)]
    return spawn_container(engine, image, "rootleaf-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", name), args, log_path,
                           port_file, port, mounts)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
