"""``rootleaf root --workers 2`` as a real process tree: both workers serve on one port, the
metrics endpoint sums them, a killed worker is replaced, SIGTERM drains every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from deploy.metrics_scrape import scrape
from harness.cluster_config import render_toml
from harness.local_cluster import LocalCluster
from harness.processes import free_port, pid_alive
from root.client import RootClient
from root.supervisor import available_cores, resolve_workers
from transport import health_cli
from tests.cluster.processes import wait_port, wait_serving
from tests.cluster.test_root_process import REPO_ROOT
from tests.waiting import eventually

WAIT_S = 60.0


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The ci workload's leaves (and a one-process root the test does not use)."""
    with LocalCluster("ci", tmp_path_factory.mktemp("workers")) as started:
        yield started


def test_default_workers_follow_the_cores(tmp_path: Path) -> None:
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == min(available_cores(), 8) >= 1
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("100000 100000\n")  # a 1-CPU limit
    assert available_cores(tmp_path / "v2") == 1
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path / "v2") == affinity
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")  # 1.5 CPUs -> 1
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(tmp_path / "v1") == 1
    assert available_cores(tmp_path / "none") == affinity


def start_root(cluster: LocalCluster, tmp_path: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    """``rootleaf root --workers N`` on the cluster's leaves, its own metrics port; (process, metrics port)."""
    doc = tomllib.loads(Path(cluster.root().config_file).read_text())
    metrics_port = free_port()
    doc |= {"metrics_port": metrics_port, "workers": 1}  # --workers on the command line wins
    (tmp_path / "root.toml").write_text(render_toml(doc))
    with open(tmp_path / "root.log", "ab") as log:
        root = subprocess.Popen(
            [sys.executable, "-m", "root.cli", "--config", str(tmp_path / "root.toml"), "--workers", str(workers),
             "--port-file", str(tmp_path / "root.port")],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    return root, metrics_port


@pytest.mark.cluster
def test_two_workers_share_the_port_restart_and_drain(cluster: LocalCluster, tmp_path: Path) -> None:
    root, metrics_port = start_root(cluster, tmp_path, 2)
    try:
        target = f"127.0.0.1:{wait_port(tmp_path / 'root.port', root)}"
        wait_serving(target, "rootleaf.v1.Root")
        workers = children(root.pid)
        assert len(workers) == 2
        models = [m.name for m in cluster.assets.workload.models]  # type: ignore[union-attr]
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        ok0 = scrape(metrics_url).total("rootleaf_root_requests_total", code="OK")

        # Each new channel is a new connection, which the kernel hands to either worker.
        seen: set[int] = set()
        calls = 0

        def both_answer() -> bool:
            nonlocal calls
            with RootClient(target) as client:
                status = client.status()
                assert status.settings["workers"] == "2"
                seen.add(int(status.settings["pid"]))
                assert all(r.ok for r in client.score(3, [1, 2, 3], models).values())
                calls += 1
            return seen == workers

        eventually(both_answer, "both workers to answer", WAIT_S)
        assert seen == workers
        # The image's probe command agrees.
        assert health_cli.main(["--target", target, "--service", "rootleaf.v1.Root", "--quiet"]) == 0
        # The supervisor's endpoint sums every worker's counters and adds its own series.
        before = scrape(metrics_url)
        assert before.total("rootleaf_root_requests_total", code="OK") - ok0 == calls
        assert before.total("rootleaf_root_worker_restarts_total") == 0
        assert before.total("rootleaf_root_workers") == 2

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = eventually(lambda: children(root.pid) - workers, "a replacement worker", WAIT_S)
        assert victim not in children(root.pid) and len(children(root.pid)) == 2
        seen.clear()
        eventually(lambda: both_answer() or (replaced & seen), "the replacement to answer", WAIT_S)
        assert root.poll() is None
        after = scrape(metrics_url)
        assert after.total("rootleaf_root_worker_restarts_total") == 1
        # Alerting gauges are one series over the live workers: the dead worker's values are
        # dropped, not kept under its pid.
        for name in ("rootleaf_trimmer_bundle_healthy", "rootleaf_root_partition_serving_addresses"):
            series = after.select(name)
            assert series and all("pid" not in dict(labels) for labels in series), (name, series)
        assert after.select("rootleaf_root_trim_enabled") == {(): 1.0}

        # SIGTERM: the supervisor forwards it, workers drain, every process exits.
        final = children(root.pid)
        root.send_signal(signal.SIGTERM)
        assert root.wait(WAIT_S) == 0
        eventually(lambda: not any(pid_alive(pid) for pid in final), "every worker to exit", WAIT_S)
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()
    assert b"Traceback" not in (tmp_path / "root.log").read_bytes()


@pytest.mark.cluster
def test_workers_stop_when_the_supervisor_is_killed(cluster: LocalCluster, tmp_path: Path) -> None:
    root, _ = start_root(cluster, tmp_path, 2)
    workers: set[int] = set()
    try:
        wait_serving(f"127.0.0.1:{wait_port(tmp_path / 'root.port', root)}", "rootleaf.v1.Root")
        workers = children(root.pid)
        assert len(workers) == 2
        root.kill()  # no chance to forward anything
        root.wait(WAIT_S)
        eventually(lambda: not any(pid_alive(pid) for pid in workers), "orphaned workers to stop by themselves", WAIT_S)
    finally:
        for pid in workers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if root.poll() is None:
            root.kill()
            root.wait()
