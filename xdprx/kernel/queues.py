"""Which RX queues to receive from, and which CPU serves each.

    --queues all        every RX queue the interface has (the default)
    --queues 4          the first four: 0, 1, 2, 3
    --queues 2-5        a range
    --queues 0,2        a list

The queue count comes from the driver (ETHTOOL_GCHANNELS: combined + rx-only
channels), else from rtnetlink (IFLA_NUM_RX_QUEUES); both are read in the
caller's network namespace (sysfs would show the one it was mounted in).
`ethtool -L IF combined N` changes the count on a NIC.

CPUs (--cpus LIST): one per queue, in order; by default the CPUs of each
queue's IRQ affinity when /proc/interrupts names the queue's interrupt
(e.g. eth0-TxRx-3), otherwise the loops are not pinned (veth has no IRQs).
"""
from __future__ import annotations

import ctypes
import errno as E
import logging
import os
import re
import socket
from typing import Iterable

from . import native
from ..errors import ConfigError, from_errno
from ..numa import parse_cpulist

log = logging.getLogger("xdprx")

SIOCETHTOOL = 0x8946
ETHTOOL_GCHANNELS = 0x3C


class EthtoolChannels(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in (
        "cmd", "max_rx", "max_tx", "max_other", "max_combined",
        "rx_count", "tx_count", "other_count", "combined_count")]


class IfreqData(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 16), ("data", ctypes.c_void_p),
                ("_pad", ctypes.c_char * 16)]


def rx_queue_count(ifname: str) -> int:
    """RX queues of @ifname now (this network namespace)."""
    ch = EthtoolChannels(cmd=ETHTOOL_GCHANNELS)
    req = IfreqData(name=os.fsencode(ifname), data=ctypes.addressof(ch))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if native.libc.ioctl(s.fileno(), SIOCETHTOOL, ctypes.byref(req)) == 0:
            n = ch.combined_count + ch.rx_count
            if n > 0:
                return n
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
        if not idx:
            raise from_errno(f"interface {ifname}", E.ENODEV, "check `ip link`")
        n = ip.get_links(idx[0])[0].get_attr("IFLA_NUM_RX_QUEUES")
    return int(n or 1)


def parse(spec: "str | int | Iterable[int]", count: int) -> list[int]:
    """The queue list @spec names, given @count queues (see the module doc)."""
    if isinstance(spec, bool):
        raise ConfigError(f"queues {spec!r} is not a queue list", remedy="use all, N, A-B or A,B")
    if isinstance(spec, int):
        if not 1 <= spec <= count:
            raise ConfigError(f"--queues {spec}: the interface has {count} RX queue(s)",
                              remedy=f"use 1..{count}, or add queues with ethtool -L")
        return list(range(spec))
    if isinstance(spec, str):
        t = spec.strip()
        if t == "all":
            return list(range(count))
        if re.fullmatch(r"\d+", t):
            return parse(int(t), count)
        if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", t):
            raise ConfigError(f"--queues {spec!r} is not a queue list",
                              remedy="use all, N (the first N), A-B or A,B,...")
        out = parse_cpulist(t)
    else:
        try:
            out = [int(q) for q in spec]
        except (TypeError, ValueError):
            raise ConfigError(f"queues {spec!r} is not a list of queue numbers",
                              remedy="use e.g. [0, 1]") from None
    if not out:
        raise ConfigError("no queue to receive from", remedy="use all, N, A-B or A,B")
    if len(set(out)) != len(out):
        raise ConfigError(f"queue list {spec!r} names a queue twice", remedy="name each once")
    for q in out:
        if not 0 <= q < count:
            raise ConfigError(f"queue {q} does not exist ({count} RX queue(s): 0-{count - 1})",
                              remedy=f"use queues in 0-{count - 1}, or add queues with "
                                     f"`ethtool -L IFACE combined N`")
    return out


def resolve(ifname: str, spec: "str | int | Iterable[int]") -> list[int]:
    if isinstance(spec, (list, tuple)) and len(spec) == 1 and isinstance(spec[0], int):
        q = spec[0]      # queue=q: checked by the socket's bind (a clear EINVAL remedy)
        if not 0 <= q <= 255:
            raise ConfigError(f"queue {q} out of range", remedy="use 0..255")
        return [q]
    return parse(spec, rx_queue_count(ifname))


def irq_cpus(ifname: str, queue: int, interrupts: str | None = None,
             irq_root: str = "/proc/irq") -> list[int] | None:
    """The CPUs of @queue's interrupt, when /proc/interrupts names it
    (IFNAME-TxRx-Q, IFNAME-rx-Q, ...); None when unknown."""
    if interrupts is None:
        try:
            with open("/proc/interrupts") as f:
                interrupts = f.read()
        except OSError:
            return None
    pat = re.compile(rf"(^|[\s-]){re.escape(ifname)}-(txrx-|rx-|combined-)?{queue}$", re.I)
    for line in interrupts.splitlines():
        parts = line.split()
        if not parts or not parts[0].rstrip(":").isdigit():
            continue
        if pat.search(parts[-1]):
            try:
                with open(f"{irq_root}/{parts[0].rstrip(':')}/smp_affinity_list") as f:
                    return parse_cpulist(f.read().strip())
            except OSError:
                return None
    return None


def resolve_cpus(ifname: str, queues: list[int],
                 cpus: "str | Iterable[int] | None") -> list[list[int] | None]:
    """The CPU set of each queue's loop (None: not pinned)."""
    online = sorted(os.sched_getaffinity(0))
    if cpus is None:
        out = [irq_cpus(ifname, q) for q in queues]
        if len(queues) > len(online):
            # it works (the loops take turns), so a warning: the default takes every queue
            n, extra = len(online), queues[len(online):]
            log.warning("xdprx: %s: %d queues for %d CPUs: the receive loops of queue%s %s "
                        "share CPUs with others; for one loop per CPU use --queues %s "
                        "(or ethtool -L %s combined %d)", ifname, len(queues), n,
                        "s" if len(extra) > 1 else "", ",".join(map(str, extra)),
                        ",".join(map(str, queues[:n])), ifname, n)
        return out
    lst = parse_cpulist(cpus) if isinstance(cpus, str) else [int(c) for c in cpus]
    for c in lst:
        if c not in online:
            raise ConfigError(f"--cpus: CPU {c} is not available (available: "
                              f"{','.join(map(str, online))})", remedy="name online CPUs")
    if len(lst) < len(queues):
        raise ConfigError(f"--cpus names {len(lst)} CPU(s) for {len(queues)} queues: queue "
                          f"{queues[len(lst)]} has none",
                          remedy="name one CPU per queue (a CPU may repeat), or use fewer queues")
    return [[c] for c in lst[:len(queues)]]


def pin(cpus: list[int] | None) -> None:
    """Pin the calling thread (Linux: affinity is per thread)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
