"""``rootleaf monitor --dir D``: a Prometheus for a local cluster started with ``rootleaf up``.

It scrapes every root and leaf that ``D/cluster.json`` lists, with the labels the Kubernetes
PodMonitor gives (``job`` rootleaf-root / rootleaf-leaf, ``partition`` on leaves, ``track`` =
the role), loads the shipped rules (``deploy/monitoring/rules.yaml``), and runs ``prometheus``
in the foreground (the process is replaced: Ctrl-C stops it). The config is written to
``D/prometheus/prometheus.yml`` (JSON, which is YAML); ``--config-only`` stops there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

from deploy.prometheus_rule import RULES_FILE
from harness.cluster_config import CLUSTER_FILE


def scrape_config(cluster: Mapping[str, Any], rule_files: Sequence[str | Path], interval_s: int = 5) -> dict[str, Any]:
    """A Prometheus config for the roots and leaves of a ``cluster.json`` document."""
    roots: list[dict[str, Any]] = []
    leaves: list[dict[str, Any]] = []
    for role, members in cluster["roles"].items():
        if members.get("root"):
            roots.append({"targets": [_host_port(members["root"]["metrics_url"])], "labels": {"track": role}})
        for leaf in members["leaves"]:
            leaves.append({"targets": [_host_port(leaf["metrics_url"])],
                           "labels": {"track": role, "partition": leaf["partition"]}})
    interval = f"{interval_s}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(f) for f in rule_files],
        "scrape_configs": [
            {"job_name": "rootleaf-root", "static_configs": roots},
            {"job_name": "rootleaf-leaf", "static_configs": leaves},
        ],
    }


def _host_port(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf monitor", description="run Prometheus on a local cluster")
    parser.add_argument("--dir", required=True, help="the directory given to 'rootleaf up'")
    parser.add_argument("--listen", default="127.0.0.1:9090", help="Prometheus web address (default 127.0.0.1:9090)")
    parser.add_argument("--interval", type=int, default=5, help="scrape and rule evaluation interval, seconds")
    parser.add_argument("--config-only", action="store_true", help="write the config and exit")
    args = parser.parse_args(argv)
    if args.interval < 1:
        parser.error(f"--interval must be >= 1, got {args.interval}")
    base = Path(args.dir).resolve()
    try:
        cluster = json.loads((base / CLUSTER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"rootleaf monitor: no cluster running in {base} (no {CLUSTER_FILE})", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"rootleaf monitor: cannot read {base / CLUSTER_FILE}: {exc}", file=sys.stderr)
        return 1
    out = base / "prometheus"
    out.mkdir(exist_ok=True)
    config = out / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(cluster, [RULES_FILE], args.interval), indent=1) + "\n", encoding="utf-8")
    print(f"prometheus config: {config}", flush=True)
    if args.config_only:
        return 0
    exe = shutil.which("prometheus")
    if exe is None:
        print("rootleaf monitor: prometheus not found (Debian: apt-get install prometheus)", file=sys.stderr)
        return 1
    os.execv(exe, [exe, f"--config.file={config}", f"--storage.tsdb.path={out / 'data'}",
                   f"--web.listen-address={args.listen}"])
    return 1  # not reached: execv replaces the process
