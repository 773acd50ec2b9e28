"""Local cluster launcher: leaf partitions and a root as processes on loopback ports.

``LocalCluster`` generates (or reuses) a workload's assets, copies them into per-role
directories (``production`` and, with ``canary=True``, ``canary``: own repositories, own
bundle files), starts one leaf process per partition and one root per role on port 0, waits
for gRPC health SERVING (bounded), and writes ``<dir>/cluster.json`` describing what runs.
``rootleaf up`` wraps it and waits for Ctrl-C or SIGTERM; ``rootleaf down`` stops a cluster
from its ``cluster.json`` (the ``up`` process first, then any pid still alive:
terminate -> wait -> kill). Servers are started only as subprocesses, never imported.

State is owned by the thread that calls ``start()``; children get SIGTERM if that thread's
process dies (``PR_SET_PDEATHSIG``), so a crashed launcher leaves no orphans behind.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.demo_assets import DemoAssets, copy_tree, ensure_assets
from deploy.workload import WorkloadError, builtin_workload
from transport.tls import PLAINTEXT, TlsConfig, sync_channel

log = logging.getLogger("rootleaf.deploy.local_cluster")

CLUSTER_FILE = "cluster.json"
SCHEMA_VERSION = 1
ROLES = ("production", "canary")
REPO_ROOT = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """The cluster could not be started (a process exited, health timed out, bad override)."""


@dataclass(frozen=True, slots=True)
class LeafInfo:
    """One running leaf partition."""

    partition: str
    target: str
    metrics_url: str
    repo_dir: str
    models: tuple[str, ...]
    pid: int
    log: str
    replica: int = 0
    """Which of the partition's replicas (0-based); replicas share the repository."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "models": list(self.models)}


TLS_FILES = {"ca_file": "ca.pem", "server_cert": "server.pem", "server_key": "server.key",
             "client_cert": "client.pem", "client_key": "client.key"}
"""``ClusterTls`` field -> file name in a ``--tls-dir`` (what ``tests/tls_certs.make_certs`` writes)."""


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """Certificates of a mutual-TLS local cluster: one CA; every root and leaf serves with
    the server pair and requires a client certificate from the CA; roots (towards leaves)
    and tools present the client pair."""

    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    @classmethod
    def from_dir(cls, directory: str | Path) -> "ClusterTls":
        """The five PEM files of ``directory`` by their conventional names (``TLS_FILES``)."""
        base = Path(directory).resolve()
        missing = [name for name in TLS_FILES.values() if not (base / name).is_file()]
        if missing:
            raise ClusterError(f"TLS directory {base} lacks {', '.join(missing)}")
        return cls(**{f: str(base / name) for f, name in TLS_FILES.items()})

    def server(self) -> TlsConfig:
        return TlsConfig(cert_file=self.server_cert, key_file=self.server_key, client_ca_file=self.ca_file)

    def client(self) -> TlsConfig:
        return TlsConfig(ca_file=self.ca_file, cert_file=self.client_cert, key_file=self.client_key)


def tls_json(tls: TlsConfig) -> dict[str, str]:
    """A client ``TlsConfig`` as cluster.json carries it (only the fields that are set)."""
    fields = ("ca_file", "cert_file", "key_file", "server_name")
    return {f: getattr(tls, f) for f in fields if getattr(tls, f)}


@dataclass(frozen=True, slots=True)
class RootInfo:
    """One running root."""

    target: str
    metrics_url: str
    config_dir: str
    config_file: str
    bundle_files: Mapping[str, str]
    pid: int
    log: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The root-config keys this root was started with beyond the generated defaults."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bundle_files": dict(self.bundle_files), "settings": dict(self.settings)}


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` (dotted keys for sections, e.g. ``cache.max_bytes=0``); the value is
    read as a TOML value, else taken as a bare string (``compression=none``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ClusterError(f"root config override {text!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ClusterError(f"cannot write {value!r} to a root config")


def render_toml(doc: Mapping[str, Any]) -> str:
    """TOML text of a two-level document (top-level keys, tables, tables of tables)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if scalars or not nested:
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        for sub, subtable in nested.items():
            lines += ["", f"[{name}.{sub}]"] + [f"{k} = {_toml_value(v)}" for k, v in subtable.items()]
    return "\n".join(lines) + "\n"


def apply_overrides(doc: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with dotted-key overrides applied (the root validates the result)."""
    out = json.loads(json.dumps(doc))
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ClusterError(f"root config override {key!r}: {part!r} is not a table")
            node = child
        node[leaf] = value
    return out


def free_port() -> int:
    """A currently free loopback port (for metrics endpoints, which have no port file)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded here, not in the child: dlopen between fork and exec can crash or deadlock when
# another thread of the launcher (a gRPC poller, a load generator) held the loader's or
# malloc's lock at fork time; the child only makes the prctl call.
_LIBC = _load_libc()


def _die_with_parent() -> None:
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"rootleaf" in cmdline


@dataclass(slots=True)
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def _spawn(name: str, args: Sequence[str], log_path: Path, port_file: Path) -> _Proc:
    port_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
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
            preexec_fn=_die_with_parent,
        )
    log.info("started %s (pid %d): %s", name, popen.pid, " ".join(args))
    return _Proc(name, popen, log_path, port_file)


def _wait_port(proc: _Proc, deadline: float) -> int:
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
    target: str, deadline: float, proc: _Proc | None = None, service: str = "", tls: TlsConfig = PLAINTEXT
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


def stop_process(popen: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """terminate -> wait (bounded) -> kill -> wait."""
    stop_processes([popen], grace_s)


def stop_processes(popens: Sequence[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """Stop several processes together: terminate all, wait (one shared bound), kill the rest.

    Every process is signalled and waited for even when handling another one raises; the
    first error is raised once all of them had their turn."""
    errors: list[BaseException] = []

    def each(action: Any, targets: Sequence[subprocess.Popen[bytes]]) -> None:
        for popen in targets:
            try:
                action(popen)
            except Exception as exc:  # keep going: the next process must still be stopped
                log.error("stopping pid %d: %s", popen.pid, exc)
                errors.append(exc)

    each(lambda p: p.poll() is None and p.terminate(), popens)
    deadline = time.monotonic() + grace_s

    def wait_or_kill(popen: subprocess.Popen[bytes]) -> None:
        try:
            popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=grace_s)

    each(wait_or_kill, popens)
    if errors:
        raise errors[0]


class LocalCluster:
    """Leaves + root(s) of one workload as local processes; see the module docstring."""

    def __init__(
        self,
        workload: str | Path,
        directory: str | Path,
        *,
        canary: bool = False,
        root_overrides: Mapping[str, Any] | None = None,
        leaf_args: Sequence[str] = ("--torch-threads", "1"),
        startup_timeout_s: float = 180.0,
        launcher: str = "api",
        replicas: int = 1,
        tls: ClusterTls | None = None,
    ) -> None:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 16:
            raise ClusterError(f"replicas must be an integer in [1, 16], got {replicas!r}")
        self.workload_path = builtin_workload(str(workload)).resolve()
        self.directory = Path(directory).resolve()
        self.roles: tuple[str, ...] = ROLES if canary else ROLES[:1]
        self.root_overrides: dict[str, Any] = dict(root_overrides or {})
        self.leaf_args = tuple(leaf_args)
        self.startup_timeout_s = startup_timeout_s
        self.launcher = launcher
        self.replicas = replicas
        """Leaf processes per partition (the root lists every one as a target)."""
        self.tls = tls
        self.client_tls = tls.client() if tls is not None else PLAINTEXT
        """What a client of this cluster (root or leaf) connects with."""
        self.assets: DemoAssets | None = None
        self._leaves: dict[str, list[tuple[LeafInfo, _Proc]]] = {}
        self._roots: dict[str, tuple[RootInfo, _Proc]] = {}
        self._state = "starting"
        """cluster.json "state": "starting" until every process serves, then "running"."""

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def cluster_json(self) -> Path:
        return self.directory / CLUSTER_FILE

    def start(self) -> None:
        """Generate or reuse assets, start every process, wait for SERVING, write cluster.json."""
        running = self._running_elsewhere()
        if running:
            raise ClusterError(
                f"a cluster is already running in {self.directory} (pids {running}); "
                f"stop it first: rootleaf down --dir {self.directory}"
            )
        try:
            self.assets = ensure_assets(self.workload_path, self.directory)
            deadline = time.monotonic() + self.startup_timeout_s
            pending: list[tuple[str, str, _Proc, Path, tuple[str, ...]]] = []
            for role in self.roles:
                self._prepare_role(role)
                for partition, models in self.assets.partitions.items():
                    base = self.directory / role / "leaves" / partition
                    for replica in range(self.replicas):
                        metrics_port = free_port()
                        proc = self._spawn_leaf(role, partition, models, 0, metrics_port, (), replica)
                        pending.append((role, partition, proc, base, models))
                        self._leaves.setdefault(role, []).append(
                            (LeafInfo(partition, "", f"http://127.0.0.1:{metrics_port}/metrics", str(base / "repo"),
                                      models, proc.popen.pid, str(proc.log_path), replica), proc)
                        )
            self._write_description()  # early, so `rootleaf down` can stop a cluster still starting
            for role in self.roles:
                ready = []
                for info, proc in self._leaves[role]:
                    port = _wait_port(proc, deadline)
                    target = f"127.0.0.1:{port}"
                    wait_serving(target, deadline, proc, tls=self.client_tls)
                    ready.append((LeafInfo(info.partition, target, info.metrics_url, info.repo_dir, info.models,
                                           info.pid, info.log, info.replica), proc))
                self._leaves[role] = ready
            for role in self.roles:
                self._start_root(role, self.root_overrides, deadline)
            self._state = "running"
            self._write_description()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop roots first (they drain), then leaves; remove cluster.json. Idempotent.

        Every process is stopped even when stopping another raises; the first error is
        raised at the end, after cluster.json is gone."""
        roots = [self._roots.pop(role)[1].popen for role in list(self._roots)]
        leaves = [proc.popen for role in list(self._leaves) for _, proc in self._leaves.pop(role)]
        errors: list[BaseException] = []
        for group in (roots, leaves):
            try:
                stop_processes(group)
            except Exception as exc:
                errors.append(exc)
        try:
            if self.cluster_json.is_file() and json.loads(self.cluster_json.read_text()).get("launcher_pid") == os.getpid():
                self.cluster_json.unlink()
        except (OSError, ValueError):
            pass
        if errors:
            raise errors[0]

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart_root(self, role: str = "production", overrides: Mapping[str, Any] | None = None) -> RootInfo:
        """Stop ``role``'s root and start it again with ``overrides`` on top of the cluster's own
        (leaves stay up). Returns the new root (new port, new pid)."""
        if role in self._roots:
            stop_process(self._roots.pop(role)[1].popen)
        merged = {**self.root_overrides, **dict(overrides or {})}
        info = self._start_root(role, merged, time.monotonic() + self.startup_timeout_s)
        self._write_description()
        return info

    def kill_leaf(self, partition: str, role: str = "production", replica: int = 0) -> LeafInfo:
        """SIGKILL ``partition``'s leaf (that replica; fault injection) and reap it; returns what ran."""
        info, proc = self._leaf(partition, role, replica)
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(timeout=30)
        log.info("killed %s (pid %d)", proc.name, proc.popen.pid)
        return info

    def restart_leaf(
        self, partition: str, role: str = "production", extra_args: Sequence[str] = (), replica: int = 0
    ) -> LeafInfo:
        """Start ``partition``'s leaf again on the same gRPC and metrics ports (stopping it
        first if it runs), so the root's channel reconnects to it; ``extra_args`` go after
        the cluster's leaf arguments (e.g. ``["--inject-delay-ms", "500"]``). Waits for
        SERVING; returns the new leaf (new pid)."""
        info, proc = self._leaf(partition, role, replica)
        stop_process(proc.popen)
        port = int(info.target.rsplit(":", 1)[1])
        metrics_port = int(info.metrics_url.rsplit(":", 1)[1].split("/", 1)[0])
        new_proc = self._spawn_leaf(role, partition, info.models, port, metrics_port, extra_args, replica)
        deadline = time.monotonic() + self.startup_timeout_s
        _wait_port(new_proc, deadline)
        new_info = LeafInfo(info.partition, info.target, info.metrics_url, info.repo_dir, info.models,
                            new_proc.popen.pid, info.log, replica)
        self._leaves[role] = [(new_info, new_proc) if i is info else (i, p) for i, p in self._leaves[role]]
        try:
            wait_serving(info.target, deadline, new_proc, tls=self.client_tls)
        finally:
            if self.assets is not None and role in self._roots:
                self._write_description()
        return new_info

    def check_alive(self) -> list[str]:
        """Names of processes that exited (empty while everything runs)."""
        procs = [p for _, p in self._roots.values()] + [p for ls in self._leaves.values() for _, p in ls]
        return [f"{p.name} (exit {p.popen.returncode})" for p in procs if p.popen.poll() is not None]

    # ---- views ------------------------------------------------------------------------------

    def root(self, role: str = "production") -> RootInfo:
        return self._roots[role][0]

    def leaves(self, role: str = "production") -> list[LeafInfo]:
        return [info for info, _ in self._leaves.get(role, [])]

    @property
    def description(self) -> dict[str, Any]:
        """The cluster.json document (schema in the README and /tmp/team/requests.md)."""
        assert self.assets is not None, "start() first"
        return {
            "schema": SCHEMA_VERSION,
            "workload": self.assets.workload.name,
            "workload_file": str(self.workload_path),
            "workload_hash": self.assets.workload_hash,
            "dir": str(self.directory),
            "launcher": self.launcher,
            "launcher_pid": os.getpid(),
            "state": self._state,
            "replicas": self.replicas,
            "tls": tls_json(self.client_tls),
            "catalog": str(self.assets.catalog),
            "feature_store": str(self.assets.store),
            "models_dir": str(self.assets.models_dir),
            "roles": {
                role: {
                    "root": self._roots[role][0].to_json() if role in self._roots else None,
                    "leaves": [info.to_json() for info in self.leaves(role)],
                }
                for role in self.roles
                if role in self._roots or role in self._leaves
            },
        }

    # ---- internals --------------------------------------------------------------------------

    def _running_elsewhere(self) -> list[int]:
        """Live pids of a cluster another launcher described in this directory."""
        try:
            doc = json.loads(self.cluster_json.read_text(encoding="utf-8"))
            pids = [int(r["root"]["pid"]) for r in doc["roles"].values() if r["root"]]
            pids += [int(l["pid"]) for r in doc["roles"].values() for l in r["leaves"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [p for p in pids if pid_alive(p) and _is_ours(p)]

    def _leaf(self, partition: str, role: str, replica: int = 0) -> tuple[LeafInfo, _Proc]:
        for info, proc in self._leaves.get(role, []):
            if info.partition == partition and info.replica == replica:
                return info, proc
        raise ClusterError(f"no {role} leaf for partition {partition!r} replica {replica}")

    def _spawn_leaf(
        self, role: str, partition: str, models: Sequence[str], port: int, metrics_port: int, extra: Sequence[str],
        replica: int = 0,
    ) -> _Proc:
        base = self.directory / role / "leaves" / partition
        stem = "leaf" if replica == 0 else f"leaf-{replica}"
        tls_args: list[str] = []
        if self.tls is not None:
            tls_args = ["--tls-cert", self.tls.server_cert, "--tls-key", self.tls.server_key,
                        "--tls-client-ca", self.tls.ca_file]
        return _spawn(
            f"{role} leaf {partition}" + (f" replica {replica}" if self.replicas > 1 else ""),
            ["leaf", "--repo", str(base / "repo"), "--port", str(port), "--port-file", str(base / f"{stem}.port"),
             "--models", ",".join(models), "--metrics-port", str(metrics_port), *tls_args, *self.leaf_args, *extra],
            base / f"{stem}.log",
            base / f"{stem}.port",
        )

    def _prepare_role(self, role: str) -> None:
        """Fresh copies of the generated repositories and bundle files for ``role``."""
        assert self.assets is not None
        base = self.directory / role
        for partition, models in self.assets.partitions.items():
            repo = base / "leaves" / partition / "repo"
            if repo.exists():
                shutil.rmtree(repo)
            for model in models:
                copy_tree(self.assets.models_dir / model, repo / model)
            copy_tree(self.assets.bundles[partition].parent, base / "root" / "bundles" / partition)

    def _root_config(self, role: str, overrides: Mapping[str, Any], metrics_port: int) -> dict[str, Any]:
        assert self.assets is not None
        base = self.directory / role / "root"
        doc: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_port": metrics_port,
            "catalog": str(self.assets.catalog),
            "trim": True,
            "compression": "lz4",
            "dedup_request_features": True,
            "bundles": {p: str(base / "bundles" / p / "module_info.json") for p in self.assets.partitions},
            "partitions": {
                partition: {
                    "targets": [i.target for i in self.leaves(role) if i.partition == partition],
                    "models": list(models),
                }
                for partition, models in self.assets.partitions.items()
            },
            "feature_store": {"kind": "local", "path": str(self.assets.store)},
            "workers": 1,  # one root process unless overridden (bench --root-workers, tests)
        }
        if self.tls is not None:
            server, client = self.tls.server(), self.tls.client()
            doc["tls"] = {"cert_file": server.cert_file, "key_file": server.key_file,
                          "client_ca_file": server.client_ca_file}
            doc["leaf_tls"] = {"ca_file": client.ca_file, "cert_file": client.cert_file, "key_file": client.key_file}
        return apply_overrides(doc, overrides)

    def _start_root(self, role: str, overrides: Mapping[str, Any], deadline: float) -> RootInfo:
        base = self.directory / role / "root"
        base.mkdir(parents=True, exist_ok=True)
        metrics_port = free_port()
        doc = self._root_config(role, overrides, metrics_port)
        config_file = base / "root.toml"
        tmp = base / ".root.toml.tmp"
        tmp.write_text(render_toml(doc), encoding="utf-8")
        tmp.replace(config_file)
        proc = _spawn(
            f"{role} root",
            ["root", "--config", str(config_file), "--port-file", str(base / "root.port")],
            base / "root.log",
            base / "root.port",
        )
        self._roots[role] = (RootInfo("", "", "", "", {}, proc.popen.pid, str(proc.log_path)), proc)
        self._write_description()  # the new pid, before waiting on it
        port = _wait_port(proc, deadline)
        target = f"127.0.0.1:{port}"
        wait_serving(target, deadline, proc, tls=self.client_tls)
        assert self.assets is not None
        info = RootInfo(
            target=target,
            metrics_url=f"http://127.0.0.1:{doc['metrics_port']}/metrics",
            config_dir=str(base),
            config_file=str(config_file),
            bundle_files={p: str(base / "bundles" / p / "module_info.json") for p in self.assets.partitions},
            pid=proc.popen.pid,
            log=str(proc.log_path),
            settings=dict(overrides),
        )
        self._roots[role] = (info, proc)
        return info

    def _write_description(self) -> None:
        tmp = self.directory / f".{CLUSTER_FILE}.tmp"
        tmp.write_text(json.dumps(self.description, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.cluster_json)


# ---- rootleaf up / down -------------------------------------------------------------------------


def _up_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rootleaf up", description="start a local cluster on loopback")
    parser.add_argument("--workload", default="ci", help="workload file or shipped name (w1, ci); default ci")
    parser.add_argument("--dir", required=True, help="work directory (assets cache, configs, logs, cluster.json)")
    parser.add_argument("--canary", action="store_true", help="also start a canary root and canary leaves")
    parser.add_argument("--root-config-override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a root config key (dotted for sections), e.g. trim=false, compression=none")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for SERVING")
    parser.add_argument("--replicas", type=int, default=1, help="leaf processes per partition (default 1)")
    parser.add_argument("--tls-dir", default=None,
                        help="serve mutual TLS everywhere with ca.pem, server.pem/.key, client.pem/.key from DIR")
    return parser


class _Interrupted(BaseException):
    """SIGINT/SIGTERM arrived while ``rootleaf up`` was starting the cluster."""


def up_main(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = dict(parse_override(o) for o in args.root_config_override)
        tls = ClusterTls.from_dir(args.tls_dir) if args.tls_dir else None
        cluster = LocalCluster(args.workload, args.dir, canary=args.canary, root_overrides=overrides,
                               startup_timeout_s=args.startup_timeout, launcher="up", replicas=args.replicas,
                               tls=tls)
    except (ClusterError, WorkloadError) as exc:
        print(f"rootleaf up: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    starting = [True]

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()
        if starting[0]:
            # Start-up waits on processes for minutes: interrupt it now. Raised once only,
            # so the clean-up that follows (``start`` stops what it started) runs in peace.
            starting[0] = False
            raise _Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        try:
            cluster.start()
        finally:
            starting[0] = False
    except _Interrupted as exc:
        print(f"rootleaf up: {exc} during start-up; stopped what had started", file=sys.stderr)
        return 130
    except (ClusterError, WorkloadError, OSError, ValueError) as exc:
        print(f"rootleaf up: {exc}", file=sys.stderr)
        return 1
    code = 0
    try:
        for role in cluster.roles:
            print(f"{role} root: {cluster.root(role).target}", flush=True)
        print(f"cluster description: {cluster.cluster_json}  (stop with Ctrl-C or 'rootleaf down --dir {args.dir}')",
              flush=True)
        while not stop.wait(1.0):  # supervision: report a child that dies on its own
            dead = cluster.check_alive()
            if dead:
                print(f"rootleaf up: stopping, process exited: {', '.join(dead)}", file=sys.stderr)
                code = 1
                break
    finally:
        cluster.stop()
    print("cluster stopped", flush=True)
    return code


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def stop_from_description(doc: Mapping[str, Any], grace_s: float = 15.0) -> list[int]:
    """Stop what a cluster.json describes; returns pids that had to be killed."""
    launcher_pid = doc.get("launcher_pid")
    if doc.get("launcher") == "up" and isinstance(launcher_pid, int) and pid_alive(launcher_pid) and _is_ours(launcher_pid):
        os.kill(launcher_pid, signal.SIGTERM)  # it stops its children in order and exits
        _wait_gone([launcher_pid], grace_s * 2)
    pids: list[int] = []
    for role in doc.get("roles", {}).values():
        if role.get("root"):
            pids.append(int(role["root"]["pid"]))
    for role in doc.get("roles", {}).values():
        pids += [int(leaf["pid"]) for leaf in role["leaves"]]
    if doc.get("launcher") == "up" and isinstance(launcher_pid, int):
        pids.append(launcher_pid)
    ours = [p for p in pids if pid_alive(p) and _is_ours(p)]
    for pid in ours:
        os.kill(pid, signal.SIGTERM)
    killed = _wait_gone(ours, grace_s)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    _wait_gone(killed, grace_s)
    return killed


def down_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf down", description="stop a cluster started with 'rootleaf up'")
    parser.add_argument("--dir", required=True, help="the directory given to 'rootleaf up'")
    parser.add_argument("--grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    path = Path(args.dir) / CLUSTER_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"rootleaf down: no cluster running in {args.dir} (no {CLUSTER_FILE})", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"rootleaf down: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    killed = stop_from_description(doc, args.grace)
    path.unlink(missing_ok=True)
    print(f"cluster in {args.dir} stopped" + (f" (killed {killed})" if killed else ""))
    return 0
