"""``deploy/docker/Dockerfile`` against the real project, without a container engine.

The build stage's COPY lines must cover every package ``pyproject.toml`` ships; the pip
steps (the locked dependencies into a fresh virtual environment, a wheel of the copied
sources, that wheel installed into the environment) are run here as written, with only the
paths moved into a temporary directory and the torch index pointed at an empty local one.
The dependencies come from this checkout's ``.venv`` (through a ``.pth`` file, without our
own package) instead of being downloaded: what is checked is that the locked set is what
this checkout runs, that the wheel installs, and that the installed ``rootleaf`` has every
command and flag the Dockerfile and the Kubernetes manifests use, the generated protos, and
the image names and user the manifests expect. ~20 s; one test for all of it.
tests/cluster/test_image.py builds the image with a real engine and runs it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import yaml

from harness.containers import PORT_ENV

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
IMAGE = "rootleaf/rootleaf"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    out: list[tuple[str, str]] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def containers() -> list[dict[str, object]]:
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []):
                found.append({**c, "pod_security": spec.get("securityContext", {}), "file": path.name})
    return found


def shipped_packages() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}


def dependency_dir(tmp: Path) -> Path:
    """This checkout's installed dependencies, minus rootleaf itself (symlinks, no copies)."""
    site = Path(sysconfig.get_paths()["purelib"])
    ours = shipped_packages() | {"rootleaf"}
    deps = tmp / "deps"
    deps.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.split(".")[0].split("-")[0] in ours or name.startswith(("__editable__", "_rootleaf")) or name.endswith(".pth"):
            continue
        (deps / name).symlink_to(entry)
    return deps


def test_dockerfile_installs_the_project_and_the_manifests_run_what_it_builds(tmp_path: Path) -> None:
    steps = instructions(DOCKERFILE.read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    args = {k: v for k, _, v in (a.partition("=") for word, a in steps if word == "ARG")}
    assert args["VERSION"] == version

    # 1. The stages' COPY lines from the checkout (into each stage's WORKDIR, moved here);
    # the build stage's cover every shipped package.
    moves = {"/src": str(tmp_path / "src"), "/deps": str(tmp_path / "deps-stage"), "/wheels": str(tmp_path / "wheels"),
             "/opt/rootleaf": str(tmp_path / "venv")}
    stages: dict[str, list[tuple[str, str]]] = {}
    for word, rest in steps:
        if word == "FROM":
            stage = stages.setdefault(rest.split(" AS ")[1], [])
        elif word != "ARG" or stages:
            stage.append((word, rest))
    assert list(stages) == ["deps", "build", "runtime"]
    copied = set()
    for name in ("deps", "build"):
        workdir = Path(moves[next(rest for word, rest in stages[name] if word == "WORKDIR")])
        for word, rest in stages[name]:
            if word == "COPY":
                *sources, dest = shlex.split(rest)
                for source in sources:
                    copied.add(source)
                    origin, target = REPO / source, workdir / dest / (Path(source).name if len(sources) > 1 else "")
                    if origin.is_dir():
                        shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(origin, target)
    assert shipped_packages() <= copied, f"COPY misses {sorted(shipped_packages() - copied)}"
    assert {"requirements.lock", "deploy/docker/wheels"} <= copied

    # 2. The pip steps as written, in each stage's WORKDIR; only the paths and the torch index move.
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` = this interpreter
    env["TORCH_INDEX_URL"] = empty_index.as_uri()  # the build ARG, as the shell of a RUN sees it
    runs = [(name, rest) for name in stages for word, rest in stages[name] if word == "RUN" and " pip " in rest]
    assert [n for n, _ in runs] == ["deps", "build", "runtime"], runs
    assert "-c pins.txt" in runs[0][1] and "pip wheel" in runs[1][1] and "--no-deps" in runs[2][1]
    for number, (name, command) in enumerate(runs):
        workdir = next((moves[rest] for word, rest in stages[name] if word == "WORKDIR" and rest in moves), str(tmp_path))
        for old, new in moves.items():
            command = command.replace(old, new)
        if number == 0:
            # Between `python -m venv` and the install: the fresh environment sees this
            # checkout's dependencies, so pip finds the locked versions satisfied instead of
            # downloading them (a pin this checkout does not run would be fetched, and fail).
            venv_cmd, install = command.split(" && ", 1)
            subprocess.run(venv_cmd, shell=True, check=True, cwd=workdir, env=env, timeout=120)
            venv_site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
            (venv_site / "_checkout_deps.pth").write_text(f"{dependency_dir(tmp_path)}\n")
            command = install
        done = subprocess.run(command, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    pins = (tmp_path / "deps-stage" / "pins.txt").read_text()
    assert "torch==2.13.0\n" in pins and "--hash" not in pins and "\\" not in pins  # the index picks +cpu or +cuXXX

    # 3. What the image runs exists in the installed environment (not in this checkout).
    rootleaf = tmp_path / "venv" / "bin" / "rootleaf"
    python = tmp_path / "venv" / "bin" / "python"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    located = run(str(python), "-c", "import protos.rootleaf.v1.root_pb2 as r, root.cli; print(r.__file__); print(root.cli.__file__)")
    assert located.returncode == 0, located.stderr
    assert all(Path(p).is_relative_to(venv_site) for p in located.stdout.split()), located.stdout
    entrypoint = next(rest for word, rest in steps if word == "ENTRYPOINT")
    assert shlex.split(entrypoint.strip("[]").replace(",", " ")) == ["rootleaf"]
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    probe = shlex.split(health.split("CMD", 1)[1])
    # The probe's port comes from the environment; it defaults to the port the manifests serve on.
    assert probe[3] == f"127.0.0.1:${{{PORT_ENV}}}"
    assert any(f"{PORT_ENV}=50051" in rest for word, rest in steps if word == "ENV")
    flags: dict[str, set[str]] = {}
    for argv in [probe[1:]] + [list(c["args"]) for c in containers()]:  # type: ignore[call-overload]
        flags.setdefault(argv[0], set()).update(a for a in argv if a.startswith("--"))
    assert {"root", "leaf", "health"} <= set(flags)
    for command, wanted in flags.items():
        help_text = run(str(rootleaf), command, "--help")
        assert help_text.returncode == 0, (command, help_text.stderr)
        missing = [f for f in sorted(wanted) if f not in help_text.stdout]
        assert not missing, f"rootleaf {command} has no {missing}"
    # The probe really probes: nothing listens on port 1.
    assert run(str(rootleaf), "health", "--target", "127.0.0.1:1", "--timeout-s", "0.5").returncode == 1

    # 4. The manifests name the images the Dockerfile's build commands tag, and its user.
    tags = set(re.findall(rf"-t ({re.escape(IMAGE)}:\S+)", DOCKERFILE.read_text()))
    assert tags == {f"{IMAGE}:{version}", f"{IMAGE}:{version}-cuda"}
    user = next(rest for word, rest in steps if word == "USER").split(":")[0]
    for c in containers():
        image = str(c["image"])
        cuda = "cuda" in list(c["args"])  # type: ignore[call-overload]
        assert image == f"{IMAGE}:{version}{'-cuda' if cuda else ''}", (c["file"], image)
        assert c["pod_security"] == {"runAsNonRoot": True, "runAsUser": int(user), "runAsGroup": int(user)}
