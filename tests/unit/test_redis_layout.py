"""Record layout of the Redis store: packing, unpacking, digests, keys, option validation (no Redis)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from contract.dtypes import NUMPY_DTYPES
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.feature_store import FeatureStoreError
from harness.load import Progress
from root.redis_loader import LoadOptions
from root.redis_records import RecordLayout, entity_key_prefix, entity_keys, valid_key_prefix
from root.redis_store import RedisFeatureStore


def every_dtype_catalog() -> FeatureCatalog:
    specs = []
    for i, dtype in enumerate(NUMPY_DTYPES):
        specs.append(FeatureSpec(f"c_{dtype}", Entity.CANDIDATE, dtype, (), default=1.0))
        specs.append(FeatureSpec(f"c_{dtype}_v", Entity.CANDIDATE, dtype, (3,), default=float(i % 2)))
        specs.append(FeatureSpec(f"u_{dtype}_m", Entity.REQUEST, dtype, (2, 4)))
    return FeatureCatalog.of(specs)


def random_columns(catalog: FeatureCatalog, entity: Entity, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in catalog.names(entity):
        spec = catalog[name]
        raw = rng.integers(-100, 100, (count, *spec.shape)) * 0.37
        out[name] = (raw > 0) if spec.dtype == "bool" else raw.astype(spec.np_dtype)
    return out


def test_layout_is_packed_in_catalog_order() -> None:
    catalog = every_dtype_catalog()
    layout = RecordLayout.from_catalog(catalog, Entity.CANDIDATE)
    assert layout.names == tuple(catalog.names(Entity.CANDIDATE))
    assert layout.record_size == sum(catalog[n].row_bytes for n in layout.names)
    fields = layout.dtype.fields
    assert fields is not None
    offsets = [fields[n][1] for n in layout.names]
    assert offsets == sorted(offsets) and offsets[0] == 0
    for name in layout.names:
        field = fields[name][0]
        assert field.shape == catalog[name].shape
        assert field.base.byteorder in ("<", "|", "=")  # little-endian or single byte


def test_pack_unpack_round_trip_every_dtype() -> None:
    catalog = every_dtype_catalog()
    for entity in Entity:
        layout = RecordLayout.from_catalog(catalog, entity)
        columns = random_columns(catalog, entity, 7, seed=3)
        values: list[bytes | None] = list(layout.pack(columns, slice(0, 7)))
        assert all(len(v) == layout.record_size for v in values if v is not None)
        records, present = layout.unpack(values)
        assert present.all()
        for name in layout.names:
            np.testing.assert_array_equal(records[name], columns[name])
            assert records[name].dtype == catalog[name].np_dtype


def test_missing_values_get_defaults() -> None:
    catalog = every_dtype_catalog()
    layout = RecordLayout.from_catalog(catalog, Entity.CANDIDATE)
    columns = random_columns(catalog, Entity.CANDIDATE, 3, seed=4)
    packed = layout.pack(columns, slice(0, 3))
    records, present = layout.unpack([None, packed[1], None, packed[2]])
    assert present.tolist() == [False, True, False, True]
    for name in layout.names:
        spec = catalog[name]
        default = np.full(spec.shape, spec.default, spec.np_dtype)
        np.testing.assert_array_equal(records[name][0], default)
        np.testing.assert_array_equal(records[name][2], default)
        np.testing.assert_array_equal(records[name][1], columns[name][1])
        np.testing.assert_array_equal(records[name][3], columns[name][2])


def test_wrong_sized_values_are_corrupt() -> None:
    catalog = every_dtype_catalog()
    layout = RecordLayout.from_catalog(catalog, Entity.CANDIDATE)
    good = layout.pack(random_columns(catalog, Entity.CANDIDATE, 1, seed=5), slice(0, 1))[0]
    for bad in (good[:-1], good + b"\0", b""):
        with pytest.raises(FeatureStoreError, match="corrupt"):
            layout.unpack([good, bad])


def test_values_whose_lengths_cancel_out_are_corrupt() -> None:
    """One value 4 bytes short and the next 4 bytes long add up to the right total: an error
    naming the first wrong value, never fields shifted from one entity into the next."""
    catalog = every_dtype_catalog()
    layout = RecordLayout.from_catalog(catalog, Entity.CANDIDATE)
    a, b, c = layout.pack(random_columns(catalog, Entity.CANDIDATE, 3, seed=6), slice(0, 3))
    with pytest.raises(FeatureStoreError, match=f"2 of 3 values are not {layout.record_size} bytes .the first has {layout.record_size - 4};"):
        layout.unpack([a, None, b[:-4], c + b"\0\0\0\0"])


def test_decoding_hostile_values_stays_within_a_small_multiple_of_their_size() -> None:
    """Peak Python/numpy memory of ``unpack`` over families of values Redis could return:
    refused or decoded, at most twice the values' own bytes plus a constant."""
    catalog = every_dtype_catalog()
    layout = RecordLayout.from_catalog(catalog, Entity.CANDIDATE)
    size = layout.record_size
    good = layout.pack(random_columns(catalog, Entity.CANDIDATE, 1, seed=7), slice(0, 1))[0]
    families: dict[str, list[bytes | None]] = {
        "one huge value": [good, b"\0" * (8 << 20)],
        "many short values": [good[:-1]] * 100_000,
        "many empty values": [b""] * 100_000,
        "lengths that cancel out": [good[:-4], good + b"\0" * 4] * 50_000,
        "valid, mostly missing": [good, *([None] * 100_000)],
        "valid": [good] * 100_000,
    }
    for family, values in families.items():
        input_bytes = sum(len(v) for v in values if v is not None) + 8 * len(values)
        tracemalloc.start()
        try:
            try:
                records, _ = layout.unpack(values)
                output_bytes = records.nbytes
            except FeatureStoreError:
                output_bytes = 0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= 2 * input_bytes + output_bytes + 64 * size + (1 << 16), (family, peak, input_bytes)


def test_digest_tracks_layout_not_defaults() -> None:
    base = [FeatureSpec("a", Entity.CANDIDATE, "float32"), FeatureSpec("b", Entity.CANDIDATE, "int64", (4,))]
    digest = RecordLayout.from_catalog(FeatureCatalog.of(base), Entity.CANDIDATE).digest
    same = [FeatureSpec("a", Entity.CANDIDATE, "float32", default=5.0), base[1]]
    assert RecordLayout.from_catalog(FeatureCatalog.of(same), Entity.CANDIDATE).digest == digest
    for changed in (
        [base[1], base[0]],  # order
        [FeatureSpec("a", Entity.CANDIDATE, "float16"), base[1]],  # dtype
        [base[0], FeatureSpec("b", Entity.CANDIDATE, "int64", (5,))],  # shape
        [FeatureSpec("a2", Entity.CANDIDATE, "float32"), base[1]],  # name
        [*base, FeatureSpec("c", Entity.CANDIDATE, "uint8")],  # added feature
    ):
        assert RecordLayout.from_catalog(FeatureCatalog.of(changed), Entity.CANDIDATE).digest != digest


def test_entity_without_features_has_no_layout() -> None:
    catalog = FeatureCatalog.of([FeatureSpec("a", Entity.CANDIDATE, "float32")])
    with pytest.raises(ValueError, match="no request features"):
        RecordLayout.from_catalog(catalog, Entity.REQUEST)


def test_entity_keys() -> None:
    prefix = entity_key_prefix("rl", Entity.CANDIDATE)
    ids = np.array([0, 7, 2**64 - 1], dtype=np.uint64)
    assert entity_keys(prefix, ids) == [b"rl:candidate:0", b"rl:candidate:7", b"rl:candidate:18446744073709551615"]
    assert entity_keys(prefix, ids[:0]) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "http://x"}, "url"),
        ({"pool_size": 0}, "pool_size"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"key_prefix": "rl*"}, "key_prefix"),
        ({"key_prefix": ""}, "key_prefix"),
    ],
)
def test_store_rejects_bad_settings(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"url": "redis://127.0.0.1:1/0", **kwargs}
    url = args.pop("url")
    with pytest.raises(ValueError, match=field):
        RedisFeatureStore(url, every_dtype_catalog(), **args)  # type: ignore[arg-type]


def test_key_prefix_rule() -> None:
    assert valid_key_prefix("rl") and valid_key_prefix("prod:rl")
    assert not any(valid_key_prefix(p) for p in ("", "a b", "a?", "[a]", "a\\b", "é", 3))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"batch_rows": 0}, "batch_rows"), ({"batches_per_pipeline": 0}, "batches_per_pipeline"), ({"key_prefix": "*"}, "key_prefix")],
)
def test_load_options_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LoadOptions(**kwargs)  # type: ignore[arg-type]


def test_progress_bar_writes_its_finished_line(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress("load candidate", enabled=True)
    bar(4, 10)
    bar(10, 10)
    bar.done("10 rows")
    assert capsys.readouterr().err.endswith("load candidate                 10 rows\n")
    quiet = Progress("load user", enabled=False)
    quiet(1, 1)
    quiet.done("1 rows")
    assert capsys.readouterr().err == ""
