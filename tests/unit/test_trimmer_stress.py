"""Concurrency stress: reader threads look up while a writer rewrites the bundle files
hundreds of times (atomic renames and in-place writes, so half-written files occur)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from tests.unit.test_trimmer_files import bundle_bytes, write_atomic, write_in_place
from trimmer import FeatureTrimmer, TrimDecision

WRITES = 200
READERS = 3
TIME_LIMIT_S = 25.0


def generation_models(k: int) -> dict[str, dict[str, list[str]]]:
    """Generation ``k`` of bundle "a": every feature name carries ``k`` and the version, so
    an allowlist mixed from two generations (or two versions) cannot pass as valid."""
    versions = {v: [f"k{k}_v{v}_{i}" for i in range(1 + (k + int(v)) % 5)] for v in ("1", "2")}
    if k % 3 == 0:
        versions["10"] = [f"k{k}_v10_{i}" for i in range(3)]
    return {"m": versions, f"gen_{k % 7}": {"1": [f"g{k}"]}}


def test_lookups_never_see_a_mixed_or_broken_map(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "module_info.json", tmp_path / "b" / "module_info.json"
    a.write_bytes(bundle_bytes(generation_models(0)))
    b.write_bytes(bundle_bytes({"mb": {"1": ["b_0"]}}))

    # Every allowlist ever valid, per (model, version): filled in before each write.
    valid: dict[tuple[str, str], set[frozenset[str]]] = {}
    latest_versions: set[str] = set()
    valid_lock = threading.Lock()

    def register(models: dict[str, dict[str, list[str]]]) -> None:
        with valid_lock:
            for model, versions in models.items():
                for version, names in versions.items():
                    valid.setdefault((model, version), set()).add(frozenset(names))
            if "m" in models:
                latest_versions.add(max(models["m"], key=int))

    register(generation_models(0))
    register({"mb": {"1": ["b_0"]}})
    stop = threading.Event()
    problems: list[str] = []
    lookups = [0] * READERS
    seen_versions: set[str] = set()

    def check(decision: TrimDecision, model: str, asked: str | None) -> None:
        if decision.kind == "untrimmed":
            if model in ("m", "mb"):
                problems.append(f"{model} became untrimmed")
            return
        assert decision.version is not None and decision.features is not None
        if decision.kind == "exact" and decision.version != asked:
            problems.append(f"exact decision for {asked!r} names version {decision.version!r}")
        if decision.kind == "latest" and model == "m" and decision.version not in latest_versions:
            problems.append(f"latest decision names non-latest version {decision.version!r}")
        with valid_lock:
            ok = decision.features in valid.get((model, decision.version), ())
        if not ok:
            problems.append(f"{model} {decision.version}: allowlist never valid: {sorted(decision.features)[:4]}")

    def reader(index: int, t: FeatureTrimmer) -> None:
        queries: list[tuple[str, str | None]] = [("m", "1"), ("m", "2"), ("m", "10"), ("m", None), ("mb", "1"), ("gen_3", None), ("nope", None)]
        deadline = time.monotonic() + TIME_LIMIT_S
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            for model, version in queries:
                try:
                    decision = t.lookup(model, version)
                    check(decision, model, version)
                    if model == "m" and version is None and decision.version is not None:
                        seen_versions.add(decision.version)
                except Exception as exc:  # collected, never raised out of the thread
                    problems.append(f"{type(exc).__name__}: {exc}")
                n += 1
        lookups[index] = n

    with FeatureTrimmer({"a": a, "b": b}, debounce_s=0.0) as t:
        readers = [threading.Thread(target=reader, args=(i, t), name=f"stress-reader-{i}") for i in range(READERS)]
        for r in readers:
            r.start()
        applied = 0
        try:
            for k in range(1, WRITES + 1):  # each wait below is bounded: no time limit on the whole
                models = generation_models(k)
                register(models)
                data = bundle_bytes(models)
                (write_atomic if k % 2 else write_in_place)(a, data)
                if k % 10 == 0:
                    mb = {"mb": {"1": [f"b_{k}"], "2": [f"b2_{k}"]}}
                    register(mb)
                    write_atomic(b, bundle_bytes(mb))
                if t.wait_for_content_hash("a", hashlib.sha256(data).hexdigest(), timeout=5):
                    applied += 1
        finally:
            stop.set()
            for r in readers:
                r.join(10)
    assert not problems, problems[:10]
    assert applied == WRITES, f"only {applied}/{WRITES} writes became visible"
    assert all(n > 0 for n in lookups)
    assert len(seen_versions) == 2  # readers saw both "2" and "10" as the latest across reloads
