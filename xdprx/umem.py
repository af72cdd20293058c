"""The UMEM: a memfd-backed frame area registered with AF_XDP, and its pool.

Frame ownership (the state machine every kernel and test relies on)::

      FREE ──refill (bulk.py)──► KERNEL ──rx peek (bulk.py)──► HELD (refcount r)
        ▲                                                        │
        └──── last reference dropped (bulk.unref, in bulk) ◄─────┘

    FREE    in the pool's free stack; owned by xdprx; nobody reads it.
    KERNEL  submitted to the FILL ring; owned by the kernel (in FILL, in the
            driver, or written and waiting in the RX ring) until we peek it.
    HELD    peeked from RX; owned by its r >= 1 holders: the application's
            Batch and/or the consumers whose rings hold a reference. r lives
            in the frame's headroom descriptor (fanout.py). References go
            when the Batch is released, when the reap step sees a consumer's
            release cursor pass them, or when a departed consumer is
            reclaimed; the last one returns the frame to FREE.

Only the receive thread moves frames and writes reference counts, so the
state array, the counts and the free stack need no atomics. Invariant, at
every batch boundary:
    free + kernel + held == total        (checked by FramePool.census)
A transition from an unexpected state is a bug or a corrupt descriptor from
the ring: it is counted (``violations``) and the frame is not moved.
"""
from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

from . import native
from .errors import ConfigError, from_errno
from .jit import inline
from .ring import Ring

FREE, KERNEL, HELD = 0, 1, 2
STATE_NAMES = ("free", "kernel", "held")


def check_frames(frames: int, frame_size: int, headroom: int) -> None:
    """Validate the UMEM geometry; ConfigError names the fix."""
    if frames <= 0 or frames & (frames - 1):
        raise ConfigError(f"frame count {frames} is not a power of two",
                          remedy="use e.g. --frames 4096")
    if frame_size not in (2048, 4096):
        raise ConfigError(f"frame size {frame_size} is not supported",
                          remedy="use 2048 or 4096")
    if headroom < 0 or headroom > frame_size - native.XDP_PACKET_HEADROOM - 1518:
        raise ConfigError(f"headroom {headroom} leaves no room for a 1518-byte frame",
                          remedy=f"use a headroom <= {frame_size - 256 - 1518}")


# ---- pool kernels ----------------------------------------------------------
@inline
def pool_get(free, top, state, ring, start, n, new_state, shift):
    """Pop up to @n frames into ring[start:] (wrapping; len(ring) is a power
    of two); they enter @new_state. Returns how many."""
    k = min(n, top[0])
    base = top[0] - k
    mask = ring.shape[0] - 1
    for i in range(k):
        a = free[base + i]
        ring[(start + i) & mask] = a
        state[a >> shift] = new_state
    top[0] = base
    return k


@inline
def pool_put(free, top, state, addrs, n, shift):
    """Push @n HELD frames back (bulk). Returns the number refused (not HELD)."""
    bad = 0
    t = top[0]
    for i in range(n):
        a = addrs[i]
        f = a >> shift
        if state[f] != HELD:
            bad += 1
            continue
        state[f] = FREE
        free[t] = (f << shift)
        t += 1
    top[0] = t
    return bad


class FramePool:
    """Free-frame stack over a UMEM: bulk get/put with per-frame state."""

    def __init__(self, frames: int, frame_size: int) -> None:
        self.total = frames
        self.frame_size = frame_size
        self.shift = frame_size.bit_length() - 1
        # LIFO: the most recently freed (cache-hot) frame is reused first
        self.free = (np.arange(frames, dtype=np.uint64)[::-1] << np.uint64(self.shift)).copy()
        self.top = np.array([frames], np.int64)
        self.state = np.zeros(frames, np.uint8)

    def census(self) -> dict[str, int]:
        """Frames per state, from the state array."""
        counts = np.bincount(self.state, minlength=3)
        return {name: int(counts[i]) for i, name in enumerate(STATE_NAMES)}

    def reclaim_kernel(self) -> None:
        """After the socket is closed: frames the kernel held are free again."""
        owned = np.flatnonzero(self.state == KERNEL)
        t = int(self.top[0])
        self.free[t: t + len(owned)] = owned.astype(np.uint64) << np.uint64(self.shift)
        self.top[0] = t + len(owned)
        self.state[owned] = FREE

    def check(self) -> None:
        """Assert the invariants: the free stack and the state array agree."""
        c = self.census()
        assert c["free"] + c["kernel"] + c["held"] == self.total, c
        assert c["free"] == int(self.top[0]), (c, int(self.top[0]))
        stack = self.free[: int(self.top[0])] >> np.uint64(self.shift)
        assert len(np.unique(stack)) == len(stack), "a frame is twice in the free stack"
        assert (self.state[stack.astype(np.int64)] == FREE).all()


class Umem:
    """A memfd-backed UMEM registered with AF_XDP through libxdp.

    The memfd lets other processes map the very same frames (read-only) later.
    """

    def __init__(self, frames: int = 4096, frame_size: int = 2048, headroom: int = 0,
                 fill_size: int = 0, comp_size: int = 64) -> None:
        check_frames(frames, frame_size, headroom)
        self.frames = frames
        self.frame_size = frame_size
        self.headroom = headroom
        self.size = frames * frame_size
        self._handle = ctypes.c_void_p()
        self.memfd = native.libc.memfd_create(b"xdprx-umem",
                                              native.MFD_CLOEXEC | native.MFD_ALLOW_SEALING)
        if self.memfd < 0:
            raise from_errno("memfd_create for the UMEM", native.errno())
        try:
            os.ftruncate(self.memfd, self.size)
            self._map = mmap.mmap(self.memfd, self.size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            self.area = np.frombuffer(self._map, dtype=np.uint8)
            self.fill_x = native.XskRing()
            self.comp_x = native.XskRing()
            if not fill_size:
                fill_size = min(frames, 4096)
            cfg = native.XskUmemConfig(fill_size=fill_size, comp_size=comp_size,
                                       frame_size=frame_size, frame_headroom=headroom, flags=0)
            err = native.libxdp.xsk_umem__create(
                ctypes.byref(self._handle), ctypes.c_void_p(self.area.ctypes.data),
                self.size, ctypes.byref(self.fill_x), ctypes.byref(self.comp_x),
                ctypes.byref(cfg))
            if err:
                raise from_errno(f"registering a {self.size >> 20} MiB UMEM (xsk_umem__create)",
                                 err, "" if abs(err) != 12 else
                                 "raise the locked-memory limit (ulimit -l unlimited) or use fewer --frames")
        except BaseException:
            self._release_memory()
            raise
        self.fill = Ring(self.fill_x, desc=False)
        self.comp = Ring(self.comp_x, desc=False)
        self.pool = FramePool(frames, frame_size)

    @property
    def handle(self) -> ctypes.c_void_p:
        return self._handle

    def close(self) -> None:
        """Unregister and unmap. Sockets on this UMEM must be closed first."""
        if self._handle:
            self.fill = self.comp = None
            native.libxdp.xsk_umem__delete(self._handle)
            self._handle = ctypes.c_void_p()
        self._release_memory()

    def _release_memory(self) -> None:
        area = getattr(self, "area", None)
        self.area = None
        del area
        m = getattr(self, "_map", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # a user still holds a view: the mapping lives until it is dropped
            self._map = None
        if getattr(self, "memfd", -1) >= 0:
            os.close(self.memfd)
            self.memfd = -1
