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
from xdprx.umem import check_frames


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
    code = ("import xdprx.receiver as r, xdprx.loop as c; r.warm(); "
            "print(sum(len(k.stats.cache_hits) for k in (c.rx_loop, c.rx_recv)))")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    hits = [int(o[0]) for o in outs]
    assert hits.count(0) >= 1  # someone compiled
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and int(again.stdout) == 2, again.stderr


def test_pacer_never_bursts_to_catch_up(monkeypatch):
    """A sender that was descheduled must not send its backlog at full speed:
    that burst is what overruns a receiver's FILL ring on a busy machine."""
    from xdprx import pace
    clock = [100.0]
    monkeypatch.setattr(pace.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(pace.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    p = pace.Pacer(rate=1000, slack=10)
    sends = []
    for i in range(3000):
        p.wait(i)
        sends.append(clock[0])
        if i == 999:
            clock[0] += 0.5          # stalled for 500 packets' worth of time
    t = np.array(sends)
    assert t[999] - t[0] == pytest.approx(0.999)
    # in any window of 100 packets after the stall, at most 100 + slack go out
    # per 100 ms: never the 500-packet catch-up burst
    after = t[1000:]
    spans = after[100:] - after[:-100]
    assert spans.min() >= 0.1 - 10 / 1000 - 1e-9
    # and the average rate is still the asked rate
    assert (t[-1] - t[1000]) == pytest.approx(1.999, abs=0.02)
