"""The foundation: real multicast through the real XDP program into a real
AF_XDP socket and out of Receiver, byte for byte, in native and skb mode."""
import numpy as np
import pytest

import xdprx
from xdprx import fanout
from xdprx.testing import payloads, send_cmd
from xdprx.umem import FREE

from helpers import drain, xdp_attached

GROUP = "239.1.2.3:5000"


def test_20000_random_sizes_every_byte_in_order(pair, mode):
    n, seed = 20000, 11
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], mode=mode)
    with rx:
        assert rx.mode == mode and rx.zerocopy is False  # veth: copy mode only
        sender = pair.popen("tx", send_cmd(GROUP, n, seed=seed, rate=25000))
        got = drain(rx, n, timeout=60, sender=sender)
        assert sender.wait(timeout=30) == 0
        st = rx.stats()
        rx.umem.pool.check()
    expected = payloads(seed, n)
    # every packet counted: sent = received + counted drops, and no drops when paced
    assert st["drops"] == 0, st["xsk"]
    assert len(got) == n
    assert [s for s, _, _ in got] == list(range(n)), "sequence numbers are 0..n-1 in order"
    for i, (_, data, g) in enumerate(got):
        assert data == expected[i], f"payload {i} differs"
        assert g == GROUP
    assert st["xdp"]["redirected"] == n and st["receiver"]["packets"] == n
    assert st["receiver"]["rejected"] == 0 and st["receiver"]["violations"] == 0
    # clean exit: every frame back in the pool, nothing attached
    assert rx.umem.pool.census() == {"free": rx.umem.pool.total, "fill": 0, "kernel": 0,
                                     "held": 0}
    rx.umem.pool.check()
    assert not xdp_attached(pair)


def test_batch_arrays_and_headroom_descriptor(pair):
    n, seed = 500, 3
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP, "239.1.2.4:5001"], batch_size=64)
    with rx:
        sender = pair.popen("tx", send_cmd(GROUP, n, seed=seed, lo=64, hi=200, rate=20000))
        expected = payloads(seed, n, 64, 200)
        seen = 0
        while seen < n:
            b = rx.recv(timeout=5)
            assert len(b), "timed out"
            assert len(b) <= 64
            assert b.offsets.dtype == np.uint64 and b.lengths.dtype == np.uint32
            assert b.seqs.dtype == np.uint64 and b.umem.dtype == np.uint8
            desc = fanout.descriptors(rx.umem.area, rx.umem.frame_size)
            for i in range(len(b)):
                off, ln = int(b.offsets[i]), int(b.lengths[i])
                assert bytes(b.umem[off:off + ln]) == expected[int(b.seqs[i])]
                d = desc[int(b.frames[i]) // rx.umem.frame_size]
                assert d["magic"] == fanout.DESC_MAGIC and d["version"] == fanout.DESC_VERSION
                assert d["payload_len"] == ln and d["seq"] == b.seqs[i] and d["sub_id"] == 0
                assert d["refcnt"] == 1 and d["ts_ns"] == b.timestamp_ns
                # the packet itself starts behind the descriptor, in the frame
                assert d["pkt_off"] >= fanout.DESC_SIZE
                assert int(b.frames[i]) + d["payload_off"] == off
            held = rx.umem.pool.census()["held"]
            assert held == len(b)
            seen += len(b)
        sender.wait(timeout=30)
    assert (rx.umem.pool.state == FREE).all()


def test_ipv6_group(pair):
    g6 = "[ff15::1234]:6000"
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [g6], mode="native")
    with rx:
        # 1452 B: the largest UDP payload an IPv6 packet carries unfragmented at MTU 1500
        sender = pair.popen("tx", send_cmd(g6, 300, seed=5, hi=1452, rate=20000))
        got = drain(rx, 300, sender=sender)
        sender.wait(timeout=30)
        assert rx.stats()["drops"] == 0
    assert [d for _, d, _ in got] == payloads(5, 300, hi=1452)
    assert {g for _, _, g in got} == {g6}


def test_invalid_receiver_arguments(pair):
    with pair.inside("rx"):
        with pytest.raises(xdprx.ConfigError, match="not a multicast"):
            xdprx.Receiver(pair.rx_if, ["198.18.0.9:5000"])
        with pytest.raises(xdprx.ConfigError, match="power of two"):
            xdprx.Receiver(pair.rx_if, [GROUP], frames=3000)
        with pytest.raises(xdprx.ConfigError, match="unknown interface"):
            xdprx.Receiver("xrx-nope", [GROUP])
    assert not xdp_attached(pair)


def test_group_membership_joined_and_left(pair):
    """IGMP / MLD: the interface is a member while receiving, not after."""
    def maddrs():
        return pair.run("rx", ["ip", "maddr", "show", "dev", pair.rx_if]).stdout
    assert "239.1.2.3" not in maddrs()
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP, "[ff15::99]:5000"])
    with rx:
        m = maddrs()
        assert "239.1.2.3" in m and "ff15::99" in m
    m = maddrs()
    assert "239.1.2.3" not in m and "ff15::99" not in m
