"""The frame pool's state machine (umem.py) under any interleaving of its
bulk operations: refill (FILL), receive (KERNEL -> HELD, fanned out, copied
to a spare frame when ring frames run short), release, grow, trim and, with
several NUMA node pools, a switch of the pool that refills."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from xdprx import bulk
from xdprx.errors import ConfigError
from xdprx.umem import (ABSENT, FREE, P_AT_CAP, P_SPILLED, X_FOREIGN, X_SHIFT, FramePool, fill_get,
                        fill_get_foreign, grow, hold, short_of_ring_frames)

RING, CAP, FS = 16, 64, 2048


@njit
def _refill(pool, ring, start, n):
    """The active node's frames first, then (as refill does when FILL runs
    low) the other nodes'."""
    k = fill_get(pool, ring, start, n)
    return k + fill_get_foreign(pool, ring, start + k, n - k)


@njit
def _receive(pool, umem, frames, n, holders, out):
    """What rx_burst does to each received frame, descriptors aside."""
    shift = pool[5][X_SHIFT]
    for i in range(n):
        base = frames[i]
        f = np.int64(base >> shift)
        hold(pool, f)
        if short_of_ring_frames(pool, f):
            sb = bulk.spill(pool, umem, base + 256, 64, base)
            if sb >= 0:
                base = np.uint64(sb)
        pool[6][np.int64(base >> shift)] = holders
        out[i] = base


@njit
def _grow(pool, umem):
    return grow(pool, umem)


ops = st.lists(st.tuples(st.sampled_from(["refill", "rx", "put", "grow", "trim", "switch"]),
                         st.integers(0, 40), st.integers(1, 3)), max_size=80)


@given(ops, st.sampled_from([0, 4, 8]), st.sampled_from([1, 2, 4]))
@settings(max_examples=300, deadline=None)
def test_any_interleaving_keeps_the_accounting(seq, cache, nodes):
    """free + fill + kernel + held == total <= cap after every step, per
    node pool and overall; no frame is ever handed out twice; a frame is freed
    exactly when its last reference goes, into the pool of its own node, also
    after the refilling node changed; trimmed frames were free and nobody
    refers to them."""
    pool = FramePool(RING, FS, CAP, chunk=8, cache=cache, spill_at=4,
                     nodes=list(range(nodes)))
    umem = np.zeros(pool.span * FS, np.uint8)
    ring = np.zeros(32, np.uint64)
    stats = np.zeros(bulk.N_STATS, np.int64)
    foreign = 0
    in_kernel: list[int] = []
    refs: list[int] = []          # outstanding references, a frame once per holder
    start = 0
    for op, n, holders in seq:
        if op == "refill":
            k = _refill(pool.t, ring, start, min(n, 32 - len(in_kernel)))
            got = [int(ring[(start + i) & 31]) for i in range(k)]
            start += k
            assert not set(got) & set(in_kernel + refs), "a frame handed out twice"
            assert all(g >> 11 < RING * nodes for g in got), "a spare frame went to FILL"
            if pool.x[X_FOREIGN] == foreign:   # the active node had enough
                assert {pool.node_index_of(g >> 11) for g in got} <= {pool.active_index}
            foreign = int(pool.x[X_FOREIGN])
            in_kernel += got
        elif op == "rx":
            take, in_kernel = in_kernel[:n], in_kernel[n:]
            out = np.zeros(len(take) + 1, np.uint64)
            _receive(pool.t, umem, np.array(take + [0], np.uint64), len(take), holders, out)
            got = [int(x) for x in out[: len(take)]]
            assert not set(got) & set(refs), "a frame handed out twice"
            refs = got * holders + refs   # holders let go in an interleaved order
        elif op == "put":
            give, refs = refs[:n], refs[n:]
            assert bulk.release(np.array(give + [0], np.uint64), len(give),
                                pool.t, stats) == 0
        elif op == "grow":       # grows the active node's pool
            k = pool.active_index
            before = pool.nodes[k].total
            added = _grow(pool.t, umem)
            assert pool.nodes[k].total == min(before + 8, CAP) and added == pool.nodes[k].total - before
        elif op == "trim":
            for lo, hi in pool.trim():
                assert not {f >> 11 for f in refs} & set(range(lo, hi))
        else:
            pool.set_active(n % nodes)
        pool.check(fill=len(in_kernel))
        c = pool.census(len(in_kernel))
        assert c["held"] == len(set(refs)) and c["fill"] == len(in_kernel)
        assert pool.total <= CAP * nodes
        assert (pool.state[[f >> 11 for f in refs]] != ABSENT).all()
        for f in set(refs):
            assert pool.refs[f >> 11] == refs.count(f), "refcount = holders"
    # everyone lets go: every frame is FREE again
    bulk.release(np.array(refs + [0], np.uint64), len(refs), pool.t, stats)
    pool.check(fill=len(in_kernel))
    assert pool.census(len(in_kernel))["held"] == 0


@njit
def _hold_all(pool, umem, ring, n, out):
    k = fill_get(pool, ring, 0, n)
    _receive(pool, umem, ring, k, 1, out)
    return k


def test_holding_everything_grows_exactly_to_the_cap_then_stops_copying():
    pool = FramePool(RING, FS, CAP, chunk=8, cache=4, spill_at=4)
    umem = np.zeros(CAP * FS, np.uint8)
    out = np.zeros(RING, np.uint64)
    held = []
    for _ in range(20):                       # far more rounds than the cap needs
        ring = np.zeros(RING, np.uint64)
        k = _hold_all(pool.t, umem, ring, RING, out)
        held += [int(x) for x in out[:k]]
        pool.check()
    assert pool.total == CAP and len(set(held)) == CAP == len(held)
    assert pool.meta[0, P_SPILLED] == CAP - RING     # each spare frame filled once
    assert pool.meta[0, P_AT_CAP] >= 1
    assert (pool.state == 2).all()                   # every frame HELD, none twice


def test_release_of_a_frame_not_held_is_refused_and_counted():
    pool = FramePool(8, FS)
    stats = np.zeros(bulk.N_STATS, np.int64)
    bad = bulk.release(np.array([0, 2048, 9 * 2048], np.uint64), 3, pool.t, stats)
    assert bad == 3 and stats[bulk.S_VIOLATIONS] == 3
    pool.check()  # nothing was pushed twice
    assert (pool.state == FREE).all()


@pytest.mark.parametrize("kw,msg", [
    (dict(cap=24), "power of two"), (dict(cap=8), ">= --frames"),
    (dict(cache=3), "cache size"), (dict(cache=64), "cache size")])
def test_pool_geometry_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        FramePool(RING, FS, **kw)
