"""Model export, signatures (standalone and embedded), calling convention, demo models."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from leaf import torchscript
from harness.demo_model import build_demo_model
from leaf.export import Signature, SignatureError, check_calling_convention, export_model, read_signature
from leaf.model import split_outputs
from leaf.errors import ModelFailed


class TwoOutputs(torch.nn.Module):
    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x = features["x"].float()
        return {"a": x.sum(dim=1), "b": x.mean(dim=1, keepdim=True)}


class Positional(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_export_writes_archive_and_standalone_signature(tmp_path: Path) -> None:
    path = export_model(TwoOutputs(), tmp_path / "m" / "3", ["x"], ["a", "b"])
    assert path == tmp_path / "m" / "3" / "model.pt"
    standalone = json.loads((path.parent / "module_info.json").read_text())
    assert standalone == {"input_names": ["x"], "output_names": ["a", "b"]}
    names = zipfile.ZipFile(path).namelist()
    (inside,) = [n for n in names if n.endswith("/extra/module_info.json")]
    assert json.loads(zipfile.ZipFile(path).read(inside)) == standalone
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt", "module_info.json"]  # no temp files
    loaded = torchscript.load(str(path), torch.device("cpu"))
    out = loaded({"x": torch.ones(2, 4)})
    assert split_outputs(out, ("a", "b"), 2, "m")["b"].tolist() == [1.0, 1.0]


def test_read_signature_prefers_standalone_then_archive(tmp_path: Path) -> None:
    path = export_model(TwoOutputs(), tmp_path, ["x"], ["a", "b"], input_dtypes={"x": "float32"}, input_shapes={"x": [4]})
    (tmp_path / "module_info.json").write_text(json.dumps({"input_names": ["x", "y"], "output_names": ["a"]}))
    assert read_signature(tmp_path) == Signature(("x", "y"), ("a",))
    (tmp_path / "module_info.json").unlink()
    assert read_signature(tmp_path) == Signature(("x",), ("a", "b"), {"x": "float32"}, {"x": (4,)})
    path.write_bytes(b"garbage")
    with pytest.raises(SignatureError, match="cannot read archive"):
        read_signature(tmp_path)


@pytest.mark.parametrize(
    "text",
    ["[]", "{", '{"input_names": "x", "output_names": ["a"]}', '{"input_names": ["x", "x"], "output_names": ["a"]}',
     '{"input_names": ["x"], "output_names": []}', '{"input_names": ["x"], "output_names": ["a"], "input_dtypes": {"x": "complex"}}',
     '{"input_names": ["x"], "output_names": ["a"], "input_shapes": {"y": [1]}}',
     '{"input_names": ["x"], "output_names": ["a"], "input_shapes": {"x": [-1]}}',
     '{"input_names": ["x"], "output_names": ["a"], "input_shapes": {"x": 3}}',
     '{"input_names": ["x"], "output_names": ["a"], "input_shapes": {"x": [true]}}'],
)
def test_malformed_signatures_are_rejected(tmp_path: Path, text: str) -> None:
    (tmp_path / "module_info.json").write_text(text)
    with pytest.raises(SignatureError):
        read_signature(tmp_path)


def test_calling_convention_is_enforced(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="Dict\\[str, Tensor\\]"):
        export_model(Positional(), tmp_path, ["x"], ["a"])
    check_calling_convention(torchscript.script(TwoOutputs()))


def test_output_convention_checks() -> None:
    rows = 3
    assert list(split_outputs(torch.zeros(rows), ("s",), rows, "m")) == ["s"]
    assert split_outputs(torch.ones(rows, 2, dtype=torch.float64), ("a", "b"), rows, "m")["b"].dtype == np.float32
    for bad in (torch.zeros(rows, 3), torch.zeros(rows + 1, 2), {"a": torch.zeros(rows)}, [torch.zeros(rows)]):
        with pytest.raises(ModelFailed, match="'m'|m "):
            split_outputs(bad, ("a", "b"), rows, "model 'm'")


def test_demo_model_is_deterministic_and_handles_ids_and_broadcast() -> None:
    widths = {"user": 2, "ids": 4, "price": 1}
    a = build_demo_model(widths, [16, 8], ["ctr", "cvr"], seed=7)
    b = build_demo_model(widths, [16, 8], ["ctr", "cvr"], seed=7)
    c = build_demo_model(widths, [16, 8], ["ctr", "cvr"], seed=8)
    inputs = {
        "user": torch.ones(1, 2).expand(5, 2),
        "ids": torch.arange(20, dtype=torch.int64).reshape(5, 4) * 99991,
        "price": torch.rand(5, 1, generator=torch.Generator().manual_seed(0)),
    }
    with torch.inference_mode():
        out = a(inputs)
        assert out.shape == (5, 2) and bool(((out > 0) & (out < 1)).all())
        assert torch.equal(out, b(inputs)) and not torch.equal(out, c(inputs))
    with pytest.raises(ValueError, match="input_widths"):
        build_demo_model({"x": 0}, [4], ["s"], 1)


def test_model_cli_exports_demo_and_reexports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness import demo_model
    from leaf import export_cli

    out = tmp_path / "demo" / "1"
    assert demo_model.main(["--out", str(out), "--inputs", "a:2,b:3:int64", "--hidden", "4",
                            "--outputs", "ctr,cvr", "--seed", "2"]) == 0
    assert read_signature(out) == Signature(("a", "b"), ("ctr", "cvr"), {"a": "float32", "b": "int64"}, {"a": (2,), "b": (3,)})
    again = tmp_path / "demo" / "2"
    examples = tmp_path / "examples.npz"
    np.savez(examples, a=np.zeros((4, 2), np.float16), b=np.zeros((4, 3), np.int32))
    assert export_cli.main(["export", "--module", str(out / "model.pt"), "--out", str(again),
                            "--inputs", "a,b", "--outputs", "ctr,cvr", "--example-inputs", str(examples)]) == 0
    assert read_signature(again) == Signature(("a", "b"), ("ctr", "cvr"), {"a": "float16", "b": "int32"}, {"a": (2,), "b": (3,)})
    # examples the model cannot run are refused, and nothing is written
    np.savez(examples, a=np.zeros((4, 5), np.float32), b=np.zeros((4, 3), np.int64))
    assert export_cli.main(["export", "--module", str(out / "model.pt"), "--out", str(tmp_path / "demo" / "3"),
                            "--inputs", "a,b", "--outputs", "ctr,cvr", "--example-inputs", str(examples)]) == 2
    assert "example inputs fail the model" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "3").exists()
    assert demo_model.main(["--out", str(out), "--inputs", "a"]) == 2
    assert "name:width" in capsys.readouterr().err
