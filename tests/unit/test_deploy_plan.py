"""Rollout plans: parsing, validation naming the bad field, rejection with nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.bundle import build_bundle
from deploy.delivery import tree_sha256
from deploy.plan import PlanError, load_plan
from deploy.rollout_cli import rollout_main


def _host_dirs(tmp: Path) -> dict[str, Path]:
    dirs = {}
    for role in ("canary", "production"):
        cfg = tmp / role / "root" / "bundles" / "ads"
        cfg.mkdir(parents=True)
        (cfg / "module_info.json").write_text('{"ctr": [{"version": "1", "input_names": ["a"], "output_names": ["s"]}]}\n')
        repo = tmp / role / "repo"
        (repo / "ctr" / "1").mkdir(parents=True)
        (repo / "ctr" / "1" / "module_info.json").write_text('{"input_names": ["a"], "output_names": ["s"]}\n')
        dirs[f"{role}_cfg"], dirs[f"{role}_repo"] = cfg, repo
    return dirs


def _plan_text(d: dict[str, Path], extra: str = "", analysis: str = "") -> str:
    roles = ""
    for role, port in (("canary", 7001), ("production", 7002)):
        roles += f"""
[[{role}.roots]]
target = "127.0.0.1:{port}"
bundle_file = "{d[role + '_cfg']}/module_info.json"
metrics_url = "http://127.0.0.1:{port + 100}/metrics"
[[{role}.leaves]]
target = "127.0.0.1:{port + 10}"
repo_dir = "{d[role + '_repo']}"
"""
    return f'[rollout]\nbundle = "ads"\nstate_dir = "state"\n{extra}\n{roles}\n[analysis]\n{analysis}\n'


def test_valid_explicit_plan(tmp_path: Path) -> None:
    d = _host_dirs(tmp_path)
    (tmp_path / "plan.toml").write_text(_plan_text(d, analysis="requests = 50\nmin_samples = 20"))
    plan = load_plan(tmp_path / "plan.toml")
    assert plan.bundle == "ads" and plan.state_dir == tmp_path / "state"
    assert plan.canary.roots[0].config_dir == d["canary_cfg"]
    assert plan.analysis.requests == 50 and plan.analysis.min_samples == 20


@pytest.mark.parametrize(
    ("extra", "analysis", "message"),
    [
        ("colour = 1", "", "unknown key"),
        ("", "alpha = 2.0", "analysis.alpha"),
        ("", "marginal_score = 95.0", "marginal_score"),
        ("", "on_marginal = 'maybe'", "on_marginal"),
        ("", "requests = 0", "analysis.requests"),
        ("", "user_ids = [5, 5]", "analysis.user_ids"),
        ("", "judge = 'x'", "unknown key"),
        ("verify_timeout_s = -1", "", "verify_timeout_s"),
    ],
)
def test_invalid_fields_rejected(tmp_path: Path, extra: str, analysis: str, message: str) -> None:
    (tmp_path / "plan.toml").write_text(_plan_text(_host_dirs(tmp_path), extra, analysis))
    with pytest.raises(PlanError, match=message):
        load_plan(tmp_path / "plan.toml")


def test_bad_targets_and_paths_rejected(tmp_path: Path) -> None:
    d = _host_dirs(tmp_path)
    text = _plan_text(d)
    for bad, message in (
        (text.replace("127.0.0.1:7001", "127.0.0.1"), "host:port"),
        (text.replace("127.0.0.1:7011", "127.0.0.1:99999"), "host:port"),
        (text.replace(str(d["canary_repo"]), str(tmp_path / "missing")), "repo_dir"),
        (text.replace("http://127.0.0.1:7101/metrics", "ftp://x"), "metrics_url"),
        (text.replace(str(d["production_repo"]), str(d["canary_repo"])), "also a canary"),
    ):
        (tmp_path / "plan.toml").write_text(bad)
        with pytest.raises(PlanError, match=message):
            load_plan(tmp_path / "plan.toml")


def test_invalid_plan_changes_nothing(tmp_path: Path) -> None:
    """Rejected before any change: root files, leaf repos and state dir are untouched."""
    d = _host_dirs(tmp_path)
    models = tmp_path / "models" / "ctr" / "2"
    models.mkdir(parents=True)
    (models / "module_info.json").write_text('{"input_names": ["a"], "output_names": ["s"]}\n')
    package = build_bundle("ads", tmp_path / "models", tmp_path / "out",
                           include_deployed=d["canary_cfg"] / "module_info.json").package.path
    before = {p: tree_sha256(p) for p in (tmp_path / "canary", tmp_path / "production")}
    cases = {
        "bad_threshold.toml": _plan_text(d, analysis="pass_score = 150.0"),
        "wrong_bundle.toml": _plan_text(d).replace('bundle = "ads"', 'bundle = "feed"'),
        "unknown_model.toml": _plan_text(d, analysis="models = ['nope']"),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        code = rollout_main(["--plan", str(tmp_path / name), "--package", str(package),
                             "--models", str(tmp_path / "models")])
        assert code == 2, name
    missing = tmp_path / "models_missing"
    missing.mkdir()
    (tmp_path / "ok.toml").write_text(_plan_text(d))
    assert rollout_main(["--plan", str(tmp_path / "ok.toml"), "--package", str(package), "--models", str(missing)]) == 2
    assert {p: tree_sha256(p) for p in before} == before
    assert not (tmp_path / "state").exists()


def test_dry_run_prints_changes_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _host_dirs(tmp_path)
    models = tmp_path / "models" / "ctr" / "2"
    models.mkdir(parents=True)
    (models / "module_info.json").write_text('{"input_names": ["a"], "output_names": ["s"]}\n')
    package = build_bundle("ads", tmp_path / "models", tmp_path / "out",
                           include_deployed=d["canary_cfg"] / "module_info.json").package.path
    (tmp_path / "plan.toml").write_text(_plan_text(d))
    before = tree_sha256(tmp_path / "canary")
    code = rollout_main(["--plan", str(tmp_path / "plan.toml"), "--package", str(package),
                         "--models", str(tmp_path / "models"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "+ ctr/2" in out and "[3/5] canary analysis" in out
    assert tree_sha256(tmp_path / "canary") == before and not (tmp_path / "state").exists()


def test_cluster_file_plan(tmp_path: Path) -> None:
    d = _host_dirs(tmp_path)
    cluster = {"schema": 1, "roles": {
        role: {"root": {"target": f"127.0.0.1:{port}", "metrics_url": f"http://127.0.0.1:{port + 1}/metrics",
                        "config_dir": str(d[role + "_cfg"].parent.parent),
                        "bundle_files": {"ads": str(d[role + "_cfg"] / "module_info.json")}},
               "leaves": [{"partition": "ads", "target": f"127.0.0.1:{port + 2}",
                           "repo_dir": str(d[role + "_repo"]), "models": ["ctr"]},
                          {"partition": "feed", "target": "127.0.0.1:1", "repo_dir": "/nonexistent"}]}
        for role, port in (("canary", 7000), ("production", 8000))}}
    (tmp_path / "cluster.json").write_text(json.dumps(cluster))
    (tmp_path / "plan.toml").write_text('[rollout]\nbundle = "ads"\nstate_dir = "s"\n[targets]\ncluster_file = "cluster.json"\n')
    plan = load_plan(tmp_path / "plan.toml")
    assert [lf.models for lf in plan.canary.leaves] == [("ctr",)]  # other partitions' leaves dropped
    assert plan.production.roots[0].target == "127.0.0.1:8000"
    (tmp_path / "plan.toml").write_text('[rollout]\nbundle = "news"\nstate_dir = "s"\n[targets]\ncluster_file = "cluster.json"\n')
    with pytest.raises(PlanError, match="no bundle 'news'"):
        load_plan(tmp_path / "plan.toml")


def test_plan_tls_section_resolves_paths_and_accepts_client_settings_only(tmp_path: Path) -> None:
    d = _host_dirs(tmp_path)
    text = _plan_text(d) + '[tls]\nca_file = "certs/ca.pem"\ncert_file = "certs/me.pem"\nkey_file = "certs/me.key"\n'
    (tmp_path / "plan.toml").write_text(text)
    plan = load_plan(tmp_path / "plan.toml")
    assert (plan.tls.ca_file, plan.tls.cert_file) == (str(tmp_path / "certs/ca.pem"), str(tmp_path / "certs/me.pem"))
    for bad, message in (('client_ca_file = "ca.pem"', "tls.client_ca_file is a server setting"), ('colour = "x"', "unknown keys")):
        (tmp_path / "plan.toml").write_text(_plan_text(d) + f"[tls]\n{bad}\n")
        with pytest.raises(PlanError, match=message):
            load_plan(tmp_path / "plan.toml")


def test_plan_takes_tls_from_the_cluster_description(tmp_path: Path) -> None:
    d = _host_dirs(tmp_path)
    roles = {}
    for role, port in (("canary", 7001), ("production", 7002)):
        roles[role] = {
            "root": {"target": f"127.0.0.1:{port}", "bundle_files": {"ads": str(d[f"{role}_cfg"] / "module_info.json")},
                     "config_dir": str(d[f"{role}_cfg"]), "metrics_url": f"http://127.0.0.1:{port + 100}/metrics"},
            "leaves": [{"partition": "ads", "target": f"127.0.0.1:{port + 10}", "repo_dir": str(d[f"{role}_repo"]),
                        "models": ["ctr"]}],
        }
    cluster = {"roles": roles, "tls": {"ca_file": "/pki/ca.pem", "cert_file": "/pki/c.pem", "key_file": "/pki/c.key"}}
    (tmp_path / "cluster.json").write_text(json.dumps(cluster))
    (tmp_path / "plan.toml").write_text('[rollout]\nbundle = "ads"\nstate_dir = "s"\n[targets]\ncluster_file = "cluster.json"\n')
    plan = load_plan(tmp_path / "plan.toml")
    assert (plan.tls.ca_file, plan.tls.cert_file, plan.tls.key_file) == ("/pki/ca.pem", "/pki/c.pem", "/pki/c.key")
    cluster["tls"] = {}
    (tmp_path / "cluster.json").write_text(json.dumps(cluster))
    assert not load_plan(tmp_path / "plan.toml").tls.enabled
