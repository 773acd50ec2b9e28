"""Tensor packs: round trips, alignment, and every declared size checked before decoding."""

from __future__ import annotations

import numpy as np
import pytest

from protos.rootleaf.v1 import leaf_pb2
from wire.codec import CodecError, DecodeLimits
from wire.pack_format import ALIGN, RECORD_BYTES
from wire.pack_reader import decode_entry, read_pack
from wire.pack_writer import encode_pack

ARRAYS = {
    "f32": np.arange(30, dtype=np.float32).reshape(3, 10),
    "zeros_i64": np.zeros((3, 64), np.int64),  # compresses
    "u8": np.array([[7]], np.uint8),
    "f16": np.ones((3,), np.float16),
    "i32": np.arange(3, dtype=np.int32).reshape(3, 1, 1),
    "b": np.array([True, False, True]),
    "f64": np.linspace(0, 1, 3),
    "i8": np.array([-1, 0, 1], np.int8),
}


@pytest.mark.parametrize("compression", ["none", "lz4", "lz4_always"])
def test_round_trip_aligned_views(compression: str) -> None:
    pack = encode_pack(ARRAYS, compression)
    entries = read_pack(pack, DecodeLimits())
    data = pack.data
    assert [e.name for e in entries] == list(ARRAYS)
    for entry in entries:
        array = decode_entry(entry, data)
        assert entry.offset % ALIGN == 0
        np.testing.assert_array_equal(array, ARRAYS[entry.name])
        assert array.dtype == ARRAYS[entry.name].dtype and not array.flags.writeable
    if compression == "lz4":
        assert entries[1].encoding == 1 and entries[0].encoding == 0


def _damaged(names: list[str] | None = None, **fields: bytes) -> leaf_pb2.TensorPack:
    pack = encode_pack({"a": np.zeros((4, 4), np.float32), "b": np.ones((4,), np.int64)}, "none")
    if names is not None:
        del pack.names[:]
        pack.names.extend(names)
    for key, value in fields.items():
        setattr(pack, key, value)
    return pack


@pytest.mark.parametrize(
    ("pack", "limits", "reason"),
    [
        (_damaged(names=["a", "a"]), DecodeLimits(), "duplicate"),
        (_damaged(names=["a", ""]), DecodeLimits(), "empty name"),
        (_damaged(names=["a", "b", "c"]), DecodeLimits(), "records"),
        (_damaged(), DecodeLimits(max_tensors=1), "exceed the limit"),
        (_damaged(), DecodeLimits(max_total_raw_bytes=64), "total size"),
        (_damaged(), DecodeLimits(max_raw_bytes=32), "limit"),
        (_damaged(), DecodeLimits(max_rank=1), "rank"),
        (_damaged(dims=b"\x04\0\0\0"), DecodeLimits(), "dims"),
        (_damaged(dims=b"\x04\0\0"), DecodeLimits(), "whole number"),
        (_damaged(data=b"\0" * 16), DecodeLimits(), "outside"),
    ],
)
def test_bad_tables_are_rejected_before_decoding(pack: leaf_pb2.TensorPack, limits: DecodeLimits, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        read_pack(pack, limits)


def test_overlapping_and_misaligned_payloads_are_rejected() -> None:
    pack = _damaged()
    table = bytearray(pack.table)
    table[RECORD_BYTES:RECORD_BYTES + 4] = (8).to_bytes(4, "little")  # second payload inside the first
    pack.table = bytes(table)
    with pytest.raises(CodecError, match="overlaps"):
        read_pack(pack, DecodeLimits())
    table[RECORD_BYTES:RECORD_BYTES + 4] = (65).to_bytes(4, "little")
    pack.table = bytes(table)
    with pytest.raises(CodecError, match="misaligned"):
        read_pack(pack, DecodeLimits())


def test_corrupt_lz4_is_a_codec_error_naming_the_tensor() -> None:
    pack = encode_pack({"z": np.zeros((64, 64), np.float32)}, "lz4")
    (entry,) = read_pack(pack, DecodeLimits())
    assert entry.encoding == 1
    with pytest.raises(CodecError, match="'z'"):
        decode_entry(entry, b"\xff" * len(pack.data))


def test_leaf_keeps_root_assembled_payloads_in_the_received_bytes() -> None:
    from leaf.partition import deserialize_partition
    from wire.pack_writer import PartitionModelRef, TensorPacker, assemble_partition_request

    batch = TensorPacker("lz4").pack_many(list(ARRAYS), list(ARRAYS.values()))
    payload = assemble_partition_request("r", 3, [PartitionModelRef("m", "2", (0, 3))], batch)
    wire = deserialize_partition(payload)
    assert not wire.error and isinstance(wire.data, memoryview) and wire.data.obj is payload
    assert wire.message.models[0].version == "2" and list(wire.message.models[0].features) == [0, 3]
    entries = read_pack(wire.message.features, DecodeLimits(), len(wire.data))
    for entry in entries:
        np.testing.assert_array_equal(decode_entry(entry, wire.data), ARRAYS[entry.name])
    # the same request as protobuf writes it (fields in number order) is parsed whole
    whole = leaf_pb2.PartitionRequest.FromString(payload)
    reserialised = deserialize_partition(whole.SerializeToString())
    assert reserialised.data is None and reserialised.message == whole
    assert deserialize_partition(payload[:-3]).error


# ---- PackReader: header checks once per distinct header, same verdicts as read_pack ----


def _table_with(pack: leaf_pb2.TensorPack, index: int, **fields: int) -> leaf_pb2.TensorPack:
    """``pack`` with record ``index``'s fields replaced (offset, length, dtype, encoding, rank)."""
    from wire.pack_format import RECORD

    records = np.frombuffer(pack.table, dtype=RECORD).copy()
    for key, value in fields.items():
        records[index][key] = value
    damaged = leaf_pb2.TensorPack()
    damaged.CopyFrom(pack)
    damaged.table = records.tobytes()
    return damaged


def _verdict(read: object, pack: leaf_pb2.TensorPack, limits: DecodeLimits) -> object:
    try:
        entries = read(pack)  # type: ignore[operator]
    except CodecError as exc:
        return str(exc)
    return entries


def _agreement_cases() -> list[tuple[str, leaf_pb2.TensorPack, DecodeLimits]]:
    good = encode_pack(ARRAYS, "lz4")
    count = len(ARRAYS)
    cases = [("good", good, DecodeLimits()), ("good raw", encode_pack(ARRAYS, "none"), DecodeLimits())]
    cases += [
        ("unknown encoding", _table_with(good, 2, encoding=7), DecodeLimits()),
        ("raw length", _table_with(good, 0, length=8), DecodeLimits()),
        ("lz4 bomb", _table_with(good, 1, length=1), DecodeLimits()),
        ("misaligned", _table_with(good, 3, offset=np.frombuffer(good.table, np.uint32)[3 * 3] + 1), DecodeLimits()),
        ("overlap", _table_with(good, 2, offset=0), DecodeLimits()),
        ("outside", _table_with(good, count - 1, offset=len(good.data)), DecodeLimits()),
        ("unknown dtype", _table_with(good, 4, dtype=200), DecodeLimits()),
        ("rank", _table_with(good, 0, rank=3), DecodeLimits()),
        ("total", good, DecodeLimits(max_total_raw_bytes=1000)),
        ("one too big", good, DecodeLimits(max_raw_bytes=1000)),
        ("too many", good, DecodeLimits(max_tensors=3)),
    ]
    duplicate = leaf_pb2.TensorPack()
    duplicate.CopyFrom(good)
    duplicate.names[3] = duplicate.names[0]
    cases.append(("duplicate", duplicate, DecodeLimits()))
    return cases


@pytest.mark.parametrize("case", _agreement_cases(), ids=lambda c: c[0])
def test_reader_agrees_with_read_pack_with_and_without_a_known_header(
    case: tuple[str, leaf_pb2.TensorPack, DecodeLimits],
) -> None:
    from wire.pack_reader import PackReader

    _, pack, limits = case
    expected = _verdict(lambda p: read_pack(p, limits), pack, limits)
    reader = PackReader(limits)
    cold = _verdict(lambda p: reader.read(p).entries(), pack, limits)
    # Teach the reader the good header first: the damaged pack then takes the fast path.
    warm_reader = PackReader(limits)
    for good in (encode_pack(ARRAYS, "lz4"), encode_pack(ARRAYS, "none")):
        try:
            warm_reader.read(good)
        except CodecError:
            pass
    warm = _verdict(lambda p: warm_reader.read(p).entries(), pack, limits)
    assert cold == expected and warm == expected


def test_reader_keeps_one_layout_per_header_and_is_bounded() -> None:
    from wire.pack_reader import PackReader

    reader = PackReader(DecodeLimits(), max_layouts=2)
    first = reader.read(encode_pack(ARRAYS, "lz4"))
    again = reader.read(encode_pack(ARRAYS, "none"))  # encodings differ, the header does not
    assert again.layout is first.layout and len(reader) == 1
    assert again.entries() == read_pack(encode_pack(ARRAYS, "none"), DecodeLimits())
    for i in range(3):
        reader.read(encode_pack({f"x{i}": np.zeros((2, 2), np.float32)}))
    assert len(reader) <= 2


BATCH_ARRAYS = {
    **ARRAYS,
    "scalar": np.array(3.5, np.float32),  # rank 0
    "empty": np.zeros((0, 4), np.float32),
    "strided": np.arange(40, dtype=np.float32).reshape(4, 10)[:, ::2],
    "big_endian": np.arange(12, dtype=">f4").reshape(3, 4),
    "sparse": np.where(np.arange(3 * 80) % 7 == 0, 1.0, 0.0).astype(np.float32).reshape(3, 80),
}


@pytest.mark.parametrize("compression", ["none", "lz4", "lz4_always"])
@pytest.mark.parametrize("sent", [None, (3,), (9, 0, 2), (10, 11, 12, 1), ()])
def test_batch_assembly_carries_exactly_the_sent_tensors(compression: str, sent: tuple[int, ...] | None) -> None:
    from wire.pack_writer import PartitionModelRef, TensorPacker, assemble_partition_request

    names = list(BATCH_ARRAYS)
    positions = tuple(range(len(names))) if sent is None else sent
    packer = TensorPacker(compression)
    models = [PartitionModelRef("m", "1", tuple(range(len(positions))))]
    first = assemble_partition_request("r", 3, models, packer.pack_many(names, list(BATCH_ARRAYS.values())), sent)
    # the second batch reuses the kept headers and schema: the same bytes
    batch = packer.pack_many(names, list(BATCH_ARRAYS.values()))
    got = assemble_partition_request("r", 3, models, batch, sent)
    assert got == first
    fresh = TensorPacker(compression).pack_many(names, list(BATCH_ARRAYS.values()))
    assert assemble_partition_request("r", 3, models, fresh, sent) == got
    message = leaf_pb2.PartitionRequest.FromString(got)
    assert (message.request_id, message.num_candidates) == ("r", 3)
    assert [(m.name, m.version, list(m.features)) for m in message.models] == [("m", "1", list(range(len(positions))))]
    assert list(message.features.names) == [names[i] for i in positions]
    # protobuf writes the same message with its fields in number order; both parse alike
    assert leaf_pb2.PartitionRequest.FromString(message.SerializeToString()) == message
    assert batch.raw_size == sum(a.nbytes for a in BATCH_ARRAYS.values())
    message = leaf_pb2.PartitionRequest.FromString(got)
    for entry in read_pack(message.features, DecodeLimits()):
        np.testing.assert_array_equal(decode_entry(entry, message.features.data), BATCH_ARRAYS[entry.name])


def test_batch_keeps_one_schema_per_feature_set() -> None:
    from wire.pack_writer import TensorPacker

    packer = TensorPacker("lz4")
    arrays = [np.zeros((4, 2), np.float32), np.ones((4,), np.int64)]
    first = packer.pack_many(["a", "b"], arrays)
    assert packer.pack_many(["a", "b"], arrays).schema is first.schema
    assert packer.pack_many(["b", "a"], arrays[::-1]).schema is not first.schema
    # a new shape (another candidate count) is another schema, with its own dims
    other = packer.pack_many(["a", "b"], [np.zeros((5, 2), np.float32), np.ones((5,), np.int64)])
    assert other.schema is not first.schema and other.schema.dims[0] != first.schema.dims[0]


def test_batch_rejects_what_pack_rejects() -> None:
    from wire.pack_writer import TensorPacker

    with pytest.raises(CodecError, match="'c'"):
        TensorPacker("lz4").pack_many(["c"], [np.zeros(3, dtype=np.complex64)])


def test_reader_keeps_no_header_past_its_bound_and_says_so() -> None:
    from wire.pack_reader import PackReader

    reader = PackReader(DecodeLimits(), max_kept_chars=4)  # ARRAYS' names take more
    first, again = reader.read(encode_pack(ARRAYS)), reader.read(encode_pack(ARRAYS))
    assert len(reader) == 0 and first.layout is not again.layout
    assert not first.layout.kept and again.entries() == read_pack(encode_pack(ARRAYS), DecodeLimits())
    assert PackReader(DecodeLimits()).read(encode_pack(ARRAYS)).layout.kept


def test_the_first_entry_at_fault_is_named_whether_its_fault_is_in_the_header_or_the_placement() -> None:
    good = encode_pack(ARRAYS, "none")
    names = list(good.names)
    placement_first = _table_with(_table_with(good, 1, offset=3), 3, dtype=200)
    header_first = _table_with(_table_with(good, 3, offset=3), 1, dtype=200)
    same_entry = _table_with(good, 2, dtype=200, offset=3)  # the header's check comes first
    for pack, name, reason in (
        (placement_first, names[1], "misaligned"),
        (header_first, names[1], "unknown dtype"),
        (same_entry, names[2], "unknown dtype"),
    ):
        with pytest.raises(CodecError, match=reason) as caught:
            read_pack(pack, DecodeLimits())
        assert caught.value.tensor == name
