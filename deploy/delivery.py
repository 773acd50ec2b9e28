"""Atomic delivery to a root's config directory and a leaf's model repository, with backups.

A file is written to a temporary name in the same directory, fsynced, renamed over the
target and the directory fsynced, so a watcher sees exactly one complete new file. A version
directory is copied into ``<repo>/<model>/.<version>.incoming-*`` (a name leaves ignore) and
renamed into place. Every delivery returns a ``Change`` recording what was there before
(a backup copy in the state directory, or nothing) so ``revert`` can restore it. Blocking
file I/O: callers run it off their event loop (the rollout uses ``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping


class DeliveryError(RuntimeError):
    """A delivery or a revert could not be completed."""


@dataclass(frozen=True, slots=True)
class Change:
    """One applied delivery and how to undo it."""

    kind: Literal["file", "version", "configmap", "job"]
    """file, version: local delivery; configmap, job: Kubernetes (``deploy.k8s_delivery``)."""
    target: str
    """Absolute path of the delivered file or version directory."""
    new_sha256: str
    """Hash of what was delivered (file bytes or directory tree)."""
    backup: str | None
    """Backup copy of the previous file (kind "file"); None when there was none."""
    old_sha256: str | None
    """Hash of the previous file; None when there was none."""
    host: str
    """Which host this change belongs to (role, kind, target), for reports."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Change":
        return cls(**doc)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> str:
    """Hash of a directory tree: relative paths and file contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        digest.update(rel.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def deliver_file(path: Path, data: bytes, backup_dir: Path, host: str) -> Change | None:
    """Write ``data`` to ``path`` atomically; None when the file already holds exactly it."""
    new = hashlib.sha256(data).hexdigest()
    backup: str | None = None
    old: str | None = None
    try:
        if path.exists():
            old = sha256_file(path)
            if old == new:
                return None
            backup_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".bak", dir=backup_dir)
            os.close(fd)
            shutil.copyfile(path, name)
            backup = name
        atomic_write(path, data)
    except OSError as exc:
        raise DeliveryError(f"{host}: cannot write {path} ({exc})") from None
    return Change("file", str(path), new, backup, old, host)


def deliver_version(source: Path, repo_dir: Path, model: str, host: str) -> Change | None:
    """Copy ``source`` (a version directory) to ``<repo>/<model>/<version>`` atomically.

    None when an identical copy is already there; a different copy is a ``DeliveryError``
    (a loaded version is never overwritten in place: ship a new version instead).
    """
    version = source.name
    model_dir = repo_dir / model
    target = model_dir / version
    new = tree_sha256(source)
    if target.exists():
        if tree_sha256(target) == new:
            return None
        raise DeliveryError(f"{host}: {target} exists with different content")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.incoming-", dir=model_dir))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            for path in staging.rglob("*"):
                if path.is_file():
                    with path.open("rb") as fh:
                        os.fsync(fh.fileno())
            os.chmod(staging, 0o755)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(model_dir)
    except OSError as exc:
        raise DeliveryError(f"{host}: cannot deliver {source} to {target} ({exc})") from None
    return Change("version", str(target), new, None, None, host)


def revert(change: Change) -> None:
    """Undo one change: restore the backed-up file, remove a new file or version directory."""
    target = Path(change.target)
    try:
        if change.kind == "file":
            if change.backup is not None:
                atomic_write(target, Path(change.backup).read_bytes())
            elif target.exists():
                target.unlink()
                _fsync_dir(target.parent)
        else:
            if target.exists():
                # Rename out of the way first so the leaf sees the version vanish at once.
                graveyard = Path(tempfile.mkdtemp(prefix=f".{target.name}.removed-", dir=target.parent))
                os.rename(target, graveyard / target.name)
                _fsync_dir(target.parent)
                shutil.rmtree(graveyard)
    except OSError as exc:
        raise DeliveryError(f"{change.host}: cannot revert {target} ({exc})") from None
