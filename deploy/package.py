"""Root-config package: one deterministic ``.tar.gz`` holding a bundle file, other root
configs and a manifest (bundle name, content-derived build id, per-model versions, sha256 of
every file). Writing fixes every timestamp, owner and mode, so a rebuild from the same inputs
is byte-identical; reading checks every hash, rejects unsafe member names, invalid model and
version names and a config that would shadow the bundle file, and stops decompressing at a
bound (a small gzip bomb fails before it fills memory or disk). Pure functions on the
caller's thread.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from contract.bundle_file import BUNDLE_FILE
from contract.names import bundle_name_problem, name_problem

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PACKAGE_SUFFIX = ".rootcfg.tar.gz"
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
"""Largest package file accepted (compressed)."""
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
"""Largest decompressed archive accepted (bundle files and root configs are kilobytes to a
few megabytes); reading stops at this bound."""
MAX_MEMBERS = 4096
"""Most archive members accepted."""


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
    dropped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """model -> deployed versions the build's retention left out (manifest ``dropped``)."""

    @property
    def bundle_sha256(self) -> str:
        return hashlib.sha256(self.bundle_bytes).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_member(name: str) -> str:
    return f"bundles/{name}/{BUNDLE_FILE}"


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
    dropped: Mapping[str, tuple[str, ...]] | None = None,
) -> PackageInfo:
    """Write ``<out_dir>/<name>-<build_id>.rootcfg.tar.gz`` atomically and describe it
    (``dropped``: deployed versions left out, recorded in the manifest when any)."""
    files = {bundle_member(name): bundle_bytes}
    files.update({f"configs/{fname}": data for fname, data in configs.items()})
    body = {
        "format": FORMAT_VERSION,
        "bundle": name,
        "models": {m: list(v) for m, v in sorted(models.items())},
        "files": {member: sha256_hex(data) for member, data in sorted(files.items())},
    }
    if dropped:
        body["dropped"] = {m: list(v) for m, v in sorted(dropped.items()) if v}
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


class _BoundedReader(io.RawIOBase):
    """A decompressed stream that raises once more than ``limit`` bytes have come out."""

    def __init__(self, source: gzip.GzipFile, limit: int, where: Path) -> None:
        self._source, self._limit, self._where, self.read_total = source, limit, where, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._source.readinto(view)
        self.read_total += n
        if self.read_total > self._limit:
            raise PackageError(f"{self._where}: decompresses to more than {self._limit} bytes")
        return n


# Member types a package may hold: plain regular files. ``TarInfo.isfile()`` also accepts GNU
# sparse members, whose holes come out as zeros read from nowhere: a package of 161 bytes
# produced 360 MiB past a bound that counts the decompressed stream.
_PLAIN_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


def _read_members(path: Path, max_unpacked: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    produced = 0
    with gzip.open(path, "rb") as gz:
        stream = io.BufferedReader(_BoundedReader(gz, max_unpacked, path), 1 << 16)
        # Streaming mode ("r|"): members are read in order from the bounded stream, never by
        # seeking, so the bound holds however the archive was built.
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if len(files) >= MAX_MEMBERS:
                    raise PackageError(f"{path}: more than {MAX_MEMBERS} members")
                if info.type not in _PLAIN_FILE_TYPES or info.sparse is not None:
                    # sparse: GNU's own type, or a PAX header (GNU.sparse.*) on a regular one
                    sparse = info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE
                    kind = "sparse file" if sparse else f"type {info.type!r}"
                    raise PackageError(f"{path}: member {info.name!r} is a {kind}, not a plain regular file")
                if not _safe_member(info.name) or info.name in files:
                    raise PackageError(f"{path}: unexpected member {info.name!r}")
                if info.size > max_unpacked - produced:
                    raise PackageError(f"{path}: member {info.name!r} declares {info.size} bytes, past the "
                                       f"{max_unpacked}-byte bound with {produced} bytes read before it")
                handle = tar.extractfile(info)
                if handle is None:
                    raise PackageError(f"{path}: cannot read member {info.name!r}")
                # The bytes that come out are counted, whatever the header declared.
                data = handle.read(max_unpacked - produced + 1)
                produced += len(data)
                if produced > max_unpacked:
                    raise PackageError(f"{path}: members produce more than {max_unpacked} bytes")
                files[info.name] = data
    return files


def _check_models(path: Path, models: Mapping[Any, Any]) -> dict[str, tuple[str, ...]]:
    shipped: dict[str, tuple[str, ...]] = {}
    for model, versions in models.items():
        if problem := name_problem(model):
            raise PackageError(f"{path}: manifest names an invalid model {model!r}: it {problem}")
        if not isinstance(versions, list) or not versions:
            raise PackageError(f"{path}: manifest model {model!r} needs a non-empty list of versions")
        for version in versions:
            if problem := name_problem(version):
                raise PackageError(f"{path}: manifest model {model!r} has an invalid version {version!r}: it {problem}")
        shipped[model] = tuple(versions)
    return shipped


def read_package(path: str | Path, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> Package:
    """Read and verify a package; raises ``PackageError`` naming what is wrong."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PACKAGE_BYTES:
            raise PackageError(f"{path}: larger than {MAX_PACKAGE_BYTES} bytes")
        files = _read_members(path, max_unpacked_bytes)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
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
    if problem := bundle_name_problem(name):
        raise PackageError(f"{path}: manifest names an invalid bundle {name!r}: it {problem}")
    if not isinstance(hashes, dict) or not isinstance(models, dict):
        raise PackageError(f"{path}: manifest lacks 'files' or 'models'")
    shipped = _check_models(path, models)
    if set(hashes) != set(files):
        raise PackageError(
            f"{path}: manifest lists {sorted(hashes)} but the archive holds {sorted(files)}"
        )
    for member, digest in hashes.items():
        if sha256_hex(files[member]) != digest:
            raise PackageError(f"{path}: sha256 mismatch for {member}")
    if bundle_member(name) not in files:
        raise PackageError(f"{path}: no bundle file {bundle_member(name)}")
    configs: dict[str, bytes] = {}
    for member, data in files.items():
        if not member.startswith("configs/"):
            continue
        fname = member.removeprefix("configs/")
        # Configs are written beside the bundle file on each root (rollout config_dir defaults
        # to the bundle file's directory): one named like the bundle file would replace it.
        if "/" in fname or not fname or fname == BUNDLE_FILE or fname.startswith("."):
            raise PackageError(f"{path}: config {member!r} is not a plain file name or would overwrite the bundle")
        configs[fname] = data
    dropped = manifest.get("dropped", {})
    if not isinstance(dropped, dict):
        raise PackageError(f"{path}: manifest 'dropped' must map models to versions")
    return Package(name, build_id, shipped, files[bundle_member(name)], configs,
                   _check_models(path, dropped) if dropped else {})
