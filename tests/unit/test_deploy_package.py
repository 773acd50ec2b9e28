"""Root-config packages read back from hostile archives: names, config members, size bounds."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any, Mapping

import pytest

from deploy.package import (
    FORMAT_VERSION,
    MANIFEST,
    PackageError,
    bundle_member,
    read_package,
    sha256_hex,
    write_package,
)

BUNDLE = b'{"ctr": [{"version": "1", "input_names": ["f1"], "output_names": ["score"]}]}\n'


def _forge(path: Path, manifest_patch: Mapping[str, Any], files: Mapping[str, bytes]) -> Path:
    """A package whose hashes are right but whose manifest says what the test wants."""
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "bundle": "ads",
        "build_id": "0" * 16,
        "models": {"ctr": ["1"]},
        "files": {m: sha256_hex(d) for m, d in files.items()},
    }
    manifest.update(manifest_patch)
    members = dict(files)
    members[MANIFEST] = json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_written_package_reads_back(tmp_path: Path) -> None:
    info = write_package(tmp_path, "ads", BUNDLE, {"ctr": ("1",)}, {"routing.toml": b"x = 1\n"})
    package = read_package(info.path)
    assert package.bundle_bytes == BUNDLE and dict(package.configs) == {"routing.toml": b"x = 1\n"}


@pytest.mark.parametrize(
    "models, match",
    [
        ({"../../etc": ["1"]}, "invalid model"),
        ({"": ["1"]}, "invalid model"),
        ({"ctr": ["../2"]}, "invalid version"),
        ({"ctr": ["1/../../x"]}, "invalid version"),
        ({"ctr": [7]}, "invalid version"),
        ({"ctr": []}, "non-empty list"),
        ({"ctr": "1"}, "non-empty list"),
    ],
)
def test_manifest_model_and_version_names_are_validated(
    tmp_path: Path, models: dict[str, Any], match: str
) -> None:
    path = _forge(tmp_path / "p.tar.gz", {"models": models}, {bundle_member("ads"): BUNDLE})
    with pytest.raises(PackageError, match=match):
        read_package(path)


def test_manifest_bundle_name_is_validated(tmp_path: Path) -> None:
    path = _forge(tmp_path / "p.tar.gz", {"bundle": "a b"}, {bundle_member("a b"): BUNDLE})
    with pytest.raises(PackageError, match="invalid bundle"):
        read_package(path)


@pytest.mark.parametrize("config", ["configs/module_info.json", "configs/sub/x.toml", "configs/.hidden"])
def test_config_that_would_overwrite_the_bundle_is_refused(tmp_path: Path, config: str) -> None:
    path = _forge(tmp_path / "p.tar.gz", {}, {bundle_member("ads"): BUNDLE, config: b"{}"})
    with pytest.raises(PackageError, match="would overwrite the bundle"):
        read_package(path)


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for data in (BUNDLE, b"{}"):
            info = tarfile.TarInfo(bundle_member("ads"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(PackageError, match="unexpected member"):
        read_package(path)


def _bomb(path: Path, unpacked: int) -> Path:
    """A gzip of one tar member of ``unpacked`` zero bytes (compresses ~1000:1)."""
    header = tarfile.TarInfo("configs/zeros.bin")
    header.size = unpacked
    block = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        for _ in range(unpacked >> 20):
            gz.write(block)
    return path


def test_gzip_bomb_stops_at_the_unpacked_bound(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "bomb.tar.gz", 64 << 20)
    assert path.stat().st_size < 1 << 20  # small on disk, 64 MiB unpacked
    with pytest.raises(PackageError, match="more than 8388608 bytes|declares"):
        read_package(path, max_unpacked_bytes=8 << 20)


def test_gzip_bomb_is_bounded_even_when_the_header_lies(tmp_path: Path) -> None:
    """A member header claiming a small size cannot hide data: tar reads what it declares,
    and the stream bound counts every decompressed byte, headers and padding included."""
    path = tmp_path / "lie.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz:
        for i in range(40):
            info = tarfile.TarInfo(f"configs/c{i}.bin")
            info.size = 1 << 20
            gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
            gz.write(bytes(1 << 20))
    with pytest.raises(PackageError, match="more than 8388608 bytes"):
        read_package(path, max_unpacked_bytes=8 << 20)


def _gnu_sparse_header(name: str, real_size: int) -> bytes:
    """An old-GNU sparse member header (type 'S'): no data stored, ``real_size`` bytes of hole."""
    info = tarfile.TarInfo(name)
    info.size = 0
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    buf[156:157] = tarfile.GNUTYPE_SPARSE
    buf[483:495] = f"{real_size:011o}\0".encode()  # realsize; the sparse map stays empty
    buf[148:156] = b" " * 8
    buf[148:156] = f"{sum(buf[:512]):06o}\0 ".encode()
    return bytes(buf)


def _pax_sparse_member(name: str, real_size: int) -> bytes:
    """A regular member whose PAX header (GNU sparse 0.1) makes it all hole."""
    info = tarfile.TarInfo(name)
    info.size = 0
    info.pax_headers = {"GNU.sparse.map": f"{real_size - 1},0", "GNU.sparse.size": str(real_size)}
    return info.tobuf(format=tarfile.PAX_FORMAT)


@pytest.mark.parametrize("member", [_gnu_sparse_header, _pax_sparse_member])
def test_sparse_members_are_refused_before_their_holes_are_read(
    tmp_path: Path, member: Any
) -> None:
    """Holes come out of the tar reader, not the gzip stream: six members of 60 MiB of hole
    fit in a few hundred bytes. Refused on the header; what the read allocates stays small."""
    path = tmp_path / "sparse.tar.gz"
    with gzip.open(path, "wb") as gz:
        for i in range(6):
            gz.write(member(f"configs/hole{i}.bin", 60 << 20))
        gz.write(bytes(1024))
    assert path.stat().st_size < 4096
    tracemalloc.start()
    try:
        with pytest.raises(PackageError, match="hole0.bin' is a sparse file, not a plain regular file"):
            read_package(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CONTTYPE, tarfile.FIFOTYPE])
def test_members_that_are_not_plain_files_are_refused(tmp_path: Path, kind: bytes) -> None:
    path = tmp_path / "odd.tar.gz"
    info = tarfile.TarInfo("configs/odd")
    info.type = kind
    with gzip.open(path, "wb") as gz:
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1024))
    with pytest.raises(PackageError, match="configs/odd' is a type"):
        read_package(path)


def test_bytes_produced_are_bounded_across_members(tmp_path: Path) -> None:
    """Ten members of 1 MiB each, every one under the bound alone: the sum is what counts."""
    path = tmp_path / "many.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz:
        for i in range(10):
            info = tarfile.TarInfo(f"configs/c{i}.bin")
            info.size = 1 << 20
            gz.write(info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1 << 20))
        gz.write(bytes(1024))
    with pytest.raises(PackageError, match="past the 4194304-byte bound|more than 4194304 bytes"):
        read_package(path, max_unpacked_bytes=4 << 20)


def _members(path: Path, headers: list[bytes], sizes: list[int]) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as gz:
        for header, size in zip(headers, sizes):
            gz.write(header + bytes(-(-size // 512) * 512))
        gz.write(bytes(1024))
    return path


def _plain(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def test_reading_hostile_packages_allocates_at_most_twice_the_unpacked_bound(tmp_path: Path) -> None:
    """Families of hostile packages, each refused; the reader's peak Python allocation stays
    within twice ``max_unpacked_bytes`` (plus a constant), whatever the package claims."""
    bound = 8 << 20
    families = {
        "gzip bomb": _bomb(tmp_path / "bomb.tar.gz", 64 << 20),
        "many members": _members(tmp_path / "many.tar.gz", [_plain(f"configs/c{i}", 1 << 20) for i in range(20)],
                                 [1 << 20] * 20),
        "gnu sparse": _members(tmp_path / "gnu.tar.gz", [_gnu_sparse_header(f"configs/h{i}", 60 << 20) for i in range(6)],
                               [0] * 6),
        "pax sparse": _members(tmp_path / "pax.tar.gz", [_pax_sparse_member(f"configs/h{i}", 60 << 20) for i in range(6)],
                               [0] * 6),
    }
    for family, path in families.items():
        tracemalloc.start()
        try:
            with pytest.raises(PackageError):
                read_package(path, max_unpacked_bytes=bound)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= 2 * bound + (1 << 20), (family, peak)
