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
    """Decorator for every per-packet kernel: eager signature, cached, nogil."""
    return numba.njit(*sig, cache=True, nogil=True, boundscheck=False)


def inline(fn):
    """A small helper that Numba inlines into the kernels that call it."""
    return numba.njit(cache=True, nogil=True, inline="always")(fn)


# ---- raw shared memory inside kernels ---------------------------------------
from numba import carray, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402


@intrinsic
def as_voidptr(typingctx, addr):
    """An integer address as a void pointer (for numba.carray)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(addr), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def raw(addr, n, dtype):
    """A numpy view of @n items of @dtype at address @addr. The memory's owner
    (a Python object holding the mapping) must outlive the call."""
    return carray(as_voidptr(addr), n, dtype)
