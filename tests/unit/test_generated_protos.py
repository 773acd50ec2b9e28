"""The committed generated modules are current and work from an installed wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from protos import generate

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale() -> None:
    assert generate.check() == [], "run: python -m protos.generate"


def test_generated_code_imports_from_an_installed_wheel(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("protos", "trimmer", "root", "leaf", "deploy", "rootleaf", "benchmarks"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheel_dir), str(source)],
        check=True,
        timeout=240,
    )
    (wheel,) = wheel_dir.glob("rootleaf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "protos/rootleaf/v1/leaf_pb2_grpc.py" in names
    assert "protos/rootleaf/v1/root_pb2.pyi" in names
    assert "protos/inference/grpc_predict_v2_pb2_grpc.py" in names
    assert "protos/inference/grpc_predict_v2.proto" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a wheel's purelib installs by unpacking
    code = (
        "import protos.rootleaf.v1.leaf_pb2_grpc as g, protos.rootleaf.v1.root_pb2 as r, wire.codec;"
        "print(r.ScoreRequest.DESCRIPTOR.full_name, g.LeafStub.__name__, g.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    full_name, stub, module_file = out.stdout.split()
    assert (full_name, stub) == ("rootleaf.v1.ScoreRequest", "LeafStub")
    assert Path(module_file).is_relative_to(site)
