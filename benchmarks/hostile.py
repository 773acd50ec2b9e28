"""``rootleaf bench hostile``: CPU spent per MiB of hostile input, per family, at every entry
point that takes bytes from outside.

Leaf ``Score`` and ``ScorePartition`` and root ``Score`` are measured on a real local cluster
(workload ``ci``, one root process): each family's bytes are sent as the raw request, and
the server process's CPU (``/proc/<pid>/stat``, less its idle rate) is divided by the MiB
sent. Package reading (``deploy.package.read_package``) and the Redis record decoder
(``root.redis_records.RecordLayout.unpack``) run in this process (``time.process_time``).
A family is a few MiB of what a valid input never holds that many of; the figure is how much
work a server does before it answers or refuses. Numbers, not a pass/fail: see
``docs/security.md`` for the figures before and after the bounds.

Uses only long-standing public APIs, so the same file measures older code too
(copy it into an older checkout and run ``python -m benchmarks.hostile`` there).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import grpc
import numpy as np

from wire.protowire import frame_field, varint

MIB = 1 << 20
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")




def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


# ---- families --------------------------------------------------------------------------

# Requests name a model the measured leaf hosts (workload ci, partition alpha), so that a
# request that parses reaches admission.
MODEL = b"m_a"


def leaf_score_families(size: int, model: bytes = MODEL) -> dict[str, bytes]:
    count = size // 2
    head = frame_field(2, model) + b"\x20\x04"  # model, num_candidates 4
    shape = frame_field(1, b"x") + b"\x10\x01" + frame_field(3, b"\x00" * size)  # packed shape of zeros
    return {
        "empty request_id fields": head + b"\x0a\x00" * count,
        "empty tensors": head + b"\x2a\x00" * count,
        "unknown varint fields": head + b"\x78\x00" * count,
        "one tensor, 4M shape dims": head + frame_field(5, shape),
    }


def leaf_partition_families(size: int, model: bytes = MODEL) -> dict[str, bytes]:
    count = size // 2
    from wire.pack_writer import encode_pack

    small_pack = encode_pack({"x": np.ones((4, 1), np.float32)}, "none").SerializeToString()  # one valid entry
    return {
        "empty request_id fields": b"\x0a\x00" * count,
        "empty models": b"\x1a\x00" * count,
        "one model, 4M copies of an index": b"\x10\x04" + frame_field(3, frame_field(1, model) + frame_field(3, b"\x00" * size))
        + frame_field(4, small_pack),
        "pack of 2M empty names": b"\x10\x04" + frame_field(3, frame_field(1, model)) + frame_field(4, b"\x0a\x00" * count),
        "pack with 4 MiB of dims": b"\x10\x04" + frame_field(3, frame_field(1, model)) + frame_field(4, small_pack + frame_field(3, bytes(size))),
    }


def root_score_families(size: int) -> dict[str, bytes]:
    count = size // 2
    return {
        "empty request_id fields": b"\x0a\x00" * count,
        "empty models": b"\x22\x00" * count,
        "4M candidate ids": b"\x10\x07" + frame_field(3, b"\x00" * size),
        "empty request features": frame_field(4, frame_field(1, b"m_a")) + b"\x2a\x00" * count,
    }


def package_families(directory: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    # Members of 60 MiB of zeros each (each under the per-member bound), gzipped: the
    # decompressed-bytes bound stops the stream.
    bomb = directory / "bomb.rootcfg.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as gz:
        for i in range(6):
            member = tarfile.TarInfo(f"configs/big{i}")
            member.size = 60 * MIB
            gz.write(member.tobuf(format=tarfile.GNU_FORMAT))
            block = bytes(MIB)
            for _ in range(60):
                gz.write(block)
    out["6 members of 60 MiB of zeros"] = bomb
    # Many empty members.
    many = io.BytesIO()
    with tarfile.open(fileobj=many, mode="w:gz") as tar:
        for i in range(20000):
            tar.addfile(tarfile.TarInfo(f"configs/f{i}"), io.BytesIO(b""))
    out["20k empty members"] = directory / "many.rootcfg.tar.gz"
    out["20k empty members"].write_bytes(many.getvalue())
    # GNU sparse members: 6 x 60 MiB of holes in a few hundred bytes.
    headers = b"".join(_sparse_header(f"configs/s{i}", 60 * MIB) for i in range(6))
    sparse = directory / "sparse.rootcfg.tar.gz"
    sparse.write_bytes(gzip.compress(headers + bytes(1024)))
    out["6 GNU sparse members (360 MiB of holes)"] = sparse
    return out


def _sparse_header(name: str, real: int) -> bytes:
    """An old-GNU sparse member's header: no stored data, one empty sparse entry at the end,
    ``real`` bytes long (all holes)."""
    header = bytearray(tarfile.TarInfo(name).tobuf(format=tarfile.GNU_FORMAT)[:512])
    header[156] = ord("S")  # GNUTYPE_SPARSE
    header[124:136] = b"%011o\0" % 0  # no stored data
    header[386:398] = b"%011o\0" % real  # one sparse entry: at the end ...
    header[398:410] = b"%011o\0" % 0  # ... of 0 bytes
    header[483:495] = b"%011o\0" % real  # realsize
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


# ---- measurement -----------------------------------------------------------------------

def _measure_rpc(target: str, method: str, payload: bytes, pid: int, idle_rate: float, budget_s: float) -> tuple[float, str]:
    """CPU ms of process ``pid`` per MiB of ``payload`` sent to ``method``, and the answer."""
    answer = ""
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 512 * MIB),
                                                ("grpc.max_receive_message_length", 512 * MIB)]) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        sent = 0
        start_cpu, start = _cpu_s(pid), time.monotonic()
        while sent < 1 or (time.monotonic() - start < budget_s and sent < 50):
            try:
                call(payload, timeout=120)
                answer = "OK"
            except grpc.RpcError as exc:
                answer = exc.code().name
            sent += 1
        _wait_quiet(pid, idle_rate)  # a server may work on after the client gave up: that counts
        elapsed = time.monotonic() - start
        cpu = _cpu_s(pid) - start_cpu - idle_rate * elapsed
    return max(cpu, 0.0) * 1000 / (sent * len(payload) / MIB), answer


def _measure_call(work: Callable[[], object], size: int, budget_s: float) -> tuple[float, str]:
    runs = 0
    answer = ""
    start = time.process_time()
    while runs < 1 or (time.process_time() - start < budget_s and runs < 50):
        try:
            work()
            answer = "accepted"
        except Exception as exc:  # what the entry point raises is the answer
            answer = type(exc).__name__
        runs += 1
    return (time.process_time() - start) * 1000 / (runs * size / MIB), answer


def _wait_quiet(pid: int, idle_rate: float, timeout_s: float = 300.0) -> None:
    """Until ``pid`` uses no more CPU than when idle (plus 5% of a core), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _idle_rate(pid, 0.5) > idle_rate + 0.05:
        pass


def _idle_rate(pid: int, seconds: float = 2.0) -> float:
    start_cpu, start = _cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_s(pid) - start_cpu) / (time.monotonic() - start)


ENTRIES = ("rpc", "package", "redis")


def run(size: int, budget_s: float, directory: Path, entries: tuple[str, ...] = ENTRIES) -> list[dict[str, object]]:
    from deploy.package import read_package

    rows: list[dict[str, object]] = []

    def add(entry: str, family: str, size_bytes: int, result: tuple[float, str]) -> None:
        rows.append({"entry": entry, "family": family, "mib": round(size_bytes / MIB, 3),
                     "cpu_ms_per_mib": round(result[0], 2), "answer": result[1]})
        print(f"{entry:22} {family:40} {size_bytes / MIB:8.3f} MiB {result[0]:10.2f} ms/MiB  {result[1]}", flush=True)

    print(f"{'entry point':22} {'family':40} {'input':>12} {'CPU':>16}  answer")
    if "rpc" in entries:
        _run_rpcs(size, budget_s, directory, add)
    if "package" in entries:
        for family, path in package_families(directory).items():
            add("package reading", family, path.stat().st_size,
                _measure_call(lambda: read_package(path), path.stat().st_size, budget_s))
    if "redis" in entries:
        _run_redis(size, budget_s, directory, add)
    return rows


def _run_rpcs(size: int, budget_s: float, directory: Path, add: Callable[[str, str, int, tuple[float, str]], None]) -> None:
    from harness.local_cluster import LocalCluster

    with LocalCluster("ci", directory / "cluster", root_overrides={"workers": 1}) as cluster:
        leaf = cluster.leaves()[0]
        root = cluster.root()
        leaf_idle, root_idle = _idle_rate(leaf.pid), _idle_rate(root.pid)
        for family, payload in leaf_score_families(size).items():
            add("leaf Score", family, len(payload),
                _measure_rpc(leaf.target, "/rootleaf.v1.Leaf/Score", payload, leaf.pid, leaf_idle, budget_s))
        for family, payload in leaf_partition_families(size).items():
            add("leaf ScorePartition", family, len(payload),
                _measure_rpc(leaf.target, "/rootleaf.v1.Leaf/ScorePartition", payload, leaf.pid, leaf_idle, budget_s))
        for family, payload in root_score_families(size).items():
            add("root Score", family, len(payload),
                _measure_rpc(root.target, "/rootleaf.v1.Root/Score", payload, root.pid, root_idle, budget_s))


def _run_redis(size: int, budget_s: float, directory: Path, add: Callable[[str, str, int, tuple[float, str]], None]) -> None:
    from harness.demo_assets import ensure_assets
    from harness.workload import builtin_workload
    from root.catalog import Entity, FeatureCatalog
    from root.redis_records import RecordLayout

    assets = ensure_assets(builtin_workload("ci"), directory / "cluster")  # the cluster's own
    layout = RecordLayout.from_catalog(FeatureCatalog.load(assets.catalog), Entity.CANDIDATE)
    count = size // 4
    families: dict[str, list[bytes | None]] = {
        "1M values of 4 bytes": [b"\0\0\0\0"] * count,
        "1M missing values": [None] * count,
        "records one byte short": [bytes(layout.record_size - 1)] * (size // layout.record_size),
    }
    for family, values in families.items():
        total = sum(5 if v is None else len(v) for v in values)  # a nil is "$-1\r\n" on the wire
        add("Redis record decoder", family, total, _measure_call(lambda: layout.unpack(values), total, budget_s))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf bench hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=4.0, help="size of each RPC family's input")
    parser.add_argument("--budget-s", type=float, default=2.0, help="time per family (at least one run)")
    parser.add_argument("--entries", default=",".join(ENTRIES),
                        help="which to measure: rpc (leaf Score, ScorePartition, root Score on a local cluster), "
                             "package, redis (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--dir", type=Path, default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rootleaf-hostile-") as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        entries = tuple(e.strip() for e in args.entries.split(",") if e.strip())
        unknown = sorted(set(entries) - set(ENTRIES))
        if unknown:
            parser.error(f"--entries: unknown {unknown}; known: {', '.join(ENTRIES)}")
        rows = run(int(args.size_mib * MIB), args.budget_s, directory, entries)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
