"""The leaf's Open Inference Protocol service, in-process on 127.0.0.1:0, through the
generated ``inference.GRPCInferenceService`` stub (tests/cluster/test_oip_tritonclient.py
drives it with tritonclient)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from leaf.config import LeafConfig, VersionPolicy
from protos.inference import grpc_predict_v2_pb2 as oip_pb2
from protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from tests.service.test_leaf_server import OUTPUTS, WIDTHS, Leaf, expected_scores, export_demo, features, run, sample
from wire.codec import DecodeLimits

DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def infer_request(model: str, arrays: dict[str, np.ndarray], *, raw: bool, version: str = "") -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name=model, model_version=version, id="oip-1")
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
        if raw:
            request.raw_input_contents.append(array.tobytes())
        elif array.dtype == np.int64:
            tensor.contents.int64_contents.extend(array.ravel().tolist())
        else:
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request


def raw_scores(response: oip_pb2.ModelInferResponse) -> np.ndarray:
    assert [o.name for o in response.outputs] == OUTPUTS
    assert all(o.datatype == "FP32" for o in response.outputs)
    return np.stack([np.frombuffer(b, "<f4") for b in response.raw_output_contents], axis=1)


def test_infer_raw_and_typed_equal_the_model_and_metadata_follows_the_signature(tmp_path: Path) -> None:
    module = export_demo(tmp_path, "m", "1")
    export_demo(tmp_path, "m", "2", seed=2)

    async def body() -> None:
        config = LeafConfig(tmp_path, max_queue_delay_ms=0, versions=VersionPolicy("all"))
        async with Leaf(config) as leaf:
            stub = oip_grpc.GRPCInferenceServiceStub(leaf.channel)
            assert (await stub.ServerLive(oip_pb2.ServerLiveRequest())).live
            assert (await stub.ServerReady(oip_pb2.ServerReadyRequest())).ready
            assert (await stub.ModelReady(oip_pb2.ModelReadyRequest(name="m", version="1"))).ready
            assert not (await stub.ModelReady(oip_pb2.ModelReadyRequest(name="m", version="9"))).ready
            assert not (await stub.ModelReady(oip_pb2.ModelReadyRequest(name="nope"))).ready
            meta = await stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name="m"))
            assert list(meta.versions) == ["1", "2"] and meta.platform == "pytorch_torchscript"
            assert [i.name for i in meta.inputs] == list(WIDTHS)
            assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [(o, "FP32", [-1]) for o in OUTPUTS]

            n = 5
            arrays = features(n)
            raw = await stub.ModelInfer(infer_request("m", arrays, raw=True, version="1"))
            assert (raw.model_name, raw.model_version, raw.id) == ("m", "1", "oip-1")
            np.testing.assert_allclose(raw_scores(raw), expected_scores(module, arrays, n), rtol=1e-6)
            typed = await stub.ModelInfer(infer_request("m", arrays, raw=False, version="1"))
            assert not typed.raw_output_contents
            got = np.stack([np.asarray(o.contents.fp32_contents, np.float32) for o in typed.outputs], axis=1)
            np.testing.assert_allclose(got, expected_scores(module, arrays, n), rtol=1e-6)
            # Once a forward has run, metadata knows every input's datatype and shape.
            meta = await stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name="m", version="1"))
            assert [(i.datatype, list(i.shape)) for i in meta.inputs] == [
                ("INT64", [-1, 1]), ("FP32", [-1, 4]), ("FP32", [-1, 1]), ("INT64", [-1, 3])
            ]
            only_cvr = infer_request("m", arrays, raw=True, version="1")
            only_cvr.outputs.add(name="cvr")
            answer = await stub.ModelInfer(only_cvr)
            assert [o.name for o in answer.outputs] == ["cvr"] and len(answer.raw_output_contents) == 1

    run(body)


def test_bad_requests_get_clear_codes_and_nothing_is_allocated_past_the_limits(tmp_path: Path) -> None:
    export_demo(tmp_path, "m", "1")

    async def body() -> None:
        limits = DecodeLimits(max_raw_bytes=1 << 20, max_total_raw_bytes=1 << 22)
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0, decode_limits=limits,
                                   max_inflight_bytes=1 << 22)) as leaf:
            stub = oip_grpc.GRPCInferenceServiceStub(leaf.channel)
            arrays = features(3)

            async def code_of(request: oip_pb2.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ModelInfer(request)
                return info.value.code(), info.value.details() or ""

            assert (await code_of(infer_request("nope", arrays, raw=True)))[0] == grpc.StatusCode.NOT_FOUND
            assert (await code_of(infer_request("m", arrays, raw=True, version="7")))[0] == (
                grpc.StatusCode.FAILED_PRECONDITION
            )
            short = infer_request("m", arrays, raw=True)
            short.raw_input_contents[2] = short.raw_input_contents[2][:-4]
            code, message = await code_of(short)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_price" in message
            wrong_type = infer_request("m", arrays, raw=True)
            wrong_type.inputs[0].datatype = "BYTES"
            code, message = await code_of(wrong_type)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "BYTES" in message
            missing = infer_request("m", {k: v for k, v in arrays.items() if k != "user_emb"}, raw=True)
            code, message = await code_of(missing)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "user_emb" in message
            bad_output = infer_request("m", arrays, raw=True)
            bad_output.outputs.add(name="nope")
            assert (await code_of(bad_output))[0] == grpc.StatusCode.INVALID_ARGUMENT
            # A declared size over the limit is refused on the header, with no content sent.
            huge = oip_pb2.ModelInferRequest(model_name="m")
            huge.inputs.add(name="item_price", datatype="FP32", shape=[1 << 40, 1])
            code, message = await code_of(huge)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit" in message
            before = sample("rootleaf_leaf_inflight_bytes", {})
            assert before == 0

    run(body)
