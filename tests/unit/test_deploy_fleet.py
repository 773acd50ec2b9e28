"""The plan's fleet settings ([delivery], [waves], [shadow], Kubernetes targets), how
production splits into waves, the rollout's metrics file, and the kubelet stand-in's
atomic ConfigMap writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.fleet_config import DeliveryConfig, FleetConfigError, ShadowAnalysisConfig, WavesConfig
from deploy.plan import K8S_BUNDLE_FILE, PlanError, load_plan
from deploy.rollout_metrics import render
from deploy.waves import plan_waves
from harness.kubelet_sim import atomic_write_configmap


def _k8s_plan(roots: dict[str, list[str]], leaves: dict[str, list[tuple[str, str]]], extra: str = "") -> str:
    text = '[rollout]\nbundle = "ads"\nstate_dir = "state"\n[delivery]\nkind = "kubernetes"\n'
    port = 7000
    for role in ("canary", "production"):
        for ns in roots[role]:
            port += 1
            text += (f'[[{role}.roots]]\nnamespace = "{ns}"\ntarget = "127.0.0.1:{port}"\n'
                     f'metrics_url = "http://127.0.0.1:{port}/metrics"\n')
        for ns, partition in leaves[role]:
            port += 1
            text += (f'[[{role}.leaves]]\nnamespace = "{ns}"\npartition = "{partition}"\nmodels = ["ctr"]\n'
                     f'target = "127.0.0.1:{port}"\n')
    return text + extra


def test_kubernetes_targets_take_the_pod_paths_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(_k8s_plan({"canary": ["rl-canary"], "production": ["rl"]},
                                               {"canary": [("rl-canary", "ads")], "production": [("rl", "ads")]}))
    plan = load_plan(tmp_path / "p.toml")
    root, leaf = plan.production.roots[0], plan.production.leaves[0]
    assert root.namespace == "rl" and str(root.bundle_file) == K8S_BUNDLE_FILE.format(bundle="ads")
    assert leaf.partition == "ads" and str(leaf.repo_dir) == "/models/ads"
    assert plan.delivery == DeliveryConfig(kind="kubernetes") and plan.delivery.kubernetes
    assert plan.waves is None and plan.shadow is None
    assert len(plan_waves(plan)) == 1


@pytest.mark.parametrize(("extra", "message"), [
    ('apply_command = "kubectl apply -f - --context prod"\n', None),
    ('apply_command = []\n', "delivery.apply_command"),
    ('image = ""\n', "delivery.image"),
    ('colour = 1\n', "unknown key"),
])
def test_delivery_table(tmp_path: Path, extra: str, message: str | None) -> None:
    text = _k8s_plan({"canary": ["a"], "production": ["b"]}, {"canary": [], "production": []})
    (tmp_path / "p.toml").write_text(text.replace('kind = "kubernetes"\n', 'kind = "kubernetes"\n' + extra))
    if message is None:
        assert load_plan(tmp_path / "p.toml").delivery.apply_command == ("kubectl", "apply", "-f", "-", "--context", "prod")
    else:
        with pytest.raises(PlanError, match=message):
            load_plan(tmp_path / "p.toml")


def test_kind_and_namespaces_must_agree(tmp_path: Path) -> None:
    text = _k8s_plan({"canary": ["a"], "production": ["b"]}, {"canary": [], "production": []})
    (tmp_path / "p.toml").write_text(text.replace('kind = "kubernetes"', 'kind = "local"'))
    with pytest.raises(PlanError, match="namespace is only for delivery.kind 'kubernetes'"):
        load_plan(tmp_path / "p.toml")
    (tmp_path / "p.toml").write_text(text.replace('namespace = "a"', 'namespace = "Not_A_Name"'))
    with pytest.raises(PlanError, match="namespace must be a Kubernetes namespace name"):
        load_plan(tmp_path / "p.toml")
    (tmp_path / "p.toml").write_text(text.replace('namespace = "b"', 'namespace = "a"'))
    with pytest.raises(PlanError, match="is also a canary's"):
        load_plan(tmp_path / "p.toml")


def test_waves_split_in_plan_order_and_keep_shared_objects_together(tmp_path: Path) -> None:
    roots = {"canary": ["c"], "production": ["w1", "w2", "w2"]}
    leaves = {"canary": [("c", "ads")], "production": [("w1", "ads"), ("w2", "ads"), ("w2", "ads")]}
    waves = "[waves]\nroots = [1]\nleaves = [1]\nbake_s = 0\n"
    (tmp_path / "p.toml").write_text(_k8s_plan(roots, leaves, waves))
    split = plan_waves(load_plan(tmp_path / "p.toml"))
    assert [(w.label, [r.namespace for r in w.roots], [lf.namespace for lf in w.leaves]) for w in split] == [
        ("wave 1/2", ["w1"], ["w1"]), ("wave 2/2", ["w2", "w2"], ["w2", "w2"])]
    (tmp_path / "p.toml").write_text(_k8s_plan(roots, leaves, waves.replace("roots = [1]", "roots = [2]")))
    with pytest.raises(PlanError, match="root w2 is one Kubernetes object shared by waves 1 and 2"):
        plan_waves(load_plan(tmp_path / "p.toml"))
    (tmp_path / "p.toml").write_text(_k8s_plan(roots, leaves, waves.replace("roots = [1]", "roots = [3]")))
    split = plan_waves(load_plan(tmp_path / "p.toml"))  # an empty last wave is dropped
    assert [(len(w.roots), len(w.leaves)) for w in split] == [(3, 1), (0, 2)]


@pytest.mark.parametrize(("cls", "values", "message"), [
    (WavesConfig, {"roots": (1, 1), "leaves": (1,)}, "one entry per wave"),
    (WavesConfig, {"roots": (-1,)}, "waves.roots"),
    (WavesConfig, {"max_error_rate": 2.0}, "waves.max_error_rate"),
    (WavesConfig, {"probe_requests": -1}, "waves.probe_requests"),
    (ShadowAnalysisConfig, {"min_requests": 0}, "shadow.min_requests"),
    (ShadowAnalysisConfig, {"window_s": 0}, "shadow.window_s"),
    (DeliveryConfig, {"kind": "ftp"}, "delivery.kind"),
])
def test_fleet_settings_name_the_bad_field(cls: type, values: dict[str, object], message: str) -> None:
    with pytest.raises(FleetConfigError, match=message):
        cls(**values)


def test_rollout_metrics_carry_stage_status_verdict_and_score() -> None:
    state = {"id": "r1", "bundle": "ads", "stage": 3, "status": "failed",
             "changes": [{"reverted": False}, {"reverted": True}],
             "analysis": {"score": 42.5, "verdict": "FAIL"}}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(render(state).decode()) for s in family.samples}
    base = (("bundle", "ads"), ("rollout", "r1"))
    assert samples[("rootleaf_rollout_stage", base)] == 3.0
    assert samples[("rootleaf_rollout_changes", base)] == 1.0
    assert samples[("rootleaf_rollout_analysis_score", base)] == 42.5
    assert samples[("rootleaf_rollout_status", tuple(sorted(base + (("status", "failed"),))))] == 1.0
    assert samples[("rootleaf_rollout_status", tuple(sorted(base + (("status", "completed"),))))] == 0.0
    assert samples[("rootleaf_rollout_analysis_verdict", tuple(sorted(base + (("verdict", "FAIL"),))))] == 1.0
    names = {s.name for f in text_string_to_metric_families(render({"id": "r2"}).decode()) for s in f.samples}
    assert "rootleaf_rollout_stage" in names and "rootleaf_rollout_analysis_score" not in names  # no analysis yet


def test_kubelet_writer_swaps_data_and_replaces_plain_files(tmp_path: Path) -> None:
    (tmp_path / "module_info.json").write_text("plain")  # what a directory held before the first apply
    (tmp_path / "extra.txt").write_text("not ours")
    atomic_write_configmap(tmp_path, {"module_info.json": b"one", "other": b"x"})
    first = os.readlink(tmp_path / "..data")
    assert os.readlink(tmp_path / "module_info.json") == "..data/module_info.json"
    assert (tmp_path / "module_info.json").read_bytes() == b"one" and (tmp_path / "other").read_bytes() == b"x"
    atomic_write_configmap(tmp_path, {"module_info.json": b"two"})
    assert os.readlink(tmp_path / "..data") != first and not (tmp_path / first).exists()
    assert (tmp_path / "module_info.json").read_bytes() == b"two" and not (tmp_path / "other").exists()
    assert (tmp_path / "extra.txt").read_text() == "not ours"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("..")) == sorted(["..data", os.readlink(tmp_path / "..data")])
