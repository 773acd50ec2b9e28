"""Feature Trimmer: per-model feature allowlists from bundle files, hot-reloaded.

``FeatureTrimmer(bundles).lookup(model, version)`` says which features a model version
receives; ``trim`` selects them. See ``trimmer.feature_trimmer`` for the threading model.
"""

from trimmer.config import TrimmerConfig
from trimmer.feature_trimmer import BundleStatus, FeatureTrimmer, ReloadResult
from trimmer.rwlock import RWLock
from trimmer.snapshot import UNSERVED, UNTRIMMED, Conflict, DecisionKind, TrimDecision

__all__ = [
    "UNSERVED",
    "UNTRIMMED",
    "BundleStatus",
    "Conflict",
    "DecisionKind",
    "FeatureTrimmer",
    "RWLock",
    "ReloadResult",
    "TrimDecision",
    "TrimmerConfig",
]
