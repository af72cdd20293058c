"""Acquire/release loads and stores for shared ring indices (Numba intrinsics).

The AF_XDP rings and the consumer rings are single-producer/single-consumer
queues shared with the kernel or another process. As in the kernel
(net/xdp/xsk_queue.h) and libxdp (xsk.h):

  consumer: read producer with ACQUIRE  -> the entries before it are visible
            write consumer with RELEASE -> our reads of entries are done first
  producer: read consumer with ACQUIRE  -> the slots before it are free
            write producer with RELEASE -> our entry writes are visible first

Each helper takes a 1-element numpy array that is a view of the shared index,
and emits one LLVM atomic load/store with that ordering: on x86 a plain mov,
but the compiler may not reorder across it, which is the point.
"""
from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _index_ptr(context, builder, aryty, ary_val):
    ary = context.make_array(aryty)(context, builder, ary_val)
    return cgutils.get_item_pointer(context, builder, aryty, ary,
                                    [context.get_constant(types.intp, 0)])


def _load(arr, order: str):
    """Typing and code for one atomic load of arr[0] with @order."""
    if not isinstance(arr, types.Array) or not isinstance(arr.dtype, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ptr = _index_ptr(context, builder, sig.args[0], args[0])
        return builder.load_atomic(ptr, order, arr.dtype.bitwidth // 8)
    return arr.dtype(arr), codegen


def _store(arr, value, order: str):
    """Typing and code for one atomic store to arr[0] with @order."""
    if not isinstance(arr, types.Array) or not isinstance(arr.dtype, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ptr = _index_ptr(context, builder, sig.args[0], args[0])
        val = context.cast(builder, args[1], sig.args[1], arr.dtype)
        builder.store_atomic(val, ptr, order, arr.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(arr, value), codegen


@intrinsic
def load_acquire(typingctx, arr):
    """arr[0], read with acquire ordering (pairs with a release store)."""
    return _load(arr, "acquire")


@intrinsic
def store_release(typingctx, arr, value):
    """arr[0] = value with release ordering (pairs with an acquire load)."""
    return _store(arr, value, "release")


@intrinsic
def load_relaxed(typingctx, arr):
    """arr[0] as one atomic load, no ordering of its own: a flag another
    thread or process sets, read in a loop (never hoisted, never torn)."""
    return _load(arr, "monotonic")


@intrinsic
def store_relaxed(typingctx, arr, value):
    """arr[0] = value as one atomic store, no ordering of its own (the
    fence_seq_cst next to it does the ordering: see cring.arm)."""
    return _store(arr, value, "monotonic")


@intrinsic
def fence_seq_cst(typingctx):
    """Full fence: orders a store before a later load (need_wakeup checks)."""
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen
