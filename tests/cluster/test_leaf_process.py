"""``rootleaf leaf`` as a real process: readiness by health check, recording, graceful stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.demo_model import build_demo_model
from leaf.export import export_model
from wire import codec
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc
from harness.processes import free_port
from tests.cluster.processes import wait_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
def test_leaf_process_serves_records_and_drains(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    module = build_demo_model({"u": 2, "i": 3}, [8], ["ctr"], seed=4)
    export_model(module, repo / "proc" / "1", ["u", "i"], ["ctr"])
    port_file = tmp_path / "port"
    record = tmp_path / "requests.jsonl"
    metrics_port = free_port()
    log = open(tmp_path / "leaf.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rootleaf.cli", "harness-leaf", "--repo", str(repo), "--port", "0", "--port-file", str(port_file),
         "--record-requests", str(record), "--metrics-port", str(metrics_port), "--torch-threads", "1"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"},
    )
    try:
        port = wait_port(port_file, proc, 60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True, timeout=30)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            stub = leaf_pb2_grpc.LeafStub(channel)
            request = leaf_pb2.LeafRequest(request_id="p-1", model="proc", num_candidates=3)
            request.features.extend([
                codec.encode("extra", np.zeros((3, 2), np.float32)),
                codec.encode("u", np.ones((1, 2), np.float32)),
                codec.encode("i", np.arange(9, dtype=np.float32).reshape(3, 3)),
            ])
            response = stub.Score(request, timeout=10)
            assert response.version == "1" and codec.decode(response.outputs[0]).shape == (3,)
        (line,) = record.read_text().splitlines()
        assert json.loads(line) == {
            "request_id": "p-1", "model": "proc", "version_requested": "", "version_served": "1",
            "feature_names": ["extra", "u", "i"], "num_candidates": 3, "wire_bytes": request.ByteSize(),
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert 'rootleaf_leaf_requests_total{code="OK",model="proc",version="1"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
