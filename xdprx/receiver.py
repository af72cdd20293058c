"""xdprx.Receiver: the in-process receive API.

    with xdprx.Receiver("eth0", groups=["239.1.2.3:5000"]) as rx:
        for batch in rx:
            for pkt in batch:
                handle(pkt.payload)      # memoryview into the UMEM, zero-copy

A Batch's frames belong to the application until the next recv() (or
batch.release()); then they return to the pool in bulk. Its arrays
(offsets, lengths, seqs, groups) are views of buffers reused by the next
batch: copy what must outlive it.

Fan-out: rx.subscribe(groups) adds a consumer (xdprx.consumer) that gets a
reference to every frame of its groups through its own ring; the daemon
does the same for other processes. pump() receives for the consumers only.
"""
from __future__ import annotations

import contextlib
import errno as E
import logging
import select
import threading
import time
from typing import Iterable, Iterator

import numpy as np

from . import bulk, context, fanout, native
from .batch import Batch
from .bpfprog import XdpProgram
from .consumer import Consumer
from .errors import ConfigError, XdprxError, check_privileges
from .feedback import Feedback
from .groups import Group, group_table, parse_groups
from .hub import Hub
from .membership import Membership
from . import numa as numa_mod
from . import umem as umem_mod
from .umem import Umem
from .xsk import XskSocket

log = logging.getLogger("xdprx")


class Receiver:
    """Receive subscribed multicast UDP on one interface queue via AF_XDP."""

    def __init__(self, ifname: str, groups: Iterable[str | Group], queue: int = 0,
                 mode: str = "auto", frames: int = 4096, frame_size: int = 2048,
                 headroom: int = 0, batch_size: int = 256, rx_size: int = 4096,
                 copy: str = "auto", join: bool = True, spin: int = 64,
                 refill_min: int = 16, reserve: int | None = None,
                 max_frames: int | None = None, hugepages: str = "auto",
                 cache: int | None = None, chunk: int | None = None,
                 spill_at: int | None = None, trim_after: float | None = 5.0,
                 numa: str | int = "auto", topology: "numa_mod.Topology | None" = None,
                 numa_window: int = 4, numa_every: int = 64) -> None:
        self.groups = parse_groups(groups)
        if mode not in ("auto", "native", "skb"):
            raise ConfigError(f"unknown mode {mode!r}", remedy="use auto, native or skb")
        if not 1 <= batch_size <= 65536:
            raise ConfigError(f"batch size {batch_size} out of range", remedy="use 16..4096")
        if queue < 0 or queue > 255:
            raise ConfigError(f"queue {queue} out of range", remedy="use 0..255")
        fanout.check_headroom(headroom)
        check_privileges()
        self.ifname = ifname
        self.ifindex = native.require_ifindex(ifname)
        self.queue = queue
        self.batch_size = batch_size
        self.spin = spin
        if not 1 <= refill_min <= min(frames, 4096):
            raise ConfigError(f"refill batch {refill_min} out of range",
                              remedy=f"use 1..{min(frames, 4096)} (16 is the measured default)")
        self.refill_min = refill_min
        self.trim_after = trim_after
        self._next_maint = 0.0
        self._last_growth = (0, 0, time.monotonic())   # (grows, spilled, when)
        self._held = 0
        self._batches = 0
        self._closed = False
        self._stack = contextlib.ExitStack()
        # checks the reserve: before anything is attached
        self.hub = Hub(len(self.groups), frames, frames if max_frames is None else max_frames,
                       reserve)
        self.topology = topology or numa_mod.Topology()
        self.policy, nodes = self._numa_setup(numa, numa_window)
        if not 1 <= numa_every <= 1 << 20:
            raise ConfigError(f"numa_every {numa_every} out of range", remedy="use e.g. 64")
        self.numa_every = numa_every
        context.warm()
        try:
            self.prog = XdpProgram()
            self._stack.callback(self.prog.close)
            self.umem = Umem(frames, frame_size, headroom, fill_size=min(frames, 4096),
                             max_frames=max_frames, hugepages=hugepages, cache=cache,
                             chunk=chunk, spill_at=spill_at, nodes=nodes,
                             bind=not self.topology.simulated)
            self._stack.callback(self.umem.close)
            if nodes:
                self.umem.pool.set_active(self.policy.current)
            # runs after the socket is gone: what the kernel held is ours again
            self._stack.callback(self.umem.pool.reclaim_kernel)
            self.xsk = XskSocket(ifname, queue, self.umem, rx_size, copy)
            self._stack.callback(self.xsk.close)   # LIFO: socket before umem
            self.mode = self.prog.attach(ifname, self.ifindex, mode)
            self._stack.callback(self.prog.detach)
            self.prog.set_socket(queue, self.xsk.fd)
            for i, g in enumerate(self.groups):
                self.prog.subscribe(g.addr, g.port, i)
            if join:
                m = Membership(self.ifindex, self.groups)
                self._stack.callback(m.close)
            self.zerocopy = self.xsk.zerocopy
        except BaseException:
            self._stack.close()
            raise
        self._g_addr, self._g_port = group_table(self.groups)
        self._g_seq = np.zeros(len(self._g_port), np.uint64)
        self._frame = np.zeros(batch_size, np.uint64)
        self._off = np.zeros(batch_size, np.uint64)
        self._len = np.zeros(batch_size, np.uint32)
        self._seq = np.zeros(batch_size, np.uint64)
        self._sub = np.zeros(batch_size, np.int32)
        self.counters = np.zeros(bulk.N_STATS, np.int64)
        self._area = self.umem.area
        self._mv = memoryview(self.umem.area)
        self._poll = select.poll()
        self._poll.register(self.xsk.fd, select.POLLIN)
        # held around every kernel call and consumer-table change: consumers may
        # come and go from other threads (the control socket) while we receive
        self._lock = threading.Lock()
        self.hub.reclaim = lambda c: int(context.reclaim_ctx(self._ctx, c))
        self._gen = self.hub.generation
        self._ctx = self._make_context()
        self._fill_flags = self.umem.fill.flags
        context.rx_burst_ctx(self._ctx, 0, 1, 0)  # prime the FILL ring before traffic

    def _make_context(self) -> np.ndarray:
        u, r, f, p = self.umem, self.xsk.rx, self.umem.fill, self.umem.pool
        return context.make({
            "rx_prod": r.prod, "rx_cons": r.cons, "rx_slots": r.slots, "rx_local": r.local,
            "fill_prod": f.prod, "fill_cons": f.cons, "fill_slots": f.slots,
            "fill_local": f.local, "fill_flags": f.flags,
            "free": p.free, "spare": p.spare, "cache": p.cache, "meta": p.meta,
            "state": p.state, "x": p.x, "umem": u.area,
            "g_addr": self._g_addr, "g_port": self._g_port, "g_seq": self._g_seq,
            "out_frame": self._frame, "out_off": self._off, "out_len": self._len,
            "out_seq": self._seq, "out_sub": self._sub, "stats": self.counters,
            "ctab": self.hub.ctab, "sub_start": self.hub.sub_start,
            "sub_cons": self.hub.sub_cons, "wake": self.hub.wake, "hub": self.hub.hub})

    # ---- consumers ----------------------------------------------------------
    def subscribe(self, groups: Iterable[str | Group] | str | Group | None = None,
                  ring_size: int = 2048, quota: int | None = None, batch_size: int = 256,
                  spin: int = 64) -> Consumer:
        """An in-process consumer of @groups (default: all of this receiver's)."""
        return Consumer(self, self.add_consumer(groups, ring_size, quota), batch_size, spin)

    def add_consumer(self, groups, ring_size: int = 2048, quota: int | None = None,
                     info: dict | None = None):
        """Register a consumer ring (the daemon's control socket uses this)."""
        subs = self.subscription_ids(groups)
        with self._lock:
            self._check_open()
            e = self.hub.add(subs, ring_size, quota, self.umem.frame_size, info)
            self._refresh_context()
        return e

    def unsubscribe(self, cid: int) -> int:
        """Remove consumer @cid; every frame it held is released. Returns how many."""
        with self._lock:
            if self._closed:
                return 0
            n = self.hub.remove(cid)
            self._refresh_context()
        return n

    def subscription_ids(self, groups) -> list[int]:
        if groups is None:
            return list(range(len(self.groups)))
        want = parse_groups([groups] if isinstance(groups, (str, Group)) else groups)
        ids = []
        for g in want:
            if g not in self.groups:
                raise ConfigError(f"{g} is not received here (groups: "
                                  f"{', '.join(map(str, self.groups))})",
                                  remedy="add it with --group when starting xdprx run")
            ids.append(self.groups.index(g))
        return ids

    def _refresh_context(self) -> None:
        if self._gen != self.hub.generation:
            self._ctx = self._make_context()
            self._gen = self.hub.generation

    def _check_open(self) -> None:
        if self._closed:
            raise XdprxError("receiver is closed", E.EBADF, "create a new Receiver")

    # ---- receive ------------------------------------------------------------
    def _release_held(self) -> None:
        if self._held:
            with self._lock:
                context.release_ctx(self._ctx, self._held)
            self._held = 0

    def _burst(self, now: int, self_ref: int) -> int:
        """One receive kernel call (reap, refill, receive, fan-out, publish)."""
        with self._lock:
            self._check_open()
            n = context.rx_burst_ctx(self._ctx, now, self.refill_min, self_ref)
            if self.hub.hub[bulk.H_NWAKE]:
                self.hub.wake_sleepers()
            if self.trim_after is not None and time.monotonic() >= self._next_maint:
                self._maintain()
            if self.counters[bulk.S_BATCHES] >= self._numa_next:
                self._numa_tick()
        if self._fill_flags[0] & native.XDP_RING_NEED_WAKEUP:
            self._poll.poll(0)  # the driver asked to be kicked to use the new FILL entries
        return n

    def _maintain(self) -> None:
        """Every 100 ms: after `trim_after` seconds without growth or copies
        into spare frames, give the pool's free spare chunks back (under the lock)."""
        now = time.monotonic()
        self._next_maint = now + 0.1
        m = self.umem.pool.meta
        cur = (int(m[:, umem_mod.P_GROWS].sum()), int(m[:, umem_mod.P_SPILLED].sum()))
        if cur != self._last_growth[:2]:
            self._last_growth = (*cur, now)
        elif now - self._last_growth[2] >= self.trim_after and self.umem.pool.trimmable():
            self.umem.trim()

    def _wait(self, self_ref: int, timeout: float | None) -> tuple[int, int]:
        """Burst until something arrives; spin a little, then block in poll():
        a busy receiver that never sleeps can starve the kernel's own receive
        work on the same CPU. Returns (count, time)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        spins = 0
        while True:
            now = time.monotonic_ns()
            n = self._burst(now, self_ref)
            if n or (not self_ref and self.counters[bulk.S_BATCHES] != self._batches):
                return n, now
            if spins < self.spin:
                # peek the RX producer index (one load, not a burst) until a
                # packet shows up: the burst does the acquire
                spins += 1
                prod, local = self.xsk.rx.prod, self.xsk.rx.local
                while spins < self.spin and int(prod[0]) == int(local[1]):
                    spins += 1
                continue
            wait_ms = -1 if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            if deadline is not None and wait_ms == 0 and spins > self.spin:
                return 0, now
            self._poll.poll(wait_ms if wait_ms >= 0 else 1000)
            spins += 1

    def recv(self, timeout: float | None = None) -> Batch:
        """The next batch; empty if @timeout (seconds) passes first. Consumers
        get their references in the same call."""
        self._check_open()
        self._release_held()
        n, now = self._wait(1, timeout)
        self._held = n
        return Batch(self, n, now)

    def pump(self, timeout: float | None = None) -> int:
        """Receive for the consumers only (the application takes no reference):
        one batch, or nothing within @timeout. Returns the packets received."""
        self._check_open()
        self._release_held()
        self._batches = self.counters[bulk.S_BATCHES]
        before = int(self.counters[bulk.S_PACKETS])
        self._wait(0, timeout)
        return int(self.counters[bulk.S_PACKETS]) - before

    def __iter__(self) -> Iterator[Batch]:
        while not self._closed:
            b = self.recv(timeout=0.5)
            if len(b):
                yield b

    # ---- NUMA: which node's frames refill FILL ----------------------------------
    def _numa_setup(self, spec, window: int):
        """Resolve --numa against the topology: (policy, pool nodes or None)."""
        mode = numa_mod.parse_numa(spec)
        topo = self.topology
        self.interface_node = -1
        self._numa_next = 1 << 62          # no policy ticks unless adaptive
        if mode == "off":
            return None, None
        if isinstance(mode, int):
            topo.check_node(mode)
            nodes = [mode]
        else:
            nodes = list(topo.memory_nodes)
        self.interface_node = topo.interface_node(self.ifname)
        pol = numa_mod.Policy(nodes, mode, start=self.interface_node, window=window)
        if pol.adaptive:
            self._feedback = Feedback(topo, nodes, len(self.hub.ctab))
            self._numa_next = 0
        log.info("xdprx numa: %s; frame pools on node(s) %s, refill from node %d (%s)",
                 topo, ",".join(map(str, nodes)), pol.current, pol.reason)
        return pol, nodes

    def _numa_tick(self) -> None:
        """Every `numa_every` batches (under the lock): the bytes read per node
        since the last tick (feedback.py) go to the policy, which may move
        the refill node."""
        batches = int(self.counters[bulk.S_BATCHES])
        self._numa_next = batches + self.numa_every
        per = self._feedback.collect(self.hub.ctab, self.hub.hub,
                                     int(self.counters[bulk.S_OWN_BYTES]))
        if self.policy.observe(per, batches):
            self.umem.pool.set_active(self.policy.current)

    def numa_stats(self) -> dict:
        """The refill node, why, the feedback behind it, and every switch."""
        if self.policy is None:
            return {"mode": "off", "why": "--numa off: one pool, the kernel's default placement"}
        d = self.policy.describe()
        d["interface_node"] = self.interface_node
        d["topology"] = {str(n): c for n, c in self.topology.nodes.items()}
        d["simulated"] = self.topology.simulated
        d["bound"] = self.umem.bound
        d["pools"] = self.umem.pool.per_node()
        for pool, where in zip(d["pools"], self.umem.placement()):
            pool["memory"] = {"policy": where["policy"], "policy_nodes": where["policy_nodes"],
                              "pages_by_node": where["pages_by_node"]}
        d["foreign_fills"] = int(self.umem.pool.x[umem_mod.X_FOREIGN])
        return d

    # ---- observability ------------------------------------------------------
    def _counters(self) -> dict[str, int]:
        return {name: int(self.counters[i]) for i, name in enumerate(bulk.STAT_NAMES)}

    def stats(self) -> dict:
        c = self._counters()
        xs = self.xsk.statistics()
        with self._lock:
            consumers = self.hub.consumer_stats(self.groups)
            frames = self._frames()
        return {"interface": self.ifname, "queue": self.queue, "mode": self.mode,
                "zerocopy": self.zerocopy, "groups": [str(g) for g in self.groups],
                "receiver": c, "xdp": self.prog.counters(), "xsk": xs,
                "drops": xs["rx_dropped"] + xs["rx_ring_full"],
                "frames": frames, "consumers": consumers, "numa": self.numa_stats()}

    def _frames(self) -> dict:
        u = self.umem
        return dict(u.census(), **u.pool.gauges(), resident_bytes=u.resident(),
                    frame_size=u.frame_size, pages=u.pages)

    def stats_after_close(self) -> dict:
        """What is still known once closed: receiver counters and the pool."""
        c = self._counters()
        return {"receiver": c, "drops": self._final_drops,
                "frames": dict(self.umem.pool.census(), **self.umem.pool.gauges())}

    def describe(self) -> str:
        return (f"{self.ifname} queue {self.queue}: XDP {self.mode} mode, AF_XDP "
                f"{'zero-copy' if self.zerocopy else 'copy'} mode, {self.umem.frames} frames "
                f"(cap {self.umem.max_frames}) of {self.umem.frame_size} B on {self.umem.pages}, "
                f"groups {', '.join(map(str, self.groups))}; {self._numa_line()}")

    def _numa_line(self) -> str:
        if self.policy is None:
            return "NUMA off"
        p = self.policy
        bound = "bound" if self.umem.bound else "not bound (simulated topology)"
        return (f"NUMA {p.describe()['mode']}: pools on node(s) {','.join(map(str, p.nodes))} "
                f"({bound}), refill from node {p.current}")

    # ---- teardown -----------------------------------------------------------
    def close(self) -> None:
        """Detach, leave the groups, return every frame, free the UMEM."""
        if self._closed:
            return
        self._release_held()
        with self._lock:
            self.hub.close()   # consumers are told; their frames come back
            self._refresh_context()
        try:
            xs = self.xsk.statistics()
            self._final_drops = xs["rx_dropped"] + xs["rx_ring_full"]
        except XdprxError:
            self._final_drops = -1
        self._closed = True
        self._area = self._mv = None   # our views: else the mapping outlives close()
        self._stack.close()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
