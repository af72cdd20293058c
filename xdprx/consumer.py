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
import json
import mmap
import os
import select
import socket
import time
from typing import AsyncIterator, Iterable, Iterator

import numpy as np
from numba.core.dispatcher import Dispatcher

from . import context, cring as CR, libc, loop
from .batch import Batch
from .control import connect, refused
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

    def _setup(self, parts: list[tuple[CR.RingViews, int]], area: np.ndarray,
               groups: list[Group], batch_size: int, spin: int, frame_size: int,
               lifeline: int = -1) -> None:
        """@parts: (ring views, eventfd) per queue of the receiver, in queue
        order (one ring each: every ring has a single producer)."""
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
        self.counts = np.zeros(8, np.int64)   # COUNT_NAMES, last batch, handler calls
        self._scratch = np.zeros(4, np.int64)
        # the sleep: one epoll set (loop.P_*) for every ring's eventfd, edge-
        # triggered so a wake-up needs no read, and the lifeline, whose EOF
        # says the daemon is gone
        self._ep = select.epoll()
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
            j = loop.cons_recv(self._cctx, tns)
        else:
            j = loop.cons_recv_many(self._cctxs, self._rr, tns)
        if j > 0:
            return Batch(self, j)
        if j < 0:
            self.daemon_gone = True
        return Batch(self, 0)

    def run(self, handler, state: np.ndarray | None = None, duration: float | None = None,
            count: int | None = None) -> str:
        """Call @handler (njit) on every batch, in compiled code with the GIL
        released, until it returns nonzero, stop() is called (any thread or a
        signal handler), @duration seconds pass, @count packets were read, or
        the daemon goes away. Returns why: "handler", "stop", "duration",
        "count" or "gone". The handler is compiled for the read-only UMEM first."""
        h = prepare(handler)
        state = handler_state(state)
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
        b = self.recv(timeout=0)
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
                        return self._empty_batch()
                    await self._readable(ev, left)
                b = self.recv(timeout=0)
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

    def _empty_batch(self) -> Batch:
        return Batch(self, 0)

    async def __aiter__(self) -> AsyncIterator[Batch]:
        """`async for batch in consumer`: batches until the daemon goes away."""
        while not self.daemon_gone:
            b = await self.recv_async()
            if len(b):
                yield b

    def stats(self) -> dict[str, int]:
        """What this consumer saw: received, gaps (missed packets), bytes, plus
        the receive loop's view: delivered, dropped (for this consumer)."""
        st = {n: int(self.counts[i]) for i, n in enumerate(COUNT_NAMES)}
        st["handler_calls"] = int(self.counts[5])
        st["delivered"] = sum(int(v.counters[0]) for v in self._views)
        st["dropped"] = sum(int(v.counters[1]) for v in self._views)
        return st

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_many(readers: list[Reader], handler, states: np.ndarray | None = None,
             duration: float | None = None) -> str:
    """Serve many consumers of one receiver (or one daemon) on this thread:
    @handler(umem, offsets, lengths, seqs, groups, states[i]) on each batch of
    reader i, in compiled code with the GIL released; when all are empty, one
    sleep and one wake-up for all of them (not one context switch each).
    @states: int64 (len(readers), k), a row per reader. Ends like
    Reader.run(): "handler", "stop" (readers[0].stop()), "duration", or "gone"
    (every reader's daemon or receiver gone)."""
    if not readers:
        raise ConfigError("run_many needs at least one consumer")
    area = readers[0]._area
    shift = int(readers[0]._ctl[loop.K_SHIFT])
    if any(r._area.shape != area.shape or int(r._ctl[loop.K_SHIFT]) != shift for r in readers):
        raise ConfigError("run_many: the consumers read different UMEMs",
                          remedy="group consumers of one Receiver, or of one daemon")
    h = prepare(handler)
    n = len(readers)
    states = handler_state(states, n)
    # every ring of every reader; a reader's rings share its state row
    cctxs = np.ascontiguousarray(np.concatenate([r._cctxs for r in readers]))
    rows = np.concatenate([np.full(len(r._ctls), i, np.int64) for i, r in enumerate(readers)])
    ep = select.epoll()
    try:
        for r in readers:
            for efd in r._efds:
                ep.register(efd, select.EPOLLIN | select.EPOLLET)
            if r._lifeline >= 0:
                # edge-triggered: its EOF marks one reader gone, once, while
                # the others go on
                ep.register(r._lifeline, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
        n = len(cctxs)
        gpfd = np.full(loop.P_EVENTS + libc.EPOLL_EVENT_WORDS * 2 * n, -1, np.int32)
        gpfd[loop.P_EPFD] = ep.fileno()
        end = None if duration is None else time.monotonic() + duration
        ctl0 = readers[0]._ctl
        ctl0[loop.K_STOP] = 0
        while True:
            r = loop.cons_run_many(cctxs, gpfd, area, h, states, rows, 500_000_000)
            if r == loop.R_GONE:
                for rd in readers:
                    rd.daemon_gone = True
                return "gone"
            if r == loop.R_HANDLER:
                return "handler"
            if r == loop.R_STOP or ctl0[loop.K_STOP]:
                ctl0[loop.K_STOP] = 0
                return "stop"
            if end is not None and time.monotonic() >= end:
                return "duration"
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
    socket, maps the UMEM read-only and its ring, and reads zero-copy."""

    def __init__(self, control: str, groups: Iterable[str | Group] | str | Group,
                 ring_size: int = 2048, quota: int | None = None, batch_size: int = 256,
                 spin: int = 0, name: str = "", timeout: float = 5.0,
                 wake_batch: int | None = None, wake_usecs: int | None = None,
                 handler=None) -> None:
        """Subscribe to @groups of the daemon at @control. Ready means ready:
        every consume kernel (and @handler, for run()) is loaded or compiled
        before the subscription exists, so no packet waits for a compiler.
        @wake_batch / @wake_usecs: while we sleep, wake us when that many
        packets wait or that long after the first (the daemon's defaults when None)."""
        if isinstance(groups, (str, Group)):
            groups = [groups]
        want = [str(Group.parse(g) if isinstance(g, str) else g) for g in groups]
        if not want:
            raise ConfigError("no group to subscribe to", remedy="pass e.g. 239.1.2.3:5000")
        self._maps: list[mmap.mmap] = []
        self._closed = False
        self._efds: list[int] = []
        warm()
        if handler is not None:
            prepare(handler)
        self._sock = connect(control, timeout)
        efds: list[int] = []
        try:
            req = {"cmd": "subscribe", "groups": want, "ring": ring_size, "quota": quota,
                   "name": name, "wake_batch": wake_batch, "wake_usecs": wake_usecs}
            self._sock.sendall(json.dumps(req).encode() + b"\n")
            # the UMEM, then (ring, control page, eventfd) per queue
            msg, fds, _flags, _addr = socket.recv_fds(self._sock, 65536, 1 + 3 * MAX_QUEUES)
            try:
                reply = json.loads(msg or b"{}")
                if not reply.get("ok"):
                    raise refused(reply, "daemon refused the subscription")
                nq = len(reply.get("queues", [0]))
                if len(fds) != 1 + 3 * nq:
                    raise XdprxError("daemon sent no shared memory", E.EPROTO)
                efds = fds[3::3]
                fds = [f for i, f in enumerate(fds) if i == 0 or i % 3 != 0]
                umem = self._map(fds[0], reply["umem_size"], mmap.PROT_READ)
                parts = []
                for k in range(nq):
                    ring = self._map(fds[1 + 2 * k], CR.ring_bytes(reply["ring"]), mmap.PROT_READ)
                    ctl = self._map(fds[2 + 2 * k], CR.CTL_SIZE, mmap.PROT_READ | mmap.PROT_WRITE)
                    parts.append((CR.RingViews(ring, ctl, writable_ring=False), efds[k]))
            finally:
                for fd in fds:
                    os.close(fd)
            self.id = reply["consumer"]
            self.reply = reply
            self.queues = reply.get("queues", [0])
            self._setup(parts, np.frombuffer(umem, np.uint8),
                        [Group.parse(g) for g in reply["groups"]], batch_size, spin,
                        reply["frame_size"], lifeline=self._sock.fileno())
        except BaseException:
            for efd in efds:
                os.close(efd)
            self._efds = []
            self.close()
            raise

    def _map(self, fd: int, size: int, prot: int) -> mmap.mmap:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self._maps.append(m)
        return m

    def close(self) -> None:
        """Unsubscribe (the daemon reclaims our frames) and unmap."""
        if self._closed:
            return
        self._closed = True
        for ctl in getattr(self, "_ctls", ()):
            ctl[loop.K_HELD] = 0         # the daemon reclaims them all
        self._sock.close()
        if getattr(self, "_ep", None) is not None:
            self._ep.close()
        for efd in self._efds:
            os.close(efd)
        self._efds = []
        self._v = self._area = self._mv = None
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # the user still holds a view; it unmaps with it
        self._maps = []


def warm() -> None:
    """Load (or compile) the consume kernels with their real types (the
    UMEM and ring read-only) under the cache lock: once per process."""
    global _warm
    if not _warm:
        with cache_lock():
            loop.warm_consumer()
        _warm = True


_warm = False
