"""deploy/monitoring: the alerting and recording rules checked and unit-tested by the real
``promtool``, each alert shown to fire and to stay quiet (and its tests shown to fail when
the alert is broken), the PrometheusRule identical to the rules file, the dashboard's
queries valid PromQL, and every metric the rules, the dashboard and the autoscalers name
exported by the code (a renamed metric fails here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client import REGISTRY

import leaf.metrics  # noqa: F401  (registers the leaf's metrics)
import root.metrics  # noqa: F401
import root.redis_cluster_store  # noqa: F401
import root.redis_records  # noqa: F401
import trimmer.metrics  # noqa: F401
from deploy import prometheus_rule
from harness import monitor
from root.supervisor import WorkerCollector

MONITORING = prometheus_rule.MONITORING
RULES = prometheus_rule.RULES_FILE
RULES_TEST = MONITORING / "rules_test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"
PRODUCTION = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "overlays" / "production" / "autoscaling.yaml"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself makes, which the rules may name."""

# What the test substitutes for the dashboard's Grafana variables (tests/cluster too).
DASHBOARD_VARIABLES = {"$__rate_interval": "30s", "$namespace": ".*"}


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's prometheus package (./run test does, as root)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rules_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return doc


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rules_doc()["groups"] for rule in group["rules"]]


ALERTS = sorted(r["alert"] for r in all_rules() if "alert" in r)
RECORDED = {r["record"] for r in all_rules() if "record" in r}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query, Grafana variables substituted."""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(variable, value)
            yield panel["title"], expr


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _tests_of(alert: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_TEST.read_text())
    return [t for t in doc["tests"] if any(a["alertname"] == alert for a in t.get("alert_rule_test", []))]


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not(alert: str) -> None:
    checks = [a for t in _tests_of(alert) for a in t["alert_rule_test"] if a["alertname"] == alert]
    assert any(a.get("exp_alerts") for a in checks), f"{alert}: no test where it fires"
    assert any(not a.get("exp_alerts") for a in checks), f"{alert}: no test where it stays quiet"


@pytest.mark.parametrize("alert", ALERTS)
@pytest.mark.parametrize("broken", ["vector(0) > 1", "vector(1)"])
def test_an_alert_broken_fails_its_tests(alert: str, broken: str, tmp_path: Path) -> None:
    """Never firing (``vector(0) > 1``) or always firing (``vector(1)``, without the series'
    labels): the alert's own tests catch both, so they constrain it."""
    doc = rules_doc()
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        if rule.get("alert") == alert:
            rule["expr"] = broken
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": _tests_of(alert)}
    (tmp_path / "rules_test.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "rules_test.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, result.stdout


def test_prometheus_rule_carries_the_rules_file_unchanged() -> None:
    manifest = prometheus_rule.MANIFEST.read_text()
    assert manifest == prometheus_rule.render(RULES.read_text()), "stale: run python -m deploy.prometheus_rule"
    doc = yaml.safe_load(manifest)
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert doc["spec"]["groups"] == rules_doc()["groups"]
    assert prometheus_rule.main(["--check"]) == 0


def test_the_generator_refuses_a_rules_file_it_would_mangle() -> None:
    with pytest.raises(ValueError):
        prometheus_rule.render("groups: []\nother: 1\n")
    with pytest.raises(ValueError):
        prometheus_rule.render("# no groups\n")


def exported_names() -> set[str]:
    """Every sample name the code's registries export (a counter ``x`` as ``x_total``, a
    histogram as ``x_bucket``/``_sum``/``_count``), the root supervisor's own included."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    families = [*REGISTRY.collect(), *WorkerCollector(None).describe()]
    return {family.name + s for family in families for s in suffixes.get(family.type, ("",))}


def referenced_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside strings that start with
    ``rootleaf`` (recording rules are ``rootleaf:...``), plus Prometheus's own ``up``."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)  # label matchers
    tokens = set(re.findall(r"(?<![\w:$])[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return {t for t in tokens if t.startswith("rootleaf") or t in PROMETHEUS_OWN}


def _scaled_object_queries() -> list[str]:
    docs = [d for d in yaml.safe_load_all(PRODUCTION.read_text()) if d and d["kind"] == "ScaledObject"]
    return [t["metadata"]["query"] for d in docs for t in d["spec"]["triggers"]]


def test_every_metric_named_is_exported_by_the_code() -> None:
    known = exported_names() | RECORDED | PROMETHEUS_OWN
    exprs = [r["expr"] for r in all_rules()] + [e for _, e in dashboard_queries()] + _scaled_object_queries()
    named = set().union(*(referenced_names(e) for e in exprs))
    assert named - known == set()
    # The check has teeth: the names it found include the raw series of every tier.
    assert {"rootleaf_trimmer_bundle_healthy", "rootleaf_leaf_request_seconds_bucket",
            "rootleaf_root_worker_restarts_total", "rootleaf_leaf_inflight_bytes_limit"} <= named
    assert referenced_names('rate(rootleaf_root_renamed_total{code="x"}[5m])') - known == {"rootleaf_root_renamed_total"}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    # promtool parses each query as a recording rule.
    rules = [{"record": f"dashboard:q{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())]
    (tmp_path / "dashboard_rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", "dashboard_rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_its_section_in_the_docs() -> None:
    docs = DOCS.read_text()
    headings = {m.lower() for m in re.findall(r"^### (\w+)$", docs, flags=re.MULTILINE)}
    for rule in all_rules():
        if "alert" in rule:
            assert rule["annotations"]["runbook_url"] == f"docs/monitoring.md#{rule['alert'].lower()}"
            assert rule["alert"].lower() in headings, f"docs/monitoring.md has no section for {rule['alert']}"


def test_rootleaf_monitor_writes_a_config_promtool_accepts(tmp_path: Path) -> None:
    assert monitor.main(["--dir", str(tmp_path), "--config-only"]) == 1  # no cluster.json
    leaf = {"partition": "alpha", "metrics_url": "http://127.0.0.1:9201/metrics"}
    cluster = {"roles": {"production": {"root": {"metrics_url": "http://127.0.0.1:9200/metrics"},
                                        "leaves": [leaf, {**leaf, "metrics_url": "http://127.0.0.1:9202/metrics"}]},
                         "canary": {"root": None, "leaves": [{**leaf, "metrics_url": "http://127.0.0.1:9203/metrics"}]}}}
    (tmp_path / "cluster.json").write_text(json.dumps(cluster))
    assert monitor.main(["--dir", str(tmp_path), "--config-only", "--interval", "2"]) == 0
    config = tmp_path / "prometheus" / "prometheus.yml"
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout  # the shipped rules, loaded
    jobs = {job["job_name"]: job["static_configs"] for job in json.loads(config.read_text())["scrape_configs"]}
    assert jobs["rootleaf-root"] == [{"targets": ["127.0.0.1:9200"], "labels": {"track": "production"}}]
    assert [(c["targets"], c["labels"]) for c in jobs["rootleaf-leaf"]] == [
        (["127.0.0.1:9201"], {"track": "production", "partition": "alpha"}),
        (["127.0.0.1:9202"], {"track": "production", "partition": "alpha"}),
        (["127.0.0.1:9203"], {"track": "canary", "partition": "alpha"}),
    ]
