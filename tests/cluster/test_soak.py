"""A short ``rootleaf soak`` on the ci workload: every fault of the schedule runs once, and
nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.soak import main


@pytest.mark.cluster
def test_short_soak_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    minutes = "2" if request.config.getoption("--long") else "0.3"
    out = tmp_path / "soak.json"
    code = main(["--minutes", minutes, "--gap-s", "1", "--storm-rewrites", "60", "--dir", str(tmp_path / "c"),
                 "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["lost"] == 0 and report["allowlist_violations"] == 0 and report["root_alive"]
    assert report["leaf_kills"] >= 1 and report["reloads"] + report["corrupt_reloads"] >= 60 and report["corrupt_reloads"] >= 6
    assert report["slow_phases"] >= 1
    assert report["sent"] == report["succeeded"] + sum(report["failed_by_code"].values()) + report["lost"]
    assert set(report["failed_by_code"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    table = capsys.readouterr().out
    for row in ("requests sent", "succeeded", "reloads", "corrupt reloads", "leaf kills", "lost"):
        assert row in table
