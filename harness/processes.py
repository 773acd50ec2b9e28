"""Process control for the local cluster: spawning servers with a port file, waiting on
ports and gRPC health (bounded), and stopping them (terminate -> wait -> kill).

A server is controlled through a ``Handle``: a ``subprocess.Popen`` here, or a container
(``harness.containers``), which has the same methods and is stopped by its name.

Children get SIGTERM when the launcher's process dies (``transport.parent_death``), so a
crashed launcher leaves no orphans. Functions run on the caller's thread.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from transport.parent_death import PARENT_PID_ENV
from transport.tls import PLAINTEXT, TlsConfig, sync_channel

REPO_ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("rootleaf.harness.processes")


class ClusterError(RuntimeError):
    """The cluster could not be started (a process exited, health timed out, bad override)."""


def free_port() -> int:
    """A currently free loopback port (for metrics endpoints, which have no port file)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"rootleaf" in cmdline


class Handle(Protocol):
    """What a server is controlled by (``subprocess.Popen``'s methods of that name)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


@dataclass(slots=True)
class Proc:
    name: str
    popen: Handle
    """The process, or the container (``harness.containers.Container``)."""
    log_path: Path
    port_file: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def spawn(name: str, args: Sequence[str], log_path: Path, port_file: Path) -> Proc:
    port_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[PARENT_PID_ENV] = str(os.getpid())
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", "rootleaf.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO_ROOT),
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        )
    log.info("started %s (pid %d): %s", name, popen.pid, " ".join(args))
    return Proc(name, popen, log_path, port_file)


def wait_port(proc: Proc, deadline: float) -> int:
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise ClusterError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            text = proc.port_file.read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    raise ClusterError(f"{proc.name}: no port file {proc.port_file} in time:\n{proc.log_tail()}")


def wait_serving(
    target: str, deadline: float, proc: Proc | None = None, service: str = "", tls: TlsConfig = PLAINTEXT
) -> None:
    """Block until ``target`` reports SERVING for ``service`` (gRPC health Watch), or raise."""
    with sync_channel(target, tls, []) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = f":\n{proc.log_tail()}" if proc else ""
                raise ClusterError(f"{target} did not report SERVING in time{tail}")
            if proc is not None and proc.popen.poll() is not None:
                raise ClusterError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
            try:
                # Watch streams every status change; a short slice keeps the liveness check above.
                for reply in stub.Watch(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=min(remaining, 2.0),
                    wait_for_ready=True,
                ):
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    raise ClusterError(f"{target}: health check failed: {exc.code().name} {exc.details()}") from None


def stop_process(popen: Handle, grace_s: float = 10.0) -> None:
    """terminate -> wait (bounded) -> kill -> wait."""
    stop_processes([popen], grace_s)


def stop_processes(popens: Sequence[Handle], grace_s: float = 10.0) -> None:
    """Stop several processes together: terminate all, wait (one shared bound), kill the rest.

    Every process is signalled and waited for even when handling another one raises; the
    first error is raised once all of them had their turn."""
    errors: list[BaseException] = []

    def each(action: Any, targets: Sequence[Handle]) -> None:
        for popen in targets:
            try:
                action(popen)
            except Exception as exc:  # keep going: the next process must still be stopped
                log.error("stopping pid %d: %s", popen.pid, exc)
                errors.append(exc)

    each(lambda p: p.poll() is None and p.terminate(), popens)
    # A stopped process (a frozen-leaf fault) handles SIGTERM only once it runs again.
    each(lambda p: p.poll() is None and p.send_signal(signal.SIGCONT), popens)
    deadline = time.monotonic() + grace_s

    def wait_or_kill(popen: Handle) -> None:
        try:
            popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=grace_s)

    each(wait_or_kill, popens)
    if errors:
        raise errors[0]


def wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive
