"""Delivery kind ``kubernetes``: a stage's objects (``deploy.k8s_render``) go through the
plan's commands (``kubectl apply -f -`` by default), and every applied object is recorded as
a ``Change`` that ``revert`` undoes the same way.

A ConfigMap's previous content is read with ``get_command`` before it is replaced and kept in
the state dir; reverting applies it again (or deletes the ConfigMap when there was none). A
model version goes in through a ``deliver`` Job and comes out through a ``remove`` Job. Hosts
are verified as with local delivery (Root/Status, Leaf/ListModels), by the caller. Commands
run in a thread of the caller (blocking ``subprocess.run``, bounded by the plan's timeout).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import grpc

from contract.bundle_file import BUNDLE_FILE
from contract.versions import version_key
from deploy.delivery import Change, DeliveryError, atomic_write, tree_sha256
from deploy.fleet_config import DeliveryConfig
from deploy.k8s_render import (ROOT_CONFIGMAP, applyable, bundle_configmap, bundle_configmap_name, identity,
                               model_job, root_config_configmap, to_manifest)
from deploy.package import Package
from deploy.plan import LeafTarget, Plan, RootTarget
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc
from transport.server import GRPC_OPTIONS
from transport.tls import aio_channel

CONFIGMAP: Literal["configmap"] = "configmap"
JOB: Literal["job"] = "job"
"""``Change.kind`` of the two Kubernetes changes."""


def run_command(argv: Sequence[str], stdin: str, timeout_s: float, what: str) -> str:
    """Run ``argv`` with ``stdin``; its stdout, or ``DeliveryError`` naming ``what``."""
    try:
        done = subprocess.run(list(argv), input=stdin.encode(), capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeliveryError(f"{what}: {' '.join(argv)} failed ({exc})") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        raise DeliveryError(f"{what}: {' '.join(argv)} exited {done.returncode}: {tail}")
    return done.stdout.decode(errors="replace")


def read_object(cfg: DeliveryConfig, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object as the cluster holds it, or None when absent."""
    out = run_command(cfg.get_command, to_manifest([obj]), cfg.command_timeout_s, f"read {identity(obj)}").strip()
    if not out:
        return None
    try:
        doc = json.loads(out)
    except ValueError:
        raise DeliveryError(f"read {identity(obj)}: get_command printed no JSON object") from None
    if isinstance(doc, dict) and doc.get("kind") == "List":
        items = doc.get("items") or []
        doc = items[0] if items else None
    if doc is not None and not isinstance(doc, dict):
        raise DeliveryError(f"read {identity(obj)}: get_command printed {type(doc).__name__}, not an object")
    return doc


def apply_objects(cfg: DeliveryConfig, objects: Sequence[Mapping[str, Any]], what: str) -> None:
    run_command(cfg.apply_command, to_manifest(objects), cfg.command_timeout_s, what)


def _content_sha(obj: Mapping[str, Any] | None) -> str:
    body = {k: (obj or {}).get(k) or {} for k in ("data", "binaryData")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _bundle_sha(obj: Mapping[str, Any] | None) -> str | None:
    text = ((obj or {}).get("data") or {}).get(BUNDLE_FILE)
    return hashlib.sha256(str(text).encode()).hexdigest() if text is not None else None


def deliver_configmap(cfg: DeliveryConfig, obj: dict[str, Any], backup_dir: Path, host: str) -> Change | None:
    """Apply ``obj`` after saving what it replaces; None when the cluster holds exactly it."""
    current = read_object(cfg, obj)
    if current is not None and _content_sha(current) == _content_sha(obj):
        return None
    backup: str | None = None
    if current is not None:
        backup_dir.mkdir(parents=True, exist_ok=True)
        meta = obj["metadata"]
        path = backup_dir / f"{meta['namespace']}.{meta['name']}.{time.time_ns()}.json"
        atomic_write(path, json.dumps(applyable(current), sort_keys=True).encode())
        backup = str(path)
    apply_objects(cfg, [obj], f"{host}: apply {identity(obj)}")
    return Change(CONFIGMAP, identity(obj), _content_sha(obj), backup, _bundle_sha(current), host)


def root_objects(cfg: DeliveryConfig, namespace: str, bundle: str, bundle_bytes: bytes, configs: Mapping[str, bytes],
                 *, track: str, rollout_id: str, build_id: str) -> list[dict[str, Any]]:
    """Stage 1 or 4 for one namespace: the bundle ConfigMap, and ``root-config`` when the
    package carries other configs (merged over the namespace's current one)."""
    objects = [bundle_configmap(namespace, bundle, bundle_bytes, track=track, rollout_id=rollout_id, build_id=build_id)]
    if configs:
        probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace}}
        objects.append(root_config_configmap(namespace, read_object(cfg, probe), configs, track=track,
                                             rollout_id=rollout_id, build_id=build_id))
    return objects


def configmap_names(package: Package) -> list[str]:
    """The ConfigMaps stages 1 and 4 apply in each namespace."""
    return [bundle_configmap_name(package.name)] + ([ROOT_CONFIGMAP] if package.configs else [])


def version_job(cfg: DeliveryConfig, verb: Literal["deliver", "remove"], namespace: str, partition: str, model: str,
                version: str, sha256: str, *, track: str, rollout_id: str, nonce: str) -> dict[str, Any]:
    """The model-store Job ``verb`` for one version, with the plan's image and claims."""
    return model_job(verb, namespace, partition, model, version, sha256, nonce=nonce, track=track,
                     rollout_id=rollout_id, image=cfg.image, models_claim=cfg.models_claim,
                     source_claim=cfg.source_claim)


def version_target(namespace: str, claim: str, partition: str, model: str, version: str) -> str:
    """``Change.target`` of a delivered version: ``namespace/claim/partition/model/version``."""
    return "/".join((namespace, claim, partition, model, version))


def deliver_version_job(cfg: DeliveryConfig, namespace: str, partition: str, model: str, version: str,
                        sha256: str, *, track: str, rollout_id: str, host: str) -> tuple[Change, dict[str, Any]]:
    """Apply the ``deliver`` Job of one version; the change to record and the Job applied."""
    job = version_job(cfg, "deliver", namespace, partition, model, version, sha256, track=track,
                      rollout_id=rollout_id, nonce=rollout_id)
    apply_objects(cfg, [job], f"{host}: apply {identity(job)}")
    change = Change(JOB, version_target(namespace, cfg.models_claim, partition, model, version), sha256, None, None, host)
    return change, job


def revert_change(cfg: DeliveryConfig, change: Change) -> None:
    """Undo one Kubernetes change: the saved ConfigMap back (or deleted), a version removed."""
    if change.kind == CONFIGMAP:
        namespace, kind, name = change.target.split("/", 2)
        if change.backup is not None:
            try:
                previous = json.loads(Path(change.backup).read_text())
            except (OSError, ValueError) as exc:
                raise DeliveryError(f"{change.host}: backup {change.backup} unreadable ({exc})") from None
            apply_objects(cfg, [previous], f"{change.host}: restore {change.target}")
        else:
            ref = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": namespace}}
            run_command(cfg.delete_command, to_manifest([ref]), cfg.command_timeout_s, f"{change.host}: delete {change.target}")
        return
    namespace, _claim, partition, model, version = change.target.split("/")
    job = version_job(cfg, "remove", namespace, partition, model, version, change.new_sha256, track="rollback",
                      rollout_id="rollback", nonce=f"{time.time_ns()}")
    apply_objects(cfg, [job], f"{change.host}: apply {identity(job)}")


def bundle_configmap_of(change: Change, bundle: str) -> str | None:
    """The namespace whose bundle ConfigMap ``change`` replaced, else None."""
    if change.kind != CONFIGMAP:
        return None
    namespace, kind, name = change.target.split("/", 2)
    return namespace if kind == "ConfigMap" and name == bundle_configmap_name(bundle) else None


def version_of(change: Change) -> tuple[str, str, str, str] | None:
    """``(namespace, partition, model, version)`` of a version Job change, else None."""
    if change.kind != JOB:
        return None
    namespace, _claim, partition, model, version = change.target.split("/")
    return namespace, partition, model, version


Record = Callable[[Change], None]


class KubernetesStages:
    """Stages 1/4 and 2/5 of one rollout as Kubernetes objects; ``record`` persists each change
    as soon as it is applied (so a crash mid-stage still rolls back)."""

    def __init__(self, plan: Plan, package: Package, models_dir: Path, rollout_id: str, backup_dir: Path) -> None:
        self.plan = plan
        self.cfg = plan.delivery
        self.package = package
        self.models_dir = models_dir
        self.rollout_id = rollout_id
        self.backup_dir = backup_dir
        self.rendered: list[dict[str, Any]] = []
        """Every object applied so far, in order (for reports)."""

    async def deliver_roots(self, role_name: str, roots: Sequence[RootTarget], record: Record) -> int:
        """Apply the root-config ConfigMaps of every namespace ``roots`` live in."""
        count = 0
        for namespace in sorted({r.namespace for r in roots}):
            objects = await asyncio.to_thread(
                root_objects, self.cfg, namespace, self.plan.bundle, self.package.bundle_bytes, self.package.configs,
                track=role_name, rollout_id=self.rollout_id, build_id=self.package.build_id)
            for obj in objects:
                change = await asyncio.to_thread(deliver_configmap, self.cfg, obj, self.backup_dir,
                                                 f"{role_name} namespace {namespace}")
                self.rendered.append(obj)
                if change is not None:
                    record(change)
                    count += 1
        return count

    async def missing(self, leaf: LeafTarget) -> list[tuple[str, str]]:
        """``(model, version)`` the package lists for ``leaf``'s models, newer than every
        version the leaf serves: the pending ones. The store itself is not visible from here
        and a leaf lists only the versions it serves, so older versions the package lists
        are taken as deployed (a rollback must never remove a copy it did not make)."""
        async with aio_channel(leaf.target, self.plan.tls, list(GRPC_OPTIONS)) as channel:
            listed = await leaf_pb2_grpc.LeafStub(channel).ListModels(
                leaf_pb2.ListModelsRequest(), timeout=self.plan.rpc_timeout_s)
        have = {m.name: list(m.versions) for m in listed.models}
        out = []
        for model in sorted(set(leaf.models) & set(self.package.models)):
            newest = max((version_key(v) for v in have.get(model, [])), default=None)
            out += [(model, v) for v in sorted(self.package.models[model], key=version_key)
                    if newest is None or version_key(v) > newest]
        return out

    async def deliver_models(self, role_name: str, leaves: Sequence[LeafTarget],
                             record: Record) -> list[tuple[LeafTarget, str, str]]:
        """One ``deliver`` Job per version a partition's leaves lack (leaves of one partition in
        one namespace share the model store subPath, so one Job serves them all)."""
        try:
            wanted = await asyncio.gather(*(self.missing(leaf) for leaf in leaves))
        except grpc.aio.AioRpcError as exc:
            raise DeliveryError(f"{role_name}: cannot list a leaf's models ({exc.code().name})") from None
        out: list[tuple[LeafTarget, str, str]] = []
        done: set[tuple[str, str, str, str]] = set()
        for leaf, versions in zip(leaves, wanted):
            for model, version in versions:
                out.append((leaf, model, version))
                key = (leaf.namespace, leaf.partition, model, version)
                if key in done:
                    continue
                done.add(key)
                source = self.models_dir / model / version
                if not source.is_dir():
                    raise DeliveryError(f"{model} version {version} is not on leaf {leaf.target} "
                                        f"and not in --models {self.models_dir}")
                sha = await asyncio.to_thread(tree_sha256, source)
                change, job = await asyncio.to_thread(
                    deliver_version_job, self.cfg, leaf.namespace, leaf.partition, model, version, sha,
                    track=role_name, rollout_id=self.rollout_id, host=f"{role_name} namespace {leaf.namespace}")
                self.rendered.append(job)
                record(change)
        return out
