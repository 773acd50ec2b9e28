"""The rollout reaching a fleet, on a real local cluster (production + canary as processes).

- Production in waves (local delivery): a second production root joins as wave 2 and cannot
  reach its leaves, so the gate after wave 2 fails and every wave, and the canary, is reverted.
- Kubernetes delivery: the rollout renders ConfigMaps and model-store Jobs and pipes them to
  ``harness.kubelet_sim`` (standing in for kubectl, the API server and the kubelet): the
  ConfigMap lands in the roots' bundle directories through the kubelet's ``..data`` symlink
  swap and the real roots reload it; Jobs run ``rootleaf model-store`` against the leaves'
  repositories. Under continuous load on both roots: zero failed requests through a complete
  rollout and a rollback on demand, and through a broken canary's automatic rollback.

One cluster serves the tests in order; each leaves it as it found it.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest

from deploy.delivery import tree_sha256
from deploy.rollout_cli import rollback_main, rollout_main
from deploy.rollout_metrics import METRICS_FILE
from harness.cluster_config import render_toml
from harness.local_cluster import LocalCluster
from harness.soak_load import LoadProcess
from harness.processes import free_port, spawn, stop_process, wait_port, wait_serving
from tests.cluster.rollout_steps import description, listed, prepare, root_hash, under_load

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning"),
]
NAMESPACES = {"canary": "rootleaf-canary", "production": "rootleaf"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster("ci", tmp_path_factory.mktemp("cluster"), canary=True) as c:
        yield c


def _repos(desc: dict[str, Any]) -> dict[str, str]:
    return {lf["repo_dir"]: tree_sha256(Path(lf["repo_dir"])) for r in desc["roles"].values() for lf in r["leaves"]}


def _leaf_tables(desc: dict[str, Any], role: str, bundle: str, kubernetes: bool) -> str:
    out = ""
    for leaf in desc["roles"][role]["leaves"]:
        if leaf["partition"] != bundle:
            continue
        out += f'[[{role}.leaves]]\ntarget = "{leaf["target"]}"\nmodels = {json.dumps(leaf["models"])}\n'
        out += f'metrics_url = "{leaf["metrics_url"]}"\n'
        out += (f'namespace = "{NAMESPACES[role]}"\npartition = "{bundle}"\n' if kubernetes
                else f'repo_dir = "{leaf["repo_dir"]}"\n')
    return out


def _root_table(role: str, target: str, metrics_url: str, bundle_file: str | None) -> str:
    where = f'bundle_file = "{bundle_file}"\n' if bundle_file else f'namespace = "{NAMESPACES[role]}"\n'
    return f'[[{role}.roots]]\ntarget = "{target}"\nmetrics_url = "{metrics_url}"\n{where}'


def _with_tables(plan: Path, cluster: LocalCluster, tables: str) -> None:
    text = plan.read_text().replace(f'[targets]\ncluster_file = "{cluster.cluster_json}"\n', tables)
    plan.write_text(text)


# ----------------------------------------------------------------------------- waves

def _second_root(cluster: LocalCluster, tmp: Path, bundle: str) -> tuple[Any, str, str, str]:
    """A second production root on its own copy of the bundle file whose partition ``bundle``
    points at a closed port: it serves, and every request for that partition's models fails."""
    desc = description(cluster)
    prod = desc["roles"]["production"]["root"]
    doc = tomllib.loads(Path(prod["config_file"]).read_text())
    bundle_dir = tmp / "root2" / "bundles" / bundle
    bundle_dir.mkdir(parents=True)
    bundle_file = bundle_dir / "module_info.json"
    bundle_file.write_bytes(Path(prod["bundle_files"][bundle]).read_bytes())
    metrics_port = free_port()
    doc.update(listen="127.0.0.1:0", metrics_port=metrics_port)
    doc["bundles"][bundle] = str(bundle_file)
    doc["partitions"][bundle]["targets"] = [f"127.0.0.1:{free_port()}"]  # nothing listens there
    config = tmp / "root2" / "root.toml"
    config.write_text(render_toml(doc))
    proc = spawn("production root 2", ["root", "--config", str(config), "--port-file", str(tmp / "root2" / "port")],
                 tmp / "root2" / "root.log", tmp / "root2" / "port")
    try:
        deadline = time.monotonic() + 60
        target = f"127.0.0.1:{wait_port(proc, deadline)}"
        wait_serving(target, deadline, proc)
    except BaseException:
        stop_process(proc.popen)
        raise
    return proc, target, f"http://127.0.0.1:{metrics_port}/metrics", str(bundle_file)


def test_waves_gate_failing_in_the_second_wave_reverts_the_first(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = description(cluster)
    repos = _repos(desc)
    args, bundle, model, version = prepare(cluster, tmp_path, broken=False)
    proc, target2, metrics2, file2 = _second_root(cluster, tmp_path, bundle)
    try:
        before = {role: asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) for role in NAMESPACES}
        before2 = Path(file2).read_bytes()
        tables = ""
        for role in ("canary", "production"):
            root = desc["roles"][role]["root"]
            tables += _root_table(role, root["target"], root["metrics_url"], root["bundle_files"][bundle])
            if role == "production":
                tables += _root_table(role, target2, metrics2, file2)
            tables += _leaf_tables(desc, role, bundle, kubernetes=False)
        tables += "[waves]\nroots = [1]\nleaves = [1]\nbake_s = 1\nprobe_requests = 5\nmax_error_rate = 0.05\n"
        _with_tables(Path(args[1]), cluster, tables)
        assert rollout_main(args + ["--dry-run"]) == 0
        dry = capsys.readouterr().out
        assert f"production wave 1/2: roots {desc['roles']['production']['root']['target']}; leaves " in dry
        assert f"production wave 2/2: roots {target2}; leaves -; then bake 1 s and gate" in dry
        with under_load(desc, model, tmp_path, monkeypatch, capsys):
            assert rollout_main(args) == 1
        out = capsys.readouterr().out
        print(out)
        for line in ("[4/5] root configs -> production wave 1/2: OK", "[5/5] model configs -> production wave 1/2: OK",
                     "[5/5] gate after production wave 1/2: OK", "[4/5] root configs -> production wave 2/2: OK",
                     "[5/5] gate after production wave 2/2: FAILED", "rolled back: every change reverted and verified"):
            assert line in out, line
        wave1 = next(line for line in out.splitlines() if "gate after production wave 1/2: OK" in line)
        assert "probes 0/10 failed" in wave1  # wave 1 alone is healthy (5 requests, 2 models each)
        # Every wave and the canary are back: bundle hashes, the second root's file, the repositories.
        for role in NAMESPACES:
            assert asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) == before[role]
            for leaf in desc["roles"][role]["leaves"]:
                if model in leaf["models"]:
                    assert version not in asyncio.run(listed(leaf["target"], model))
        assert Path(file2).read_bytes() == before2
        assert asyncio.run(root_hash(target2, bundle)) == before["production"]
        assert _repos(desc) == repos
        metrics = (Path(args[1]).parent / "state" / METRICS_FILE).read_text()
        assert 'status="rolled_back"} 1.0' in metrics and "rootleaf_rollout_stage{" in metrics
        assert 'verdict="PASS"} 1.0' in metrics
    finally:
        stop_process(proc.popen)


# ----------------------------------------------------------------------------- Kubernetes

def _kubernetes_plan(cluster: LocalCluster, tmp: Path, args: list[str], bundle: str) -> Path:
    """Targets by namespace, ``[delivery]`` through the kubelet stand-in, and its map: the
    bundle ConfigMap of each namespace is mounted at that role's bundle directory, the model
    claims hold each partition's repository (a symlink per partition) and the staged models."""
    desc = description(cluster)
    models = Path(args[5])
    mapping: dict[str, Any] = {"configmaps": {}, "claims": {}, "store": str(tmp / "api-server")}
    tables = ""
    for role, namespace in NAMESPACES.items():
        root = desc["roles"][role]["root"]
        mapping["configmaps"][f"{namespace}/bundle-{bundle}"] = [str(Path(root["bundle_files"][bundle]).parent)]
        claim = tmp / "claims" / namespace / "rootleaf-models"
        claim.mkdir(parents=True)
        for leaf in desc["roles"][role]["leaves"]:
            if not (claim / leaf["partition"]).exists():
                os.symlink(leaf["repo_dir"], claim / leaf["partition"])
        mapping["claims"][f"{namespace}/rootleaf-models"] = str(claim)
        mapping["claims"][f"{namespace}/rootleaf-model-source"] = str(models)
        tables += _root_table(role, root["target"], root["metrics_url"], None)
        tables += _leaf_tables(desc, role, bundle, kubernetes=True)
    map_file = tmp / "kubelet-map.json"
    map_file.write_text(json.dumps(mapping, indent=1))
    sim = [sys.executable, "-m", "harness.kubelet_sim", "--map", str(map_file)]
    tables += "[delivery]\nkind = \"kubernetes\"\n"
    for verb in ("apply", "get", "delete"):
        tables += f"{verb}_command = {json.dumps(sim + [verb, '-f', '-'])}\n"
    _with_tables(Path(args[1]), cluster, tables)
    return tmp / "api-server"


def _mounted(directory: Path) -> tuple[bool, bytes]:
    """Whether ``module_info.json`` is the kubelet's symlink through ``..data``, and its bytes."""
    link = directory / "module_info.json"
    return link.is_symlink() and os.readlink(link) == "..data/module_info.json", link.read_bytes()


def test_kubernetes_delivery_under_load_then_rollback(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = description(cluster)
    args, bundle, model, version = prepare(cluster, tmp_path, broken=False)
    store = _kubernetes_plan(cluster, tmp_path, args, bundle)
    before = {role: asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) for role in NAMESPACES}
    repos = _repos(desc)
    new_bundle = (tmp_path / "out" / "module_info.json").read_bytes()
    assert rollout_main(args + ["--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert f"namespace rootleaf-canary: apply ConfigMap(s) bundle-{bundle}" in dry and not store.exists()
    assert f"namespace rootleaf partition {bundle}: a model-store Job per version of" in dry
    with under_load(desc, model, tmp_path, monkeypatch, capsys):
        assert rollout_main(args) == 0
        applied = {ns: [json.loads(p.read_text()) for p in sorted((store / ns).rglob("*.json"))] for ns in NAMESPACES.values()}
        for role in NAMESPACES:
            directory = Path(desc["roles"][role]["root"]["bundle_files"][bundle]).parent
            assert _mounted(directory) == (True, new_bundle)
            for leaf in desc["roles"][role]["leaves"]:
                if model in leaf["models"]:
                    assert version in asyncio.run(listed(leaf["target"], model))
        assert rollback_main(["--plan", args[1]]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "verdict PASS" in out and "rollout COMPLETED" in out and "rollback COMPLETED" in out
    assert f"rootleaf-canary/ConfigMap/bundle-{bundle}" in out and f"rootleaf/ConfigMap/bundle-{bundle}" in out
    for role, namespace in NAMESPACES.items():
        assert asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) == before[role]
        directory = Path(desc["roles"][role]["root"]["bundle_files"][bundle]).parent
        assert _mounted(directory)[0]  # restored through the same symlink swap
        for leaf in desc["roles"][role]["leaves"]:
            if model in leaf["models"]:
                assert version not in asyncio.run(listed(leaf["target"], model))
        kinds = sorted(o["kind"] for o in applied[namespace])
        assert kinds == ["ConfigMap", "Job"], kinds  # stages 1+2 (canary) or 4+5 (production)
        with capsys.disabled():
            print(f"\napplied in {namespace} (stages {'1-2' if role == 'canary' else '4-5'}):\n"
                  + json.dumps(applied[namespace], indent=1))
        jobs = sorted((store / namespace / "Job").glob("*.json"))
        logs = sorted(j.with_suffix(".log").read_text().strip() for j in jobs)  # what each Job's container said
        assert logs == [f"model-store: {model}/{version} delivered", f"model-store: {model}/{version} removed"]
    assert _repos(desc) == repos


def test_kubernetes_broken_canary_rolls_back_under_load(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    desc = description(cluster)
    args, bundle, model, version = prepare(cluster, tmp_path, broken=True)
    _kubernetes_plan(cluster, tmp_path, args, bundle)
    before = {role: asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) for role in NAMESPACES}
    repos = _repos(desc)
    with under_load(desc, model, tmp_path, monkeypatch, capsys):
        assert rollout_main(args) == 1
    out = capsys.readouterr().out
    assert "[3/5] automated canary analysis: FAILED" in out and "[4/5]" not in out
    assert "rolled back: every change reverted and verified" in out
    assert "reverted configmap rootleaf-canary/ConfigMap/bundle-" in out and "reverted job rootleaf-canary/" in out
    for role in NAMESPACES:
        assert asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) == before[role]
    assert _repos(desc) == repos


# ----------------------------------------------------------------------------- shadow traffic

@contextmanager
def _production_load(desc: dict[str, Any], model: str, tmp: Path) -> Iterator[None]:
    """User traffic on the production root only (the canary sees only what is mirrored);
    every request must succeed."""
    load = LoadProcess(desc["roles"]["production"]["root"]["target"], tmp / "load-production.jsonl", users=200,
                       items=1000, candidates=16, concurrency=4, deadline_ms=2000, models=(model,), rate=60.0)
    try:
        assert load.wait_for(lambda o: o.ok, 60.0) is not None
        yield
        stats = load.stop()
    finally:
        if load.summary is None:
            load.stop()
    failed = [o for o in load.outcomes if not o.ok]
    assert stats.lost == 0 and failed == [], failed[:3]


@pytest.mark.parametrize("broken", [False, True], ids=["good", "broken"])
def test_shadow_analysis_judges_mirrored_production_traffic(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: bool,
) -> None:
    """The production root mirrors every request to the canary root; stage 3 sends nothing of
    its own and judges the canary on those requests (a broken canary differs on them)."""
    canary_target = description(cluster)["roles"]["canary"]["root"]["target"]
    cluster.restart_root("production", {"shadow": {"target": canary_target, "sample": 1.0, "max_per_s": 500.0}})
    try:
        desc = description(cluster)
        args, bundle, model, version = prepare(cluster, tmp_path, broken=broken)
        plan = Path(args[1])
        plan.write_text(plan.read_text().replace("[analysis]\n", f'[analysis]\nmodels = ["{model}"]\n')
                        + "[shadow]\nmin_requests = 30\nwindow_s = 60\nmax_mismatch_rate = 0.01\n")
        before = {role: asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) for role in NAMESPACES}
        with _production_load(desc, model, tmp_path):
            assert rollout_main(args) == (1 if broken else 0)
            if not broken:
                assert rollback_main(["--plan", args[1]]) == 0
        out = capsys.readouterr().out
        print(out)
        assert "shadow_traffic" in out and f"shadow[{model}]" in out and "score[" not in out
        line = next(x for x in out.splitlines() if x.startswith(f"shadow[{model}]"))
        if broken:
            assert "FAIL" in line and "[3/5] automated canary analysis: FAILED" in out and "[4/5]" not in out
            assert "rolled back: every change reverted and verified" in out
        else:
            assert "PASS" in line and " 0 differ, 0 canary errors" in line and "rollout COMPLETED" in out
        metrics = (plan.parent / "state" / METRICS_FILE).read_text()
        assert f'verdict="{"FAIL" if broken else "PASS"}"}} 1.0' in metrics
        for role in NAMESPACES:
            assert asyncio.run(root_hash(desc["roles"][role]["root"]["target"], bundle)) == before[role]
    finally:
        cluster.restart_root("production", {})
