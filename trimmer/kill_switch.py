"""The trimming kill switch: a small hot-reloaded file that turns trimming off on a running
root, for every model or for some, without a restart.

File (JSON, next to the bundle files; the root config's ``kill_switch_file``)::

    {"trimming_off": ["*"]}              every model goes untrimmed
    {"trimming_off": ["ctr", "cvr"]}     these models go untrimmed
    {"trimming_off": []}                 (or no file at all) trimming as the bundles say

A model switched off is looked up as having no allowlist: untrimmed, counted as
``decision="untrimmed"``, and still run on the version its request pins when a leaf serves it.
A file that cannot be used keeps the last good state (logged at ERROR, counted); a missing file
means nothing is switched off. Every change of state is logged at WARNING and shown by the
``rootleaf_trimmer_trimming_off{model}`` gauge (``model="*"`` for all).

Threads: ``reload`` runs on the trimmer's loading thread (``trimmer-reload`` or the
constructor's caller); ``off`` is an immutable frozenset swapped by reference, read from any
thread without a lock.
"""

from __future__ import annotations

import json
import logging
import os

from contract.names import name_problem
from trimmer import metrics

__all__ = ["ALL_MODELS", "KillSwitch", "KillSwitchError", "parse_kill_switch"]

log = logging.getLogger(__name__)

ALL_MODELS = "*"
_KEY = "trimming_off"
MAX_FILE_BYTES = 1024 * 1024


class KillSwitchError(ValueError):
    """The kill switch file cannot be used; the message says why."""


def parse_kill_switch(data: bytes) -> frozenset[str]:
    """The models the file switches trimming off for (``"*"``: all); ``KillSwitchError`` if invalid."""
    try:
        doc = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise KillSwitchError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise KillSwitchError(f"top level must be an object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - {_KEY})
    if unknown:
        raise KillSwitchError(f"unknown key(s) {unknown}; known: [{_KEY!r}]")
    models = doc.get(_KEY, [])
    if not isinstance(models, list):
        raise KillSwitchError(f"{_KEY!r} must be a list of model names or [\"*\"], got {models!r}")
    for model in models:
        if model != ALL_MODELS and (not isinstance(model, str) or name_problem(model)):
            raise KillSwitchError(f"{_KEY!r}: {model!r} is not a model name or \"*\"")
    return frozenset(models)


class KillSwitch:
    """The current state of one kill switch file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.off: frozenset[str] = frozenset()
        """Models trimming is off for now (``"*"`` = all); swapped whole on each change."""
        self.last_error: str | None = None
        self._seen: bytes | None = None

    def is_off(self, model: str) -> bool:
        off = self.off
        return bool(off) and (model in off or ALL_MODELS in off)

    def reload(self) -> bool:
        """Read the file again; True when the state changed."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            return self._fail(f"cannot read {self.path}: {exc.strerror or exc}")
        if data == self._seen:
            return False
        self._seen = data
        if len(data) > MAX_FILE_BYTES:
            return self._fail(f"{self.path} is larger than {MAX_FILE_BYTES} bytes")
        try:
            off = parse_kill_switch(data)
        except KillSwitchError as exc:
            return self._fail(f"{self.path}: {exc}")
        self.last_error = None
        if off == self.off:
            return False
        before, self.off = self.off, off
        for model in sorted(before - off):
            metrics.TRIMMING_OFF.labels(model).set(0)
        for model in sorted(off):
            metrics.TRIMMING_OFF.labels(model).set(1)
        metrics.KILL_SWITCH_CHANGES.inc()
        if off:
            log.warning("trimmer: kill switch %s: trimming is OFF for %s", self.path,
                        "every model" if ALL_MODELS in off else sorted(off))
        else:
            log.warning("trimmer: kill switch %s: trimming is back ON for every model", self.path)
        return True

    def _fail(self, reason: str) -> bool:
        if reason != self.last_error:
            log.error("trimmer: kill switch unusable, keeping trimming off for %s: %s", sorted(self.off) or "no model", reason)
            metrics.KILL_SWITCH_ERRORS.inc()
        self.last_error = reason
        return False
