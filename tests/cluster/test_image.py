"""The image, built from this checkout with a real engine, and a cluster of its containers
(``rootleaf up --image``'s ``LocalCluster(image=...)``; ci workload: alpha hosts m_a, m_b;
beta hosts m_c): healthy containers as the image's user with read-only models and bundles,
the same scores as a cluster of processes, the demo's modes, a full staged rollout with its
canary analysis, a leaf container killed and started again, and ``up``/``down``.

Runs where a Docker engine answers or can be started (root with Debian's ``docker.io``:
``./run test`` installs it); skipped with the reason otherwise. The build is cached by the
engine: after the first, a build without changes takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from benchmarks.cluster import BenchOptions, Mode, run_cluster_bench
from deploy.engine import Engine, EngineError, ensure_engine, unavailable_reason
from deploy.image import REPO, BuildResult, build_image, image_tag
from deploy.rollout_cli import rollback_main, rollout_main
from harness.containers import IMAGE_UID, PORT_ENV
from harness.local_cluster import LocalCluster
from harness.soak_load import LoadProcess, Outcome
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from tests.cluster.rollout_steps import description, listed, prepare, snapshot
from tests.waiting import eventually

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning"),
    pytest.mark.timeout(900),
]

WAIT_S = 120.0
ALPHA, BETA = ("m_a", "m_b"), ("m_c",)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no container engine: {reason}")
    try:
        started = ensure_engine(REPO / ".rootleaf" / "image" / "engine")
    except EngineError as exc:  # dockerd installed but it does not start here (its log is named)
        pytest.skip(f"no container engine: {exc}")
    yield started
    started.close()  # only a daemon this module started


@pytest.fixture(scope="module")
def built(engine: Engine) -> BuildResult:
    result = build_image(engine)
    print(f"\n{result}")
    return result


@pytest.fixture(scope="module")
def cluster(built: BuildResult, engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster("ci", tmp_path_factory.mktemp("containers"), canary=True, image=built.tag, engine=engine) as c:
        yield c


def _containers(engine: Engine) -> dict[int, dict[str, Any]]:
    """``docker inspect`` of every running cluster container, by its server's host pid."""
    ids = engine.run(["ps", "--quiet", "--filter", "label=org.rootleaf.cluster=1"]).stdout.split()
    docs = json.loads(engine.run(["inspect", *ids]).stdout) if ids else []
    return {int(d["State"]["Pid"]): d for d in docs}


def _servers(cluster: LocalCluster) -> list[tuple[int, int, str, str]]:
    """(pid, port, own directory, read-only directory) of every root and leaf."""
    out = []
    for role in cluster.roles:
        for leaf in cluster.leaves(role):
            out.append((leaf.pid, int(leaf.target.rsplit(":", 1)[1]), str(Path(leaf.repo_dir).parent), leaf.repo_dir))
        root = cluster.root(role)
        out.append((root.pid, int(root.target.rsplit(":", 1)[1]), root.config_dir, str(Path(root.config_dir) / "bundles")))
    return out


def _score(target: str, models: tuple[str, ...]) -> root_pb2.ScoreResponse:
    with grpc.insecure_channel(target) as channel:
        request = root_pb2.ScoreRequest(request_id="image", user_id=5, candidate_ids=[1, 2, 3, 4],
                                        models=[root_pb2.ModelRef(name=m) for m in models])
        response: root_pb2.ScoreResponse = root_pb2_grpc.RootStub(channel).Score(request, timeout=20)
        return response


def test_the_build_tags_what_the_manifests_run(built: BuildResult) -> None:
    assert built.tag == image_tag() == f"rootleaf/rootleaf:{built.tag.split(':')[1]}"
    assert built.size_bytes > 0 and built.storage_driver in ("overlay2", "vfs")


def test_every_server_is_a_healthy_container_of_the_image(cluster: LocalCluster, engine: Engine, built: BuildResult) -> None:
    servers = _servers(cluster)
    containers = _containers(engine)
    assert len(servers) == 6  # two roles: a root and two leaves each
    for pid, port, own_dir, read_only in servers:
        doc = containers[pid]
        assert doc["Config"]["Image"] == built.tag and doc["HostConfig"]["NetworkMode"] == "host"
        assert f"{PORT_ENV}={port}" in doc["Config"]["Env"]
        uid = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
        assert int(uid) == IMAGE_UID
        writable = {m["Destination"]: m["RW"] for m in doc["Mounts"]}
        assert writable == {str(cluster.directory): False, own_dir: True, read_only: False}
    # The image's own HEALTHCHECK, probing each server's port.
    eventually(lambda: all(d["State"]["Health"]["Status"] == "healthy" for d in _containers(engine).values()),
               "every container healthy", WAIT_S, every_s=1.0)


def test_containers_score_like_processes(cluster: LocalCluster, tmp_path: Path) -> None:
    models = ALPHA + BETA
    with LocalCluster("ci", tmp_path / "processes") as processes:
        expected = _score(processes.root().target, models)
        argv = ["--model", "m_a", "--model", "m_c", "--user", "7", "--candidates", "3,1,4,1,5"]
        by_cli = [subprocess.run([sys.executable, "-m", "rootleaf.cli", "score", "--target", target, *argv],
                                 capture_output=True, text=True, timeout=120)
                  for target in (processes.root().target, cluster.root().target)]
    got = _score(cluster.root().target, models)
    assert [r.model for r in got.results] == [r.model for r in expected.results] and len(got.results) == 3
    for mine, theirs in zip(got.results, expected.results):
        assert mine.error_code == 0 and mine.version == theirs.version
        assert list(mine.outputs) == list(theirs.outputs)  # bit for bit: the same models on the same inputs
    assert by_cli[0].returncode == by_cli[1].returncode == 0, by_cli
    assert by_cli[1].stdout == by_cli[0].stdout


def test_demo_modes_run_against_containers(built: BuildResult, engine: Engine, tmp_path: Path) -> None:
    options = BenchOptions(closed_s=1.0, open_s=1.0, pool_size=8, probe_requests=2, closed_max_requests=200,
                           open_min_requests=10, idle_s=0.5, progress=False, rounds=1)
    doc = run_cluster_bench("ci", tmp_path, [Mode(False, False, False), Mode(True, True, True)], options,
                            image=built.tag)
    assert doc["image"] == built.tag
    base, full = doc["modes"]
    summary = [(m["label"], m["errors"], m["scores_match_baseline"]) for m in doc["modes"]]
    assert all(errors == 0 and match for _, errors, match in summary), summary
    assert full["wire_bytes_per_request"] < base["wire_bytes_per_request"]
    assert base["root_cpu_ms_per_request"] > 0  # measured on the container's own process


def test_full_rollout_with_canary_analysis(cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The rollout as tests/cluster/test_rollout.py runs it on processes, without the side load
    (the analysis sends its own requests to both roots)."""
    desc = description(cluster)
    before = snapshot(desc)
    args, bundle, model, version = prepare(cluster, tmp_path, broken=False)
    assert rollout_main(args) == 0
    out = capsys.readouterr().out
    assert all(f"[{n}/5] " in out for n in range(1, 6)), out
    assert "verdict PASS" in out and "rollout COMPLETED" in out
    for role in desc["roles"].values():
        for leaf in role["leaves"]:
            if model in leaf["models"]:
                assert version in asyncio.run(listed(leaf["target"], model))
    assert rollback_main(["--plan", args[1]]) == 0
    assert snapshot(desc) == before


def test_killed_leaf_container_fails_its_models_and_starts_again(cluster: LocalCluster, engine: Engine) -> None:
    def all_ok(o: Outcome) -> bool:
        return o.code == "OK" and all(o.models.get(m) == "OK" for m in ALPHA + BETA)

    old = cluster.leaves()[1]
    assert old.partition == "beta"
    with LoadProcess(cluster.root().target, cluster.directory / "kill.jsonl", users=200, items=1000, candidates=16,
                     concurrency=2, deadline_ms=5000, models=ALPHA + BETA, rate=10.0) as load:
        assert load.wait_for(all_ok, WAIT_S) is not None
        cluster.kill_leaf("beta")
        killed_at = time.monotonic()
        assert old.pid not in _containers(engine)  # the container is gone (run with --rm)
        assert load.wait_for(lambda o: o.started > killed_at and o.models.get("m_c", "OK") != "OK", WAIT_S)
        new = cluster.restart_leaf("beta")
        serving_at = time.monotonic()
        assert load.wait_for(lambda o: o.started > serving_at and all_ok(o), WAIT_S) is not None
        stats = load.stop()
    assert new.pid != old.pid and new.target == old.target
    assert stats.lost == 0
    bad = [o for o in load.outcomes if o.code != "OK" or any(o.models[m] != "OK" for m in ALPHA)]
    assert bad == [], bad[:5]
    eventually(lambda: _containers(engine)[new.pid]["State"]["Health"]["Status"] == "healthy",
               "the restarted container healthy", WAIT_S, every_s=1.0)


def test_up_and_down_with_an_image(built: BuildResult, engine: Engine, tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-m", "rootleaf.cli", "up", "--image", built.tag, "--dir", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as up:
        _up_then_down(up, built, engine, tmp_path)


def _up_then_down(up: subprocess.Popen[str], built: BuildResult, engine: Engine, tmp_path: Path) -> None:
    try:
        assert up.stdout is not None
        line = ""
        for line in up.stdout:  # bounded: `up` prints the root's address, or exits on failure
            if line.startswith("production root: "):
                break
        assert line.startswith("production root: "), line
        doc = json.loads((tmp_path / "cluster.json").read_text())
        assert doc["image"] == built.tag and doc["state"] == "running"
        pids = [doc["roles"]["production"]["root"]["pid"]] + [l["pid"] for l in doc["roles"]["production"]["leaves"]]
        assert set(pids) <= set(_containers(engine))
        assert [r.error_code for r in _score(line.split(": ", 1)[1].strip(), ALPHA + BETA).results] == [0, 0, 0]
        done = subprocess.run([sys.executable, "-m", "rootleaf.cli", "down", "--dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert up.wait(timeout=60) == 0
        assert not set(pids) & set(_containers(engine))
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=60)
