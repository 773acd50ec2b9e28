"""The base image the rootleaf image builds ``FROM``: the registry's Python image when the
engine can pull it, else a Debian bookworm made here.

The Debian base is ``debootstrap --variant=minbase bookworm`` with Python 3.11, pip and venv,
the build machine's CA certificates (so pip inside the build reaches the package index the
way this machine does), apt lists and docs dropped, imported with ``docker import``. Its
root file system is kept as a tarball in the cache directory (a fresh engine imports it in
seconds instead of bootstrapping for a minute); the tarball's name carries a digest of what
went into it. Functions run on the caller's thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy.engine import Engine, EngineError

log = logging.getLogger("rootleaf.deploy.image_base")

REGISTRY_PYTHON_IMAGE = "python:3.11-slim-bookworm"
"""The Dockerfile's default ``PYTHON_IMAGE``."""
DEBIAN_BASE_IMAGE = "rootleaf/debian-python:bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
_DROPPED = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
"""Emptied in the base: apt's caches and documentation (nothing in the image reads them)."""
BASE_KINDS = ("auto", "registry", "debian")


@dataclass(frozen=True, slots=True)
class Base:
    """The base image a build used, and how it came to be."""

    image: str
    origin: str
    """"local" (already in the engine), "pulled", "imported" (cached tarball), "debootstrap"."""
    seconds: float


def ca_bundle() -> Path:
    """This machine's CA bundle: what pip here uses (``PIP_CERT``), else OpenSSL's default."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile,
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise EngineError("no CA bundle found on this machine (PIP_CERT, SSL_CERT_FILE, /etc/ssl/certs)")


def _has_image(engine: Engine, image: str) -> bool:
    return engine.run(["image", "inspect", "--format", "{{.Id}}", image], check=False).returncode == 0


def registry_base(engine: Engine, image: str = REGISTRY_PYTHON_IMAGE) -> str | None:
    """``image`` when the engine has it or can pull it (None otherwise, with the reason logged)."""
    if _has_image(engine, image):
        return "local"
    pulled = engine.run(["pull", "--quiet", image], timeout_s=600, check=False)
    if pulled.returncode == 0:
        return "pulled"
    log.info("no registry base image %s: %s", image, pulled.stderr.strip()[-300:])
    return None


def debian_base(engine: Engine, cache_dir: Path, mirror: str = DEBIAN_MIRROR) -> str:
    """Make ``DEBIAN_BASE_IMAGE`` in the engine (see the module); returns how it was obtained."""
    cert = ca_bundle()
    digest = hashlib.sha256("\n".join((DEBIAN_SUITE, mirror, *DEBIAN_PACKAGES, *_DROPPED)).encode()
                            + cert.read_bytes()).hexdigest()[:16]
    tarball = cache_dir / f"debian-{DEBIAN_SUITE}-python3-{digest}.tar"
    if _has_image(engine, DEBIAN_BASE_IMAGE) and _image_label(engine) == digest:
        return "local"
    origin = "imported"
    if not tarball.is_file():
        _bootstrap(tarball, cert, mirror)
        origin = "debootstrap"
    engine.run(["import", "--change", f"LABEL org.rootleaf.base={digest}", str(tarball), DEBIAN_BASE_IMAGE],
               timeout_s=600)
    return origin


def _image_label(engine: Engine) -> str:
    done = engine.run(["image", "inspect", "--format", '{{index .Config.Labels "org.rootleaf.base"}}',
                       DEBIAN_BASE_IMAGE], check=False)
    return done.stdout.strip()


def _bootstrap(tarball: Path, cert: Path, mirror: str) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise EngineError("no registry base image and no debootstrap to make one (Debian's debootstrap: "
                          "./run image installs it as root)")
    if os.geteuid() != 0:
        raise EngineError("debootstrap needs root to make the Debian base image")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debian-base-", dir=tarball.parent) as work:
        root = Path(work) / "root"
        log.info("debootstrap %s into %s (about a minute)", DEBIAN_SUITE, root)
        done = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", DEBIAN_SUITE, str(root), mirror],
            capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise EngineError(f"debootstrap failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        for path in _DROPPED:
            target = root / path
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        shutil.copyfile(cert, root / "etc/ssl/certs/ca-certificates.crt")
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=600)
        partial.replace(tarball)
