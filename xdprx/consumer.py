"""Consumers: read a Receiver's packets through a consumer ring, zero-copy.

    with rx.subscribe(["239.1.2.3:5000"]) as c:            # same process
        for batch in c: ...
    with xdprx.Subscriber("/run/xdprx/eth0.sock", "239.1.2.3:5000") as s:  # any process
        for batch in s: ...

Both yield the same Batch as the Receiver. A consumer holds the frames of
its current batch until its next recv() (or batch.release()); the frames are
read-only for it. Falling behind costs only itself: past its quota it misses
packets (counted for it, and visible as gaps in the sequence numbers).
"""
from __future__ import annotations

import errno as E
import json
import mmap
import os
import select
import socket
import time
from typing import Iterable, Iterator

import numpy as np

from . import cring as CR
from .batch import Batch
from .control import connect, refused
from .errors import ConfigError, XdprxError
from .groups import Group
from .jit import cache_lock
from .numa import getcpu

COUNT_NAMES = ("received", "gaps", "bytes", "bad")
REPORT_EVERY = 64    # batches between two cpu/node reports (a power of two)


class Reader:
    """The consumer side of one consumer ring (shared by both kinds)."""

    def _setup(self, views: CR.RingViews, area: np.ndarray, groups: list[Group], efd: int,
               batch_size: int, spin: int, frame_size: int) -> None:
        if views.header[0] != CR.RING_MAGIC or views.header[1] != CR.RING_VERSION:
            raise XdprxError("consumer ring has an unknown layout", E.EPROTO,
                             "use the same xdprx version as the daemon")
        self._v = views
        self._area = area
        self._mv = memoryview(area)
        self.groups = groups
        self._efd = efd
        self.spin = spin
        self._shift = frame_size.bit_length() - 1
        self._local = np.zeros(2, np.int64)
        self._local[:] = int(views.cons[0])
        self._frame = np.zeros(batch_size, np.uint64)
        self._off = np.zeros(batch_size, np.uint64)
        self._len = np.zeros(batch_size, np.uint32)
        self._seq = np.zeros(batch_size, np.uint64)
        self._sub = np.zeros(batch_size, np.int32)
        self._next_seq = np.full(len(groups), CR.NO_SEQ, np.uint64)
        self.counts = np.zeros(5, np.int64)
        self._fb = views.feedback[8:24].view(np.uint64)
        self._fb_where = views.feedback[:8].view(np.uint32)
        self._releases = 0
        self._report_cpu()
        self._held = 0
        self._poll = select.poll()
        self._poll.register(efd, select.POLLIN)
        self.daemon_gone = False

    # ---- receive ---------------------------------------------------------------
    def _release_held(self) -> None:
        if self._held:
            CR.cring_release(self._v.cons, self._local, self._held)
            self._held = 0
            self._fb[0] = self.counts[2]   # feedback: bytes and packets read
            self._fb[1] = self.counts[0]
            self._releases += 1
            if self._releases & (REPORT_EVERY - 1) == 1:   # the first, then every 64th
                self._report_cpu()

    def _report_cpu(self) -> None:
        """Feedback for the NUMA policy: where this reader runs now (a vDSO
        call, once every REPORT_EVERY batches, never per packet)."""
        self._fb_where[:] = getcpu()

    def recv(self, timeout: float | None = None) -> Batch:
        """The next batch; empty if @timeout (s) passes or the daemon has gone
        (then `daemon_gone` is set, after everything queued was read)."""
        self._release_held()
        deadline = None if timeout is None else time.monotonic() + timeout
        spins = 0
        v = self._v
        while True:
            n = CR.cring_read(v.prod, v.slots, self._local, self._area, self._shift,
                              len(self._frame), self._next_seq, self.counts, self._frame,
                              self._off, self._len, self._seq, self._sub)
            if n:
                self._held = n
                j = int(self.counts[4])
                if j:
                    ts = int(self._area.view(np.uint64)[(int(self._frame[0]) >> 3) + 5])
                    return Batch(self, j, ts)
                self._release_held()
                continue
            if v.status[0] == CR.STATUS_CLOSED or self.daemon_gone:
                self.daemon_gone = True
                return Batch(self, 0, 0)
            if spins < self.spin:
                # peek the producer index (one load, not a kernel call, so a
                # spin costs ~0.1 us, not a dispatch) until something shows up;
                # cring_read does the acquire
                spins += 1
                prod, local = v.prod, self._local
                while spins < self.spin and int(prod[0]) == int(local[1]) & 0xFFFFFFFF:
                    spins += 1
                continue
            if timeout == 0:
                # a non-blocking check: arming would make the receive loop
                # signal our eventfd (a syscall) for a wait that never happens
                return Batch(self, 0, 0)
            if CR.cring_arm(v.waiting, v.prod, self._local):
                continue
            wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            events = self._poll.poll(int(wait * 1000))
            v.waiting[0] = 0
            for fd, ev in events:
                if fd == self._efd:
                    try:
                        os.eventfd_read(self._efd)
                    except BlockingIOError:
                        pass
                else:
                    self._on_event(fd, ev)
            if deadline is not None and time.monotonic() >= deadline:
                return Batch(self, 0, 0)

    def _on_event(self, fd: int, ev: int) -> None:
        pass

    def __iter__(self) -> Iterator[Batch]:
        while not self.daemon_gone:
            b = self.recv(timeout=0.5)
            if len(b):
                yield b

    def stats(self) -> dict[str, int]:
        """What this consumer saw: received, gaps (missed packets), bytes, plus
        the receive loop's view: delivered, dropped (for this consumer)."""
        st = {n: int(self.counts[i]) for i, n in enumerate(COUNT_NAMES)}
        st["delivered"], st["dropped"] = (int(x) for x in self._v.counters)
        return st

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Consumer(Reader):
    """An in-process consumer (Receiver.subscribe). Its recv() may run on any
    thread, including the receive thread between Receiver.pump() calls."""

    def __init__(self, rx, entry, batch_size: int, spin: int) -> None:
        self._rx = rx
        self.id = entry.ring.id
        views = CR.RingViews(entry.ring._ring, entry.ring._ctl, writable_ring=False)
        area = rx.umem.area.view()
        area.setflags(write=False)
        self._closed = False
        self._setup(views, area, rx.groups, entry.ring.efd, batch_size, spin,
                    rx.umem.frame_size)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release_held()
        self._rx.unsubscribe(self.id)
        self._v = self._area = self._mv = None


class Subscriber(Reader):
    """A consumer in another process: connects to `xdprx run`'s control
    socket, maps the UMEM read-only and its ring, and reads zero-copy."""

    def __init__(self, control: str, groups: Iterable[str | Group] | str | Group,
                 ring_size: int = 2048, quota: int | None = None, batch_size: int = 256,
                 spin: int = 64, name: str = "", timeout: float = 5.0) -> None:
        if isinstance(groups, (str, Group)):
            groups = [groups]
        want = [str(Group.parse(g) if isinstance(g, str) else g) for g in groups]
        if not want:
            raise ConfigError("no group to subscribe to", remedy="pass e.g. 239.1.2.3:5000")
        self._maps: list[mmap.mmap] = []
        self._closed = False
        self._sock = connect(control, timeout)
        efd = -1
        try:
            req = {"cmd": "subscribe", "groups": want, "ring": ring_size, "quota": quota,
                   "name": name}
            self._sock.sendall(json.dumps(req).encode() + b"\n")
            msg, fds, _flags, _addr = socket.recv_fds(self._sock, 65536, 4)
            try:
                reply = json.loads(msg or b"{}")
                if not reply.get("ok"):
                    raise refused(reply, "daemon refused the subscription")
                if len(fds) != 4:
                    raise XdprxError("daemon sent no shared memory", E.EPROTO)
                umem_fd, ring_fd, ctl_fd, efd = fds
                fds = [umem_fd, ring_fd, ctl_fd]
                umem = self._map(umem_fd, reply["umem_size"], mmap.PROT_READ)
                ring = self._map(ring_fd, CR.ring_bytes(reply["ring"]), mmap.PROT_READ)
                ctl = self._map(ctl_fd, CR.CTL_SIZE, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                for fd in fds:
                    os.close(fd)
            self.id = reply["consumer"]
            self.reply = reply
            self._setup(CR.RingViews(ring, ctl, writable_ring=False),
                        np.frombuffer(umem, np.uint8), [Group.parse(g) for g in reply["groups"]],
                        efd, batch_size, spin, reply["frame_size"])
            self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLHUP)
        except BaseException:
            if efd >= 0:
                os.close(efd)
            self._efd = -1
            self.close()
            raise

    def _map(self, fd: int, size: int, prot: int) -> mmap.mmap:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self._maps.append(m)
        return m

    def _on_event(self, fd: int, ev: int) -> None:
        # the daemon never writes after the reply: readable means EOF
        self.daemon_gone = True

    def close(self) -> None:
        """Unsubscribe (the daemon reclaims our frames) and unmap."""
        if self._closed:
            return
        self._closed = True
        self._held = 0
        self._sock.close()
        if getattr(self, "_efd", -1) >= 0:
            os.close(self._efd)
            self._efd = -1
        self._v = self._area = self._mv = None
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # the user still holds a view; it unmaps with it
        self._maps = []


def warm() -> None:
    """Compile the consumer kernels for read-only rings (cache_lock held)."""
    ro = lambda a: (a.setflags(write=False), a)[1]  # noqa: E731
    local = np.zeros(2, np.int64)
    with cache_lock():
        CR.cring_read(ro(np.zeros(1, np.uint32)), ro(np.zeros(4, np.uint64)), local,
                      ro(np.zeros(4096, np.uint8)), 11, 4, np.zeros(1, np.uint64),
                      np.zeros(5, np.int64), np.zeros(4, np.uint64), np.zeros(4, np.uint64),
                      np.zeros(4, np.uint32), np.zeros(4, np.uint64), np.zeros(4, np.int32))
        CR.cring_release(np.zeros(1, np.uint32), local, 0)
        CR.cring_arm(np.zeros(1, np.uint32), ro(np.zeros(1, np.uint32)), local)
