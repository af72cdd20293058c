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

Compiled mode (loop.py): rx.serve() runs the whole receive loop in nopython
code with the GIL released until stop(); rx.run(handler) does the same and
calls your njit handler on every batch. While a loop runs, changes to the
consumer table (subscribe, unsubscribe, stats) are handed to the loop's
thread: the loop returns to Python, applies them, and goes on.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno as E
import logging
import os
import select
import threading
import time
from typing import Iterable, Iterator

import numpy as np

from . import bulk, context, fanout, jit, loop, timers
from .kernel import libc, napi, native
from .batch import Batch
from .kernel.bpfprog import XdpProgram
from .consumer import Consumer
from .errors import ConfigError, XdprxError, check_privileges
from .feedback import Feedback
from .groups import Group, group_table, parse_groups
from .hub import Hub
from .kernel.membership import Membership
from . import numa as numa_mod
from .kernel import queues as queues_mod
from . import umem as umem_mod
from .umem import Umem
from .kernel.xsk import XskSocket
from .loop import TICK_DUE

log = logging.getLogger("xdprx")
MAX_GROUP_SLOTS = 4096      # the XDP program's subscriptions map (bpf/redirect.c)


class Receiver:
    """Receive subscribed multicast UDP on an interface's queues via AF_XDP.

    One AF_XDP socket per RX queue (@queues: "all", a count, "A-B", "A,B,..."
    or a list; @queue=q is queues=[q]), all on one UMEM (XDP_SHARED_UMEM),
    each with its own FramePool, FILL ring, consumer table and compiled loop:
    the queues share no lock on the per-packet path. The first queue's state
    lives in this object; `lanes` lists one Receiver per queue (this one
    first), each driven by its own thread in serve()/start()."""

    def __init__(self, ifname: str, groups: Iterable[str | Group], queue: int | None = None,
                 mode: str = "auto", frames: int = 4096, frame_size: int = 2048,
                 headroom: int = 0, batch_size: int = 256, rx_size: int = 4096,
                 copy: str = "auto", join: bool = True, spin: int = 0,
                 rx_usecs: int | None = None, refill_min: int = 16, reserve: int | None = None,
                 max_frames: int | None = None, hugepages: str = "auto",
                 cache: int | None = None, chunk: int | None = None,
                 spill_at: int | None = None, trim_after: float | None = 5.0,
                 numa: str | int = "auto", topology: "numa_mod.Topology | None" = None,
                 numa_window: int = 4, numa_every: int = 64,
                 wake_batch: int | None = None, wake_usecs: int | None = None,
                 queues: "str | int | Iterable[int] | None" = None,
                 cpus: "str | Iterable[int] | None" = None,
                 napi_defer_us: int | None = None) -> None:
        self.groups = parse_groups(groups)
        # set_groups(): removed groups keep their index (subscription ids never
        # change), listed here; the table and self.groups only grow
        self._removed: set[int] = set()
        self._membership: Membership | None = None
        self._reload_lock = threading.Lock()
        if mode not in ("auto", "native", "skb"):
            raise ConfigError(f"unknown mode {mode!r}", remedy="use auto, native or skb")
        if not 1 <= batch_size <= 65536:
            raise ConfigError(f"batch size {batch_size} out of range", remedy="use 16..4096")
        fanout.check_headroom(headroom)
        check_privileges()
        self.ifname = ifname
        self.ifindex = native.require_ifindex(ifname)
        if queue is not None and queues is not None:
            raise ConfigError("both queue and queues given", remedy="use queues= alone")
        self.queues = queues_mod.resolve(ifname, [queue] if queue is not None else
                                         "all" if queues is None else queues)
        self.cpus = queues_mod.resolve_cpus(ifname, self.queues, cpus)
        self.queue = self.queues[0]
        self.lane = 0
        self.batch_size = batch_size
        if not 0 <= spin <= 1_000_000:
            raise ConfigError(f"spin {spin} us out of range", remedy="use 0 (off) .. 1000000")
        self.spin = spin
        # receive moderation: while packets come less than 2 x rx_usecs apart,
        # the loop takes them in batches rx_usecs apart; by default as long
        # as this host's timed naps call for (timers.py)
        self.rx_usecs_auto = rx_usecs is None
        if rx_usecs is None:
            rx_usecs = timers.auto_rx_usecs()
        if not 0 <= rx_usecs <= 10_000:
            raise ConfigError(f"rx_usecs {rx_usecs} out of range",
                              remedy="use 0 (a wake-up per packet) .. 10000")
        self.rx_usecs = rx_usecs
        if napi_defer_us is not None:
            napi.check_usecs(napi_defer_us)
        self.napi_defer_us = napi_defer_us
        if not 1 <= refill_min <= min(frames, 4096):
            raise ConfigError(f"refill batch {refill_min} out of range",
                              remedy=f"use 1..{min(frames, 4096)} (16 is the measured default)")
        self.refill_min = refill_min
        self.trim_after = trim_after
        self._closed = False
        self._stack = contextlib.ExitStack()
        self._hub_args = (len(self.groups), frames, frames if max_frames is None else max_frames,
                          reserve, wake_batch, wake_usecs)
        # checks the reserve: before anything is attached
        self.hub = Hub(*self._hub_args[:4], wake_batch=wake_batch, wake_usecs=wake_usecs)
        self.topology = topology or numa_mod.Topology()
        self._numa_args = (numa, numa_window)
        self.policy, nodes = self._numa_setup(numa, numa_window)
        if not 1 <= numa_every <= 1 << 20:
            raise ConfigError(f"numa_every {numa_every} out of range", remedy="use e.g. 64")
        self.numa_every = numa_every
        self._rx_size, self._copy = rx_size, copy
        self.lanes: list[Receiver] = [self]
        warm()
        try:
            self.prog = XdpProgram()
            self._stack.callback(self.prog.close)
            self.umem = Umem(frames, frame_size, headroom, fill_size=min(frames, 4096),
                             max_frames=max_frames, hugepages=hugepages, cache=cache,
                             chunk=chunk, spill_at=spill_at, nodes=nodes,
                             bind=not self.topology.simulated, lanes=len(self.queues))
            self._stack.callback(self.umem.close)
            self._open_queue()
            self.mode = self.prog.attach(ifname, self.ifindex, mode)
            self._stack.callback(self.prog.detach)
            if napi_defer_us:   # the NAPI instances exist once XDP is attached (veth)
                self._stack.callback(napi.Deferral(ifname, self.ifindex, napi_defer_us).restore)
            for k in range(1, len(self.queues)):
                self.lanes.append(Receiver._queue_of(self, k))
            # LIFO: the other queues' sockets close before the UMEM they share
            self._stack.callback(self._close_lanes)
            for lane in self.lanes:
                self.prog.set_socket(lane.queue, lane.xsk.fd)
            for i, g in enumerate(self.groups):
                self.prog.subscribe(g.addr, g.port, i)
            if join:
                m = self._membership = Membership(self.ifindex, self.groups)
                self._stack.callback(m.close)
            self.zerocopy = self.xsk.zerocopy
        except BaseException:
            self._stack.close()
            raise
        self._mq_ep: select.epoll | None = None
        self._rr = 0
        for lane in self.lanes:
            loop.rx_recv(lane._ctx, 0)  # prime the FILL rings before traffic
            lane._rx_recv = jit.entry(loop.rx_recv)  # warmed: recv()'s call, undispatched

    @classmethod
    def _queue_of(cls, first: "Receiver", k: int) -> "Receiver":
        """The Receiver of queue number k (k >= 1) of @first: its socket on the
        shared UMEM, its own pool, consumer table, NUMA policy and loop."""
        q = cls.__new__(cls)
        for name in ("groups", "_removed", "ifname", "ifindex", "queues", "cpus", "batch_size",
                     "spin", "rx_usecs", "rx_usecs_auto", "napi_defer_us", "refill_min",
                     "trim_after", "topology", "numa_every", "_hub_args", "_numa_args", "_rx_size",
                     "_copy", "prog", "umem", "mode"):
            setattr(q, name, getattr(first, name))
        q.queue, q.lane, q.lanes = first.queues[k], k, [q]
        q._closed = False
        q._stack = contextlib.ExitStack()
        a = q._hub_args
        q.hub = Hub(*a[:4], wake_batch=a[4], wake_usecs=a[5])
        q.policy, _ = q._numa_setup(*q._numa_args)
        try:
            q._open_queue()
        except BaseException:
            q._stack.close()
            raise
        return q

    def _open_queue(self) -> None:
        """This queue's socket, pool view and loop state."""
        k = self.lane
        self.pool = self.umem.pools[k]
        if self.policy is not None and self.umem.nodes:
            self.pool.set_active(self.policy.current)
        self._next_maint = 0.0
        self._last_growth = (0, 0, time.monotonic())   # (grows, spilled, when)
        # runs after the socket is gone: what the kernel held is ours again
        self._stack.callback(self.pool.reclaim_kernel)
        self.xsk = XskSocket(self.ifname, self.queue, self.umem, self._rx_size, self._copy,
                             lane=k)
        self._stack.callback(self.xsk.close)   # LIFO: socket before umem
        self.fill = self.xsk.fill
        self._g_addr, self._g_port = group_table(self.groups)
        # sequence numbers are per (queue, group): the queue's index in the top
        # byte keeps them unique, and a consumer sees gaps per queue
        self._seq_base = np.uint64(k) << np.uint64(56)
        self._g_seq = np.full(len(self._g_port), self._seq_base, np.uint64)
        bs = self.batch_size
        self._frame = np.zeros(bs, np.uint64)
        self._off = np.zeros(bs, np.uint64)
        self._len = np.zeros(bs, np.uint32)
        self._seq = np.zeros(bs, np.uint64)
        self._sub = np.zeros(bs, np.int32)
        self.counters = np.zeros(bulk.N_STATS, np.int64)
        self._area = self.umem.area
        self._mv = memoryview(self.umem.area)
        self._area_ro = self.umem.area.view()
        self._area_ro.setflags(write=False)    # what a handler sees
        # the compiled loop's control words and sleep set: the socket, and an
        # eventfd other threads write to get the loop's attention
        self._ctl = loop.new_ctl()
        self._ctl[loop.K_REFILL_MIN] = self.refill_min
        self._ctl[loop.K_SPIN_NS] = self.spin * 1000
        self._ctl[loop.K_RX_NS] = self.rx_usecs * 1000
        self._attn = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._stack.callback(os.close, self._attn)
        # the loop's sleep: one epoll set, registered once (loop.P_*)
        self._ep = select.epoll()
        self._stack.callback(self._ep.close)
        self._ep.register(self.xsk.fd, select.EPOLLIN)
        self._ep.register(self._attn, select.EPOLLIN | select.EPOLLET)
        self._pfd = np.full(loop.N_PFD, -1, np.int32)
        self._pfd[loop.P_EPFD], self._pfd[loop.P_XSK] = self._ep.fileno(), self.xsk.fd
        # the moderated sleep (rx_usecs): the attention eventfd alone
        self._nap = select.epoll()
        self._stack.callback(self._nap.close)
        self._nap.register(self._attn, select.EPOLLIN | select.EPOLLET)
        self._pfd[loop.P_NAP] = self._nap.fileno()
        self._scratch = np.zeros(4, np.int64)
        # held around every kernel call and consumer-table change; while a
        # compiled loop runs, other threads hand their changes to it (_on_loop)
        self._lock = threading.Lock()
        self._ops_lock = threading.Lock()
        self._ops: list = []
        self._serving: int | None = None       # the thread running serve()/run()
        self._served = threading.Event()
        self._served.set()
        self.hub.reclaim = lambda c: int(loop.rx_reclaim(self._ctx, c))
        self._gen = self.hub.generation
        self._ctx = self._make_context()
        self._ticks_reset()
        # what K_SELF_REF holds (1: recv(), 0: pump()), and so which of the two
        # may take its timeout=0 fast path; -1: neither (serving, closed, unknown)
        self._self_ref = 0
        self._empty = Batch(self, 0)

    def _close_lanes(self) -> None:
        for lane in self.lanes[1:]:
            lane.close()

    def _make_context(self) -> np.ndarray:
        u, r, f, p = self.umem, self.xsk.rx, self.fill, self.pool
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
            "sub_cons": self.hub.sub_cons, "wake": self.hub.wake, "hub": self.hub.hub,
            "ctl": self._ctl, "fn": libc.table(), "pfd": self._pfd, "scratch": self._scratch,
            "refs": p.refs})

    # ---- consumers ----------------------------------------------------------
    def subscribe(self, groups: Iterable[str | Group] | str | Group | None = None,
                  ring_size: int = 2048, quota: int | None = None, batch_size: int = 256,
                  spin: int = 0, wake_batch: int | None = None,
                  wake_usecs: int | None = None) -> Consumer:
        """An in-process consumer of @groups (default: all of this receiver's),
        reading every queue. While it sleeps it is woken when @wake_batch
        packets wait for it (per queue) or @wake_usecs after the first,
        whichever comes first."""
        return Consumer(self, self.add_consumer(groups, ring_size, quota, wake_batch=wake_batch,
                                                wake_usecs=wake_usecs), batch_size, spin)

    def add_consumer(self, groups, ring_size: int = 2048, quota: int | None = None,
                     info: dict | None = None, wake_batch: int | None = None,
                     wake_usecs: int | None = None) -> list:
        """Register a consumer: one ring per queue (hub.Entry each, in queue
        order), the same id in every queue's table (the daemon's control
        socket uses this). @quota and @ring_size are per queue."""
        subs = self.subscription_ids(groups)
        entries: list = []
        try:
            for lane in self.lanes:
                slot = entries[0].ring.id if entries else None
                entries.append(lane._add_one(subs, ring_size, quota, info, wake_batch,
                                             wake_usecs, slot))
        except BaseException:
            for lane, e in zip(self.lanes, entries):
                lane._remove_one(e.ring.id)
            raise
        return entries

    def _add_one(self, subs, ring_size, quota, info, wake_batch, wake_usecs, slot):
        def add():
            self._check_open()
            e = self.hub.add(subs, ring_size, quota, self.umem.frame_size, info,
                             wake_batch, wake_usecs, slot)
            self._refresh_context()
            return e
        return self._on_loop(add)

    def unsubscribe(self, cid: int) -> int:
        """Remove consumer @cid (on every queue); every frame it held is
        released. Returns how many."""
        return sum(lane._remove_one(cid) for lane in self.lanes)

    def _remove_one(self, cid: int) -> int:
        def remove():
            if self._closed:
                return 0
            n = self.hub.remove(cid)
            self._refresh_context()
            return n
        return self._on_loop(remove)

    def subscription_ids(self, groups) -> list[int]:
        if groups is None:
            return [i for i in range(len(self.groups)) if i not in self._removed]
        want = parse_groups([groups] if isinstance(groups, (str, Group)) else groups)
        live = self.live_groups()
        ids = []
        for g in want:
            if g not in live:
                raise ConfigError(f"{g} is not received here (groups: "
                                  f"{', '.join(map(str, live))})",
                                  remedy="add it with --group when starting xdprx run "
                                         "(or to its --config file, then SIGHUP)")
            ids.append(self.groups.index(g))
        return ids

    def live_groups(self) -> list[Group]:
        """The groups received now (self.groups also lists removed ones: a
        subscription id is an index into it, for good)."""
        return [g for i, g in enumerate(self.groups) if i not in self._removed]

    # ---- changing the groups while running (xdprx run: SIGHUP) -----------------
    def set_groups(self, groups: Iterable[str | Group]) -> tuple[list[Group], list[Group]]:
        """Receive @groups from now on; returns (added, removed). Consumers
        keep their rings and the groups that remain; sequence numbers go on.
        Ids are never reused for another group: a removed group keeps its
        table slot as a dead entry (port 0, out of the XDP map), an added one
        is appended (or revives its old slot). Every queue's tables change on
        its own loop's thread (_on_loop), so no packet is parsed against a
        half-changed table."""
        want = parse_groups(groups)
        with self._reload_lock:
            self._check_open()
            live = self.live_groups()
            added = [g for g in want if g not in live]
            removed = [g for g in live if g not in want]
            fresh = [g for g in added if g not in self.groups]
            if len(self.groups) + len(fresh) > MAX_GROUP_SLOTS:
                raise ConfigError(f"{len(self.groups) + len(fresh)} group slots (removed groups "
                                  f"keep theirs) exceed {MAX_GROUP_SLOTS}",
                                  remedy="restart xdprx run to start a fresh table")
            # shared with every queue's Receiver; not subscribable (listed as
            # removed) until every queue's table has the new slots
            self._removed.update(range(len(self.groups), len(self.groups) + len(fresh)))
            self.groups.extend(fresh)
            on = {self.groups.index(g): g.port for g in added}
            off = {self.groups.index(g): 0 for g in removed}
            # added: the tables know a group before the XDP program redirects it
            if on:
                for lane in self.lanes:
                    lane._on_loop(lambda lane=lane: lane._set_table(on))
                self._removed.difference_update(on)
                for i in on:
                    self.prog.subscribe(self.groups[i].addr, self.groups[i].port, i)
            # removed: out of the XDP map first (the kernel gets its packets),
            # then the tables (frames already in the RX ring are rejected, counted)
            self._removed.update(off)         # no new subscriber from here on
            for i in off:
                self.prog.unsubscribe(self.groups[i].addr, self.groups[i].port)
            if off:
                for lane in self.lanes:
                    lane._on_loop(lambda lane=lane: lane._set_table(off))
            if self._membership is not None:
                for g in removed:
                    self._membership.leave(g)
                for g in added:
                    self._membership.join(g)
            return added, removed

    def _set_table(self, ports: dict[int, int]) -> None:
        """This queue's group table grown to self.groups, with @ports
        ({slot: port, 0 for a dead slot}) set (on the loop, under the lock)."""
        n, old = len(self.groups), len(self._g_port)
        if n > old:    # new arrays: the old ones stay valid for the current context
            a, p = group_table(self.groups)
            a[:old], p[:old] = self._g_addr, self._g_port
            seq = np.full(n, self._seq_base, np.uint64)
            seq[:old] = self._g_seq                 # sequence numbers go on
            self._g_addr, self._g_port, self._g_seq = a, p, seq
            self.hub.nsubs = n
            self.hub._reindex()                     # sub_start grows with the table
        for i, port in ports.items():
            self._g_port[i] = port
        self._ctx = self._make_context()
        self._gen = self.hub.generation

    def _refresh_context(self) -> None:
        if self._gen != self.hub.generation:
            self._ctx = self._make_context()
            self._gen = self.hub.generation

    def _check_open(self) -> None:
        if self._closed:
            raise XdprxError("receiver is closed", E.EBADF, "create a new Receiver")

    # ---- the compiled loop's thread and the work handed to it ------------------
    def _on_loop(self, fn):
        """Run @fn (a consumer-table change, a stats snapshot) with the receive
        state quiet: under the lock. A thread inside a compiled call (serve(),
        run(), recv(), pump()) holds the lock; it is asked to come back (K_ATTN
        and the attention eventfd) and runs @fn before it goes on."""
        if self._lock.acquire(blocking=False):     # nobody receives
            try:
                self._run_ops()
                return fn()
            finally:
                self._lock.release()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._ops_lock:
            self._ops.append((fn, fut))
        loop.signal_ctl(self._ctl, loop.K_ATTN, self._attn)
        deadline = time.monotonic() + 30
        while not fut.done():
            # the loop's thread answers within microseconds; if it left the
            # loop meanwhile (nobody holds the lock), run the work here
            concurrent.futures.wait((fut,), timeout=0.05)
            if not fut.done() and self._lock.acquire(blocking=False):
                try:
                    self._run_ops()
                finally:
                    self._lock.release()
            if not fut.done() and time.monotonic() > deadline:
                raise XdprxError("the receive loop did not answer within 30 s", E.ETIMEDOUT,
                                 "is its thread blocked outside xdprx (a handler that never "
                                 "returns)?")
        return fut.result()

    def _run_ops(self) -> None:
        """The handed-over work (the loop's thread, under the lock)."""
        with self._ops_lock:
            self._ctl[loop.K_ATTN] = 0
            ops, self._ops = self._ops, []
        for fn, fut in ops:
            try:
                fut.set_result(fn())
            except BaseException as e:   # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def _ticks_reset(self) -> None:
        """When the loop must come back for maintenance (every 500 ms: each
        return costs the GIL, which consumer threads may hold) and NUMA."""
        self._ctl[loop.K_DEADLINE] = time.monotonic_ns() + 500_000_000
        self._ctl[loop.K_NUMA_NEXT] = self._numa_next

    def _ticks(self) -> None:
        """Maintenance and the NUMA policy, when due (under the lock)."""
        if self.trim_after is not None and time.monotonic() >= self._next_maint:
            self._maintain()
        if self.counters[bulk.S_BATCHES] >= self._numa_next:
            self._numa_tick()
        self._ticks_reset()

    def _maintain(self) -> None:
        """Every 500 ms: after `trim_after` seconds without growth or copies
        into spare frames, give the pool's free spare chunks back (under the lock)."""
        now = time.monotonic()
        self._next_maint = now + 0.5
        m = self.pool.meta
        cur = (int(m[:, umem_mod.P_GROWS].sum()), int(m[:, umem_mod.P_SPILLED].sum()))
        if cur != self._last_growth[:2]:
            self._last_growth = (*cur, now)
        elif now - self._last_growth[2] >= self.trim_after and self.pool.trimmable():
            self.umem.trim(self.lane)

    # ---- receive: compiled loops ---------------------------------------------
    def serve(self, duration: float | None = None, handler=None,
              state: np.ndarray | None = None, nice: int | None = None) -> str:
        """Run the compiled receive loop of every queue until stop() (from any
        thread or a signal handler), @duration seconds, or @handler returning
        nonzero: this thread serves the first queue, one thread each
        ("xdprx-rx<q>", pinned to `cpus` when given) the others. Without
        @handler the loops serve the consumers only; with one, they also
        take a reference to every packet and call
        handler(umem, offsets, lengths, seqs, groups, state) per batch (see
        loop.py; compiled for its real types before the first packet). With
        several queues the handler runs on several threads at once: pass
        @state as (queues, k), a row per queue, to keep them apart (a 1-d
        state is shared). @nice: the loops' nice value (e.g. -10, so that
        consumers sharing their CPUs never starve them). Returns why the
        first queue's loop stopped."""
        from .consumer import handler_state
        L = len(self.lanes)
        if L == 1:
            if state is not None and state.ndim == 2:     # a row per queue: one queue
                state = handler_state(state, 1)[0]
            return self._serve(duration, handler, state, nice)
        rows = (handler_state(state, L) if state is not None and state.ndim == 2
                else [handler_state(state)] * L)
        errors: list[BaseException] = []

        def lane_main(k: int) -> None:
            try:
                self.lanes[k]._serve(duration, handler, rows[k], nice)
            except BaseException as e:  # noqa: BLE001 - re-raised by the first queue's thread
                errors.append(e)
            finally:
                self.stop()            # one queue's loop ending ends them all
        threads = [threading.Thread(target=lane_main, args=(k,), daemon=True,
                                    name=f"xdprx-rx{self.lanes[k].queue}") for k in range(1, L)]
        for t in threads:
            t.start()
        try:
            why = self._serve(duration, handler, rows[0], nice)
        finally:
            self.stop()
            for t in threads:
                t.join()
            for lane in self.lanes:
                lane._ctl[loop.K_STOP] = 0
        if errors:
            raise errors[0]
        return why

    def _serve(self, duration: float | None, handler, state: np.ndarray | None,
               nice: int | None) -> str:
        """This queue's loop on this thread (serve())."""
        from .consumer import handler_state, prepare
        h = loop.no_handler if handler is None else prepare(handler)
        state = handler_state(state)
        if nice is not None:
            set_nice(nice)
        if self.cpus[self.lane]:
            queues_mod.pin(self.cpus[self.lane])
        # the loop sleeps until moderated wake-ups fall due (tens of us): the
        # default 50 us timer slack would double those times
        native.libc.prctl(native.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
        end = None if duration is None else time.monotonic_ns() + int(duration * 1e9)
        with self._ops_lock:
            if self._serving is not None:
                raise XdprxError("a receive loop already runs", E.EBUSY,
                                 "one serve()/run() per Receiver")
            self._serving = threading.get_ident()
            self._self_ref = -1
            self._served.clear()
        why = "stop"
        try:
            self._release_held()
            while True:
                with self._lock:
                    self._check_open()
                    self._run_ops()
                    if self._ctl[loop.K_STOP]:
                        self.counters[bulk.S_RET_STOP] += 1   # seen here, not in the loop
                        break
                    self._ctl[loop.K_SELF_REF] = handler is not None
                    if end is not None:
                        self._ctl[loop.K_DEADLINE] = min(int(self._ctl[loop.K_DEADLINE]), end)
                    r = loop.rx_loop(self._ctx, self._area_ro, h, state)
                    if r == loop.R_TICK:
                        self._ticks()
                if r == loop.R_STOP:
                    break
                if r == loop.R_HANDLER:
                    why = "handler"
                    break
                if end is not None and time.monotonic_ns() >= end:
                    why = "duration"
                    break
        finally:
            with self._ops_lock:
                self._serving = None
                self._ctl[loop.K_STOP] = 0
                self._self_ref = -1            # recv() sets K_SELF_REF again
            with self._lock:
                self._run_ops()
            self._served.set()
        return why

    def run(self, handler, state: np.ndarray | None = None, duration: float | None = None,
            nice: int | None = None) -> str:
        """serve() with @handler: every packet goes through your njit code."""
        return self.serve(duration, handler, state, nice)

    def start(self, nice: int | None = None) -> threading.Thread:
        """serve() on a thread of its own ("xdprx-rx"); stop() or close() ends it."""
        t = threading.Thread(target=self.serve, kwargs={"nice": nice}, name="xdprx-rx",
                             daemon=True)
        t.start()
        while self._serving is None and t.is_alive():
            time.sleep(0.001)
        return t

    def stop(self) -> None:
        """Make the running (or the next) serve()/run() return; safe from any
        thread and from a signal handler."""
        for lane in self.lanes:
            if not lane._closed:
                loop.signal_ctl(lane._ctl, loop.K_STOP, lane._attn)

    # ---- receive: one batch per call ---------------------------------------------
    def _release_held(self) -> None:
        if self._ctl[loop.K_HELD]:
            with self._lock:
                loop.rx_release(self._ctx)

    def _recv(self, self_ref: int, timeout: float | None) -> int:
        """One compiled call (rx_recv) in the common case; the slow path runs
        other threads' requests and the maintenance / NUMA ticks."""
        tns = -1 if timeout is None else int(timeout * 1e9)
        start = time.monotonic_ns() if tns > 0 else 0
        while True:
            with self._lock:
                if self._closed or self._serving is not None or self._ops:
                    self._recv_slow_path()
                if self._self_ref != self_ref:
                    self._ctl[loop.K_SELF_REF] = self._self_ref = self_ref
                n = self._rx_recv(self._ctx, tns)
                if n >= loop.TICK_DUE or n == -2:
                    self._ticks()
            if n >= 0:
                return n if n < loop.TICK_DUE else n - loop.TICK_DUE
            if tns > 0:     # a tick or another thread's request came first: go on
                tns = max(0, start + int(timeout * 1e9) - time.monotonic_ns())

    def _recv_slow_path(self) -> None:
        self._check_open()
        if self._serving is not None:
            raise XdprxError("serve()/run() is receiving on this Receiver", E.EBUSY,
                             "read through a consumer (subscribe()) instead")
        self._run_ops()

    def recv(self, timeout: float | None = None) -> Batch:
        """The next batch; empty if @timeout (seconds) passes first. Consumers
        get their references in the same call (one compiled call in all).
        Several queues: each call looks at every queue, round-robin from the
        one after the last batch's, and the batch comes from one of them."""
        if len(self.lanes) > 1:
            return self._recv_many(1, timeout)
        if timeout == 0 and self._lock.acquire(False):   # the polling fast path
            try:                # (a lock costs 0.2-0.6 us on the VM: one, not a `with`)
                if self._self_ref == 1 and not self._ops:
                    n = self._rx_recv(self._ctx, 0)
                    if n < TICK_DUE:
                        return Batch(self, n) if n else self._empty
                    self._ticks()
                    return Batch(self, n - TICK_DUE)
            finally:
                self._lock.release()
        n = self._recv(1, timeout)
        return Batch(self, n) if n else self._empty

    def pump(self, timeout: float | None = None) -> int:
        """Receive for the consumers only (the application takes no reference):
        one batch, or nothing within @timeout. Returns the packets received
        (the last recv() batch, if any, is released first)."""
        if len(self.lanes) > 1:
            return self._recv_many(0, timeout)
        if timeout == 0 and self._lock.acquire(False):   # as in recv()
            try:
                if self._self_ref == 0 and not self._ops:
                    n = self._rx_recv(self._ctx, 0)
                    if n < TICK_DUE:
                        return n
                    self._ticks()
                    return n - TICK_DUE
            finally:
                self._lock.release()
        return self._recv(0, timeout)

    def _recv_many(self, self_ref: int, timeout: float | None):
        """recv()/pump() over several queues: one compiled call per queue, a
        shared sleep (an epoll set of the queues' epoll sets) when all are
        empty. The convenience path: serve()/run() is the fast one."""
        end = None if timeout is None else time.monotonic() + timeout
        L = len(self.lanes)
        for lane in self.lanes:
            lane._release_held()
        while True:
            total = 0
            for i in range(L):
                k = (self._rr + i) % L
                n = self.lanes[k]._recv(self_ref, 0)
                if self_ref and n:
                    self._rr = (k + 1) % L
                    return Batch(self.lanes[k], n)
                total += n
            if total:
                return total
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return self._empty if self_ref else 0
            self._wait_many(left)

    def _wait_many(self, left: float | None) -> None:
        if self._mq_ep is None:
            self._mq_ep = select.epoll()
            self._stack.callback(self._mq_ep.close)
            for lane in self.lanes:
                self._mq_ep.register(lane._ep.fileno(), select.EPOLLIN)
        # consumers' moderated wake-ups fall due only while a loop runs: with
        # consumers, come back within their wake_usecs
        cap = 0.5
        if any(lane.hub.entries for lane in self.lanes):
            cap = max(self.hub.wake_usecs, 1) / 1e6
        self._mq_ep.poll(cap if left is None else min(left, cap))

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
            self.pool.set_active(self.policy.current)

    def numa_stats(self) -> dict:
        """The refill node, why, the feedback behind it, and every switch."""
        if self.policy is None:
            return {"mode": "off", "why": "--numa off: one pool, the kernel's default placement"}
        d = self.policy.describe()
        d["interface_node"] = self.interface_node
        d["topology"] = {str(n): c for n, c in self.topology.nodes.items()}
        d["simulated"] = self.topology.simulated
        d["bound"] = self.umem.bound
        d["pools"] = self.pool.per_node()
        for pool, where in zip(d["pools"], self.umem.placement(self.lane)):
            pool["memory"] = {"policy": where["policy"], "policy_nodes": where["policy_nodes"],
                              "pages_by_node": where["pages_by_node"]}
        d["foreign_fills"] = int(self.pool.x[umem_mod.X_FOREIGN])
        return d

    # ---- observability ------------------------------------------------------
    def _counters(self) -> dict[str, int]:
        return {name: int(self.counters[i]) for i, name in enumerate(bulk.STAT_NAMES)}

    def stats(self) -> dict:
        """Counters, frames and consumers: per queue under "per_queue" and in
        total at the top level (a consumer's figures summed over its rings)."""
        per = [lane._queue_stats() for lane in self.lanes]
        first = per[0]
        out = {"interface": self.ifname, "queue": self.queue, "queues": list(self.queues),
               "mode": self.mode, "zerocopy": self.zerocopy,
               "groups": [str(g) for g in self.live_groups()], "xdp": self.prog.counters(),
               "numa": first["numa"],
               "moderation": {"rx_usecs": self.rx_usecs, "auto": self.rx_usecs_auto,
                              "nap_cost_ns": timers.nap_cost_ns() if self.rx_usecs_auto else None}}
        if len(per) == 1:
            out.update({k: first[k] for k in ("group_packets", "receiver", "xsk", "drops",
                                              "frames", "consumers")})
            return out
        out["group_packets"] = _sum_dicts([q["group_packets"] for q in per])
        out["receiver"] = _sum_dicts([q["receiver"] for q in per])
        out["xsk"] = _sum_dicts([q["xsk"] for q in per])
        out["drops"] = sum(q["drops"] for q in per)
        out["frames"] = dict(first["frames"], **_sum_dicts([
            {k: v for k, v in q["frames"].items() if k not in _ONCE} for q in per]))
        out["consumers"] = _merge_consumers([q["consumers"] for q in per], self.queues)
        out["per_queue"] = per
        return out

    def _queue_stats(self) -> dict:
        """This queue's view (under its loop: _on_loop)."""
        xs = self.xsk.statistics()
        consumers, frames, numa, c, seqs = self._on_loop(
            lambda: (self.hub.consumer_stats(self.groups), self._frames(), self.numa_stats(),
                     self._counters(), (self._g_seq - self._seq_base).tolist()))
        return {"queue": self.queue, "group_packets": {str(g): n for g, n in zip(self.groups, seqs)},
                "receiver": c, "xsk": xs, "drops": xs["rx_dropped"] + xs["rx_ring_full"],
                "frames": frames, "consumers": consumers, "numa": numa}

    def _frames(self) -> dict:
        u = self.umem
        return dict(u.census(self.lane), **self.pool.gauges(), resident_bytes=u.resident(),
                    frame_size=u.frame_size, pages=u.pages)

    def stats_after_close(self) -> dict:
        """What is still known once closed: receiver counters and the pools."""
        drops = [lane._final_drops for lane in self.lanes]
        return {"receiver": _sum_dicts([lane._counters() for lane in self.lanes]),
                "drops": -1 if -1 in drops else sum(drops),
                "frames": _sum_dicts([dict(p.census(), **p.gauges()) for p in self.umem.pools])}

    def describe(self) -> str:
        qs = (f"queue {self.queue}" if len(self.queues) == 1 else
              f"queues {','.join(map(str, self.queues))} (one loop each)")
        return (f"{self.ifname} {qs}: XDP {self.mode} mode, AF_XDP "
                f"{'zero-copy' if self.zerocopy else 'copy'} mode, {self.umem.frames} frames "
                f"(cap {self.umem.max_frames}) of {self.umem.frame_size} B"
                f"{' per queue' if len(self.queues) > 1 else ''} on {self.umem.pages}, "
                f"groups {', '.join(map(str, self.live_groups()))}; {self._numa_line()}"
                + f"; receive moderation {self.rx_usecs} us"
                + (f" (a {timers.PROBE_US} us nap costs {timers.nap_cost_ns() / 1e3:.1f} us of "
                   "CPU here)" if self.rx_usecs_auto else "")
                + (f"; NAPI deferral {self.napi_defer_us} us" if self.napi_defer_us else ""))

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
        if self._serving is not None and self._serving != threading.get_ident():
            self.stop()
            self._served.wait(timeout=30)
        self._release_held()
        with self._lock:
            self._self_ref = -1
            self.hub.close()   # consumers are told; their frames come back
            self._refresh_context()
        try:
            xs = self.xsk.statistics()
            self._final_drops = xs["rx_dropped"] + xs["rx_ring_full"]
        except XdprxError:
            self._final_drops = -1
        self._closed = True
        # our views (the empty batch holds one too): else the mapping outlives close()
        self._area = self._mv = self._area_ro = self._empty = None
        self._stack.close()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_ONCE = ("resident_bytes", "frame_size", "pages", "chunk")   # UMEM-wide, not per queue


def _sum_dicts(ds: list[dict]) -> dict:
    """Key-wise sums of numeric values (the first dict's other values kept)."""
    out = dict(ds[0])
    for d in ds[1:]:
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k in out:
                out[k] += v
    return out


def _merge_consumers(per_queue: list[list[dict]], queues: list[int]) -> list[dict]:
    """One entry per consumer id: its rings' counters summed, each queue's
    delivered/dropped under "queues"."""
    merged: dict[int, dict] = {}
    for q, cs in zip(queues, per_queue):
        for c in cs:
            m = merged.get(c["id"])
            if m is None:
                m = merged[c["id"]] = dict(c, queues={})
            else:
                for k in ("delivered", "dropped", "held", "wakeups", "bad_cursor"):
                    m[k] += c[k]
            m["queues"][str(q)] = {"delivered": c["delivered"], "dropped": c["dropped"],
                                   "held": c["held"]}
    return [merged[i] for i in sorted(merged)]


def set_nice(nice: int) -> None:
    """The calling thread's nice value (Linux: per thread; threads it starts
    inherit it); refused without CAP_SYS_NICE, then only logged."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as e:
        log.warning("xdprx: cannot set the receive thread's nice value to %d (%s); "
                    "consumers on its CPU may slow it down", nice, e.strerror)


def warm() -> None:
    """Load (or compile) every kernel a Receiver uses, with its real types,
    under the cache lock (jit.py): nothing compiles once traffic flows."""
    from . import consumer, sender
    from .jit import cache_lock
    with cache_lock():
        loop.warm_rx()
        sender.warm()
    consumer.warm()
