"""What a short timed sleep costs on this host, and the receive moderation
(`Receiver(rx_usecs=)`) it calls for.

Receive moderation trades one timed nap for the wake-ups of the packets that
arrive during it, so it pays only where a nap is cheap beside the nap's
length. That depends on the host: on the Intel VM where rx_usecs was first
measured, 20 us naps paid off (0.66-0.77x the C loop's CPU per packet at
200 kpps); on an AMD Firecracker VM, arming and firing the timer costs the
sleeping thread 14-19 us of CPU (the timer's
programming traps to the hypervisor), and 20 us naps cost more than the
wake-ups they save (1.4-1.5x the C loop; 50 us: 0.95x; 100 us: 0.6x;
benchmarks/RESULTS.md). So the default is measured: a nap lasts NAP_SPAN
times what it costs, which keeps the naps under 1/NAP_SPAN of a CPU however
fast packets come, within [MIN_US, MAX_US].
"""
from __future__ import annotations

import functools
import statistics
import time

PROBE_US = 20         # the nap length probed
PROBES = 32           # ~2 ms of wall time, once per process
NAP_SPAN = 4
MIN_US, MAX_US = 20, 100


@functools.cache
def nap_cost_ns() -> int:
    """The median CPU time this thread spends on one PROBE_US timed sleep
    (arming, the expiry, the two context switches), measured once."""
    costs = []
    for _ in range(PROBES):
        t = time.thread_time_ns()
        time.sleep(PROBE_US / 1e6)
        costs.append(time.thread_time_ns() - t)
    return int(statistics.median(costs))


def rx_usecs_for(cost_ns: int) -> int:
    """The moderation period for naps that cost @cost_ns each: NAP_SPAN x
    that, rounded up to 10 us, within [MIN_US, MAX_US]."""
    us = -(-NAP_SPAN * cost_ns // 10_000) * 10
    return max(MIN_US, min(MAX_US, us))


def auto_rx_usecs() -> int:
    """The default rx_usecs on this host."""
    return rx_usecs_for(nap_cost_ns())
