"""The shared contract, checked through every tier's public API: one version order, one
bundle file rule set, one name rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contract.bundle_file import BundleError, ModelVersion, parse_bundle, render_bundle
from contract.names import name_problem
from contract.signature import Signature
from contract.versions import latest_version, sort_versions
from deploy.bundle import build_bundle
from leaf.config import LeafConfig
from leaf.device import Placement
from leaf.repository import Repository
from tests.service.test_leaf_server import export_demo
from trimmer import FeatureTrimmer

# (older, newer): each pair must order the same in the trimmer, the leaf and the bundle build.
VERSION_PAIRS = [
    ("9", "10"),
    ("1.9", "1.10"),
    ("v2", "v10"),
    ("2.0", "10"),
    ("2024-01-02", "2024-01-10"),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    for i, pair in enumerate(VERSION_PAIRS):
        for version in pair:
            export_demo(path, f"model{i}", version)
    return path


@pytest.mark.parametrize("index", range(len(VERSION_PAIRS)))
def test_every_tier_agrees_on_latest(repo: Path, tmp_path: Path, index: int) -> None:
    older, newer = VERSION_PAIRS[index]
    model = f"model{index}"
    assert sort_versions([newer, older]) == [older, newer]
    assert latest_version([newer, older]) == newer
    # Bundle build: versions shipped oldest first, the file lists them in that order.
    built = build_bundle("b", repo, tmp_path / "out", models=[model])
    assert built.models[model] == (older, newer)
    listed = [e["version"] for e in json.loads(built.bundle_file.read_text())[model]]
    assert listed == [older, newer]
    # Root trimmer: "latest" for an omitted version, and among served versions.
    with FeatureTrimmer({"b": str(built.bundle_file)}, watch=False) as trimmer:
        assert trimmer.lookup(model).version == newer
        assert trimmer.lookup(model, servable={older, newer}).version == newer
        assert trimmer.models()[model] == (older, newer)
    # Leaf repository: the "latest" policy loads the newer one.
    repository = Repository(LeafConfig(repo=repo, models=(model,)), Placement(torch.device("cpu")))
    repository.load()
    latest = repository.slots()[model].latest
    assert latest is not None and latest.version == newer
    assert repository.resolve(model, "").version == newer


def _entry(version: str, inputs: list[str]) -> dict[str, object]:
    return {"version": version, "input_names": inputs, "output_names": ["score"]}


def test_a_duplicate_version_is_refused_by_the_build_the_manifests_and_the_root(repo: Path, tmp_path: Path) -> None:
    duplicated = tmp_path / "deployed" / "module_info.json"
    duplicated.parent.mkdir()
    duplicated.write_text(json.dumps({"model0": [_entry("9", ["a"]), _entry("9", ["b"])]}))
    # The bundle build (--include-deployed) ...
    with pytest.raises(BundleError, match="duplicate version"):
        build_bundle("b", repo, tmp_path / "out", models=["model0"], include_deployed=duplicated)
    # ... the manifest check and any other reader of bundle files (one parser) ...
    with pytest.raises(BundleError, match="duplicate version"):
        parse_bundle(duplicated.read_bytes())
    # ... and the root's trimmer, which reports it and keeps serving untrimmed.
    with FeatureTrimmer({"b": str(duplicated)}, watch=False) as trimmer:
        assert "duplicate version" in str(trimmer.status()["b"].last_error)
        assert trimmer.lookup("model0").kind == "untrimmed"


def test_render_then_parse_gives_the_same_map() -> None:
    sig = Signature(("f1", "f2"), ("score",))
    models = {"b": {v: ModelVersion.of(v, sig) for v in ("v10", "v2")}, "a": {"1": ModelVersion.of("1", sig)}}
    data = render_bundle(models)
    parsed = parse_bundle(data)
    assert list(parsed.models) == ["a", "b"]
    assert [v.version for v in parsed.models["b"]] == ["v2", "v10"]
    assert render_bundle({m: {v.version: v for v in vs} for m, vs in parsed.models.items()}) == data


@pytest.mark.parametrize(
    "name, ok",
    [("ads_ctr", True), ("1.10", True), ("2024-01-02", True), ("ünï", True), ("", False), (".", False),
     ("..", False), (".hidden", False), ("a/b", False), ("a\\b", False), ("x\0y", False), (" v1", False),
     ("bad\udcff", False), ("x" * 256, False)],
)
def test_one_name_rule_for_models_and_versions(name: str, ok: bool, tmp_path: Path) -> None:
    assert (name_problem(name) == "") is ok
    # The bundle file applies the same rule to model and version names.
    doc = {name: [_entry("1", ["f"])]} if name else {"": [_entry("1", ["f"])]}
    for data in (json.dumps(doc, ensure_ascii=False), json.dumps({"m": [_entry(name, ["f"])]}, ensure_ascii=False)):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            continue  # not even encodable: no file can hold it
        if ok:
            parse_bundle(raw)
        else:
            with pytest.raises(BundleError):
                parse_bundle(raw)
    # So does the leaf's configuration.
    if ok:
        LeafConfig(repo=tmp_path, models=(name,))
    else:
        with pytest.raises(ValueError):
            LeafConfig(repo=tmp_path, models=(name or ".",))
