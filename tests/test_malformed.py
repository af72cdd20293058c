"""Malformed and unusual frames: delivered correctly or passed, always counted."""
import numpy as np
import pytest
from numba import njit

import xdprx
from xdprx import testing as T
from xdprx.groups import Group, group_table
from xdprx.packet import parse_udp

from helpers import drain

G4, P = "239.1.2.3", 5000
G6 = "ff15::1234"
MC6 = b"\x33\x33\x00\x00\x12\x34"


def good4(data: bytes, **kw) -> bytes:
    return T.ipv4(G4, T.udp(40000, P, data), **kw)


def chain6(headers, upper: bytes, last: int = 17) -> bytes:
    """IPv6 frame to G6 behind extension headers [(kind, kwargs), ...], then
    @upper (protocol @last)."""
    kinds = [k for k, _ in headers] + [last]
    body = b"".join(T.ext6(k, kinds[i + 1], **kw) for i, (k, kw) in enumerate(headers))
    return T.eth(T.ipv6(G6, body + upper, nexthdr=kinds[0]), 0x86DD, dst=MC6)


def plen6(frame: bytes, n: int) -> bytes:
    """@frame with its IPv6 payload length set to @n."""
    return frame[:18] + n.to_bytes(2, "big") + frame[20:]


HBH, RT, FRAG, DST = (0, {}), (43, {}), (44, {}), (60, {})


# (name, frame, expected outcome)
CASES = [
    ("ip header cut short", T.eth(good4(b"x" * 20)[:12], 0x0800), "malformed"),
    ("ethernet only", T.eth(b"", 0x0800), "malformed"),
    ("ihl 3", T.eth(good4(b"abc", ihl=3), 0x0800), "malformed"),
    ("ihl 15 beyond the packet", T.eth(b"\x4f" + good4(b"abc")[1:], 0x0800), "malformed"),
    ("tot_len beyond the frame", T.eth(good4(b"abcd", tot_len=200), 0x0800), "malformed"),
    ("tot_len below ihl", T.eth(good4(b"abcd", tot_len=12), 0x0800), "malformed"),
    ("udp length beyond ip", T.eth(T.ipv4(G4, T.udp(1, P, b"abcd", length=100)), 0x0800), "malformed"),
    ("udp length below 8", T.eth(T.ipv4(G4, T.udp(1, P, b"abcd", length=4)), 0x0800), "malformed"),
    ("udp header cut short", T.eth(T.ipv4(G4, b"\x00\x01\x13"), 0x0800), "malformed"),
    ("ip version 5", T.eth(good4(b"abcd", version=5), 0x0800), "malformed"),
    ("vlan tag cut short", T.eth(b"", 0x8100)[:14] + b"\x00", "malformed"),
    ("ipv6 header cut short", T.eth(T.ipv6(G6, T.udp(1, P, b"abcd"))[:30], 0x86DD, dst=MC6),
     "malformed"),
    ("first fragment (MF)", T.eth(good4(b"frag", frag=0x2000), 0x0800), "fragment"),
    ("non-first fragment", T.eth(good4(b"frag", frag=100), 0x0800), "fragment"),
    # IPv6 extension headers (bpf/redirect.c MAX_EXT_HDRS = 4)
    ("ipv6 5 extension headers", chain6([HBH] + [DST] * 4, T.udp(1, P, b"five")), "ext_limit"),
    ("ipv6 6 extension headers", chain6([HBH] + [DST] * 5, T.udp(1, P, b"six")), "ext_limit"),
    ("ipv6 hop-by-hop cut short by the frame", chain6([HBH], b"")[:14 + 40 + 4], "malformed"),
    ("ipv6 hop-by-hop cut short by payload_len",
     T.eth(T.ipv6(G6, b"\x11\x00\x01\x00", nexthdr=0), 0x86DD, dst=MC6), "malformed"),
    ("ipv6 hop-by-hop longer than payload_len",
     plen6(chain6([(0, {"size": 64})], T.udp(1, P, b"abcd")), 32), "malformed"),
    ("ipv6 hdrlen beyond the payload",
     T.eth(T.ipv6(G6, b"\x11\x7f\x01\x04" + bytes(4) + T.udp(1, P, b"abcd"), nexthdr=60),
           0x86DD, dst=MC6), "malformed"),
    ("ipv6 hop-by-hop not first", chain6([DST, HBH], T.udp(1, P, b"abcd")), "malformed"),
    ("ipv6 udp cut short behind dst opts", chain6([DST], b"\x00\x01\x13"), "malformed"),
    ("ipv6 first fragment (M)", chain6([(44, {"frag_off": 1})], T.udp(1, P, b"frag")), "fragment"),
    ("ipv6 non-first fragment", chain6([HBH, (44, {"frag_off": 100 << 3})], b"frag"),
     "fragment"),
    ("ipv6 routing, segments left", chain6([(43, {"segments_left": 1})], T.udp(1, P, b"abcd")),
     "passed"),
    ("ipv6 hop-by-hop + icmpv6 (mld)", chain6([HBH], b"\x8f\x00" + bytes(6), last=58), "passed"),
    # IPv4 groups are keyed as ::ffff:a.b.c.d; an IPv6 packet to that address
    # is not the IPv4 group's (found by tests/test_fuzz_parser.py)
    ("ipv6 to an ipv4-mapped group address",
     T.eth(T.ipv6(f"::ffff:{G4}", T.udp(1, P, b"mapped")), 0x86DD, dst=MC6), "passed"),
    ("three vlan tags", T.eth(good4(b"abcd"), 0x0800, vlans=(1, 2, 3)), "passed"),
    ("tcp", T.eth(T.ipv4(G4, b"\x00" * 20, proto=6), 0x0800), "passed"),
    ("arp", T.eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, 0x0806,
                  dst=b"\xff" * 6), "passed"),
    ("802.1Q tagged", T.eth(good4(b"one vlan tag"), 0x0800, vlans=(100,)), "delivered"),
    ("802.1ad + 802.1Q", T.eth(good4(b"two vlan tags"), 0x0800, vlans=(100, 200)), "delivered"),
    ("ip options (ihl 6)", T.eth(good4(b"with options", ihl=6), 0x0800), "delivered"),
    ("ipv6", T.eth(T.ipv6(G6, T.udp(1, P, b"over ipv6")), 0x86DD, dst=MC6), "delivered"),
    ("ipv6 hop-by-hop", chain6([HBH], T.udp(1, P, b"behind hbh")), "delivered"),
    ("ipv6 destination options", chain6([(60, {"size": 16})], T.udp(1, P, b"behind dst")),
     "delivered"),
    ("ipv6 routing", chain6([RT], T.udp(1, P, b"behind rt")), "delivered"),
    ("ipv6 hop-by-hop + dst opts", chain6([HBH, DST], T.udp(1, P, b"behind two")), "delivered"),
    ("ipv6 atomic fragment", chain6([FRAG], T.udp(1, P, b"atomic frag")), "delivered"),
    ("ipv6 4 extension headers", chain6([HBH, DST, RT, DST], T.udp(1, P, b"behind four")),
     "delivered"),
    ("udp length shorter than ip payload",
     T.eth(T.ipv4(G4, T.udp(1, P, b"keep" + b"trailer", length=12)), 0x0800), "delivered"),
]

# the payloads of the "delivered" cases, in order
PAYLOADS = [b"one vlan tag", b"two vlan tags", b"with options", b"over ipv6", b"behind hbh",
            b"behind dst", b"behind rt", b"behind two", b"atomic frag", b"behind four", b"keep"]


def test_cases_are_distinct():
    assert len({f for _, f, _ in CASES}) == len(CASES)


def test_malformed_frames_counted_never_crash(pair, mode):
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [f"{G4}:{P}", f"[{G6}]:{P}"], mode=mode)
    with rx:
        before = rx.stats()["xdp"]
        frames = [f for _, f, _ in CASES]
        r = pair.run("tx", [T.sys.executable, "-m", "xdprx.testing", "send-raw",
                            "--ifname", pair.tx_if], input="\n".join(f.hex() for f in frames))
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) == len(frames)
        want = [c for c in CASES if c[2] == "delivered"]
        got = drain(rx, len(want), timeout=10)
        after = rx.stats()
        rx.umem.pool.check()
    d = {k: after["xdp"][k] - before[k] for k in before}
    expect = {o: sum(1 for c in CASES if c[2] == o)
              for o in ("malformed", "fragment", "ext_limit", "delivered")}
    assert d["malformed"] == expect["malformed"]
    assert d["fragment"] == expect["fragment"]
    assert d["ext_limit"] == expect["ext_limit"]
    assert d["redirected"] == expect["delivered"]
    # nothing vanished: everything seen was redirected or passed to the kernel
    assert d["seen"] == d["redirected"] + d["passed"]
    assert d["seen"] >= len(CASES)
    assert [p for _, p, _ in got] == PAYLOADS
    assert after["receiver"]["rejected"] == 0 and after["drops"] == 0


@njit
def _parse(b, ga, gp):
    return parse_udp(b, 0, b.shape[0], ga, gp)


@pytest.mark.parametrize("name,frame,outcome", CASES, ids=[c[0] for c in CASES])
def test_user_space_parser_agrees(name, frame, outcome):
    """The Numba parser (second line of defence) accepts exactly what the
    XDP program delivers, and finds the same payload."""
    ga, gp = group_table([Group.parse(f"{G4}:{P}"), Group.parse(f"[{G6}]:{P}")])
    off, ln, sub = _parse(np.frombuffer(frame, np.uint8).copy(), ga, gp)
    assert (sub >= 0) == (outcome == "delivered")
    if sub >= 0:
        assert frame[off:off + ln] == PAYLOADS[[c[1] for c in CASES if c[2] == "delivered"]
                                               .index(frame)]
