"""OpenTelemetry across the tiers, on real processes: a root and its leaves export over
OTLP/gRPC to a real receiver (tests/otlp_receiver.py); one client call carrying a W3C
``traceparent`` yields one trace whose spans cover the root's stages and the leaf's, each
with the right parent. The leaves sample nothing of their own (ratio 0): their spans exist
only because the root passed the sampled context on."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.local_cluster import LocalCluster
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
UNSAMPLED_TRACE = "0af7651916cd43dd8448eb211c80319c"
WAIT_S = 60.0
ROOT_STAGES = {"validate", "resolve", "fetch", "pack", "partition", "merge"}
LEAF_STAGES = {"admit", "decode", "queue", "forward", "encode"}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, OtlpReceiver]]:
    with OtlpReceiver() as receiver:
        cluster = LocalCluster(
            "ci",
            Path(tmp_path_factory.mktemp("tracing")),
            root_overrides={"tracing": {"endpoint": receiver.endpoint, "sample_ratio": 1.0}},
            leaf_args=("--torch-threads", "1", "--trace-endpoint", receiver.endpoint, "--trace-sample-ratio", "0"),
        )
        with cluster:
            yield cluster, receiver


def score(target: str, traceparent: str) -> root_pb2.ScoreResponse:
    with grpc.insecure_channel(target) as channel:
        request = root_pb2.ScoreRequest(
            request_id="traced", user_id=5, candidate_ids=[1, 2, 3, 4], models=[root_pb2.ModelRef(name="m_a")]
        )
        response: root_pb2.ScoreResponse = root_pb2_grpc.RootStub(channel).Score(
            request, timeout=20, metadata=(("traceparent", traceparent),), wait_for_ready=True
        )
        return response


def trace_spans(receiver: OtlpReceiver, trace_id: str, leaf_stages: set[str]) -> list[ReceivedSpan]:
    """The trace's spans once the leaf's stages have all arrived (bounded wait)."""
    def of_trace() -> list[ReceivedSpan]:
        return [s for s in receiver.spans() if s.trace_id == trace_id]

    def complete() -> list[ReceivedSpan]:
        spans = of_trace()
        names = {s.name for s in spans}
        whole = leaf_stages <= names and ROOT_STAGES <= names and "rootleaf.v1.Root/Score" in names
        return spans if whole else []

    return eventually(complete, lambda: f"spans of trace {trace_id} so far: {sorted({s.name for s in of_trace()})}",
                      WAIT_S, every_s=0.2)


def test_one_call_is_one_trace_across_root_and_leaf(traced: tuple[LocalCluster, OtlpReceiver]) -> None:
    cluster, receiver = traced
    target = cluster.root().target
    unsampled = score(target, f"00-{UNSAMPLED_TRACE}-{CLIENT_SPAN}-00")
    assert unsampled.results[0].error_code == 0
    response = score(target, f"00-{TRACE_ID}-{CLIENT_SPAN}-01")
    assert response.results[0].error_code == 0
    spans = trace_spans(receiver, TRACE_ID, LEAF_STAGES)
    by_id = {s.span_id: s for s in spans}

    (root_server,) = [s for s in spans if s.name == "rootleaf.v1.Root/Score"]
    assert root_server.parent_span_id == CLIENT_SPAN and root_server.service == "rootleaf-root"
    root_children = [s for s in spans if s.parent_span_id == root_server.span_id]
    assert {s.name for s in root_children} == ROOT_STAGES
    fetches = [s for s in root_children if s.name == "fetch"]
    assert sorted(s.attributes["entity"] for s in fetches) == ["candidate", "request"]
    assert all("cache.hits" in s.attributes and "cache.misses" in s.attributes for s in fetches)
    (partition,) = [s for s in root_children if s.name == "partition"]
    assert partition.attributes["partition"] == "alpha"

    # The leaf's server span is the child of the root's partition call: the traceparent
    # crossed the hop.
    (leaf_server,) = [s for s in spans if s.name == "rootleaf.v1.Leaf/ScorePartition"]
    assert leaf_server.parent_span_id == partition.span_id and leaf_server.service == "rootleaf-leaf"
    leaf_children = [s for s in spans if s.parent_span_id == leaf_server.span_id]
    assert sorted(s.name for s in leaf_children) == sorted(LEAF_STAGES)
    forward = next(s for s in leaf_children if s.name == "forward")
    assert forward.attributes["batch.candidates"] >= 4

    # Every span of the trace hangs off the client's span: one tree, nothing orphaned.
    for s in spans:
        node = s
        for _ in range(len(spans)):
            if node.parent_span_id == CLIENT_SPAN:
                break
            node = by_id[node.parent_span_id]
        else:
            raise AssertionError(f"span {s.name} does not reach the client's span")
    # The unsampled call recorded nothing, anywhere (spans are only exported when sampled).
    assert not [s for s in receiver.spans() if s.trace_id == UNSAMPLED_TRACE]


def _count(metrics_url: str, name: str, labels: dict[str, str]) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_stage_histograms_by_model_and_version(traced: tuple[LocalCluster, OtlpReceiver]) -> None:
    cluster, _ = traced
    response = score(cluster.root().target, f"00-{UNSAMPLED_TRACE}-{CLIENT_SPAN}-00")
    version = response.results[0].version
    root_url = cluster.root().metrics_url
    for stage in ("fetch", "leaf"):
        labels = {"model": "m_a", "version": version, "stage": stage}
        assert _count(root_url, "rootleaf_root_model_stage_seconds_count", labels) >= 1, stage
    (leaf,) = [info for info in cluster.leaves() if "m_a" in info.models]
    for stage in ("queue", "forward"):
        labels = {"model": "m_a", "version": version, "stage": stage}
        assert _count(leaf.metrics_url, "rootleaf_leaf_stage_seconds_count", labels) >= 1, stage
