"""Atomic delivery to config dirs and model repositories, and reverting it."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.delivery import DeliveryError, atomic_write, deliver_file, deliver_version, revert, tree_sha256


def _version(root: Path, name: str, payload: bytes) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(payload)
    (d / "module_info.json").write_text('{"input_names": ["a"], "output_names": ["s"]}\n')
    return d


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "module_info.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["module_info.json"]


def test_file_delivery_backs_up_and_reverts(tmp_path: Path) -> None:
    target = tmp_path / "cfg" / "module_info.json"
    target.parent.mkdir()
    target.write_bytes(b"old")
    change = deliver_file(target, b"new", tmp_path / "backups", "canary root")
    assert change is not None and target.read_bytes() == b"new"
    assert deliver_file(target, b"new", tmp_path / "backups", "canary root") is None  # unchanged
    revert(change)
    assert target.read_bytes() == b"old"
    fresh = deliver_file(tmp_path / "cfg" / "routing.toml", b"x", tmp_path / "backups", "canary root")
    assert fresh is not None and fresh.backup is None
    revert(fresh)
    assert not (tmp_path / "cfg" / "routing.toml").exists()


def test_file_delivery_failure_is_typed(tmp_path: Path) -> None:
    (tmp_path / "module_info.json").mkdir()  # a directory where the file should go
    with pytest.raises(DeliveryError, match="cannot write"):
        deliver_file(tmp_path / "module_info.json", b"x", tmp_path / "b", "prod root")


def test_version_delivery_and_revert(tmp_path: Path) -> None:
    source = _version(tmp_path / "src" / "ctr", "3", b"weights")
    repo = tmp_path / "repo"
    (repo / "ctr").mkdir(parents=True)
    change = deliver_version(source, repo, "ctr", "canary leaf")
    assert change is not None
    assert tree_sha256(repo / "ctr" / "3") == tree_sha256(source)
    assert [p.name for p in (repo / "ctr").iterdir()] == ["3"]  # no staging dir left behind
    assert deliver_version(source, repo, "ctr", "canary leaf") is None  # identical copy present
    revert(change)
    assert list((repo / "ctr").iterdir()) == []


def test_version_conflict_refused(tmp_path: Path) -> None:
    source = _version(tmp_path / "src" / "ctr", "3", b"weights")
    _version(tmp_path / "repo" / "ctr", "3", b"other weights")
    with pytest.raises(DeliveryError, match="different content"):
        deliver_version(source, tmp_path / "repo", "ctr", "canary leaf")
