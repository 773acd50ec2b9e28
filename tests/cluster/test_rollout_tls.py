"""A staged rollout against a mutual-TLS cluster started with ``rootleaf up --tls-dir``:
the plan takes the cluster's TLS settings from cluster.json, and verification, canary
traffic and rollback all go over TLS (a plaintext client is refused by every server)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from contract.versions import version_key
from deploy.bundle import build_bundle
from harness.cluster_cli import down_main
from harness.processes import REPO_ROOT, pid_alive
from deploy.rollout_cli import rollback_main, rollout_main
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc, root_pb2, root_pb2_grpc
from tests.cluster.processes import cluster_description
from tests.tls_certs import make_certs
from transport.tls import PLAINTEXT, TlsConfig, aio_channel

pytestmark = [pytest.mark.cluster]
WAIT_S = 180.0


async def _root_hash(target: str, bundle: str, tls: TlsConfig) -> str:
    async with aio_channel(target, tls, []) as channel:
        status = await root_pb2_grpc.RootStub(channel).Status(root_pb2.RootStatusRequest(), timeout=5)
    return next(b.content_hash for b in status.bundles if b.name == bundle)


async def _listed(target: str, model: str, tls: TlsConfig) -> set[str]:
    async with aio_channel(target, tls, []) as channel:
        reply = await leaf_pb2_grpc.LeafStub(channel).ListModels(leaf_pb2.ListModelsRequest(), timeout=5)
    return {v for m in reply.models if m.name == model for v in m.versions}


def test_rollout_and_rollback_over_mutual_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = make_certs(tmp_path / "certs")
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rootleaf.cli", "up", "--workload", "ci", "--dir", str(tmp_path / "c"), "--canary",
         "--tls-dir", str(certs.ca.parent)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT,
    )
    try:
        desc = cluster_description(tmp_path / "c" / "cluster.json", proc, WAIT_S)
        tls = TlsConfig.from_mapping(desc["tls"])
        assert tls.ca_file == str(certs.ca) and tls.cert_file == str(certs.client_cert)
        canary_leaf = desc["roles"]["canary"]["leaves"][0]
        bundle, model = canary_leaf["partition"], sorted(canary_leaf["models"])[0]
        for role in desc["roles"].values():  # every server is TLS-only
            with pytest.raises(grpc.aio.AioRpcError):
                asyncio.run(_root_hash(role["root"]["target"], bundle, PLAINTEXT))
        repo = Path(canary_leaf["repo_dir"]) / model
        latest = max((p.name for p in repo.iterdir() if not p.name.startswith(".")), key=version_key)
        version = str(int(latest) + 1)
        models = tmp_path / "models"
        shutil.copytree(repo / latest, models / model / version)
        deployed = desc["roles"]["canary"]["root"]["bundle_files"][bundle]
        package = build_bundle(bundle, models, tmp_path / "out", models=[model], include_deployed=deployed).package.path
        plan = tmp_path / "plan.toml"
        plan.write_text(
            f'[rollout]\nbundle = "{bundle}"\nstate_dir = "state"\nverify_timeout_s = 30\n'
            f'[targets]\ncluster_file = "{tmp_path / "c" / "cluster.json"}"\n'
            "[analysis]\nrequests = 40\ncandidates_per_request = 16\nmin_samples = 100\n"
            "user_ids = [0, 200]\nitem_ids = [0, 1000]\n"
            "max_p50_ratio = 10.0\nmax_p99_ratio = 10.0\nlatency_slack_ms = 250.0\n"
        )
        before = asyncio.run(_root_hash(desc["roles"]["production"]["root"]["target"], bundle, tls))
        assert rollout_main(["--plan", str(plan), "--package", str(package), "--models", str(models)]) == 0
        out = capsys.readouterr().out
        assert "verdict PASS" in out and "rollout COMPLETED" in out, out
        for role in desc["roles"].values():
            assert asyncio.run(_root_hash(role["root"]["target"], bundle, tls)) != before
            for leaf in role["leaves"]:
                if model in leaf["models"]:
                    assert version in asyncio.run(_listed(leaf["target"], model, tls))
        assert rollback_main(["--plan", str(plan)]) == 0
        for role in desc["roles"].values():
            assert asyncio.run(_root_hash(role["root"]["target"], bundle, tls)) == before
            for leaf in role["leaves"]:
                if model in leaf["models"]:
                    assert version not in asyncio.run(_listed(leaf["target"], model, tls))
        pids = [r["root"]["pid"] for r in desc["roles"].values()] + [
            leaf["pid"] for r in desc["roles"].values() for leaf in r["leaves"]]
        assert down_main(["--dir", str(tmp_path / "c")]) == 0
        assert proc.wait(timeout=60) == 0
        assert not [p for p in pids if pid_alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
