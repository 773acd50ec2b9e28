"""Rollout plan: a TOML file parsed into frozen dataclasses and validated before anything runs.

Targets come either from a cluster description written by ``rootleaf up``
(``[targets] cluster_file``) or from explicit ``[[canary.roots]]`` / ``[[canary.leaves]]`` /
``[[production.*]]`` tables. ``[tls]`` (client side: ca_file, cert_file + key_file for
mutual TLS, server_name) is how every rollout RPC reaches roots and leaves; without it a
cluster description's own ``tls`` is used, else plaintext. Relative paths resolve against the plan file's directory.
Unknown keys are rejected at every level; each error names the bad field. Pure parsing on the
caller's thread.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from transport.tls import PLAINTEXT, TlsConfig

from contract.names import bundle_name_problem, name_problem
from deploy.fleet_config import DeliveryConfig, FleetConfigError, ShadowAnalysisConfig, WavesConfig, from_table

_TARGET_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


class PlanError(ValueError):
    """The plan is invalid; the message names the field."""


def _check_target(where: str, target: str) -> None:
    m = _TARGET_RE.match(target) if isinstance(target, str) else None
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise PlanError(f"{where}.target must be host:port, got {target!r}")


def _check_namespace(where: str, namespace: str) -> None:
    if not isinstance(namespace, str) or not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
        raise PlanError(f"{where}.namespace must be a Kubernetes namespace name, got {namespace!r}")


def _check_url(where: str, url: str | None) -> None:
    if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", url)):
        raise PlanError(f"{where}.metrics_url must be an http(s) URL, got {url!r}")


@dataclass(frozen=True, slots=True)
class RootTarget:
    """One root host: where its bundle file lives and how to reach it."""

    target: str
    """gRPC address host:port of the root (Root/Status is queried there)."""
    bundle_file: Path
    """The bundle-level file this root's trimmer watches for the plan's bundle."""
    config_dir: Path
    """Directory that receives the package's other root configs."""
    metrics_url: str | None = None
    """Prometheus endpoint of the root (needed on canary and baseline for analysis)."""
    namespace: str = ""
    """Kubernetes namespace of the root's ConfigMaps (delivery kind ``kubernetes``; its
    bundle_file and config_dir are then the paths inside the pod, not checked here)."""

    def __post_init__(self) -> None:
        _check_target("root", self.target)
        _check_url("root", self.metrics_url)
        if self.namespace:
            _check_namespace("root", self.namespace)
        elif not self.bundle_file.parent.is_dir():
            raise PlanError(f"root.bundle_file: directory {self.bundle_file.parent} does not exist")
        if not self.namespace and not self.config_dir.is_dir():
            raise PlanError(f"root.config_dir {self.config_dir} is not a directory")


@dataclass(frozen=True, slots=True)
class LeafTarget:
    """One leaf host and its model repository."""

    target: str
    """gRPC address host:port of the leaf (Leaf/ListModels is queried there)."""
    repo_dir: Path
    """Model repository ``<repo>/<model>/<version>/`` the leaf watches."""
    models: tuple[str, ...] = ()
    """Models this leaf serves; empty = the models that have a directory in repo_dir."""
    metrics_url: str | None = None
    """Prometheus endpoint of the leaf (optional; adds leaf error rate to the analysis)."""
    namespace: str = ""
    """Kubernetes namespace of the leaf pods (delivery kind ``kubernetes``)."""
    partition: str = ""
    """Partition (model store subPath) the leaf serves (delivery kind ``kubernetes``)."""

    def __post_init__(self) -> None:
        _check_target("leaf", self.target)
        _check_url("leaf", self.metrics_url)
        if self.namespace:
            _check_namespace("leaf", self.namespace)
            if name_problem(self.partition) or not self.models:
                raise PlanError(f"leaf {self.target}: a Kubernetes leaf needs partition and models")
        elif not self.repo_dir.is_dir():
            raise PlanError(f"leaf.repo_dir {self.repo_dir} is not a directory")
        for m in self.models:
            if name_problem(m):
                raise PlanError(f"leaf.models: model name {m!r} {name_problem(m)}")


@dataclass(frozen=True, slots=True)
class Role:
    """The hosts of one role (canary or production)."""

    roots: tuple[RootTarget, ...]
    leaves: tuple[LeafTarget, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise PlanError("role must name at least one root")


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """Automated canary analysis: traffic it drives and the judge's thresholds."""

    requests: int = 200
    """Score requests sent to each of the canary and the baseline root."""
    warmup_requests: int = 10
    """Requests sent to each side before the window opens (a freshly loaded model's first
    forwards are slow: TorchScript profiles and optimises them); not judged."""
    concurrency: int = 8
    """Requests in flight per root."""
    candidates_per_request: int = 16
    """Candidates in each request."""
    user_ids: tuple[int, int] = (0, 1000)
    """Half-open range users are drawn from."""
    item_ids: tuple[int, int] = (0, 1000)
    """Half-open range candidates are drawn from."""
    models: tuple[str, ...] = ()
    """Models to request; empty = every model in the package."""
    seed: int = 1
    """Seed of the request generator (canary and baseline get the same requests)."""
    request_timeout_s: float = 10.0
    """Deadline of each score request."""
    min_samples: int = 100
    """Fewest scores per model on each side; fewer is a FAIL (too little evidence)."""
    alpha: float = 0.05
    """Significance level of the Mann-Whitney U test."""
    max_effect_size: float = 0.2
    """Largest |rank-biserial correlation| tolerated between canary and baseline scores."""
    max_score_shift: float = 0.05
    """Largest |median(canary) - median(baseline)| tolerated, in score units."""
    max_error_rate_increase: float = 0.01
    """Largest canary error rate minus baseline error rate tolerated."""
    max_p50_ratio: float = 2.0
    """Canary p50 latency may be at most this times the baseline's (plus slack)."""
    max_p99_ratio: float = 3.0
    """Canary p99 latency may be at most this times the baseline's (plus slack)."""
    latency_slack_ms: float = 20.0
    """Absolute latency slack, so loopback jitter on tiny latencies does not fail a canary."""
    max_untrimmed_share_increase: float = 0.01
    """Largest share of a model's requests a canary root may resolve untrimmed beyond the
    baseline's; more means the package turned trimming off for it (a critical FAIL)."""
    max_bytes_ratio: float = 1.5
    """A canary root's root->leaf wire bytes per request may be at most this times the baseline's."""
    pass_score: float = 90.0
    """Score at or above which the verdict is PASS."""
    marginal_score: float = 60.0
    """Score at or above which (and below pass_score) the verdict is MARGINAL."""
    on_marginal: str = "rollback"
    """What a MARGINAL verdict does: "rollback" or "proceed"."""

    def __post_init__(self) -> None:
        for name in ("requests", "concurrency", "candidates_per_request", "min_samples", "warmup_requests"):
            value = getattr(self, name)
            low = 0 if name == "warmup_requests" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PlanError(f"analysis.{name} must be an integer >= {low}, got {value!r}")
        for name in ("user_ids", "item_ids"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi):
                raise PlanError(f"analysis.{name} must be [lo, hi) with 0 <= lo < hi, got {[lo, hi]!r}")
        _finite("request_timeout_s", self.request_timeout_s, lo=0.0, lo_open=True)
        _finite("alpha", self.alpha, lo=0.0, hi=0.5, lo_open=True)
        _finite("max_effect_size", self.max_effect_size, lo=0.0, hi=1.0)
        _finite("max_score_shift", self.max_score_shift, lo=0.0, hi=1.0)
        _finite("max_error_rate_increase", self.max_error_rate_increase, lo=0.0, hi=1.0)
        _finite("max_p50_ratio", self.max_p50_ratio, lo=1.0)
        _finite("max_p99_ratio", self.max_p99_ratio, lo=1.0)
        _finite("latency_slack_ms", self.latency_slack_ms, lo=0.0)
        _finite("max_untrimmed_share_increase", self.max_untrimmed_share_increase, lo=0.0, hi=1.0)
        _finite("max_bytes_ratio", self.max_bytes_ratio, lo=1.0)
        _finite("pass_score", self.pass_score, lo=0.0, hi=100.0)
        _finite("marginal_score", self.marginal_score, lo=0.0, hi=100.0)
        if self.marginal_score > self.pass_score:
            raise PlanError(
                f"analysis.marginal_score ({self.marginal_score}) must be <= pass_score ({self.pass_score})"
            )
        if self.on_marginal not in ("rollback", "proceed"):
            raise PlanError(f"analysis.on_marginal must be 'rollback' or 'proceed', got {self.on_marginal!r}")


def _finite(name: str, value: object, *, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanError(f"analysis.{name} must be a finite number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        raise PlanError(f"analysis.{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated rollout plan."""

    path: Path
    bundle: str
    """Bundle the package must carry (and the key roots report in Root/Status)."""
    state_dir: Path
    """Where rollout state and backups persist (``rootleaf rollback`` reads it)."""
    canary: Role
    production: Role
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    verify_timeout_s: float = 30.0
    """How long a delivery may take to show up on every host before it counts as failed."""
    rpc_timeout_s: float = 5.0
    """Deadline of each verification RPC."""
    tls: TlsConfig = PLAINTEXT
    """Client TLS for every RPC to roots and leaves (verification, canary traffic)."""
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    """``[delivery]``: local directories (default) or Kubernetes objects."""
    waves: WavesConfig | None = None
    """``[waves]``: stages 4 and 5 in waves with bake and gates; None = all at once."""
    shadow: ShadowAnalysisConfig | None = None
    """``[shadow]``: stage 3 judges mirrored production traffic instead of synthetic requests."""

    def __post_init__(self) -> None:
        if not isinstance(self.tls, TlsConfig):
            raise PlanError(f"tls must be a TlsConfig, got {self.tls!r}")
        try:
            self.tls.check_client("tls")
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        if bundle_name_problem(self.bundle):
            raise PlanError(f"rollout.bundle {self.bundle!r} {bundle_name_problem(self.bundle)}")
        for name in ("verify_timeout_s", "rpc_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise PlanError(f"rollout.{name} must be in (0, 3600], got {value!r}")
        everyone = self.canary.roots + self.production.roots + self.canary.leaves + self.production.leaves
        if any(bool(t.namespace) != self.delivery.kubernetes for t in everyone):
            raise PlanError(f"delivery.kind {self.delivery.kind!r}: "
                            + ("every target needs a namespace" if self.delivery.kubernetes else
                               "namespace is only for delivery.kind 'kubernetes'"))
        files = [(r.namespace, r.bundle_file.resolve()) for r in self.canary.roots]
        repos = [(lf.namespace, lf.partition, lf.repo_dir.resolve()) for lf in self.canary.leaves]
        for root in self.production.roots:
            if (root.namespace, root.bundle_file.resolve()) in files:
                raise PlanError(f"production root bundle_file {root.namespace}:{root.bundle_file} is also a canary's")
        for leaf in self.production.leaves:
            if (leaf.namespace, leaf.partition, leaf.repo_dir.resolve()) in repos:
                raise PlanError(f"production leaf repo_dir {leaf.namespace}:{leaf.repo_dir} is also a canary's")
        for role_name, role in (("canary", self.canary), ("production", self.production)):
            for root in role.roots:
                if root.metrics_url is None:
                    raise PlanError(f"{role_name} root {root.target} needs metrics_url: the analysis "
                                    "judges every root of each side")


def _take(table: Mapping[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise PlanError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    return dict(table)


def _path(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise PlanError(f"{where} must be a non-empty path string, got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else base / p


# Where deploy/k8s mounts a bundle's ConfigMap, the root configs and a partition's models.
K8S_BUNDLE_FILE = "/etc/rootleaf/bundles/{bundle}/module_info.json"
K8S_CONFIG_DIR = "/etc/rootleaf/root"
K8S_REPO_DIR = "/models/{partition}"


def _role_from_tables(base: Path, table: Mapping[str, Any], where: str, bundle: str) -> Role:
    t = _take(table, where, {"roots", "leaves"})
    roots = []
    for i, r in enumerate(t.get("roots", [])):
        r = _take(r, f"{where}.roots[{i}]", {"target", "bundle_file", "config_dir", "metrics_url", "namespace"})
        if "namespace" in r:  # Kubernetes: the paths are the pod's (deploy/k8s/base/root.yaml)
            r.setdefault("bundle_file", K8S_BUNDLE_FILE.format(bundle=bundle))
            r.setdefault("config_dir", K8S_CONFIG_DIR)
        bundle_file = _path(base, r.get("bundle_file"), f"{where}.roots[{i}].bundle_file")
        config_dir = _path(base, r.get("config_dir", str(bundle_file.parent)), f"{where}.roots[{i}].config_dir")
        roots.append(_named(where + f".roots[{i}]", RootTarget, r.get("target"), bundle_file, config_dir,
                            r.get("metrics_url"), r.get("namespace", "")))
    leaves = []
    for i, lf in enumerate(t.get("leaves", [])):
        lf = _take(lf, f"{where}.leaves[{i}]", {"target", "repo_dir", "models", "metrics_url", "namespace", "partition"})
        if "namespace" in lf:
            lf.setdefault("repo_dir", K8S_REPO_DIR.format(partition=lf.get("partition", "")))
        repo = _path(base, lf.get("repo_dir"), f"{where}.leaves[{i}].repo_dir")
        models = lf.get("models", [])
        if not isinstance(models, list):
            raise PlanError(f"{where}.leaves[{i}].models must be a list of model names")
        leaves.append(_named(where + f".leaves[{i}]", LeafTarget, lf.get("target"), repo, tuple(models),
                             lf.get("metrics_url"), lf.get("namespace", ""), lf.get("partition", "")))
    return _named(where, Role, tuple(roots), tuple(leaves))


def _named(where: str, cls: Any, *args: Any) -> Any:
    """Construct ``cls`` and prefix any validation error with the plan location."""
    try:
        return cls(*args)
    except PlanError as exc:
        raise PlanError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise PlanError(f"{where}: {exc}") from None


def _role_from_cluster(cluster: Mapping[str, Any], role: str, bundle: str, source: Path) -> Role:
    try:
        desc = cluster["roles"][role]
        root = desc["root"]
        bundle_files = root["bundle_files"]
    except (KeyError, TypeError):
        raise PlanError(f"{source}: has no role {role!r} with a root (start it with --canary?)") from None
    if bundle not in bundle_files:
        raise PlanError(f"{source}: {role} root has no bundle {bundle!r} (has {sorted(bundle_files)})")
    roots = (
        _named(f"{role}.root", RootTarget, root["target"], Path(bundle_files[bundle]),
               Path(root["config_dir"]), root.get("metrics_url")),
    )
    leaves = tuple(
        _named(f"{role}.leaves", LeafTarget, lf["target"], Path(lf["repo_dir"]),
               tuple(lf.get("models", ())), lf.get("metrics_url"))
        for lf in desc.get("leaves", [])
        if lf.get("partition", bundle) == bundle
    )
    return _named(role, Role, roots, leaves)


def cluster_roles(cluster_path: Path, bundle: str) -> tuple[dict[str, Role], TlsConfig]:
    """The roles (production, canary: those present) a cluster description runs for
    ``bundle``, and the client TLS it names; raises ``PlanError``."""
    try:
        cluster = json.loads(cluster_path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"cluster file {cluster_path}: cannot read ({exc})") from None
    roles_doc = cluster.get("roles") if isinstance(cluster, dict) else None
    if not isinstance(roles_doc, dict):
        raise PlanError(f"cluster file {cluster_path}: no roles")
    roles = {
        role: _role_from_cluster(cluster, role, bundle, cluster_path)
        for role in ("production", "canary") if isinstance(roles_doc.get(role), dict) and roles_doc[role].get("root")
    }
    return roles, _tls(cluster.get("tls") or {}, cluster_path.parent, f"{cluster_path}: tls")


_ANALYSIS_TUPLES = {"user_ids", "item_ids", "models"}


def load_plan(path: str | Path) -> Plan:
    """Parse and validate a plan file; raises ``PlanError`` naming the bad field."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PlanError(f"plan {path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan {path}: not valid TOML ({exc})") from None
    base = path.parent.resolve()
    top = _take(doc, "plan", {"rollout", "targets", "canary", "production", "analysis", "tls",
                              "delivery", "waves", "shadow"})
    rollout = _take(top.get("rollout", {}), "rollout", {"bundle", "state_dir", "verify_timeout_s", "rpc_timeout_s"})
    if "bundle" not in rollout or "state_dir" not in rollout:
        raise PlanError("rollout: 'bundle' and 'state_dir' are required")
    bundle = rollout["bundle"]
    if not isinstance(bundle, str):
        raise PlanError(f"rollout.bundle must be a string, got {bundle!r}")
    targets = _take(top.get("targets", {}), "targets", {"cluster_file"})
    if "cluster_file" in targets:
        if "canary" in top or "production" in top:
            raise PlanError("targets.cluster_file and explicit [canary]/[production] tables are exclusive")
        cluster_path = _path(base, targets["cluster_file"], "targets.cluster_file")
        try:
            cluster = json.loads(cluster_path.read_text())
        except (OSError, ValueError) as exc:
            raise PlanError(f"targets.cluster_file {cluster_path}: cannot read ({exc})") from None
        canary = _role_from_cluster(cluster, "canary", bundle, cluster_path)
        production = _role_from_cluster(cluster, "production", bundle, cluster_path)
        cluster_tls = cluster.get("tls") if isinstance(cluster, dict) else None
        tls = _tls(cluster_tls or {}, cluster_path.parent, f"{cluster_path}: tls")
    else:
        if "canary" not in top or "production" not in top:
            raise PlanError("plan needs [targets] cluster_file or both [canary] and [production]")
        canary = _role_from_tables(base, top["canary"], "canary", bundle)
        production = _role_from_tables(base, top["production"], "production", bundle)
        tls = PLAINTEXT
    if "tls" in top:
        tls = _tls(top["tls"], base, "tls")
    known = {f.name for f in fields(AnalysisConfig)}
    analysis_raw = _take(top.get("analysis", {}), "analysis", known)
    for key in _ANALYSIS_TUPLES & set(analysis_raw):
        if not isinstance(analysis_raw[key], list):
            raise PlanError(f"analysis.{key} must be a list, got {analysis_raw[key]!r}")
        analysis_raw[key] = tuple(analysis_raw[key])
    for key in ("user_ids", "item_ids"):
        if key in analysis_raw and len(analysis_raw[key]) != 2:
            raise PlanError(f"analysis.{key} must be [lo, hi], got {list(analysis_raw[key])!r}")
    analysis = _analysis(analysis_raw)
    extra = {k: rollout[k] for k in ("verify_timeout_s", "rpc_timeout_s") if k in rollout}
    state_dir = _path(base, rollout["state_dir"], "rollout.state_dir")
    try:
        fleet = {
            "delivery": from_table(DeliveryConfig, top.get("delivery", {}), "delivery"),
            "waves": from_table(WavesConfig, top["waves"], "waves") if "waves" in top else None,
            "shadow": from_table(ShadowAnalysisConfig, top["shadow"], "shadow") if "shadow" in top else None,
        }
    except FleetConfigError as exc:
        raise PlanError(str(exc)) from None
    try:
        return Plan(path.resolve(), bundle, state_dir, canary, production, analysis, tls=tls, **extra, **fleet)
    except TypeError as exc:
        raise PlanError(f"rollout: {exc}") from None


def _tls(table: object, base: Path, where: str) -> TlsConfig:
    if not isinstance(table, Mapping):
        raise PlanError(f"{where} must be a table")
    try:
        return TlsConfig.from_mapping(table, where).resolve(base)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def _analysis(values: Mapping[str, Any]) -> AnalysisConfig:
    try:
        return AnalysisConfig(**values)
    except TypeError as exc:
        raise PlanError(f"analysis: {exc}") from None
