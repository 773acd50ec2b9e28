"""``rootleaf bench scale --preset quick``: every axis runs, the table, JSON and one PNG per
axis are written, every point scores identically in both modes with no errors, and the
trimmed mode's bytes stay within 1.05x of the partition floor at every point (bytes are
deterministic; no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.scale import AXES, BYTES_TARGET, PRESETS, main, sweep


@pytest.mark.cluster
def test_quick_scale_sweep_writes_its_files_and_meets_the_byte_target(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["--preset", "quick", "--dir", str(tmp_path / "work"), "--out", str(out)])
    doc = json.loads((out / "scale.json").read_text())
    assert code == 0
    assert len(doc["points"]) == len(sweep(PRESETS["quick"], AXES))
    for axis in AXES:
        png = out / f"scale_{axis}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [r["point"][axis] for r in doc["by_axis"][axis]] == list(PRESETS["quick"].axes[axis])
    for r in doc["points"]:
        for mode in ("untrimmed", "trimmed"):
            assert r[mode]["errors"] == 0 and r[mode]["scores_match_baseline"]
        assert r["trimmed"]["wire_over_partition_floor"] <= BYTES_TARGET
        assert r["trimmed"]["wire_bytes_per_request"] < r["untrimmed"]["wire_bytes_per_request"]
    bytes_target = doc["targets"][0]
    assert bytes_target["met"] and bytes_target["value"] <= BYTES_TARGET
