"""``rootleaf image build``: build ``deploy/docker/Dockerfile`` from this checkout and tag it
``rootleaf/rootleaf:<version>`` (the version of ``pyproject.toml``, what the manifests run).

Steps: reach or start the engine (``deploy.engine``); pick the base (``deploy.image_base``:
the registry's Python image when it can be pulled, else a Debian base made here); put the
torch wheel that ``requirements.lock`` pins into the Dockerfile's find-links directory,
fetched by this machine's own pip with its configured sources and the lock's hash (the
CPU wheel; no torch index is needed in the build); then ``docker build --network host``
with BuildKit. Writes ``<cache>/build.json`` (base, seconds, size) and prints it. Runs on
the caller's thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.engine import Engine, EngineError, ensure_engine
from deploy.image_base import BASE_KINDS, DEBIAN_BASE_IMAGE, REGISTRY_PYTHON_IMAGE, debian_base, registry_base

log = logging.getLogger("rootleaf.deploy.image")

REPO = Path(__file__).resolve().parents[1]
IMAGE_NAME = "rootleaf/rootleaf"
DOCKERFILE = Path("deploy/docker/Dockerfile")
WHEELS_DIR = Path("deploy/docker/wheels")
"""The Dockerfile's find-links directory (inside the build context)."""
DEFAULT_CACHE_DIR = Path(".rootleaf/image")


def project_version(repo: Path = REPO) -> str:
    version: str = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    return version


def image_tag(repo: Path = REPO) -> str:
    """``rootleaf/rootleaf:<version>``: what the build tags and the Kubernetes base runs."""
    return f"{IMAGE_NAME}:{project_version(repo)}"


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What one build made and how long it took."""

    tag: str
    base_image: str
    base_origin: str
    base_seconds: float
    build_seconds: float
    size_bytes: int
    storage_driver: str


def locked_requirement(lock: Path, name: str) -> str:
    """``name``'s pinned entry of a pip-compile lock, with its hashes (one requirement line)."""
    match = re.search(rf"^{re.escape(name)}==\S+(?: \\\n\s+--hash=\S+)+", lock.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise EngineError(f"{lock} pins no {name} with hashes")
    return match.group(0)


def stage_torch_wheel(repo: Path = REPO) -> Path:
    """Download the lock's torch wheel into ``WHEELS_DIR`` with this interpreter's pip (its
    configured find-links and indexes, hash-checked); other wheels there are removed."""
    wheels = repo / WHEELS_DIR
    requirement = locked_requirement(repo / "requirements.lock", "torch")
    version = requirement.split()[0].split("==", 1)[1]
    for stale in wheels.glob("*.whl"):
        if not stale.name.startswith(f"torch-{version}-"):
            stale.unlink()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="torch-") as req:
        req.write(requirement + "\n")
        req.flush()
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                               "--only-binary", ":all:", "-r", req.name, "-d", str(wheels)],
                              capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    found = sorted(wheels.glob(f"torch-{version}-*.whl"))
    if done.returncode != 0 or not found:
        raise EngineError(f"could not fetch {requirement.split()[0]} with this machine's pip: {done.stderr[-2000:]}")
    return found[0]


def build_image(engine: Engine, repo: Path = REPO, base: str = "auto", python_image: str = REGISTRY_PYTHON_IMAGE,
                cache_dir: Path | None = None, tag: str | None = None) -> BuildResult:
    """Build and tag the image (see the module docstring); raises ``EngineError``."""
    if base not in BASE_KINDS:
        raise EngineError(f"base must be one of {BASE_KINDS}, got {base!r}")
    cache = (cache_dir or repo / DEFAULT_CACHE_DIR).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    tag = tag or image_tag(repo)
    started = time.monotonic()
    origin = registry_base(engine, python_image) if base in ("auto", "registry") else None
    base_image = python_image
    if origin is None:
        if base == "registry":
            raise EngineError(f"cannot pull {python_image} (see the log); --base debian makes a base here")
        origin, base_image = debian_base(engine, cache), DEBIAN_BASE_IMAGE
    base_seconds = time.monotonic() - started
    stage_torch_wheel(repo)
    started = time.monotonic()
    build_log = cache / "build.log"
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    done = engine.run(["build", "--network", "host", "--progress", "plain", "-f", str(repo / DOCKERFILE),
                       "--build-arg", f"PYTHON_IMAGE={base_image}", "--build-arg", "TORCH_INDEX_URL=",
                       "--build-arg", f"VERSION={project_version(repo)}", "-t", tag, str(repo)],
                      timeout_s=3600, check=False, env=env)
    build_log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise EngineError(f"docker build failed ({done.returncode}); log {build_log}:\n{done.stderr[-3000:]}")
    build_seconds = time.monotonic() - started
    size = int(engine.run(["image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())
    result = BuildResult(tag, base_image, origin, round(base_seconds, 1), round(build_seconds, 1), size,
                         engine.storage_driver)
    (cache / "build.json").write_text(json.dumps(asdict(result), indent=1) + "\n", encoding="utf-8")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf image", description="build the container image from this checkout")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help=f"build deploy/docker/Dockerfile and tag {IMAGE_NAME}:<version>")
    build.add_argument("--base", choices=BASE_KINDS, default="auto",
                       help="auto: the registry's Python image when it can be pulled, else a Debian base made here")
    build.add_argument("--python-image", default=REGISTRY_PYTHON_IMAGE, help="registry base image (PYTHON_IMAGE)")
    build.add_argument("--cache-dir", type=Path, default=REPO / DEFAULT_CACHE_DIR,
                       help="the Debian base tarball, the build log and build.json")
    build.add_argument("--tag", default=None, help=f"default {IMAGE_NAME}:<pyproject version>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = ensure_engine(args.cache_dir / "engine")
    except EngineError as exc:
        print(f"rootleaf image: {exc}", file=sys.stderr)
        return 1
    try:
        result = build_image(engine, REPO, args.base, args.python_image, args.cache_dir, args.tag)
    except (EngineError, OSError) as exc:  # OSError: not a checkout (no Dockerfile, no lock)
        print(f"rootleaf image: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()  # only a daemon started here; its images stay in /var/lib/docker
    print(f"built {result.tag}: {result.size_bytes / 1e9:.2f} GB, base {result.base_image} ({result.base_origin}, "
          f"{result.base_seconds:.0f} s), build {result.build_seconds:.0f} s, storage driver {result.storage_driver}")
    return 0
