"""Process and channel settings shared by every rootleaf server and client.

Python gRPC moves 1-8 MB messages 3-4x faster when glibc does not return freed buffers to
the kernel after every message: by default buffers above the mmap threshold (128 KiB,
adaptive) are ``mmap``-ed and ``munmap``-ed per allocation, and the heap is trimmed as soon
as 128 KiB lie free at its top, so each request pays page faults for its payload again.
``tune_allocator`` raises both thresholds once at process start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Final

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

# 64 MiB: above the largest request a root sends to a leaf in the demo workloads; the cost
# is that up to this much freed memory stays in the process instead of going back to the OS.
DEFAULT_MMAP_THRESHOLD = 64 * 1024 * 1024
DEFAULT_TRIM_THRESHOLD = 256 * 1024 * 1024

# Largest message either side accepts; larger requests are rejected by gRPC itself
# (RESOURCE_EXHAUSTED) before they reach our code.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

GRPC_OPTIONS: Final[list[tuple[str, int]]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def tune_allocator(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD, trim_threshold: int = DEFAULT_TRIM_THRESHOLD
) -> bool:
    """Raise glibc's mmap and trim thresholds; returns False where glibc is not in use.

    ``ROOTLEAF_MALLOC_TUNING=0`` disables it (for comparisons in benchmarks).
    """
    if os.environ.get("ROOTLEAF_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    log.debug("glibc mallopt mmap=%d trim=%d applied=%s", mmap_threshold, trim_threshold, ok)
    return ok
