"""The UMEM: a memfd-backed frame area registered with AF_XDP, and its pool.

Frame ownership (the state machine every kernel and test relies on)::

    ABSENT ──grow (a chunk, up to the cap)──► FREE ──refill──► KERNEL
      ▲                                        ▲                 │ rx peek
      └──trim (a whole chunk FREE, quiet)──────┤                 ▼
                                               └──last ref──── HELD (refcount r)

    ABSENT  a spare frame above the committed size: no memory behind it.
    FREE    in the per-queue cache, the free stack or the spare stack;
            owned by xdprx; nobody reads it.
    KERNEL  submitted to the FILL ring; owned by the kernel (in FILL, in the
            driver, or written and waiting in the RX ring) until we peek it.
    HELD    peeked from RX (or a spare frame the packet was copied into, see
            below); owned by its r >= 1 holders: the application's Batch
            and/or the consumers whose rings hold a reference. r lives in the
            frame's headroom descriptor (fanout.py). The last reference
            dropped returns the frame to FREE.

Only the receive thread moves frames and writes reference counts, so none of
this needs atomics. Invariant, at every batch boundary (FramePool.census):
    free + fill + kernel + held == total <= cap
A transition from an unexpected state is a bug or a corrupt descriptor from
the ring: it is counted (``violations``) and the frame is not moved.

Two kinds of frames (why: XDP_UMEM_REG pins every page of the registered
area, so a UMEM registered at the cap would commit the cap at start-up):

    ring frames   [0, frames)       registered with the kernel, resident from
                                    the start; the only ones that go to FILL.
    spare frames  [frames, cap)     the same memfd, not registered: committed
                                    a chunk at a time when the pool grows.

When consumers hold so many ring frames that fewer than `spill_at` are left
for the FILL ring, each new packet is copied once into a spare frame and its
ring frame goes straight back to FILL (the seed's dynamic pool: grow under
pressure, up to a cap). At the cap nothing is copied any more: ring frames
stay held, the FILL ring runs dry and the kernel drops, counted by
XDP_STATISTICS and by ``at_cap``.

Bulk (seeds 002/003): frames enter and leave the pool in batches: the FILL
ring is topped up only when `refill_min` slots are free, with one release
store; RX, consumer releases and TX completions are reaped per batch. With
`cache` > 0, ring frames freed one by one go to a small LIFO cache first (the
hottest frames, reused first by the next refill); a full cache flushes its
older half to the free stack in one go. The free stack is already LIFO and
single-writer here, so the cache is off by default (measured, see README).
"""
from __future__ import annotations

import ctypes
import errno as E
import logging
import mmap
import os

import numpy as np

from . import native
from .errors import ConfigError, from_errno
from .jit import inline
from .ring import Ring

log = logging.getLogger("xdprx")

FREE, KERNEL, HELD, ABSENT = 0, 1, 2, 3
STATE_NAMES = ("free", "kernel", "held", "absent")

# pool meta slots (int64): counts, geometry, gauges
(P_TOP, P_SPARE, P_CACHE, P_CACHE_MAX, P_RING, P_TOTAL, P_CAP, P_CHUNK, P_HELD, P_HELD_RING,
 P_SPILL_AT, P_SHIFT, P_GROWS, P_SPILLED, P_AT_CAP, P_TRIMS) = range(16)
N_META = 16
CACHE_SIZE = 64     # a useful cache size (flushes 32 at a time); off by default:
                    # benchmarks/pool.py measured no gain with a single-writer pool
PAGE = 4096


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


def check_cap(frames: int, max_frames: int) -> None:
    if max_frames < frames or max_frames & (max_frames - 1):
        raise ConfigError(f"--max-frames {max_frames} must be a power of two >= --frames {frames}",
                          remedy=f"use e.g. --max-frames {max(frames, 1) * 4}")


# ---- pool kernels ----------------------------------------------------------
# @pool is the tuple (free, spare, cache, meta, state) of a FramePool.

@inline
def hold(pool, f):
    """KERNEL (or a fresh spare) -> HELD."""
    meta, state = pool[3], pool[4]
    state[f] = HELD
    meta[P_HELD] += 1
    if f < meta[P_RING]:
        meta[P_HELD_RING] += 1


@inline
def frame_put(pool, f):
    """HELD -> FREE: the last reference to frame @f is gone."""
    meta = pool[3]
    meta[P_HELD] -= 1
    if f < meta[P_RING]:
        meta[P_HELD_RING] -= 1
    to_free(pool, f)


@inline
def to_free(pool, f):
    """Frame @f becomes FREE. Ring frames go to the cache (a full one flushes
    its older half to the stack first), spare frames to the spare stack."""
    free, spare, cache, meta, state = pool
    state[f] = FREE
    a = np.uint64(f) << meta[P_SHIFT]
    if f >= meta[P_RING]:
        spare[meta[P_SPARE]] = a
        meta[P_SPARE] += 1
        return
    cmax = meta[P_CACHE_MAX]
    if cmax == 0:
        free[meta[P_TOP]] = a
        meta[P_TOP] += 1
        return
    n = meta[P_CACHE]
    if n == cmax:
        half = cmax >> 1
        t = meta[P_TOP]
        free[t:t + half] = cache[:half]
        cache[:cmax - half] = cache[half:cmax]
        meta[P_TOP] = t + half
        n = cmax - half
    cache[n] = a
    meta[P_CACHE] = n + 1


@inline
def fill_get(pool, ring, start, n):
    """Up to @n FREE ring frames into ring[start:] (wrapping; len(ring) is a
    power of two), now KERNEL: the cache's hottest first, then the stack.
    Returns how many."""
    free, spare, cache, meta, state = pool
    shift = meta[P_SHIFT]
    mask = ring.shape[0] - 1
    k = 0
    c = meta[P_CACHE]
    while k < n and c > 0:
        c -= 1
        a = cache[c]
        ring[(start + k) & mask] = a
        state[a >> shift] = KERNEL
        k += 1
    meta[P_CACHE] = c
    m = min(n - k, meta[P_TOP])
    base = meta[P_TOP] - m
    for i in range(m):
        a = free[base + i]
        ring[(start + k + i) & mask] = a
        state[a >> shift] = KERNEL
    meta[P_TOP] = base
    return k + m


@inline
def grow(pool, umem):
    """Commit the next chunk of spare frames, up to the cap, and touch its
    pages so the memory is resident now rather than at some later packet.
    Returns the frames added (0 at the cap)."""
    free, spare, cache, meta, state = pool
    t = meta[P_TOTAL]
    k = min(meta[P_CHUNK], meta[P_CAP] - t)
    if k <= 0:
        return 0
    shift = meta[P_SHIFT]
    s = meta[P_SPARE]
    for i in range(k):
        f = t + k - 1 - i          # the lowest frame ends on top: used first
        spare[s + i] = np.uint64(f) << shift
        state[f] = FREE
    for p in range(t << shift, (t + k) << shift, PAGE):
        umem[p] = 0
    meta[P_SPARE] = s + k
    meta[P_TOTAL] = t + k
    meta[P_GROWS] += 1
    return k


@inline
def spare_get(pool, umem):
    """A spare frame, HELD on return, growing the pool when none is free.
    Returns its address, or -1 at the cap."""
    free, spare, cache, meta, state = pool
    if meta[P_SPARE] == 0 and grow(pool, umem) == 0:
        meta[P_AT_CAP] += 1
        return np.int64(-1)
    s = meta[P_SPARE] - 1
    meta[P_SPARE] = s
    a = spare[s]
    hold(pool, np.int64(a >> meta[P_SHIFT]))
    return np.int64(a)


@inline
def short_of_ring_frames(pool):
    """Would the FILL ring run short if this ring frame stayed held?"""
    meta = pool[3]
    return meta[P_RING] - meta[P_HELD_RING] < meta[P_SPILL_AT]


class FramePool:
    """Frame accounting over a UMEM of @frames ring frames and up to @cap."""

    def __init__(self, frames: int, frame_size: int, cap: int | None = None,
                 chunk: int | None = None, cache: int | None = None,
                 spill_at: int | None = None) -> None:
        cap = frames if cap is None else cap
        cache = 0 if cache is None else cache
        check_cap(frames, cap)
        if cache < 0 or cache & 1 or cache > frames:
            raise ConfigError(f"cache size {cache} must be even and in 0..{frames}",
                              remedy=f"use {CACHE_SIZE}, or 0 for none")
        self.frames = frames
        self.cap = cap
        self.frame_size = frame_size
        self.shift = frame_size.bit_length() - 1
        # LIFO: the most recently freed (cache-hot) frame is reused first
        self.free = (np.arange(frames, dtype=np.uint64)[::-1] << np.uint64(self.shift)).copy()
        self.spare = np.zeros(max(cap - frames, 1), np.uint64)
        self.cache = np.zeros(max(cache, 1), np.uint64)
        self.meta = np.zeros(N_META, np.int64)
        self.state = np.full(cap, ABSENT, np.uint8)
        self.state[:frames] = FREE
        m = self.meta
        m[P_TOP], m[P_CACHE_MAX], m[P_RING], m[P_TOTAL], m[P_CAP] = frames, cache, frames, frames, cap
        chunk = min(chunk or max(frames // 4, 64), max(cap - frames, 1))
        if chunk & (chunk - 1):
            raise ConfigError(f"growth chunk {chunk} is not a power of two", remedy="use e.g. 512")
        m[P_CHUNK] = chunk
        m[P_SPILL_AT] = frames // 4 if spill_at is None else spill_at
        m[P_SHIFT] = self.shift
        self.t = (self.free, self.spare, self.cache, self.meta, self.state)

    @property
    def total(self) -> int:
        """Frames committed now (ring frames + grown spare frames)."""
        return int(self.meta[P_TOTAL])

    def census(self, fill: int = 0) -> dict[str, int]:
        """Frames per state; @fill (the FILL ring's occupancy) splits KERNEL."""
        counts = np.bincount(self.state, minlength=4)
        return {"free": int(counts[FREE]), "fill": fill, "kernel": int(counts[KERNEL]) - fill,
                "held": int(counts[HELD])}

    def gauges(self) -> dict[str, int]:
        m = self.meta
        return {"ring": int(m[P_RING]), "total": int(m[P_TOTAL]), "cap": int(m[P_CAP]),
                "chunk": int(m[P_CHUNK]), "cached": int(m[P_CACHE]), "spare_free": int(m[P_SPARE]),
                "held": int(m[P_HELD]), "held_ring": int(m[P_HELD_RING]),
                "grows": int(m[P_GROWS]), "trims": int(m[P_TRIMS]),
                "spilled": int(m[P_SPILLED]), "at_cap": int(m[P_AT_CAP])}

    def reclaim_kernel(self) -> None:
        """After the socket is closed: frames the kernel held are free again."""
        owned = np.flatnonzero(self.state == KERNEL)
        t = int(self.meta[P_TOP])
        self.free[t: t + len(owned)] = owned.astype(np.uint64) << np.uint64(self.shift)
        self.meta[P_TOP] = t + len(owned)
        self.state[owned] = FREE

    def trimmable(self) -> int:
        """Spare frames at the top, whole chunks, all FREE: what trim() gives back."""
        m = self.meta
        t, ring, chunk = int(m[P_TOTAL]), int(m[P_RING]), int(m[P_CHUNK])
        k = 0
        while t - k > ring:
            lo = max(ring, t - k - chunk)
            if (self.state[lo: t - k] != FREE).any():
                break
            k = t - lo
        return k

    def trim(self) -> tuple[int, int]:
        """Take the free top chunks out of the pool (-> ABSENT). Returns the
        frame range [lo, hi) whose memory the caller may now release."""
        k = self.trimmable()
        m = self.meta
        hi = int(m[P_TOTAL])
        lo = hi - k
        if k:
            s = int(m[P_SPARE])
            keep = self.spare[:s][(self.spare[:s] >> np.uint64(self.shift)) < np.uint64(lo)]
            self.spare[:len(keep)] = keep
            m[P_SPARE] = len(keep)
            self.state[lo:hi] = ABSENT
            m[P_TOTAL] = lo
            m[P_TRIMS] += 1
        return lo, hi

    def check(self, fill: int = 0) -> None:
        """Assert the invariants: stacks, cache and state array agree."""
        c = self.census(fill)
        m = self.meta
        assert c["free"] + c["fill"] + c["kernel"] + c["held"] == self.total <= self.cap, c
        assert (self.state[self.total:] == ABSENT).all()
        sh = np.uint64(self.shift)
        lists = (self.free[: int(m[P_TOP])], self.cache[: int(m[P_CACHE])],
                 self.spare[: int(m[P_SPARE])])
        frames = np.concatenate(lists) >> sh
        assert c["free"] == len(frames), (c, [len(x) for x in lists])
        assert len(np.unique(frames)) == len(frames), "a frame is twice in the free lists"
        assert (self.state[frames.astype(np.int64)] == FREE).all()
        assert ((lists[0] >> sh) < np.uint64(self.frames)).all(), "a spare frame in the ring stack"
        assert ((lists[2] >> sh) >= np.uint64(self.frames)).all(), "a ring frame in the spare stack"
        assert m[P_HELD] == c["held"], (int(m[P_HELD]), c)
        assert m[P_HELD_RING] == int((self.state[: self.frames] == HELD).sum())


# ---- memory ------------------------------------------------------------------
HUGE = 2 << 20
MFD_HUGE_2MB = 21 << 26


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _shmem_thp() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


class Umem:
    """A memfd-backed UMEM registered with AF_XDP through libxdp.

    The memfd is sized for @max_frames but only the first @frames (the ring
    frames) are registered, so only they are pinned; the rest is committed by
    the pool as it grows (see the module docstring). Other processes map the
    same memfd read-only.

    @hugepages: "auto" uses hugetlb pages when enough are free (else 4 KiB
    pages, with THP advice where shmem THP is enabled, and says why in
    `pages`), "on" insists, "off" never tries.
    """

    def __init__(self, frames: int = 4096, frame_size: int = 2048, headroom: int = 0,
                 fill_size: int = 0, comp_size: int = 64, max_frames: int | None = None,
                 hugepages: str = "auto", cache: int | None = None, chunk: int | None = None,
                 spill_at: int | None = None) -> None:
        check_frames(frames, frame_size, headroom)
        max_frames = frames if max_frames is None else max_frames
        check_cap(frames, max_frames)
        if hugepages not in ("auto", "on", "off"):
            raise ConfigError(f"unknown hugepages setting {hugepages!r}", remedy="use auto, on or off")
        self.frames = frames
        self.max_frames = max_frames
        self.frame_size = frame_size
        self.headroom = headroom
        self.size = max_frames * frame_size        # what the memfd and the mapping span
        self.registered = frames * frame_size      # what the kernel pins
        self._handle = ctypes.c_void_p()
        self.memfd = -1
        self._map = None
        self.area = None
        try:
            self._allocate(hugepages)
            self.fill_x = native.XskRing()
            self.comp_x = native.XskRing()
            if not fill_size:
                fill_size = min(frames, 4096)
            cfg = native.XskUmemConfig(fill_size=fill_size, comp_size=comp_size,
                                       frame_size=frame_size, frame_headroom=headroom, flags=0)
            err = native.libxdp.xsk_umem__create(
                ctypes.byref(self._handle), ctypes.c_void_p(self.area.ctypes.data),
                self.registered, ctypes.byref(self.fill_x), ctypes.byref(self.comp_x),
                ctypes.byref(cfg))
            if err:
                raise from_errno(f"registering a {self.registered >> 20} MiB UMEM (xsk_umem__create)",
                                 err, "" if abs(err) != E.ENOMEM else
                                 "raise the locked-memory limit (ulimit -l unlimited) or use fewer --frames")
        except BaseException:
            self._release_memory()
            raise
        self.fill = Ring(self.fill_x, desc=False)
        self.comp = Ring(self.comp_x, desc=False)
        self.pool = FramePool(frames, frame_size, max_frames, chunk, cache, spill_at)

    def _allocate(self, hugepages: str) -> None:
        """memfd + mapping of the whole cap; sets `pages` to what was used."""
        flags = native.MFD_CLOEXEC | native.MFD_ALLOW_SEALING
        need = -(-self.size // HUGE)
        free_huge = _meminfo("HugePages_Free") - _meminfo("HugePages_Rsvd")
        aligned = self.registered % HUGE == 0
        why = ""
        if hugepages != "off":
            if not aligned:
                why = f"the ring frames ({self.registered >> 10} KiB) are not a multiple of 2 MiB"
            elif free_huge < need:
                why = (f"{max(free_huge, 0)} hugetlb pages free, {need} needed "
                       f"(sysctl vm.nr_hugepages={_meminfo('HugePages_Total') + need - max(free_huge, 0)})")
            else:
                fd = native.libc.memfd_create(b"xdprx-umem", flags | native.MFD_HUGETLB | MFD_HUGE_2MB)
                if fd >= 0:
                    try:
                        os.ftruncate(fd, need * HUGE)
                        # MAP_SHARED reserves every huge page now: never SIGBUS later
                        self._map = mmap.mmap(fd, need * HUGE, mmap.MAP_SHARED,
                                              mmap.PROT_READ | mmap.PROT_WRITE)
                        self.memfd, self.hugetlb = fd, True
                        self.pages = "hugetlb 2 MiB (reserved for the cap, allocated as used)"
                    except OSError as e:
                        os.close(fd)
                        why = f"hugetlb mapping failed: {e.strerror}"
                else:
                    why = f"memfd_create(MFD_HUGETLB): {os.strerror(native.errno())}"
            if why and hugepages == "on":
                raise ConfigError(f"hugepages requested but not usable: {why}", E.ENOMEM,
                                  "reserve hugetlb pages (sysctl vm.nr_hugepages=N) or use hugepages=off")
        if self.memfd < 0:
            self.hugetlb = False
            self.memfd = native.libc.memfd_create(b"xdprx-umem", flags)
            if self.memfd < 0:
                raise from_errno("memfd_create for the UMEM", native.errno())
            os.ftruncate(self.memfd, self.size)
            self._map = mmap.mmap(self.memfd, self.size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            thp = _shmem_thp()
            if thp in ("advise", "always", "within_size"):
                self._map.madvise(mmap.MADV_HUGEPAGE)
                self.pages = f"4 KiB, THP advised (shmem_enabled={thp})"
            else:
                self.pages = f"4 KiB (shmem THP {thp})"
            if hugepages == "auto" and why:
                self.pages += f"; no hugetlb: {why}"
                log.info("xdprx: UMEM on %s", self.pages)
        self.area = np.frombuffer(self._map, dtype=np.uint8)[: self.size]

    @property
    def handle(self) -> ctypes.c_void_p:
        return self._handle

    def resident(self) -> int:
        """Bytes of UMEM memory committed now (the memfd's allocated pages)."""
        return os.fstat(self.memfd).st_blocks * 512

    def census(self) -> dict[str, int]:
        return self.pool.census(self.fill.occupancy() if self.fill is not None else 0)

    def trim(self) -> int:
        """Give the pool's free top chunks back to the system. Returns bytes."""
        if self.hugetlb:
            return 0   # reserved pages: nothing to give back
        lo, hi = self.pool.trim()
        if hi > lo:
            fs = self.frame_size
            self._map.madvise(mmap.MADV_REMOVE, lo * fs, (hi - lo) * fs)
        return (hi - lo) * self.frame_size

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
