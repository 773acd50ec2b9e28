"""Waiting on and stopping the processes cluster tests start: the port a server writes, its
health, the description ``rootleaf up`` rewrites, and a SIGTERM stop that ends in a kill."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.waiting import eventually

START_S = 60.0


def _alive(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"{proc.args!r} exited with {proc.returncode} before {what}")


def wait_port(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = START_S) -> int:
    """The port ``proc`` wrote to ``path`` (``--port-file``); fails early if it exits."""

    def written() -> int:
        _alive(proc, f"writing {path}")
        text = path.read_text().strip() if path.exists() else ""
        return int(text) if text else 0

    return eventually(written, f"{path} written", timeout_s)


def wait_serving(target: str, service: str, timeout_s: float = START_S) -> None:
    """Until ``target`` reports ``service`` SERVING (a health Watch, no polling)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for reply in stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise AssertionError(f"{target} never reported SERVING")


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, wait, then kill: the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)
    return proc.returncode


def cluster_description(path: Path, proc: subprocess.Popen[bytes], timeout_s: float,
                        state: str = "running") -> dict[str, Any]:
    """The cluster description ``rootleaf up`` (``proc``) writes, once it says ``state``
    ("starting" or "running")."""

    def in_state() -> dict[str, Any]:
        _alive(proc, f"{path} said {state!r}")
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if doc.get("state") == state else {}

    return eventually(in_state, f"{path} saying state {state!r}", timeout_s, every_s=0.1)
