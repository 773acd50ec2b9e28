"""Codec round trips (property-based) and every kind of bad input."""

from __future__ import annotations

import tracemalloc

import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wire import codec
from wire.codec import CodecError, Compression, DecodeLimits, DType, Encoding, Tensor

NUMPY_DTYPES = ["<f4", "<f2", "<f8", "<i8", "<i4", "i1", "u1", "?"]


@settings(max_examples=300, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(NUMPY_DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
    ),
    compression=st.sampled_from(list(Compression)),
)
def test_round_trip_every_dtype_and_shape(array: np.ndarray, compression: Compression) -> None:
    tensor = codec.encode("f", array, compression)
    out = codec.decode(Tensor.FromString(tensor.SerializeToString()))
    assert out.dtype == array.dtype.newbyteorder("<") or out.dtype == array.dtype
    assert out.shape == array.shape
    assert out.tobytes() == np.ascontiguousarray(array).tobytes()


def test_scalar_per_candidate_and_zero_sized() -> None:
    per_candidate = np.arange(5, dtype=np.float32).reshape(5)
    empty = np.zeros((0, 16), dtype=np.int64)
    for array in (per_candidate, empty):
        for compression in Compression:
            out = codec.decode(codec.encode("x", array, compression))
            np.testing.assert_array_equal(out, array)
            assert out.shape == array.shape


def test_bfloat16_travels_as_words() -> None:
    words = np.array([[0x3F80, 0x4000]], dtype=np.uint16)  # 1.0, 2.0 in bfloat16
    tensor = codec.encode("b", words, dtype=DType.BFLOAT16)
    assert tensor.dtype == DType.BFLOAT16
    np.testing.assert_array_equal(codec.decode(tensor), words)


def test_adaptive_encoding_keeps_small_and_incompressible_raw() -> None:
    rng = np.random.default_rng(0)
    small = np.zeros(4, dtype=np.float32)
    noise = rng.standard_normal((256, 64)).astype(np.float32)
    sparse = np.zeros((256, 64), dtype=np.float32)
    sparse[::7, ::3] = 1.5
    assert codec.encode("s", small).encoding == Encoding.RAW
    assert codec.encode("n", noise).encoding == Encoding.RAW
    packed = codec.encode("z", sparse)
    assert packed.encoding == Encoding.LZ4
    assert len(packed.data) < 0.5 * packed.raw_size
    assert codec.encode("z", sparse, Compression.NONE).encoding == Encoding.RAW


def test_decode_is_zero_copy_view_for_raw() -> None:
    tensor = codec.encode("f", np.ones((3, 2), dtype=np.float32), Compression.NONE)
    out = codec.decode(tensor)
    assert not out.flags.writeable  # a view on the message's bytes, not a copy


def _lz4_tensor(shape: list[int], dtype: int = DType.FLOAT32) -> Tensor:
    array = np.zeros(shape, dtype=codec.numpy_dtype(dtype))
    return codec.encode("t", array, Compression.LZ4_ALWAYS)


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda t: setattr(t, "data", t.data[: len(t.data) // 2]), "LZ4"),
        (lambda t: setattr(t, "data", b"\xff" * len(t.data)), "LZ4"),
        (lambda t: setattr(t, "raw_size", t.raw_size + 4), "raw_size"),
        (lambda t: setattr(t, "dtype", 77), "unknown dtype"),
        (lambda t: setattr(t, "encoding", 9), "unknown encoding"),
        (lambda t: t.shape.__setitem__(0, -3), "negative"),
        (lambda t: t.shape.__setitem__(0, 1 << 40), "exceeds"),
        (lambda t: setattr(t, "name", ""), "empty name"),
        (lambda t: setattr(t, "name", "x" * 1000), "name longer"),
    ],
)
def test_bad_lz4_tensor_gives_codec_error(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    tensor = _lz4_tensor([64, 8])
    mutate(tensor)
    with pytest.raises(CodecError, match=reason):
        codec.decode(tensor)


def test_raw_data_length_mismatch() -> None:
    tensor = codec.encode("r", np.ones((4, 4), dtype=np.float32), Compression.NONE)
    tensor.data = tensor.data[:-1]
    with pytest.raises(CodecError, match="data length"):
        codec.decode(tensor)


def test_ten_gib_claim_rejected_before_allocation() -> None:
    ten_gib = 10 * 1024**3
    bomb = Tensor(
        name="bomb",
        dtype=DType.UINT8,
        shape=[ten_gib],
        raw_size=ten_gib,
        encoding=Encoding.LZ4,
        data=lz4.block.compress(b"\0" * 65536, store_size=False),
    )
    # Rejected on the declared size alone: nothing near the claim is allocated or inflated.
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="limit"):
            codec.decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 65536  # less than the block's own inflated size
    # Within the cap, a tiny block claiming a large size is rejected by the expansion bound.
    limits = DecodeLimits(max_raw_bytes=ten_gib + 1, max_total_raw_bytes=ten_gib + 1)
    with pytest.raises(CodecError, match="cannot decode"):
        codec.decode(
            Tensor(name="b", dtype=DType.UINT8, shape=[ten_gib], raw_size=ten_gib,
                   encoding=Encoding.LZ4, data=b"\x00" * 100),
            limits,
        )


def test_decode_all_bounds_count_total_and_duplicates() -> None:
    one = codec.encode("a", np.ones(4, dtype=np.float32))
    with pytest.raises(CodecError, match="duplicate"):
        codec.decode_all([one, one])
    with pytest.raises(CodecError, match="exceed the limit"):
        codec.decode_all([one] * 5, DecodeLimits(max_tensors=4))
    big = codec.encode("big", np.ones(1024, dtype=np.float32))
    with pytest.raises(CodecError, match="total size"):
        codec.decode_all([big], DecodeLimits(max_total_raw_bytes=1000))
    assert set(codec.decode_all([one, big])) == {"a", "big"}


def test_encode_rejects_unsupported_dtype() -> None:
    with pytest.raises(CodecError, match="unsupported"):
        codec.encode("c", np.ones(3, dtype=np.complex64))


def test_limits_validate_fields() -> None:
    with pytest.raises(ValueError, match="max_tensors"):
        DecodeLimits(max_tensors=0)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_give_only_codec_errors(data: bytes) -> None:
    try:
        tensor = Tensor.FromString(data)
    except Exception:  # not a protobuf message at all: the gRPC layer rejects these
        return
    try:
        codec.decode(tensor)
    except CodecError:
        pass
