"""Steps of the staged-rollout cluster tests: read the cluster description, snapshot what a
rollout may change, stage a new (or broken) model version with its plan, and keep load on
both roots while a rollout runs."""

from __future__ import annotations

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
from deploy import rollout_cli
from deploy.bundle import build_bundle
from deploy.delivery import tree_sha256
from harness.local_cluster import LocalCluster
from harness.soak_load import LoadProcess
from leaf.export import export_model
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc, root_pb2, root_pb2_grpc


class Garbage(torch.nn.Module):
    """A broken model: same signature, every score pinned near 1."""

    def __init__(self, first_input: str, outputs: int) -> None:
        super().__init__()
        self.first_input = first_input
        self.outputs = outputs

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        n = features[self.first_input].shape[0]
        return torch.full([n, self.outputs], 0.999)


def description(cluster: LocalCluster) -> dict[str, Any]:
    return json.loads(cluster.cluster_json.read_text())


def bundle_and_model(desc: dict[str, Any]) -> tuple[str, str, str]:
    """First partition, its first model, and that model's latest deployed version."""
    leaf = desc["roles"]["canary"]["leaves"][0]
    model = sorted(leaf["models"])[0]
    versions = [p.name for p in (Path(leaf["repo_dir"]) / model).iterdir() if not p.name.startswith(".")]
    return leaf["partition"], model, max(versions, key=version_key)


def snapshot(desc: dict[str, Any]) -> dict[str, str]:
    """Hash of every root bundle file and every leaf repository of both roles."""
    out = {}
    for role in desc["roles"].values():
        for path in role["root"]["bundle_files"].values():
            out[path] = tree_sha256(Path(path).parent)
        for leaf in role["leaves"]:
            out[leaf["repo_dir"]] = tree_sha256(Path(leaf["repo_dir"]))
    return out


async def listed(target: str, model: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await leaf_pb2_grpc.LeafStub(channel).ListModels(leaf_pb2.ListModelsRequest(), timeout=5)
    return {v for m in reply.models if m.name == model for v in m.versions}


async def root_hash(target: str, bundle: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        status = await root_pb2_grpc.RootStub(channel).Status(root_pb2.RootStatusRequest(), timeout=5)
    return next(b.content_hash for b in status.bundles if b.name == bundle)


@contextmanager
def under_load(
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


def prepare(cluster: LocalCluster, tmp: Path, *, broken: bool) -> tuple[list[str], str, str, str]:
    desc = description(cluster)
    bundle, model, latest = bundle_and_model(desc)
    new_version = str(int(latest) + 1)
    models = tmp / "models"
    target = models / model / new_version
    source = Path(desc["models_dir"]) / model / latest
    if broken:
        info = json.loads((source / "module_info.json").read_text())
        export_model(torch.jit.script(Garbage(info["input_names"][0], len(info["output_names"]))),
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
