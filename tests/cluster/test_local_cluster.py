"""``rootleaf up`` / ``rootleaf down`` and ``LocalCluster`` on the ci workload: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.cluster_cli import down_main
from harness.cluster_config import LeafInfo, RootInfo, apply_overrides, parse_override, render_toml
from harness.local_cluster import LocalCluster
from harness.processes import REPO_ROOT, ClusterError, Proc, pid_alive
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from tests.cluster.processes import cluster_description

WAIT_S = 120.0


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _score_all(target: str, models: list[str]) -> root_pb2.ScoreResponse:
    with grpc.insecure_channel(target) as channel:
        request = root_pb2.ScoreRequest(
            request_id="t", user_id=5, candidate_ids=[1, 2, 3, 4], models=[root_pb2.ModelRef(name=m) for m in models]
        )
        response: root_pb2.ScoreResponse = root_pb2_grpc.RootStub(channel).Score(request, timeout=20)
        return response


def _status(target: str) -> root_pb2.RootStatusResponse:
    with grpc.insecure_channel(target) as channel:
        reply: root_pb2.RootStatusResponse = root_pb2_grpc.RootStub(channel).Status(
            root_pb2.RootStatusRequest(), timeout=10
        )
        return reply


def _all_pids(doc: dict[str, Any]) -> list[int]:
    pids = []
    for role in doc["roles"].values():
        if role["root"]:
            pids.append(role["root"]["pid"])
        pids += [leaf["pid"] for leaf in role["leaves"]]
    return pids


@pytest.mark.cluster
def test_up_canary_then_down(tmp_path: Path) -> None:
    log = open(tmp_path / "up.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rootleaf.cli", "up", "--workload", "ci", "--dir", str(tmp_path / "c"), "--canary",
         "--root-config-override", "cache.max_bytes=0"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
    )
    try:
        doc = cluster_description(tmp_path / "c" / "cluster.json", proc, WAIT_S)
        assert doc["schema"] == 1 and doc["workload"] == "ci" and doc["launcher"] == "up"
        assert set(doc["roles"]) == {"production", "canary"}
        prod, canary = doc["roles"]["production"], doc["roles"]["canary"]
        # canary and production never share a repository or a bundle file
        assert {l["repo_dir"] for l in prod["leaves"]}.isdisjoint(l["repo_dir"] for l in canary["leaves"])
        assert set(prod["root"]["bundle_files"].values()).isdisjoint(canary["root"]["bundle_files"].values())
        for role in (prod, canary):
            assert all(Path(p).is_file() for p in role["root"]["bundle_files"].values())
            assert {l["partition"] for l in role["leaves"]} == {"alpha", "beta"}
            for leaf in role["leaves"]:
                assert (Path(leaf["repo_dir"]) / leaf["models"][0]).is_dir()
                assert _serving(leaf["target"])
            assert _serving(role["root"]["target"])
            response = _score_all(role["root"]["target"], ["m_a", "m_b", "m_c"])
            assert [r.error_code for r in response.results] == [0, 0, 0]
            assert _status(role["root"]["target"]).settings["cache_max_bytes"] == "0"
        pids = _all_pids(doc)
        assert all(pid_alive(p) for p in pids)
        with pytest.raises(ClusterError, match="already running"):
            LocalCluster("ci", tmp_path / "c").start()
        assert all(pid_alive(p) for p in pids)  # the refused start touched nothing

        assert down_main(["--dir", str(tmp_path / "c")]) == 0
        assert proc.wait(timeout=30) == 0
        assert not [p for p in pids if pid_alive(p)]
        assert not (tmp_path / "c" / "cluster.json").exists()
        assert down_main(["--dir", str(tmp_path / "c")]) == 1  # nothing left to stop
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        log.close()


@pytest.mark.cluster
def test_api_restart_root_keeps_leaves(tmp_path: Path) -> None:
    with LocalCluster("ci", tmp_path, root_overrides={"trim": False}) as cluster:
        doc = json.loads(cluster.cluster_json.read_text())
        assert doc["launcher"] == "api" and doc["launcher_pid"] == os.getpid()
        before = cluster.root()
        leaves = [l.pid for l in cluster.leaves()]
        assert _status(before.target).settings["trim"] == "false"
        after = cluster.restart_root(overrides={"trim": True, "compression": "none"})
        assert after.pid != before.pid and not pid_alive(before.pid)
        assert [l.pid for l in cluster.leaves()] == leaves
        settings = _status(after.target).settings
        assert (settings["trim"], settings["compression"]) == ("true", "none")
        assert json.loads(cluster.cluster_json.read_text())["roles"]["production"]["root"]["pid"] == after.pid
        assert cluster.check_alive() == []
        with pytest.raises(ClusterError, match="root exited"):
            cluster.restart_root(overrides={"compression": "zstd"})  # the root rejects it and exits
    assert not [p for p in leaves if pid_alive(p)]
    assert not cluster.cluster_json.exists()


def test_overrides_and_toml_rendering() -> None:
    assert parse_override("trim=false") == ("trim", False)
    assert parse_override("compression=none") == ("compression", "none")
    assert parse_override('compression="lz4"') == ("compression", "lz4")
    assert parse_override("cache.max_bytes=0") == ("cache.max_bytes", 0)
    with pytest.raises(ClusterError, match="key=value"):
        parse_override("trim")
    doc = apply_overrides({"trim": True, "cache": {"ttl_s": 1.0}}, {"trim": False, "cache.max_bytes": 5})
    assert doc == {"trim": False, "cache": {"ttl_s": 1.0, "max_bytes": 5}}
    import tomllib

    rendered = {"a": 1, "s": "x\"y", "l": ["p", "q"], "t": {"b": True}, "parts": {"p1": {"targets": ["h:1"]}}}
    assert tomllib.loads(render_toml(rendered)) == rendered


def _start_up(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Any]:
    log = open(tmp_path / "up.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rootleaf.cli", "up", "--workload", "ci", "--dir", str(tmp_path / "c"), *extra],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
    )
    return proc, log


@pytest.mark.cluster
@pytest.mark.parametrize("how", ["sigint", "down"])
def test_interrupt_during_start_up_stops_everything(tmp_path: Path, how: str) -> None:
    """cluster.json names the leaves while they start; Ctrl-C (or ``rootleaf down``) then
    stops the launcher and every process it started without waiting for start-up to end."""
    proc, log = _start_up(tmp_path)
    try:
        doc = cluster_description(tmp_path / "c" / "cluster.json", proc, WAIT_S, state="starting")
        leaves = [leaf["pid"] for role in doc["roles"].values() for leaf in role["leaves"]]
        assert len(leaves) == 2 and all(pid_alive(p) for p in leaves)
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        else:
            assert down_main(["--dir", str(tmp_path / "c")]) == 0
            assert proc.wait(timeout=60) == 130
        assert not [p for p in leaves if pid_alive(p)]
        assert not (tmp_path / "c" / "cluster.json").exists()
        assert not (tmp_path / "c" / "production" / "root" / "root.log").exists()  # never got that far
        assert "during start-up" in (tmp_path / "up.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


class _Unstoppable(subprocess.Popen[bytes]):
    """A child this launcher may not signal (as if it belonged to another user)."""

    def terminate(self) -> None:
        raise PermissionError(f"pid {self.pid}: operation not permitted")


def test_stop_stops_every_process_even_when_one_raises(tmp_path: Path) -> None:
    cluster = LocalCluster("ci", tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    stubborn = _Unstoppable(sleeper)
    others = [subprocess.Popen(sleeper) for _ in range(3)]
    try:
        def proc(name: str, popen: subprocess.Popen[bytes]) -> Proc:
            return Proc(name, popen, tmp_path / f"{name}.log", tmp_path / f"{name}.port")

        cluster._roots["production"] = (RootInfo("", "", "", "", {}, stubborn.pid, ""), proc("root", stubborn))
        cluster._leaves["production"] = [
            (LeafInfo(f"p{i}", "", "", "", (), p.pid, ""), proc(f"leaf{i}", p)) for i, p in enumerate(others)
        ]
        with pytest.raises(PermissionError):
            cluster.stop()
        assert [p.poll() for p in others] == [-signal.SIGTERM] * 3
        assert cluster.check_alive() == []  # nothing left registered
    finally:
        for p in (stubborn, *others):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
