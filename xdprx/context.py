"""One array of addresses instead of thirty array arguments per call.

Numba unboxes every array argument on every call (about 75 ns each); the
receive kernel takes about thirty, which cost ~2-3 us per call before any
packet is touched. Each driver (Receiver, Consumer, Subscriber) therefore
registers its arrays once in a context (uint64 [address, length] pairs) and
the loops in loop.py rebuild the very same numpy views inside nopython code.
The arrays are owned by the driver and outlive every call; when one is
replaced (the consumer table grows) the driver makes a new context.

Two layouts: RX_FIELDS (the receive side) and CONS_FIELDS (one consumer).
"""
from __future__ import annotations

import numpy as np

from . import umem as U
from .jit import inline, raw

# ---- the receive side: slot order of its context -------------------------------
RX_FIELDS = ("rx_prod", "rx_cons", "rx_slots", "rx_local", "fill_prod", "fill_cons",
             "fill_slots", "fill_local", "fill_flags", "free", "spare", "cache", "meta",
             "state", "x", "umem", "g_addr", "g_port", "g_seq", "out_frame", "out_off",
             "out_len", "out_seq", "out_sub", "stats", "ctab", "sub_start", "sub_cons", "wake",
             "hub", "ctl", "fn", "pfd", "scratch", "refs")
(RX_PROD, RX_CONS, RX_SLOTS, RX_LOCAL, FILL_PROD, FILL_CONS, FILL_SLOTS, FILL_LOCAL, FILL_FLAGS,
 FREE, SPARE, CACHE, META, STATE, X, UMEM, G_ADDR, G_PORT, G_SEQ, OUT_FRAME, OUT_OFF, OUT_LEN,
 OUT_SEQ, OUT_SUB, STATS, CTAB, SUB_START, SUB_CONS, WAKE, HUB, CTL, FN, PFD,
 SCRATCH, REFS) = range(len(RX_FIELDS))

# ---- one consumer: slot order of its context -------------------------------------
CONS_FIELDS = ("prod", "slots", "local", "umem", "next_seq", "counts", "out_frame", "out_off",
               "out_len", "out_seq", "out_sub", "cons", "waiting", "feedback", "status",
               "ctl", "fn", "pfd", "scratch")
(C_PROD, C_SLOTS, C_LOCAL, C_UMEM, C_NEXT_SEQ, C_COUNTS, C_OUT_FRAME, C_OUT_OFF, C_OUT_LEN,
 C_OUT_SEQ, C_OUT_SUB, C_CONS, C_WAITING, C_FEEDBACK, C_STATUS, C_CTL, C_FN, C_PFD,
 C_SCRATCH) = range(len(CONS_FIELDS))


def make(arrays: dict[str, np.ndarray], fields: tuple[str, ...] = RX_FIELDS) -> np.ndarray:
    """The context for @arrays (C-contiguous, kept alive by the caller).
    Read-only arrays are allowed: the kernels never write through them."""
    ctx = np.zeros(2 * len(fields), np.uint64)
    for i, name in enumerate(fields):
        a = arrays[name]
        assert a.flags.c_contiguous, name
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
            a1(ctx, STATE, np.uint8), x, a1(ctx, REFS, np.uint32))
