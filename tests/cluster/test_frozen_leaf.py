"""A hung leaf (SIGSTOP: the process is there, its port accepts connections, nothing answers)
on a real local cluster (ci workload: alpha hosts m_a, m_b; beta hosts m_c, one leaf each).
The healthy partition's models are answered whatever the client's deadline; the frozen
partition's models fail on its own timeout, then UNAVAILABLE at once once the root's health
round has seen no serving address, and are served again after SIGCONT. Then the soak's
frozen-leaf fault, with one and with two replicas. Every wait is bounded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from harness.local_cluster import LocalCluster
from harness.soak import main as soak_main
from root.client import RootClient
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

LONG_DEADLINE_S = 30.0
"""Far longer than any partition timeout: before the fix the frozen partition held the
whole call for all of it and the client got DEADLINE_EXCEEDED for every model."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster("ci", tmp_path_factory.mktemp("frozen")) as c:
        yield c


def _codes(client: RootClient, deadline_s: float) -> dict[str, grpc.StatusCode]:
    results = client.score(7, [1, 2, 3], ["m_a", "m_b", "m_c"], timeout_s=deadline_s)
    return {model: r.error_code for model, r in results.items()}


def _beta_serving(client: RootClient) -> int:
    return next(p.serving_addresses for p in client.status().partitions if p.name == "beta")


def test_a_frozen_leaf_fails_only_its_models_and_at_once_when_seen_down(cluster: LocalCluster) -> None:
    with RootClient(cluster.root().target) as client:
        assert set(_codes(client, 10.0).values()) == {grpc.StatusCode.OK}
        cluster.freeze_leaf("beta")
        try:
            codes = _codes(client, LONG_DEADLINE_S)  # the call as a whole is answered
            assert codes["m_a"] is codes["m_b"] is grpc.StatusCode.OK, codes
            assert codes["m_c"] in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), codes
            eventually(lambda: _beta_serving(client) == 0, "the root's health round to see beta down")
            # Seen down: no call goes to the hung leaf, its models fail UNAVAILABLE at once.
            results = client.score(7, [1, 2, 3], ["m_a", "m_c"], timeout_s=LONG_DEADLINE_S)
            assert results["m_a"].ok, results["m_a"]
            assert results["m_c"].error_code is grpc.StatusCode.UNAVAILABLE, results["m_c"]
            assert "no leaf address serving" in results["m_c"].error_message
        finally:
            cluster.thaw_leaf("beta")
        eventually(lambda: _codes(client, 10.0)["m_c"] is grpc.StatusCode.OK, "beta served again")


@pytest.mark.parametrize("replicas", [1, 2])
def test_soak_frozen_leaf_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str], replicas: int) -> None:
    """``rootleaf soak --faults frozen_leaf``: with one replica every other partition's models
    are served; with two the frozen replica is routed around. Whether the availability
    targets are met on a busy machine is the exit code; what no load can change is asserted."""
    out = tmp_path / "soak.json"
    code = soak_main(["--minutes", "0.25", "--gap-s", "1", "--replicas", str(replicas), "--faults", "frozen_leaf",
                      "--dir", str(tmp_path / "c"), "--json", str(out)])
    assert out.is_file(), capsys.readouterr().err
    report = json.loads(out.read_text())
    assert code == (0 if all(report["targets"].values()) else 1), report
    assert report["frozen_phases"] >= 1 and report["lost"] == 0 and report["root_alive"]
    assert set(report["failed_by_code"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    frozen = report["by_fault"]["frozen_leaf"]
    assert frozen["requests"] > 0
    if replicas == 1:
        assert frozen["other_partitions_served_rate"] == 1.0, frozen
    assert "frozen-leaf phases" in capsys.readouterr().out
