"""Fuzzed requests against a real root and real leaves: hypothesis strategies over the
protobuf messages and over raw bytes (identity serializer, through a real channel). Only
documented status codes come back, every call has a timeout, and the servers stay up.
``--long`` runs ten times as many cases."""

from __future__ import annotations

from typing import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wire import codec
from protos.rootleaf.v1 import leaf_pb2, root_pb2, tensor_pb2
from tests.service.test_root_service import Cluster, LoopThread, build_cluster, close_cluster

TIMEOUT_S = 5.0
ROOT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# A leaf also refuses a named version it has not loaded (documented in leaf.proto).
LEAF_CODES = ROOT_CODES | {grpc.StatusCode.FAILED_PRECONDITION}
MODELS = ["m_a", "m_b", "m_c", "m_full", "nope", ""]
UNDECODABLE = b"\xff"  # field 31 with wire type 7: no protobuf message parses it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    loop = LoopThread()
    c = build_cluster(tmp_path_factory.mktemp("fuzz"), loop)
    try:
        yield c
    finally:
        close_cluster(c)
        loop.close()


@pytest.fixture(scope="module")
def targets(cluster: Cluster) -> tuple[str, str]:
    _, port = cluster.loop.run(cluster.start_root(cluster.base_config(max_in_flight=64)))
    return f"127.0.0.1:{port}", f"127.0.0.1:{cluster.leaves['pa'][1]}"


def _cases(request: pytest.FixtureRequest, n: int) -> int:
    return n * 10 if request.config.getoption("--long") else n


tensors = st.builds(
    tensor_pb2.Tensor,
    name=st.sampled_from(["u_s0", "c_r0", "c_ids", "x", "", "u_emb"]) | st.text(max_size=8),
    dtype=st.integers(0, 12),
    shape=st.lists(st.integers(0, 2**40), max_size=4) | st.lists(st.integers(0, 8), max_size=3),
    encoding=st.integers(0, 3),
    raw_size=st.integers(0, 2**40) | st.integers(0, 64),
    data=st.binary(max_size=64),
)
score_requests = st.builds(
    root_pb2.ScoreRequest,
    request_id=st.text(max_size=8),
    user_id=st.integers(0, 2**64 - 1),
    candidate_ids=st.lists(st.integers(0, 2**64 - 1), max_size=40),
    models=st.lists(st.builds(root_pb2.ModelRef, name=st.sampled_from(MODELS)), max_size=4),
    request_features=st.lists(tensors, max_size=3),
)
leaf_requests = st.builds(
    leaf_pb2.LeafRequest,
    request_id=st.text(max_size=8),
    model=st.sampled_from(["m_a", "m_b", "nope", ""]),
    version=st.sampled_from(["", "1", "9"]),
    num_candidates=st.integers(0, 2**31) | st.integers(0, 20),
    features=st.lists(tensors, max_size=6),
)


def _call(target: str, method: str, payload: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            raw(payload, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _alive(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _run(target: str, method: str, strategy: st.SearchStrategy[bytes], allowed: set[grpc.StatusCode], n: int,
         min_outcomes: int = 2) -> None:
    """``n`` fuzzed calls plus one undecodable payload: every answer is allowed, the server
    stays up, malformed bytes are answered INVALID_ARGUMENT, and at least ``min_outcomes``
    distinct codes came back (the fuzzer got past the first check)."""
    codes: set[grpc.StatusCode] = set()

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    @example(UNDECODABLE)
    def case(payload: bytes) -> None:
        code = _call(target, method, payload)
        codes.add(code)
        assert code is grpc.StatusCode.OK or code in allowed, (code, payload[:200])

    case()
    _alive(target)
    assert grpc.StatusCode.INVALID_ARGUMENT in codes, codes  # UNKNOWN if gRPC parsed it itself
    assert len(codes) >= min_outcomes, codes


def test_fuzz_root_messages(targets: tuple[str, str], request: pytest.FixtureRequest) -> None:
    _run(targets[0], "/rootleaf.v1.Root/Score", score_requests.map(lambda m: m.SerializeToString()), ROOT_CODES,
         _cases(request, 600))


def test_fuzz_root_raw_bytes(targets: tuple[str, str], request: pytest.FixtureRequest) -> None:
    _run(targets[0], "/rootleaf.v1.Root/Score", st.binary(max_size=256), ROOT_CODES, _cases(request, 400),
         min_outcomes=1)  # random bytes rarely parse: malformed is their one answer


def test_fuzz_leaf_messages(targets: tuple[str, str], request: pytest.FixtureRequest) -> None:
    _run(targets[1], "/rootleaf.v1.Leaf/Score", leaf_requests.map(lambda m: m.SerializeToString()), LEAF_CODES,
         _cases(request, 600))


def test_fuzz_leaf_raw_bytes(targets: tuple[str, str], request: pytest.FixtureRequest) -> None:
    _run(targets[1], "/rootleaf.v1.Leaf/Score", st.binary(max_size=256), LEAF_CODES, _cases(request, 400),
         min_outcomes=1)


def _leaf_code(target: str, request: leaf_pb2.LeafRequest) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/rootleaf.v1.Leaf/Score", request_serializer=None, response_deserializer=None)
        try:
            call(request.SerializeToString(), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""  # type: ignore[no-any-return]
    return grpc.StatusCode.OK, ""


def _m_a_request(**replace: tensor_pb2.Tensor) -> leaf_pb2.LeafRequest:
    arrays = {"u_s0": np.ones((1,), np.float32), "u_emb": np.ones((1, 8), np.float32),
              **{f"c_r{i}": np.ones((4,), np.float32) for i in range(4)}, "c_ids": np.ones((4, 4), np.int32)}
    tensors = [replace.get(name) or codec.encode(name, a, "none") for name, a in arrays.items()]
    return leaf_pb2.LeafRequest(model="m_a", num_candidates=4, features=tensors)


def test_hostile_payloads_have_clear_outcomes(targets: tuple[str, str], cluster: Cluster) -> None:
    root, leaf = targets
    assert _leaf_code(leaf, _m_a_request())[0] is grpc.StatusCode.OK
    # Decompression bomb: 1 KiB of LZ4 that claims 8 GiB -> rejected before allocation.
    bomb = codec.encode("c_r0", np.zeros(256, np.float32), "lz4_always")
    bomb.raw_size = 8 * 1024**3
    bomb.shape[:] = [2 * 1024**3]
    code, details = _leaf_code(leaf, _m_a_request(c_r0=bomb))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "c_r0" in details
    # A huge declared shape with a tiny payload.
    huge = tensor_pb2.Tensor(name="c_r1", dtype=codec.DType.FLOAT32, shape=[2**31, 2**31], data=b"\0" * 8)
    code, details = _leaf_code(leaf, _m_a_request(c_r1=huge))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "c_r1" in details
    # Thousands of tensors (beyond max_tensors = 4096).
    many = [codec.encode(f"t{i}", np.zeros((1,), np.float32), "none") for i in range(5000)]
    code, details = _leaf_code(leaf, leaf_pb2.LeafRequest(model="m_a", num_candidates=1, features=many))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    # A huge candidate count at the leaf, and a huge candidate list at the root.
    code, _ = _leaf_code(leaf, leaf_pb2.LeafRequest(model="m_a", num_candidates=2**31 - 1))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    big = root_pb2.ScoreRequest(user_id=1, candidate_ids=list(range(100_000)), models=[root_pb2.ModelRef(name="m_a")])
    assert _call(root, "/rootleaf.v1.Root/Score", big.SerializeToString()) is grpc.StatusCode.INVALID_ARGUMENT
    # Duplicate client-supplied tensor names at the root; thousands of them.
    dup = root_pb2.ScoreRequest(user_id=1, candidate_ids=[1, 2], models=[root_pb2.ModelRef(name="m_a")])
    dup.request_features.extend([codec.encode("u_s0", np.ones((1,), np.float32))] * 2)
    assert _call(root, "/rootleaf.v1.Root/Score", dup.SerializeToString()) is grpc.StatusCode.INVALID_ARGUMENT
    flood = root_pb2.ScoreRequest(user_id=1, candidate_ids=[1, 2], models=[root_pb2.ModelRef(name="m_a")])
    flood.request_features.extend(codec.encode(f"x{i}", np.ones((1,), np.float32)) for i in range(5000))
    assert _call(root, "/rootleaf.v1.Root/Score", flood.SerializeToString()) in (
        grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    _alive(root)
    _alive(leaf)
