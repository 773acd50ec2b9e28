"""The shadow mirror against a canary root on loopback gRPC: the production side never waits
for it, and its rate and in-flight bounds hold. The canary here is an in-process Root
service whose answers the test holds back or releases (a slow or dead canary on demand)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import numpy as np
from prometheus_client import REGISTRY

from protos.rootleaf.v1 import root_pb2
from root.config import ShadowConfig
from root.shadow import SHADOW_METADATA, ShadowMirror
from wire.codec import encode
from tests.waiting import eventually_async

WAIT_S = 10.0


def _answer(request_id: str, value: float) -> root_pb2.ScoreResponse:
    out = root_pb2.ScoreResponse(request_id=request_id)
    out.results.add(model="m", version="1").outputs.append(encode("s", np.full(4, value, dtype=np.float32)))
    return out


class Canary:
    """Root/Score that records each call and answers once ``release`` is set."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.release = asyncio.Event()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def score(self, request: root_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> root_pb2.ScoreResponse:
        self.calls.append((request.request_id, dict(context.invocation_metadata() or ())))
        await self.release.wait()
        return _answer(request.request_id, self.value)

    async def serve(self) -> tuple[grpc.aio.Server, str]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rootleaf.v1.Root", {
            "Score": grpc.unary_unary_rpc_method_handler(
                self.score, request_deserializer=root_pb2.ScoreRequest.FromString,
                response_serializer=root_pb2.ScoreResponse.SerializeToString)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, f"127.0.0.1:{port}"


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_mirror_is_bounded_in_flight_and_compares_answers() -> None:
    async def scenario() -> None:
        canary = Canary(0.5)
        server, target = await canary.serve()
        mirror = ShadowMirror(ShadowConfig(target=target, sample=1.0, max_in_flight=2, max_per_s=1000.0))
        sent, dropped = _count("rootleaf_root_shadow_requests_total", outcome="sent"), \
            _count("rootleaf_root_shadow_requests_total", outcome="dropped_in_flight")
        match, differ = _count("rootleaf_root_shadow_results_total", model="m", outcome="match"), \
            _count("rootleaf_root_shadow_results_total", model="m", outcome="differ")
        try:
            for i in range(5):  # returns at once each time although the canary answers nothing yet
                mirror.offer(root_pb2.ScoreRequest(request_id=f"r{i}"), _answer(f"r{i}", 0.5 if i == 0 else 0.9))
            assert mirror.in_flight == 2
            assert _count("rootleaf_root_shadow_requests_total", outcome="sent") - sent == 2
            assert _count("rootleaf_root_shadow_requests_total", outcome="dropped_in_flight") - dropped == 3
            await eventually_async(lambda: len(canary.calls) == 2, "both calls mirrored to the canary", WAIT_S)
            assert all(meta.get(SHADOW_METADATA[0]) == SHADOW_METADATA[1] for _, meta in canary.calls)
            canary.release.set()
            await eventually_async(lambda: mirror.in_flight == 0, "the mirror idle", WAIT_S)
            # r0: production 0.5 vs canary 0.5; r1: production 0.9 vs canary 0.5
            assert _count("rootleaf_root_shadow_results_total", model="m", outcome="match") - match == 1
            assert _count("rootleaf_root_shadow_results_total", model="m", outcome="differ") - differ == 1
        finally:
            await mirror.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_mirror_rate_bound_and_sample() -> None:
    async def scenario() -> None:
        canary = Canary(0.5)
        canary.release.set()
        server, target = await canary.serve()
        now = [100.0]
        mirror = ShadowMirror(ShadowConfig(target=target, sample=1.0, max_per_s=3.0, max_in_flight=100),
                              clock=lambda: now[0])
        sent, dropped = _count("rootleaf_root_shadow_requests_total", outcome="sent"), \
            _count("rootleaf_root_shadow_requests_total", outcome="dropped_rate")
        try:
            for i in range(10):
                mirror.offer(root_pb2.ScoreRequest(request_id=f"a{i}"), _answer(f"a{i}", 0.5))
            now[0] += 1.0  # one second later the bucket holds 3 again
            for i in range(10):
                mirror.offer(root_pb2.ScoreRequest(request_id=f"b{i}"), _answer(f"b{i}", 0.5))
            assert _count("rootleaf_root_shadow_requests_total", outcome="sent") - sent == 6
            assert _count("rootleaf_root_shadow_requests_total", outcome="dropped_rate") - dropped == 14
            await eventually_async(lambda: mirror.in_flight == 0, "the mirror idle", WAIT_S)
            sampled = ShadowMirror(ShadowConfig(target=target, sample=0.25, max_in_flight=100), rng=random.Random(3))
            draws = random.Random(3)
            expected = sum(1 for _ in range(40) if draws.random() < 0.25)
            before = _count("rootleaf_root_shadow_requests_total", outcome="sent")
            for i in range(40):
                sampled.offer(root_pb2.ScoreRequest(request_id=f"s{i}"), _answer(f"s{i}", 0.5))
            assert _count("rootleaf_root_shadow_requests_total", outcome="sent") - before == expected
            await sampled.close()
        finally:
            await mirror.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_dead_canary_fails_nothing_on_the_production_side() -> None:
    async def scenario() -> None:
        canary = Canary(0.5)
        server, target = await canary.serve()
        await server.stop(None)  # nothing listens there any more
        mirror = ShadowMirror(ShadowConfig(target=target, sample=1.0, timeout_s=1.0))
        errors = _count("rootleaf_root_shadow_results_total", model="m", outcome="canary_error")
        try:
            mirror.offer(root_pb2.ScoreRequest(request_id="d"), _answer("d", 0.5))
            await eventually_async(lambda: mirror.in_flight == 0, "the mirror idle", WAIT_S)
            assert _count("rootleaf_root_shadow_results_total", model="m", outcome="canary_error") - errors == 1
        finally:
            await mirror.close()

    asyncio.run(scenario())
