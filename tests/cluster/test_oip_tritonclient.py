"""tritonclient (PyPI's Open Inference Protocol client, nobody here wrote it) drives a real
root and leaf: metadata, readiness, infer with raw binary tensors, bad inputs, unknown
models and versions, and scores equal to ``Root/Score``'s. tritonclient runs in processes of
its own (it defines the ``inference`` protobuf package that rootleaf's modules define too)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest

from harness.local_cluster import LocalCluster
from harness.processes import REPO_ROOT
from root.client import RootClient
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

MODEL, VERSION = "m_a", "2"  # ci workload: m_a has versions 1 and 2 on partition alpha
WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster("ci", tmp_path_factory.mktemp("oip"), leaf_args=("--torch-threads", "1", "--versions", "all")) as c:
        with RootClient(c.root().target) as client:
            # The root's health round has seen every partition serve.
            eventually(lambda: all(p.serving_addresses > 0 for p in client.status().partitions),
                       lambda: f"partitions serving: {client.status()}", WAIT_S)
        yield c


def run_client(args: list[str], script: str | None = None, path: Path | None = None) -> Any:
    command = [sys.executable, "-" if script is not None else str(path), *args]
    done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def root_scores(cluster: LocalCluster, user: int, n: int, version: str) -> dict[str, list[float]]:
    with RootClient(cluster.root().target) as client:
        result = client.score(user, list(range(1, n + 1)), [(MODEL, version)], timeout_s=20)[MODEL]
    assert result.error_code == grpc.StatusCode.OK, result.error_message
    return {name: column.tolist() for name, column in result.outputs.items()}


def leaf_target(cluster: LocalCluster) -> str:
    (leaf,) = [info for info in cluster.leaves() if MODEL in info.models]
    return leaf.target


def test_the_documented_script_scores_through_root_and_leaf(cluster: LocalCluster) -> None:
    text = (REPO_ROOT / "docs" / "protocols.md").read_text()
    script = re.search(r"<!-- oip-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert script is not None, "docs/protocols.md lost its example"
    out = run_client([cluster.root().target, leaf_target(cluster), MODEL], script=script.group(1))
    with RootClient(cluster.root().target) as client:
        native = client.score(7, [1, 2, 3, 4], [MODEL], timeout_s=20)[MODEL]
    assert out["version"] == native.version
    assert out["root"] == {name: column.tolist() for name, column in native.outputs.items()}
    assert {name: len(values) for name, values in out["leaf"].items()} == {"ctr": 4}


def test_tritonclient_edges_on_root_and_leaf(cluster: LocalCluster) -> None:
    out = run_client([cluster.root().target, leaf_target(cluster), MODEL, VERSION], path=REPO_ROOT / "tests" / "triton_checks.py")
    for tier in ("root", "leaf"):
        got = out[tier]
        assert (got["live"], got["ready"], got["model_ready"], got["version_ready"]) == (True, True, True, True)
        assert (got["unknown_version_ready"], got["unknown_model_ready"]) == (False, False)
        assert got["metadata"]["name"] == MODEL and got["metadata"]["versions"] == ["1", "2"]
        assert [(o["name"], o["datatype"]) for o in got["metadata"]["outputs"]] == [("ctr", "FP32")]
        assert got["unknown_model_metadata"][0] == "NOT_FOUND"
        assert got["served_version"] == VERSION
        assert got["unknown_model_infer"][0] == "NOT_FOUND"
        assert got["bad_input"][0] == "INVALID_ARGUMENT"
    root, leaf = out["root"], out["leaf"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in root["metadata"]["inputs"]] == [
        ("candidate_ids", "INT64", ["-1"]), ("user_id", "INT64", ["1"])
    ]
    assert root["unknown_version_metadata"][0] == "NOT_FOUND"
    assert leaf["unknown_version_metadata"][0] == "FAILED_PRECONDITION"
    # The README's version rules: a version the bundle does not list runs the newest served;
    # a leaf runs exactly the version named or refuses.
    assert root["unknown_version_infer"] == VERSION
    assert leaf["unknown_version_infer"][0] == "FAILED_PRECONDITION"
    assert "user_id" in root["bad_input"][1]
    assert root["missing_input"][0] == "INVALID_ARGUMENT" and "user_id" in root["missing_input"][1]
    assert leaf["shapes"] == {"ctr": [5]}
    # Scores equal Root/Score's, per user.
    for user, scores in root["scores"].items():
        native = root_scores(cluster, int(user), 8, VERSION)
        assert scores == native
        assert np.isfinite(np.asarray(scores["ctr"])).all()
