"""Hot reload end to end with real files and the real watchdog observer: in-place writes,
atomic renames, ConfigMap-style symlink swaps, delete and re-create, corruption, re-check."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

import pytest
from prometheus_client import REGISTRY

from tests.unit.test_trimmer_files import Models, bundle_bytes, write_atomic, write_in_place
from trimmer import FeatureTrimmer

WAIT_S = 30.0
# The watch's events are what reload a changed file: with the periodic re-check far beyond
# any wait here, content that becomes visible was reloaded by an event.
EVENTS_ONLY = 3600.0


def features(t: FeatureTrimmer, model: str) -> frozenset[str] | None:
    return t.lookup(model).features


def assert_visible(t: FeatureTrimmer, predicate: Callable[[], bool], what: str) -> None:
    assert t.wait_until(predicate, timeout=WAIT_S), f"{what} not visible"


def one_model(*names: str) -> Models:
    return {"m": {"1": list(names)}}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ads"
    directory.mkdir()
    return directory


def test_in_place_write_is_visible(bundle_dir: Path) -> None:
    path = bundle_dir / "module_info.json"
    path.write_bytes(bundle_bytes(one_model("a")))
    with FeatureTrimmer({"ads": path}, recheck_interval_s=EVENTS_ONLY) as t:
        assert features(t, "m") == {"a"}
        for i in range(3):
            write_in_place(path, bundle_bytes(one_model("a", f"w{i}")))
            assert_visible(t, lambda: features(t, "m") == {"a", f"w{i}"}, f"in-place write {i}")


def test_atomic_rename_is_visible(bundle_dir: Path) -> None:
    path = bundle_dir / "module_info.json"
    write_atomic(path, bundle_bytes(one_model("a")))
    with FeatureTrimmer({"ads": path}, recheck_interval_s=EVENTS_ONLY) as t:
        for i in range(3):
            write_atomic(path, bundle_bytes(one_model(f"r{i}")))
            assert_visible(t, lambda: features(t, "m") == {f"r{i}"}, f"atomic rename {i}")
        assert t.status()["ads"].content_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def configmap_publish(mount: Path, generation: int, data: bytes) -> None:
    """What the kubelet does on a ConfigMap update: a new timestamped directory, a temporary
    ``..data_tmp`` symlink to it renamed over ``..data``, the old directory removed."""
    new_dir = mount / f"..2026_01_01_00_00_{generation:02d}.{generation}"
    new_dir.mkdir()
    (new_dir / "module_info.json").write_bytes(data)
    data_link = mount / "..data"
    old_target = os.readlink(data_link) if data_link.is_symlink() else None
    tmp_link = mount / "..data_tmp"
    os.symlink(new_dir.name, tmp_link)
    os.replace(tmp_link, data_link)
    if not (mount / "module_info.json").is_symlink():
        os.symlink("..data/module_info.json", mount / "module_info.json")
    if old_target is not None:
        shutil.rmtree(mount / old_target)


def test_configmap_symlink_swap_is_visible(bundle_dir: Path) -> None:
    configmap_publish(bundle_dir, 0, bundle_bytes(one_model("a")))
    path = bundle_dir / "module_info.json"
    with FeatureTrimmer({"ads": path}, recheck_interval_s=EVENTS_ONLY) as t:
        assert features(t, "m") == {"a"}
        assert t.watched_directories == [str(bundle_dir)]
        for generation in range(1, 4):
            data = bundle_bytes(one_model(f"cm{generation}"))
            configmap_publish(bundle_dir, generation, data)
            assert_visible(t, lambda: features(t, "m") == {f"cm{generation}"}, f"ConfigMap swap {generation}")
            assert t.status()["ads"].content_hash == hashlib.sha256(data).hexdigest()
            assert t.status()["ads"].path == str(path)  # the symlink, never its resolved target


def test_delete_then_recreate(bundle_dir: Path) -> None:
    path = bundle_dir / "module_info.json"
    path.write_bytes(bundle_bytes(one_model("a")))
    with FeatureTrimmer({"ads": path}, recheck_interval_s=EVENTS_ONLY) as t:
        path.unlink()
        assert t.wait_until(lambda: t.status()["ads"].last_error is not None, timeout=WAIT_S)
        assert "file not found" in (t.status()["ads"].last_error or "")
        assert features(t, "m") == {"a"}  # last good map kept while the file is gone
        path.write_bytes(bundle_bytes(one_model("b")))
        assert_visible(t, lambda: features(t, "m") == {"b"}, "re-created file")
        assert t.status()["ads"].last_error is None


def test_delete_then_recreate_same_content_clears_error(bundle_dir: Path) -> None:
    path = bundle_dir / "module_info.json"
    data = bundle_bytes(one_model("a"))
    path.write_bytes(data)
    with FeatureTrimmer({"ads": path}, recheck_interval_s=EVENTS_ONLY) as t:
        generation = t.generation
        path.unlink()
        assert t.wait_until(lambda: t.status()["ads"].last_error is not None, timeout=WAIT_S)
        write_atomic(path, data)
        assert t.wait_until(lambda: t.status()["ads"].last_error is None, timeout=WAIT_S)
        assert t.generation == generation  # same hash: nothing re-parsed or swapped


CORRUPTIONS: dict[str, bytes] = {
    "truncated_json": bundle_bytes({"m": {"1": ["x", "y", "z"]}})[:25],
    "wrong_types": b'{"m": [{"version": 2, "input_names": "x", "output_names": []}]}',
    "binary_garbage": bytes(range(255, -1, -1)) * 8,
    "empty_file": b"",
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_file_keeps_last_good_map_while_other_bundle_updates(tmp_path: Path, corruption: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "module_info.json", tmp_path / "b" / "module_info.json"
    a.write_bytes(bundle_bytes({"ma": {"1": ["a1"], "2": ["a2"]}}))
    b.write_bytes(bundle_bytes({"mb": {"1": ["b1"]}}))
    errors_before = REGISTRY.get_sample_value("rootleaf_trimmer_load_errors_total", {"bundle": "a", "cause": "invalid"}) or 0
    with FeatureTrimmer({"a": a, "b": b}, recheck_interval_s=EVENTS_ONLY) as t:
        good_hash = t.status()["a"].content_hash
        write_in_place(a, CORRUPTIONS[corruption])
        write_atomic(b, bundle_bytes({"mb": {"1": ["b1"], "2": ["b2"]}}))
        assert_visible(t, lambda: features(t, "mb") == {"b2"}, "other bundle's update")
        assert t.wait_until(lambda: t.status()["a"].last_error is not None, timeout=WAIT_S)
        status = t.status()["a"]
        assert status.content_hash == good_hash and status.model_count == 1 and status.version_count == 2
        assert t.lookup("ma", "1").features == {"a1"} and features(t, "ma") == {"a2"}
        errors = REGISTRY.get_sample_value("rootleaf_trimmer_load_errors_total", {"bundle": "a", "cause": "invalid"})
        assert errors is not None and errors >= errors_before + 1
        assert REGISTRY.get_sample_value("rootleaf_trimmer_bundle_healthy", {"bundle": "a"}) == 0
        # Recovery: a good write is picked up and clears the error.
        write_atomic(a, bundle_bytes({"ma": {"3": ["a3"]}}))
        assert_visible(t, lambda: features(t, "ma") == {"a3"}, "recovered bundle")
        assert t.status()["a"].last_error is None
        assert REGISTRY.get_sample_value("rootleaf_trimmer_bundle_healthy", {"bundle": "a"}) == 1


def test_periodic_recheck_catches_a_directory_created_later(tmp_path: Path) -> None:
    later = tmp_path / "later" / "module_info.json"
    with FeatureTrimmer({"late": later}, recheck_interval_s=0.1) as t:
        assert t.watched_directories == []
        assert t.lookup("m").kind == "untrimmed"
        later.parent.mkdir()
        write_atomic(later, bundle_bytes(one_model("x")))  # no watch yet: only the re-check sees it
        assert t.wait_until(lambda: features(t, "m") == {"x"}, timeout=5)
        assert t.wait_until(lambda: t.watched_directories == [str(later.parent)], timeout=5)
        write_atomic(later, bundle_bytes(one_model("y")))
        assert_visible(t, lambda: features(t, "m") == {"y"}, "write after the watch was added")


def test_burst_of_writes_is_debounced(bundle_dir: Path) -> None:
    path = bundle_dir / "module_info.json"
    path.write_bytes(bundle_bytes(one_model("start")))

    def attempts() -> float:
        return sum(
            REGISTRY.get_sample_value("rootleaf_trimmer_reloads_total", {"bundle": "burst", "result": r}) or 0
            for r in ("ok", "unchanged", "error")
        )

    with FeatureTrimmer({"burst": path}, debounce_s=0.1) as t:
        before = attempts()
        for i in range(40):
            write_in_place(path, bundle_bytes(one_model(f"b{i}")))
        assert t.wait_until(lambda: features(t, "m") == {"b39"}, timeout=2)
        # 40 writes raise well over 100 events; the debounce coalesces them into a few loads.
        assert attempts() - before < 20


def test_threads_are_named_and_stopped_by_close(bundle_dir: Path) -> None:
    path = bundle_dir / "module_info.json"
    path.write_bytes(bundle_bytes(one_model("a")))
    before = set(threading.enumerate())
    t = FeatureTrimmer({"ads": path})
    # Only the threads the trimmer owns: the file-watching library may start and keep
    # helper threads of its own (watchdog 7 shares one inotify reader per process).
    owned = {th for th in set(threading.enumerate()) - before if th.name.startswith("trimmer-")}
    assert {"trimmer-observer", "trimmer-reload", f"trimmer-watch:{bundle_dir}"} <= {th.name for th in owned}
    t.close()
    t.close()  # idempotent
    assert not any(th.is_alive() for th in owned)
    assert features(t, "m") == {"a"}  # lookups still answer from the last map


def test_no_periodic_recheck_still_reloads_on_events(bundle_dir: Path) -> None:
    """recheck_interval_s = 0 turns the re-check off: the reload thread then waits for events
    alone (it used to compute an infinite wait and die with OverflowError)."""
    path = bundle_dir / "module_info.json"
    path.write_bytes(bundle_bytes(one_model("a")))
    with FeatureTrimmer({"ads": path}, recheck_interval_s=0) as t:
        reloader = next(th for th in threading.enumerate() if th.name == "trimmer-reload")
        write_atomic(path, bundle_bytes(one_model("b")))
        assert_visible(t, lambda: features(t, "m") == {"b"}, "event-driven reload")
        assert reloader.is_alive()
