"""Demo asset generation: same workload and seed -> byte-identical files; cached by content hash."""

from __future__ import annotations

import json
from pathlib import Path

from harness.demo_assets import ensure_assets
from harness.workload import builtin_workload


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_cache(tmp_path: Path) -> None:
    workload = builtin_workload("ci")
    first = ensure_assets(workload, tmp_path / "a")
    second = ensure_assets(workload, tmp_path / "b")
    assert not first.reused and not second.reused
    files_a, files_b = _files(first.root), _files(second.root)
    assert files_a.keys() == files_b.keys()
    assert any(name.startswith("store/") for name in files_a)
    assert any(name.endswith("model.pt") for name in files_a)
    assert [n for n in files_a if files_a[n] != files_b[n]] == []

    # bundle files list exactly each model's seeded inputs, every version
    bundle = json.loads(first.bundles["alpha"].read_text())
    assert sorted(bundle) == ["m_a", "m_b"]
    assert [v["version"] for v in bundle["m_a"]] == ["1", "2"]
    assert bundle["m_a"][0]["input_names"] == first.workload.model_inputs("m_a")

    # a second call reuses the cache; a changed workload regenerates it
    mtime = (first.root / "ASSETS.json").stat().st_mtime_ns
    again = ensure_assets(workload, tmp_path / "a")
    assert again.reused and (first.root / "ASSETS.json").stat().st_mtime_ns == mtime
    reseeded = tmp_path / "reseeded.toml"
    reseeded.write_text(workload.read_text().replace("seed = 11", "seed = 12"))
    changed = ensure_assets(reseeded, tmp_path / "a")
    assert not changed.reused and changed.workload_hash != first.workload_hash
    files_c = _files(changed.root)
    store_a = {n for n in files_a if n.startswith("store/") and n.endswith(".npy")}
    assert store_a == {n for n in files_c if n.startswith("store/") and n.endswith(".npy")}
    store_diff = [n for n in store_a if files_a[n] != files_c[n]]
    assert store_diff
    assert not list((tmp_path / "a").glob(".assets.*"))  # no temporary directories left behind
