"""``rootleaf root`` as a real process in front of a real leaf process: port file, health,
scores through the client library and the ``rootleaf score`` table, SIGTERM drain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.demo_model import build_demo_model
from leaf.export import export_model
from root import client_cli
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.client import RootClient
from harness.datagen import generate_local_store
from tests.cluster.processes import stop, wait_port, wait_serving

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
def test_root_process_scores_through_a_leaf_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = FeatureCatalog.of(
        [
            FeatureSpec("u_x", Entity.REQUEST, "float32", (4,), kind="embedding"),
            FeatureSpec("c_x", Entity.CANDIDATE, "float32", (), kind="ratio"),
            FeatureSpec("c_y", Entity.CANDIDATE, "int64", (3,), kind="ids"),
            FeatureSpec("c_unused", Entity.CANDIDATE, "float32", (16,), kind="embedding"),
        ]
    )
    catalog.save(tmp_path / "catalog.json")
    generate_local_store(catalog, tmp_path / "store", users=10, items=100, seed=1)
    inputs = ["u_x", "c_x", "c_y"]
    export_model(build_demo_model({"u_x": 4, "c_x": 1, "c_y": 3}, [8], ["ctr"], seed=2), tmp_path / "repo" / "rank" / "1", inputs, ["ctr"])
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "module_info.json").write_text(
        json.dumps({"rank": [{"version": "1", "input_names": inputs, "output_names": ["ctr"]}]})
    )
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    logs = [open(tmp_path / "leaf.log", "wb"), open(tmp_path / "root.log", "wb")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        leaf = subprocess.Popen(
            [sys.executable, "-m", "leaf.cli", "--repo", str(tmp_path / "repo"), "--port", "0",
             "--port-file", str(tmp_path / "leaf.port"), "--torch-threads", "1"],
            cwd=REPO_ROOT, stdout=logs[0], stderr=subprocess.STDOUT, env=env,
        )
        procs.append(leaf)
        leaf_port = wait_port(tmp_path / "leaf.port", leaf)
        (tmp_path / "root.toml").write_text(
            f"""
catalog = "catalog.json"
[bundles]
main = "bundle/module_info.json"
[partitions.p]
targets = ["127.0.0.1:{leaf_port}"]
models = ["rank"]
[feature_store]
kind = "local"
path = "store"
[cache]
max_bytes = 1000000
"""
        )
        root = subprocess.Popen(
            [sys.executable, "-m", "root.cli", "--config", str(tmp_path / "root.toml"), "--port-file", str(tmp_path / "root.port")],
            cwd=REPO_ROOT, stdout=logs[1], stderr=subprocess.STDOUT, env=env,
        )
        procs.append(root)
        target = f"127.0.0.1:{wait_port(tmp_path / 'root.port', root)}"
        wait_serving(target, "rootleaf.v1.Root")
        with RootClient(target) as client:
            results = client.score(3, [1, 2, 3, 500], ["rank"], request_id="proc-1")
            assert results["rank"].ok and results["rank"].version == "1"
            assert results["rank"].outputs["ctr"].shape == (4,)
            status = client.status()
            assert status.bundles[0].name == "main" and status.bundles[0].content_hash
        assert client_cli.main(["--target", target, "--model", "rank", "--user", "3", "--candidates", "1,2,3,500"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert "rank@1:ctr" in table[0] and len(table) == 5
        score_of_1 = float(table[1].split()[1])
        assert score_of_1 == pytest.approx(float(results["rank"].outputs["ctr"][0]), abs=1e-6)
        assert client_cli.main(["--target", target, "--model", "nope", "--user", "3", "--candidates", "1"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        assert stop(root) == 0
    finally:
        for proc in reversed(procs):
            stop(proc)
        for f in logs:
            f.close()
    assert np.isfinite(results["rank"].outputs["ctr"]).all()
