"""Faults on a real local cluster (ci workload: alpha hosts m_a, m_b; beta hosts m_c) under
load from a separate load process: a SIGKILLed leaf, a slow leaf, an allowlist reload storm,
a model version rollout and rollback, overload at the root. Every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness.faults import AllowlistStorm, read_records
from harness.soak_load import LoadProcess, Outcome
from harness.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

WAIT_S = 60.0
ALPHA, BETA = ("m_a", "m_b"), ("m_c",)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("faults")
    records = directory / "leaf-requests.jsonl"
    with LocalCluster("ci", directory, leaf_args=("--torch-threads", "1", "--record-requests", str(records))) as c:
        yield c


def _load(cluster: LocalCluster, name: str, *, models: tuple[str, ...] = ALPHA + BETA, deadline_ms: int = 1000,
          concurrency: int = 4, rate: float = 60.0, target: str | None = None) -> LoadProcess:
    return LoadProcess(target or cluster.root().target, cluster.directory / f"{name}.jsonl", users=200, items=1000,
                       candidates=16, concurrency=concurrency, deadline_ms=deadline_ms, models=models, rate=rate)


def _all_ok(models: tuple[str, ...]) -> Callable[[Outcome], bool]:
    return lambda o: o.code == "OK" and all(o.models.get(m) == "OK" for m in models)


def test_killed_leaf_fails_only_its_models_and_recovers(cluster: LocalCluster) -> None:
    with _load(cluster, "kill") as load:
        assert load.wait_for(_all_ok(ALPHA + BETA), WAIT_S) is not None
        cluster.kill_leaf("beta")
        killed_at = time.monotonic()
        down = load.wait_for(lambda o: o.started > killed_at and o.models.get("m_c", "OK") != "OK", WAIT_S)
        assert down is not None
        info = cluster.restart_leaf("beta")
        serving_at = time.monotonic()
        back = load.wait_for(lambda o: o.started > serving_at and o.models.get("m_c") == "OK", WAIT_S)
        assert back is not None
        stats = load.stop()
    assert cluster.root().target and info.target
    # The root recovered without a restart, within 5 s of the leaf serving again.
    assert back.started - serving_at < 5.0
    assert stats.lost == 0
    for o in load.outcomes:
        assert o.code == "OK", o  # the root itself never failed a call
        assert all(o.models[m] == "OK" for m in ALPHA), o  # the other partition: 100%
        # An OK call was answered within the client's deadline: the dead partition never held it.
        assert o.models["m_c"] in ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"), o
    assert any(o.models["m_c"] != "OK" for o in load.outcomes)


def test_slow_leaf_misses_the_deadline_for_its_models_only(cluster: LocalCluster) -> None:
    # The delay is far beyond the deadline, the deadline far beyond a busy machine's stalls.
    cluster.restart_leaf("beta", extra_args=["--inject-delay-ms", "4000"])
    try:
        with _load(cluster, "slow", deadline_ms=1000) as load:
            slow = load.wait_for(lambda o: o.models.get("m_c") == "DEADLINE_EXCEEDED", WAIT_S)
            assert slow is not None
            started = time.monotonic()
            assert load.wait_for(lambda o: o.started > started, WAIT_S) is not None
            stats = load.stop()
    finally:
        cluster.restart_leaf("beta")
    assert stats.lost == 0 and len(load.outcomes) >= 2
    for o in load.outcomes:
        assert o.code == "OK", o
        assert all(o.models[m] == "OK" for m in ALPHA), o
        # Answered (code OK) within the client's deadline, so bounded by it, not by the slow leaf.
        assert o.models["m_c"] in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), o


def test_reload_storm_loses_nothing_and_leaves_get_valid_allowlists(cluster: LocalCluster) -> None:
    records = cluster.directory / "leaf-requests.jsonl"
    assert cluster.assets is not None
    names = [f["name"] for f in json.loads(Path(cluster.assets.catalog).read_text())["features"]]
    storm = AllowlistStorm({b: Path(p) for b, p in cluster.root().bundle_files.items()}, names, seed=3)
    skip = len(read_records(records))
    try:
        with _load(cluster, "storm", rate=150.0) as load:
            ready = load.wait_for(_all_ok(ALPHA + BETA), WAIT_S)  # the root reaches both partitions
            assert ready is not None
            storm.storm(500, corrupt_fraction=0.1, interval_s=0.004)
            done = time.monotonic()
            # Past the storm by 0.5 s, and over 100 requests since the root was ready: a count,
            # so a busy machine that sends fewer per second only takes longer.
            after = load.wait_for(
                lambda o: o.started > done + 0.5 and sum(x.started >= ready.started for x in load.outcomes) > 100, WAIT_S
            )
            assert after is not None
            stats = load.stop()
    finally:
        storm.restore()
    assert storm.counts.reloads + storm.counts.corrupt_reloads == 500 + len(storm.bundle_files)
    assert storm.counts.corrupt_reloads == 50
    assert stats.lost == 0 and stats.sent > 100
    during = [o for o in load.outcomes if o.started >= ready.started]
    assert len(during) > 100 and [o for o in during if not o.ok] == []
    seen = read_records(records)[skip:]
    assert len(seen) >= 2 * stats.sent
    assert storm.check_records(seen) == []
    # Trimming really followed the rewrites: leaves saw several distinct allowlists.
    assert len({frozenset(r["feature_names"]) for r in seen if r["model"] == "m_a"}) > 2


def test_version_rollout_and_rollback_under_load(cluster: LocalCluster) -> None:
    repo = Path(cluster.leaves()[0].repo_dir) / "m_a"
    bundle = Path(cluster.root().bundle_files["alpha"])
    original = bundle.read_bytes()
    doc = json.loads(original)
    doc["m_a"].append({**doc["m_a"][-1], "version": "3"})
    with _load(cluster, "rollout", models=ALPHA, rate=100.0) as load:
        ready = load.wait_for(lambda o: o.versions.get("m_a") == "2", WAIT_S)
        assert ready is not None
        shutil.copytree(repo / "2", repo / ".3.tmp")
        tmp = bundle.with_name(".rollout.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, bundle)
        os.replace(repo / ".3.tmp", repo / "3")
        assert load.wait_for(lambda o: o.versions.get("m_a") == "3", WAIT_S) is not None
        # Rollback: the version leaves the repository, the bundle goes back.
        os.replace(repo / "3", repo / ".3.rolledback")
        tmp.write_bytes(original)
        os.replace(tmp, bundle)
        gone = time.monotonic()
        assert load.wait_for(lambda o: o.started > gone and o.versions.get("m_a") == "2", WAIT_S) is not None
        stats = load.stop()
    shutil.rmtree(repo / ".3.rolledback")
    during = [o for o in load.outcomes if o.started >= ready.started]
    assert stats.lost == 0 and [o for o in during if not o.ok] == []
    assert {o.versions["m_a"] for o in during} == {"2", "3"}


def test_overload_is_rejected_quickly_and_recovers(cluster: LocalCluster) -> None:
    cluster.restart_leaf("beta", extra_args=["--inject-delay-ms", "300"])
    root = cluster.restart_root(overrides={"max_in_flight": 2})
    records = cluster.directory / "leaf-requests.jsonl"
    try:
        skip = len(read_records(records))
        with _load(cluster, "overload", models=BETA, concurrency=16, rate=0.0, target=root.target,
                   deadline_ms=5000) as load:
            busy = load.wait_for(lambda o: o.code == "RESOURCE_EXHAUSTED", WAIT_S)
            assert busy is not None
            stats = load.stop()
        rejected = [o for o in load.outcomes if o.code == "RESOURCE_EXHAUSTED"]
        served = [o for o in load.outcomes if o.code == "OK"]
        assert stats.lost == 0 and served
        assert set(stats.failed_by_code) == {"RESOURCE_EXHAUSTED"}, stats
        # Rejected at admission: no rejected call reached a leaf (the leaf records every request).
        reached = {r["request_id"] for r in read_records(records)[skip:]}
        assert reached and not reached & {o.request_id for o in rejected}
        # Load drops to what fits: everything succeeds again.
        with _load(cluster, "overload-after", models=BETA, concurrency=2, rate=20.0, target=root.target,
                   deadline_ms=5000) as load:
            started = time.monotonic()
            assert load.wait_for(lambda o: o.started > started + 1.0, WAIT_S) is not None
            after = load.stop()
        assert after.failed_by_code == {} and after.lost == 0, after
    finally:
        cluster.restart_root(overrides={"max_in_flight": 256})
        cluster.restart_leaf("beta")


def test_leaf_queue_overload_is_rejected_for_its_models_and_recovers(cluster: LocalCluster) -> None:
    # One waiting request per model version, no merging: concurrent calls overflow the queue.
    cluster.restart_leaf("beta", extra_args=["--max-queue-requests", "1", "--max-batch-candidates", "0"])
    try:
        # What this depends on is the queue bound, not timing: the deadline is far beyond what
        # a busy machine's stalls add, so a code other than OK / RESOURCE_EXHAUSTED is a bug.
        with _load(cluster, "leaf-overload", concurrency=16, rate=0.0, deadline_ms=10000) as load:
            # The root reconnects to the restarted leaf first (its channel may be backing off).
            connected = load.wait_for(lambda o: o.models.get("m_c") == "OK", WAIT_S)
            assert connected is not None
            busy = load.wait_for(
                lambda o: o.started > connected.started and o.models.get("m_c") == "RESOURCE_EXHAUSTED", WAIT_S
            )
            assert busy is not None
            stats = load.stop()
        assert stats.lost == 0
        for o in load.outcomes:
            assert o.code == "OK", o  # the root answers; only the overloaded leaf's model fails
            assert all(o.models[m] == "OK" for m in ALPHA), o
            if o.started > connected.started:
                assert o.models["m_c"] in ("OK", "RESOURCE_EXHAUSTED"), o
        # Load that fits the queue succeeds again, without a restart.
        with _load(cluster, "leaf-overload-after", concurrency=1, rate=20.0, deadline_ms=10000) as load:
            started = time.monotonic()
            assert load.wait_for(lambda o: o.started > started + 1.0, WAIT_S) is not None
            after = load.stop()
        assert after.lost == 0
        assert all(o.ok for o in load.outcomes), [o for o in load.outcomes if not o.ok]
    finally:
        cluster.restart_leaf("beta")
