"""What a leaf holds for a request, how large a request it takes, and the answers to
shapes numpy cannot build: in-process leaves on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import pytest

from harness import demo_model
from leaf.admission import InflightBytes
from leaf.batcher import Batcher, BatchPolicy
from leaf.config import LeafConfig
from leaf.device import Placement, resolve_device
from leaf.repository import Repository
from leaf.servicer import LeafServicer
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc
from tests.service.test_leaf_errors import expect
from tests.service.test_leaf_partition import NAMES, partition_request
from tests.service.test_leaf_server import Leaf, export_demo, features, make_request, run, sample
from tests.waiting import eventually_async
from wire import codec

MIB = 1 << 20


class GatedExecutor(ThreadPoolExecutor):
    """Runs each job only once ``gate`` is set; ``started`` is set when one is waiting."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="test-gated")
        self.gate = threading.Event()
        self.started = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def gated() -> Any:
            self.started.set()
            self.gate.wait(30)
            return fn(*args, **kwargs)

        return super().submit(gated)


# Finding 3: a cancelled call's decode keeps running; its bytes stay held until it ends.
def test_a_cancelled_calls_bytes_stay_held_until_its_offloaded_decode_ends(tmp_path: Path) -> None:
    export_demo(tmp_path, "m", "1")
    config = LeafConfig(tmp_path, max_queue_delay_ms=0)
    n = 65536  # item_ids at [n, 3] int64: 1.5 MiB of LZ4 to decode: offloaded
    arrays = {**features(n), "item_ids": np.zeros((n, 3), np.int64), "item_price": np.zeros((n, 1), np.float32)}
    request = partition_request(arrays, n, [("m", "1", NAMES)])
    assert sum(1 for e in request.features.table[10::12] if e) >= 1  # LZ4 entries

    async def body() -> None:
        gated = GatedExecutor()
        asyncio.get_running_loop().set_default_executor(gated)
        repository = Repository(config, Placement(resolve_device("cpu")))
        repository.load()
        batcher = Batcher(Placement(resolve_device("cpu")), BatchPolicy(4096, 0.0, 16))
        inflight = InflightBytes(config.max_inflight_bytes)
        servicer = LeafServicer(repository, batcher, inflight=inflight)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((servicer.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        cancelled = {"model": "m", "version": "1", "code": "CANCELLED"}
        before = sample("rootleaf_leaf_requests_total", cancelled)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = leaf_pb2_grpc.LeafStub(channel).ScorePartition(request)
                await eventually_async(gated.started.is_set)
                held = inflight.held
                assert held >= request.ByteSize()
                call.cancel()
                await eventually_async(lambda: sample("rootleaf_leaf_requests_total", cancelled) > before)
                assert inflight.held == held  # the call is over, its decode is not
                gated.gate.set()
                await eventually_async(lambda: inflight.held == 0)
        finally:
            gated.gate.set()
            await server.stop(None)
            batcher.close()
            repository.close()
            gated.shutdown(wait=True)

    run(body)


# Finding 4: the hold covers the received message, not only the inputs a model uses.
@pytest.mark.parametrize("rpc", ["Score", "ScorePartition"])
def test_the_hold_covers_the_whole_received_message(tmp_path: Path, rpc: str) -> None:
    export_demo(tmp_path, "m", "1")
    n = 2
    arrays = {**features(n), "unused": np.random.default_rng(0).random((n, MIB // 2), np.float32)}  # 4 MiB

    async def body() -> None:
        # A lone request waits up to 5 s for company: long enough to read the gauge.
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=5000)) as leaf:
            if rpc == "Score":
                request: Any = make_request("m", arrays, n)
                call: Any = leaf.stub.Score(request)
            else:
                request = partition_request(arrays, n, [("m", "1", NAMES)])
                call = leaf.stub.ScorePartition(request)
            await eventually_async(lambda: sample("rootleaf_leaf_inflight_bytes", {}) > 0)
            assert sample("rootleaf_leaf_inflight_bytes", {}) >= request.ByteSize() > 4 * MIB
            await call
            assert sample("rootleaf_leaf_inflight_bytes", {}) == 0

    run(body)


# Finding 9: a shape with no elements but huge dims is the client's error, on both RPCs.
def test_empty_shapes_with_huge_dims_are_invalid_argument(tmp_path: Path) -> None:
    export_demo(tmp_path, "m", "1")
    n = 4
    good = features(n)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            request = make_request("m", good, n)
            price = next(t for t in request.features if t.name == "item_price")
            del price.shape[:]
            price.shape.extend([n, 0, 2**40, 2**40])
            price.raw_size, price.data = 0, b""
            await expect(leaf.stub.Score(request), grpc.StatusCode.INVALID_ARGUMENT, "item_price", "non-zero dims")
            pack_request = partition_request(good, n, [("m", "1", NAMES)])
            index = list(good).index("item_price")
            pack = pack_request.features
            table = bytearray(pack.table)
            record = table[index * 12:(index + 1) * 12]
            record[4:8] = (0).to_bytes(4, "little")  # length 0
            record[9] = 0  # RAW
            record[10] = 4  # rank 4
            table[index * 12:(index + 1) * 12] = record
            dims = np.frombuffer(pack.dims, "<u4").tolist()
            at = sum(len(a.shape) for a in list(good.values())[:index])
            dims[at:at + 2] = [n, 0, 2**32 - 1, 2**32 - 1]
            pack.table, pack.dims = bytes(table), np.array(dims, "<u4").tobytes()
            await expect(leaf.stub.ScorePartition(pack_request), grpc.StatusCode.INVALID_ARGUMENT, "item_price", "non-zero dims")
            assert (await leaf.stub.Score(make_request("m", good, n))).version == "1"

    run(body)


# Finding 14: an exported demo model declares its inputs: a wrong one is refused at once.
def test_exported_models_declare_shapes_so_the_first_bad_request_is_invalid_argument(tmp_path: Path) -> None:
    assert demo_model.main(["--out", str(tmp_path / "fresh" / "1"), "--inputs", "a:2,b:3:int64", "--hidden", "4"]) == 0
    bad = {"a": np.ones((4, 5), np.float32), "b": np.ones((4, 3), np.int64)}  # a: 5 wide, not 2

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            await expect(leaf.stub.Score(make_request("fresh", bad, 4)), grpc.StatusCode.INVALID_ARGUMENT, "'a'", "[5]", "[2]")
            ok = {"a": np.ones((4, 2), np.float32), "b": np.ones((4, 3), np.int64)}
            assert (await leaf.stub.Score(make_request("fresh", ok, 4))).version == "1"

    run(body)


def test_demo_assets_declare_every_inputs_dtype_and_shape(tmp_path: Path) -> None:
    from contract.signature import read_signature
    from harness.demo_assets import export_models
    from harness.workload import load_workload

    workload = load_workload(Path(__file__).resolve().parents[2] / "workloads" / "ci.toml")
    export_models(workload, tmp_path)
    catalog = workload.catalog()
    for model in workload.models:
        signature = read_signature(tmp_path / model.name / model.versions[0])
        assert signature.input_shapes == {name: catalog[name].shape for name in signature.input_names}
        assert signature.input_dtypes == {name: catalog[name].dtype for name in signature.input_names}


# Message limits per role: gRPC refuses what is over the leaf's limit before our code runs.
def test_a_leaf_refuses_requests_over_its_receive_limit(tmp_path: Path) -> None:
    export_demo(tmp_path, "m", "1")
    limits = codec.DecodeLimits(max_total_raw_bytes=MIB, max_raw_bytes=MIB, max_tensors=64)
    derived = LeafConfig(tmp_path, decode_limits=limits, max_inflight_bytes=MIB, max_models=4)
    assert MIB < derived.receive_message_bytes < 2 * MIB  # sized from the decode limits
    assert LeafConfig(tmp_path).receive_message_bytes == 256 * MIB
    n = 2
    noise = np.random.default_rng(1).random((n, MIB), np.float32)  # incompressible
    arrays = {**features(n), "unused": noise[:, :MIB // 4]}  # 2 MiB

    async def body() -> None:
        async with Leaf(derived) as leaf:
            await expect(leaf.stub.Score(make_request("m", arrays, n)), grpc.StatusCode.RESOURCE_EXHAUSTED)
            await expect(leaf.stub.ScorePartition(partition_request(arrays, n, [("m", "1", NAMES)])),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert (await leaf.stub.Score(make_request("m", features(n), n))).version == "1"
        async with Leaf(LeafConfig(tmp_path, max_receive_message_bytes=4 * MIB)) as leaf:
            big = {**features(n), "unused": noise}  # 8 MiB
            await expect(leaf.stub.Score(make_request("m", big, n)), grpc.StatusCode.RESOURCE_EXHAUSTED)

    run(body)
