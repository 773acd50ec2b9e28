"""Model inputs from a pack: runs of same-shape entries viewed with one call agree with
viewing each entry alone, whatever the encodings and placement of a given request and
whatever order the model takes its inputs in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leaf.converter import to_input
from leaf.pack_inputs import InputBuilder
from protos.rootleaf.v1 import leaf_pb2
from wire.codec import CodecError, DecodeLimits, DType
from wire.pack_format import RECORD
from wire.pack_reader import PackReader, PackTable, decode_entry
from wire.pack_writer import encode_pack

N = 4
ARRAYS = {
    # request-level: a run of two, each broadcast to N rows
    "user": np.arange(3, dtype=np.float32).reshape(1, 3),
    "user2": np.arange(3, dtype=np.float32).reshape(1, 3) - 7.0,
    "a": np.arange(N, dtype=np.float32).reshape(N, 1) + 0.5,
    "b": np.arange(N, dtype=np.float32).reshape(N, 1) + 1.5,
    "c": np.zeros((N, 1), np.float32),  # compresses under lz4_always
    "ids": np.arange(2 * N, dtype=np.int64).reshape(N, 2),
    "ids2": np.arange(2 * N, dtype=np.int64).reshape(N, 2) * 3,
    # bfloat16 words (1.0 and -2.0) carried by float16 arrays; their records say BFLOAT16
    "words": np.full((N, 4), 0x3F80, np.uint16).view(np.float16),
    "words2": np.full((N, 4), 0xC000, np.uint16).view(np.float16),
}
BF16 = {"words", "words2"}


def _pack(compression: str) -> leaf_pb2.TensorPack:
    merged = encode_pack(ARRAYS, compression)
    records = np.frombuffer(merged.table, dtype=RECORD).copy()
    for i, name in enumerate(merged.names):
        if name in BF16:
            records[i]["dtype"] = int(DType.BFLOAT16)
    merged.table = records.tobytes()
    return merged


def _one_by_one(table: PackTable, data: bytes, used: list[int]) -> dict[int, torch.Tensor]:
    out = {}
    for i in used:
        entry = table.entry(i)
        out[i] = to_input(decode_entry(entry, data), entry.dtype, N)
    return out


def _decompressed(table: PackTable, data: bytes, used: list[int]) -> dict[int, np.ndarray | CodecError]:
    return {i: decode_entry(table.entry(i), data) for i in used if table.encodings[i]}


@pytest.mark.parametrize("compression", ["none", "lz4", "lz4_always"])
@pytest.mark.parametrize("order", ["pack", "reversed", "some", "interleaved"])
def test_runs_agree_with_entries_viewed_alone(compression: str, order: str) -> None:
    pack = _pack(compression)
    table = PackReader(DecodeLimits()).read(pack)
    data = pack.data
    used = list(range(len(table)))
    used = {
        "pack": used, "reversed": used[::-1], "some": [2, 3, 5, 0, 7, 8],
        # the model interleaves what the pack groups: runs still form in pack order
        "interleaved": [2, 5, 0, 8, 3, 6, 1, 7, 4],
    }[order]
    builder = InputBuilder()
    for _ in range(2):  # the second time from the kept plan
        built = builder.build(table, data, used, _decompressed(table, data, used), N)
        expected = _one_by_one(table, data, used)
        assert sorted(built) == sorted(used)
        for i in used:
            got, want = built[i], expected[i]
            assert isinstance(got, torch.Tensor)
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    for name in ("user", "user2"):
        index = table.layout.names.index(name)
        if index in built:
            user = built[index]
            assert isinstance(user, torch.Tensor) and user.shape == (N, 3)  # broadcast
            np.testing.assert_array_equal(user.numpy(), np.broadcast_to(ARRAYS[name], (N, 3)))
    words = built.get(table.layout.names.index("words"))
    if words is not None:
        assert isinstance(words, torch.Tensor) and words.dtype == torch.bfloat16
        assert words.float().flatten().tolist() == [1.0] * 4 * N


def test_a_run_not_back_to_back_in_this_request_is_viewed_entry_by_entry() -> None:
    pack = _pack("none")
    reader = PackReader(DecodeLimits())
    builder = InputBuilder()
    used = list(range(len(pack.names)))
    table = reader.read(pack)
    builder.build(table, pack.data, used, {}, N)  # plan: a and b form a run
    # Same header, b moved 8 bytes further (still aligned, inside the data).
    moved = leaf_pb2.TensorPack()
    moved.CopyFrom(pack)
    records = np.frombuffer(pack.table, dtype=RECORD).copy()
    b = list(pack.names).index("b")
    size = int(records[b]["length"])
    data = bytearray(pack.data) + bytes(8)
    start = int(records[b]["offset"])
    tail = bytes(data[start:len(pack.data)])
    data[start + 8:start + 8 + len(tail)] = tail
    records[b + 1:]["offset"] += 8
    records[b]["offset"] += 8
    moved.table = records.tobytes()
    moved.data = bytes(data)
    table = reader.read(moved)
    assert table.offsets[b] == start + 8 and size
    built = builder.build(table, moved.data, used, _decompressed(table, moved.data, used), N)
    for name, array in ARRAYS.items():
        got = built[list(moved.names).index(name)]
        assert isinstance(got, torch.Tensor)
        if name not in BF16:
            np.testing.assert_array_equal(got.numpy(), np.broadcast_to(array, (N, *array.shape[1:])))


def test_a_corrupt_block_is_that_entrys_error() -> None:
    pack = _pack("lz4_always")
    table = PackReader(DecodeLimits()).read(pack)
    used = list(range(len(table)))
    decompressed: dict[int, np.ndarray | CodecError] = dict(_decompressed(table, pack.data, used))
    c = table.layout.names.index("c")
    decompressed[c] = CodecError("c", "corrupt LZ4 data")
    built = InputBuilder().build(table, pack.data, used, decompressed, N)
    assert isinstance(built[c], CodecError)
    assert all(isinstance(built[i], torch.Tensor) for i in used if i != c)
