"""Tracing configuration (root [tracing] table, leaf flags) and the hooks' behaviour when off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from leaf.cli import build_parser, config_from_args
from root.config import load_root_config
from tests.unit.test_root_config import GOOD, write_config
from transport import tracing
from transport.tracing import TracingConfig


def test_off_by_default_and_the_hooks_do_nothing() -> None:
    assert not TracingConfig().enabled
    tracing.configure(TracingConfig(), "test")
    assert not tracing.enabled()
    assert tracing.clock() == 0 and tracing.capture() is None
    assert tracing.server_interceptors(["/a/B"]) == () and tracing.client_interceptors() == ()

    async def answer() -> int:
        return 7

    coroutine = answer()
    assert tracing.traced(coroutine, "x") is coroutine  # handed back untouched
    assert asyncio.run(coroutine) == 7  # type: ignore[arg-type]


def test_root_tracing_table(tmp_path: Path) -> None:
    config = load_root_config(write_config(tmp_path, GOOD + '\n[tracing]\nendpoint = "127.0.0.1:4317"\nsample_ratio = 0.25\n'))
    assert config.tracing == TracingConfig(endpoint="127.0.0.1:4317", sample_ratio=0.25)
    assert config.settings()["tracing"] == "sample_ratio=0.25"
    assert load_root_config(write_config(tmp_path, GOOD)).settings()["tracing"] == "off"
    with pytest.raises(ValueError, match="unknown key 'ratio'"):
        load_root_config(write_config(tmp_path, GOOD + "\n[tracing]\nratio = 0.5\n"))
    with pytest.raises(ValueError, match="sample_ratio"):
        load_root_config(write_config(tmp_path, GOOD + '\n[tracing]\nendpoint = "x:1"\nsample_ratio = 2\n'))


def test_leaf_flags_map_onto_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--repo", str(tmp_path), "--trace-endpoint", "127.0.0.1:4317", "--trace-sample-ratio", "0.5"]
    )
    assert config_from_args(args).tracing == TracingConfig(endpoint="127.0.0.1:4317", sample_ratio=0.5)
    assert not config_from_args(build_parser().parse_args(["--repo", str(tmp_path)])).tracing.enabled
