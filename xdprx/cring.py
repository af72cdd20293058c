"""Consumer rings: one single-producer/single-consumer queue of frame
references per consumer, in shared memory another process can map.

Each consumer owns two small memfds, split by who may write them:

    RING (the receive loop writes; the consumer maps it read-only)
        0     magic u32 'XRCR', version u32, size u32, quota u32, frame_size u32, id u32
        64    prod u32        producer index (release-stored once per batch)
        128   delivered u64, dropped u64, drop_end u64   this consumer's
              counters, per batch (drop_end: 1 + the last dropped seq, 0: none)
        192   status u32      0 live, 1 closed by the daemon
        4096  slots u64[size] frame base addresses (the descriptor is at the base)
    CTL (the consumer writes; the receive loop only reads, and validates)
        0     cons u32        release cursor: every slot before it is let go
        64    waiting u32     0 awake; else the number of the sleep on its eventfd
        68    sleeps u32      the consumer's sleep counter (waiting's next value)
        72    group u32       the sleep set it sleeps in (0: alone): every ring of
                              one process announcing the same group sleeps in one
                              epoll set, so one eventfd write wakes them all
        128   cpu u32, node u32, bytes u64, packets u64   feedback (NUMA policy)

The ring memfd is sealed against new writable mappings (F_SEAL_FUTURE_WRITE)
and against resizing, and handed out re-opened O_RDONLY: a consumer can
corrupt neither the frame references the receive loop reaps from nor, by
truncating a file, make the receive loop fault. The only value the receive
loop takes from a consumer is `cons`, and it is checked against what was
delivered before it is believed.

Frames between the consumer's `cons` and the producer's `prod` are held by
that consumer; their reference counts (in the descriptor) include it.
"""
from __future__ import annotations

import fcntl
import mmap
import os

import numpy as np

from . import fanout as F
from .atomics import fence_seq_cst, load_acquire, store_release, store_relaxed
from .jit import inline, kernel, prefetch
from .ring import U32, cons_peek, cons_release

RING_MAGIC = 0x52435258  # 'XRCR'
RING_VERSION = 1
OFF_PROD, OFF_COUNTERS, OFF_STATUS, OFF_SLOTS = 64, 128, 192, 4096
CTL_CONS, CTL_WAITING, CTL_SLEEPS, CTL_GROUP, CTL_FEEDBACK = 0, 64, 68, 72, 128
CTL_SIZE = 4096
STATUS_CLOSED = 1

F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_FUTURE_WRITE = 0x1, 0x2, 0x4, 0x10
F_ADD_SEALS = 1033
NO_SEQ = np.uint64(0xFFFFFFFFFFFFFFFF)
NO_CPU = 0xFFFFFFFF          # feedback cpu/node not reported yet


def ring_bytes(size: int) -> int:
    return OFF_SLOTS + size * 8


def _memfd(name: str, size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd, m


def reopen_readonly(fd: int) -> int:
    """A new O_RDONLY file description of @fd: mmap(PROT_WRITE) on it fails."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


class RingViews:
    """numpy views of one consumer's RING and CTL mappings (either side)."""

    def __init__(self, ring_buf, ctl_buf, writable_ring: bool) -> None:
        r = np.frombuffer(ring_buf, np.uint8)
        if not writable_ring and r.flags.writeable:
            r = r.view()
            r.setflags(write=False)
        c = np.frombuffer(ctl_buf, np.uint8)
        self.header = r[:64].view(np.uint32)
        self.size = int(self.header[2])
        self.quota = int(self.header[3])
        self.prod = r[OFF_PROD:OFF_PROD + 4].view(np.uint32)
        self.counters = r[OFF_COUNTERS:OFF_COUNTERS + 24].view(np.uint64)
        self.status = r[OFF_STATUS:OFF_STATUS + 4].view(np.uint32)
        self.slots = r[OFF_SLOTS:OFF_SLOTS + self.size * 8].view(np.uint64)
        self.cons = c[CTL_CONS:CTL_CONS + 4].view(np.uint32)
        self.waiting = c[CTL_WAITING:CTL_GROUP + 4].view(np.uint32)   # [waiting, sleeps, group]
        self.feedback = c[CTL_FEEDBACK:CTL_FEEDBACK + 24]
        self.ring_addr = r.ctypes.data
        self.ctl_addr = c.ctypes.data


class ConsumerRing:
    """The receive loop's side of one consumer: memfds, mappings, eventfd."""

    def __init__(self, cid: int, size: int, quota: int, frame_size: int) -> None:
        self.id = cid
        self.ring_fd, self._ring = _memfd(f"xdprx-ring-{cid}", ring_bytes(size))
        try:
            self.ctl_fd, self._ctl = _memfd(f"xdprx-ctl-{cid}", CTL_SIZE)
            hdr = np.frombuffer(self._ring, np.uint32, 6)
            hdr[:] = (RING_MAGIC, RING_VERSION, size, quota, frame_size, cid)
            del hdr
            fcntl.fcntl(self.ring_fd, F_ADD_SEALS,
                        F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
            fcntl.fcntl(self.ctl_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
            self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            self.close()
            raise
        self.views = RingViews(self._ring, self._ctl, writable_ring=True)
        self.views.feedback[:8].view(np.uint32)[:] = NO_CPU   # until the consumer reports

    def reader_fds(self) -> list[int]:
        """Fresh descriptors for a consumer in another process: ring (read-only),
        ctl, eventfd. The caller sends and then closes them."""
        return [reopen_readonly(self.ring_fd), os.dup(self.ctl_fd), os.dup(self.efd)]

    def wake(self) -> None:
        try:
            os.eventfd_write(self.efd, 1)
        except BlockingIOError:
            pass  # counter saturated: the consumer is awake anyway

    def mark_closed(self) -> None:
        self.views.status[0] = STATUS_CLOSED
        self.wake()

    def close(self) -> None:
        self.views = None
        for name in ("_ring", "_ctl"):
            m = getattr(self, name, None)
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass  # a view is still alive; the mapping goes with it
                setattr(self, name, None)
        for name in ("ring_fd", "ctl_fd", "efd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


# ---- the consumer's read kernels --------------------------------------------
PF_DESC = 4     # descriptors prefetched this many entries ahead


@inline
def read_batch(prod, slots, local, umem, shift, max_n, next_seq, counts,
               out_frame, out_off, out_len, out_seq, out_sub):
    """Read up to @max_n frame references from the ring into out_*, without
    releasing them. counts: [received, gaps, bytes, bad, last batch]; a gap is
    a jump in a subscription's sequence numbers (packets this consumer missed).
    Returns how many ring entries were read (release exactly that many);
    counts[4] says how many of them are in out_*."""
    # acquire pairs with the producer's release: slots and descriptors are visible
    n = cons_peek(prod, local, max_n)
    counts[4] = 0
    if n == 0:
        return 0
    mask = slots.shape[0] - 1
    u32 = umem.view(np.uint32)
    u64 = umem.view(np.uint64)
    nframes = umem.shape[0] >> shift
    # the descriptors were written on the receive loop's CPU: ask for them a
    # few entries ahead (a hint: a bad slot cannot fault)
    for i in range(min(n, PF_DESC)):
        prefetch(umem, slots[(local[1] + i) & mask], 0)
    j = 0
    nbytes = 0
    for i in range(n):
        if i + PF_DESC < n:
            prefetch(umem, slots[(local[1] + i + PF_DESC) & mask], 0)
        base = slots[(local[1] + i) & mask]
        if np.int64(base >> shift) >= nframes:   # (uint64 vs int64 would compare as floats)
            counts[3] += 1  # cannot happen with an honest producer; never read it
            continue
        w = base >> 2
        if (u32[w + F.W_HEAD] & 0xFFFF) != F.DESC_MAGIC:
            counts[3] += 1
            continue
        sub = u32[w + F.W_SUB]
        seq = u64[(base >> 3) + F.Q_SEQ]
        if sub < next_seq.shape[0]:
            exp = next_seq[sub]
            if exp != NO_SEQ and seq > exp:
                counts[1] += seq - exp
            next_seq[sub] = seq + 1
        out_frame[j] = base
        off = base + u32[w + F.W_PAYLOAD_OFF]
        out_off[j] = off
        prefetch(umem, off, 0)      # the handler reads it once the batch is out
        ln = u32[w + F.W_PAYLOAD_LEN]
        out_len[j] = ln
        out_seq[j] = seq
        out_sub[j] = sub
        nbytes += ln
        j += 1
    counts[0] += j
    counts[2] += nbytes
    counts[4] = j
    return n


@kernel
def cring_read(prod, slots, local, umem, shift, max_n, next_seq, counts,
               out_frame, out_off, out_len, out_seq, out_sub):
    """read_batch as a kernel of its own (the stress test's consumer)."""
    return read_batch(prod, slots, local, umem, shift, max_n, next_seq, counts,
                      out_frame, out_off, out_len, out_seq, out_sub)


@kernel
def cring_release(cons, local, n):
    """Let go of the next @n entries (ring.cons_release)."""
    cons_release(cons, local, n)


@inline
def announce(waiting, group):
    """arm()'s first half: waiting[0] = this sleep's number (from the counter
    in waiting[1]); waiting[2] = @group, the sleep set's token, published with
    it. A fence must follow before look()."""
    k = waiting[1] + np.uint32(1)
    if k == 0:
        k = np.uint32(1)
    waiting[1] = k
    store_relaxed(waiting[2:], group)
    store_release(waiting, k)


@inline
def look(prod, local):
    """arm()'s second half, after the fence: entries available (0: sleep)."""
    local[0] = load_acquire(prod)
    return (local[0] - local[1]) & U32


@inline
def arm(waiting, prod, local, group):
    """Before sleeping: announce it, then look once more. The fence orders our
    `waiting` store before the prod load; the receive loop does the mirror
    image (prod store, fence, waiting load), so one of the two sides sees the
    other and no wake-up is lost. Both `waiting` accesses are atomic
    so that the fences order them in the memory model, not by accident.
    Returns entries available (0: go to sleep)."""
    announce(waiting, group)
    fence_seq_cst()
    avail = look(prod, local)
    if avail:
        store_relaxed(waiting, 0)
    return avail
