"""The shipped rules and dashboard against a real ``prometheus`` scraping a ``rootleaf up``
cluster (root with two workers, one leaf per partition, all on loopback): a corrupt bundle
fires RootleafBundleUnhealthy for that bundle only and repairing it resolves the alert; every
dashboard query returns series; a killed root worker fires RootleafRootWorkersRestarting.
Rules run with ``for:`` shortened to 2 s and 1 s evaluation (``shortened_rules``); the
figures are printed (run with ``-s``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from deploy.prometheus_rule import RULES_FILE
from harness.monitor import scrape_config
from harness.processes import REPO_ROOT
from root.client import RootClient
from tests.cluster.processes import cluster_description
from tests.cluster.test_root_workers import children
from tests.prometheus_server import PrometheusServer, shortened_rules, start_prometheus
from tests.unit.test_monitoring import dashboard_queries
from tests.waiting import eventually

WAIT_S = 120.0
ALERT = "RootleafBundleUnhealthy"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``rootleaf up`` (ci workload, root with 2 workers); its cluster.json document."""
    base = tmp_path_factory.mktemp("prom-cluster")
    log = open(base / "up.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rootleaf.cli", "up", "--workload", "ci", "--dir", str(base / "c"),
         "--root-config-override", "workers=2"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT,
    )
    try:
        yield cluster_description(base / "c" / "cluster.json", proc, WAIT_S)
    finally:
        if proc.poll() is None:
            proc.terminate()  # up stops every root and leaf it started, then exits
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def prometheus(cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    workdir = tmp_path_factory.mktemp("prometheus")
    rules = shortened_rules(RULES_FILE, workdir / "rules.yaml")
    server = start_prometheus(workdir, scrape_config(cluster, [rules], interval_s=1))
    try:
        yield server
    finally:
        server.stop()


def _score(cluster: dict[str, Any], calls: int) -> None:
    production = cluster["roles"]["production"]
    models = sorted({m for leaf in production["leaves"] for m in leaf["models"]})
    with RootClient(production["root"]["target"]) as client:
        for i in range(calls):
            results = client.score(i + 1, [1, 2, 3, 4], models)
            assert all(r.ok for r in results.values()), results


def _firing(prometheus: PrometheusServer) -> set[str]:
    return {a["labels"]["bundle"] for a in prometheus.alerts(ALERT) if a["state"] == "firing"}


@pytest.mark.cluster
def test_a_corrupt_bundle_fires_the_alert_and_repairing_it_resolves_it(
    cluster: dict[str, Any], prometheus: PrometheusServer
) -> None:
    production = cluster["roles"]["production"]
    targets = 1 + len(production["leaves"])
    eventually(lambda: len([s for s in prometheus.query("up == 1")]) == targets, "every target scraped and up", WAIT_S)
    bundles = production["root"]["bundle_files"]
    healthy = lambda: {s["metric"]["bundle"] for s in prometheus.query("rootleaf_trimmer_bundle_healthy == 1")}  # noqa: E731
    eventually(lambda: healthy() == set(bundles), "every bundle healthy", WAIT_S)
    assert prometheus.alerts(ALERT) == []

    name, path = sorted(bundles.items())[0]
    bundle_file = Path(path)
    good = bundle_file.read_bytes()
    corrupt = bundle_file.with_name(".corrupt.tmp")
    corrupt.write_bytes(b'{"half": [')
    start = time.monotonic()
    corrupt.replace(bundle_file)  # atomic, as a ConfigMap update lands
    try:
        eventually(lambda: _firing(prometheus) == {name}, f"{ALERT} firing for {name}", WAIT_S)
        fired_s = time.monotonic() - start
        # Only the corrupt bundle: the others stay healthy and quiet.
        assert {a["labels"]["bundle"] for a in prometheus.alerts(ALERT)} == {name}
        assert healthy() == set(bundles) - {name}
        _score(cluster, 3)  # the root keeps serving on the last good allowlists
    finally:
        repaired = bundle_file.with_name(".repaired.tmp")
        repaired.write_bytes(good)
        start = time.monotonic()
        repaired.replace(bundle_file)
    eventually(lambda: prometheus.alerts(ALERT) == [], f"{ALERT} resolved", WAIT_S)
    resolved_s = time.monotonic() - start
    assert healthy() == set(bundles)
    print(f"\n{ALERT}{{bundle={name}}}: firing {fired_s:.1f} s after the corrupt write, "
          f"resolved {resolved_s:.1f} s after the repair (scrape and evaluation every 1 s, for: 2s)")


@pytest.mark.cluster
def test_every_dashboard_query_returns_series(cluster: dict[str, Any], prometheus: PrometheusServer) -> None:
    queries = list(dashboard_queries())
    empty: list[str] = []

    def all_answer() -> bool:
        _score(cluster, 5)  # keep traffic in every rate window
        empty[:] = [f"{title}: {expr}" for title, expr in queries if not prometheus.query(expr)]
        return not empty

    try:
        eventually(all_answer, "every dashboard query to return series", WAIT_S)
    except AssertionError:
        raise AssertionError("queries without series:\n" + "\n".join(empty)) from None
    print(f"\n{len(queries)} dashboard queries, each with series")


@pytest.mark.cluster
def test_a_killed_root_worker_fires_the_restart_alert(cluster: dict[str, Any], prometheus: PrometheusServer) -> None:
    alert = "RootleafRootWorkersRestarting"
    eventually(lambda: prometheus.query("rootleaf_root_worker_restarts_total == 0"), "the supervisor's series scraped", WAIT_S)
    assert prometheus.alerts(alert) == []
    supervisor = cluster["roles"]["production"]["root"]["pid"]
    workers = children(supervisor)
    assert len(workers) == 2
    os.kill(min(workers), signal.SIGKILL)
    eventually(lambda: len(children(supervisor) - workers) == 1, "a replacement worker", WAIT_S)
    firing = eventually(lambda: [a for a in prometheus.alerts(alert) if a["state"] == "firing"], f"{alert} firing", WAIT_S)
    assert [a["labels"]["job"] for a in firing] == ["rootleaf-root"]
    _score(cluster, 3)  # the root serves on
