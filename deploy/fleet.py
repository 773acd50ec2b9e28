"""What the fleet serves: the model versions every leaf lists (``Leaf/ListModels``), and the
rollout-gap rule that compares them with a package.

The gap rule (docs/hourly-rollouts.md): a package must list every version of its bundle's
models that some canary or production leaf serves, besides the pending ones; a served version
it lacks would have no allowlist on the roots between the root-config and model-config
stages (those requests go untrimmed: the bandwidth spike the trimmer exists to prevent).
Used by ``rootleaf bundle build --served-from`` (what to keep) and by the rollout before
stage 1 (what to refuse). RPCs run on the caller's event loop; file reads are small.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import grpc

from contract.bundle_file import BundleError, BundleMap, parse_bundle
from contract.versions import sort_versions
from deploy.plan import LeafTarget, Plan, PlanError, Role, cluster_roles, load_plan
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc
from transport.server import GRPC_OPTIONS
from transport.tls import TlsConfig, aio_channel

__all__ = ["Fleet", "FleetError", "Gap", "find_gaps", "load_fleet", "package_gaps", "read_deployed", "served_by_model", "served_versions"]

Served = dict[str, dict[str, set[str]]]
"""leaf target -> model -> versions it lists."""


class FleetError(RuntimeError):
    """The fleet could not be read (a leaf unreachable, a target file unusable)."""


@dataclass(frozen=True, slots=True)
class Fleet:
    """The hosts of one bundle: every leaf, and the bundle files its roots load now."""

    leaves: tuple[LeafTarget, ...]
    bundle_files: tuple[Path, ...]
    """Production roots' first, then canary's."""
    tls: TlsConfig


@dataclass(frozen=True, slots=True)
class Gap:
    """A version some leaf serves that a package does not list."""

    model: str
    version: str
    leaves: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.model}/{self.version} (served by {', '.join(self.leaves)})"


def load_fleet(path: str | Path, bundle: str) -> Fleet:
    """The fleet of ``bundle`` from a cluster file (``cluster.json``) or a rollout plan (TOML)."""
    path = Path(path)
    roles: tuple[Role, ...]
    try:
        if path.suffix == ".toml":
            plan = load_plan(path)
            roles, tls = (plan.production, plan.canary), plan.tls
            if plan.bundle != bundle:
                raise PlanError(f"plan {path} is for bundle {plan.bundle!r}, not {bundle!r}")
        else:
            found, tls = cluster_roles(path, bundle)
            roles = tuple(found.values())
    except PlanError as exc:
        raise FleetError(str(exc)) from None
    leaves = tuple(leaf for role in roles for leaf in role.leaves)
    if not leaves:
        raise FleetError(f"{path}: no leaf serves bundle {bundle!r}")
    return Fleet(leaves, tuple(root.bundle_file for role in roles for root in role.roots), tls)


async def served_versions(leaves: Sequence[LeafTarget], tls: TlsConfig, timeout_s: float) -> Served:
    """Ask every leaf which versions it lists; ``FleetError`` naming each leaf that did not answer."""

    async def ask(leaf: LeafTarget) -> dict[str, set[str]]:
        async with aio_channel(leaf.target, tls, list(GRPC_OPTIONS)) as channel:
            reply = await leaf_pb2_grpc.LeafStub(channel).ListModels(leaf_pb2.ListModelsRequest(), timeout=timeout_s)
        return {m.name: set(m.versions) for m in reply.models}

    results = await asyncio.gather(*(ask(leaf) for leaf in leaves), return_exceptions=True)
    served: Served = {}
    failed = []
    for leaf, result in zip(leaves, results):
        if isinstance(result, grpc.aio.AioRpcError):
            failed.append(f"{leaf.target} ({result.code().name}: {result.details()})")
        elif isinstance(result, BaseException):
            raise result
        else:
            served[leaf.target] = result
    if failed:
        raise FleetError(f"cannot read the versions leaves serve: {'; '.join(failed)}")
    return served


def served_by_model(served: Served) -> dict[str, set[str]]:
    """model -> every version some leaf serves."""
    out: dict[str, set[str]] = {}
    for by_model in served.values():
        for model, versions in by_model.items():
            out.setdefault(model, set()).update(versions)
    return out


def find_gaps(listed: Mapping[str, Sequence[str]], served: Served, models: Iterable[str]) -> list[Gap]:
    """Every version of ``models`` some leaf serves that ``listed`` (model -> versions) lacks."""
    wanted = set(models)
    missing: dict[tuple[str, str], list[str]] = {}
    for leaf, by_model in sorted(served.items()):
        for model, versions in by_model.items():
            if model not in wanted:
                continue
            for version in versions - set(listed.get(model, ())):
                missing.setdefault((model, version), []).append(leaf)
    return [
        Gap(model, version, tuple(missing[(model, version)]))
        for model in sorted({m for m, _ in missing})
        for version in sort_versions(v for m, v in missing if m == model)
    ]


def read_deployed(paths: Iterable[Path]) -> BundleMap | None:
    """The first readable, valid bundle file of ``paths`` (what a root loads now), else None."""
    for path in paths:
        try:
            return parse_bundle(path.read_bytes())
        except (OSError, BundleError):
            continue
    return None


async def package_gaps(plan: Plan, listed: Mapping[str, Sequence[str]]) -> list[Gap]:
    """The rollout's pre-stage-1 check: every version of the bundle's models (the package's
    and those the roots load now) that a canary or production leaf serves and ``listed`` lacks."""
    served = await served_versions(plan.canary.leaves + plan.production.leaves, plan.tls, plan.rpc_timeout_s)
    deployed = read_deployed(r.bundle_file for r in plan.production.roots + plan.canary.roots)
    return find_gaps(listed, served, set(listed) | set(deployed.models if deployed is not None else ()))
