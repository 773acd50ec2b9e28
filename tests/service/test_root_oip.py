"""The root's Open Inference Protocol service in-process, in front of real in-process
leaves: typed contents and request features through ModelInfer score exactly as Root/Score,
and the protocol's errors get their codes."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from protos.inference import grpc_predict_v2_pb2 as oip_pb2
from protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
# The module's own root and leaves, built by test_root_service's fixtures.
from tests.service.test_root_service import Cluster, cluster, root_target, score  # noqa: F401


def call(cluster: Cluster, root_target: str, method: str, request: Any) -> Any:
    async def go() -> Any:
        async with grpc.aio.insecure_channel(root_target) as channel:
            return await getattr(oip_grpc.GRPCInferenceServiceStub(channel), method)(request, timeout=20)

    return cluster.loop.run(go())


def code_of(cluster: Cluster, root_target: str, request: oip_pb2.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call(cluster, root_target, "ModelInfer", request)
    return info.value.code(), info.value.details() or ""


def typed_request(model: str, user: int, cands: list[int], **features: np.ndarray) -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name=model, id="typed")
    request.inputs.add(name="candidate_ids", datatype="INT64", shape=[len(cands)]).contents.int64_contents.extend(cands)
    request.inputs.add(name="user_id", datatype="INT64", shape=[1]).contents.int64_contents.append(user)
    for name, array in features.items():
        tensor = request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request


def test_typed_contents_and_request_features_score_as_root_score(cluster: Cluster, root_target: str) -> None:
    cands = [5, 17, 0, 299]
    override = np.array([7.5], dtype=np.float32)
    answer = call(cluster, root_target, "ModelInfer", typed_request("m_a", 3, cands, u_s0=override))
    assert (answer.model_name, answer.model_version, answer.id) == ("m_a", "1", "typed")
    assert not answer.raw_output_contents
    (output,) = answer.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("score", "FP32", [4])
    got = np.asarray(output.contents.fp32_contents, dtype=np.float32)
    native = score(cluster, root_target, 3, np.array(cands, np.uint64), ["m_a"], request_features={"u_s0": override})
    np.testing.assert_array_equal(got, native["m_a"].outputs["score"])
    np.testing.assert_allclose(
        got, cluster.expected_scores("m_a", 3, np.array(cands, np.uint64), {"u_s0": override}), rtol=1e-6, atol=1e-7
    )


def test_readiness_and_metadata_from_bundles_and_partitions(cluster: Cluster, root_target: str) -> None:
    assert call(cluster, root_target, "ModelReady", oip_pb2.ModelReadyRequest(name="m_a")).ready
    assert call(cluster, root_target, "ModelReady", oip_pb2.ModelReadyRequest(name="m_a", version="1")).ready
    assert not call(cluster, root_target, "ModelReady", oip_pb2.ModelReadyRequest(name="m_a", version="2")).ready
    assert not call(cluster, root_target, "ModelReady", oip_pb2.ModelReadyRequest(name="nope")).ready
    meta = call(cluster, root_target, "ModelMetadata", oip_pb2.ModelMetadataRequest(name="m_a"))
    assert list(meta.versions) == ["1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [
        ("candidate_ids", "INT64", [-1]), ("user_id", "INT64", [1])
    ]
    assert [(o.name, o.datatype) for o in meta.outputs] == [("score", "FP32")]


@pytest.mark.parametrize(
    "change, code, fragment",
    [
        (lambda r: r.inputs.__delitem__(0), grpc.StatusCode.INVALID_ARGUMENT, "candidate_ids"),
        (lambda r: r.inputs[1].contents.int64_contents.__setitem__(0, -3), grpc.StatusCode.INVALID_ARGUMENT, ">= 0"),
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda r: r.inputs[1].__setattr__("datatype", "FP32"), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (lambda r: r.outputs.add(name="nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 1 << 40), grpc.StatusCode.INVALID_ARGUMENT, "limit"),
        (lambda r: r.raw_input_contents.append(b"\0" * 8), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    ],
    ids=["missing-ids", "negative-user", "unknown-model", "float-user", "unknown-output", "huge-shape", "mixed-raw"],
)
def test_bad_requests_get_their_codes(
    cluster: Cluster, root_target: str, change: Any, code: grpc.StatusCode, fragment: str
) -> None:
    request = typed_request("m_a", 3, [1, 2])
    change(request)
    got, message = code_of(cluster, root_target, request)
    assert got == code and fragment in message, (got, message)
