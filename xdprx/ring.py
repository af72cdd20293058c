"""Single-producer/single-consumer rings as numpy views, with batch ops.

One layout serves the four AF_XDP rings (mmapped from the socket by libxdp)
and, later, xdprx's own consumer rings in shared memory:

    prod   uint32[1]  producer index   (written only by the producer)
    cons   uint32[1]  consumer index   (written only by the consumer)
    flags  uint32[1]  XDP_RING_NEED_WAKEUP lives here
    slots  uint64[size] (FILL/COMPLETION: frame addresses)
           uint64[size, 2] (RX/TX: xdp_desc {u64 addr; u32 len; u32 options})
    local  int64[2]   our side's cached indices, private to this process:
                      consumer ring: [cached producer, our consumer]
                      producer ring: [our producer, cached consumer]

Indices are free-running u32 values; slot = index & (size - 1).
Ordering (see atomics.py): the side that reads the other's index does so with
acquire, the side that publishes its own index does so with release.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .atomics import load_acquire, store_release
from .jit import inline

U32 = 0xFFFFFFFF


# ---- consumer side (RX, COMPLETION) -----------------------------------------
@inline
def cons_peek(prod, local, n):
    """How many entries (<= n) are ready at local[1]. Unlike libxdp, which
    refreshes only when the cache looks empty, refresh whenever it holds fewer
    than @n: one extra load per batch buys full batches."""
    avail = (local[0] - local[1]) & U32
    if avail < n:
        # acquire: descriptor writes before the kernel's producer store are visible
        local[0] = load_acquire(prod)
        avail = (local[0] - local[1]) & U32
    return min(avail, n)


@inline
def cons_release(cons, local, n):
    """Hand @n entries back; release: our reads of them are done."""
    local[1] = (local[1] + n) & U32
    store_release(cons, local[1])


# ---- producer side (FILL, TX) ----------------------------------------------
@inline
def prod_free(cons, local, size, n):
    """How many slots (<= n) can be written at local[0]."""
    free = size - ((local[0] - local[1]) & U32)
    if free < n:
        # acquire: the consumer finished reading the slots it handed back
        local[1] = load_acquire(cons)
        free = size - ((local[0] - local[1]) & U32)
    return min(free, n)


@inline
def prod_submit(prod, local, n):
    """Publish @n written slots; release: the slot writes are visible first."""
    local[0] = (local[0] + n) & U32
    store_release(prod, local[0])


@inline
def needs_wakeup(flags):
    return (flags[0] & 1) != 0


# ---- numpy views over the mmapped rings ------------------------------------
def _u32_at(addr: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint32 * 1).from_address(addr))


class Ring:
    """A ring's numpy views. @xring is a native.XskRing filled in by libxdp;
    @desc selects the RX/TX descriptor layout."""

    def __init__(self, xring, desc: bool) -> None:
        self.size = int(xring.size)
        self.mask = int(xring.mask)
        self.prod = _u32_at(xring.producer)
        self.cons = _u32_at(xring.consumer)
        self.flags = _u32_at(xring.flags)
        width = 2 if desc else 1
        buf = (ctypes.c_uint64 * (self.size * width)).from_address(xring.ring)
        slots = np.ctypeslib.as_array(buf)
        self.slots = slots.reshape(self.size, 2) if desc else slots
        self.local = np.zeros(2, np.int64)
        # start from the real shared indices, not libxdp's cached offsets
        self.local[0] = int(self.prod[0])
        self.local[1] = int(self.cons[0])
        self._xring = xring  # keeps the struct alive with the views

    def occupancy(self) -> int:
        """Entries currently in the ring (a snapshot)."""
        return (int(self.prod[0]) - int(self.cons[0])) & U32
