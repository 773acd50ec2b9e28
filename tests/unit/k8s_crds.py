"""Structural schemas for the custom resources the manifests use, which kubernetes-validate
does not know: the Prometheus Operator's ``PrometheusRule`` and ``PodMonitor``, KEDA's
``ScaledObject``.

Written from the fields of their CRDs (monitoring.coreos.com/v1, keda.sh/v1alpha1), strict
like the rest (an unknown field fails), limited to what a manifest may set. Embedded core
types (object metadata, label selectors, HPA scaling behavior) are validated with the Kubernetes schemas by
wrapping them in a core object.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer", "minimum": 0}
# Prometheus Operator's Duration pattern.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def _strict(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_RULE = _strict(
    {
        "record": {"type": "string", "minLength": 1},
        "alert": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    ["expr"],
)
_RULE["oneOf"] = [{"required": ["record"]}, {"required": ["alert"]}]

PROMETHEUS_RULE_SPEC = _strict(
    {
        "groups": {
            "type": "array",
            "items": _strict(
                {
                    "name": {"type": "string", "minLength": 1},
                    "interval": _DURATION,
                    "query_offset": _DURATION,
                    "limit": _INT,
                    "labels": _STR_MAP,
                    "partial_response_strategy": {"type": "string"},
                    "rules": {"type": "array", "items": _RULE},
                },
                ["name"],
            ),
        }
    },
    [],
)

_RELABEL = _strict(
    {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": _INT,
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                            "lowercase", "uppercase", "keepequal", "dropequal"]},
    },
    [],
)

POD_MONITOR_SPEC = _strict(
    {
        "jobLabel": {"type": "string"},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "selector": {"type": "object"},  # a LabelSelector: checked with the core schema below
        "namespaceSelector": _strict({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}, []),
        "sampleLimit": _INT,
        "podMetricsEndpoints": {
            "type": "array",
            "items": _strict(
                {
                    "port": {"type": "string"},
                    "path": {"type": "string"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": _DURATION,
                    "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"},
                    "relabelings": {"type": "array", "items": _RELABEL},
                    "metricRelabelings": {"type": "array", "items": _RELABEL},
                },
                [],
            ),
        },
    },
    ["selector"],
)

SCALED_OBJECT_SPEC = _strict(
    {
        "scaleTargetRef": _strict(
            {"name": {"type": "string"}, "apiVersion": {"type": "string"}, "kind": {"type": "string"},
             "envSourceContainerName": {"type": "string"}},
            ["name"],
        ),
        "pollingInterval": _INT,
        "cooldownPeriod": _INT,
        "initialCooldownPeriod": _INT,
        "idleReplicaCount": _INT,
        "minReplicaCount": _INT,
        "maxReplicaCount": _INT,
        "fallback": _strict({"failureThreshold": _INT, "replicas": _INT, "behavior": {"type": "string"}},
                            ["failureThreshold", "replicas"]),
        "advanced": _strict(
            {
                "horizontalPodAutoscalerConfig": _strict(
                    {"name": {"type": "string"}, "behavior": {"type": "object"}}, []
                ),
                "restoreToOriginalReplicaCount": {"type": "boolean"},
            },
            [],
        ),
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": _strict(
                {
                    "type": {"type": "string"},
                    "name": {"type": "string"},
                    "metadata": _STR_MAP,  # every value a string: threshold: "4", not 4
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "useCachedMetrics": {"type": "boolean"},
                    "authenticationRef": _strict({"name": {"type": "string"}, "kind": {"type": "string"}}, ["name"]),
                },
                ["type", "metadata"],
            ),
        },
    },
    ["scaleTargetRef", "triggers"],
)

CUSTOM_KINDS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SPEC,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR_SPEC,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SPEC,
}


def is_custom(doc: dict[str, Any]) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS


def validate_custom(doc: dict[str, Any], k8s_version: str) -> None:
    """Raise when ``doc`` (a custom resource above) does not fit its schema."""
    spec_schema = CUSTOM_KINDS[(doc["apiVersion"], doc["kind"])]
    jsonschema.validate(doc, _strict(
        {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}, "spec": spec_schema},
        ["apiVersion", "kind", "metadata", "spec"],
    ))
    # Object metadata, checked as the core schema checks a ConfigMap's.
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
                                 k8s_version, strict=True)
    if "selector" in doc["spec"]:
        kubernetes_validate.validate(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "selector"},
             "spec": {"podSelector": doc["spec"]["selector"]}},
            k8s_version, strict=True,
        )
    behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        kubernetes_validate.validate(
            {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "behavior"},
             "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1, "behavior": behavior}},
            k8s_version, strict=True,
        )
