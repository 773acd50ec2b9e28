"""Staged rollout of a root-config package and new model versions, with rollback.

Stages: 1 root configs -> canary, 2 model configs -> canary, 3 automated canary analysis,
4 root configs -> production, 5 model configs -> production. Everything is checked before
stage 1 (package vs plan, every version to ship exists and does not clash with a different
copy already deployed, no unfinished earlier rollout). Each delivery is verified on the hosts
(roots report the new bundle content hash in Root/Status, leaves list the new version in
Leaf/ListModels) within the plan's timeout. Any failure reverts every change so far in reverse
order. State (changes and backups) persists in the plan's state dir after every change, so
``rollback`` works on demand and after a crash. One rollout runs on one event loop; file I/O
runs in threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import grpc

from contract.versions import version_key
from deploy.canary import FAIL, MARGINAL, report_json, run_analysis
from deploy.fleet import read_deployed
from deploy.delivery import Change, DeliveryError, atomic_write, deliver_file, deliver_version, revert, tree_sha256
from deploy import k8s_delivery, rollout_metrics, waves
from deploy.shadow_analysis import run_shadow_analysis
from deploy.package import Package
from deploy.plan import LeafTarget, Plan, PlanError, Role, RootTarget
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc, root_pb2, root_pb2_grpc
from transport.server import GRPC_OPTIONS
from transport.tls import PLAINTEXT, TlsConfig, aio_channel

STATE_FILE = "state.json"
Printer = Callable[[str], None]


class RolloutFailed(RuntimeError):
    """A stage failed; the message is the reason."""


@dataclass(frozen=True, slots=True)
class FileDelivery:
    """A root config file to write on one root."""

    root: RootTarget
    path: Path
    data: bytes


@dataclass(frozen=True, slots=True)
class VersionDelivery:
    """A model version directory to copy into one leaf's repository."""

    leaf: LeafTarget
    model: str
    version: str
    source: Path


@dataclass(frozen=True, slots=True)
class StageResult:
    number: int
    name: str
    ok: bool
    duration_s: float
    detail: str


class StateStore:
    """The persisted record of the last rollout: its status and every applied change."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE

    def load(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PlanError(f"rollout state {self.path} is unreadable ({exc})") from None
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        rollout_metrics.export(self.dir, doc)


def _changes(doc: dict[str, Any]) -> list[tuple[Change, bool]]:
    return [(Change.from_json(c["change"]), bool(c["reverted"])) for c in doc.get("changes", [])]


# ----------------------------------------------------------------------------- verification

async def _poll(what: str, timeout_s: float, probe: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
    """Await ``probe`` until it reports done, with backoff, bounded by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay, last = 0.05, ""
    while True:
        try:
            done, last = await probe()
        except grpc.aio.AioRpcError as exc:
            done, last = False, f"{exc.code().name}: {exc.details()}"
        if done:
            return
        if time.monotonic() + delay > deadline:
            raise RolloutFailed(f"verification timed out after {timeout_s:.0f} s: {what} ({last})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def root_bundle_error(root: RootTarget, bundle: str, rpc_s: float, tls: TlsConfig = PLAINTEXT) -> str:
    """The load error the root reports for ``bundle`` now ("" when none, or unreachable)."""
    async with aio_channel(root.target, tls, list(GRPC_OPTIONS)) as channel:
        try:
            status = await root_pb2_grpc.RootStub(channel).Status(root_pb2.RootStatusRequest(), timeout=rpc_s)
        except grpc.aio.AioRpcError:
            return ""
    return next((b.last_error for b in status.bundles if b.name == bundle), "")


async def verify_root(root: RootTarget, bundle: str, sha: str | None, timeout_s: float, rpc_s: float,
                      tls: TlsConfig = PLAINTEXT, refusal_besides: str | None = None) -> str:
    """Wait until the root reports bundle ``bundle`` loaded with content hash ``sha``; returns "".

    With ``refusal_besides`` (the error the root reported before the delivery), a new load
    error also ends the wait: the root refused the file (and keeps its last good map); the
    error is returned, for the canary analysis to judge."""
    refused = ""
    async with aio_channel(root.target, tls, list(GRPC_OPTIONS)) as channel:
        stub = root_pb2_grpc.RootStub(channel)

        async def probe() -> tuple[bool, str]:
            nonlocal refused
            status = await stub.Status(root_pb2.RootStatusRequest(), timeout=rpc_s)
            for b in status.bundles:
                if b.name == bundle:
                    if (refusal_besides is not None and b.content_hash != sha and b.last_error
                            and b.last_error != refusal_besides):
                        refused = b.last_error
                        return True, f"refused: {b.last_error}"
                    return b.content_hash == sha, f"reports {b.content_hash[:12] or 'nothing'}" + (
                        f", last_error {b.last_error!r}" if b.last_error else "")
            return False, f"no bundle {bundle!r}"

        await _poll(f"root {root.target} bundle {bundle} hash {str(sha)[:12]}", timeout_s, probe)
    return refused


async def verify_leaf(leaf: LeafTarget, want: dict[str, set[str]], gone: dict[str, set[str]],
                      timeout_s: float, rpc_s: float, tls: TlsConfig = PLAINTEXT) -> None:
    """Wait until the leaf lists every version in ``want`` and none in ``gone``."""
    async with aio_channel(leaf.target, tls, list(GRPC_OPTIONS)) as channel:
        stub = leaf_pb2_grpc.LeafStub(channel)

        async def probe() -> tuple[bool, str]:
            listed = await stub.ListModels(leaf_pb2.ListModelsRequest(), timeout=rpc_s)
            have = {m.name: set(m.versions) for m in listed.models}
            missing = {m: v - have.get(m, set()) for m, v in want.items() if v - have.get(m, set())}
            extra = {m: v & have.get(m, set()) for m, v in gone.items() if v & have.get(m, set())}
            return not missing and not extra, f"missing {missing or '{}'}, still loaded {extra or '{}'}"

        await _poll(f"leaf {leaf.target}", timeout_s, probe)


# ----------------------------------------------------------------------------- rollout

class Rollout:
    """Plans and runs one rollout of ``package`` with versions from ``models_dir``."""

    def __init__(self, plan: Plan, package: Package, models_dir: Path, out: Printer = print) -> None:
        self.plan = plan
        self.package = package
        self.models_dir = models_dir
        self.out = out
        self.store = StateStore(plan.state_dir)
        self.state: dict[str, Any] = {}
        self.k8s: k8s_delivery.KubernetesStages | None = None
        self.delivered: list[VersionDelivery] = []
        """Versions delivered so far (the wave gates re-check them)."""

    # -- planning (no side effects) -------------------------------------------------------
    def root_files(self, role: Role) -> list[FileDelivery]:
        files = []
        for root in role.roots:
            files.append(FileDelivery(root, root.bundle_file, self.package.bundle_bytes))
            for n, d in sorted(self.package.configs.items()):
                if (root.config_dir / n).resolve() == root.bundle_file.resolve():
                    raise PlanError(f"package config {n!r} would overwrite root {root.target}'s bundle file")
                files.append(FileDelivery(root, root.config_dir / n, d))
        return files

    def leaf_versions(self, role: Role) -> list[VersionDelivery]:
        """Versions the package lists that a leaf serving the model does not have yet."""
        out = []
        for leaf in role.leaves:
            served = leaf.models or tuple(
                p.name for p in leaf.repo_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            for model in sorted(set(served) & set(self.package.models)):
                for version in sorted(self.package.models[model], key=version_key):
                    source = self.models_dir / model / version
                    deployed = leaf.repo_dir / model / version
                    if deployed.exists():
                        if source.is_dir() and tree_sha256(source) != tree_sha256(deployed):
                            raise PlanError(f"{deployed} is deployed with content different from {source}")
                        continue
                    if not source.is_dir():
                        raise PlanError(f"{model} version {version} is not on leaf {leaf.target} "
                                        f"and not in --models {self.models_dir}")
                    out.append(VersionDelivery(leaf, model, version, source))
        return out

    def validate(self) -> None:
        """Everything that can be checked before a change is made; raises ``PlanError``."""
        if self.package.name != self.plan.bundle:
            raise PlanError(f"package carries bundle {self.package.name!r}, plan says {self.plan.bundle!r}")
        if not self.models_dir.is_dir():
            raise PlanError(f"--models {self.models_dir} is not a directory")
        for model in self.plan.analysis.models:
            if model not in self.package.models:
                raise PlanError(f"analysis.models names {model!r}, which the package does not carry")
        prior = self.store.load()
        if prior is not None and prior.get("status") in ("in_progress", "failed"):
            raise PlanError(f"rollout state in {self.plan.state_dir} has unreverted changes "
                            f"(status {prior['status']}): run 'rootleaf rollback' first")
        for role in (self.plan.canary, self.plan.production):
            self.root_files(role)
            if not self.plan.delivery.kubernetes:  # Kubernetes: leaves are asked at stage time
                self.leaf_versions(role)
        waves.plan_waves(self.plan)

    def analysis_models(self) -> list[str]:
        """The plan's list, else every model of the package and of the bundle the baseline
        roots load (a model the package drops is judged too: it would go untrimmed)."""
        deployed = read_deployed(r.bundle_file for r in self.plan.production.roots)
        return list(self.plan.analysis.models) or sorted(set(self.package.models) | set(deployed.models if deployed else ()))

    def describe(self) -> list[str]:
        lines = []
        k8s = self.plan.delivery.kubernetes
        for n, role_name, role in ((1, "canary", self.plan.canary), (4, "production", self.plan.production)):
            lines.append(f"[{n}/5] root configs -> {role_name}")
            if k8s:
                lines += [f"      namespace {ns}: apply ConfigMap(s) {', '.join(k8s_delivery.configmap_names(self.package))}"
                          f" (bundle {self.package.bundle_sha256[:12]}) with {' '.join(self.plan.delivery.apply_command)}"
                          for ns in sorted({r.namespace for r in role.roots})]
            for f in [] if k8s else self.root_files(role):
                old = hashlib.sha256(f.path.read_bytes()).hexdigest()[:12] if f.path.exists() else "none"
                new = hashlib.sha256(f.data).hexdigest()[:12]
                lines.append(f"      {f.root.target}: {f.path} {old} -> {new}" + (" (unchanged)" if old == new else ""))
            lines.append(f"[{n + 1}/5] model configs -> {role_name}")
            if k8s:
                lines += [f"      namespace {lf.namespace} partition {lf.partition}: a model-store Job per version of "
                          f"{', '.join(lf.models)} newer than {lf.target} lists (asked at stage time)" for lf in role.leaves]
            versions = [] if k8s else self.leaf_versions(role)
            lines += [f"      {v.leaf.target}: + {v.model}/{v.version} into {v.leaf.repo_dir}" for v in versions]
            if not versions and not k8s:
                lines.append("      (no new versions)")
            if n == 1:
                lines.append("[3/5] canary analysis: " + (
                    f"mirrored production traffic, at least {self.plan.shadow.min_requests} requests"
                    if self.plan.shadow is not None else f"{self.plan.analysis.requests} requests per side")
                    + f", models {', '.join(self.analysis_models())}")
        if self.plan.waves is not None:
            for wave in waves.plan_waves(self.plan):
                lines.append(f"      production {wave.label}: roots {', '.join(r.target for r in wave.roots) or '-'}; "
                             f"leaves {', '.join(lf.target for lf in wave.leaves) or '-'}; then bake "
                             f"{self.plan.waves.bake_s:g} s and gate")
        return lines

    # -- running ---------------------------------------------------------------------------
    def _record(self, change: Change) -> None:
        self.state["changes"].append({"change": change.to_json(), "reverted": False})
        self.store.save(self.state)

    def _k8s(self) -> k8s_delivery.KubernetesStages:
        if self.k8s is None:
            self.k8s = k8s_delivery.KubernetesStages(self.plan, self.package, self.models_dir, self.state["id"],
                                                     self.plan.state_dir / "backups" / self.state["id"])
        return self.k8s

    async def _deliver_roots(self, role_name: str, roots: Sequence[RootTarget], *, accept_refusal: bool = False) -> str:
        """Write the root configs and wait for every root to load them; with
        ``accept_refusal`` (canary) a root that refuses the bundle file ends its wait too:
        the analysis then judges the canary with the refusal in effect."""
        before = {r.target: await root_bundle_error(r, self.plan.bundle, self.plan.rpc_timeout_s, self.plan.tls)
                  for r in roots} if accept_refusal else None
        if self.plan.delivery.kubernetes:
            count = await self._k8s().deliver_roots(role_name, roots, self._record)
        else:
            count = 0
            backup_dir = self.plan.state_dir / "backups" / self.state["id"]
            for f in self.root_files(Role(tuple(roots), ())):
                change = await asyncio.to_thread(deliver_file, f.path, f.data, backup_dir, f"{role_name} root {f.root.target}")
                if change is not None:
                    self._record(change)
                    count += 1
        refused = await self._verify_roots(roots, before)
        unit = "object(s) applied" if self.plan.delivery.kubernetes else "file(s) written"
        return (f"{count} {unit}, {len(roots) - len(refused)} root(s) report {self.package.bundle_sha256[:12]}"
                + "".join(f"; {line}" for line in refused))

    async def _verify_roots(self, roots: Sequence[RootTarget], errors_before: dict[str, str] | None = None) -> list[str]:
        """Wait for every root to report the package's bundle; with ``errors_before`` a root
        that refuses it (a new load error) ends its wait too, and is named in the result."""
        refusals = await asyncio.gather(*(
            verify_root(r, self.plan.bundle, self.package.bundle_sha256, self.plan.verify_timeout_s,
                        self.plan.rpc_timeout_s, self.plan.tls,
                        None if errors_before is None else errors_before.get(r.target, ""))
            for r in roots))
        return [f"{r.target} REFUSED it ({e})" for r, e in zip(roots, refusals) if e]

    async def _deliver_models(self, role_name: str, leaves: Sequence[LeafTarget]) -> str:
        if self.plan.delivery.kubernetes:
            jobs = await self._k8s().deliver_models(role_name, leaves, self._record)
            deliveries = [VersionDelivery(leaf, model, version, self.models_dir / model / version)
                          for leaf, model, version in jobs]
        else:
            deliveries = self.leaf_versions(Role(self.plan.canary.roots, tuple(leaves)))  # uses the leaves only
            for v in deliveries:
                change = await asyncio.to_thread(deliver_version, v.source, v.leaf.repo_dir, v.model,
                                                 f"{role_name} leaf {v.leaf.target}")
                if change is not None:
                    self._record(change)
        self.delivered += deliveries
        await self._verify_leaves(deliveries)
        names = ", ".join(f"{v.model}/{v.version}" for v in deliveries) or "none new"
        return f"{len(deliveries)} version(s) delivered and listed ({names})"

    async def _verify_leaves(self, deliveries: Sequence[VersionDelivery]) -> None:
        """Wait until every leaf lists the versions delivered to it."""
        want: dict[int, tuple[LeafTarget, dict[str, set[str]]]] = {}
        for v in deliveries:
            want.setdefault(id(v.leaf), (v.leaf, {}))[1].setdefault(v.model, set()).add(v.version)
        await asyncio.gather(*(verify_leaf(leaf, models, {}, self.plan.verify_timeout_s, self.plan.rpc_timeout_s,
                                           self.plan.tls) for leaf, models in want.values()))

    async def _analyse(self) -> str:
        plan = self.plan
        canary, base = plan.canary, plan.production
        shadow = plan.shadow is not None  # [shadow]: judge mirrored production traffic instead
        report = await run_shadow_analysis(plan, self.analysis_models()) if shadow else await run_analysis(
            plan.analysis, self.analysis_models(),
            [(r.target, r.metrics_url or "") for r in canary.roots], [(r.target, r.metrics_url or "") for r in base.roots],
            [lf.metrics_url for lf in canary.leaves if lf.metrics_url],
            [lf.metrics_url for lf in base.leaves if lf.metrics_url],
            tls=plan.tls, bundle=plan.bundle,
        )
        report_path = plan.state_dir / f"analysis-{self.state['id']}.json"
        await asyncio.to_thread(atomic_write, report_path, report_json(report).encode())
        self.out(report.table())
        self.out(f"      report: {report_path}")
        self.state["analysis"] = {"score": report.score, "verdict": report.verdict, "report": str(report_path)}
        self.store.save(self.state)
        verdict = f"verdict {report.verdict} (score {report.score:.1f})"
        if report.verdict == FAIL or (report.verdict == MARGINAL and plan.analysis.on_marginal == "rollback"):
            failed = [f"{m.name} ({m.detail})" if m.critical else m.name for m in report.metrics if m.verdict == FAIL]
            raise RolloutFailed(f"canary analysis {verdict}; failing metrics: {'; '.join(failed) or 'none'}")
        return verdict

    async def run(self) -> int:
        """Run every stage; on failure roll back. Returns the exit code."""
        self.state = {"id": time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}", "status": "in_progress",
                      "plan": str(self.plan.path), "bundle": self.package.name,
                      "build_id": self.package.build_id, "changes": []}
        self.store.save(self.state)
        self.out(f"rollout of bundle {self.package.name} build {self.package.build_id} "
                 f"(bundle sha256 {self.package.bundle_sha256[:12]})")
        canary = self.plan.canary
        stages: list[tuple[int, str, Callable[[], Awaitable[str]]]] = [
            (1, "root configs -> canary", lambda: self._deliver_roots("canary", canary.roots, accept_refusal=True)),
            (2, "model configs -> canary", lambda: self._deliver_models("canary", canary.leaves)),
            (3, "automated canary analysis", self._analyse),
        ]
        stages += self._production_stages()
        for number, name, action in stages:
            start = time.monotonic()
            self.state["stage"] = number
            try:
                detail = await action()
            except (RolloutFailed, DeliveryError, OSError, waves.GateFailed) as exc:
                self.out(f"[{number}/5] {name}: FAILED ({time.monotonic() - start:.2f} s) {exc}")
                self.state["status"] = "failed"
                self.state["reason"] = f"stage {number} ({name}): {exc}"
                self.store.save(self.state)
                ok = await rollback_state(self.plan, self.store, self.out)
                self.out(f"rollout FAILED at stage {number} ({name}): {exc}")
                self.out("rolled back: every change reverted and verified" if ok else "ROLLBACK INCOMPLETE: see above")
                return 1
            self.out(f"[{number}/5] {name}: OK ({time.monotonic() - start:.2f} s) {detail}")
        self.state["status"] = "completed"
        self.store.save(self.state)
        if self.k8s is not None:
            self.out(f"      objects applied: {', '.join(k8s_delivery.identity(o) for o in self.k8s.rendered)}")
        self.out(f"rollout COMPLETED: bundle {self.package.name} build {self.package.build_id} in production")
        return 0

    def _production_stages(self) -> list[tuple[int, str, Callable[[], Awaitable[str]]]]:
        """Stages 4 and 5, per wave; after each wave of a ``[waves]`` plan, its gate."""
        plan_waves = waves.plan_waves(self.plan)
        out: list[tuple[int, str, Callable[[], Awaitable[str]]]] = []
        for wave in plan_waves:
            suffix = f" {wave.label}" if self.plan.waves is not None else ""
            snapshots: list[tuple[Any, Any]] = []

            async def roots(wave: waves.Wave = wave, snapshots: list[tuple[Any, Any]] = snapshots) -> str:
                if self.plan.waves is not None:
                    snapshots.append(await waves.baseline(plan_waves[:wave.number]))
                if not wave.roots:
                    return "no root in this wave"
                return await self._deliver_roots("production", wave.roots)

            async def leaves(wave: waves.Wave = wave) -> str:
                return await self._deliver_models("production", wave.leaves)

            async def gate(wave: waves.Wave = wave, snapshots: list[tuple[Any, Any]] = snapshots) -> str:
                so_far = plan_waves[:wave.number]
                roots = [r for w in so_far for r in w.roots]

                async def recheck() -> None:
                    await self._verify_roots(roots)
                    await self._verify_leaves(self.delivered)

                return await waves.gate(self.plan, wave, so_far, self.analysis_models(), snapshots[0][0],
                                        snapshots[0][1], recheck)

            out += [(4, f"root configs -> production{suffix}", roots), (5, f"model configs -> production{suffix}", leaves)]
            if self.plan.waves is not None:
                out.append((5, f"gate after production {wave.label}", gate))
        return out


async def rollback_state(plan: Plan, store: StateStore, out: Printer) -> bool:
    """Revert every unreverted change of the recorded rollout in reverse order, then verify.

    Returns False when a revert or a verification failed (the state keeps what is left)."""
    state = store.load()
    if state is None:
        out("rollback: no rollout state; nothing to do")
        return True
    entries = state.get("changes", [])
    ok = True
    roots_touched: dict[str, tuple[RootTarget, str | None]] = {}
    leaves_touched: dict[str, tuple[LeafTarget, dict[str, set[str]]]] = {}
    by_file = {str(r.bundle_file): r for r in plan.canary.roots + plan.production.roots}
    by_repo = {str(lf.repo_dir): lf for lf in plan.canary.leaves + plan.production.leaves}
    for entry in reversed(entries):
        if entry["reverted"]:
            continue
        change = Change.from_json(entry["change"])
        start = time.monotonic()
        try:
            if change.kind in (k8s_delivery.CONFIGMAP, k8s_delivery.JOB):
                await asyncio.to_thread(k8s_delivery.revert_change, plan.delivery, change)
            else:
                await asyncio.to_thread(revert, change)
        except DeliveryError as exc:
            out(f"  revert {change.target}: FAILED {exc}")
            ok = False
            continue
        entry["reverted"] = True
        store.save(state)
        out(f"  reverted {change.kind} {change.target} ({time.monotonic() - start:.2f} s)")
        if change.kind == "file" and change.target in by_file:
            roots_touched[change.target] = (by_file[change.target], change.old_sha256)
        elif change.kind == "version":
            target = Path(change.target)
            leaf = by_repo.get(str(target.parent.parent))
            if leaf is not None:
                gone = leaves_touched.setdefault(str(leaf.repo_dir), (leaf, {}))[1]
                gone.setdefault(target.parent.name, set()).add(target.name)
        namespace = k8s_delivery.bundle_configmap_of(change, plan.bundle)
        for root in plan.canary.roots + plan.production.roots:
            if namespace is not None and root.namespace == namespace:
                roots_touched[f"{namespace}/{root.target}"] = (root, change.old_sha256)
        version = k8s_delivery.version_of(change)
        for leaf in plan.canary.leaves + plan.production.leaves:
            if version is not None and (leaf.namespace, leaf.partition) == version[:2]:
                gone = leaves_touched.setdefault(f"{leaf.namespace}/{leaf.target}", (leaf, {}))[1]
                gone.setdefault(version[2], set()).add(version[3])
    checks = [
        verify_root(root, plan.bundle, old, plan.verify_timeout_s, plan.rpc_timeout_s, plan.tls)
        for root, old in roots_touched.values() if old is not None
    ] + [
        verify_leaf(leaf, {}, gone, plan.verify_timeout_s, plan.rpc_timeout_s, plan.tls)
        for leaf, gone in leaves_touched.values()
    ]
    for result in await asyncio.gather(*checks, return_exceptions=True):
        if isinstance(result, BaseException):
            out(f"  rollback verification: {result}")
            ok = False
    if checks and ok:
        out(f"  verified: {len(roots_touched)} root(s) report their previous bundle hash, "
            f"{len(leaves_touched)} leaf(s) no longer list the removed versions")
    if ok:
        state["status"] = "rolled_back"
        store.save(state)
    return ok
