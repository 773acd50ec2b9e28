"""Lookup rules, trimming, precedence, start-up failures, status and metrics (no watching)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.unit.test_trimmer_files import bundle_bytes, write_in_place
from trimmer import UNTRIMMED, FeatureTrimmer, ReloadResult, TrimDecision


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def ads(tmp_path: Path) -> Path:
    path = tmp_path / "ads" / "module_info.json"
    path.parent.mkdir()
    path.write_bytes(
        bundle_bytes(
            {
                "ctr": {"9": ["f1", "f2"], "10": ["f1", "f3"], "2": ["f1"]},
                "cvr": {"b": ["f4"], "a": ["f5"]},
                "bias_only": {"1": []},
            }
        )
    )
    return path


def test_exact_version_hit(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        assert t.lookup("ctr", "9") == TrimDecision(frozenset({"f1", "f2"}), "9", "exact")
        assert t.lookup("ctr", "2") == TrimDecision(frozenset({"f1"}), "2", "exact")


def test_latest_is_numeric_ten_beats_nine(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        assert t.lookup("ctr") == TrimDecision(frozenset({"f1", "f3"}), "10", "latest")
        assert t.lookup("ctr", "10").kind == "exact"


def test_unknown_version_falls_back_to_latest(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        assert t.lookup("ctr", "11") == TrimDecision(frozenset({"f1", "f3"}), "10", "latest")
        assert t.lookup("ctr", "") == TrimDecision(frozenset({"f1", "f3"}), "10", "latest")
        assert t.lookup("cvr").version == "b"  # non-integer versions: natural (string) order


def test_unknown_model_is_untrimmed(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        decision = t.lookup("nope", "1")
        assert decision is UNTRIMMED
        assert decision.features is None and decision.version is None and decision.kind == "untrimmed"
        assert not decision.trimmed


def test_empty_allowlist_trims_everything(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        decision = t.lookup("bias_only")
        assert decision.features == frozenset() and decision.trimmed


@pytest.mark.parametrize(
    "version, servable, expected",
    [
        (None, None, ("10", "latest")),  # no knowledge of the leaves: the bundle's latest
        ("9", None, ("9", "exact")),
        (None, {"9", "2"}, ("9", "latest")),  # the newest version a leaf serves
        ("1234", {"2"}, ("2", "latest")),  # unknown to the bundle: the latest served
        ("9", {"9"}, ("9", "exact")),
        ("9", {"10"}, ("9", "unserved")),  # known but served nowhere: never substituted
        (None, {"77"}, (None, "unserved")),  # no bundle version served at all
        (None, set(), (None, "unserved")),
    ],
)
def test_lookup_among_servable_versions(
    ads: Path, version: str | None, servable: set[str] | None, expected: tuple[str | None, str]
) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        decision = t.lookup("ctr", version, servable=servable)
        assert (decision.version, decision.kind) == expected
        if decision.kind != "unserved":
            assert decision.features == t.lookup("ctr", decision.version).features


def test_precedence_first_bundle_name_wins_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a.json").write_bytes(bundle_bytes({"shared": {"1": ["from_a"]}, "only_a": {"1": ["x"]}}))
    (tmp_path / "b.json").write_bytes(bundle_bytes({"shared": {"1": ["from_b"], "2": ["from_b2"]}}))
    labels = {"model": "shared", "winner": "alpha", "shadowed": "beta"}
    before = sample("rootleaf_trimmer_model_conflicts_total", labels)
    caplog.set_level(logging.WARNING, logger="trimmer")
    # Mapping order must not matter: "alpha" < "beta" by name.
    with FeatureTrimmer({"beta": tmp_path / "b.json", "alpha": tmp_path / "a.json"}, watch=False) as t:
        assert t.lookup("shared") == TrimDecision(frozenset({"from_a"}), "1", "latest")
        assert t.lookup("shared", "2").version == "1"  # versions are never merged across bundles
        assert t.status()["beta"].shadowed_models == ("shared",)
        assert t.status()["alpha"].shadowed_models == ()
        assert sample("rootleaf_trimmer_model_conflicts_total", labels) == before + 1
        assert any("listed by bundles" in r.message and r.levelno == logging.WARNING for r in caplog.records)
        # The same conflict on a later reload is not counted again.
        assert t.reload_now() == {"alpha": ReloadResult.UNCHANGED, "beta": ReloadResult.UNCHANGED}
        (tmp_path / "a.json").write_bytes(bundle_bytes({"shared": {"1": ["from_a", "y"]}}))
        assert t.reload_now("alpha") == {"alpha": ReloadResult.OK}
        assert sample("rootleaf_trimmer_model_conflicts_total", labels) == before + 1
        # Once the winner drops the model, the other bundle provides it.
        (tmp_path / "a.json").write_bytes(bundle_bytes({"only_a": {"1": ["x"]}}))
        t.reload_now("alpha")
        assert t.lookup("shared") == TrimDecision(frozenset({"from_b2"}), "2", "latest")
        assert t.status()["beta"].shadowed_models == ()


def test_startup_failure_is_isolated_reported_and_counted(
    tmp_path: Path, ads: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"hf": [{"version": "1", "input_names": [1]')
    missing = tmp_path / "nowhere" / "module_info.json"
    invalid_before = sample("rootleaf_trimmer_load_errors_total", {"bundle": "hf", "cause": "invalid"})
    missing_before = sample("rootleaf_trimmer_load_errors_total", {"bundle": "gone", "cause": "missing"})
    caplog.set_level(logging.ERROR, logger="trimmer")
    with FeatureTrimmer({"ads": ads, "hf": bad, "gone": missing}, watch=False) as t:
        status = t.status()
        assert status["ads"].last_error is None and status["ads"].model_count == 3
        assert status["hf"].last_error is not None and "invalid JSON" in status["hf"].last_error
        assert status["hf"].content_hash is None and status["hf"].last_good_load_unix is None
        assert status["hf"].model_count == 0 and status["hf"].version_count == 0
        assert status["gone"].last_error == f"file not found: {missing}"
        assert t.lookup("hf").kind == "untrimmed"
        assert t.lookup("ctr").kind == "latest"
        assert sample("rootleaf_trimmer_load_errors_total", {"bundle": "hf", "cause": "invalid"}) == invalid_before + 1
        assert sample("rootleaf_trimmer_load_errors_total", {"bundle": "gone", "cause": "missing"}) == missing_before + 1
        assert sample("rootleaf_trimmer_bundle_healthy", {"bundle": "hf"}) == 0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert {("'hf'" in r.message) or ("'gone'" in r.message) for r in errors} == {True}
        assert len(errors) == 2
        # The same bad file again is not re-reported; a good file recovers the bundle.
        assert t.reload_now("hf") == {"hf": ReloadResult.UNCHANGED}
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
        bad.write_bytes(bundle_bytes({"hf": {"1": ["h1"]}}))
        assert t.reload_now("hf") == {"hf": ReloadResult.OK}
        assert t.lookup("hf") == TrimDecision(frozenset({"h1"}), "1", "latest")
        assert t.status()["hf"].last_error is None
        assert sample("rootleaf_trimmer_bundle_healthy", {"bundle": "hf"}) == 1


def test_status_fields_and_content_hash(ads: Path) -> None:
    before = time.time()
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        after = time.time()
        s = t.status()["ads"]
        assert s.name == "ads" and s.path == str(ads)
        assert (s.model_count, s.version_count) == (3, 6)
        assert s.last_good_load_unix is not None and before <= s.last_good_load_unix <= after
        assert s.content_hash == hashlib.sha256(ads.read_bytes()).hexdigest()
        assert s.last_error is None
        assert sample("rootleaf_trimmer_bundle_info", {"bundle": "ads", "content_hash": s.content_hash}) == 1
        assert sample("rootleaf_trimmer_last_success_timestamp_seconds", {"bundle": "ads"}) == s.last_good_load_unix
        old_hash = s.content_hash
        write_in_place(ads, bundle_bytes({"ctr": {"11": ["f7"]}}))
        assert t.reload_now() == {"ads": ReloadResult.OK}
        s2 = t.status()["ads"]
        assert s2.content_hash == hashlib.sha256(ads.read_bytes()).hexdigest() != old_hash
        assert (s2.model_count, s2.version_count) == (1, 1)
        assert sample("rootleaf_trimmer_bundle_info", {"bundle": "ads", "content_hash": s2.content_hash}) == 1
        assert REGISTRY.get_sample_value("rootleaf_trimmer_bundle_info", {"bundle": "ads", "content_hash": old_hash}) is None


def test_reload_results_are_counted(ads: Path) -> None:
    def reloads(result: str) -> float:
        return sample("rootleaf_trimmer_reloads_total", {"bundle": "ads", "result": result})

    ok, unchanged = reloads("ok"), reloads("unchanged")
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        generation = t.generation
        assert t.reload_now("ads") == {"ads": ReloadResult.UNCHANGED}
        assert t.generation == generation  # nothing swapped for an unchanged file
        assert (reloads("ok"), reloads("unchanged")) == (ok + 1, unchanged + 1)
        with pytest.raises(KeyError, match="unknown bundle"):
            t.reload_now("other")


def test_lookups_are_counted_by_kind(ads: Path) -> None:
    kinds = ("exact", "latest", "untrimmed")
    before = {k: sample("rootleaf_trimmer_lookups_total", {"kind": k}) for k in kinds}
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        t.lookup("ctr", "9")
        t.lookup("ctr", "9")
        t.lookup("ctr")
        t.lookup("ctr", "1234")
        t.lookup("nope")
    after = {k: sample("rootleaf_trimmer_lookups_total", {"kind": k}) for k in kinds}
    assert {k: after[k] - before[k] for k in kinds} == {"exact": 2, "latest": 2, "untrimmed": 1}


def test_no_bundles_everything_untrimmed() -> None:
    with FeatureTrimmer({}, watch=True) as t:
        assert t.lookup("anything").kind == "untrimmed"
        assert t.status() == {}


def test_watch_false_starts_no_threads(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        assert not [th.name for th in threading.enumerate() if th.name.startswith("trimmer-")]
        assert t.watched_directories == []


def test_constructor_validates_arguments(ads: Path) -> None:
    with pytest.raises(ValueError, match="bundle name"):
        FeatureTrimmer({"": ads}, watch=False)
    with pytest.raises(ValueError, match="path"):
        FeatureTrimmer({"ads": ""}, watch=False)
    with pytest.raises(ValueError, match="debounce_s"):
        FeatureTrimmer({"ads": ads}, watch=False, debounce_s=-1)
    with FeatureTrimmer({"ads": ads}, watch=False, recheck_interval_s=7, debounce_s=0.5) as t:
        assert t.config.recheck_interval_s == 7
        assert t.config.debounce_s == 0.5 and t.config.max_debounce_s >= 0.5


def test_models_lists_versions_oldest_first(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        assert t.models() == {"bias_only": ("1",), "ctr": ("2", "9", "10"), "cvr": ("a", "b")}


def test_wait_for_content_hash_returns_when_loaded(ads: Path) -> None:
    with FeatureTrimmer({"ads": ads}, watch=False) as t:
        current = hashlib.sha256(ads.read_bytes()).hexdigest()
        assert t.wait_for_content_hash("ads", current, timeout=0.01)
        assert not t.wait_for_content_hash("ads", "0" * 64, timeout=0.01)
        with pytest.raises(KeyError):
            t.wait_for_content_hash("nope", current, timeout=0.01)
