"""Real ``redis-server`` processes for tests: free loopback ports, temporary directories, no persistence.

Import a fixture into a test module (``from tests.redis_server import redis_server``).
Readiness is a PING answered (bounded wait); teardown is terminate -> wait -> kill by pid.
``stop()`` / ``start()`` restart the server on the same port and ``pause()`` / ``resume()``
freeze it (outage and timeout tests).

``LocalRedisCluster`` starts several ``cluster-enabled`` servers and joins them with
``redis-cli --cluster create`` (masters with one replica each); it can kill a master and
wait for the replica's promotion, and move slots between masters (``redis-cli --cluster
reshard``). Every wait polls ``CLUSTER`` state with a bound.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import pytest
from harness.processes import free_port
from tests.waiting import eventually

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PORT_ATTEMPTS = 3
"""Starts with freshly picked ports when the picked ones were taken meanwhile: ``free_port``
picks from the ephemeral range, which outgoing connections also draw from."""


def ping(port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class _PortTaken(RuntimeError):
    """redis-server could not listen: a picked port was taken meanwhile."""


class RedisServer:
    """One redis-server process; ``url`` stays valid across stop/start. With ``cluster_bus``
    it also listens on a cluster-bus port of its own."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: Sequence[str] = (), cluster_bus: bool = False
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install the Debian package redis-server (./run test does)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.bus_port = free_port() if cluster_bus else None  # explicit: port + 10000 may be taken or > 65535
        self.extra_args = tuple(extra_args)
        self.paused = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._ports_fixed = port is not None  # a given port, or one a start already used

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("redis-server already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._start_once()
                self._ports_fixed = True  # a restart keeps the address clients know
                return
            except _PortTaken:
                if self._ports_fixed or attempt == PORT_ATTEMPTS - 1:
                    raise
                self.port = free_port()
                self.bus_port = free_port() if self.bus_port is not None else None

    def _start_once(self) -> None:
        self._log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        log_start = self._log.tell()
        bus = ("--cluster-port", str(self.bus_port)) if self.bus_port is not None else ()
        self.proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes",
                *self.extra_args, *bus,
            ],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.port):
            if self.proc.poll() is not None:
                self.stop()
                taken = b"Address already in use" in (self.workdir / "redis.log").read_bytes()[log_start:]
                raise (_PortTaken if taken else RuntimeError)(f"redis-server exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server not answering PING after {START_TIMEOUT_S} s: {self.log_tail()}")
            time.sleep(0.01)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown, connections reset)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        self.paused = False
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a paused server must wake to see SIGTERM
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


CLUSTER_TIMEOUT_S = 30.0
NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout`` once formed: a master unreachable this long is failed over to its replica."""
FORMING_NODE_TIMEOUT_MS = 15_000
"""``cluster-node-timeout`` while the cluster forms. Redis drops a node whose bus handshake takes
longer than the node timeout and never meets it again: at 1 s a busy machine loses a node now
and then and the cluster never gets its last replica."""


class LocalRedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on loopback ports, joined by redis-cli."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.cli = shutil.which("redis-cli")
        if self.cli is None:
            raise RuntimeError("redis-cli not found: install the Debian package redis-server (./run test does)")
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for i in range(masters * (1 + replicas)):
            self.nodes.append(RedisServer(
                workdir / f"node{i}",
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", str(FORMING_NODE_TIMEOUT_MS),
                            "--repl-diskless-sync-delay", "0"),  # replicas sync at once (default waits 5 s)
                cluster_bus=True,
            ))

    @property
    def url(self) -> str:
        """The startup nodes: every node, so any one still up answers the slot map."""
        return "redis-cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            self._run_cli(
                "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            )
            self.wait_healthy()
            for node in self.nodes:
                self.command(node, "CONFIG", "SET", "cluster-node-timeout", str(NODE_TIMEOUT_MS))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _run_cli(self, *args: str) -> str:
        assert self.cli is not None
        done = subprocess.run([self.cli, *args], capture_output=True, text=True, timeout=CLUSTER_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args[:2])} failed: {done.stdout[-1500:]} {done.stderr[-500:]}")
        return done.stdout

    def command(self, node: RedisServer, *args: str) -> str:
        """One command through redis-cli (raw text reply)."""
        return self._run_cli("-h", "127.0.0.1", "-p", str(node.port), *args)

    def live(self) -> list[RedisServer]:
        """Nodes running and not frozen (a frozen node would hang every command)."""
        return [n for n in self.nodes if n.proc is not None and not n.paused]

    def topology(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` of a live node: id, port, flags, master id, slots per node."""
        return self._topology_of(self.live()[0])

    def _topology_of(self, node: RedisServer) -> list[dict[str, str]]:
        out = []
        for line in self.command(node, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            out.append({
                "id": parts[0], "port": parts[1].split("@")[0].rsplit(":", 1)[1], "flags": parts[2],
                "master": parts[3], "slots": " ".join(parts[8:]),
            })
        return out

    def masters(self) -> list[RedisServer]:
        """Live nodes that are masters serving slots."""
        ports = {int(n["port"]) for n in self.topology() if "master" in n["flags"] and n["slots"] and "fail" not in n["flags"]}
        return [n for n in self.live() if n.port in ports]

    def node_id(self, node: RedisServer) -> str:
        return self.command(node, "CLUSTER", "MYID").strip()

    def _wait_until(self, done: Callable[[], bool], failure: Callable[[], str], timeout_s: float = CLUSTER_TIMEOUT_S) -> None:
        """Poll ``done`` until true, at most ``timeout_s``; a node that does not answer (yet)
        counts as not done. Then fail with ``failure()``."""

        def answered() -> bool:
            try:
                return done()
            except (RuntimeError, subprocess.TimeoutExpired):
                return False

        eventually(answered, failure, timeout_s, every_s=0.05)

    def wait_healthy(self) -> None:
        """Every live node sees ``cluster_state:ok`` and knows every live node, every master has
        its replicas in sync."""

        def healthy() -> bool:
            live = self.live()
            return all(
                "cluster_state:ok" in self.command(n, "CLUSTER", "INFO") and len(self._topology_of(n)) >= len(live)
                for n in live
            ) and all(self._replicas_in_sync(m) for m in self.masters())

        self._wait_until(healthy, lambda: f"redis cluster not healthy after {CLUSTER_TIMEOUT_S} s: {self.topology()}")

    def _replicas_in_sync(self, master: RedisServer) -> bool:
        if len(self.live()) < len(self.nodes):
            return True  # after a kill the promoted master has no replica left
        return len(self._replica_offsets(master)[1]) >= self.replicas

    def _replica_offsets(self, master: RedisServer) -> tuple[int, list[int]]:
        """The master's replication offset and the offset each online replica acknowledged."""
        fields = dict(
            line.split(":", 1) for line in self.command(master, "INFO", "replication").splitlines() if ":" in line
        )
        acked = []
        for key, value in fields.items():
            if key.startswith("slave") and key[5:].isdigit():
                replica = dict(item.split("=", 1) for item in value.strip().split(",") if "=" in item)
                if replica.get("state") == "online":
                    acked.append(int(replica["offset"]))
        return int(fields["master_repl_offset"]), acked

    def wait_replicated(self) -> None:
        """Block until every master's writes so far reached its replicas (bounded).

        Compares replication offsets: ``WAIT`` would only count this connection's own writes
        (none), and a replica that finished its initial sync may not stream writes yet."""
        for master in self.masters():
            written, _ = self._replica_offsets(master)

            def caught_up(master: RedisServer = master, written: int = written) -> bool:
                acked = self._replica_offsets(master)[1]
                return len(acked) >= self.replicas and min(acked) >= written

            def behind(master: RedisServer = master, written: int = written) -> str:
                return f"master {master.port}: replicas acknowledged {self._replica_offsets(master)[1]}, written {written}"

            self._wait_until(caught_up, behind)

    def kill_master(self, master: RedisServer) -> None:
        """SIGKILL a master and wait until its replica serves its slots (bounded)."""
        self._fail_master(master, master.kill)

    def freeze_master(self, master: RedisServer) -> None:
        """SIGSTOP a master (it hangs, connections stay open) and wait until its replica
        serves its slots; ``stop()`` wakes it."""
        self._fail_master(master, master.pause)

    def _fail_master(self, master: RedisServer, fail: Callable[[], None]) -> None:
        dead_id = self.node_id(master)
        fail()
        others = [n for n in self.live() if n is not master]

        def promoted() -> bool:
            nodes = self._topology_of(others[0])
            return not any(n["id"] == dead_id and n["slots"] for n in nodes) and all(
                "cluster_state:ok" in self.command(n, "CLUSTER", "INFO") for n in others
            )

        self._wait_until(promoted, lambda: f"no replica promoted for {master.port} after {CLUSTER_TIMEOUT_S} s")

    def reshard(self, source: RedisServer, target: RedisServer, slots: int) -> None:
        """Move ``slots`` slots (and their keys) from ``source`` to ``target`` (redis-cli, MIGRATE)."""
        self._run_cli(
            "--cluster", "reshard", f"127.0.0.1:{source.port}",
            "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
            "--cluster-slots", str(slots), "--cluster-yes",
        )

    def slot_owner(self, slot: int) -> int:
        """Port of the master serving ``slot`` now."""
        for entry in self.topology():
            for part in entry["slots"].split():
                if part.startswith("["):
                    continue
                lo, _, hi = part.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return int(entry["port"])
        raise RuntimeError(f"no master serves slot {slot}")


def _cluster(workdir: Path) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(workdir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A 3-master, 3-replica cluster shared by a module's tests that leave its topology alone."""
    yield from _cluster(tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A cluster of the test's own (for tests that kill masters or move slots)."""
    yield from _cluster(tmp_path / "redis-cluster")
