"""The trimming kill switch: a hot-reloaded file next to the bundles turns trimming off for
one model or all, is logged and shown as a metric; a bad file keeps the last good state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.unit.test_trimmer_files import bundle_bytes, write_atomic
from trimmer import FeatureTrimmer
from trimmer.kill_switch import KillSwitchError, parse_kill_switch

WAIT_S = 10.0  # bound of each wait for a reload (they take ~0.1 s)


def _off(model: str) -> float:
    return REGISTRY.get_sample_value("rootleaf_trimmer_trimming_off", {"model": model}) or 0.0


@pytest.mark.parametrize(
    "text, off",
    [(b"", set()), (b"{}", set()), (b'{"trimming_off": []}', set()), (b'{"trimming_off": ["*"]}', {"*"}),
     (b'{"trimming_off": ["a", "b"]}', {"a", "b"})],
)
def test_parse(text: bytes, off: set[str]) -> None:
    assert parse_kill_switch(text) == off


@pytest.mark.parametrize(
    "text, reason",
    [(b"[1]", "top level"), (b'{"off": ["a"]}', "unknown key"), (b'{"trimming_off": "a"}', "must be a list"),
     (b'{"trimming_off": ["../x"]}', "not a model name"), (b"{", "not JSON")],
)
def test_parse_refuses(text: bytes, reason: str) -> None:
    with pytest.raises(KillSwitchError, match=reason):
        parse_kill_switch(text)


def test_switch_on_a_running_trimmer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundles = tmp_path / "bundles"
    (bundles / "ads").mkdir(parents=True)
    bundle = bundles / "ads" / "module_info.json"
    write_atomic(bundle, bundle_bytes({"a": {"1": ["f1"]}, "b": {"1": ["f2"]}}))
    switch = bundles / "kill_switch.json"
    caplog.set_level(logging.WARNING, logger="trimmer.kill_switch")
    with FeatureTrimmer({"ads": bundle}, kill_switch=switch, debounce_s=0.01) as t:
        assert t.lookup("a").kind == "latest" and t.trimming_off == frozenset()
        write_atomic(switch, b'{"trimming_off": ["a"]}')
        assert t.wait_until(lambda: t.trimming_off == {"a"}, WAIT_S)
        assert t.lookup("a").features is None and t.lookup("a", "1").kind == "untrimmed"
        assert t.lookup("b").features == {"f2"}
        assert _off("a") == 1.0
        assert "trimming is OFF for ['a']" in caplog.text
        write_atomic(switch, b'{"trimming_off": ["*"]}')
        assert t.wait_until(lambda: t.trimming_off == {"*"}, WAIT_S)
        assert t.lookup("b").kind == "untrimmed" and _off("*") == 1.0 and _off("a") == 0.0
        write_atomic(switch, b"not json")  # unusable: the last good state stays
        assert t.wait_until(lambda: t._kill is not None and t._kill.last_error is not None, WAIT_S)
        assert t.trimming_off == {"*"}
        switch.unlink()  # no file: trimming as the bundles say
        assert t.wait_until(lambda: t.trimming_off == frozenset(), WAIT_S)
        assert t.lookup("a").features == {"f1"} and _off("*") == 0.0
        assert "trimming is back ON for every model" in caplog.text
