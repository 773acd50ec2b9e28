"""A shaped link for the cluster benchmark: the whole cluster in a private network namespace
whose loopback is a token bucket (``tc`` tbf) at G Gbit/s, so bytes cost time as on a NIC.

``rootleaf bench --link-gbps G [--link-delay-us D]`` re-runs itself under ``unshare -n``
(``python -m benchmarks.link_run``): inside the new namespace ``shape_loopback`` brings
``lo`` up and shapes it, and the cluster benchmark runs there, so root, leaves and load generator all
talk over the shaped loopback (every byte of every hop, replies and metrics scrapes
included). A netem delay is added when the kernel has netem; when it does not, or when
namespaces or ``tc`` are not permitted, the reason is recorded in the results (``link``)
and the benchmark runs as it can (unshaped when no namespace could be made). Blocking
subprocess calls on the main thread, before any load.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

# Set inside the namespace (JSON of ``LinkInfo``): the cluster benchmark reports it.
LINK_ENV = "ROOTLEAF_BENCH_LINK"


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the benchmark ran over."""

    gbps: float
    delay_us: float
    shaped: bool
    """The token bucket is in place."""
    delay_applied: bool
    description: str


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=10, check=False)


def shape_loopback(gbps: float, delay_us: float) -> LinkInfo:
    """Bring ``lo`` up and put a token bucket (and netem delay, when available) on it.
    Call inside a private network namespace only."""
    up = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10, check=False)
    if up.returncode:
        return LinkInfo(gbps, delay_us, False, False, f"unshaped: ip link set lo up failed: {up.stderr.strip()}")
    rate_bytes = gbps * 1e9 / 8
    # The bucket must hold at least one loopback packet (64 KiB MTU) and a few ms of traffic;
    # the queue holds 200 ms at the link rate (drops on loopback would stall TCP instead).
    burst = max(256 * 1024, int(rate_bytes * 0.004))
    tbf = ["rate", f"{gbps * 1000:.0f}mbit", "burst", str(burst), "latency", "200ms"]
    notes = []
    delay_applied = False
    if delay_us > 0:
        netem = _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "netem", "delay", f"{delay_us:.0f}us")
        if netem.returncode == 0:
            shaped = _tc("qdisc", "add", "dev", "lo", "parent", "1:1", "handle", "10:", "tbf", *tbf)
            delay_applied = shaped.returncode == 0
            if not delay_applied:
                _tc("qdisc", "del", "dev", "lo", "root")
        else:
            notes.append(f"netem delay not applied ({netem.stderr.strip() or 'tc failed'})")
    if not delay_applied:
        shaped = _tc("qdisc", "add", "dev", "lo", "root", "tbf", *tbf)
        if shaped.returncode:
            return LinkInfo(gbps, delay_us, False, False,
                            f"unshaped: tc tbf failed: {shaped.stderr.strip()}" + "".join(f"; {n}" for n in notes))
    shown = _tc("qdisc", "show", "dev", "lo").stdout.strip().replace("\n", " | ")
    text = f"loopback in a private netns, tbf {gbps:g} Gbit/s (burst {burst} B)"
    if delay_applied:
        text += f", netem delay {delay_us:g} us"
    return LinkInfo(gbps, delay_us, True, delay_applied, "; ".join([text, *notes, f"tc: {shown}"]))


def reexec_command(gbps: float, delay_us: float, argv: Sequence[str]) -> list[str] | None:
    """The command that runs the cluster benchmark (``argv``) in a shaped namespace, or None
    when ``unshare``, ``ip`` or ``tc`` is missing."""
    if not all(shutil.which(tool) for tool in ("unshare", "ip", "tc")):
        return None
    return ["unshare", "-n", "--", sys.executable, "-m", "benchmarks.link_run", str(gbps), str(delay_us), *argv]


def run_shaped(gbps: float, delay_us: float, argv: Sequence[str]) -> int | None:
    """Run the cluster benchmark in a shaped namespace; None when that cannot be done (the
    caller then runs unshaped and says why)."""
    command = reexec_command(gbps, delay_us, argv)
    if command is None:
        return None
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode:
        return None
    return subprocess.run(command, check=False).returncode
