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
            pool's `refs` array, indexed like `state` (the headroom
            descriptor's refcnt keeps the count taken at delivery, for
            tools). The last reference dropped returns the frame to FREE.

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

Per-NUMA node pools (seed 001): with NUMA on, the UMEM holds one pool per
node, each with its own ring frames, spare frames, stacks and counters, its
memory mbind()-ed to the node (FramePool documents the layout). The state
machine above holds per node pool; a frame's pool follows from its index,
so a frame always returns to its own pool, also after the refill node
changed (numa.Policy decides, the receive loop switches with set_active).
Only the active pool refills FILL, grows and takes copies.

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

from .kernel import native
from . import numa
from .errors import ConfigError, from_errno
from .jit import inline
from .ring import Ring

log = logging.getLogger("xdprx")

FREE, KERNEL, HELD, ABSENT = 0, 1, 2, 3
STATE_NAMES = ("free", "kernel", "held", "absent")

# node pool meta slots (int64, one row per node pool): counts, geometry, gauges
(P_TOP, P_SPARE, P_CACHE, P_CACHE_MAX, P_RING, P_TOTAL, P_CAP, P_CHUNK, P_HELD, P_HELD_RING,
 P_SPILL_AT, P_SHIFT, P_GROWS, P_SPILLED, P_AT_CAP, P_TRIMS, P_RING_LO, P_SPARE_LO,
 P_NODE) = range(19)
N_META = 24
# pool-set slots (int64): which node pool refills FILL, and the layout
(X_ACTIVE, X_NODES, X_RING, X_SHIFT, X_FOREIGN, X_CACHE_W, X_SPARE_W, X_RING_SHIFT,
 X_CAP_SHIFT, X_RING_LO, X_SPARE_LO, X_RING_END) = range(12)
N_X = 12
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


# ---- node pool kernels ---------------------------------------------------------
# @np_ is one node's pool: the tuple (free, spare, cache, meta, state) with
# meta that node's row; state spans every frame of every node.

@inline
def _is_ring(meta, f):
    return f < meta[P_RING_LO] + meta[P_RING]


@inline
def _hold(np_, f):
    """KERNEL (or a fresh spare) -> HELD."""
    meta, state = np_[3], np_[4]
    state[f] = HELD
    meta[P_HELD] += 1
    if _is_ring(meta, f):
        meta[P_HELD_RING] += 1


@inline
def _to_free(np_, f):
    """Frame @f becomes FREE. Ring frames go to the cache (a full one flushes
    its older half to the stack first), spare frames to the spare stack."""
    free, spare, cache, meta, state = np_
    state[f] = FREE
    a = np.uint64(f) << meta[P_SHIFT]
    if not _is_ring(meta, f):
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
        for i in range(half):           # loops, not slice copies: no allocation
            free[t + i] = cache[i]
        for i in range(cmax - half):
            cache[i] = cache[half + i]
        meta[P_TOP] = t + half
        n = cmax - half
    cache[n] = a
    meta[P_CACHE] = n + 1


@inline
def _put(np_, f):
    """HELD -> FREE: the last reference to frame @f is gone."""
    meta = np_[3]
    meta[P_HELD] -= 1
    if _is_ring(meta, f):
        meta[P_HELD_RING] -= 1
    _to_free(np_, f)


@inline
def _fill_get(np_, ring, start, n):
    """Up to @n FREE ring frames into ring[start:] (wrapping; len(ring) is a
    power of two), now KERNEL: the cache's hottest first, then the stack."""
    free, spare, cache, meta, state = np_
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
def _grow(np_, umem):
    """Commit the node's next chunk of spare frames, up to its cap, and touch
    their pages so the memory is resident (on the node's memory) now rather
    than at some later packet. Returns the frames added (0 at the cap)."""
    free, spare, cache, meta, state = np_
    t = meta[P_TOTAL]
    k = min(meta[P_CHUNK], meta[P_CAP] - t)
    if k <= 0:
        return 0
    shift = meta[P_SHIFT]
    s = meta[P_SPARE]
    lo = meta[P_SPARE_LO] + t - meta[P_RING]    # the first frame of the new chunk
    for i in range(k):
        f = lo + k - 1 - i          # the lowest frame ends on top: used first
        spare[s + i] = np.uint64(f) << shift
        state[f] = FREE
    for p in range(lo << shift, (lo + k) << shift, PAGE):
        umem[p] = 0
    meta[P_SPARE] = s + k
    meta[P_TOTAL] = t + k
    meta[P_GROWS] += 1
    return k


@inline
def _spare_get(np_, umem):
    """A spare frame, HELD on return, growing the node pool when none is free.
    Returns its address, or -1 at the cap."""
    free, spare, cache, meta, state = np_
    if meta[P_SPARE] == 0 and _grow(np_, umem) == 0:
        meta[P_AT_CAP] += 1
        return np.int64(-1)
    s = meta[P_SPARE] - 1
    meta[P_SPARE] = s
    a = spare[s]
    _hold(np_, np.int64(a >> meta[P_SHIFT]))
    return np.int64(a)


# ---- pool-set kernels: what the receive loop, the sender and tests call -------
# @pool is FramePool.t: (free, spare, cache, meta, state, x, refs), one row of the
# 2-D arrays per node pool. A frame's node pool follows from its index (the
# layout is in FramePool), so a frame always returns to the pool it came from.

@inline
def node_pool(pool, k):
    return (pool[0][k], pool[1][k], pool[2][k], pool[3][k], pool[4])


@inline
def node_of(pool, f):
    """The node pool frame @f belongs to: ring frames first, node by node,
    then spare frames, node by node, a cap apart (powers of two); a queue's
    pools start at X_RING_LO / X_SPARE_LO (FramePool's layout)."""
    x = pool[5]
    if x[X_NODES] == 1:
        return 0
    if f < x[X_RING_END]:
        return (f - x[X_RING_LO]) >> x[X_RING_SHIFT]   # shifts, not divisions: per packet
    return (f - x[X_SPARE_LO]) >> x[X_CAP_SHIFT]


@inline
def active_meta(pool):
    """The meta row of the node pool that refills FILL now."""
    return pool[3][pool[5][X_ACTIVE]]


@inline
def ring_end(pool):
    """Frames below this index are ring frames (registered, may go to FILL)."""
    return pool[5][X_RING_END]


@inline
def hold(pool, f):
    _hold(node_pool(pool, node_of(pool, f)), f)


@inline
def frame_put(pool, f):
    _put(node_pool(pool, node_of(pool, f)), f)


@inline
def to_free(pool, f):
    _to_free(node_pool(pool, node_of(pool, f)), f)


@inline
def fill_get(pool, ring, start, n):
    """Up to @n frames for the FILL (or TX) ring from the active node's pool.
    Returns how many."""
    return _fill_get(node_pool(pool, pool[5][X_ACTIVE]), ring, start, n)


@inline
def fill_get_foreign(pool, ring, start, n):
    """Up to @n frames from the other nodes' pools, for when the active one
    has none left and the FILL ring runs low (a remote frame beats a drop;
    counted)."""
    x = pool[5]
    a = x[X_ACTIVE]
    k = 0
    for j in range(x[X_NODES]):
        if j != a and k < n:
            k += _fill_get(node_pool(pool, j), ring, start + k, n - k)
    x[X_FOREIGN] += k
    return k


@inline
def grow(pool, umem):
    return _grow(node_pool(pool, pool[5][X_ACTIVE]), umem)


@inline
def spare_get(pool, umem):
    return _spare_get(node_pool(pool, pool[5][X_ACTIVE]), umem)


@inline
def short_of_ring_frames(pool, f):
    """Would the FILL ring run short if ring frame @f stayed held? Only the
    active node's frames refill FILL, so only they are worth copying out."""
    meta = active_meta(pool)
    return (meta[P_RING] - meta[P_HELD_RING] < meta[P_SPILL_AT]
            and f >= meta[P_RING_LO] and _is_ring(meta, f))


class NodePool:
    """Accounting of one node's frames (views into the FramePool's arrays).

    Its frames: ring frames [ring_lo, ring_lo + ring) and spare frames
    [spare_lo, spare_lo + cap - ring), of which the first total - ring are
    committed."""

    def __init__(self, pool: "FramePool", k: int) -> None:
        self.k = k
        self.free, self.spare, self.cache = pool.free[k], pool.spare[k], pool.cache[k]
        self.meta, self.state, self.frames = pool.meta[k], pool.state, pool.frames
        self.shift = pool.shift
        self.node = int(self.meta[P_NODE])
        self.ring_lo = int(self.meta[P_RING_LO])
        self.spare_lo = int(self.meta[P_SPARE_LO])
        self.cap = int(self.meta[P_CAP])

    @property
    def total(self) -> int:
        return int(self.meta[P_TOTAL])

    def states(self) -> np.ndarray:
        """The state of each of this node's frames (ring, then spare up to the cap)."""
        return np.concatenate([self.state[self.ring_lo: self.ring_lo + self.frames],
                               self.state[self.spare_lo: self.spare_lo + self.cap - self.frames]])

    def census(self) -> dict[str, int]:
        """Frames per state (KERNEL includes those in the FILL ring)."""
        counts = np.bincount(self.states(), minlength=4)
        return {"free": int(counts[FREE]), "kernel": int(counts[KERNEL]),
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
        ring = self.state[self.ring_lo: self.ring_lo + self.frames]
        owned = np.flatnonzero(ring == KERNEL) + self.ring_lo
        t = int(self.meta[P_TOP])
        self.free[t: t + len(owned)] = owned.astype(np.uint64) << np.uint64(self.shift)
        self.meta[P_TOP] = t + len(owned)
        self.state[owned] = FREE

    def trimmable(self) -> int:
        """Spare frames at the top, whole chunks, all FREE: what trim() gives back."""
        m = self.meta
        grown, chunk = int(m[P_TOTAL]) - self.frames, int(m[P_CHUNK])
        k = 0
        while grown - k > 0:
            lo = max(0, grown - k - chunk)
            if (self.state[self.spare_lo + lo: self.spare_lo + grown - k] != FREE).any():
                break
            k = grown - lo
        return k

    def trim(self) -> tuple[int, int]:
        """Take the free top chunks out of the pool (-> ABSENT). Returns the
        frame range [lo, hi) whose memory the caller may now release."""
        k = self.trimmable()
        m = self.meta
        hi = self.spare_lo + int(m[P_TOTAL]) - self.frames
        lo = hi - k
        if k:
            s = int(m[P_SPARE])
            keep = self.spare[:s][(self.spare[:s] >> np.uint64(self.shift)) < np.uint64(lo)]
            self.spare[:len(keep)] = keep
            m[P_SPARE] = len(keep)
            self.state[lo:hi] = ABSENT
            m[P_TOTAL] -= k
            m[P_TRIMS] += 1
        return lo, hi

    def check(self) -> None:
        """Assert this pool's invariants: stacks, cache and states agree."""
        c = self.census()
        m = self.meta
        assert c["free"] + c["kernel"] + c["held"] == self.total <= self.cap, (self.node, c)
        grown = self.total - self.frames
        assert (self.state[self.spare_lo + grown: self.spare_lo + self.cap - self.frames]
                == ABSENT).all()
        sh = np.uint64(self.shift)
        lists = (self.free[: int(m[P_TOP])], self.cache[: int(m[P_CACHE])],
                 self.spare[: int(m[P_SPARE])])
        frames = (np.concatenate(lists) >> sh).astype(np.int64)
        assert c["free"] == len(frames), (self.node, c, [len(x) for x in lists])
        assert len(np.unique(frames)) == len(frames), "a frame is twice in the free lists"
        assert (self.state[frames] == FREE).all()
        ring_hi = self.ring_lo + self.frames
        for f in (lists[0] >> sh, lists[1] >> sh):
            assert ((f >= np.uint64(self.ring_lo)) & (f < np.uint64(ring_hi))).all(), \
                "a frame of another node or a spare frame in the ring stack"
        sp = lists[2] >> sh
        assert ((sp >= np.uint64(self.spare_lo)) & (sp < np.uint64(self.spare_lo + grown))).all(), \
            "a frame of another node or a ring frame in the spare stack"
        assert m[P_HELD] == c["held"], (int(m[P_HELD]), c)
        assert m[P_HELD_RING] == int((self.state[self.ring_lo: ring_hi] == HELD).sum())


class FramePool:
    """Frame accounting over a UMEM: one pool per NUMA node (@nodes, node
    numbers; one pool without NUMA), each of @frames ring frames growing up
    to @cap frames. Layout of the frame index space (why: the ring frames of
    every node must be one registered prefix, see the module docstring)::

        [ring frames node 0 | node 1 | ...][spare frames node 0 | node 1 | ...]
          frames each                         cap - frames each, `cap` apart

    The spare regions start a power of two apart so a frame's node is two
    shifts away; the gaps are never touched and cost no memory (the memfd is
    sparse).

    Multi-queue (@lanes receive queues on one UMEM): each queue has a
    FramePool of its own over disjoint frames, queue by queue within each
    region ([ring q0 n0 | q0 n1 | q1 n0 ...][spare q0 n0 | ...]), and a state
    array of its own. Only that queue's receive thread moves its frames, so
    queues share no lock and no cache line on the per-packet path; another
    queue's frame in our RX ring is ABSENT here, hence a counted violation.
    """

    def __init__(self, frames: int, frame_size: int, cap: int | None = None,
                 chunk: int | None = None, cache: int | None = None,
                 spill_at: int | None = None, nodes: list[int] | None = None,
                 lane: int = 0, lanes: int = 1) -> None:
        cap = frames if cap is None else cap
        cache = 0 if cache is None else cache
        check_cap(frames, cap)
        if cache < 0 or cache & 1 or cache > frames:
            raise ConfigError(f"cache size {cache} must be even and in 0..{frames}",
                              remedy=f"use {CACHE_SIZE}, or 0 for none")
        self.node_ids = list(nodes) if nodes else [-1]
        n = len(self.node_ids)
        self.lane, self.lanes = lane, lanes
        npools = lanes * n                 # pools of every queue on this UMEM
        self.frames = frames
        self.cap = cap * n           # frames of all node pools together
        self.node_cap = cap
        self.frame_size = frame_size
        self.shift = frame_size.bit_length() - 1
        chunk = min(chunk or max(frames // 4, 64), max(cap - frames, 1))
        if chunk & (chunk - 1):
            raise ConfigError(f"growth chunk {chunk} is not a power of two", remedy="use e.g. 512")
        sw = max(cap - frames, 1)
        self.free = np.zeros((n, frames), np.uint64)
        self.spare = np.zeros((n, sw), np.uint64)
        self.cache = np.zeros((n, max(cache, 1)), np.uint64)
        self.meta = np.zeros((n, N_META), np.int64)
        self.span = span(frames, cap, npools)   # frame indices used on the UMEM
        self.state = np.full(self.span, ABSENT, np.uint8)
        # reference counts of HELD frames, dense beside `state`: the reap step
        # touches one per delivery, and a frame's headroom line per delivery
        # (a different page every two frames) missed cache and TLB at rate
        self.refs = np.zeros(self.span, np.uint32)
        self.x = np.zeros(N_X, np.int64)
        self.x[X_NODES], self.x[X_RING] = n, frames
        self.x[X_SHIFT], self.x[X_CACHE_W], self.x[X_SPARE_W] = self.shift, max(cache, 1), sw
        self.x[X_RING_SHIFT], self.x[X_CAP_SHIFT] = frames.bit_length() - 1, cap.bit_length() - 1
        first = lane * n                   # this queue's first pool
        self.x[X_RING_LO], self.x[X_RING_END] = first * frames, npools * frames
        self.x[X_SPARE_LO] = npools * frames + first * cap
        for k in range(n):
            lo = (first + k) * frames
            # LIFO: the most recently freed (cache-hot) frame is reused first
            self.free[k] = (np.arange(lo, lo + frames, dtype=np.uint64)[::-1]
                            << np.uint64(self.shift))
            self.state[lo: lo + frames] = FREE
            m = self.meta[k]
            m[P_TOP], m[P_CACHE_MAX], m[P_RING], m[P_TOTAL], m[P_CAP] = frames, cache, frames, frames, cap
            m[P_CHUNK] = chunk
            m[P_SPILL_AT] = frames // 4 if spill_at is None else spill_at
            m[P_SHIFT] = self.shift
            m[P_RING_LO], m[P_SPARE_LO] = lo, npools * frames + (first + k) * cap
            m[P_NODE] = self.node_ids[k]
        self.nodes = [NodePool(self, k) for k in range(n)]
        self.t = (self.free, self.spare, self.cache, self.meta, self.state, self.x, self.refs)

    # ---- which node pool refills ----------------------------------------------
    @property
    def active(self) -> int:
        """The node number whose pool refills FILL (-1: not NUMA-bound)."""
        return self.node_ids[int(self.x[X_ACTIVE])]

    @property
    def active_index(self) -> int:
        return int(self.x[X_ACTIVE])

    def set_active(self, node: int) -> None:
        """Refill from @node's pool from the next batch on (the caller holds
        the receive lock). Frames of the previous node still in flight go back
        to their own pool when let go."""
        self.x[X_ACTIVE] = self.node_ids.index(node)

    def node_index_of(self, frame: int) -> int:
        x = self.x
        if frame < x[X_RING_END]:
            return int(frame - x[X_RING_LO]) // self.frames
        return int(frame - x[X_SPARE_LO]) // self.node_cap

    # ---- accounting over every node pool --------------------------------------
    @property
    def total(self) -> int:
        """Frames committed now (ring frames + grown spare frames, all nodes)."""
        return int(self.meta[:, P_TOTAL].sum())

    def census(self, fill: int = 0) -> dict[str, int]:
        """Frames per state; @fill (the FILL ring's occupancy) splits KERNEL."""
        counts = np.bincount(self.state, minlength=4)
        return {"free": int(counts[FREE]), "fill": fill, "kernel": int(counts[KERNEL]) - fill,
                "held": int(counts[HELD])}

    def gauges(self) -> dict[str, int]:
        g: dict[str, int] = {}
        for p in self.nodes:
            for key, v in p.gauges().items():
                g[key] = g.get(key, 0) + v
        g["chunk"] = int(self.meta[0, P_CHUNK])
        g["foreign_fills"] = int(self.x[X_FOREIGN])
        return g

    def per_node(self) -> list[dict]:
        """Each node pool's census and gauges (stats, tests)."""
        return [{"node": p.node, **p.gauges(), **p.census()} for p in self.nodes]

    def reclaim_kernel(self) -> None:
        for p in self.nodes:
            p.reclaim_kernel()

    def trimmable(self) -> int:
        return sum(p.trimmable() for p in self.nodes)

    def trim(self) -> list[tuple[int, int]]:
        """Trim every node pool; the frame ranges whose memory may go back."""
        return [r for r in (p.trim() for p in self.nodes) if r[1] > r[0]]

    def check(self, fill: int = 0) -> None:
        """Assert the invariants, per node pool and over all of them."""
        for p in self.nodes:
            p.check()
        c = self.census(fill)
        assert c["free"] + c["fill"] + c["kernel"] + c["held"] == self.total <= self.cap, c
        assert c["kernel"] >= 0, c
        assert 0 <= self.x[X_ACTIVE] < len(self.nodes)


def span(frames: int, cap: int, npools: int) -> int:
    """Frame indices a UMEM of @npools pools spans (FramePool's layout)."""
    return npools * frames + (npools - 1) * cap + (cap - frames)


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

    @lanes: receive queues sharing this UMEM (XDP_SHARED_UMEM); each gets
    @frames ring frames growing to @max_frames in a FramePool of its own
    (`pools[q]`), and its own FILL/COMPLETION pair (`fills[q]`: queue 0's
    comes with the UMEM, the others' with their sockets, xsk.py).
    """

    def __init__(self, frames: int = 4096, frame_size: int = 2048, headroom: int = 0,
                 fill_size: int = 0, comp_size: int = 64, max_frames: int | None = None,
                 hugepages: str = "auto", cache: int | None = None, chunk: int | None = None,
                 spill_at: int | None = None, nodes: list[int] | None = None,
                 bind: bool = True, lanes: int = 1) -> None:
        check_frames(frames, frame_size, headroom)
        max_frames = frames if max_frames is None else max_frames
        check_cap(frames, max_frames)
        if hugepages not in ("auto", "on", "off"):
            raise ConfigError(f"unknown hugepages setting {hugepages!r}", remedy="use auto, on or off")
        self.frames = frames
        self.max_frames = max_frames
        self.frame_size = frame_size
        self.headroom = headroom
        self.nodes = list(nodes) if nodes else []
        n = max(len(self.nodes), 1)
        self.lanes = lanes
        # what the memfd and the mapping span (FramePool's layout; sparse)
        self.size = span(frames, max_frames, lanes * n) * frame_size
        self.registered = lanes * n * frames * frame_size      # what the kernel pins
        self.bound = False
        self._handle = ctypes.c_void_p()
        self.memfd = -1
        self._map = None
        self.area = None
        try:
            self._allocate(hugepages)
            self.pools = [FramePool(frames, frame_size, max_frames, chunk, cache, spill_at,
                                    self.nodes, lane, lanes) for lane in range(lanes)]
            self.pool = self.pools[0]
            if self.nodes and bind:
                self._bind()      # before registration faults the ring frames in
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
        self.fills: list[Ring | None] = [self.fill] + [None] * (lanes - 1)

    def regions(self, k: int, lane: int = 0) -> list[tuple[int, int]]:
        """Byte ranges [start, end) of node pool @k's frames (ring, spare)."""
        p, fs = self.pools[lane].nodes[k], self.frame_size
        r = [(p.ring_lo * fs, (p.ring_lo + self.frames) * fs)]
        if self.max_frames > self.frames:
            r.append((p.spare_lo * fs, (p.spare_lo + self.max_frames - self.frames) * fs))
        return r

    def _bind(self) -> None:
        base = self.area.ctypes.data
        for lane in range(self.lanes):
            for k, node in enumerate(self.nodes):
                for lo, hi in self.regions(k, lane):
                    numa.bind(base + lo, hi - lo, node)
        self.bound = True

    def placement(self, lane: int = 0) -> list[dict]:
        """Per node pool: the memory policy the kernel reports for its frames
        (get_mempolicy) and where its committed pages really are (move_pages)."""
        base, fs = self.area.ctypes.data, self.frame_size
        page = HUGE if self.hugetlb else PAGE
        out = []
        for k, p in enumerate(self.pools[lane].nodes):
            mode, nodes = numa.policy_of(base + p.ring_lo * fs)
            where: dict[int, int] = {}
            spans = [(p.ring_lo, self.frames), (p.spare_lo, p.total - self.frames)]
            for lo, n in spans:
                for node, c in numa.pages_by_node(base + lo * fs, n * fs, page).items():
                    where[node] = where.get(node, 0) + c
            out.append({"pool": k, "node": p.node, "policy": mode, "policy_nodes": nodes,
                        "pages_by_node": where})
        return out

    def _allocate(self, hugepages: str) -> None:
        """memfd + mapping of the whole cap; sets `pages` to what was used."""
        flags = native.MFD_CLOEXEC | native.MFD_ALLOW_SEALING
        need = -(-self.size // HUGE)
        free_huge = _meminfo("HugePages_Free") - _meminfo("HugePages_Rsvd")
        aligned = (self.frames * self.frame_size) % HUGE == 0
        why = ""
        if hugepages != "off":
            if not aligned:
                why = (f"the ring frames ({self.frames * self.frame_size >> 10} KiB per pool) "
                       "are not a multiple of 2 MiB")
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

    def census(self, lane: int | None = None) -> dict[str, int]:
        """Frames per state, of one queue's pool or (None) of all of them."""
        out: dict[str, int] = {}
        for q in range(self.lanes) if lane is None else (lane,):
            f = self.fills[q]
            for key, v in self.pools[q].census(f.occupancy() if f is not None else 0).items():
                out[key] = out.get(key, 0) + v
        return out

    def trim(self, lane: int = 0) -> int:
        """Give a queue pool's free top chunks back to the system. Returns bytes."""
        if self.hugetlb:
            return 0   # reserved pages: nothing to give back
        fs, n = self.frame_size, 0
        for lo, hi in self.pools[lane].trim():
            self._map.madvise(mmap.MADV_REMOVE, lo * fs, (hi - lo) * fs)
            n += (hi - lo) * fs
        return n

    def close(self) -> None:
        """Unregister and unmap. Sockets on this UMEM must be closed first."""
        if self._handle:
            self.fill = self.comp = None
            self.fills = []
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
