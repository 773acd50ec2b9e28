"""Staged rollout on a real local cluster (production + canary roots and leaves as processes).

One cluster serves every test in order; each test leaves it as it found it (a failed rollout
rolls itself back, the passing one is rolled back on demand), and checks exactly that:
root bundle files and leaf repositories byte-for-byte, and what the servers report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import torch

from contract.versions import version_key
from deploy.bundle import build_bundle
from deploy.delivery import tree_sha256
from harness.local_cluster import LocalCluster
from harness.soak_load import LoadProcess
from deploy import rollout_cli
from deploy.rollout_cli import rollback_main, rollout_main
from leaf.export import export_model
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc, root_pb2, root_pb2_grpc

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning"),
]


class _Garbage(torch.nn.Module):
    """A broken model: same signature, every score pinned near 1."""

    def __init__(self, first_input: str, outputs: int) -> None:
        super().__init__()
        self.first_input = first_input
        self.outputs = outputs

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        n = features[self.first_input].shape[0]
        return torch.full([n, self.outputs], 0.999)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster("ci", tmp_path_factory.mktemp("cluster"), canary=True) as c:
        yield c


def _desc(cluster: LocalCluster) -> dict[str, Any]:
    return json.loads(cluster.cluster_json.read_text())


def _bundle_and_model(desc: dict[str, Any]) -> tuple[str, str, str]:
    """First partition, its first model, and that model's latest deployed version."""
    leaf = desc["roles"]["canary"]["leaves"][0]
    model = sorted(leaf["models"])[0]
    versions = [p.name for p in (Path(leaf["repo_dir"]) / model).iterdir() if not p.name.startswith(".")]
    return leaf["partition"], model, max(versions, key=version_key)


def _snapshot(desc: dict[str, Any]) -> dict[str, str]:
    """Hash of every root bundle file and every leaf repository of both roles."""
    out = {}
    for role in desc["roles"].values():
        for path in role["root"]["bundle_files"].values():
            out[path] = tree_sha256(Path(path).parent)
        for leaf in role["leaves"]:
            out[leaf["repo_dir"]] = tree_sha256(Path(leaf["repo_dir"]))
    return out


async def _listed(target: str, model: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await leaf_pb2_grpc.LeafStub(channel).ListModels(leaf_pb2.ListModelsRequest(), timeout=5)
    return {v for m in reply.models if m.name == model for v in m.versions}


async def _root_hash(target: str, bundle: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        status = await root_pb2_grpc.RootStub(channel).Status(root_pb2.RootStatusRequest(), timeout=5)
    return next(b.content_hash for b in status.bundles if b.name == bundle)


@contextmanager
def _under_load(
    desc: dict[str, Any], model: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[list[tuple[float, str]]]:
    """Unversioned load on both roots from separate processes while the block runs; on exit,
    every request must have succeeded. Yields the rollout's output lines with their times."""
    lines: list[tuple[float, str]] = []

    def emit(line: str) -> None:
        lines.append((time.monotonic(), line))
        print(line, flush=True)

    monkeypatch.setattr(rollout_cli, "_emit", emit)
    loads = {
        role: LoadProcess(desc["roles"][role]["root"]["target"], tmp / f"load-{role}.jsonl", users=200, items=1000,
                          candidates=16, concurrency=4, deadline_ms=2000, models=(model,), rate=60.0)
        for role in ("production", "canary")
    }
    try:
        for load in loads.values():
            assert load.wait_for(lambda o: o.ok, 60.0) is not None
        started = time.monotonic()
        yield lines
        stats = {role: load.stop() for role, load in loads.items()}
    finally:
        for load in loads.values():
            if load.summary is None:
                load.stop()
    # Requests by rollout stage (a stage's requests are those sent before its line printed).
    marks = [(t, line.split(":")[0]) for t, line in lines if line.startswith("[") and (": OK" in line or ": FAILED" in line)]
    marks += [(t, "rollback") for t, line in lines if line.startswith("rolled back")]
    for role, load in loads.items():
        during = [o for o in load.outcomes if o.started >= started]
        by_stage, previous = {}, started
        for t, stage in marks:
            by_stage[stage] = sum(1 for o in during if previous <= o.started < t)
            previous = t
        by_stage["after"] = sum(1 for o in during if o.started >= previous)
        failed = [o for o in load.outcomes if not o.ok]
        with capsys.disabled():
            print(f"\n{role} root: {len(during)} requests during the rollout, by stage {by_stage}, failed {len(failed)}")
        assert stats[role].lost == 0 and failed == [], failed[:3]


def _prepare(cluster: LocalCluster, tmp: Path, *, broken: bool) -> tuple[list[str], str, str, str]:
    desc = _desc(cluster)
    bundle, model, latest = _bundle_and_model(desc)
    new_version = str(int(latest) + 1)
    models = tmp / "models"
    target = models / model / new_version
    source = Path(desc["models_dir"]) / model / latest
    if broken:
        info = json.loads((source / "module_info.json").read_text())
        export_model(torch.jit.script(_Garbage(info["input_names"][0], len(info["output_names"]))),
                     target, info["input_names"], info["output_names"])
    else:
        shutil.copytree(source, target)  # a retrain that converged to the same weights
    package = build_bundle(bundle, models, tmp / "out", models=[model], served_from=cluster.cluster_json).package.path
    plan = tmp / "plan.toml"
    plan.write_text(
        f'[rollout]\nbundle = "{bundle}"\nstate_dir = "state"\nverify_timeout_s = 30\n'
        f'[targets]\ncluster_file = "{cluster.cluster_json}"\n'
        "[analysis]\nrequests = 40\ncandidates_per_request = 16\nmin_samples = 100\n"
        f"user_ids = [0, 200]\nitem_ids = [0, 1000]\n"
        # Two shared cores make loopback latency noise, not signal: judge it loosely here.
        "max_p50_ratio = 10.0\nmax_p99_ratio = 10.0\nlatency_slack_ms = 250.0\n"
    )
    return ["--plan", str(plan), "--package", str(package), "--models", str(models)], bundle, model, new_version


def test_broken_canary_fails_analysis_and_everything_rolls_back(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = _desc(cluster)
    before = _snapshot(desc)
    args, bundle, model, version = _prepare(cluster, tmp_path, broken=True)
    hashes = {r: asyncio.run(_root_hash(desc["roles"][r]["root"]["target"], bundle)) for r in desc["roles"]}
    with _under_load(desc, model, tmp_path, monkeypatch, capsys):
        assert rollout_main(args) == 1
    out = capsys.readouterr().out
    assert "[1/5] root configs -> canary: OK" in out and "[2/5] model configs -> canary: OK" in out
    assert "[3/5] automated canary analysis: FAILED" in out and f"score[{model}]" in out
    assert "[4/5]" not in out and "rolled back: every change reverted and verified" in out
    assert _snapshot(desc) == before
    for role in desc["roles"].values():
        assert asyncio.run(_root_hash(role["root"]["target"], bundle)) == hashes["production"]
        for leaf in role["leaves"]:
            if model in leaf["models"]:
                assert version not in asyncio.run(_listed(leaf["target"], model))
    assert hashes["canary"] == hashes["production"]


def test_delivery_failing_midway_rolls_back(cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Canary stages and analysis pass; the second production root's file cannot be written."""
    desc = _desc(cluster)
    before = _snapshot(desc)
    args, bundle, model, version = _prepare(cluster, tmp_path, broken=False)
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
    assert _snapshot(desc) == before
    for leaf in desc["roles"]["canary"]["leaves"]:
        if model in leaf["models"]:
            assert version not in asyncio.run(_listed(leaf["target"], model))


def test_full_rollout_passes_then_rollback_on_demand(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = _desc(cluster)
    before = _snapshot(desc)
    args, bundle, model, version = _prepare(cluster, tmp_path, broken=False)
    assert rollout_main(args + ["--dry-run"]) == 0
    assert _snapshot(desc) == before
    with _under_load(desc, model, tmp_path, monkeypatch, capsys):
        assert rollout_main(args) == 0
    out = capsys.readouterr().out
    print(out)  # the stages and verdict of a real run, for the record (-s shows it)
    for n in range(1, 6):
        assert f"[{n}/5]" in out and f"[{n}/5] " in out
    assert "verdict PASS" in out and "rollout COMPLETED" in out
    new_hash = hashlib.sha256((tmp_path / "out" / "module_info.json").read_bytes()).hexdigest()
    for role in desc["roles"].values():
        assert asyncio.run(_root_hash(role["root"]["target"], bundle)) == new_hash
        for leaf in role["leaves"]:
            if model in leaf["models"]:
                assert version in asyncio.run(_listed(leaf["target"], model))
    assert _snapshot(desc) != before
    assert rollback_main(["--plan", args[1]]) == 0
    assert _snapshot(desc) == before
    for role in desc["roles"].values():
        for leaf in role["leaves"]:
            if model in leaf["models"]:
                assert version not in asyncio.run(_listed(leaf["target"], model))
