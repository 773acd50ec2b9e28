"""``rootleaf up`` (start a local cluster and wait for Ctrl-C or SIGTERM) and ``rootleaf down``
(stop one from its ``cluster.json``: the ``up`` process first, then any pid still alive,
terminate -> wait -> kill)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

from harness.cluster_config import CLUSTER_FILE, ClusterTls, parse_override
from harness.local_cluster import LocalCluster
from harness.processes import ClusterError, is_ours, pid_alive, wait_gone
from harness.workload import WorkloadError

log = logging.getLogger("rootleaf.harness.cluster_cli")


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
    parser.add_argument("--image", default=None, metavar="TAG",
                        help="run every root and leaf as a container of this image (rootleaf image build; docs/image.md)")
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
                               tls=tls, image=args.image)
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


def stop_from_description(doc: Mapping[str, Any], grace_s: float = 15.0) -> list[int]:
    """Stop what a cluster.json describes; returns pids that had to be killed."""
    launcher_pid = doc.get("launcher_pid")
    if doc.get("launcher") == "up" and isinstance(launcher_pid, int) and pid_alive(launcher_pid) and is_ours(launcher_pid):
        os.kill(launcher_pid, signal.SIGTERM)  # it stops its children in order and exits
        wait_gone([launcher_pid], grace_s * 2)
    pids: list[int] = []
    for role in doc.get("roles", {}).values():
        if role.get("root"):
            pids.append(int(role["root"]["pid"]))
    for role in doc.get("roles", {}).values():
        pids += [int(leaf["pid"]) for leaf in role["leaves"]]
    if doc.get("launcher") == "up" and isinstance(launcher_pid, int):
        pids.append(launcher_pid)
    ours = [p for p in pids if pid_alive(p) and is_ours(p)]
    for pid in ours:
        os.kill(pid, signal.SIGTERM)
    killed = wait_gone(ours, grace_s)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_gone(killed, grace_s)
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
