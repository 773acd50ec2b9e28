"""Bundle file parsing and validation, version order, trimmer config; also the small file
helpers the other trimmer tests share."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import pytest

from contract.bundle_file import BundleError, parse_bundle
from contract.versions import version_key as version_sort_key
from trimmer import TrimmerConfig

Models = Mapping[str, Mapping[str, list[str]]]


def bundle_doc(models: Models) -> dict[str, list[dict[str, Any]]]:
    """``{"model": {"version": [features]}}`` -> the bundle file format."""
    return {
        model: [{"version": v, "input_names": list(f), "output_names": ["score"]} for v, f in versions.items()]
        for model, versions in models.items()
    }


def bundle_bytes(models: Models) -> bytes:
    return json.dumps(bundle_doc(models)).encode()


def write_in_place(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def raw(entries: object) -> bytes:
    return json.dumps(entries).encode()


def test_parse_valid_bundle_orders_versions_and_counts() -> None:
    data = bundle_bytes({"m": {"10": ["a", "b"], "9": ["a"], "2": []}, "n": {"v1": ["x"]}})
    bundle = parse_bundle(data)
    assert bundle.model_count == 2
    assert bundle.version_count == 4
    assert [v.version for v in bundle.models["m"]] == ["2", "9", "10"]
    assert bundle.models["m"][-1].input_names == ("a", "b")
    assert bundle.models["m"][-1].features == frozenset({"a", "b"})
    assert bundle.models["m"][0].features == frozenset()


def _entry(**over: object) -> dict[str, object]:
    entry: dict[str, object] = {"version": "1", "input_names": ["f1"], "output_names": ["score"]}
    entry.update(over)
    return entry


INVALID: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty file"),
    "whitespace": (b"  \n\t ", "empty file"),
    "binary_garbage": (bytes(range(256)) * 4, "not UTF-8"),
    "truncated": (bundle_bytes({"m": {"1": ["a", "b"]}})[:-7], "invalid JSON"),
    "top_level_list": (raw([_entry()]), "top level must be an object"),
    "model_maps_to_object": (raw({"m": _entry()}), "must map to a list"),
    "no_versions": (raw({"m": []}), "has no versions"),
    "entry_not_object": (raw({"m": ["1"]}), "must be an object"),
    "missing_key": (raw({"m": [{"version": "1", "input_names": []}]}), "missing key(s) ['output_names']"),
    "unknown_key": (raw({"m": [_entry(extra=1)]}), "unknown key(s) ['extra']"),
    "version_int": (raw({"m": [_entry(version=1)]}), "must be a non-empty string"),
    "version_empty": (raw({"m": [_entry(version="")]}), "must be a non-empty string"),
    "duplicate_version": (raw({"m": [_entry(), _entry(input_names=["g"])]}), "duplicate version"),
    "inputs_not_list": (raw({"m": [_entry(input_names="f1")]}), "'input_names' must be a list"),
    "input_empty_name": (raw({"m": [_entry(input_names=["a", ""])]}), "input_names[1] must be a non-empty string"),
    "input_not_string": (raw({"m": [_entry(input_names=["a", 3])]}), "input_names[1] must be a non-empty string"),
    "duplicate_input": (raw({"m": [_entry(input_names=["a", "b", "a"])]}), "duplicate name 'a' in 'input_names'"),
    "outputs_wrong_type": (raw({"m": [_entry(output_names=[None])]}), "output_names[0]"),
    "empty_model_name": (raw({"": [_entry()]}), "must be a non-empty string"),
    "duplicate_model_key": (b'{"m": [' + raw(_entry()) + b'], "m": []}', "duplicate key 'm'"),
    "latin1": ('{"m\xe9": []}'.encode("latin-1"), "not UTF-8"),
    "deep_nesting": (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_bundle_is_rejected_with_reason(case: str) -> None:
    data, expected = INVALID[case]
    with pytest.raises(BundleError) as info:
        parse_bundle(data)
    assert expected in info.value.reason


def test_version_order_numeric_then_natural() -> None:
    versions = ["10", "9", "1", "100", "2"]
    assert sorted(versions, key=version_sort_key) == ["1", "2", "9", "10", "100"]
    mixed = ["1.10", "1.9", "v10", "v2", "2", "2.0", "abc"]
    assert sorted(mixed, key=version_sort_key) == ["1.9", "1.10", "2", "2.0", "abc", "v2", "v10"]
    # Equal numbers with different spellings still order deterministically.
    assert sorted(["1", "01"], key=version_sort_key) == ["01", "1"]


def test_config_defaults_and_validation_name_the_field() -> None:
    cfg = TrimmerConfig()
    assert cfg.recheck_interval_s == 30.0
    assert cfg.debounce_s <= cfg.max_debounce_s
    for field, value in [
        ("debounce_s", -1.0),
        ("recheck_interval_s", float("nan")),
        ("recheck_interval_s", True),
        ("max_file_bytes", 0),
        ("max_debounce_s", 0.01),
    ]:
        with pytest.raises(ValueError, match=field):
            TrimmerConfig(**{field: value})
