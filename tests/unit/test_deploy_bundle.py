"""Bundle build and root-config package from real exported TorchScript models."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path
from typing import Dict

import pytest

from contract.bundle_file import parse_bundle
from deploy.bundle import BundleError, FleetView, build_bundle
from deploy.bundle_cli import main as bundle_main
from deploy.package import PackageError, read_package
import torch
from leaf.export import export_model

# TorchScript is the serving format here; torch 2.13 flags it deprecated in favour of export.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning")


class _SumModel(torch.nn.Module):
    """Sums its inputs: enough of a model to export, script and load."""

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(1)
        for value in features.values():
            total = total + value.to(torch.float32).sum()
        return torch.sigmoid(total).reshape(1)


def _export(repo: Path, model: str, version: str, inputs: list[str], outputs: list[str]) -> Path:
    return export_model(torch.jit.script(_SumModel()), repo / model / version, inputs, outputs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of real exports: ctr 1,2,10 (10 with the archive-only signature), cvr 3."""
    repo = tmp_path_factory.mktemp("repo")
    _export(repo, "ctr", "1", ["f1", "f2"], ["score"])
    _export(repo, "ctr", "2", ["f1", "f2"], ["score"])
    _export(repo, "ctr", "10", ["f1", "f2"], ["score"])
    (repo / "ctr" / "10" / "module_info.json").unlink()  # only the copy inside model.pt remains
    _export(repo, "cvr", "3", ["f9", "f1"], ["cvr", "save"])
    (repo / "ctr" / ".tmp-partial").mkdir()  # an in-flight copy: ignored
    return repo


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_build_reads_standalone_and_embedded_signatures(exported: Path, tmp_path: Path) -> None:
    result = build_bundle("ads", exported, tmp_path / "out")
    doc = json.loads(result.bundle_file.read_text())
    assert list(doc) == ["ctr", "cvr"]
    assert [e["version"] for e in doc["ctr"]] == ["1", "2", "10"]  # numeric order
    assert doc["ctr"][2] == {"version": "10", "input_names": ["f1", "f2"], "output_names": ["score"]}
    assert doc["cvr"] == [{"version": "3", "input_names": ["f9", "f1"], "output_names": ["cvr", "save"]}]
    assert result.skipped == ()
    package = read_package(result.package.path)
    assert package.name == "ads" and package.build_id == result.package.build_id
    assert package.bundle_bytes == result.bundle_file.read_bytes()
    assert dict(package.models) == {"ctr": ("1", "2", "10"), "cvr": ("3",)}


def test_rebuild_is_byte_identical(exported: Path, tmp_path: Path) -> None:
    config = tmp_path / "routing.toml"
    config.write_text('[partitions]\nads = ["127.0.0.1:1"]\n')
    first = build_bundle("ads", exported, tmp_path / "a", extra_configs=[config])
    second = build_bundle("ads", _copy(exported, tmp_path / "copy"), tmp_path / "b", extra_configs=[config])
    assert first.bundle_file.read_bytes() == second.bundle_file.read_bytes()
    assert first.package.path.name == second.package.path.name
    assert first.package.path.read_bytes() == second.package.path.read_bytes()
    assert read_package(second.package.path).configs == {"routing.toml": config.read_bytes()}


def test_missing_and_corrupt_signatures_warn_and_skip(
    exported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _copy(exported, tmp_path / "repo")
    (repo / "ctr" / "2" / "module_info.json").write_text("{not json")
    (repo / "ctr" / "10" / "model.pt").write_bytes(b"PK\x03\x04 truncated zip")  # corrupt archive
    (repo / "cvr" / "4").mkdir()  # a version with nothing in it
    with caplog.at_level(logging.WARNING, logger="rootleaf.deploy.bundle"):
        result = build_bundle("ads", repo, tmp_path / "out")
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "ctr version 2" in warned and "ctr version 10" in warned and "cvr version 4" in warned
    assert dict(result.models) == {"ctr": ("1",), "cvr": ("3",)}
    assert len(result.skipped) == 3


def test_no_signature_at_all_is_an_error(exported: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "ctr" / "1").mkdir(parents=True)
    (repo / "ctr" / "1" / "model.pt").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="no model version"):
        build_bundle("ads", repo, tmp_path / "out")
    assert bundle_main(["build", "--name", "ads", "--repo", str(repo), "--out", str(tmp_path / "o")]) == 1


def test_include_deployed_keeps_the_newest_deployed_versions(exported: Path, tmp_path: Path) -> None:
    deployed = build_bundle("ads", exported, tmp_path / "deployed").bundle_file
    pending_repo = tmp_path / "pending"
    _export(pending_repo, "ctr", "11", ["f1", "f2"], ["score"])
    result = build_bundle(
        "ads", pending_repo, tmp_path / "out", models=["ctr"], include_deployed=deployed
    )
    # Without the fleet's view the newest 2 deployed versions stay; ctr 1 is dropped.
    assert dict(result.models) == {"ctr": ("2", "10", "11"), "cvr": ("3",)}
    assert dict(result.dropped) == {"ctr": ("1",)}
    assert read_package(result.package.path).dropped == {"ctr": ("1",)}
    every = build_bundle("ads", pending_repo, tmp_path / "all", include_deployed=deployed, keep_deployed=5)
    assert dict(every.models) == {"ctr": ("1", "2", "10", "11"), "cvr": ("3",)} and not every.dropped
    without = build_bundle("ads", pending_repo, tmp_path / "out2")
    assert dict(without.models) == {"ctr": ("11",)}
    assert read_package(without.package.path).dropped == {}


@pytest.mark.parametrize(
    "served, keep, expected, dropped",
    [
        # The fleet serves ctr 2 and cvr 3: those stay with the pending 11, the rest goes.
        ({"ctr": {"2"}, "cvr": {"3"}}, None, {"ctr": ("2", "11"), "cvr": ("3",)}, {"ctr": ("1", "10")}),
        # Plus the newest K deployed.
        ({"ctr": {"2"}, "cvr": {"3"}}, 1, {"ctr": ("2", "10", "11"), "cvr": ("3",)}, {"ctr": ("1",)}),
        # A leaf still serving ctr 1 keeps it; cvr served by no leaf is dropped whole.
        ({"ctr": {"1", "10"}}, None, {"ctr": ("1", "10", "11")}, {"ctr": ("2",), "cvr": ("3",)}),
    ],
)
def test_retention_keeps_pending_and_served_versions(
    exported: Path, tmp_path: Path, served: dict[str, set[str]], keep: int | None,
    expected: dict[str, tuple[str, ...]], dropped: dict[str, tuple[str, ...]],
) -> None:
    deployed = parse_bundle(build_bundle("ads", exported, tmp_path / "deployed").bundle_file.read_bytes())
    pending_repo = tmp_path / "pending"
    _export(pending_repo, "ctr", "11", ["f1", "f2"], ["score"])
    fleet = FleetView(served, deployed.models)
    result = build_bundle("ads", pending_repo, tmp_path / "out", served_from=fleet, keep_deployed=keep)
    assert dict(result.models) == expected
    assert dict(result.dropped) == dropped
    assert read_package(result.package.path).dropped == dropped


def test_a_served_version_missing_from_the_deployed_bundle_takes_the_leaf_repository_signature(
    exported: Path, tmp_path: Path
) -> None:
    pending_repo = tmp_path / "pending"
    _export(pending_repo, "ctr", "11", ["f1", "f2"], ["score"])
    fleet = FleetView({"ctr": {"2", "99"}, "other_bundles_model": {"1"}}, {}, (exported,))
    result = build_bundle("ads", pending_repo, tmp_path / "out", served_from=fleet)
    assert dict(result.models) == {"ctr": ("2", "11")}
    assert any("ctr version 99: served, but no signature" in line for line in result.skipped)


def test_signature_changes_are_reported_and_strict_fails(exported: Path, tmp_path: Path) -> None:
    repo = _copy(exported, tmp_path / "repo")
    _export(repo, "ctr", "12", ["f1", "f7"], ["score"])
    result = build_bundle("ads", repo, tmp_path / "out")
    assert result.signature_changes == (
        "ctr: 2 signatures: v1,2,10 inputs [f1, f2] outputs [score]; v12 inputs [f1, f7] outputs [score]",
    )
    with pytest.raises(BundleError, match="--strict-signatures: .*ctr: 2 signatures"):
        build_bundle("ads", repo, tmp_path / "strict", strict_signatures=True)
    assert not (tmp_path / "strict" / "module_info.json").exists()
    assert bundle_main(["build", "--name", "ads", "--repo", str(repo), "--strict-signatures",
                        "--out", str(tmp_path / "cli")]) == 1
    assert build_bundle("ads", exported, tmp_path / "same", strict_signatures=True).signature_changes == ()


def test_the_build_refuses_a_feature_name_the_roots_refuse(exported: Path, tmp_path: Path) -> None:
    repo = _copy(exported, tmp_path / "repo")
    version = repo / "ctr" / "12"
    version.mkdir()
    # A signature file the signature reader accepts but whose input name a root's parser refuses.
    (version / "module_info.json").write_text(json.dumps({"input_names": ["f1", " "], "output_names": ["score"]}))
    with pytest.raises(BundleError, match="the roots would refuse the bundle file built: .*input_names"):
        build_bundle("ads", repo, tmp_path / "out")
    assert not (tmp_path / "out" / "module_info.json").exists()


def test_unknown_model_and_bad_name_rejected(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="'nope'"):
        build_bundle("ads", exported, tmp_path / "o", models=["nope"])
    with pytest.raises(BundleError, match="bundle name"):
        build_bundle("../x", exported, tmp_path / "o")


def test_cli_build_prints_package(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = bundle_main(["build", "--name", "ads", "--repo", str(exported), "--models", "cvr", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "cvr: versions 3" in printed and "package:" in printed
    assert json.loads((out / "module_info.json").read_text()) == {
        "cvr": [{"version": "3", "input_names": ["f9", "f1"], "output_names": ["cvr", "save"]}]
    }


def test_tampered_package_rejected(exported: Path, tmp_path: Path) -> None:
    result = build_bundle("ads", exported, tmp_path / "out")
    with tarfile.open(result.package.path, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    members["bundles/ads/module_info.json"] = b"{}\n"
    bad = tmp_path / "bad.rootcfg.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(PackageError, match="sha256 mismatch"):
        read_package(bad)
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(PackageError, match="not a readable package"):
        read_package(tmp_path / "junk.tar.gz")
