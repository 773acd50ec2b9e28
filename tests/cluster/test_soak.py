"""A short ``rootleaf soak`` on the ci workload: every fault of the schedule runs once, and
nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.soak import main


@pytest.mark.cluster
def test_short_soak_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    minutes = "2" if request.config.getoption("--long") else "0.3"
    out = tmp_path / "soak.json"
    code = main(["--minutes", minutes, "--gap-s", "1", "--storm-rewrites", "60", "--dir", str(tmp_path / "c"),
                 "--json", str(out)])
    assert out.is_file(), capsys.readouterr().err  # no report: the soak could not run (why is on stderr)
    report = json.loads(out.read_text())
    # The exit code is the availability targets; what a busy machine cannot change is below.
    assert code == (0 if all(report["targets"].values()) else 1), report
    assert report["replicas"] == 2
    assert report["lost"] == 0 and report["allowlist_violations"] == 0 and report["root_alive"]
    assert report["leaf_kills"] >= 1 and report["reloads"] + report["corrupt_reloads"] >= 60 and report["corrupt_reloads"] >= 6
    assert report["slow_phases"] >= 1 and report["rollouts"] >= 1 and report["frozen_phases"] >= 1
    assert report["sent"] == report["succeeded"] + sum(report["failed_by_code"].values()) + report["lost"]
    assert set(report["failed_by_code"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert {"leaf_kill", "storm", "slow_leaf", "rollout", "frozen_leaf"} <= set(report["by_fault"])
    assert sum(row["requests"] for row in report["by_fault"].values()) == report["sent"] - report["lost"]
    # A reload storm hits no partition's availability, whatever the machine's load.
    assert report["by_fault"]["storm"]["failed_by_code"] == {}
    table = capsys.readouterr().out
    for row in ("requests sent", "succeeded", "reloads", "corrupt reloads", "leaf kills", "lost", "slow_leaf", "targets:"):
        assert row in table
