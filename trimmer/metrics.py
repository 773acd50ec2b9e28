"""Prometheus metrics of the Feature Trimmer, defined once per process (default registry).

Several trimmers in one process (tests, tools) share these series; bundle names label
what differs. Updated from the lookup callers' threads (lookups) and the loading thread
(everything else); prometheus-client children are thread-safe.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "BUNDLE_HEALTHY",
    "BUNDLE_INFO",
    "LAST_SUCCESS",
    "LOAD_ERRORS",
    "LOOKUPS",
    "LOOKUP_EXACT",
    "LOOKUP_LATEST",
    "LOOKUP_UNSERVED",
    "LOOKUP_UNTRIMMED",
    "MODEL_CONFLICTS",
    "RELOADS",
    "KILL_SWITCH_CHANGES",
    "KILL_SWITCH_ERRORS",
    "TRIMMING_OFF",
]

LOOKUPS = Counter(
    "rootleaf_trimmer_lookups",
    "Trim decisions by kind: exact version, latest-version fallback, untrimmed (no allowlist), unserved (the bundle version asked for, or every one, is served by no leaf).",
    ["kind"],
)
# Bound children: ``labels()`` costs more than the increment itself on the lookup path.
LOOKUP_EXACT = LOOKUPS.labels(kind="exact")
LOOKUP_LATEST = LOOKUPS.labels(kind="latest")
LOOKUP_UNTRIMMED = LOOKUPS.labels(kind="untrimmed")
LOOKUP_UNSERVED = LOOKUPS.labels(kind="unserved")

RELOADS = Counter(
    "rootleaf_trimmer_reloads",
    "Bundle load attempts by result: ok (new map swapped in), unchanged (same content hash), "
    "error (kept the last good map).",
    ["bundle", "result"],
)
LAST_SUCCESS = Gauge(
    "rootleaf_trimmer_last_success_timestamp_seconds",
    "Unix time of the bundle's last successful load.",
    ["bundle"],
    multiprocess_mode="livemin",  # root workers: the oldest among live ones (dead ones dropped)
)
LOAD_ERRORS = Counter(
    "rootleaf_trimmer_load_errors",
    "Failed bundle loads by cause: missing, unreadable, too_large, invalid.",
    ["bundle", "cause"],
)
BUNDLE_HEALTHY = Gauge(
    "rootleaf_trimmer_bundle_healthy",
    "1 when the bundle's current file loaded cleanly, 0 when its last load failed (RootleafBundleUnhealthy).",
    ["bundle"],
    multiprocess_mode="livemin",  # root workers: 0 when any live one failed (dead ones dropped)
)
BUNDLE_INFO = Gauge(
    "rootleaf_trimmer_bundle_info",
    "1 for the sha256 of the bundle file content that is in use (rollout verification).",
    ["bundle", "content_hash"],
)
MODEL_CONFLICTS = Counter(
    "rootleaf_trimmer_model_conflicts",
    "A model newly found in more than one bundle; the bundle whose name sorts first wins.",
    ["model", "winner", "shadowed"],
)
TRIMMING_OFF = Gauge(
    "rootleaf_trimmer_trimming_off",
    "1 while the kill switch file turns trimming off for the model (model=\"*\": every model).",
    ["model"],
    multiprocess_mode="livemax",  # root workers: 1 when any live one has it off (dead ones dropped)
)
KILL_SWITCH_CHANGES = Counter(
    "rootleaf_trimmer_kill_switch_changes",
    "Changes of the kill switch state (each is also logged at WARNING).",
)
KILL_SWITCH_ERRORS = Counter(
    "rootleaf_trimmer_kill_switch_errors",
    "Kill switch files that could not be used (the last good state stays).",
)
