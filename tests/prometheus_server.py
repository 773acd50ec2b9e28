"""A real ``prometheus`` process for tests: loopback port, temporary storage, the shipped
rules with their waits shortened (the scrape config: ``harness.monitor.scrape_config``).

``start_prometheus`` returns once ``/-/ready`` answers; ``stop()`` terminates it by pid.
The HTTP API is read with urllib: ``query`` (instant vector) and ``alerts``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import pytest
import yaml

from harness.processes import free_port

PORT_ATTEMPTS = 3
START_TIMEOUT_S = 60.0


def shortened_rules(rules_file: Path, out: Path, *, interval: str = "1s", wait: str = "2s") -> Path:
    """The rules file with every group evaluated each ``interval`` and every ``for:`` set to
    ``wait`` (expressions unchanged), so alerts fire within seconds."""
    doc = yaml.safe_load(rules_file.read_text())
    for group in doc["groups"]:
        group["interval"] = interval
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = wait
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@dataclass
class PrometheusServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: BinaryIO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self, name: str | None = None) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), those named ``name`` when given."""
        found: list[dict[str, Any]] = self.api("/api/v1/alerts")["alerts"]
        return [a for a in found if name is None or a["labels"]["alertname"] == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_prometheus(workdir: Path, config: Mapping[str, Any]) -> PrometheusServer:
    """Start ``prometheus`` on a free loopback port with ``config`` (written as JSON, which
    is YAML); a picked port taken before it bound is picked again, up to ``PORT_ATTEMPTS``."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus not found: install Debian's prometheus package (./run test does, as root)")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=1))
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        log = open(workdir / "prometheus.log", "ab")
        proc = subprocess.Popen(
            [exe, f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        server = PrometheusServer(proc, port, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and not _ready(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None and _ready(port):
            return server
        server.stop()
        text = (workdir / "prometheus.log").read_text(errors="replace")
        if "address already in use" not in text or attempt == PORT_ATTEMPTS - 1:
            raise AssertionError(f"prometheus did not become ready:\n{text[-3000:]}")
    raise AssertionError("unreachable")
