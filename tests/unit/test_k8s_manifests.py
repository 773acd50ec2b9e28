"""deploy/k8s: every manifest, base and rendered overlays, validated offline against the
Kubernetes JSON schemas shipped in kubernetes-validate (strict: unknown fields fail); the
custom resources (PrometheusRule, KEDA ScaledObject) against the structural schemas of
``tests/unit/k8s_crds.py``.

Overlays are rendered with the subset of kustomize they use (resources, namespace, labels,
strategic-merge patches by kind and name, null deleting a field); anything else in a kustomization fails the test,
so the renderer cannot silently drift from what the files ask for.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from contract.bundle_file import parse_bundle
from tests.unit.k8s_crds import is_custom, validate_custom

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
K8S_VERSION = "1.33.0"
_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "patches"}
_CLUSTER_SCOPED = {"Namespace"}


def _load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize applies it to these patches: maps merge, lists of named
    maps merge by name, a null value deletes the key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        by_name = {x["name"]: x for x in base}
        for x in patch:
            by_name[x["name"]] = _merge(by_name[x["name"]], x) if x["name"] in by_name else x
        return list(by_name.values())
    return copy.deepcopy(patch)


def render(directory: Path) -> list[dict[str, Any]]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - _KUSTOMIZE_KEYS
    assert not unknown, f"{directory}: kustomization uses {unknown}, which the test renderer lacks"
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = directory / res
        docs += render(path) if path.is_dir() else _load_docs(path)
    for patch in kust.get("patches", []):
        for p in _load_docs(directory / patch["path"]):
            hits = [i for i, d in enumerate(docs) if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"]]
            assert len(hits) == 1, f"patch {p['kind']}/{p['metadata']['name']} matches {len(hits)} resources"
            docs[hits[0]] = _merge(docs[hits[0]], p)
    for entry in kust.get("labels", []):
        assert entry.get("includeSelectors") is False, "selector labels are immutable: keep includeSelectors false"
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and d["kind"] == "Deployment":
                d["spec"]["template"]["metadata"].setdefault("labels", {}).update(entry["pairs"])
    if "namespace" in kust:
        for d in docs:
            if d["kind"] not in _CLUSTER_SCOPED:
                d["metadata"]["namespace"] = kust["namespace"]
    return docs


TREES = {"base": K8S / "base", "canary": K8S / "overlays" / "canary", "production": K8S / "overlays" / "production"}


def validate(doc: dict[str, Any]) -> None:
    if is_custom(doc):
        validate_custom(doc, K8S_VERSION)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_resource_validates_against_kubernetes_schemas(tree: str) -> None:
    docs = render(TREES[tree])
    assert docs
    for doc in docs:
        validate(doc)


def _referenced(directory: Path) -> set[Path]:
    """Every file a kustomization tree reads: itself, its resources and its patches."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    used = {(directory / "kustomization.yaml").resolve()}
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        used |= _referenced(path) if path.is_dir() else {path}
    used |= {(directory / patch["path"]).resolve() for patch in kust.get("patches", [])}
    return used


def test_every_manifest_file_is_used_and_validates() -> None:
    used = set().union(*(_referenced(tree) for tree in TREES.values()))
    files = {path.resolve() for path in K8S.rglob("*.yaml")}
    assert files - used == set(), "manifest files no kustomization reads"
    for path in sorted(files):
        for doc in _load_docs(path):
            if doc.get("kind") == "Kustomization":
                continue
            # Patches are partial objects: they must still name a known kind and fit its schema
            # once merged (checked above); full objects validate on their own.
            if path.parent.name in ("canary", "production") and path.name not in ("namespace.yaml", "autoscaling.yaml"):
                continue
            validate(doc)


def _by(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize(("overlay", "namespace"), [("canary", "rootleaf-canary"), ("production", "rootleaf")])
def test_topology(overlay: str, namespace: str) -> None:
    docs = render(TREES[overlay])
    deployments, services, configmaps = _by(docs, "Deployment"), _by(docs, "Service"), _by(docs, "ConfigMap")
    assert all(d["metadata"].get("namespace") == namespace for d in docs if d["kind"] != "Namespace")
    root_cfg = tomllib.loads(configmaps["root-config"]["data"]["root.toml"])
    root_pod = deployments["root"]["spec"]["template"]
    mounts = {m["name"]: m["mountPath"] for m in root_pod["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in root_pod["spec"]["volumes"]}
    for partition, part_cfg in root_cfg["partitions"].items():
        leaf = deployments[f"leaf-{partition}"]
        container = leaf["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "rootleaf.v1.Leaf"}
        assert leaf["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        service = services[f"leaf-{partition}"]
        assert service["spec"]["clusterIP"] == "None"  # headless: DNS returns every pod
        assert service["spec"]["selector"].items() <= leaf["spec"]["template"]["metadata"]["labels"].items()
        assert part_cfg["targets"] == [f"dns:///leaf-{partition}.{namespace}.svc.cluster.local:50051"]
        # The bundle file is a ConfigMap mounted (as a directory) where the root config says.
        bundle_path = Path(root_cfg["bundles"][partition])
        volume = next(n for n, p in mounts.items() if p == str(bundle_path.parent))
        cm_name = volumes[volume]["configMap"]["name"]
        parse_bundle(configmaps[cm_name]["data"][bundle_path.name].encode())
    assert deployments["root"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["service"] == "rootleaf.v1.Root"
    labels = {d["metadata"]["labels"]["rootleaf.io/track"] for d in docs if d["kind"] != "Namespace"}
    assert labels == {overlay}


@pytest.mark.parametrize("tree", sorted(TREES))
def test_rendered_resources_are_unique_and_survive_json(tree: str) -> None:
    """What ``kubectl apply`` receives: one object per kind/namespace/name (a duplicate would
    silently replace another), and YAML values that mean the same in JSON (no dates, no
    non-string keys)."""
    docs = render(TREES[tree])
    identities = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(identities) == len(set(identities)), sorted(i for i in identities if identities.count(i) > 1)
    assert json.loads(json.dumps(docs)) == docs


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", ["canary", "production"])
def test_only_roots_and_the_scraper_reach_leaves(overlay: str) -> None:
    docs = render(TREES[overlay])
    deployments, policies = _by(docs, "Deployment"), _by(docs, "NetworkPolicy")
    root_labels = deployments["root"]["spec"]["template"]["metadata"]["labels"]
    leaves = [d for name, d in deployments.items() if name.startswith("leaf-")]
    assert leaves
    for leaf in leaves:
        labels = leaf["spec"]["template"]["metadata"]["labels"]
        ports = {p["name"]: p["containerPort"] for p in leaf["spec"]["template"]["spec"]["containers"][0]["ports"]}
        applying = [p for p in policies.values() if _selects(p["spec"]["podSelector"], labels)]
        assert applying, f"{leaf['metadata']['name']}: no NetworkPolicy selects its pods"
        for policy in applying:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", []):
                # Every rule names its peers (no "from" = everyone) and its ports.
                assert rule.get("from") and rule.get("ports"), f"{policy['metadata']['name']}: open rule {rule}"
                rule_ports = {p["port"] for p in rule["ports"]}
                for peer in rule["from"]:
                    assert "ipBlock" not in peer
                    if "namespaceSelector" in peer:  # the scraper: metrics only
                        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
                        assert rule_ports == {ports["metrics"]}
                    else:  # same namespace: roots only, gRPC only
                        assert _selects(peer["podSelector"], root_labels)
                        assert rule_ports == {ports["grpc"]}


def test_root_probes_follow_the_process_not_the_partitions() -> None:
    root = _by(render(TREES["production"]), "Deployment")["root"]["spec"]["template"]["spec"]["containers"][0]
    assert root["readinessProbe"]["grpc"] == {"port": 50051, "service": "rootleaf.v1.Root"}
    assert root["livenessProbe"]["grpc"] == {"port": 50051}
    assert root["startupProbe"]["grpc"]["service"] == "rootleaf.v1.Root"


def test_custom_resource_schemas_refuse_what_their_crds_refuse() -> None:
    """The structural checks can fail: an unknown field, a number where KEDA wants a string,
    a bad duration, a rule both record and alert, an unknown relabel action, a bad selector."""
    docs = render(TREES["production"])
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    bad_docs = []
    for path, value in [
        (("spec", "minReplicas"), 2),
        (("spec", "triggers", 0, "metadata", "threshold"), 4),
        (("spec", "triggers", 0, "metricType"), "Average"),
        (("metadata", "labelz"), {"a": "b"}),
        (("spec", "advanced", "horizontalPodAutoscalerConfig", "behavior", "scaleDown", "stabilizationWindowSecond"), 1),
    ]:
        bad = copy.deepcopy(scaled)
        _set(bad, path, value)
        bad_docs.append(bad)
    for path, value in [
        (("spec", "groups", 1, "rules", 0, "for"), "5 minutes"),
        (("spec", "groups", 0, "rules", 0, "alert"), "BothRecordAndAlert"),
        (("spec", "groups", 0, "evaluation_interval"), "1m"),
    ]:
        bad = copy.deepcopy(rule)
        _set(bad, path, value)
        bad_docs.append(bad)
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    for path, value in [
        (("spec", "podMetricsEndpoints", 0, "relabelings", 0, "action"), "rename"),
        (("spec", "selector", "matchExpressions", 0, "operator"), 7),
        (("spec", "podMetricsEndpoints", 0, "targetPort"), "metrics"),
    ]:
        bad = copy.deepcopy(monitor)
        _set(bad, path, value)
        bad_docs.append(bad)
    for bad in bad_docs:
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate(bad)


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def test_production_autoscales_roots_on_cpu_and_each_leaf_on_its_own_metrics() -> None:
    docs = render(TREES["production"])
    deployments = _by(docs, "Deployment")
    hpas, scaled = _by(docs, "HorizontalPodAutoscaler"), _by(docs, "ScaledObject")
    # The autoscalers own the replica counts: apply must not reset them.
    assert all("replicas" not in d["spec"] for d in deployments.values())
    root_hpa = hpas["root"]
    assert root_hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "root"}
    assert [m["resource"]["name"] for m in root_hpa["spec"]["metrics"]] == ["cpu"]
    leaves = {name: d for name, d in deployments.items() if name.startswith("leaf-")}
    assert set(scaled) == set(leaves)  # one ScaledObject per leaf Deployment, none for the root
    assert not set(hpas) & set(leaves)  # KEDA owns the leaves' HPAs
    for name, leaf in leaves.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        partition = leaf["spec"]["template"]["metadata"]["labels"]["rootleaf.io/partition"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus"
            query = trigger["metadata"]["query"]
            # Each selector names this overlay's namespace and this Deployment's partition.
            selectors = query.count("{")
            assert selectors and query.count('namespace="rootleaf"') == selectors == query.count(f'partition="{partition}"')


def test_canary_keeps_fixed_replicas() -> None:
    docs = render(TREES["canary"])
    assert not [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert all(d["spec"]["replicas"] == 1 for d in _by(docs, "Deployment").values())


def test_pod_monitor_scrapes_every_pod_on_its_metrics_port() -> None:
    docs = render(TREES["production"])
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")["spec"]
    (expression,) = monitor["selector"]["matchExpressions"]
    port = monitor["podMetricsEndpoints"][0]["port"]
    for deployment in _by(docs, "Deployment").values():
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert expression["operator"] == "In" and labels[expression["key"]] in expression["values"]
        assert labels[monitor["jobLabel"]] in ("rootleaf-root", "rootleaf-leaf")  # the rules' job values
        container = pod["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in container["ports"]}[port] == int(pod["metadata"]["annotations"]["prometheus.io/port"])
