"""Local cluster launcher: leaf partitions and a root as processes on loopback ports.

``LocalCluster`` generates (or reuses) a workload's assets, copies them into per-role
directories (``production`` and, with ``canary=True``, ``canary``: own repositories, own
bundle files), starts one leaf process per partition and one root per role on port 0, waits
for gRPC health SERVING (bounded), and writes ``<dir>/cluster.json`` describing what runs.
With ``image=TAG`` every server is a container of that image instead, on ports picked here
(``harness.containers``); everything else, cluster.json included, is the same.
``rootleaf up`` and ``rootleaf down`` (``harness.cluster_cli``) wrap it. Servers are started
only as subprocesses (``harness.processes``), never imported.

State is owned by the thread that calls ``start()``; children get SIGTERM if that thread's
process dies (``PR_SET_PDEATHSIG``), so a crashed launcher leaves no orphans behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from deploy.engine import Engine, EngineError, ensure_engine
from harness.cluster_config import (
    CLUSTER_FILE, ROLES, SCHEMA_VERSION, ClusterTls, LeafInfo, RootInfo, apply_overrides, render_toml, tls_json,
)
from harness.containers import spawn_server
from harness.demo_assets import DemoAssets, copy_tree, ensure_assets
from harness.processes import (
    ClusterError, Proc, free_port, is_ours, pid_alive, spawn, stop_process, stop_processes, wait_port, wait_serving,
)
from harness.workload import builtin_workload
from transport.tls import PLAINTEXT

log = logging.getLogger("rootleaf.harness.local_cluster")

KILL_SWITCH_FILE = "kill_switch.json"
"""Each root's kill switch, beside its bundle directories (``<role>/root/bundles/``)."""


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
        leaf_writes: Sequence[str | Path] = (),
        startup_timeout_s: float = 180.0,
        launcher: str = "api",
        replicas: int = 1,
        tls: ClusterTls | None = None,
        image: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        if image is not None and tls is not None:
            raise ClusterError("a cluster of containers serves plaintext only: the image's HEALTHCHECK probes without TLS")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 16:
            raise ClusterError(f"replicas must be an integer in [1, 16], got {replicas!r}")
        self.workload_path = builtin_workload(str(workload)).resolve()
        self.directory = Path(directory).resolve()
        self.roles: tuple[str, ...] = ROLES if canary else ROLES[:1]
        self.root_overrides: dict[str, Any] = dict(root_overrides or {})
        self.leaf_args = tuple(leaf_args)
        self.leaf_writes = tuple(Path(p).resolve() for p in leaf_writes)
        """Directories leaves share to write in (the soak's records): mounted read-write."""
        self.startup_timeout_s = startup_timeout_s
        self.launcher = launcher
        self.replicas = replicas
        """Leaf processes per partition (the root lists every one as a target)."""
        self.tls = tls
        self.client_tls = tls.client() if tls is not None else PLAINTEXT
        """What a client of this cluster (root or leaf) connects with."""
        self.image = image
        """Run every server as a container of this image (None: as processes)."""
        self._engine = engine
        self._own_engine: Engine | None = None
        """The engine ``start()`` started (stopped again by ``stop()``)."""
        self.assets: DemoAssets | None = None
        self._leaves: dict[str, list[tuple[LeafInfo, Proc]]] = {}
        self._roots: dict[str, tuple[RootInfo, Proc]] = {}
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
            if self.image is not None and self._engine is None:
                try:
                    self._engine = self._own_engine = ensure_engine(self.directory / "engine")
                except EngineError as exc:
                    raise ClusterError(f"--image needs a container engine: {exc}") from None
            self.assets = ensure_assets(self.workload_path, self.directory)
            for path in self.leaf_writes:
                path.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + self.startup_timeout_s
            pending: list[tuple[str, str, Proc, Path, tuple[str, ...]]] = []
            for role in self.roles:
                self._prepare_role(role)
                for partition, models in self.assets.partitions.items():
                    base = self.directory / role / "leaves" / partition
                    for replica in range(self.replicas):
                        metrics_port = free_port()
                        port = free_port() if self.image else 0  # a container's HEALTHCHECK needs its port up front
                        proc = self._spawn_leaf(role, partition, models, port, metrics_port, (), replica)
                        pending.append((role, partition, proc, base, models))
                        self._leaves.setdefault(role, []).append(
                            (LeafInfo(partition, "", f"http://127.0.0.1:{metrics_port}/metrics", str(base / "repo"),
                                      models, proc.popen.pid, str(proc.log_path), replica), proc)
                        )
            self._write_description()  # early, so `rootleaf down` can stop a cluster still starting
            for role in self.roles:
                ready = []
                for info, proc in self._leaves[role]:
                    port = wait_port(proc, deadline)
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
        if self._own_engine is not None:
            self._own_engine.close()
            self._own_engine = self._engine = None
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

    def freeze_leaf(self, partition: str, role: str = "production", replica: int = 0) -> LeafInfo:
        """SIGSTOP ``partition``'s leaf (that replica): a hung process, not a dead one. Its
        port stays open and the kernel still accepts connections; nothing answers. Undo with
        ``thaw_leaf`` (``stop`` thaws every process before stopping it)."""
        info, proc = self._leaf(partition, role, replica)
        proc.popen.send_signal(signal.SIGSTOP)
        log.info("froze %s (pid %d)", proc.name, proc.popen.pid)
        return info

    def thaw_leaf(self, partition: str, role: str = "production", replica: int = 0) -> LeafInfo:
        """SIGCONT a leaf ``freeze_leaf`` stopped."""
        info, proc = self._leaf(partition, role, replica)
        proc.popen.send_signal(signal.SIGCONT)
        log.info("thawed %s (pid %d)", proc.name, proc.popen.pid)
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
        wait_port(new_proc, deadline)
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
        """The cluster.json document (schema in docs/local-cluster.md)."""
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
            "image": self.image,
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
        return [p for p in pids if pid_alive(p) and is_ours(p)]

    def _leaf(self, partition: str, role: str, replica: int = 0) -> tuple[LeafInfo, Proc]:
        for info, proc in self._leaves.get(role, []):
            if info.partition == partition and info.replica == replica:
                return info, proc
        raise ClusterError(f"no {role} leaf for partition {partition!r} replica {replica}")

    def _spawn_leaf(
        self, role: str, partition: str, models: Sequence[str], port: int, metrics_port: int, extra: Sequence[str],
        replica: int = 0,
    ) -> Proc:
        base = self.directory / role / "leaves" / partition
        stem = "leaf" if replica == 0 else f"leaf-{replica}"
        tls_args: list[str] = []
        if self.tls is not None:
            tls_args = ["--tls-cert", self.tls.server_cert, "--tls-key", self.tls.server_key,
                        "--tls-client-ca", self.tls.ca_file]
        return self._launch(
            f"{role} leaf {partition}" + (f" replica {replica}" if self.replicas > 1 else ""),
            ["harness-leaf", "--repo", str(base / "repo"), "--port", str(port), "--port-file", str(base / f"{stem}.port"),
             "--models", ",".join(models), "--metrics-port", str(metrics_port), *tls_args, *self.leaf_args, *extra],
            base, stem, port, base / "repo", self.leaf_writes,
        )

    def _launch(self, name: str, args: Sequence[str], own_dir: Path, stem: str, port: int, reads: Path,
                writes: Sequence[Path] = ()) -> Proc:
        """A server process, or a container of ``self.image`` (``harness.containers.spawn_server``)."""
        log_path, port_file = own_dir / f"{stem}.log", own_dir / f"{stem}.port"
        if self.image is None:
            return spawn(name, args, log_path, port_file)
        assert self._engine is not None
        return spawn_server(self._engine, self.image, name, args, log_path, port_file, port, self.directory, reads,
                            writes)

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
            "kill_switch_file": str(base / "bundles" / KILL_SWITCH_FILE),
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
        port = 0
        if self.image is not None:
            port = free_port()
            doc["listen"] = f"127.0.0.1:{port}"
        config_file = base / "root.toml"
        tmp = base / ".root.toml.tmp"
        tmp.write_text(render_toml(doc), encoding="utf-8")
        tmp.replace(config_file)
        proc = self._launch(f"{role} root", ["root", "--config", str(config_file), "--port-file", str(base / "root.port")],
                            base, "root", port, base / "bundles")
        self._roots[role] = (RootInfo("", "", "", "", {}, proc.popen.pid, str(proc.log_path)), proc)
        self._write_description()  # the new pid, before waiting on it
        port = wait_port(proc, deadline)
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
