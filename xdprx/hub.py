"""The consumer table of one Receiver: who is subscribed to what.

The receive kernel reads three arrays from here: `ctab` (one row per
consumer: its ring addresses, quota, producer and reap cursors, counters),
and the subscription index `sub_start`/`sub_cons` (CSR: the consumers of
subscription s are sub_cons[sub_start[s]:sub_start[s+1]]). Only the receive
thread may change them, between bursts: the Receiver holds its lock around
every kernel call and every change made here, so the control socket's thread
can add and remove consumers while the receive loop runs.
"""
from __future__ import annotations

import errno as E
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import bulk as B
from .cring import NO_CPU, ConsumerRing
from .errors import ConfigError, XdprxError
from .ring import U32

MAX_CONSUMERS = 1024
# wake-up moderation defaults (benchmarks/RESULTS.md, "wake-up coalescing"):
# a sleeping consumer is woken when this many packets wait for it, or this
# long after the first one, whichever comes first
WAKE_BATCH = 64
WAKE_USECS = 50


@dataclass
class Entry:
    ring: ConsumerRing
    subs: list[int]
    info: dict = field(default_factory=dict)   # pid, uid, name: for stats


class Hub:
    def __init__(self, nsubs: int, ring: int, cap: int, reserve: int | None = None,
                 max_consumers: int = MAX_CONSUMERS, wake_batch: int | None = None,
                 wake_usecs: int | None = None) -> None:
        self.nsubs = nsubs
        # defaults for consumers that do not choose their own
        self.wake_batch = WAKE_BATCH if wake_batch is None else wake_batch
        self.wake_usecs = WAKE_USECS if wake_usecs is None else wake_usecs
        if not 1 <= self.wake_batch <= 65536:
            raise ConfigError(f"wake_batch {self.wake_batch} out of range", remedy="use 1..65536")
        if not 0 <= self.wake_usecs <= 1_000_000:
            raise ConfigError(f"wake_usecs {self.wake_usecs} out of range",
                              remedy="use 0 (wake at once) .. 1000000")
        self.ctab = np.zeros((max_consumers, B.NCOL), np.int64)
        self.hub = np.zeros(B.N_HUB, np.int64)
        self.cap = cap
        # ring frames kept back for the FILL ring when consumers hold many (see fan_out)
        reserve = ring // 4 if reserve is None else reserve
        if not 0 <= reserve < ring:
            raise ConfigError(f"reserve {reserve} out of range", remedy=f"use 0..{ring - 1}")
        self.hub[B.H_RESERVE] = reserve
        self.wake = np.zeros(max_consumers, np.int32)
        self.entries: dict[int, Entry] = {}
        self.sub_start = np.zeros(nsubs + 1, np.int64)
        self.sub_cons = np.zeros(1, np.int32)
        self.generation = 0          # bumped when sub_* are replaced
        self.reclaim: Callable[[int], int] = lambda c: 0   # set by the Receiver

    # ---- changes (under the Receiver's lock) ------------------------------------
    def add(self, subs: list[int], ring_size: int, quota: int | None, frame_size: int,
            info: dict | None = None, wake_batch: int | None = None,
            wake_usecs: int | None = None, slot: int | None = None) -> Entry:
        """A consumer ring for @subs; @slot: its id (multi-queue: a consumer
        has one ring per queue, the same id in every queue's table)."""
        check_ring(ring_size)
        room = int(self.cap - self.hub[B.H_RESERVE])
        quota = min(ring_size, room) if quota is None else quota
        if not 1 <= quota <= min(ring_size, room):
            raise ConfigError(f"quota {quota} out of range",
                              remedy=f"use 1..{min(ring_size, room)} (ring size and the "
                                     f"pool's {room} frames not kept for the FILL ring)")
        # a wake-up batch the quota cannot reach would leave only the timer
        if wake_batch is None:
            wake_batch = min(self.wake_batch, max(1, quota // 2))
        wake_usecs = self.wake_usecs if wake_usecs is None else wake_usecs
        if not 1 <= wake_batch <= quota:
            raise ConfigError(f"wake_batch {wake_batch} out of range",
                              remedy=f"use 1..{quota} (the consumer's quota)")
        if not 0 <= wake_usecs <= 1_000_000:
            raise ConfigError(f"wake_usecs {wake_usecs} out of range",
                              remedy="use 0 (wake at once) .. 1000000")
        if not subs or any(not 0 <= s < self.nsubs for s in subs):
            raise ConfigError("a consumer needs at least one of the receiver's groups")
        free = np.flatnonzero(self.ctab[:, B.C_ACTIVE] == 0)
        free = [int(c) for c in free if int(c) not in self.entries]
        if slot is not None and slot not in free:
            raise XdprxError(f"consumer slot {slot} is taken on this queue", E.EBUSY,
                             "a bug: every queue's table changes together")
        if not free:
            raise XdprxError(f"consumer table full ({len(self.ctab)})", E.ENOSPC, "close idle consumers")
        c = free[0] if slot is None else slot
        ring = ConsumerRing(c, ring_size, quota, frame_size)
        row = self.ctab[c]
        row[:] = 0
        row[B.C_RING] = ring.views.ring_addr
        row[B.C_CTL] = ring.views.ctl_addr
        row[B.C_SIZE] = ring_size
        row[B.C_QUOTA] = quota
        row[B.C_EFD] = ring.efd
        row[B.C_OWNER] = int((info or {}).get("pid", 0))   # SO_PEERCRED; 0: this process
        row[B.C_WAKE_BATCH] = wake_batch
        row[B.C_WAKE_NS] = wake_usecs * 1000
        row[B.C_ACTIVE] = 1
        e = Entry(ring, sorted(set(subs)), info or {})
        self.entries[c] = e
        self.hub[B.H_NACTIVE] += 1
        self.hub[B.H_NSLOTS] = max(self.hub[B.H_NSLOTS], c + 1)
        self._reindex()
        return e

    def remove(self, c: int) -> int:
        """Unsubscribe @c and drop every reference it holds. Returns that count."""
        e = self.entries.pop(c, None)
        if e is None:
            return 0
        self._reindex()                 # no new deliveries...
        dropped = self.reclaim(c)       # ...then its frames come back
        e.ring.mark_closed()
        e.ring.close()
        active = np.flatnonzero(self.ctab[:, B.C_ACTIVE])
        self.hub[B.H_NSLOTS] = int(active[-1]) + 1 if len(active) else 0
        return dropped

    def _reindex(self) -> None:
        per_sub: list[list[int]] = [[] for _ in range(self.nsubs)]
        for c, e in sorted(self.entries.items()):
            for s in e.subs:
                per_sub[s].append(c)
        start = np.zeros(self.nsubs + 1, np.int64)
        start[1:] = np.cumsum([len(x) for x in per_sub])
        cons = np.array([c for x in per_sub for c in x] or [0], np.int32)
        self.sub_start, self.sub_cons = start, cons
        self.generation += 1

    # ---- observability ---------------------------------------------------------
    def consumer_stats(self, groups: list) -> list[dict]:
        out = []
        for c, e in sorted(self.entries.items()):
            r = self.ctab[c]
            fb = e.ring.views.feedback
            cpu, node = (-1 if x == NO_CPU else int(x) for x in fb[:8].view(np.uint32))
            nbytes, npk = (int(x) for x in fb[8:24].view(np.uint64))
            out.append(dict(
                id=c, groups=[str(groups[s]) for s in e.subs],
                delivered=int(r[B.C_DELIVERED]), dropped=int(r[B.C_DROPPED]),
                held=int((r[B.C_PROD] - r[B.C_REAPED]) & U32), quota=int(r[B.C_QUOTA]),
                ring=int(r[B.C_SIZE]), bad_cursor=int(r[B.C_BAD]), wakeups=int(r[B.C_WAKES]),
                wake_batch=int(r[B.C_WAKE_BATCH]), wake_usecs=int(r[B.C_WAKE_NS]) // 1000,
                cpu=cpu, node=node, read_bytes=nbytes, read_packets=npk, **e.info))
        return out

    def close(self) -> None:
        """After the receive loop stopped: every consumer is told and dropped."""
        for c in list(self.entries):
            self.remove(c)


def check_ring(size: int) -> None:
    if size < 64 or size > 65536 or size & (size - 1):
        raise ConfigError(f"consumer ring size {size} is not a power of two in 64..65536",
                          remedy="use e.g. 2048")
