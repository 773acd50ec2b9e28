"""Every bad input gets its status code, and the leaf stays up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Dict

import grpc
import numpy as np
import pytest
import torch

from leaf.config import LeafConfig
from leaf.export import export_model
from wire import codec
from wire.codec import DType, Encoding
from protos.rootleaf.v1 import leaf_pb2
from tests.service.test_leaf_server import Leaf, export_demo, features, make_request, run, sample
from tests.waiting import eventually_async


class Fragile(torch.nn.Module):
    """log(x): x == 0 gives -inf (non-finite); a negative sum makes it raise."""

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features["x"]
        if bool(x.sum() < -1000.0):
            raise RuntimeError("input rejected by the model")
        return torch.log(x.reshape(x.shape[0]))


class WrongShape(torch.nn.Module):
    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return features["x"].reshape(-1, 1).repeat(1, 3)


async def expect(call: "grpc.aio.UnaryUnaryCall", code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    for word in words:
        assert word in details, details
    return details


def build_repo(repo: Path) -> None:
    export_demo(repo, "demo", "1")
    export_model(Fragile(), repo / "fragile" / "1", ["x"], ["score"])
    export_model(WrongShape(), repo / "wrongshape" / "1", ["x"], ["score"])
    export_model(Fragile(), repo / "typed" / "1", ["x"], ["score"], input_dtypes={"x": "float32"})


def test_bad_inputs_map_to_status_codes(tmp_path: Path) -> None:
    build_repo(tmp_path)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            score = leaf.stub.Score
            good = features(4)
            await expect(score(make_request("nope", good, 4)), grpc.StatusCode.NOT_FOUND, "nope")
            partial = {k: v for k, v in good.items() if k != "item_ids"}
            await expect(score(make_request("demo", partial, 4)), grpc.StatusCode.INVALID_ARGUMENT, "item_ids", "missing")
            bad_lead = {**good, "item_price": np.ones((3, 1), np.float32)}
            await expect(score(make_request("demo", bad_lead, 4)), grpc.StatusCode.INVALID_ARGUMENT, "item_price", "leading dim 3")
            scalar = {**good, "item_price": np.float32(1.0).reshape(())}
            await expect(score(make_request("demo", scalar, 4)), grpc.StatusCode.INVALID_ARGUMENT, "item_price", "rank 0")
            await expect(score(make_request("demo", good, 0)), grpc.StatusCode.INVALID_ARGUMENT, "num_candidates")
            await expect(
                score(make_request("typed", {"x": np.ones((4, 1), np.float16)}, 4)),
                grpc.StatusCode.INVALID_ARGUMENT, "'x'", "FLOAT16", "FLOAT32",
            )
            # A corrupt LZ4 payload in a used feature is named; the same in an unused one is ignored.
            broken = codec.encode("item_ids", np.zeros((4, 3), np.int64), "lz4_always")
            broken.data = b"\xff" * len(broken.data)
            request = make_request("demo", {k: v for k, v in good.items() if k != "item_ids"}, 4)
            request.features.append(broken)
            await expect(score(request), grpc.StatusCode.INVALID_ARGUMENT, "item_ids", "LZ4")
            broken.name = "unused"
            request = make_request("demo", good, 4)
            request.features.append(broken)
            assert (await score(request)).version == "1"
            duplicate = make_request("demo", good, 4)
            duplicate.features.append(codec.encode("item_price", good["item_price"]))
            await expect(score(duplicate), grpc.StatusCode.INVALID_ARGUMENT, "item_price", "more than once")
            bad_size = make_request("demo", good, 4)
            bad_size.features[0].raw_size += 1
            await expect(score(bad_size), grpc.StatusCode.INVALID_ARGUMENT, "user_age")
            # Bytes that are not a LeafRequest at all.
            raw = leaf.channel.unary_unary("/rootleaf.v1.Leaf/Score")
            await expect(raw(b"\x0a\xff\xff\xff\xff\x0f"), grpc.StatusCode.INVALID_ARGUMENT, "malformed")
            # Model failures: INTERNAL naming the model.
            await expect(
                score(make_request("fragile", {"x": -np.ones((4, 1000), np.float32)[:, :1] * 5000}, 4)),
                grpc.StatusCode.INTERNAL, "fragile", "input rejected by the model",
            )
            await expect(
                score(make_request("fragile", {"x": np.zeros((4, 1), np.float32)}, 4)),
                grpc.StatusCode.INTERNAL, "fragile", "non-finite",
            )
            await expect(
                score(make_request("wrongshape", {"x": np.ones((4, 1), np.float32)}, 4)),
                grpc.StatusCode.INTERNAL, "wrongshape", "shape [4, 3]",
            )
            ok = await score(make_request("fragile", {"x": np.full((4, 1), np.e, np.float32)}, 4))
            np.testing.assert_allclose(codec.decode(ok.outputs[0]), np.ones(4), rtol=1e-6)
            assert sample("rootleaf_leaf_requests_total", {"model": "fragile", "version": "1", "code": "INTERNAL"}) == 2
            assert sample("rootleaf_leaf_requests_total", {"model": "_unknown", "version": "", "code": "NOT_FOUND"}) >= 1

    run(body)


def test_bfloat16_and_request_level_features(tmp_path: Path) -> None:
    export_model(Fragile(), tmp_path / "bf" / "1", ["x"], ["score"])

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            words = np.array([[0x4040]], dtype=np.uint16)  # 3.0 in bfloat16, request-level
            request = leaf_pb2.LeafRequest(model="bf", num_candidates=5)
            request.features.append(codec.encode("x", words, dtype=DType.BFLOAT16))
            response = await leaf.stub.Score(request)
            np.testing.assert_allclose(codec.decode(response.outputs[0]), np.full(5, np.log(3.0)), rtol=1e-2)  # log in bfloat16
            assert response.outputs[0].encoding == Encoding.RAW

    run(body)


HOLD_MS = 5000  # how long a lone request waits in the batcher's queue for company


def test_queue_full_and_expired_deadline(tmp_path: Path) -> None:
    export_demo(tmp_path, "slowq", "1")
    labels = {"model": "slowq"}

    async def body() -> None:
        # The first request waits in the queue for company; the queue holds one. The wait is
        # long so that the next request finds it there even on a busy machine.
        config = LeafConfig(tmp_path, max_queue_delay_ms=HOLD_MS, max_queue_requests=1)
        async with Leaf(config) as leaf:
            first = leaf.stub.Score(make_request("slowq", features(2), 2))
            await eventually_async(lambda: sample("rootleaf_leaf_queue_depth", labels) >= 1, "the first request queued")
            await expect(leaf.stub.Score(make_request("slowq", features(2), 2)), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
            assert (await first).version == "1"
            # A request whose deadline passes while queued is never run.
            forwards = sample("rootleaf_leaf_batch_candidates_count", labels)
            await expect(leaf.stub.Score(make_request("slowq", features(2), 2), timeout=0.1), grpc.StatusCode.DEADLINE_EXCEEDED)
            # It leaves the queue when the batch would go out (HOLD_MS), dropped, not run.
            await eventually_async(lambda: sample("rootleaf_leaf_queue_depth", labels) == 0, "the expired request dropped",
                                   HOLD_MS / 1000 + 30)
            assert sample("rootleaf_leaf_batch_candidates_count", labels) == forwards

    run(body)


def test_injected_delay_delays_and_expires_requests(tmp_path: Path) -> None:
    export_demo(tmp_path, "delayed", "1")
    labels = {"model": "delayed"}

    async def body() -> None:
        # The delay is far above what a call takes even on a busy machine: a deadline between
        # the two expires only because of the delay.
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0), delay_ms=3000) as leaf:
            assert (await leaf.stub.Score(make_request("delayed", features(3), 3))).version == "1"
            forwards = sample("rootleaf_leaf_batch_candidates_count", labels)
            await expect(leaf.stub.Score(make_request("delayed", features(3), 3), timeout=1.0), grpc.StatusCode.DEADLINE_EXCEEDED)
        # The server drained before stop returned: the expired request never reached the model.
        assert sample("rootleaf_leaf_batch_candidates_count", labels) == forwards

    run(body)


def _lz4_corrupt(name: str, array: np.ndarray) -> codec.Tensor:
    """A tensor whose header is well formed and whose LZ4 payload does not decode."""
    tensor = codec.encode(name, array, "lz4_always")
    tensor.data = b"\xff" * len(tensor.data)
    return tensor


def test_declared_sizes_are_checked_before_any_decoding(tmp_path: Path) -> None:
    export_demo(tmp_path, "sized", "1")
    labels = {"model": "sized"}
    limits = codec.DecodeLimits(max_total_raw_bytes=1024 * 1024)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0, decode_limits=limits)) as leaf:
            forwards = sample("rootleaf_leaf_batch_candidates_count", labels)
            # A few hundred bytes of [1, ...] inputs at a million candidates: 52 MB once broadcast.
            tiny = {"user_age": np.ones((1, 1), np.int64), "user_emb": np.ones((1, 4), np.float32),
                    "item_price": np.ones((1, 1), np.float32), "item_ids": np.ones((1, 3), np.int64)}
            await expect(leaf.stub.Score(make_request("sized", tiny, 1_000_000)),
                         grpc.StatusCode.INVALID_ARGUMENT, "1000000 candidates", "max_total_raw_bytes")
            # Over the total on declared sizes: rejected before the (corrupt) first input is decoded.
            big = {**features(4), "user_age": np.ones((1, 1), np.int64), "item_ids": np.ones((4, 40_000), np.int64)}
            request = make_request("sized", big, 4)
            request.features[0].CopyFrom(_lz4_corrupt("user_age", np.ones((1, 100), np.int64)))
            await expect(leaf.stub.Score(request), grpc.StatusCode.INVALID_ARGUMENT, "max_total_raw_bytes")
            assert sample("rootleaf_leaf_batch_candidates_count", labels) == forwards

    run(body)


def test_queue_full_and_inflight_bytes_are_answered_before_decoding(tmp_path: Path) -> None:
    export_demo(tmp_path, "gated", "1")
    labels = {"model": "gated"}

    async def body() -> None:
        # The first request waits in the queue for company; the queue holds one. The wait is
        # long so that the next request finds it there even on a busy machine.
        config = LeafConfig(tmp_path, max_queue_delay_ms=HOLD_MS, max_queue_requests=1)
        async with Leaf(config) as leaf:
            first = leaf.stub.Score(make_request("gated", features(2), 2))
            await eventually_async(lambda: sample("rootleaf_leaf_queue_depth", labels) >= 1, "the first request queued")
            corrupt = make_request("gated", features(2), 2)
            corrupt.features[3].CopyFrom(_lz4_corrupt("item_ids", np.ones((2, 3), np.int64)))
            await expect(leaf.stub.Score(corrupt), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
            assert (await first).version == "1"
        # Bytes in flight: the queued request holds the message it came in and its declared
        # bytes until it is answered.
        request_bytes = make_request("gated", features(2), 2).ByteSize() + 2 * (8 + 16 + 4 + 24)  # inputs at 2 rows
        limits = codec.DecodeLimits(max_total_raw_bytes=request_bytes)
        config = LeafConfig(tmp_path, max_queue_delay_ms=HOLD_MS, decode_limits=limits, max_inflight_bytes=request_bytes + 1)
        async with Leaf(config) as leaf:
            assert sample("rootleaf_leaf_inflight_bytes_limit", {}) == request_bytes + 1  # what alerts divide by
            rejected = sample("rootleaf_leaf_admission_rejected_total", {"reason": "inflight_bytes"})
            first = leaf.stub.Score(make_request("gated", features(2), 2))
            await eventually_async(lambda: sample("rootleaf_leaf_inflight_bytes", {}) >= request_bytes, "the first request's bytes held")
            await expect(leaf.stub.Score(corrupt), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_inflight_bytes")
            assert sample("rootleaf_leaf_admission_rejected_total", {"reason": "inflight_bytes"}) == rejected + 1
            assert (await first).version == "1"
            assert (await leaf.stub.Score(make_request("gated", features(2), 2))).version == "1"
            assert sample("rootleaf_leaf_inflight_bytes", {}) == 0

    run(body)


def test_a_bad_request_fails_alone_and_shapes_are_checked_per_request(tmp_path: Path) -> None:
    export_model(Fragile(), tmp_path / "fresh" / "1", ["x"], ["score"])
    export_model(Fragile(), tmp_path / "shaped" / "1", ["x"], ["score"], input_dtypes={"x": "float32"}, input_shapes={"x": [1]})
    good = {"x": np.full((4, 1), np.e, np.float32)}

    async def body() -> None:
        # Three 4-row requests fill a batch of 12 at once: they always run as one merged forward.
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=5000, max_batch_candidates=12)) as leaf:
            score = leaf.stub.Score
            # Before anything is known of "fresh": one request's trailing dim breaks the merge,
            # and one makes the merged forward raise; each reruns alone and only it fails.
            for bad, words in (({"x": np.ones((4, 2), np.float32)}, ("fresh",)),
                               ({"x": np.full((4, 1), -5000.0, np.float32)}, ("fresh", "input rejected"))):
                calls = [score(make_request("fresh", good, 4, rid="g1")), score(make_request("fresh", bad, 4, rid="bad")),
                         score(make_request("fresh", good, 4, rid="g2"))]
                first, _, last = await asyncio.gather(calls[0], expect(calls[1], grpc.StatusCode.INTERNAL, *words), calls[2])
                np.testing.assert_allclose(codec.decode(first.outputs[0]), np.ones(4), rtol=1e-6)
                np.testing.assert_allclose(codec.decode(last.outputs[0]), np.ones(4), rtol=1e-6)
            # Shapes and dtypes learned from the first successful forward are checked per request.
            await expect(score(make_request("fresh", {"x": np.ones((4, 2), np.float32)}, 4)),
                         grpc.StatusCode.INVALID_ARGUMENT, "'x'", "[2]", "[1]")
            await expect(score(make_request("fresh", {"x": np.ones((1, 3), np.float32)}, 4)),
                         grpc.StatusCode.INVALID_ARGUMENT, "'x'", "[3]")
            await expect(score(make_request("fresh", {"x": np.ones((4, 1), np.float64)}, 4)),
                         grpc.StatusCode.INVALID_ARGUMENT, "'x'", "FLOAT64", "FLOAT32")
            # Declared shapes are checked before the first forward.
            await expect(score(make_request("shaped", {"x": np.ones((4, 2), np.float32)}, 4)),
                         grpc.StatusCode.INVALID_ARGUMENT, "'x'", "[2]", "[1]")
            await expect(score(make_request("shaped", {"x": np.ones((4,), np.float32)}, 4)),
                         grpc.StatusCode.INVALID_ARGUMENT, "'x'", "[]", "[1]")

    run(body)
