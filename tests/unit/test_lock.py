"""requirements.lock pins every dependency pyproject.toml names, within its range, with hashes.

`./run` installs only from the lock (``--require-hashes``), so a dependency added to
pyproject.toml without `./run lock` would be missing on a fresh machine; this says so first.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)")


def locked() -> dict[str, tuple[Version, list[str]]]:
    pins: dict[str, tuple[Version, list[str]]] = {}
    current = ""
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (Version(match.group(2)), [])
        elif "--hash=sha256:" in line and current:
            pins[current][1].append(line.split("--hash=sha256:")[1].split()[0])
    return pins


def test_every_dependency_is_locked_within_its_range_with_a_hash() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["dev"]]
    wanted += project["build-system"]["requires"]
    pins = locked()
    problems = []
    for spec in wanted:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name}: not in requirements.lock")
            continue
        version, hashes = pins[name]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: locked {version} outside {req.specifier}")
        if not hashes:
            problems.append(f"{req.name}: no hash")
    assert not problems, "run ./run lock: " + "; ".join(problems)


def test_torch_is_the_cpu_build() -> None:
    version, _ = locked()["torch"]
    assert version.local == "cpu", f"torch {version}: a fresh install must take the local CPU wheel"
