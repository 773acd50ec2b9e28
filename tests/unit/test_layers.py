"""The layout's one rule: packages import downward only. Every import of every module
(function-level ones included) is checked against the table below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Package -> the project packages it may import. Bottom to top: the contract and the
# protocol; the wire format and transport; the trimmer; root and leaf (never each other);
# deploy (contract and wire only); then the harness, the benchmarks and the CLI.
ALLOWED: dict[str, frozenset[str]] = {
    "contract": frozenset(),
    "protos": frozenset(),
    "wire": frozenset({"contract", "protos"}),
    "transport": frozenset(),
    "trimmer": frozenset({"contract"}),
    "root": frozenset({"contract", "protos", "wire", "transport", "trimmer"}),
    "leaf": frozenset({"contract", "protos", "wire", "transport"}),
    "deploy": frozenset({"contract", "protos", "wire", "transport"}),
    "harness": frozenset({"contract", "protos", "wire", "transport", "trimmer", "root", "leaf", "deploy"}),
    "benchmarks": frozenset({"contract", "protos", "wire", "transport", "trimmer", "root", "leaf", "deploy", "harness"}),
    "rootleaf": frozenset({"transport"}),  # dispatches by module name; arms the parent-death signal first
}
PACKAGES = frozenset(ALLOWED) | {"tests"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, top in imports_of(path):
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                out.append(f"{path.relative_to(REPO)}:{line} imports {top}")
    return out


def test_every_package_of_the_distribution_is_in_the_table() -> None:
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert on_disk == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_go_downward_only(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from leaf.server import serve\n    import root.cli\n")
    assert imports_of(module) == [(2, "leaf"), (3, "root")]
