"""Name rules for models, versions and bundles, checked the same way by every tier.

Model and version names become directory names in a leaf's repository, keys in bundle files
and labels in metrics, so each must be one plain path component: non-empty UTF-8, at most
``MAX_NAME_BYTES`` bytes, not hidden, no separator, NUL or control character, no surrounding
whitespace. Bundle names also name Kubernetes ConfigMaps and package files, hence the
stricter ``BUNDLE_NAME``.
"""

from __future__ import annotations

import re

__all__ = ["BUNDLE_NAME", "MAX_NAME_BYTES", "bundle_name_problem", "name_problem"]

MAX_NAME_BYTES = 255
BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def name_problem(name: object) -> str:
    """Why ``name`` cannot be a model or version name; "" when it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if name != name.strip():
        return "must not start or end with whitespace"
    if name.startswith(".") or any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must be one plain path component (no '/', '\\', control characters, '.' or '..', not hidden)"
    return ""


def bundle_name_problem(name: object) -> str:
    """Why ``name`` cannot be a bundle name; "" when it can."""
    if not isinstance(name, str) or not BUNDLE_NAME.match(name):
        return f"must match {BUNDLE_NAME.pattern}"
    return ""
