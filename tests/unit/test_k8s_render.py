"""The Kubernetes delivery's objects: valid against the Kubernetes schemas, and named, placed
and mounted as ``deploy/k8s`` expects, checked by the real ``kubectl kustomize``: each stage's
ConfigMaps are strategic-merge patches over the overlay (kustomize fails when a patch matches
no object there) and its Jobs are added as resources next to the overlay's claims."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.fleet_config import DeliveryConfig
from deploy.k8s_render import (bundle_configmap, bundle_configmap_name, from_manifest, job_name, model_job,
                               root_config_configmap, to_manifest)
from deploy.plan import K8S_BUNDLE_FILE, K8S_REPO_DIR

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
K8S_VERSION = "1.33.0"
BUNDLE = b'{"ads_ctr": [{"version": "2", "input_names": ["u_emb_0"], "output_names": ["ctr"]}]}\n'
CFG = DeliveryConfig(kind="kubernetes")


def _stage_objects(namespace: str, track: str, current: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    current = current or {"data": {"root.toml": "listen = \"0.0.0.0:50051\"\n", "catalog.json": "{}"}}
    return [
        bundle_configmap(namespace, "ads", BUNDLE, track=track, rollout_id="20261206T035000-77", build_id="b1"),
        root_config_configmap(namespace, current, {"catalog.json": b'{"features": []}'}, track=track,
                              rollout_id="20261206T035000-77", build_id="b1"),
        model_job("deliver", namespace, "ads", "ads_ctr", "2", "ab" * 32, nonce="r1", track=track,
                  rollout_id="20261206T035000-77", image=CFG.image, models_claim=CFG.models_claim,
                  source_claim=CFG.source_claim),
        model_job("remove", namespace, "ads", "ads_ctr", "2", "ab" * 32, nonce="r2", track=track,
                  rollout_id="rollback", image=CFG.image, models_claim=CFG.models_claim, source_claim=CFG.source_claim),
    ]


def test_stage_objects_validate_and_survive_the_manifest_format() -> None:
    objects = _stage_objects("rootleaf-canary", "canary")
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert from_manifest(to_manifest(objects)) == objects
    assert from_manifest(to_manifest(objects[:1])) == objects[:1]


def test_root_config_keeps_keys_the_package_does_not_carry() -> None:
    cm = _stage_objects("rootleaf", "production")[1]
    assert cm["data"]["root.toml"].startswith("listen") and cm["data"]["catalog.json"] == '{"features": []}'
    binary = root_config_configmap("rootleaf", None, {"blob.bin": b"\xff\x00"}, track="production", rollout_id="r",
                                   build_id="b")
    assert binary["binaryData"] == {"blob.bin": "/wA="} and binary["data"] == {}


def test_job_names_are_valid_distinct_and_bounded() -> None:
    names = {job_name(verb, "a_very_long_partition_name", "a_very_long_model_name_indeed", "1234567890", nonce)
             for verb in ("deliver", "remove") for nonce in ("r1", "r2")}
    assert len(names) == 4
    for name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def _kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed (./run test installs Debian's kubernetes-client when run as root)")
    done = subprocess.run([exe, "version", "--client", "-o", "json"], capture_output=True, timeout=60, check=False)
    info = json.loads(done.stdout or b"{}")
    version = str(info.get("kustomizeVersion", ""))
    match = re.match(r"v(\d+)\.(\d+)", version)
    if match is None or (int(match.group(1)), int(match.group(2))) < (4, 1):
        client = info.get("clientVersion", {}).get("gitVersion", "?")
        pytest.skip(f"kubectl {client} bundles kustomize {version or '(unreported, < v4.1)'}; deploy/k8s uses the "
                    "kustomization field `labels` (kustomize >= v4.1), so this kubectl cannot render it")
    return exe


@pytest.mark.parametrize(("overlay", "namespace"), [("canary", "rootleaf-canary"), ("production", "rootleaf")])
def test_kubectl_kustomize_places_a_stage_over_the_overlay(tmp_path: Path, overlay: str, namespace: str) -> None:
    kubectl = _kubectl()
    # What the namespace holds before the stage: the overlay as kubectl renders it.
    done = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    current = next(d for d in yaml.safe_load_all(done.stdout) if d and d["metadata"]["name"] == "root-config")
    objects = _stage_objects(namespace, overlay, current)
    for i, obj in enumerate(objects):
        (tmp_path / f"{i}.json").write_text(json.dumps(obj))
    base = os.path.relpath(K8S / "overlays" / overlay, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base, "2.json", "3.json"],
        "patches": [{"path": "0.json"}, {"path": "1.json"}],  # fails unless each names an overlay object
    }))
    done = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert all(d["metadata"].get("namespace") == namespace for d in docs if d["kind"] != "Namespace")
    bundle_cm = by[("ConfigMap", bundle_configmap_name("ads"))]
    assert bundle_cm["data"] == {"module_info.json": BUNDLE.decode()}
    assert bundle_cm["metadata"]["annotations"]["rootleaf.io/build-id"] == "b1"
    root_cfg = by[("ConfigMap", "root-config")]
    assert json.loads(root_cfg["data"]["catalog.json"]) == {"features": []}
    # The root mounts the patched ConfigMap as the directory its config names for the bundle.
    root_toml = tomllib.loads(root_cfg["data"]["root.toml"])
    assert root_toml["bundles"]["ads"] == K8S_BUNDLE_FILE.format(bundle="ads")
    pod = by[("Deployment", "root")]["spec"]["template"]["spec"]
    volume = next(v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == "bundle-ads")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume)
    assert mount["mountPath"] == str(Path(K8S_BUNDLE_FILE.format(bundle="ads")).parent)
    # The Jobs write where the ads leaves read: the same claim and subPath.
    leaf_pod = by[("Deployment", "leaf-ads")]["spec"]["template"]["spec"]
    leaf_claim = leaf_pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    leaf_mount = leaf_pod["containers"][0]["volumeMounts"][0]
    assert leaf_mount["mountPath"] == K8S_REPO_DIR.format(partition="ads") and leaf_mount["subPath"] == "ads"
    for obj in objects[2:]:
        job = by[("Job", obj["metadata"]["name"])]["spec"]["template"]["spec"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]}
        assert leaf_claim in claims and claims <= {n for k, n in by if k == "PersistentVolumeClaim"}
        models_mount = next(m for m in job["containers"][0]["volumeMounts"] if m["name"] == "models")
        assert models_mount["subPath"] == leaf_mount["subPath"]
        assert by[("PersistentVolumeClaim", leaf_claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
