"""Consumers: read a Receiver's packets through a consumer ring, zero-copy.

    with rx.subscribe(["239.1.2.3:5000"]) as c:            # same process
        for batch in c: ...
    with xdprx.Subscriber("/run/xdprx/eth0.sock", "239.1.2.3:5000") as s:  # any process
        for batch in s: ...

    async for batch in s: ...                                # asyncio: the eventfd
    b = await s.recv_async(timeout=1.0)                      # on the running loop

Both yield the same Batch as the Receiver. A consumer holds the frames of
its current batch until its next recv() (or batch.release()); the frames are
read-only for it. Falling behind costs only itself: past its quota it misses
packets (counted for it, and visible as gaps in the sequence numbers).
"""
from __future__ import annotations

import asyncio
import errno as E
import itertools
import json
import mmap
import os
import select
import socket
import threading
import time
from typing import AsyncIterator, Callable, Iterable, Iterator

import numpy as np
from numba.core.dispatcher import Dispatcher

from . import context, cring as CR, jit, loop
from .kernel import libc
from .batch import Batch
from .service.control import connect, refused
from .errors import ConfigError, XdprxError
from .groups import Group
from .jit import cache_lock

COUNT_NAMES = ("received", "gaps", "bytes", "bad")
MAX_QUEUES = 64          # rings one subscription may span (SCM_RIGHTS: 253 fds a message)
HANDLER_DOC = ("handler(umem, offsets, lengths, seqs, groups, state) -> int with umem a "
               "read-only uint8 array, offsets/seqs uint64, lengths uint32, groups int32, "
               "state int64 (all 1-d contiguous)")


def prepare(handler) -> Dispatcher:
    """Compile @handler (an @numba.njit function) for the batch's real types,
    the UMEM read-only among them, so that the first packet finds it ready."""
    if not isinstance(handler, Dispatcher):
        raise ConfigError(f"handler {handler!r} is not an @numba.njit function",
                          remedy=f"decorate it with @numba.njit; signature: {HANDLER_DOC}")
    try:
        with cache_lock():
            handler.compile(loop.HANDLER_SIG.args)
    except Exception as e:  # noqa: BLE001 - numba's typing errors are many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"handler {handler.py_func.__name__} does not compile for the "
                          f"batch's types: {first}",
                          remedy=f"it is called as {HANDLER_DOC}; never write to umem") from None
    return handler


def handler_state(state: np.ndarray | None, rows: int | None = None) -> np.ndarray:
    """A handler's state: 1-d int64 (or @rows rows of it, for run_many),
    contiguous; zeros when None."""
    if state is None:
        return np.zeros(1 if rows is None else (rows, 1), np.int64)
    want = 1 if rows is None else 2
    if (state.dtype != np.int64 or state.ndim != want or not state.flags.c_contiguous
            or (rows is not None and state.shape[0] != rows)):
        what = ("a 1-d contiguous int64 array" if rows is None
                else f"a contiguous int64 array of {rows} rows")
        example = "np.zeros(8, np.int64)" if rows is None else f"np.zeros(({rows}, 8), np.int64)"
        raise ConfigError(f"state must be {what}", remedy=f"pass e.g. {example}")
    return state


class Reader:
    """The consumer side of one consumer ring (shared by both kinds): a driver
    around the compiled consume loop (loop.cons_*)."""

    _stop_req = False     # stop() was called (run()/run_many clear it when they start)

    # run_many's view of a reader; a reconnecting Subscriber overrides these
    def _attached(self) -> bool:
        return getattr(self, "_v", None) is not None

    def _reconnecting(self) -> bool:
        return False

    def _umem_key(self) -> int:
        return 0

    def _closed_now(self) -> bool:
        return bool(getattr(self, "_closed", False))

    def _gone_now(self) -> bool:
        """Every ring closed by the daemon, or its lifeline hung up (Python's
        reading of loop.cons_gone)."""
        return all(int(v.status[0]) == CR.STATUS_CLOSED or ctl[loop.K_GONE] != 0
                   for v, ctl in zip(self._views, self._ctls))

    def _setup(self, parts: list[tuple[CR.RingViews, int]], area: np.ndarray,
               groups: list[Group], batch_size: int, spin: int, frame_size: int,
               lifeline: int = -1, counts: np.ndarray | None = None) -> None:
        """@parts: (ring views, eventfd) per queue of the receiver, in queue
        order (one ring each: every ring has a single producer). @counts: the
        counts to go on adding to (a Subscriber's reconnect keeps its totals)."""
        for views, _ in parts:
            if views.header[0] != CR.RING_MAGIC or views.header[1] != CR.RING_VERSION:
                raise XdprxError("consumer ring has an unknown layout", E.EPROTO,
                                 "use the same xdprx version as the daemon")
        if not 1 <= batch_size <= 65536:
            raise ConfigError(f"batch size {batch_size} out of range", remedy="use 16..4096")
        if not 0 <= spin <= 1_000_000:
            raise ConfigError(f"spin {spin} us out of range", remedy="use 0 (off) .. 1000000")
        self._views = [v for v, _ in parts]
        self._efds = [e for _, e in parts]
        self._v, self._efd = parts[0]
        self._area = area
        self._mv = memoryview(area)
        self.groups = groups
        self.spin = spin
        self._frame = np.zeros(batch_size, np.uint64)
        self._off = np.zeros(batch_size, np.uint64)
        self._len = np.zeros(batch_size, np.uint32)
        self._seq = np.zeros(batch_size, np.uint64)
        self._sub = np.zeros(batch_size, np.int32)
        # COUNT_NAMES, last batch, handler calls
        self.counts = np.zeros(8, np.int64) if counts is None else counts
        self._scratch = np.zeros(4, np.int64)
        # the sleep: one epoll set (loop.P_*) for every ring's eventfd, edge-
        # triggered so a wake-up needs no read, and the lifeline, whose EOF
        # says the daemon is gone
        self._ep = select.epoll()
        group = wake_group()        # this reader's rings sleep together
        for efd in self._efds:
            self._ep.register(efd, select.EPOLLIN | select.EPOLLET)
        if lifeline >= 0:
            self._ep.register(lifeline, select.EPOLLIN | select.EPOLLRDHUP)
        # per ring: its cursors, sequence expectations (gaps are per queue),
        # control words (K_HELD: the batch it holds) and sleep set view;
        # shared: the batch's arrays and the counts
        self._ctls, self._pfds, rows = [], [], []
        self._keep: list[np.ndarray] = []      # the arrays the context rows point into
        for views, _ in parts:
            local = np.zeros(2, np.int64)
            next_seq = np.full(len(groups), CR.NO_SEQ, np.uint64)
            local[:] = int(views.cons[0])
            ctl = loop.new_ctl()
            ctl[loop.K_SHIFT] = frame_size.bit_length() - 1
            ctl[loop.K_BATCH] = batch_size
            ctl[loop.K_SPIN_NS] = spin * 1000
            pfd = np.full(loop.N_PFD, -1, np.int32)
            pfd[loop.P_EPFD], pfd[loop.P_LIFELINE] = self._ep.fileno(), lifeline
            pfd[loop.P_GROUP] = group
            rows.append(context.make({
                "prod": views.prod, "slots": views.slots, "local": local, "umem": area,
                "next_seq": next_seq, "counts": self.counts,
                "out_frame": self._frame, "out_off": self._off, "out_len": self._len,
                "out_seq": self._seq, "out_sub": self._sub, "cons": views.cons,
                "waiting": views.waiting, "feedback": views.feedback.view(np.uint64),
                "status": views.status, "ctl": ctl, "fn": libc.table(), "pfd": pfd,
                "scratch": self._scratch}, context.CONS_FIELDS))
            self._ctls.append(ctl)
            self._pfds.append(pfd)
            self._keep += [local, next_seq]
        self._cctxs = np.ascontiguousarray(np.stack(rows))
        self._cctx = self._cctxs[0]
        self._ctl, self._pfd = self._ctls[0], self._pfds[0]
        self._rows = np.zeros(len(parts), np.int64)   # run(): every ring's batches, one state
        self._rr = np.zeros(2, np.int64)              # the next ring to look at first
        self.daemon_gone = False
        self._lifeline = lifeline
        self._awaiting = False
        self._cons_recv = jit.entry(loop.cons_recv)   # warmed: recv()'s one call, undispatched

    # ---- receive ---------------------------------------------------------------
    def _release_held(self) -> None:
        for i, ctl in enumerate(self._ctls):
            if ctl[loop.K_HELD]:
                loop.cons_done(self._cctxs[i])

    def recv(self, timeout: float | None = None) -> Batch:
        """The next batch; empty if @timeout (s) passes or the daemon has gone
        (then `daemon_gone` is set, after everything queued was read). One
        compiled call: it lets go of the last batch, reads, and sleeps on the
        eventfd when there is nothing to read. Several queues: a batch comes
        from one queue's ring, round-robin, and one sleep covers them all."""
        tns = -1 if timeout is None else int(timeout * 1e9)
        if len(self._ctls) == 1:
            j = self._cons_recv(self._cctx, tns)
        else:
            j = loop.cons_recv_many(self._cctxs, self._rr, tns)
        if j > 0:
            return Batch(self, j)
        if j < 0:
            self.daemon_gone = True
        return Batch(self, 0)   # not cached: a Batch refers to this epoch's mapping

    def run(self, handler, state: np.ndarray | None = None, duration: float | None = None,
            count: int | None = None) -> str:
        """Call @handler (njit) on every batch, in compiled code with the GIL
        released, until it returns nonzero, stop() is called (any thread or a
        signal handler), @duration seconds pass, @count packets were read, or
        the daemon goes away. Returns why: "handler", "stop", "duration",
        "count" or "gone". The handler is compiled for the read-only UMEM first."""
        h = prepare(handler)
        state = handler_state(state)
        self._stop_req = False
        end = None if duration is None else time.monotonic() + duration
        # back in Python this often (signals, duration, count): rarely, since
        # every return needs the GIL, and with many consumer threads in one
        # process a thread waiting for it holds up its packets
        slice_ns = 500_000_000
        self._ctl[loop.K_STOP] = 0
        many = len(self._ctls) > 1
        while True:
            if many:     # every queue's ring on this thread, one state
                r = loop.cons_run_many(self._cctxs, self._pfd, self._area, h,
                                       state.reshape(1, -1), self._rows, slice_ns)
            else:
                r = loop.cons_run(self._cctx, self._area, h, state, slice_ns)
            if r == loop.R_GONE:
                self.daemon_gone = True
                return "gone"
            if r == loop.R_HANDLER:
                return "handler"
            if r == loop.R_STOP or self._ctl[loop.K_STOP]:
                self._ctl[loop.K_STOP] = 0
                return "stop"
            if count is not None and self.counts[0] >= count:
                return "count"
            if end is not None and time.monotonic() >= end:
                return "duration"

    def stop(self) -> None:
        """Make run() return (any thread, or a signal handler)."""
        self._stop_req = True
        loop.signal_ctl(self._ctl, loop.K_STOP, self._efd)

    def __iter__(self) -> Iterator[Batch]:
        while not self.daemon_gone:
            b = self.recv(timeout=0.5)
            if len(b):
                yield b

    # ---- asyncio ---------------------------------------------------------------
    async def recv_async(self, timeout: float | None = None) -> Batch:
        """recv() for asyncio: the next batch, awaiting the eventfd on the
        running event loop instead of blocking the thread; empty if @timeout
        (s) passes or the daemon has gone (`daemon_gone`). Sleep handshake as
        in the compiled loop: look (recv(timeout=0)), arm (waiting = sleep
        number, fence, look again), await the eventfd (and the lifeline
        socket), drain it, disarm, look again; no wake-up is lost."""
        if self._awaiting:
            raise XdprxError("recv_async() is already awaited on this consumer", E.EBUSY,
                             "await one recv_async() (or one `async for`) per consumer")
        b = Reader.recv(self, timeout=0)     # this ring set's, not a reconnecting one's
        if len(b) or self.daemon_gone:
            return b
        ev = asyncio.get_running_loop()
        end = None if timeout is None else ev.time() + timeout
        self._awaiting = True
        try:
            while True:
                if sum(int(loop.cons_arm(c)) for c in self._cctxs) == 0:
                    left = None if end is None else end - ev.time()
                    if left is not None and left <= 0:
                        return Batch(self, 0)
                    await self._readable(ev, left)
                b = Reader.recv(self, timeout=0)
                if len(b) or self.daemon_gone:
                    return b
                if end is not None and ev.time() >= end:
                    return b
        finally:
            self._awaiting = False
            for v in self._views if self._v is not None else ():
                v.waiting[0] = 0            # awake (also when cancelled)

    async def _readable(self, ev: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        """Await the eventfd or the lifeline socket (at most @timeout s), then
        drain the eventfd and disarm; a readable lifeline means EOF: gone."""
        fut = ev.create_future()

        def ready(fd: int) -> None:
            if not fut.done():
                fut.set_result(fd)
        fds = self._efds + ([self._lifeline] if self._lifeline >= 0 else [])
        for fd in fds:
            ev.add_reader(fd, ready, fd)
        try:
            await asyncio.wait((fut,), timeout=timeout)
        finally:
            for fd in fds:
                ev.remove_reader(fd)
            if not fut.done():
                fut.cancel()
        for v, efd in zip(self._views, self._efds):
            v.waiting[0] = 0
            try:
                os.eventfd_read(efd)            # non-blocking: EFD_NONBLOCK
            except BlockingIOError:
                pass
        if self._lifeline >= 0 and fut.done() and not fut.cancelled() \
                and fut.result() == self._lifeline:
            for ctl in self._ctls:
                ctl[loop.K_GONE] = 1            # the daemon never writes after its reply

    async def __aiter__(self) -> AsyncIterator[Batch]:
        """`async for batch in consumer`: batches until the daemon goes away."""
        while not self.daemon_gone:
            b = await self.recv_async()
            if len(b):
                yield b

    def stats(self) -> dict[str, int]:
        """What this consumer saw: received, gaps (missed packets), bytes, plus
        the receive loop's view: delivered, dropped (for this consumer), and
        drop_end: 1 + the sequence number of the last packet dropped for it
        (0: none; with several queues, per queue in `drop_ends`). A drop shows
        as a gap only once a later packet is read; drop_end counts the ones
        after the last packet read too."""
        st = {n: int(self.counts[i]) for i, n in enumerate(COUNT_NAMES)}
        st["handler_calls"] = int(self.counts[5])
        st["delivered"] = sum(int(v.counters[0]) for v in self._views)
        st["dropped"] = sum(int(v.counters[1]) for v in self._views)
        _drop_ends(st, self._views)
        return st

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_ends(st: dict, views) -> None:
    ends = [int(v.counters[2]) for v in views]
    st["drop_end"] = ends[0] if len(ends) == 1 else 0
    if len(ends) > 1:
        st["drop_ends"] = ends


_wake_groups = itertools.count()


def wake_group() -> int:
    """A new sleep-set token, unique in this process (until 2**31 sets): the
    receive loop writes one eventfd for all the rings that announce it."""
    return next(_wake_groups) % 0x7FFFFFFF + 1


def run_many(readers: list[Reader], handler, states: np.ndarray | None = None,
             duration: float | None = None) -> str:
    """Serve many consumers of one receiver (or one daemon) on this thread:
    @handler(umem, offsets, lengths, seqs, groups, states[i]) on each batch of
    reader i, in compiled code with the GIL released; when all are empty, one
    sleep and one wake-up for all of them (not one context switch each).
    @states: int64 (len(readers), k), a row per reader. Ends like
    Reader.run(): "handler", "stop" (readers[0].stop()), "duration", or "gone"
    (every reader's daemon or receiver gone, and none reconnects). Readers
    made with reconnect=True rejoin a restarted daemon on their own and the
    others go on meanwhile."""
    if not readers:
        raise ConfigError("run_many needs at least one consumer")
    h = prepare(handler)
    states = handler_state(states, len(readers))
    end = None if duration is None else time.monotonic() + duration
    rejoin = any(r._reconnecting() for r in readers)
    # with readers that reconnect, back in Python often enough to notice one
    # whose daemon went while others kept it busy
    slice_ns = 100_000_000 if rejoin else 500_000_000
    first = readers[0]
    first._stop_req = False
    if first._attached():
        first._ctl[loop.K_STOP] = 0
    while True:
        # a reader whose daemon went (and that does not reconnect) is drained
        # and out: it must not hold the pass to its dead UMEM
        live = [i for i, r in enumerate(readers) if r._attached() and not r.daemon_gone]
        if live:
            # one UMEM per pass: readers of a daemon that went (oldest epoch)
            # drain first, then the restarted one's
            key = min(readers[i]._umem_key() for i in live)
            live = [i for i in live if readers[i]._umem_key() == key]
            passed = [readers[i] for i in live]
            r = _run_many_pass(passed, h, states, live, slice_ns)
        elif not rejoin or all(rd._closed_now() for rd in readers):
            return "gone"
        else:
            r, passed = loop.R_TIMEOUT, []
            wait = min(rd._next_try for rd in readers if rd._reconnecting()) - time.monotonic()
            if end is not None:
                wait = min(wait, end - time.monotonic())
            time.sleep(min(max(wait, 0.0), 0.05))   # stop() is seen within 50 ms
        if r == loop.R_HANDLER:
            return "handler"
        if r == loop.R_STOP or first._stop_req:
            if first._attached():
                first._ctl[loop.K_STOP] = 0
            first._stop_req = False
            return "stop"
        # every ring of the pass was empty: a gone one is drained
        for rd in passed:
            if rd._gone_now():
                if rd._reconnecting():
                    rd._detach()
                else:
                    rd.daemon_gone = True
        for rd in readers:
            if not rd._attached() and rd._reconnecting():
                rd._attempt()
        if all(rd.daemon_gone for rd in readers):
            return "gone"
        if end is not None and time.monotonic() >= end:
            return "duration"


def _run_many_pass(readers: list[Reader], h, states: np.ndarray, idx: list[int],
                   slice_ns: int) -> int:
    """One cons_run_many slice over @readers (one UMEM), state rows @idx."""
    area = readers[0]._area
    shift = int(readers[0]._ctl[loop.K_SHIFT])
    if any(r._area.shape != area.shape or int(r._ctl[loop.K_SHIFT]) != shift for r in readers):
        raise ConfigError("run_many: the consumers read different UMEMs",
                          remedy="group consumers of one Receiver, or of one daemon")
    # every ring of every reader; a reader's rings share its state row
    cctxs = np.ascontiguousarray(np.concatenate([r._cctxs for r in readers]))
    rows = np.concatenate([np.full(len(r._ctls), i, np.int64) for i, r in zip(idx, readers)])
    ep = select.epoll()
    try:
        for r in readers:
            for efd in r._efds:
                ep.register(efd, select.EPOLLIN | select.EPOLLET)
            if r._lifeline >= 0:
                # edge-triggered: its EOF marks one reader gone, once, while
                # the others go on
                ep.register(r._lifeline, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        gpfd = np.full(loop.P_EVENTS + libc.EPOLL_EVENT_WORDS * 2 * len(cctxs), -1, np.int32)
        gpfd[loop.P_EPFD] = ep.fileno()
        gpfd[loop.P_GROUP] = wake_group()
        return loop.cons_run_many(cctxs, gpfd, area, h, states, rows, slice_ns)
    finally:
        ep.close()


class Consumer(Reader):
    """An in-process consumer (Receiver.subscribe). Its recv() may run on any
    thread, including the receive thread between Receiver.pump() calls."""

    def __init__(self, rx, entries: list, batch_size: int, spin: int) -> None:
        self._rx = rx
        self.id = entries[0].ring.id
        parts = [(CR.RingViews(e.ring._ring, e.ring._ctl, writable_ring=False), e.ring.efd)
                 for e in entries]
        area = rx.umem.area.view()
        area.setflags(write=False)
        self._closed = False
        self._setup(parts, area, rx.groups, batch_size, spin, rx.umem.frame_size)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release_held()
        self._rx.unsubscribe(self.id)
        self._ep.close()
        self._v = self._area = self._mv = None


class Subscriber(Reader):
    """A consumer in another process: connects to `xdprx run`'s control
    socket, maps the UMEM read-only and its ring, and reads zero-copy.

    reconnect=True: when the daemon goes away (crash, restart), read what
    is left of its rings, let go of its memory, and subscribe again to the
    same control path (every RECONNECT_MIN s at first, doubling to
    RECONNECT_MAX, and at once when a new socket file appears there) until
    it answers or close()/stop(); recv(), iteration,
    run() and run_many carry on with the new daemon and `daemon_gone` is
    never set. A restarted daemon numbers every group from 0 again: each
    daemon is an epoch (its start time, `epoch`); `reconnects` counts them,
    gaps are counted within an epoch only (nothing is made up for packets
    sent while no daemon ran), and `epochs` keeps each past epoch's figures.
    @on_reconnect(subscriber) runs (in the reading thread) after each
    reconnect, before the first packet of the new epoch: the place to reset
    a handler state's expected sequence number."""

    RECONNECT_MIN, RECONNECT_MAX = 0.05, 1.0

    def __init__(self, control: str, groups: Iterable[str | Group] | str | Group,
                 ring_size: int = 2048, quota: int | None = None, batch_size: int = 256,
                 spin: int = 0, name: str = "", timeout: float = 5.0,
                 wake_batch: int | None = None, wake_usecs: int | None = None,
                 handler=None, reconnect: bool = False,
                 on_reconnect: Callable[["Subscriber"], None] | None = None) -> None:
        """Subscribe to @groups of the daemon at @control. Ready means ready:
        every consume kernel (and @handler, for run()) is loaded or compiled
        before the subscription exists, so no packet waits for a compiler.
        @wake_batch / @wake_usecs: while we sleep, wake us when that many
        packets wait or that long after the first (the daemon's defaults when None).
        @reconnect: survive daemon restarts (see the class); the first
        subscription must still succeed here."""
        if isinstance(groups, (str, Group)):
            groups = [groups]
        want = [str(Group.parse(g) if isinstance(g, str) else g) for g in groups]
        if not want:
            raise ConfigError("no group to subscribe to", remedy="pass e.g. 239.1.2.3:5000")
        self._maps: list[mmap.mmap] = []
        self._closed = False
        self._efds: list[int] = []
        self._sock: socket.socket | None = None
        self._control, self._timeout = control, timeout
        self._req = {"cmd": "subscribe", "groups": want, "ring": ring_size, "quota": quota,
                     "name": name, "wake_batch": wake_batch, "wake_usecs": wake_usecs}
        self._batch_size, self._spin = batch_size, spin
        self.reconnect = reconnect
        self.on_reconnect = on_reconnect
        self.reconnects = 0
        self.epoch = 0
        self.epochs: list[dict] = []        # each past daemon lifetime's figures (last 1024)
        self.last_error = ""                # why the last reconnect attempt failed
        self.down_s = 0.0                   # time spent without a daemon, in total
        self._gone_at: float | None = None
        self._next_try = 0.0
        self._pause = self.RECONNECT_MIN
        self._failed_on: tuple = ()         # the control path's file at the last failure
        self._wake = threading.Event()      # close()/stop() cut a backoff wait short
        self._lock = threading.Lock()       # a resubscription vs close() in another thread
        self._past = {"delivered": 0, "dropped": 0}
        self._start = np.zeros(8, np.int64)  # counts when this epoch began
        warm()
        if handler is not None:
            prepare(handler)
        try:
            self._subscribe(timeout)
        except BaseException:
            self.close()
            raise

    def _subscribe(self, timeout: float) -> None:
        """Connect, subscribe, map the UMEM and rings, set the reader up."""
        sock = connect(self._control, timeout)
        fds: list[int] = []
        efds: list[int] = []
        try:
            sock.sendall(json.dumps(self._req).encode() + b"\n")
            # the UMEM, then (ring, control page, eventfd) per queue
            msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 1 + 3 * MAX_QUEUES)
            reply = json.loads(msg or b"{}")
            if not reply.get("ok"):
                raise refused(reply, "daemon refused the subscription")
            nq = len(reply.get("queues", [0]))
            if len(fds) != 1 + 3 * nq:
                raise XdprxError("daemon sent no shared memory", E.EPROTO)
            efds = fds[3::3]
            maps = [f for i, f in enumerate(fds) if i == 0 or i % 3 != 0]
            umem = self._map(maps[0], reply["umem_size"], mmap.PROT_READ)
            parts = []
            for k in range(nq):
                ring = self._map(maps[1 + 2 * k], CR.ring_bytes(reply["ring"]), mmap.PROT_READ)
                ctl = self._map(maps[2 + 2 * k], CR.CTL_SIZE, mmap.PROT_READ | mmap.PROT_WRITE)
                parts.append((CR.RingViews(ring, ctl, writable_ring=False), efds[k]))
            for fd in maps:
                os.close(fd)
            fds = []
            self.id = reply["consumer"]
            self.reply = reply
            self.queues = reply.get("queues", [0])
            self.epoch = int(reply.get("epoch", 0))
            self._setup(parts, np.frombuffer(umem, np.uint8),
                        [Group.parse(g) for g in reply["groups"]], self._batch_size,
                        self._spin, reply["frame_size"], lifeline=sock.fileno(),
                        counts=getattr(self, "counts", None))
            self._sock = sock
            self._start = self.counts.copy()
        except BaseException:
            sock.close()
            for fd in fds or efds:
                os.close(fd)
            self._unmap()
            raise

    def _map(self, fd: int, size: int, prot: int) -> mmap.mmap:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self._maps.append(m)
        return m

    def _unmap(self) -> None:
        self._views = []
        self._v = self._area = self._mv = None
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # the user still holds a view; it unmaps with it
        self._maps = []

    # ---- reconnecting ------------------------------------------------------------
    def _attached(self) -> bool:
        return self._sock is not None

    def _reconnecting(self) -> bool:
        return self.reconnect and not self._closed

    def _umem_key(self) -> int:
        return self.epoch

    def _closed_now(self) -> bool:
        return self._closed

    def _detach(self) -> None:
        """The daemon is gone and its rings read: note this epoch's figures,
        then let go of everything of it (socket, epoll, eventfds, maps)."""
        if self._sock is None:
            return
        d = self.counts - self._start
        ep = {"epoch": self.epoch, "pid": int(self.reply.get("pid", 0)),
              "consumer": self.id, "received": int(d[0]), "gaps": int(d[1]),
              "bytes": int(d[2]),
              "delivered": sum(int(v.counters[0]) for v in self._views),
              "dropped": sum(int(v.counters[1]) for v in self._views)}
        self.epochs.append(ep)
        del self.epochs[:-1024]             # restarting forever: the latest ones
        self._past["delivered"] += ep["delivered"]
        self._past["dropped"] += ep["dropped"]
        for ctl in self._ctls:
            ctl[loop.K_HELD] = 0
        self._sock.close()
        self._sock = None
        self._ep.close()
        for efd in self._efds:
            os.close(efd)
        self._efds = []
        self._ctls, self._cctxs, self._pfds = [], None, []
        self._unmap()
        self._gone_at = time.monotonic()
        self._next_try, self._pause = 0.0, self.RECONNECT_MIN

    def _path_id(self) -> tuple:
        try:
            st = os.stat(self._control)
            return (st.st_ino, st.st_mtime_ns)
        except OSError:
            return ()

    def _attempt(self) -> bool:
        """One try at subscribing again, if its time has come (backoff), or
        at once when a new socket file appeared at the control path (a new
        daemon: no need to sleep out the backoff)."""
        now = time.monotonic()
        if self._closed:
            return False
        if now < self._next_try:
            pid = self._path_id()
            if not pid or pid == self._failed_on:
                return False
        self._failed_on = self._path_id()
        with self._lock:           # close() from another thread waits for this
            if self._closed:
                return False
            try:
                self._subscribe(min(self._timeout, 2.0))
            except (XdprxError, OSError, ValueError, KeyError) as e:
                self.last_error = str(e)
                self._next_try = time.monotonic() + self._pause
                self._pause = min(self._pause * 2, self.RECONNECT_MAX)
                return False
        self.reconnects += 1
        if self._gone_at is not None:
            self.down_s += time.monotonic() - self._gone_at
            self._gone_at = None
        if self.on_reconnect is not None:
            self.on_reconnect(self)
        return True

    def _rejoin(self, end: float | None, stoppable: bool) -> bool:
        """Detach from the gone daemon and try until subscribed again; False
        at @end (monotonic s), on close(), or (if @stoppable) on stop()."""
        self._detach()
        while not self._closed and not (stoppable and self._stop_req):
            if self._attempt():
                return True
            now = time.monotonic()
            if end is not None and now >= end:
                return False
            wait = self._next_try - now if end is None else min(self._next_try, end) - now
            # in short steps: a new socket file at the path is tried at once
            if self._wake.wait(min(max(wait, 0.0), self.RECONNECT_MIN)) and not self._closed:
                if not (stoppable and self._stop_req):
                    self._wake.clear()
        return False

    # ---- the reads, carried across daemons ---------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise XdprxError("this Subscriber is closed", E.EBADF, "make a new one")

    def recv(self, timeout: float | None = None) -> Batch:
        self._check_open()
        if not self.reconnect:
            return Reader.recv(self, timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._sock is not None:
                left = None if end is None else max(end - time.monotonic(), 0.0)
                b = Reader.recv(self, left)
                if len(b) or not self.daemon_gone:
                    return b
                self.daemon_gone = False         # set only without reconnect
            if not self._rejoin(end, stoppable=False):
                return Batch(self, 0)

    recv.__doc__ = Reader.recv.__doc__

    def run(self, handler, state: np.ndarray | None = None, duration: float | None = None,
            count: int | None = None) -> str:
        self._check_open()
        if not self.reconnect:
            return Reader.run(self, handler, state, duration, count)
        end = None if duration is None else time.monotonic() + duration
        self._stop_req = False
        self._wake.clear()
        while True:
            if self._sock is not None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return "duration"
                why = Reader.run(self, handler, state, left, count)
                if why != "gone":
                    return why
                self.daemon_gone = False
            if not self._rejoin(end, stoppable=True):
                if self._closed:
                    return "gone"
                return "stop" if self._stop_req else "duration"

    run.__doc__ = Reader.run.__doc__

    def stop(self) -> None:
        """Make run() return (any thread, or a signal handler), also while it
        waits for a daemon to come back."""
        self._stop_req = True
        self._wake.set()
        if self._sock is not None:
            loop.signal_ctl(self._ctl, loop.K_STOP, self._efd)

    def __iter__(self) -> Iterator[Batch]:
        while not self.daemon_gone and not self._closed:
            b = self.recv(timeout=0.5)
            if len(b):
                yield b

    async def recv_async(self, timeout: float | None = None) -> Batch:
        self._check_open()
        if not self.reconnect:
            return await Reader.recv_async(self, timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._sock is not None:
                left = None if end is None else max(end - time.monotonic(), 0.0)
                b = await Reader.recv_async(self, left)
                if len(b) or not self.daemon_gone:
                    return b
                self.daemon_gone = False
                self._detach()
            if self._attempt():
                continue
            if self._closed or (end is not None and time.monotonic() >= end):
                return Batch(self, 0)
            wait = self._next_try - time.monotonic()
            if end is not None:
                wait = min(wait, end - time.monotonic())
            await asyncio.sleep(min(max(wait, 0.0), self.RECONNECT_MIN))

    recv_async.__doc__ = Reader.recv_async.__doc__

    async def __aiter__(self) -> AsyncIterator[Batch]:
        while not self.daemon_gone and not self._closed:
            b = await self.recv_async()
            if len(b):
                yield b

    def stats(self) -> dict[str, int]:
        """Reader.stats() summed over every daemon this subscriber read from,
        plus `reconnects`, `epoch` (the current daemon's start time, ns; a new
        value: sequence numbers started again), `attached` (0 while waiting for
        a daemon to come back) and `down_ms` (time without one, in total)."""
        st = {n: int(self.counts[i]) for i, n in enumerate(COUNT_NAMES)}
        st["handler_calls"] = int(self.counts[5])
        views = self._views if self._sock is not None else []
        st["delivered"] = self._past["delivered"] + sum(int(v.counters[0]) for v in views)
        st["dropped"] = self._past["dropped"] + sum(int(v.counters[1]) for v in views)
        _drop_ends(st, views)           # the current daemon's (its sequence numbers)
        st["reconnects"] = self.reconnects
        st["epoch"] = self.epoch
        st["attached"] = int(self._sock is not None)
        down = self.down_s + (time.monotonic() - self._gone_at if self._gone_at else 0.0)
        st["down_ms"] = int(down * 1000)
        return st

    def close(self) -> None:
        """Unsubscribe (the daemon reclaims our frames) and unmap; also stops
        a reconnect in progress (in another thread) at once."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        with self._lock:
            self._release()

    def _release(self) -> None:
        for ctl in getattr(self, "_ctls", ()):
            ctl[loop.K_HELD] = 0         # the daemon reclaims them all
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if getattr(self, "_ep", None) is not None:
            self._ep.close()
        for efd in self._efds:
            os.close(efd)
        self._efds = []
        self._unmap()


def warm() -> None:
    """Load (or compile) the consume kernels with their real types (the
    UMEM and ring read-only) under the cache lock: once per process."""
    global _warm
    if not _warm:
        with cache_lock():
            loop.warm_consumer()
        _warm = True


_warm = False
