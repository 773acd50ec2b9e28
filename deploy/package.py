"""Root-config package: one deterministic ``.tar.gz`` holding a bundle file, other root
configs and a manifest (bundle name, content-derived build id, per-model versions, sha256 of
every file). Writing fixes every timestamp, owner and mode, so a rebuild from the same inputs
is byte-identical; reading checks every hash and rejects unsafe member names. Pure functions
on the caller's thread.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PACKAGE_SUFFIX = ".rootcfg.tar.gz"
MAX_PACKAGE_BYTES = 256 * 1024 * 1024


class PackageError(ValueError):
    """A package is malformed, tampered with, or cannot be read."""


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """Where a package was written and what identifies it."""

    path: Path
    name: str
    build_id: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Package:
    """A package read back and verified."""

    name: str
    build_id: str
    models: Mapping[str, tuple[str, ...]]
    """model -> versions the bundle file lists (deployed and pending)."""
    bundle_bytes: bytes
    configs: Mapping[str, bytes]
    """Other root config files by file name."""

    @property
    def bundle_sha256(self) -> str:
        return hashlib.sha256(self.bundle_bytes).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_member(name: str) -> str:
    return f"bundles/{name}/module_info.json"


def _tar_bytes(members: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member in sorted(members):
            data = members[member]
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_package(
    out_dir: Path,
    name: str,
    bundle_bytes: bytes,
    models: Mapping[str, tuple[str, ...]],
    configs: Mapping[str, bytes],
) -> PackageInfo:
    """Write ``<out_dir>/<name>-<build_id>.rootcfg.tar.gz`` atomically and describe it."""
    files = {bundle_member(name): bundle_bytes}
    files.update({f"configs/{fname}": data for fname, data in configs.items()})
    body = {
        "format": FORMAT_VERSION,
        "bundle": name,
        "models": {m: list(v) for m, v in sorted(models.items())},
        "files": {member: sha256_hex(data) for member, data in sorted(files.items())},
    }
    # The build id is derived from content only: the same inputs give the same id.
    build_id = sha256_hex(json.dumps(body, sort_keys=True).encode())[:16]
    manifest = dict(body, build_id=build_id)
    files[MANIFEST] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    blob = _tar_bytes(files)
    path = out_dir / f"{name}-{build_id}{PACKAGE_SUFFIX}"
    tmp = out_dir / f".{path.name}.tmp"
    tmp.write_bytes(blob)
    tmp.replace(path)
    return PackageInfo(path, name, build_id, sha256_hex(blob))


def _safe_member(member: str) -> bool:
    p = PurePosixPath(member)
    return not p.is_absolute() and ".." not in p.parts and member == str(p)


def read_package(path: str | Path) -> Package:
    """Read and verify a package; raises ``PackageError`` naming what is wrong."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PACKAGE_BYTES:
            raise PackageError(f"{path}: larger than {MAX_PACKAGE_BYTES} bytes")
        files: dict[str, bytes] = {}
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar.getmembers():
                if not info.isfile() or not _safe_member(info.name):
                    raise PackageError(f"{path}: unexpected member {info.name!r}")
                handle = tar.extractfile(info)
                if handle is None:
                    raise PackageError(f"{path}: cannot read member {info.name!r}")
                files[info.name] = handle.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise PackageError(f"{path}: not a readable package ({exc})") from None
    try:
        manifest = json.loads(files.pop(MANIFEST))
    except KeyError:
        raise PackageError(f"{path}: no {MANIFEST}") from None
    except ValueError as exc:
        raise PackageError(f"{path}: {MANIFEST} is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise PackageError(f"{path}: unsupported manifest format {manifest.get('format')!r}")
    name, build_id = manifest.get("bundle"), manifest.get("build_id")
    hashes, models = manifest.get("files"), manifest.get("models")
    if not isinstance(name, str) or not isinstance(build_id, str):
        raise PackageError(f"{path}: manifest lacks 'bundle' or 'build_id'")
    if not isinstance(hashes, dict) or not isinstance(models, dict):
        raise PackageError(f"{path}: manifest lacks 'files' or 'models'")
    if set(hashes) != set(files):
        raise PackageError(
            f"{path}: manifest lists {sorted(hashes)} but the archive holds {sorted(files)}"
        )
    for member, digest in hashes.items():
        if sha256_hex(files[member]) != digest:
            raise PackageError(f"{path}: sha256 mismatch for {member}")
    if bundle_member(name) not in files:
        raise PackageError(f"{path}: no bundle file {bundle_member(name)}")
    configs = {
        member.removeprefix("configs/"): data
        for member, data in files.items()
        if member.startswith("configs/")
    }
    shipped = {str(m): tuple(str(v) for v in vs) for m, vs in models.items()}
    return Package(name, build_id, shipped, files[bundle_member(name)], configs)
