"""One array of addresses instead of two dozen array arguments per call.

Numba unboxes every array argument on every call (about 75 ns each); the
receive kernel takes 23 of them, which cost ~2-3 us per batch before any
packet is touched. The Receiver therefore registers its arrays once in a
context (uint64 [address, length] pairs) and the *_ctx kernels rebuild the
very same numpy views inside nopython code with numba.carray. The arrays are
owned by the Receiver and outlive every call; the context never leaves it.
"""
from __future__ import annotations

import numpy as np
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import bulk
from .jit import kernel

# slot order of the context; 2-D arrays keep their fixed second dimension
FIELDS = ("rx_prod", "rx_cons", "rx_slots", "rx_local", "fill_prod", "fill_cons", "fill_slots",
          "fill_local", "fill_flags", "free", "top", "state", "umem", "g_addr", "g_port",
          "g_seq", "out_frame", "out_off", "out_len", "out_seq", "out_sub", "stats")
N = len(FIELDS)
SHIFT = 2 * N  # the frame shift follows the pairs


@intrinsic
def _ptr(typingctx, addr):
    """An integer address as a void pointer (for numba.carray)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(addr), codegen


def make(arrays: dict[str, np.ndarray], shift: int) -> np.ndarray:
    """The context for @arrays (C-contiguous, kept alive by the caller)."""
    ctx = np.zeros(2 * N + 1, np.uint64)
    for i, name in enumerate(FIELDS):
        a = arrays[name]
        assert a.flags.c_contiguous and a.flags.writeable, name
        ctx[2 * i] = a.ctypes.data
        ctx[2 * i + 1] = a.shape[0]
    ctx[SHIFT] = shift
    return ctx


@kernel
def rx_burst_ctx(ctx, now_ns, refill_min):
    """bulk.rx_burst over the arrays registered in @ctx."""
    return bulk.rx_burst(
        carray(_ptr(ctx[0]), ctx[1], np.uint32), carray(_ptr(ctx[2]), ctx[3], np.uint32),
        carray(_ptr(ctx[4]), (ctx[5], 2), np.uint64), carray(_ptr(ctx[6]), ctx[7], np.int64),
        carray(_ptr(ctx[8]), ctx[9], np.uint32), carray(_ptr(ctx[10]), ctx[11], np.uint32),
        carray(_ptr(ctx[12]), ctx[13], np.uint64), carray(_ptr(ctx[14]), ctx[15], np.int64),
        carray(_ptr(ctx[16]), ctx[17], np.uint32),
        carray(_ptr(ctx[18]), ctx[19], np.uint64), carray(_ptr(ctx[20]), ctx[21], np.int64),
        carray(_ptr(ctx[22]), ctx[23], np.uint8), np.int64(ctx[SHIFT]),
        carray(_ptr(ctx[24]), ctx[25], np.uint8), carray(_ptr(ctx[26]), (ctx[27], 16), np.uint8),
        carray(_ptr(ctx[28]), ctx[29], np.uint16), carray(_ptr(ctx[30]), ctx[31], np.uint64),
        carray(_ptr(ctx[32]), ctx[33], np.uint64), carray(_ptr(ctx[34]), ctx[35], np.uint64),
        carray(_ptr(ctx[36]), ctx[37], np.uint32), carray(_ptr(ctx[38]), ctx[39], np.uint64),
        carray(_ptr(ctx[40]), ctx[41], np.int32), carray(_ptr(ctx[42]), ctx[43], np.int64),
        now_ns, refill_min)


@kernel
def release_ctx(ctx, n):
    """bulk.release of the first @n frames of out_frame."""
    return bulk.release(
        carray(_ptr(ctx[32]), ctx[33], np.uint64), n,
        carray(_ptr(ctx[18]), ctx[19], np.uint64), carray(_ptr(ctx[20]), ctx[21], np.int64),
        carray(_ptr(ctx[22]), ctx[23], np.uint8), np.int64(ctx[SHIFT]),
        carray(_ptr(ctx[42]), ctx[43], np.int64))


def warm() -> None:
    """Compile both context kernels under the cache lock (see jit.py)."""
    from .jit import cache_lock
    with cache_lock():
        arrays = {
            "rx_prod": np.zeros(1, np.uint32), "rx_cons": np.zeros(1, np.uint32),
            "rx_slots": np.zeros((4, 2), np.uint64), "rx_local": np.zeros(2, np.int64),
            "fill_prod": np.zeros(1, np.uint32), "fill_cons": np.zeros(1, np.uint32),
            "fill_slots": np.zeros(4, np.uint64), "fill_local": np.zeros(2, np.int64),
            "fill_flags": np.zeros(1, np.uint32), "free": np.zeros(4, np.uint64),
            "top": np.zeros(1, np.int64), "state": np.zeros(4, np.uint8),
            "umem": np.zeros(8192, np.uint8), "g_addr": np.zeros((1, 16), np.uint8),
            "g_port": np.zeros(1, np.uint16), "g_seq": np.zeros(1, np.uint64),
            "out_frame": np.zeros(4, np.uint64), "out_off": np.zeros(4, np.uint64),
            "out_len": np.zeros(4, np.uint32), "out_seq": np.zeros(4, np.uint64),
            "out_sub": np.zeros(4, np.int32), "stats": np.zeros(bulk.N_STATS, np.int64)}
        ctx = make(arrays, 11)
        rx_burst_ctx(ctx, 0, 1 << 30)
        release_ctx(ctx, 0)
