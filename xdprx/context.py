"""One array of addresses instead of thirty array arguments per call.

Numba unboxes every array argument on every call (about 75 ns each); the
receive kernel takes about thirty, which cost ~2-3 us per batch before any
packet is touched. The Receiver therefore registers its arrays once in a
context (uint64 [address, length] pairs) and the *_ctx kernels rebuild the
very same numpy views inside nopython code. The arrays are owned by the
Receiver and outlive every call; when one is replaced (the consumer table
grows) the Receiver makes a new context.
"""
from __future__ import annotations

import numpy as np

from . import bulk
from . import umem as U
from .jit import inline, kernel, raw

# slot order of the context; 2-D arrays keep their fixed second dimension
FIELDS = ("rx_prod", "rx_cons", "rx_slots", "rx_local", "fill_prod", "fill_cons", "fill_slots",
          "fill_local", "fill_flags", "free", "spare", "cache", "meta", "state", "x", "umem", "g_addr", "g_port",
          "g_seq", "out_frame", "out_off", "out_len", "out_seq", "out_sub", "stats",
          "ctab", "sub_start", "sub_cons", "wake", "hub")
(RX_PROD, RX_CONS, RX_SLOTS, RX_LOCAL, FILL_PROD, FILL_CONS, FILL_SLOTS, FILL_LOCAL, FILL_FLAGS,
 FREE, SPARE, CACHE, META, STATE, X, UMEM, G_ADDR, G_PORT, G_SEQ, OUT_FRAME, OUT_OFF, OUT_LEN, OUT_SEQ, OUT_SUB,
 STATS, CTAB, SUB_START, SUB_CONS, WAKE, HUB) = range(len(FIELDS))
N = len(FIELDS)


def make(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The context for @arrays (C-contiguous, kept alive by the caller)."""
    ctx = np.zeros(2 * N, np.uint64)
    for i, name in enumerate(FIELDS):
        a = arrays[name]
        assert a.flags.c_contiguous and a.flags.writeable, name
        ctx[2 * i] = a.ctypes.data
        ctx[2 * i + 1] = a.shape[0]
    return ctx


@inline
def a1(ctx, i, dtype):
    return raw(ctx[2 * i], ctx[2 * i + 1], dtype)


@inline
def a2(ctx, i, width, dtype):
    return raw(ctx[2 * i], (ctx[2 * i + 1], width), dtype)


@inline
def pool_of(ctx):
    """The FramePool tuple (umem.py); its 2-D widths are in its x array."""
    x = a1(ctx, X, np.int64)
    return (a2(ctx, FREE, x[U.X_RING], np.uint64), a2(ctx, SPARE, x[U.X_SPARE_W], np.uint64),
            a2(ctx, CACHE, x[U.X_CACHE_W], np.uint64), a2(ctx, META, U.N_META, np.int64),
            a1(ctx, STATE, np.uint8), x)


@kernel
def rx_burst_ctx(ctx, now_ns, refill_min, self_ref):
    """bulk.rx_burst over the arrays registered in @ctx."""
    return bulk.rx_burst(
        a1(ctx, RX_PROD, np.uint32), a1(ctx, RX_CONS, np.uint32),
        a2(ctx, RX_SLOTS, 2, np.uint64), a1(ctx, RX_LOCAL, np.int64),
        a1(ctx, FILL_PROD, np.uint32), a1(ctx, FILL_CONS, np.uint32),
        a1(ctx, FILL_SLOTS, np.uint64), a1(ctx, FILL_LOCAL, np.int64),
        a1(ctx, FILL_FLAGS, np.uint32),
        pool_of(ctx), a1(ctx, UMEM, np.uint8), a2(ctx, G_ADDR, 16, np.uint8), a1(ctx, G_PORT, np.uint16),
        a1(ctx, G_SEQ, np.uint64),
        a1(ctx, OUT_FRAME, np.uint64), a1(ctx, OUT_OFF, np.uint64), a1(ctx, OUT_LEN, np.uint32),
        a1(ctx, OUT_SEQ, np.uint64), a1(ctx, OUT_SUB, np.int32), a1(ctx, STATS, np.int64),
        a2(ctx, CTAB, bulk.NCOL, np.int64), a1(ctx, SUB_START, np.int64),
        a1(ctx, SUB_CONS, np.int32), a1(ctx, WAKE, np.int32), a1(ctx, HUB, np.int64),
        now_ns, refill_min, self_ref)


@kernel
def release_ctx(ctx, n):
    """bulk.release of the first @n frames of out_frame."""
    return bulk.release(
        a1(ctx, OUT_FRAME, np.uint64), n, a1(ctx, UMEM, np.uint8), pool_of(ctx),
        a1(ctx, STATS, np.int64))


@kernel
def reclaim_ctx(ctx, c):
    """bulk.reclaim of consumer @c."""
    return bulk.reclaim(
        a2(ctx, CTAB, bulk.NCOL, np.int64), c, a1(ctx, UMEM, np.uint8), pool_of(ctx),
        a1(ctx, STATS, np.int64), a1(ctx, HUB, np.int64))


def warm() -> None:
    """Compile the context kernels under the cache lock (see jit.py)."""
    from .jit import cache_lock
    from . import consumer, sender
    from .umem import FramePool
    with cache_lock():
        pool = FramePool(4, 2048, 8, 2, 2)
        arrays = {
            "rx_prod": np.zeros(1, np.uint32), "rx_cons": np.zeros(1, np.uint32),
            "rx_slots": np.zeros((4, 2), np.uint64), "rx_local": np.zeros(2, np.int64),
            "fill_prod": np.zeros(1, np.uint32), "fill_cons": np.zeros(1, np.uint32),
            "fill_slots": np.zeros(4, np.uint64), "fill_local": np.zeros(2, np.int64),
            "fill_flags": np.zeros(1, np.uint32), "free": pool.free, "spare": pool.spare,
            "cache": pool.cache, "meta": pool.meta, "state": pool.state, "x": pool.x,
            "umem": np.zeros(8 * 2048, np.uint8), "g_addr": np.zeros((1, 16), np.uint8),
            "g_port": np.zeros(1, np.uint16), "g_seq": np.zeros(1, np.uint64),
            "out_frame": np.zeros(4, np.uint64), "out_off": np.zeros(4, np.uint64),
            "out_len": np.zeros(4, np.uint32), "out_seq": np.zeros(4, np.uint64),
            "out_sub": np.zeros(4, np.int32), "stats": np.zeros(bulk.N_STATS, np.int64),
            "ctab": np.zeros((1, bulk.NCOL), np.int64), "sub_start": np.zeros(2, np.int64),
            "sub_cons": np.zeros(1, np.int32), "wake": np.zeros(1, np.int32),
            "hub": np.zeros(bulk.N_HUB, np.int64)}
        ctx = make(arrays)
        rx_burst_ctx(ctx, 0, 1 << 30, 1)
        release_ctx(ctx, 0)
        reclaim_ctx(ctx, 0)
        # the NUMA policy's feedback kernel: else it compiles at the first tick,
        # mid-traffic, for seconds
        z = np.zeros(1, np.int64)
        bulk.collect_feedback(arrays["ctab"], arrays["hub"], z, z, z, z)
        sender.warm()
    consumer.warm()
