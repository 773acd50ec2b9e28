"""Names and paths from files and flags: traversal, symlinks out of the repository and
non-UTF-8 are rejected with a clear error (leaf models and repository, root config, bundle
files, deploy packages)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch

from deploy.package import PackageError, read_package
from leaf.cli import build_parser, config_from_args
from contract.names import name_problem
from leaf.config import LeafConfig, VersionPolicy
from leaf.device import Placement
from leaf.repository import Repository
from root.config import load_root_config
from tests.service.test_leaf_server import export_demo
from trimmer import FeatureTrimmer


@pytest.mark.parametrize("name", ["../etc", "a/b", ".", "..", ".hidden", "x\0y", "bad\udcff", ""])
def test_leaf_model_names_must_be_plain_components(tmp_path: Path, name: str) -> None:
    assert name_problem(name)
    with pytest.raises(ValueError, match="LeafConfig.models"):
        LeafConfig(repo=tmp_path, models=("ok", name) if name else ("ok", "."))
    args = build_parser().parse_args(["--repo", str(tmp_path), "--models", "../../x"])
    with pytest.raises(ValueError, match="'../../x'"):
        config_from_args(args)


def test_repository_refuses_symlinks_out_and_non_utf8_names(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    export_demo(repo, "good", "1")
    export_demo(outside, "evil", "1")
    export_demo(outside, "evil", "2")
    (repo / "good" / "2").symlink_to(outside / "evil" / "2")  # a version dir pointing out
    (repo / "linked").symlink_to(outside / "evil")  # a model dir pointing out
    export_demo(repo, "enc", "1")
    os.rename(repo / "enc" / "1", os.path.join(os.fsencode(repo / "enc"), b"\xff"))  # non-UTF-8 version
    (repo / "enc" / "3").mkdir()
    (repo / "enc" / "3" / "model.pt").symlink_to(outside / "evil" / "1" / "model.pt")  # a file pointing out
    repository = Repository(LeafConfig(repo=repo, versions=VersionPolicy("all")),
                            Placement(torch.device("cpu")))
    repository.load()
    slots = repository.slots()
    assert [v.version for v in slots["good"].versions] == ["1"]
    assert slots["linked"].versions == ()
    assert slots["enc"].versions == ()
    # Named explicitly on the command line, a model dir symlinked out is refused as well.
    only = Repository(LeafConfig(repo=repo, models=("linked",)), Placement(torch.device("cpu")))
    only.load()
    assert only.slots()["linked"].versions == ()


def test_root_config_non_utf8_and_bad_paths_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "root.toml"
    bad.write_bytes(b'catalog = "\xff\xfe"\n')
    with pytest.raises(ValueError, match="root config .*root.toml"):
        load_root_config(bad)
    bad.write_text('catalog = ""\n[feature_store]\nkind = "local"\npath = "s"\n')
    with pytest.raises(ValueError, match="catalog must be a non-empty path"):
        load_root_config(bad)
    bad.write_text('catalog = "c.json"\n[tls]\ncert_file = 3\n[feature_store]\nkind = "local"\npath = "s"\n')
    with pytest.raises(ValueError, match="tls.cert_file must be a string path"):
        load_root_config(bad)


def test_bundle_file_not_utf8_is_reported_and_root_keeps_going(tmp_path: Path) -> None:
    bundle = tmp_path / "b" / "module_info.json"
    bundle.parent.mkdir()
    bundle.write_bytes(b'{"m": [\xff]}')
    trimmer = FeatureTrimmer({"b": str(bundle)}, watch=False)
    try:
        status = trimmer.status()["b"]
        assert "UTF-8" in str(status.last_error)
        assert trimmer.lookup("m").features is None  # no allowlist: untrimmed, still serving
    finally:
        trimmer.close()


@pytest.mark.parametrize("member", ["../evil.json", "/abs.json", "a/../../b"])
def test_package_members_cannot_escape(tmp_path: Path, member: str) -> None:
    path = tmp_path / "p.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(PackageError, match="unexpected member"):
        read_package(path)


def test_package_symlink_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(PackageError, match="manifest.json. is a type .*, not a plain regular file"):
        read_package(path)
