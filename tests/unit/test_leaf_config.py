"""Leaf configuration: validation names the bad field; version policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaf.cli import build_parser, config_from_args
from leaf.config import LeafConfig, VersionPolicy
from leaf.repository import version_key


def test_version_policy_parse_and_select() -> None:
    available = sorted(["1", "2", "10", "exp"], key=version_key)
    assert available == ["1", "2", "10", "exp"]
    assert VersionPolicy.parse("latest").select(["1", "2", "10"]) == ["10"]
    assert VersionPolicy.parse("latest:2").select(["1", "2", "10"]) == ["2", "10"]
    assert VersionPolicy.parse("all").select(["1", "2"]) == ["1", "2"]
    assert VersionPolicy.parse("2, 7").select(["1", "2", "10"]) == ["2"]
    for bad in ("latest:0", "latest:x", ",", ""):
        with pytest.raises(ValueError):
            VersionPolicy.parse(bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [("device", "tpu"), ("port", 70000), ("max_batch_candidates", -1), ("max_queue_requests", 0),
     ("max_queue_delay_ms", -1.0), ("recheck_interval_s", 0), ("models", "a,b"),
     ("max_inflight_bytes", 1024), ("decode_limits", {})],
)
def test_invalid_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"LeafConfig.{field}"):
        LeafConfig(Path("."), **{field: value})  # type: ignore[arg-type]


def test_cli_flags_map_onto_the_config() -> None:
    args = build_parser().parse_args(
        ["--repo", "/r", "--port", "5", "--models", "a,b", "--versions", "1,2", "--max-batch-candidates", "0",
         "--max-queue-delay-ms", "3", "--device", "cpu",
         "--max-inflight-bytes", str(3 * 1024**3)]
    )
    config = config_from_args(args)
    assert config.models == ("a", "b") and config.port == 5 and config.versions.versions == ("1", "2")
    assert config.max_batch_candidates == 0 and config.max_queue_delay_ms == 3 and config.device == "cpu"
    assert config.max_inflight_bytes == 3 * 1024**3
