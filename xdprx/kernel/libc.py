"""libc from compiled code: the syscalls the receive and consume loops make
without returning to Python (epoll, eventfd write, the need_wakeup kick,
the clock, getcpu).

Numba cannot cache a kernel that calls a ctypes function directly (the
function's address is a per-process constant baked into the machine code), so
the loops call through addresses handed in at run time: `table()` is a
uint64 array of libc entry points, made once per process and registered in
the loop's context; `ccallN(addr, ...)` is a Numba intrinsic that calls the
C function at @addr with N integer or pointer arguments (x86-64 / aarch64
pass both in integer registers) and returns its int result sign-extended.
"""
from __future__ import annotations

import ctypes
import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import native
from ..jit import inline

# slots of table(): one C function each
(FN_CLOCK, FN_WRITE, FN_RECVFROM, FN_GETCPU, FN_EPOLL_PWAIT2) = range(5)
N_FN = 8
_NAMES = ("clock_gettime", "write", "recvfrom", "getcpu", "epoll_pwait2")

CLOCK_MONOTONIC = 1
# struct epoll_event {u32 events; u64 data}: packed on x86-64 (12 bytes)
EPOLL_EVENT_WORDS = 3 if platform.machine() == "x86_64" else 4   # in int32 words
EPOLL_DATA_WORD = 1 if EPOLL_EVENT_WORDS == 3 else 2
MSG_DONTWAIT = 0x40

_table: np.ndarray | None = None


def table() -> np.ndarray:
    """This process's libc entry points, in FN_* order."""
    global _table
    if _table is None:
        t = np.zeros(N_FN, np.uint64)
        for i, name in enumerate(_NAMES):
            t[i] = ctypes.cast(getattr(native.libc, name), ctypes.c_void_p).value
        _table = t
    return _table


def _codegen(nargs: int):
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64] * nargs)
        addr = context.cast(builder, args[0], sig.args[0], types.int64)
        fn = builder.inttoptr(addr, fnty.as_pointer())
        vals = [context.cast(builder, v, t, types.int64) for v, t in zip(args[1:], sig.args[1:])]
        return builder.call(fn, vals)
    return codegen


def _check(*tys) -> bool:
    return all(isinstance(t, types.Integer) for t in tys)


# The callee's result comes back in a 64-bit register; for an int-returning
# function only the low 32 bits are defined: int32() them at the call site
# (see wrappers below), never trust the upper half.
@intrinsic
def ccall2(typingctx, fn, a, b):
    if _check(fn, a, b):
        return types.int64(fn, a, b), _codegen(2)


@intrinsic
def ccall3(typingctx, fn, a, b, c):
    if _check(fn, a, b, c):
        return types.int64(fn, a, b, c), _codegen(3)


@intrinsic
def ccall5(typingctx, fn, a, b, c, d, e):
    if _check(fn, a, b, c, d, e):
        return types.int64(fn, a, b, c, d, e), _codegen(5)


@intrinsic
def ccall6(typingctx, fn, a, b, c, d, e, f):
    if _check(fn, a, b, c, d, e, f):
        return types.int64(fn, a, b, c, d, e, f), _codegen(6)


# ---- the calls the loops make (inlined into them) ---------------------------


@inline
def now_ns(fn, ts):
    """CLOCK_MONOTONIC in ns (vDSO, ~30 ns); @ts: an int64[2] scratch timespec."""
    ccall2(fn[FN_CLOCK], CLOCK_MONOTONIC, ts.ctypes.data)
    return ts[0] * 1000000000 + ts[1]


@inline
def epoll_wait_ns(fn, epfd, events, timeout_ns, ts):
    """epoll_pwait2(2) for at most @timeout_ns (< 0: forever) into @events
    (int32 words, room for len / EPOLL_EVENT_WORDS events). One syscall
    however many descriptors are watched (they were registered once). Returns
    the ready count (or -1)."""
    maxev = events.shape[0] // EPOLL_EVENT_WORDS
    if timeout_ns < 0:
        r = ccall5(fn[FN_EPOLL_PWAIT2], epfd, events.ctypes.data, maxev, 0, 0)
    else:
        ts[0] = timeout_ns // 1000000000
        ts[1] = timeout_ns % 1000000000
        r = ccall5(fn[FN_EPOLL_PWAIT2], epfd, events.ctypes.data, maxev, ts.ctypes.data, 0)
    return np.int64(np.int32(r & 0xFFFFFFFF))


@inline
def epoll_data(events, i):
    """The data word (low 32 bits) of ready event @i."""
    return events[i * EPOLL_EVENT_WORDS + EPOLL_DATA_WORD]


@inline
def efd_write(fn, fd, one):
    """Add 1 to eventfd @fd (@one: uint64[1] holding 1). EAGAIN (counter
    saturated) means the reader is awake anyway."""
    return ccall3(fn[FN_WRITE], fd, one.ctypes.data, 8)


@inline
def kick_rx(fn, fd):
    """The need_wakeup kick (libxdp's recvfrom(MSG_DONTWAIT) on the socket)."""
    return ccall6(fn[FN_RECVFROM], fd, 0, 0, MSG_DONTWAIT, 0, 0)


@inline
def getcpu(fn, where):
    """(cpu, node) of the calling thread into uint32 @where[0:2] (vDSO)."""
    return ccall3(fn[FN_GETCPU], where.ctypes.data, where.ctypes.data + 4, 0)
