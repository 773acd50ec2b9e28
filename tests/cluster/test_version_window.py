"""The rollout window, as processes on loopback: the bundle lists v1 and v2 (v2 drops a
feature v1 needs and adds one), the partition's two leaf replicas start with v1 only, and
continuous unversioned load runs while v2 reaches one replica, then the other, and is
rolled back. Every request must succeed on a version whose exact features it was sent
(checked leaf-side from the leaves' request records)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from harness.faults import read_records
from harness.soak_load import LoadProcess
from harness.demo_model import build_demo_model
from leaf.export import export_model
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from harness.datagen import generate_local_store
from tests.cluster.processes import stop, wait_port, wait_serving
from tests.cluster.test_root_process import REPO_ROOT
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

WAIT_S = 60.0
INPUTS = {"1": ["u_x", "c_old"], "2": ["u_x", "c_new"]}
WIDTHS = {"u_x": 4, "c_old": 1, "c_new": 3}


def _loaded(target: str) -> set[str]:
    with grpc.insecure_channel(target) as channel:
        reply = leaf_pb2_grpc.LeafStub(channel).ListModels(leaf_pb2.ListModelsRequest(), timeout=5)
    return {v for m in reply.models if m.name == "rank" for v in m.versions}


def test_unversioned_load_never_mismatches_through_a_replica_by_replica_rollout(tmp_path: Path) -> None:
    catalog = FeatureCatalog.of(
        [
            FeatureSpec("u_x", Entity.REQUEST, "float32", (4,), kind="embedding"),
            FeatureSpec("c_old", Entity.CANDIDATE, "float32", (), kind="ratio"),
            FeatureSpec("c_new", Entity.CANDIDATE, "float32", (3,), kind="embedding"),
        ]
    )
    catalog.save(tmp_path / "catalog.json")
    generate_local_store(catalog, tmp_path / "store", users=50, items=200, seed=1)
    staged = tmp_path / "staged"
    for version, inputs in INPUTS.items():
        module = build_demo_model({n: WIDTHS[n] for n in inputs}, [8], ["ctr"], seed=int(version))
        export_model(module, staged / version, inputs, ["ctr"])
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "module_info.json").write_text(json.dumps(
        {"rank": [{"version": v, "input_names": i, "output_names": ["ctr"]} for v, i in INPUTS.items()]}
    ))
    replicas = ("a", "b")
    for name in replicas:
        shutil.copytree(staged / "1", tmp_path / f"repo-{name}" / "rank" / "1")
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    logs = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        targets = {}
        for name in replicas:
            log = open(tmp_path / f"leaf-{name}.log", "wb")
            logs.append(log)
            proc = subprocess.Popen(
                [sys.executable, "-m", "rootleaf.cli", "harness-leaf", "--repo", str(tmp_path / f"repo-{name}"), "--port", "0",
                 "--port-file", str(tmp_path / f"leaf-{name}.port"), "--torch-threads", "1",
                 "--record-requests", str(tmp_path / f"leaf-{name}.jsonl")],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
            procs.append(proc)
            targets[name] = f"127.0.0.1:{wait_port(tmp_path / f'leaf-{name}.port', proc)}"
        (tmp_path / "root.toml").write_text(f"""
catalog = "catalog.json"
[bundles]
main = "bundle/module_info.json"
[partitions.p]
targets = {json.dumps(list(targets.values()))}
models = ["rank"]
[feature_store]
kind = "local"
path = "store"
""")
        log = open(tmp_path / "root.log", "wb")
        logs.append(log)
        root = subprocess.Popen(
            [sys.executable, "-m", "root.cli", "--config", str(tmp_path / "root.toml"),
             "--port-file", str(tmp_path / "root.port")],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        procs.append(root)
        target = f"127.0.0.1:{wait_port(tmp_path / 'root.port', root)}"
        wait_serving(target, "rootleaf.v1.Root")

        load = LoadProcess(target, tmp_path / "load.jsonl", users=50, items=200, candidates=8,
                           concurrency=4, deadline_ms=2000, models=("rank",), rate=80.0)
        try:
            assert load.wait_for(lambda o: o.ok and o.versions.get("rank") == "1", WAIT_S) is not None
            # v2 reaches replica a: unversioned requests move to v2, on replica a only.
            shutil.copytree(staged / "2", tmp_path / "repo-a" / "rank" / ".2.tmp")
            os.replace(tmp_path / "repo-a" / "rank" / ".2.tmp", tmp_path / "repo-a" / "rank" / "2")
            assert load.wait_for(lambda o: o.versions.get("rank") == "2", WAIT_S) is not None
            # ... then replica b; requests reach v2 there once the root has seen it load.
            shutil.copytree(staged / "2", tmp_path / "repo-b" / "rank" / ".2.tmp")
            os.replace(tmp_path / "repo-b" / "rank" / ".2.tmp", tmp_path / "repo-b" / "rank" / "2")
            eventually(lambda: "2" in _loaded(targets["b"]), "replica b to load v2", WAIT_S)
            loaded_b = time.monotonic()
            eventually(lambda: any(r["version_served"] == "2" for r in read_records(tmp_path / "leaf-b.jsonl")),
                       "replica b to serve v2", WAIT_S)
            reached_b_s = time.monotonic() - loaded_b
            # Rollback, one replica at a time: v2 leaves the repositories.
            for name in replicas:
                os.replace(tmp_path / f"repo-{name}" / "rank" / "2", tmp_path / f"repo-{name}" / "rank" / ".2.gone")
                eventually(lambda: _loaded(targets[name]) == {"1"}, f"replica {name} back on v1", WAIT_S)  # noqa: B023
            back = time.monotonic()
            assert load.wait_for(lambda o: o.started > back and o.versions.get("rank") == "1", WAIT_S) is not None
            stats = load.stop()
        finally:
            if load.summary is None:
                load.stop()
        failed = [o for o in load.outcomes if not o.ok]
        assert stats.lost == 0 and failed == [], failed[:5]
        assert {o.versions["rank"] for o in load.outcomes} == {"1", "2"}
        # Leaf-side: every request ran on the version whose features it carried, exactly.
        refused = dict.fromkeys(replicas, 0)
        for name in replicas:
            records = read_records(tmp_path / f"leaf-{name}.jsonl")
            assert records, name
            for record in records:
                if not record["version_served"]:
                    # Refused (FAILED_PRECONDITION): the replica had just unloaded the version
                    # named; the root re-resolved and retried, nothing ran on these features.
                    refused[name] += 1
                    continue
                assert record["version_served"] == record["version_requested"]
                assert sorted(record["feature_names"]) == sorted(INPUTS[record["version_served"]]), record
        print(f"replica b served v2 {reached_b_s:.2f}s after loading it; {stats.sent} requests, 0 failed, "
              f"refused and re-resolved by replica: {refused}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        for f in logs:
            f.close()
