"""A spawned server stops when the process that launched it dies (``PR_SET_PDEATHSIG``).

The launcher names itself in ``PARENT_PID_ENV``; the child arms the signal at start-up,
after exec. Doing it in the child (not in a ``preexec_fn``) lets the launcher spawn without
``fork``: ``subprocess`` then uses ``vfork``, which runs no fork handlers. A ``fork`` from a
launcher that uses gRPC runs gRPC core's fork handler, which can wait forever on gRPC's
background shutdown thread. Kept free of heavy imports: every CLI entry calls it first.
"""

from __future__ import annotations

import ctypes
import os
import signal

PARENT_PID_ENV = "ROOTLEAF_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent_from_env() -> None:
    """Get SIGTERM when the launcher named in ``PARENT_PID_ENV`` dies; if it has died
    already (before the signal was armed), take SIGTERM now. No-op when unset. The variable
    is removed so this process's own children are not bound to its launcher."""
    value = os.environ.pop(PARENT_PID_ENV, None)
    if not value:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != value:
        signal.raise_signal(signal.SIGTERM)
