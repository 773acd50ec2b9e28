"""Feature Trimmer: per-model feature allowlists from bundle files, hot-reloaded.

``FeatureTrimmer(bundles).lookup(model, version)`` says which features a model version
receives; ``trim`` selects them. See ``trimmer.feature_trimmer`` for the threading model.
"""

from trimmer.bundle import BundleError, BundleMap, ModelVersion, parse_bundle, version_sort_key
from trimmer.config import TrimmerConfig
from trimmer.feature_trimmer import BundleStatus, FeatureTrimmer, ReloadResult
from trimmer.rwlock import RWLock
from trimmer.snapshot import UNTRIMMED, Conflict, DecisionKind, TrimDecision

__all__ = [
    "UNTRIMMED",
    "BundleError",
    "BundleMap",
    "BundleStatus",
    "Conflict",
    "DecisionKind",
    "FeatureTrimmer",
    "ModelVersion",
    "RWLock",
    "ReloadResult",
    "TrimDecision",
    "TrimmerConfig",
    "parse_bundle",
    "version_sort_key",
]
