"""Hourly bundle rollouts on a real local cluster (canary + production roots and leaves as
processes; leaves keep only their latest version, as in production):

- 24 consecutive rollouts of one bundle, each with a new version of ``m_a`` and a package built
  from what the fleet serves (``--served-from``): every rollout completes, the bundle file stays
  bounded (retention), no request of the continuous load on both roots fails, and the
  unserved-versions gauge is back to 0 at the end;
- the rollout-gap check refuses a package that drops served versions (exit 2, naming each);
- the canary analysis rolls back (with its reason printed) a package whose bundle the canary
  roots refuse, and one that drops a served version under ``--allow-gap``;
- the kill switch turns trimming off on a running root, and back on.

One cluster serves every test, in order; each failed rollout rolls itself back.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from contract.versions import latest_version
from deploy import rollout_cli
from deploy.bundle import build_bundle
from deploy.bundle_cli import main as bundle_main
from deploy.delivery import atomic_write, tree_sha256
from deploy.metrics_scrape import scrape
from harness.local_cluster import KILL_SWITCH_FILE, LocalCluster
from harness.soak_load import LoadProcess
from tests.waiting import eventually
from deploy.rollout_cli import rollout_main
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning"),
]

BUNDLE, MODEL, OTHER = "alpha", "m_a", "m_b"  # the ci workload's partition alpha hosts m_a and m_b
ROLLOUTS = 24
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    leaf_args = ("--torch-threads", "1", "--versions", "latest")
    with LocalCluster("ci", tmp_path_factory.mktemp("cluster"), canary=True, leaf_args=leaf_args) as c:
        yield c


def _desc(cluster: LocalCluster) -> dict[str, Any]:
    return json.loads(cluster.cluster_json.read_text())


def _deployed_versions(cluster: LocalCluster, model: str) -> list[str]:
    repo = Path(_desc(cluster)["roles"]["production"]["leaves"][0]["repo_dir"])
    return [p.name for p in (repo / model).iterdir() if not p.name.startswith(".")]


def _new_version(cluster: LocalCluster, directory: Path) -> str:
    """A copy of m_a's latest version (a retrain that converged to the same weights) as the
    next version, in ``directory``."""
    latest = latest_version(_deployed_versions(cluster, MODEL))
    assert latest is not None
    source = Path(_desc(cluster)["roles"]["production"]["leaves"][0]["repo_dir"]) / MODEL / latest
    version = str(int(latest) + 1)
    shutil.copytree(source, directory / MODEL / version)
    return version


def _plan(cluster: LocalCluster, path: Path, requests: int = 10) -> Path:
    path.write_text(
        f'[rollout]\nbundle = "{BUNDLE}"\nstate_dir = "state"\nverify_timeout_s = 30\n'
        f'[targets]\ncluster_file = "{cluster.cluster_json}"\n'
        f"[analysis]\nrequests = {requests}\nwarmup_requests = 2\ncandidates_per_request = 16\nmin_samples = 100\n"
        "user_ids = [0, 200]\nitem_ids = [0, 1000]\n"
        # Two shared cores make loopback latency noise, not signal: judge it loosely here.
        "max_p50_ratio = 10.0\nmax_p99_ratio = 10.0\nlatency_slack_ms = 250.0\n"
    )
    return path


def _unserved(url: str) -> float:
    return sum(v for lab, v in scrape(url).select("rootleaf_root_unserved_versions", partition=BUNDLE).items())


def test_24_hourly_rollouts_stay_bounded_and_lose_nothing(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    desc = _desc(cluster)
    lines: list[tuple[float, str]] = []

    def emit(line: str) -> None:
        lines.append((time.monotonic(), line))

    monkeypatch.setattr(rollout_cli, "_emit", emit)
    plan = _plan(cluster, tmp_path / "plan.toml")
    loads = {
        role: LoadProcess(desc["roles"][role]["root"]["target"], tmp_path / f"load-{role}.jsonl", users=200,
                          items=1000, candidates=16, concurrency=4, deadline_ms=2000, models=(MODEL,), rate=40.0)
        for role in ("production", "canary")
    }
    sizes: list[int] = []
    shipped: list[tuple[str, ...]] = []
    try:
        for load in loads.values():
            assert load.wait_for(lambda o: o.ok, 60.0) is not None
        started = time.monotonic()
        for n in range(ROLLOUTS):
            new = tmp_path / f"new-{n}"
            version = _new_version(cluster, new)
            result = build_bundle(BUNDLE, new, tmp_path / f"out-{n}", models=[MODEL], served_from=cluster.cluster_json)
            sizes.append(result.bundle_file.stat().st_size)
            shipped.append(result.models[MODEL])
            args = ["--plan", str(plan), "--package", str(result.package.path), "--models", str(new)]
            code = rollout_main(args)
            assert code == 0, "\n".join(line for _, line in lines[-30:])
            assert version in result.models[MODEL]
        ended = time.monotonic()
        for role in ("production", "canary"):
            url = desc["roles"][role]["root"]["metrics_url"]
            eventually(lambda: _unserved(url) == 0, f"{role} root's unserved versions back to 0", WAIT_S)
        stats = {role: load.stop() for role, load in loads.items()}
    finally:
        for load in loads.values():
            if load.summary is None:
                load.stop()
    completed = [line for _, line in lines if line.startswith("rollout COMPLETED")]
    assert len(completed) == ROLLOUTS
    # Retention: each package lists m_a's served version and the pending one, nothing older.
    assert all(len(versions) <= 2 for versions in shipped), shipped
    assert max(sizes) <= sizes[0] + 64, sizes  # bounded: a few bytes of longer version names at most
    marks = [(t, line.split(":")[0]) for t, line in lines if line.startswith("[") and ": OK" in line]
    per_stage: dict[str, int] = {}
    for role, load in loads.items():
        during = sorted(o.started for o in load.outcomes if started <= o.started < ended)
        previous = started
        for t, stage in marks:
            per_stage[stage] = per_stage.get(stage, 0) + sum(1 for s in during if previous <= s < t)
            previous = t
        failed = [o for o in load.outcomes if not o.ok]
        assert stats[role].lost == 0 and failed == [], failed[:3]
    with capsys.disabled():
        print(f"\n{ROLLOUTS} rollouts in {ended - started:.1f} s; bundle bytes per rollout: {sizes}")
        print(f"m_a versions per package: {[','.join(v) for v in shipped]}")
        print(f"requests per stage (both roots, all rollouts): {per_stage}")
        for role in loads:
            print(f"{role} root: {stats[role].sent} sent, failed 0, lost {stats[role].lost}")


def test_the_gap_check_refuses_a_package_that_drops_served_versions(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new"
    _new_version(cluster, new)
    package = build_bundle(BUNDLE, new, tmp_path / "out", models=[MODEL]).package.path  # no deployed versions
    served = latest_version(_deployed_versions(cluster, MODEL))
    before = tree_sha256(Path(_desc(cluster)["roles"]["canary"]["root"]["bundle_files"][BUNDLE]).parent)
    code = rollout_main(["--plan", str(_plan(cluster, tmp_path / "plan.toml")), "--package", str(package),
                         "--models", str(new)])
    err = capsys.readouterr().err
    assert code == 2
    assert "rollout gap: the package does not list" in err
    assert f"{MODEL}/{served} (served by" in err and f"{OTHER}/1 (served by" in err
    assert tree_sha256(Path(_desc(cluster)["roles"]["canary"]["root"]["bundle_files"][BUNDLE]).parent) == before


def _rolled_back_by_analysis(out: str, reason: str) -> None:
    assert "[1/5] root configs -> canary: OK" in out and "[2/5] model configs -> canary: OK" in out
    assert "[3/5] automated canary analysis: FAILED" in out and reason in out, out
    assert "[4/5]" not in out and "rolled back: every change reverted and verified" in out


def test_the_analysis_rolls_back_a_package_that_drops_a_served_version_under_allow_gap(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new"
    _new_version(cluster, new)
    package = build_bundle(BUNDLE, new, tmp_path / "out", models=[MODEL]).package.path  # drops m_b/1
    args = ["--plan", str(_plan(cluster, tmp_path / "plan.toml", requests=20)), "--package", str(package),
            "--models", str(new), "--allow-gap"]
    assert rollout_main(args) == 1
    out = capsys.readouterr().out
    assert "WARNING --allow-gap: the package does not list" in out
    _rolled_back_by_analysis(out, f"trimming is off for {OTHER} on canary root")
    with capsys.disabled():
        print("\n".join(line for line in out.splitlines() if "FAILED" in line or "WARNING" in line))


def test_the_analysis_rolls_back_a_bundle_the_canary_roots_refuse(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployed = Path(_desc(cluster)["roles"]["canary"]["root"]["bundle_files"][BUNDLE])
    new = tmp_path / "new"
    _new_version(cluster, new)
    # Plus m_a 1 (on every leaf already, not delivered again): a larger bundle than the deployed one.
    repo = Path(_desc(cluster)["roles"]["production"]["leaves"][0]["repo_dir"])
    shutil.copytree(repo / MODEL / "1", new / MODEL / "1")
    out = tmp_path / "out"
    assert bundle_main(["build", "--name", BUNDLE, "--repo", str(new), "--served-from", str(cluster.cluster_json),
                        "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{MODEL}: versions 1, " in printed and f"{OTHER}: versions 1" in printed
    (package,) = out.glob(f"{BUNDLE}-*.rootcfg.tar.gz")
    size, limit = (out / "module_info.json").stat().st_size, deployed.stat().st_size
    assert size > limit
    # The canary root accepts files up to the deployed bundle's size: it refuses the new one.
    cluster.restart_root("canary", {"bundle_max_bytes": limit})
    try:
        args = ["--plan", str(_plan(cluster, tmp_path / "plan.toml", requests=20)),
                "--package", str(package), "--models", str(new)]
        assert rollout_main(args) == 1
        out = capsys.readouterr().out
        assert "REFUSED it" in out
        _rolled_back_by_analysis(out, "refused bundle alpha")
        with capsys.disabled():
            print("\n".join(line for line in out.splitlines() if "FAILED" in line or "REFUSED" in line))
    finally:
        cluster.restart_root("canary", {})


def test_the_kill_switch_turns_trimming_off_on_a_running_root(cluster: LocalCluster) -> None:
    root = _desc(cluster)["roles"]["canary"]["root"]
    switch = Path(root["bundle_files"][BUNDLE]).parent.parent / KILL_SWITCH_FILE

    def off(model: str) -> float:
        return scrape(root["metrics_url"]).total("rootleaf_trimmer_trimming_off", model=model)

    def untrimmed_after_one_request() -> dict[str, float]:
        with grpc.insecure_channel(root["target"]) as channel:
            reply = root_pb2_grpc.RootStub(channel).Score(root_pb2.ScoreRequest(
                request_id="kill-switch", user_id=1, candidate_ids=list(range(16)),
                models=[root_pb2.ModelRef(name=MODEL), root_pb2.ModelRef(name=OTHER)]), timeout=10)
        assert all(r.error_code == 0 for r in reply.results)
        return {m: scrape(root["metrics_url"]).total("rootleaf_root_model_requests_total", model=m, decision="untrimmed")
                for m in (MODEL, OTHER)}

    before = untrimmed_after_one_request()
    try:
        atomic_write(switch, json.dumps({"trimming_off": [MODEL]}).encode())
        eventually(lambda: off(MODEL) == 1, "the kill switch on", WAIT_S)
        assert f"trimming is OFF for ['{MODEL}']" in Path(root["log"]).read_text()
        during = untrimmed_after_one_request()
        assert during == {MODEL: before[MODEL] + 1, OTHER: before[OTHER]}  # one model only, no restart
    finally:
        switch.unlink(missing_ok=True)
    eventually(lambda: off(MODEL) == 0, "the kill switch off again", WAIT_S)
    assert untrimmed_after_one_request() == during
    assert "trimming is back ON for every model" in Path(root["log"]).read_text()
