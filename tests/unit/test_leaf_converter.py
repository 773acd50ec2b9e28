"""Signature-driven converter: exact inputs, zero-copy, broadcast, and every rejection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leaf.converter import Converter
from leaf.errors import InvalidRequest
from leaf.export import Signature
from wire import codec
from wire.codec import DecodeLimits, DType

LIMITS = DecodeLimits()


def convert(signature: Signature, tensors: list[codec.Tensor], n: int, limits: DecodeLimits = LIMITS) -> dict[str, torch.Tensor]:
    return Converter(signature, limits, 10_000).convert(tensors, n).tensors


def test_exact_inputs_in_signature_order_with_broadcast_views() -> None:
    item = np.arange(12, dtype=np.float32).reshape(4, 3)
    user = np.array([[7, 8]], dtype=np.int64)
    tensors = [codec.encode("other", np.zeros((4, 9))), codec.encode("user", user, "none"), codec.encode("item", item, "none")]
    out = convert(Signature(("item", "user"), ("s",)), tensors, 4)
    assert list(out) == ["item", "user"]
    assert out["user"].shape == (4, 2) and out["user"].stride() == (0, 1)  # expand: a view
    np.testing.assert_array_equal(out["user"].numpy(), np.repeat(user, 4, axis=0))
    np.testing.assert_array_equal(out["item"].numpy(), item)


def test_raw_payload_is_not_copied() -> None:
    tensor = codec.encode("x", np.ones((5, 2), np.float32), "none")
    data = tensor.data
    out = Converter(Signature(("x",), ("s",)), LIMITS, 100).convert([tensor], 5)
    # The tensor views the bytes object held by the message field (no copy after parsing).
    assert out.decoded_bytes == 40
    assert out.tensors["x"].numpy().base is not None
    assert bytes(out.tensors["x"].numpy().data) == data


def test_unused_features_are_never_decoded() -> None:
    broken = codec.encode("unused", np.zeros((3, 64), np.float32), "lz4_always")
    broken.data = b"\x00\x01"
    out = convert(Signature(("x",), ("s",)), [broken, codec.encode("x", np.ones((3, 1), np.float32))], 3)
    assert list(out) == ["x"]


def test_bfloat16_words_view_as_bfloat16() -> None:
    words = np.array([[0x3F80], [0xC000]], dtype=np.uint16)  # 1.0, -2.0
    out = convert(Signature(("b",), ("s",)), [codec.encode("b", words, dtype=DType.BFLOAT16)], 2)
    assert out["b"].dtype == torch.bfloat16
    assert out["b"].float().flatten().tolist() == [1.0, -2.0]


@pytest.mark.parametrize(
    ("arrays", "n", "words"),
    [
        ({"a": np.ones((3, 1), np.float32)}, 3, ["'b'", "missing"]),
        ({"a": np.ones((2, 1), np.float32), "b": np.ones((3,), np.float32)}, 3, ["'a'", "leading dim 2", "3"]),
        ({"a": np.float32(1).reshape(()), "b": np.ones((3,), np.float32)}, 3, ["'a'", "rank 0"]),
        ({"a": np.ones((3, 1), np.float32), "b": np.ones((3,), np.float32)}, 0, ["num_candidates"]),
        ({"a": np.ones((3, 1), np.float32), "b": np.ones((3,), np.float32)}, 10_001, ["num_candidates"]),
        ({"a": np.ones((3, 1), np.float64), "b": np.ones((3,), np.float32)}, 3, ["'a'", "FLOAT64", "FLOAT32"]),
    ],
)
def test_rejections_name_the_feature(arrays: dict[str, np.ndarray], n: int, words: list[str]) -> None:
    signature = Signature(("a", "b"), ("s",), {"a": "float32"})
    with pytest.raises(InvalidRequest) as info:
        convert(signature, [codec.encode(k, v) for k, v in arrays.items()], n)
    for word in words:
        assert word in str(info.value)


def test_limits_apply_to_the_request() -> None:
    tensors = [codec.encode(f"f{i}", np.ones((2, 1), np.float32)) for i in range(5)]
    with pytest.raises(InvalidRequest, match="exceed the limit"):
        convert(Signature(("f0",), ("s",)), tensors, 2, DecodeLimits(max_tensors=4))
    big = [codec.encode("f0", np.ones((2, 100), np.float32)), codec.encode("f1", np.ones((2, 100), np.float32))]
    with pytest.raises(InvalidRequest, match="1600 bytes at 2 candidates.*max_total_raw_bytes=1000"):
        convert(Signature(("f0", "f1"), ("s",)), big, 2, DecodeLimits(max_total_raw_bytes=1000))
    # A [1, ...] input counts at num_candidates rows: what a merged batch materialises.
    wide = [codec.encode("f0", np.ones((1, 100), np.float32))]
    with pytest.raises(InvalidRequest, match="4000 bytes at 10 candidates"):
        convert(Signature(("f0",), ("s",)), wide, 10, DecodeLimits(max_total_raw_bytes=1000))
    duplicate = [codec.encode("f0", np.ones((2, 1), np.float32))] * 2
    with pytest.raises(InvalidRequest, match="'f0'.*more than once"):
        convert(Signature(("f0",), ("s",)), duplicate, 2)


def test_lz4_inputs_decode_and_broken_blocks_name_the_feature() -> None:
    ids = np.tile(np.arange(16, dtype=np.int64), (6, 1))  # compresses: sent as LZ4
    user = np.zeros((1, 32), np.float32)
    tensors = [codec.encode("ids", ids), codec.encode("user", user)]
    assert all(t.encoding == codec.Encoding.LZ4 for t in tensors)
    out = convert(Signature(("ids", "user"), ("s",)), tensors, 6)
    np.testing.assert_array_equal(out["ids"].numpy(), ids)
    np.testing.assert_array_equal(out["user"].numpy(), np.zeros((6, 32), np.float32))
    corrupt = codec.encode("ids", ids)
    corrupt.data = corrupt.data[:-3]
    with pytest.raises(InvalidRequest, match="'ids'.*corrupt LZ4"):
        convert(Signature(("ids",), ("s",)), [corrupt], 6)
    bomb = codec.encode("ids", ids)
    bomb.data = bomb.data[:2]  # a tiny block cannot expand to the declared size
    with pytest.raises(InvalidRequest, match="'ids'.*cannot decode"):
        convert(Signature(("ids",), ("s",)), [bomb], 6)
    short = codec.encode("ids", ids)
    short.data = codec.encode("ids", ids[:3]).data  # valid LZ4, decodes to fewer bytes
    with pytest.raises(InvalidRequest, match="'ids'"):
        convert(Signature(("ids",), ("s",)), [short], 6)


def test_expectations_are_declared_or_learned_once() -> None:
    declared = Converter(Signature(("a", "b"), ("s",), {"a": "float32"}, {"a": (2,)}), LIMITS, 100)
    assert declared.expected == ((DType.FLOAT32, (2,)), (None, None))
    tensors = [codec.encode("a", np.ones((3, 2), np.float32)), codec.encode("b", np.ones((1, 4), np.int64))]
    out = declared.convert(tensors, 3)
    assert out.layout == ((DType.FLOAT32, (2,)), (DType.INT64, (4,)))
    assert declared.learn(out.layout) and not declared.learn(((DType.FLOAT32, (2,)), (DType.INT32, (7,))))
    assert declared.expected == ((DType.FLOAT32, (2,)), (DType.INT64, (4,)))
    assert declared.describe_expected() == "a: FLOAT32[2], b: INT64[4]"
    with pytest.raises(InvalidRequest, match=r"'b': shape \[5\] per candidate, model expects \[4\]"):
        declared.convert([tensors[0], codec.encode("b", np.ones((3, 5), np.int64))], 3)


def test_pack_admission_is_remembered_per_layout_and_rechecked_after_learning() -> None:
    from wire.pack_reader import PackReader
    from wire.pack_writer import encode_pack

    converter = Converter(Signature(("b", "a"), ("s",)), LIMITS, 100)
    reader = PackReader(LIMITS)
    arrays = {"a": np.ones((3, 2), np.float32), "x": np.zeros((3, 1), np.float32), "b": np.ones((1, 4), np.int64)}
    table = reader.read(encode_pack(arrays))
    first = converter.admit_pack(table, [0, 2], 3)
    assert first.indexes == (2, 0)  # signature order
    expected = converter.admit([table.entry(2), table.entry(0)], 3)  # type: ignore[list-item]
    assert first.cost == expected.cost
    again = converter.admit_pack(reader.read(encode_pack(arrays, "none")), [0, 2], 3)
    assert again is first  # same layout, same indexes, same N: nothing recomputed
    # Another N is another admission; a bad one is refused every time, never remembered.
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="'a': leading dim 3 is neither 1 nor num_candidates 5"):
            converter.admit_pack(table, [0, 2], 5)
        with pytest.raises(InvalidRequest, match="'b': missing"):
            converter.admit_pack(table, [0, 1], 3)
    # Expectations learned from a forward apply to a layout admitted before.
    wide = reader.read(encode_pack({**arrays, "b": np.ones((1, 5), np.int64)}))
    converter.admit_pack(wide, [0, 2], 3)
    assert converter.learn(first.cost.layout)
    with pytest.raises(InvalidRequest, match=r"'b': shape \[5\] per candidate, model expects \[4\]"):
        converter.admit_pack(wide, [0, 2], 3)
    assert converter.admit_pack(table, [0, 2], 3) is first


def test_pack_admissions_of_layouts_not_kept_are_not_remembered() -> None:
    from wire.pack_reader import PackReader
    from wire.pack_writer import encode_pack

    converter = Converter(Signature(("a",), ("s",)), LIMITS, 100)
    reader = PackReader(LIMITS, max_kept_chars=0)
    table = reader.read(encode_pack({"a": np.ones((3, 2), np.float32)}))
    assert not table.layout.kept
    first = converter.admit_pack(table, [0], 3)
    assert converter.admit_pack(table, [0], 3) is not first and converter.admit_pack(table, [0], 3) == first
