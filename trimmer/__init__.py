"""Feature Trimmer: per-model feature allowlists from bundle files, hot-reloaded.

``FeatureTrimmer(bundles).lookup(model, version, servable)`` says which version runs and
which features it receives (the root selects its encoded tensors by that set). See
``trimmer.feature_trimmer`` for the threading model.
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
