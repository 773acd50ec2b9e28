"""Kubernetes objects of one rollout stage, named and shaped as in ``deploy/k8s``.

Root configs (stages 1 and 4) become ConfigMaps: ``bundle-<bundle>`` holding the package's
bundle file under ``module_info.json`` (what ``deploy/k8s/base/root.yaml`` mounts as a
directory and the trimmer watches), and ``root-config`` with the package's other configs
merged over what the namespace holds. Model-store changes (stages 2 and 5) become Jobs that
run ``rootleaf model-store`` with the model store claim mounted at the partition's subPath
(as the leaf pods mount it) and the staging claim holding ``<model>/<version>/`` read-only.
Pure functions on the caller's thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Literal, Mapping, Sequence

from contract.bundle_file import BUNDLE_FILE

ROOT_CONFIGMAP = "root-config"
"""The root's config ConfigMap (``deploy/k8s/base/root-config.yaml``)."""
MODELS_MOUNT = "/models"
SOURCE_MOUNT = "/source"
PART_OF = {"app.kubernetes.io/part-of": "rootleaf"}


def bundle_configmap_name(bundle: str) -> str:
    """``bundle-<bundle>``: one ConfigMap per bundle (``deploy/k8s/base/bundles.yaml``)."""
    return f"bundle-{bundle}"


def _meta(name: str, namespace: str, track: str, rollout_id: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {**PART_OF, "rootleaf.io/track": track, "rootleaf.io/rollout": _label(rollout_id)},
        "annotations": dict(annotations),
    }


def _label(value: str) -> str:
    """A label value (<= 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in value)[:63]
    return clean.strip("_.-") or "none"


def _data(files: Mapping[str, bytes]) -> dict[str, dict[str, str]]:
    """``data`` for UTF-8 text, ``binaryData`` (base64) for anything else."""
    text: dict[str, str] = {}
    binary: dict[str, str] = {}
    for name, content in sorted(files.items()):
        try:
            text[name] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[name] = base64.b64encode(content).decode()
    out: dict[str, dict[str, str]] = {"data": text}
    if binary:
        out["binaryData"] = binary
    return out


def bundle_configmap(namespace: str, bundle: str, bundle_bytes: bytes, *, track: str, rollout_id: str,
                     build_id: str) -> dict[str, Any]:
    """The ConfigMap the roots of ``namespace`` mount for ``bundle``."""
    sha = hashlib.sha256(bundle_bytes).hexdigest()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(bundle_configmap_name(bundle), namespace, track, rollout_id,
                          {"rootleaf.io/build-id": build_id, "rootleaf.io/bundle-sha256": sha}),
        **_data({BUNDLE_FILE: bundle_bytes}),
    }


def root_config_configmap(namespace: str, current: Mapping[str, Any] | None, configs: Mapping[str, bytes], *,
                          track: str, rollout_id: str, build_id: str) -> dict[str, Any]:
    """``root-config`` with the package's ``configs`` over the keys ``current`` holds (an apply
    replaces ``data`` whole, so keys the package does not carry, like root.toml, are kept)."""
    merged: dict[str, bytes] = {}
    for key, value in ((current or {}).get("data") or {}).items():
        merged[key] = str(value).encode()
    merged.update(configs)
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ROOT_CONFIGMAP, namespace, track, rollout_id, {"rootleaf.io/build-id": build_id}),
        **_data(merged),
    }
    binary = ((current or {}).get("binaryData") or {})
    if binary:
        doc.setdefault("binaryData", {}).update({k: v for k, v in binary.items() if k not in configs})
    return doc


def job_name(verb: str, partition: str, model: str, version: str, nonce: str) -> str:
    """Jobs are immutable once created: every run gets its own name (<= 63 characters)."""
    digest = hashlib.sha256("\0".join((verb, partition, model, version, nonce)).encode()).hexdigest()[:10]
    stem = _label(f"rootleaf-{verb}-{partition}-{model}-{version}").lower().replace("_", "-").replace(".", "-")
    return f"{stem[:52].rstrip('-')}-{digest}"


def model_job(verb: Literal["deliver", "remove"], namespace: str, partition: str, model: str, version: str,
              sha256: str, *, nonce: str, track: str, rollout_id: str, image: str, models_claim: str,
              source_claim: str) -> dict[str, Any]:
    """A Job adding (``deliver``) or taking away (``remove``) ``model/version`` in the model
    store subPath ``partition`` that the leaf pods of ``namespace`` serve from."""
    args: list[str] = ["model-store", verb, "--repo", MODELS_MOUNT, "--model", model, "--sha256", sha256]
    mounts: list[dict[str, Any]] = [{"name": "models", "mountPath": MODELS_MOUNT, "subPath": partition}]
    volumes: list[dict[str, Any]] = [{"name": "models", "persistentVolumeClaim": {"claimName": models_claim}}]
    if verb == "deliver":
        args += ["--source", f"{SOURCE_MOUNT}/{model}/{version}"]
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True})
        volumes.append({"name": "source", "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True}})
    else:
        args += ["--version", version]
    labels = {**PART_OF, "rootleaf.io/track": track, "rootleaf.io/rollout": _label(rollout_id),
              "rootleaf.io/partition": partition}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(verb, partition, model, version, nonce),
            "namespace": namespace,
            "labels": labels,
            "annotations": {"rootleaf.io/model": model, "rootleaf.io/version": version,
                            "rootleaf.io/tree-sha256": sha256},
        },
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                    "containers": [{
                        "name": "model-store",
                        "image": image,
                        "args": args,
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    }


def identity(obj: Mapping[str, Any]) -> str:
    """``namespace/Kind/name``: how objects are told apart in state and reports."""
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{obj['kind']}/{meta['name']}"


def to_manifest(objects: Sequence[Mapping[str, Any]]) -> str:
    """What ``kubectl apply -f -`` reads: one object, or a ``v1/List`` of several, as JSON
    (JSON is YAML, so any tool that takes manifests takes it)."""
    doc = objects[0] if len(objects) == 1 else {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    return json.dumps(doc, indent=1) + "\n"


def from_manifest(text: str) -> list[dict[str, Any]]:
    """The objects of ``to_manifest`` output (a ``List`` unpacked)."""
    doc = json.loads(text)
    items = doc.get("items", []) if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
    if not all(isinstance(i, dict) for i in items):
        raise ValueError("a manifest holds objects only")
    return items


def applyable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object read back from the cluster, without the fields the server owns, so that
    applying it again restores its content."""
    meta = dict(obj.get("metadata") or {})
    keep = {k: meta[k] for k in ("name", "namespace", "labels") if k in meta}
    notes = {k: v for k, v in (meta.get("annotations") or {}).items()
             if k != "kubectl.kubernetes.io/last-applied-configuration"}
    if notes:
        keep["annotations"] = notes
    out = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    out["metadata"] = keep
    return out
