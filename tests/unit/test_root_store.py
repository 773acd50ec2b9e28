"""Demo data generator (deterministic, realistic per kind) and the memory-mapped local store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from root.catalog import Entity, FeatureCatalog, FeatureSpec
from harness.datagen import generate_local_store, generate_table
from root.feature_store import FeatureStoreError
from root.local_store import LocalFeatureStore

R, C = Entity.REQUEST, Entity.CANDIDATE


def test_generate_table_is_deterministic_per_seed_and_name() -> None:
    spec = FeatureSpec("c_x", C, "float32", (4,), kind="embedding")
    a = generate_table(spec, 100, 7)
    assert a.shape == (100, 4) and a.dtype == np.float32
    assert a.tobytes() == generate_table(spec, 100, 7).tobytes()
    assert a.tobytes() != generate_table(spec, 100, 8).tobytes()
    other = FeatureSpec("c_y", C, "float32", (4,), kind="embedding")
    assert a.tobytes() != generate_table(other, 100, 7).tobytes()
    # The first rows do not depend on how many rows were asked for... per feature stream.
    assert generate_table(spec, 0, 7).shape == (0, 4)


def test_kinds_are_realistic() -> None:
    n = 4000
    ratio = generate_table(FeatureSpec("r", C, "float32", (), kind="ratio"), n, 1)
    assert ratio.min() >= 0 and ratio.max() <= 1
    counter = generate_table(FeatureSpec("k", C, "int64", (), kind="counter"), n, 1)
    assert counter.min() >= 0 and counter.max() > 20 * np.median(counter)
    emb = generate_table(FeatureSpec("e", C, "float16", (16,), kind="embedding"), n, 1)
    assert emb.dtype == np.float16 and 0.05 < float(emb.astype(np.float32).std()) < 0.2
    scalar = generate_table(FeatureSpec("s", R, "float32", (), kind="scalar"), n, 1)
    assert abs(float(scalar.mean())) < 0.1 and 0.9 < float(scalar.std()) < 1.1
    ids = generate_table(FeatureSpec("i", C, "int32", (12,), kind="ids"), n, 1)
    lengths = (ids != 0).sum(axis=1)
    assert lengths.min() == 0 and lengths.max() == 12 and len(np.unique(lengths)) > 5
    # Padded at the tail: no id after the first zero.
    first_zero = np.argmax(np.concatenate([ids, np.zeros((n, 1), ids.dtype)], axis=1) == 0, axis=1)
    assert (lengths == first_zero).all()


def test_zero_fraction_is_honoured() -> None:
    sparse = generate_table(FeatureSpec("z", C, "float32", (), kind="ratio", zero_fraction=0.7), 10000, 3)
    assert 0.67 < float((sparse == 0).mean()) < 0.73
    empty = generate_table(FeatureSpec("zi", C, "int64", (8,), kind="ids", zero_fraction=0.5), 10000, 3)
    assert float((empty == 0).all(axis=1).mean()) > 0.5


def _catalog() -> FeatureCatalog:
    return FeatureCatalog.of(
        [
            FeatureSpec("u_a", R, "float32", (), default=-1.0),
            FeatureSpec("u_ids", R, "int64", (5,), kind="ids"),
            FeatureSpec("c_a", C, "float32", (), kind="ratio", default=0.5),
            FeatureSpec("c_e", C, "float16", (3,), kind="embedding"),
            FeatureSpec("c_b", C, "uint8", (2,), kind="counter"),
        ]
    )


def test_local_store_reads_rows_and_defaults(tmp_path: Path) -> None:
    catalog = _catalog()
    generate_local_store(catalog, tmp_path, users=10, items=50, seed=5)
    assert (tmp_path / "request" / "u_a.npy").exists() and (tmp_path / "candidate" / "c_e.npy").exists()
    store = LocalFeatureStore(tmp_path, catalog)
    assert store.rows("u_a") == 10 and store.rows("c_a") == 50
    ids = np.array([3, 49, 3, 50, 2**63], dtype=np.uint64)
    result = asyncio.run(store.fetch(C, ids, ["c_a", "c_e", "c_b"]))
    assert result.missing == 2
    full = generate_table(catalog["c_a"], 50, 5)
    np.testing.assert_array_equal(result.columns["c_a"], [full[3], full[49], full[3], 0.5, 0.5])
    assert result.columns["c_e"].shape == (5, 3) and result.columns["c_e"].dtype == np.float16
    assert result.columns["c_b"].shape == (5, 2) and result.columns["c_b"].dtype == np.uint8
    user = asyncio.run(store.fetch(R, np.array([11], dtype=np.uint64), ["u_a", "u_ids"]))
    assert user.missing == 1 and user.columns["u_a"].tolist() == [-1.0]
    assert user.columns["u_ids"].shape == (1, 5)
    with pytest.raises(FeatureStoreError, match="belongs to request"):
        asyncio.run(store.fetch(C, ids, ["u_a"]))
    asyncio.run(store.close())


def test_local_store_absent_column_serves_defaults(tmp_path: Path) -> None:
    catalog = _catalog()
    generate_local_store(catalog, tmp_path, users=3, items=4, seed=1)
    (tmp_path / "candidate" / "c_a.npy").unlink()
    store = LocalFeatureStore(tmp_path, catalog)
    result = store.fetch_sync(C, np.array([0, 1], dtype=np.uint64), ["c_a"])
    assert result.columns["c_a"].tolist() == [0.5, 0.5] and result.missing == 2


def test_local_store_rejects_mismatched_column(tmp_path: Path) -> None:
    catalog = _catalog()
    generate_local_store(catalog, tmp_path, users=3, items=4, seed=1)
    np.save(tmp_path / "candidate" / "c_a.npy", np.zeros(4, dtype=np.float64))
    with pytest.raises(FeatureStoreError, match="c_a"):
        LocalFeatureStore(tmp_path, catalog)
