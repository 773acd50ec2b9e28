"""Hostile inputs to a real leaf process: its peak memory while it answers or refuses a
request stays within a small multiple of the request's size.

Each family is ~4 MiB of what a valid request never holds that many of (fields, tensors,
models, indexes, names, dims) or a shape numpy cannot build. The leaf's peak RSS is reset
before each request (``/proc/<pid>/clear_refs``, "5") and read after its answer (``VmHWM``):
what the request cost over the resident set it found, gRPC's own copies of the message
included. The leaf runs with glibc's default allocator thresholds, so freed memory is not
kept resident where a later request could reuse it unseen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.hostile import leaf_partition_families, leaf_score_families
from harness.demo_model import build_demo_model
from leaf.export import export_model
from protos.rootleaf.v1 import leaf_pb2
from tests.cluster.processes import wait_port
from tests.cluster.test_leaf_process import REPO_ROOT
from wire import codec

MIB = 1 << 20
SIZE = 4 * MIB
# gRPC holds the message twice (its slices and the Python bytes); each decoder may add a copy
# of a field it reads. Per-element work (a tuple, an int, a message per element) is 8-80x.
MULTIPLE = 4
SLACK = 24 * MIB




def _score_families() -> dict[str, bytes]:
    huge_empty = leaf_pb2.LeafRequest(model="m", num_candidates=4)
    huge_empty.features.append(codec.encode("x", np.zeros((4, 1), np.float32)))
    huge_empty.features[0].ClearField("shape")
    huge_empty.features[0].shape.extend([4, 0, 2**40, 2**40])
    huge_empty.features[0].raw_size, huge_empty.features[0].data = 0, b""
    return {**leaf_score_families(SIZE, b"m"), "empty shape, huge dims": huge_empty.SerializeToString()}


def _partition_families() -> dict[str, bytes]:
    return leaf_partition_families(SIZE, b"m")


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@pytest.mark.cluster
def test_hostile_requests_cost_a_leaf_a_small_multiple_of_their_size(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_model(build_demo_model({"x": 1}, [4], ["s"], seed=1), repo / "m" / "1", ["x"], ["s"])
    port_file = tmp_path / "port"
    log = open(tmp_path / "leaf.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rootleaf.cli", "leaf", "--repo", str(repo), "--port", "0",
         "--port-file", str(port_file), "--torch-threads", "1"],
        # glibc's default thresholds: freed buffers go back to the kernel, so the resident set
        # a request finds holds no free memory it could reuse unseen.
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ROOTLEAF_MALLOC_TUNING": "0"},
    )
    results: dict[str, tuple[str, int]] = {}
    try:
        port = wait_port(port_file, proc, 60)
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MIB)]) as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=30)
            for method, families in (("Score", _score_families()), ("ScorePartition", _partition_families())):
                call = channel.unary_unary(f"/rootleaf.v1.Leaf/{method}")
                for family, payload in families.items():
                    for _ in range(2):  # the first request of a kind may also warm the allocator
                        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
                        before = _status(proc.pid)["VmRSS"]
                        try:
                            call(payload, timeout=60)
                            code = "OK"
                        except grpc.RpcError as exc:
                            code = exc.code().name
                        grown = _status(proc.pid)["VmHWM"] - before
                    results[f"{method}: {family}"] = (code, grown)
        assert proc.poll() is None, "the leaf died"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
    report = "\n".join(f"{name}: {code}, peak +{grown / MIB:.1f} MiB" for name, (code, grown) in results.items())
    for name, (code, grown) in results.items():
        size = len((_score_families() if name.startswith("Score:") else _partition_families())[name.split(": ", 1)[1]])
        assert code in ("INVALID_ARGUMENT", "NOT_FOUND", "OK"), report
        assert grown <= MULTIPLE * size + SLACK, report
    print(report)
