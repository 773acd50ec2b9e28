"""Staged rollout on a real local cluster (production + canary roots and leaves as processes).

One cluster serves every test in order; each test leaves it as it found it (a failed rollout
rolls itself back, the passing one is rolled back on demand), and checks exactly that:
root bundle files and leaf repositories byte-for-byte, and what the servers report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Iterator

import pytest

from deploy.rollout_cli import rollback_main, rollout_main
from harness.local_cluster import LocalCluster
from tests.cluster.rollout_steps import description, listed, prepare, root_hash, snapshot, under_load

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster("ci", tmp_path_factory.mktemp("cluster"), canary=True) as c:
        yield c


def test_broken_canary_fails_analysis_and_everything_rolls_back(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = description(cluster)
    before = snapshot(desc)
    args, bundle, model, version = prepare(cluster, tmp_path, broken=True)
    hashes = {r: asyncio.run(root_hash(desc["roles"][r]["root"]["target"], bundle)) for r in desc["roles"]}
    with under_load(desc, model, tmp_path, monkeypatch, capsys):
        assert rollout_main(args) == 1
    out = capsys.readouterr().out
    assert "[1/5] root configs -> canary: OK" in out and "[2/5] model configs -> canary: OK" in out
    assert "[3/5] automated canary analysis: FAILED" in out and f"score[{model}]" in out
    assert "[4/5]" not in out and "rolled back: every change reverted and verified" in out
    assert snapshot(desc) == before
    for role in desc["roles"].values():
        assert asyncio.run(root_hash(role["root"]["target"], bundle)) == hashes["production"]
        for leaf in role["leaves"]:
            if model in leaf["models"]:
                assert version not in asyncio.run(listed(leaf["target"], model))
    assert hashes["canary"] == hashes["production"]


def test_delivery_failing_midway_rolls_back(cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Canary stages and analysis pass; the second production root's file cannot be written."""
    desc = description(cluster)
    before = snapshot(desc)
    args, bundle, model, version = prepare(cluster, tmp_path, broken=False)
    plan = Path(args[1])
    trap = tmp_path / "trap" / "module_info.json"
    trap.mkdir(parents=True)  # a directory where the bundle file should be written
    roles = ""
    for name in ("canary", "production"):
        role = desc["roles"][name]
        roots = [(role["root"]["target"], role["root"]["bundle_files"][bundle], role["root"]["metrics_url"])]
        if name == "production":
            roots.append((role["root"]["target"], str(trap), role["root"]["metrics_url"]))
        for target, path, metrics in roots:
            roles += f'[[{name}.roots]]\ntarget = "{target}"\nbundle_file = "{path}"\nmetrics_url = "{metrics}"\n'
        for leaf in role["leaves"]:
            if leaf["partition"] == bundle:
                roles += (f'[[{name}.leaves]]\ntarget = "{leaf["target"]}"\nrepo_dir = "{leaf["repo_dir"]}"\n'
                          f'models = {json.dumps(leaf["models"])}\n')
    text = plan.read_text()
    plan.write_text(text.replace(f'[targets]\ncluster_file = "{cluster.cluster_json}"\n', roles))
    assert rollout_main(args) == 1
    out = capsys.readouterr().out
    assert "[3/5] automated canary analysis: OK" in out, out
    assert "[4/5] root configs -> production: FAILED" in out and "cannot write" in out
    assert "rolled back: every change reverted and verified" in out
    assert snapshot(desc) == before
    for leaf in desc["roles"]["canary"]["leaves"]:
        if model in leaf["models"]:
            assert version not in asyncio.run(listed(leaf["target"], model))


def test_full_rollout_passes_then_rollback_on_demand(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = description(cluster)
    before = snapshot(desc)
    args, bundle, model, version = prepare(cluster, tmp_path, broken=False)
    assert rollout_main(args + ["--dry-run"]) == 0
    assert snapshot(desc) == before
    with under_load(desc, model, tmp_path, monkeypatch, capsys):
        assert rollout_main(args) == 0
    out = capsys.readouterr().out
    print(out)  # the stages and verdict of a real run, for the record (-s shows it)
    for n in range(1, 6):
        assert f"[{n}/5]" in out and f"[{n}/5] " in out
    assert "verdict PASS" in out and "rollout COMPLETED" in out
    new_hash = hashlib.sha256((tmp_path / "out" / "module_info.json").read_bytes()).hexdigest()
    for role in desc["roles"].values():
        assert asyncio.run(root_hash(role["root"]["target"], bundle)) == new_hash
        for leaf in role["leaves"]:
            if model in leaf["models"]:
                assert version in asyncio.run(listed(leaf["target"], model))
    assert snapshot(desc) != before
    assert rollback_main(["--plan", args[1]]) == 0
    assert snapshot(desc) == before
    for role in desc["roles"].values():
        for leaf in role["leaves"]:
            if model in leaf["models"]:
                assert version not in asyncio.run(listed(leaf["target"], model))
