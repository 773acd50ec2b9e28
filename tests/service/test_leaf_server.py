"""Leaf served in-process on 127.0.0.1:0, called through the generated stub."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from leaf.config import LeafConfig
from harness.demo_model import build_demo_model
from leaf.export import export_model
from harness.leaf_hooks import DelayInterceptor, ObservedRequest, RecordingInterceptor
from leaf.server import create_server
from wire import codec
from wire.codec import DType
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc

T = TypeVar("T")

WIDTHS = {"user_age": 1, "user_emb": 4, "item_price": 1, "item_ids": 3}
OUTPUTS = ["ctr", "cvr"]


def export_demo(repo: Path, model: str, version: str, seed: int = 1) -> torch.jit.ScriptModule:
    module = build_demo_model(WIDTHS, [8], OUTPUTS, seed)
    export_model(module, repo / model / version, list(WIDTHS), OUTPUTS)
    return module


def features(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_age": np.array([[rng.integers(18, 80)]], dtype=np.int64),  # request-level
        "user_emb": rng.standard_normal((1, 4)).astype(np.float32),  # request-level
        "item_price": rng.random((n, 1)).astype(np.float32),
        "item_ids": rng.integers(0, 10**9, (n, 3)).astype(np.int64),
    }


def make_request(model: str, arrays: dict[str, np.ndarray], n: int, version: str = "", rid: str = "r") -> leaf_pb2.LeafRequest:
    request = leaf_pb2.LeafRequest(request_id=rid, model=model, version=version, num_candidates=n)
    request.features.extend(codec.encode(name, a) for name, a in arrays.items())
    return request


def expected_scores(module: torch.jit.ScriptModule, arrays: dict[str, np.ndarray], n: int) -> np.ndarray:
    inputs = {k: torch.from_numpy(a.copy()).expand(n, *a.shape[1:]) for k, a in arrays.items()}
    with torch.inference_mode():
        return module(inputs).numpy()


def scores_of(response: leaf_pb2.LeafResponse) -> np.ndarray:
    assert [t.name for t in response.outputs] == OUTPUTS
    return np.stack([codec.decode(t) for t in response.outputs], axis=1)


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(body(), timeout=60))


class Leaf:
    """A started leaf, a channel and a stub; use with ``async with``."""

    def __init__(
        self,
        config: LeafConfig,
        observer: Callable[[ObservedRequest], None] | None = None,
        delay_ms: float = 0.0,
    ) -> None:
        self.config = config
        self.interceptors: list[grpc.aio.ServerInterceptor] = []
        if observer is not None:
            self.interceptors.append(RecordingInterceptor([observer]))
        if delay_ms:
            self.interceptors.append(DelayInterceptor(delay_ms / 1000.0))

    async def __aenter__(self) -> "Leaf":
        self.server, self.port = create_server(self.config, interceptors=self.interceptors)
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = leaf_pb2_grpc.LeafStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(1.0)


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_scores_equal_direct_run_with_broadcast_and_extra_features(tmp_path: Path) -> None:
    module = export_demo(tmp_path, "direct", "1")
    seen: list[ObservedRequest] = []

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0), seen.append) as leaf:
            health = health_pb2_grpc.HealthStub(leaf.channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service="rootleaf.v1.Leaf"))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            n = 7
            arrays = features(n)
            extra = {"unused_a": np.ones((n, 5), np.float32), "unused_b": np.zeros((1, 2), np.int32)}
            request = make_request("direct", {**extra, **arrays}, n, rid="req-1")
            response = await leaf.stub.Score(request)
            assert response.model == "direct" and response.version == "1"
            assert all(t.dtype == DType.FLOAT32 and list(t.shape) == [n] for t in response.outputs)
            np.testing.assert_allclose(scores_of(response), expected_scores(module, arrays, n), rtol=1e-6)
            listed = await leaf.stub.ListModels(leaf_pb2.ListModelsRequest())
            (info,) = listed.models
            assert info.name == "direct" and list(info.versions) == ["1"]
            assert list(info.input_names) == list(WIDTHS) and list(info.output_names) == OUTPUTS

    run(body)
    (observed,) = seen
    assert observed.request_id == "req-1" and observed.version_served == "1"
    assert observed.feature_names == ("unused_a", "unused_b", *WIDTHS)
    assert observed.num_candidates == 7 and observed.wire_bytes > 0


def test_batching_merges_concurrent_requests_and_splits_rows(tmp_path: Path) -> None:
    module = export_demo(tmp_path, "batched", "1", seed=5)
    sizes = [1, 2, 3, 17, 64, 255, 1000, 1, 4096, 9]

    async def body() -> None:
        # A generous delay so concurrent requests reliably land in one batch.
        config = LeafConfig(tmp_path, max_queue_delay_ms=50, max_batch_candidates=8192)
        async with Leaf(config) as leaf:
            forwards = sample("rootleaf_leaf_batch_requests_count", {"model": "batched"})
            merged = sample("rootleaf_leaf_batch_requests_sum", {"model": "batched"})
            inputs = [features(n, seed=i) for i, n in enumerate(sizes)]
            responses = await asyncio.gather(
                *(leaf.stub.Score(make_request("batched", a, n, rid=f"b{i}")) for i, (a, n) in enumerate(zip(inputs, sizes)))
            )
            for arrays, n, response in zip(inputs, sizes, responses):
                assert len(response.outputs[0].shape) == 1 and response.outputs[0].shape[0] == n
                np.testing.assert_allclose(
                    scores_of(response), expected_scores(module, arrays, n), rtol=1e-5, atol=1e-6
                )
            forwards = sample("rootleaf_leaf_batch_requests_count", {"model": "batched"}) - forwards
            merged = sample("rootleaf_leaf_batch_requests_sum", {"model": "batched"}) - merged
            assert merged == len(sizes)
            assert forwards < len(sizes), "concurrent requests were not merged"

    run(body)


def test_batch_limit_and_merging_off(tmp_path: Path) -> None:
    export_demo(tmp_path, "capped", "1")
    sizes = [40, 40, 40, 150, 1]

    async def body() -> None:
        for cap in (0, 100):
            config = LeafConfig(tmp_path, max_queue_delay_ms=30, max_batch_candidates=cap)
            async with Leaf(config) as leaf:
                labels = {"model": "capped"}
                forwards = sample("rootleaf_leaf_batch_candidates_count", labels)
                small = sample("rootleaf_leaf_batch_candidates_bucket", {**labels, "le": "128.0"})
                await asyncio.gather(*(leaf.stub.Score(make_request("capped", features(n), n)) for n in sizes))
                forwards = sample("rootleaf_leaf_batch_candidates_count", labels) - forwards
                small = sample("rootleaf_leaf_batch_candidates_bucket", {**labels, "le": "128.0"}) - small
                if cap == 0:
                    assert forwards == len(sizes)  # merging off: one forward per request
                else:
                    # 150 > cap runs alone; three 40s never fit into one forward of <= 100.
                    assert 3 <= forwards <= 4
                    assert small == forwards - 1

    run(body)
