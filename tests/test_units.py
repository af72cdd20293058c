"""Pure-logic tests beside the veth ones: groups, pool state machine, rings,
descriptor layout, and the Numba cache under concurrent imports."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from xdprx import bulk, fanout
from xdprx.errors import ConfigError
from xdprx.groups import Group, parse_groups
from xdprx.ring import cons_peek, cons_release, prod_free, prod_submit
from xdprx.umem import HELD, KERNEL, FramePool, check_frames, pool_get


@pytest.mark.parametrize("spec,addr,port", [
    ("239.1.2.3:5000", "239.1.2.3", 5000), ("[ff15::1]:1", "ff15::1", 1),
    (" 224.0.0.251:5353 ", "224.0.0.251", 5353)])
def test_group_parse(spec, addr, port):
    g = Group.parse(spec)
    assert str(g.addr) == addr and g.port == port


@pytest.mark.parametrize("spec,msg", [
    ("10.0.0.1:5000", "not a multicast"), ("239.1.2.3:0", "port"), ("239.1.2.3:x", "port"),
    ("239.1.2.3", "GROUP:PORT"), ("nothost:5", "not an IP"), ("[fd00::1]:5", "not a multicast")])
def test_group_parse_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        Group.parse(spec)


def test_duplicate_and_empty_groups():
    with pytest.raises(ConfigError, match="twice"):
        parse_groups(["239.1.1.1:1", "239.1.1.1:1"])
    with pytest.raises(ConfigError, match="no group"):
        parse_groups([])


def test_frame_geometry_checks():
    for bad in (0, 3, 1000):
        with pytest.raises(ConfigError, match="power of two"):
            check_frames(bad, 2048, 0)
    with pytest.raises(ConfigError, match="frame size"):
        check_frames(64, 1024, 0)
    check_frames(64, 4096, 0)


def test_descriptor_layout_is_stable():
    assert fanout.DESC_SIZE == 48
    assert [fanout.DESC.fields[n][1] for n in ("refcnt", "payload_off", "sub_id", "seq", "ts_ns")] \
        == [4, 16, 24, 32, 40]
    fanout.check_headroom(0)  # fits XDP_PACKET_HEADROOM alone


@njit
def _get(pool_free, top, state, ring, start, n, shift):
    return pool_get(pool_free, top, state, ring, start, n, KERNEL, shift)


@njit
def _to_held(state, umem32, frames, n, refs, shift, hub):
    """What rx_burst does to a received frame: HELD, with one count per holder."""
    for i in range(n):
        state[frames[i] >> shift] = HELD
        umem32[(frames[i] >> 2) + 1] = refs
        hub[bulk.H_HELD] += 1


@given(st.lists(st.tuples(st.sampled_from(["get", "rx", "put"]), st.integers(0, 80),
                          st.integers(1, 4)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_pool_bulk_ops_keep_the_invariant(ops):
    """Any interleaving of bulk get (refill), rx (kernel hands back, fanned out
    to 1-4 holders) and put (references dropped) keeps free + kernel + held ==
    total, frees a frame exactly when its last reference goes, and never hands
    out a frame twice."""
    pool = FramePool(64, 2048)
    umem = np.zeros(64 * 2048, np.uint8)
    hub = np.zeros(bulk.N_HUB, np.int64)
    ring = np.zeros(128, np.uint64)
    in_kernel: list[int] = []
    refs: list[int] = []        # outstanding references, a frame once per holder
    start = 0
    for op, n, holders in ops:
        if op == "get":
            k = _get(pool.free, pool.top, pool.state, ring, start, n, pool.shift)
            got = [int(ring[(start + i) & 127]) for i in range(k)]
            start += k
            assert not set(got) & set(in_kernel + refs), "a frame handed out twice"
            in_kernel += got
        elif op == "rx":
            take, in_kernel = in_kernel[:n], in_kernel[n:]
            _to_held(pool.state, umem.view(np.uint32), np.array(take, np.uint64), len(take),
                     holders, pool.shift, hub)
            # holders drop their references in some interleaved order
            refs = take * holders + refs
        else:
            give, refs = refs[:n], refs[n:]
            stats = np.zeros(bulk.N_STATS, np.int64)
            assert bulk.release(np.array(give + [0], np.uint64), len(give), umem, pool.free,
                                pool.top, pool.state, pool.shift, stats, hub) == 0
        pool.check()
        c = pool.census()
        assert (c["kernel"], c["held"]) == (len(in_kernel), len(set(refs)))
        assert hub[bulk.H_HELD] == c["held"]
        for f in set(refs):
            assert umem.view(np.uint32)[(f >> 2) + 1] == refs.count(f), "refcount = holders"


def test_release_of_a_frame_not_held_is_refused_and_counted():
    pool = FramePool(8, 2048)
    stats = np.zeros(bulk.N_STATS, np.int64)
    hub = np.zeros(bulk.N_HUB, np.int64)
    bad = bulk.release(np.array([0, 2048], np.uint64), 2, np.zeros(8 * 2048, np.uint8),
                       pool.free, pool.top, pool.state, pool.shift, stats, hub)
    assert bad == 2 and stats[bulk.S_VIOLATIONS] == 2
    pool.check()  # nothing was pushed twice


@njit
def _ring_roundtrip(prod, cons, slots, plocal, clocal, rounds):
    size = slots.shape[0]
    got = 0
    total = 0
    for r in range(rounds):
        n = prod_free(cons, plocal, size, 7)
        for i in range(n):
            slots[(plocal[0] + i) & (size - 1)] = r * 7 + i
        prod_submit(prod, plocal, n)
        m = cons_peek(prod, clocal, 5)
        for i in range(m):
            total += slots[(clocal[1] + i) & (size - 1)]
        cons_release(cons, clocal, m)
        got += m
    return got, total


def test_ring_ops_wrap_u32_indices():
    """Indices are free-running u32: start near the wrap point and go past it."""
    prod = np.array([0xFFFFFFF0], np.uint32)
    cons = prod.copy()
    pl = np.array([0xFFFFFFF0, 0xFFFFFFF0], np.int64)
    cl = pl.copy()
    slots = np.zeros(16, np.uint64)
    got, _ = _ring_roundtrip(prod, cons, slots, pl, cl, 100)
    assert got == 500
    assert int(cons[0]) == (0xFFFFFFF0 + 500) & 0xFFFFFFFF
    assert (int(prod[0]) - int(cons[0])) & 0xFFFFFFFF <= 16


def test_concurrent_first_imports_share_one_cache(tmp_path):
    """numba issue 4807: many processes compiling into one cache at once.
    With xdprx's cache lock, 6 cold starts in parallel all succeed, and a
    later start loads every kernel from the cache."""
    env = dict(os.environ, XDPRX_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)
    code = ("import xdprx.context as c; c.warm(); "
            "print(sum(len(k.stats.cache_hits) for k in (c.rx_burst_ctx, c.release_ctx)))")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    hits = [int(o[0]) for o in outs]
    assert hits.count(0) >= 1  # someone compiled
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and int(again.stdout) == 2, again.stderr
