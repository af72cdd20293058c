"""One place that decides how Numba kernels are compiled and cached.

Kernels are nopython, nogil (so the daemon's control thread can run while the
receive loop is inside a kernel) and cached on disk so start-up stays fast.

Numba's cache is not safe against many processes compiling the same function
at once (numba issue 4807: index files overwritten by concurrent writers).
xdprx therefore (1) keeps its cache in its own directory, and (2) takes an
exclusive flock on that directory while its kernel modules are imported for
the first time in a process, so exactly one process compiles and writes while
the others wait and then load the finished entries, and (3) keys the cache
directory on a hash of its sources (see fingerprint()).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

import numba


def cache_dir() -> Path:
    """$XDPRX_CACHE_DIR, else /var/cache/xdprx for root, else ~/.cache/xdprx."""
    env = os.environ.get("XDPRX_CACHE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/xdprx")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xdprx"


def fingerprint() -> str:
    """A hash of every xdprx source file. Numba checks a cached kernel only
    against its own module's file, not the modules it inlined, so an edited
    helper (say ring.py) would leave stale machine code in every kernel that
    inlines it: one cache directory per fingerprint makes that impossible."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(f.relative_to(Path(__file__).parent).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _setup_numba_cache() -> None:
    # Must happen before the first @njit(cache=True) is decorated.
    if "NUMBA_CACHE_DIR" not in os.environ:
        d = cache_dir() / "numba" / fingerprint()
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.environ["NUMBA_CACHE_DIR"] = str(d)
            numba.config.CACHE_DIR = str(d)
        except OSError:
            pass  # numba falls back to __pycache__ next to the sources


_setup_numba_cache()


@contextlib.contextmanager
def cache_lock():
    """Exclusive lock held while kernels are compiled or loaded from cache."""
    path = Path(numba.config.CACHE_DIR or cache_dir()) / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        yield  # read-only cache location: nothing to protect
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def kernel(*sig):
    """Decorator for every per-packet kernel: eager signature, cached, nogil,
    and without Numba's reference-counting runtime (_nrt=False). Kernels
    allocate nothing: every array they touch is owned by the Python caller
    for the whole call, or is a raw() view of memory the caller owns. With
    the runtime on, Numba called NRT_incref/NRT_decref (not inlinable) at
    every binding of every array, dozens per packet: 10-12 % of the receive
    loop's CPU in `perf` at 200 kpps. A kernel that would allocate (a slice
    copy, np.empty) fails to compile ("NRT required") instead."""
    return numba.njit(*sig, cache=True, nogil=True, boundscheck=False, _nrt=False)


def entry(dispatcher):
    """The compiled entry point of a kernel warmed with exactly one signature,
    called without Numba's dispatch (typing every argument, choosing the
    overload): 0.7 -> 0.45 us a call on the development VM, which is most of
    an empty recv(timeout=0). The C wrapper converts the arguments to that
    signature's types without checking them, so this is only for calls over
    contexts xdprx built itself. Not warmed (no or several signatures): the
    dispatcher itself."""
    sigs = dispatcher.signatures
    return dispatcher.overloads[sigs[0]].entry_point if len(sigs) == 1 else dispatcher


def inline(fn):
    """A small helper that Numba inlines into the kernels that call it."""
    return numba.njit(cache=True, nogil=True, inline="always")(fn)


# ---- raw shared memory inside kernels ---------------------------------------
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402


@intrinsic
def raw(typingctx, addr, n, dtype):
    """A numpy view of @n items (an int or a shape tuple) of @dtype at
    address @addr, not reference counted. The memory's owner (a Python
    object holding the mapping) must outlive the call. (numba.carray, as an
    intrinsic: kernels compiled without the reference-counting runtime may
    not call a function that returns an array.)"""
    from numba.np.arrayobj import np_cfarray
    if not isinstance(addr, types.Integer) or not isinstance(dtype, types.DTypeSpec):
        return None
    if isinstance(n, types.Integer):
        ndim = 1
    elif isinstance(n, types.BaseTuple) and all(isinstance(t, types.Integer) for t in n):
        ndim = len(n)
    else:
        return None
    retty = types.Array(dtype.dtype, ndim, "C")

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], cgutils.voidptr_t)
        inner = retty(types.voidptr, sig.args[1])
        return np_cfarray(context, builder, inner, (ptr, args[1]))
    return retty(addr, n, dtype), codegen


@intrinsic
def prefetch(typingctx, arr, idx, write):
    """Ask the CPU to bring the cache line of arr[@idx] (@arr 1-D) in
    (llvm.prefetch; a hint: never faults, even out of bounds). @write (a
    literal): 1 for a line about to be written. DPDK's rte_prefetch0 in a
    receive burst: the lines of a packet a few places ahead come in while
    this one is worked on, instead of one miss after another."""
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(idx, types.Integer) \
            or not isinstance(write, types.IntegerLiteral):
        return None
    rw = write.literal_value

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        itemsize = context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype))
        off = builder.mul(builder.sext(args[1], ir.IntType(64)) if args[1].type.width < 64
                          else args[1], ir.Constant(ir.IntType(64), itemsize))
        base = builder.ptrtoint(ary.data, ir.IntType(64))
        ptr = builder.inttoptr(builder.add(base, off), cgutils.voidptr_t)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        # the intrinsic is named for its pointer type: "ptr" (opaque, LLVM >= 15) or "i8*"
        name = "llvm.prefetch.p0" if str(cgutils.voidptr_t) == "ptr" else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        # read or write, locality 3 (keep in all levels), data cache
        builder.call(fn, [ptr, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(arr, idx, write), codegen
