"""Workload files: the shipped ones parse, bad ones are rejected naming the key, choices are seeded."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness.workload import (
    Workload,
    WorkloadError,
    builtin_workload,
    load_workload,
    parse_workload,
)
from root.catalog import Entity

MINIMAL: dict[str, Any] = {
    "workload": {"name": "t", "seed": 3, "candidates_per_request": 4, "users": 10, "items": 20},
    "features": [
        {"prefix": "u", "entity": "request", "count": 2, "dtype": "float32", "shape": [], "kind": "scalar"},
        {"prefix": "c", "entity": "candidate", "count": 10, "dtype": "float32", "shape": [],
         "kind": "ratio", "zero_fraction": 0.5},
        {"prefix": "ids", "entity": "candidate", "count": 4, "dtype": "int64", "shape": [8], "kind": "ids"},
    ],
    "models": [
        {"name": "m1", "partition": "p", "versions": ["1", "2"], "uses": {"u": 1.0, "c": 0.3},
         "hidden": [8], "outputs": ["ctr"]},
        {"name": "m2", "partition": "p", "versions": ["1"], "uses": {"c": 0.5, "ids": 0.5}},
        {"name": "m3", "partition": "q", "versions": ["1"], "uses": {"c": 0.5}},
    ],
}


def _doc(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return doc


@pytest.mark.parametrize("name", ["w1", "ci"])
def test_shipped_workloads_parse(name: str) -> None:
    workload = load_workload(builtin_workload(name))
    catalog = workload.catalog()
    assert len(catalog) == sum(g.count for g in workload.features)
    for model in workload.models:
        inputs = workload.model_inputs(model.name)
        assert inputs and len(set(inputs)) == len(inputs)
        assert all(name in catalog for name in inputs)


def test_w1_matches_its_description() -> None:
    workload = load_workload(builtin_workload("w1"))
    catalog = workload.catalog()
    request = catalog.names(Entity.REQUEST)
    candidate = catalog.names(Entity.CANDIDATE)
    assert 35 <= len(request) <= 45 and 550 <= len(candidate) <= 650
    assert sum(1 for n in request if catalog[n].shape == (500,) and catalog[n].kind == "ids") == 2
    assert len(workload.models) == 8 and len(workload.partitions()) == 3
    for model in workload.models:
        used = [n for n in workload.model_inputs(model.name) if catalog[n].entity is Entity.CANDIDATE]
        assert 0.09 <= len(used) / len(candidate) <= 0.31, model.name
    # the production model and its variants share most of their features
    base = set(workload.model_inputs("ads_ctr"))
    for variant in ("ads_ctr_exp_a", "ads_ctr_exp_b"):
        assert len(base & set(workload.model_inputs(variant))) >= 0.8 * len(base)


def test_selection_is_seeded_and_nested_within_a_partition() -> None:
    one = parse_workload(_doc())
    assert one.model_inputs("m1") == parse_workload(_doc()).model_inputs("m1")
    m1_c = {n for n in one.model_inputs("m1") if n.startswith("c_")}
    m2_c = {n for n in one.model_inputs("m2") if n.startswith("c_")}
    assert len(m1_c) == 3 and len(m2_c) == 5 and m1_c < m2_c  # same partition: nested
    assert one.model_inputs("m1")[:2] == ["u_0", "u_1"]  # group (file) order, then index order
    reseeded = parse_workload(_doc(workload__seed=4))
    picks = {tuple(parse_workload(_doc(workload__seed=s)).model_inputs("m3")) for s in range(6)}
    assert len(picks) > 1
    assert one.content_hash() != reseeded.content_hash()
    assert one.content_hash() == parse_workload(_doc()).content_hash()


def test_toml_file_round_trip(tmp_path: Path) -> None:
    text = builtin_workload("ci").read_text()
    path = tmp_path / "w.toml"
    path.write_text("# a comment does not change the hash\n" + text)
    assert load_workload(path).content_hash() == parse_workload(tomllib.loads(text)).content_hash()


@pytest.mark.parametrize(
    "doc, key",
    [
        ({**MINIMAL, "extra": 1}, "'extra'"),
        (_doc(workload__speed=1), "'speed'"),
        (_doc(features__0__colour="red"), "'colour'"),
        (_doc(models__0__layers=[1]), "'layers'"),
    ],
)
def test_unknown_keys_are_named(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(WorkloadError, match=f"unknown key {key}"):
        parse_workload(doc)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"workload__seed": -1}, "workload.seed"),
        ({"workload__candidates_per_request": 0}, "candidates_per_request"),
        ({"workload__candidates_per_request": 21}, "exceeds items"),
        ({"workload__users": "many"}, "workload.users"),
        ({"features__0__entity": "session"}, "entity"),
        ({"features__0__dtype": "bfloat16"}, "dtype"),
        ({"features__0__count": 0}, "count"),
        ({"features__1__zero_fraction": 1.5}, "zero_fraction"),
        ({"features__1__kind": "gaussian"}, "kind"),
        ({"features__2__shape": [0]}, "shape"),
        ({"features__2__dtype": "float32"}, "int type for kind 'ids'"),
        ({"features__1__prefix": "u"}, "duplicate prefix"),
        ({"models__0__uses": {"c": 0.0}}, "uses.c"),
        ({"models__0__uses": {"nope": 0.5}}, "unknown feature group 'nope'"),
        ({"models__0__versions": []}, "versions"),
        ({"models__0__hidden": [0]}, "hidden"),
        ({"models__1__name": "m1"}, "duplicate name"),
        ({"models__0__partition": "a b"}, "partition"),
    ],
)
def test_bad_values_are_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        parse_workload(_doc(**changes))


def test_missing_sections_and_keys() -> None:
    doc = _doc()
    del doc["models"]
    with pytest.raises(WorkloadError, match="missing key 'models'"):
        parse_workload(doc)
    doc = _doc()
    del doc["features"][0]["dtype"]
    with pytest.raises(WorkloadError, match="missing key 'dtype'"):
        parse_workload(doc)


def test_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[workload\n")
    with pytest.raises(WorkloadError, match="not valid TOML"):
        load_workload(bad)
    with pytest.raises(WorkloadError, match="cannot read"):
        load_workload(tmp_path / "absent.toml")
    with pytest.raises(WorkloadError, match="no workload file"):
        builtin_workload("no_such_workload")


def test_partitions_and_widths() -> None:
    workload: Workload = parse_workload(_doc())
    assert workload.partitions() == {"p": ["m1", "m2"], "q": ["m3"]}
    widths = workload.input_widths("m2")
    assert all(widths[n] == 8 for n in widths if n.startswith("ids_"))
    assert workload.model_seed("m1", "1") != workload.model_seed("m1", "2")
