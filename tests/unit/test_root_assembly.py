"""Encode-once assembly: per-model requests from shared blocks, trimming, dedup, byte counts."""

from __future__ import annotations

import numpy as np

from wire.codec import decode_all
from protos.rootleaf.v1 import leaf_pb2
from root.assembly import build_payload, encode_features, feature_union

N = 64


def _columns() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    request: dict[str, np.ndarray] = {"u_emb": rng.normal(size=(1, 16)).astype(np.float32), "u_s": np.array([3.0], np.float32)}
    sparse = rng.random(N).astype(np.float32)
    sparse[rng.random(N) < 0.8] = 0
    candidate: dict[str, np.ndarray] = {
        "c_sparse": sparse,
        "c_ids": rng.integers(0, 100, (N, 8)).astype(np.int64),
        "c_h": rng.normal(size=(N, 4)).astype(np.float16),
    }
    return request, candidate


def test_payload_is_a_leaf_request_with_the_selected_tensors() -> None:
    request, candidate = _columns()
    enc = encode_features(request, candidate, N, compression="lz4", dedup_request_features=True)
    p = build_payload(enc, request_id="r1", model="m", version="2", features=frozenset({"u_s", "c_ids", "not_there"}))
    msg = leaf_pb2.LeafRequest.FromString(p.payload)
    assert (msg.request_id, msg.model, msg.version, msg.num_candidates) == ("r1", "m", "2", N)
    arrays = decode_all(msg.features)
    assert set(arrays) == {"u_s", "c_ids"} and p.feature_names == ("u_s", "c_ids")
    np.testing.assert_array_equal(arrays["c_ids"], candidate["c_ids"])
    assert arrays["u_s"].shape == (1,)
    assert p.trimmed_bytes == 4 + N * 8 * 8
    assert p.untrimmed_bytes == 16 * 4 + 4 + N * 4 + N * 8 * 8 + N * 4 * 2
    assert p.wire_bytes == len(p.payload)


def test_untrimmed_model_gets_everything_and_blocks_are_shared() -> None:
    request, candidate = _columns()
    enc = encode_features(request, candidate, N, compression="lz4", dedup_request_features=True)
    a = build_payload(enc, request_id="r", model="a", version=None, features=None)
    b = build_payload(enc, request_id="r", model="b", version=None, features=frozenset({"c_h"}))
    assert set(leaf_pb2.LeafRequest.FromString(a.payload).features[i].name for i in range(5)) == {*request, *candidate}
    assert leaf_pb2.LeafRequest.FromString(a.payload).version == ""
    block = next(t.framed for t in enc.tensors if t.name == "c_h")
    assert block in a.payload and block in b.payload
    assert a.trimmed_bytes == a.untrimmed_bytes


def test_lz4_shrinks_sparse_and_none_sends_raw() -> None:
    request, candidate = _columns()
    lz = encode_features(request, candidate, N, compression="lz4", dedup_request_features=True)
    raw = encode_features(request, candidate, N, compression="none", dedup_request_features=True)
    sizes = {t.name: t.wire_size for t in lz.tensors}
    raw_sizes = {t.name: t.wire_size for t in raw.tensors}
    assert sizes["c_sparse"] < raw_sizes["c_sparse"]
    assert lz.raw_size == raw.raw_size
    arrays = decode_all(leaf_pb2.LeafRequest.FromString(build_payload(lz, request_id="", model="m", version=None, features=None).payload).features)
    np.testing.assert_array_equal(arrays["c_sparse"], candidate["c_sparse"])


def test_dedup_off_tiles_request_features() -> None:
    request, candidate = _columns()
    enc = encode_features(request, candidate, N, compression="none", dedup_request_features=False)
    p = build_payload(enc, request_id="", model="m", version=None, features=frozenset({"u_emb"}))
    arrays = decode_all(leaf_pb2.LeafRequest.FromString(p.payload).features)
    assert arrays["u_emb"].shape == (N, 16)
    np.testing.assert_array_equal(arrays["u_emb"], np.repeat(request["u_emb"], N, axis=0))
    assert p.trimmed_bytes == N * 16 * 4


def test_feature_union() -> None:
    assert feature_union([frozenset({"a"}), frozenset({"b", "a"})], ["a", "b", "c"]) == {"a", "b"}
    assert feature_union([frozenset({"a"}), None], ["a", "b", "c"]) == {"a", "b", "c"}
    assert feature_union([], ["a"]) == frozenset()


def _unpack(payload: bytes) -> tuple[leaf_pb2.PartitionRequest, dict[str, np.ndarray]]:
    from wire.codec import DEFAULT_LIMITS
    from wire.pack_reader import decode_entry, read_pack

    msg = leaf_pb2.PartitionRequest.FromString(payload)
    data = msg.features.data
    return msg, {e.name: decode_entry(e, data) for e in read_pack(msg.features, DEFAULT_LIMITS)}


def test_partition_payload_carries_the_union_once_and_each_models_indexes() -> None:
    from root.assembly import build_partition_payload, pack_features, partition_layout
    from wire.pack_writer import TensorPacker

    request, candidate = _columns()
    packed = pack_features(request, candidate, N, dedup_request_features=True, packer=TensorPacker("lz4"))
    allow = (frozenset({"u_s", "c_ids", "not_there"}), frozenset({"c_ids", "c_h"}))
    layout = partition_layout(packed.names, allow)
    p = build_partition_payload(packed, layout, request_id="r", partition="pa", models=[("a", "1"), ("b", "2")])
    msg, arrays = _unpack(p.payload)
    assert list(msg.features.names) == ["u_s", "c_ids", "c_h"]  # request order, each once
    assert [(m.name, m.version, list(m.features)) for m in msg.models] == [("a", "1", [0, 1]), ("b", "2", [1, 2])]
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, {**request, **candidate}[name])
    assert p.trimmed_bytes == 4 + N * 8 * 8 + N * 4 * 2
    assert p.wire_bytes == len(p.payload) and msg.num_candidates == N


def test_untrimmed_partition_payload_and_no_dedup() -> None:
    from root.assembly import build_partition_payload, pack_features, partition_layout
    from wire.pack_writer import TensorPacker

    request, candidate = _columns()
    packed = pack_features(request, candidate, N, dedup_request_features=False, packer=TensorPacker("none"))
    layout = partition_layout(packed.names, (None, frozenset({"c_h"})))
    p = build_partition_payload(packed, layout, request_id="r", partition="pa", models=[("a", ""), ("b", "")])
    msg, arrays = _unpack(p.payload)
    assert len(msg.features.names) == 5 and list(msg.models[0].features) == [0, 1, 2, 3, 4]
    assert [msg.features.names[i] for i in msg.models[1].features] == ["c_h"]
    assert arrays["u_emb"].shape == (N, 16)  # tiled when dedup is off
    np.testing.assert_array_equal(arrays["u_emb"][5], request["u_emb"][0])
