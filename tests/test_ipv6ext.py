"""IPv6 multicast UDP behind extension headers, through the real XDP program
on a veth into a real AF_XDP socket: delivered byte for byte up to the bound
(bpf/redirect.c MAX_EXT_HDRS), beyond it counted as ext_limit and passed to
the kernel, which still delivers it to an ordinary socket."""
import random
import re
import socket
import struct
import time

import xdprx
from xdprx import testing as T
from xdprx.kernel.bpfprog import COUNTER_NAMES, SOURCE
from xdprx.packet import MAX_EXT_HDRS

from helpers import drain

G6, P = "ff15::1234", 5000
MC6 = b"\x33\x33\x00\x00\x12\x34"
MTU = 1500

CHAINS = {
    "hop-by-hop": [(0, {})],
    "destination options": [(60, {"size": 24})],
    "routing": [(43, {"size": 16})],
    "hop-by-hop + destination options": [(0, {"size": 16}), (60, {})],
    "four, the bound": [(0, {}), (60, {}), (43, {}), (44, {})],  # 44: atomic fragment
}


def test_both_parsers_share_the_bound_and_counters():
    src = SOURCE.read_text()
    assert int(re.search(r"#define MAX_EXT_HDRS (\d+)", src).group(1)) == MAX_EXT_HDRS
    enum = re.findall(r"^\tCNT_(\w+)[ =,]", src, re.M)
    assert [e.lower() for e in enum if e != "MAX"] == list(COUNTER_NAMES)


def udp6(dport: int, data: bytes) -> bytes:
    """UDP with a correct checksum (the kernel drops IPv6 UDP without one)."""
    n = 8 + len(data)
    pseudo = (socket.inet_pton(socket.AF_INET6, T.VethPair.tx_ip6)
              + socket.inet_pton(socket.AF_INET6, G6) + struct.pack("!IxxxB", n, 17))
    seg = T.udp(40000, dport, data)
    s = T._csum(pseudo + seg + b"\0" * (len(seg) & 1)) or 0xFFFF
    return seg[:6] + struct.pack("!H", s) + seg[8:]


def frame(headers, data: bytes) -> bytes:
    kinds = [k for k, _ in headers] + [17]
    body = b"".join(T.ext6(k, kinds[i + 1], **kw) for i, (k, kw) in enumerate(headers))
    return T.eth(T.ipv6(G6, body + udp6(P, data), nexthdr=kinds[0]), 0x86DD, dst=MC6)


def ext_len(headers) -> int:
    return sum(8 if k == 44 else kw.get("size", 8) for k, kw in headers)


def send(pair, frames) -> None:
    r = pair.run("tx", [T.sys.executable, "-m", "xdprx.testing", "send-raw",
                        "--ifname", pair.tx_if], input="\n".join(f.hex() for f in frames))
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(frames)


def test_delivered_behind_extension_headers_every_byte(pair, mode):
    per_chain, seed = 40, 16
    rng = random.Random(seed)
    sent = []  # (chain, payload) in send order, the chains interleaved
    for i in range(per_chain * len(CHAINS)):
        name = list(CHAINS)[i % len(CHAINS)]
        room = MTU - 40 - ext_len(CHAINS[name]) - 8
        # sizes from empty to the largest that fits the MTU, both ends included
        size = {0: 0, 1: room}.get(i // len(CHAINS), rng.randrange(room + 1))
        sent.append((name, rng.randbytes(size)))
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [f"[{G6}]:{P}"], mode=mode)
    with rx:
        before = rx.stats()["xdp"]
        send(pair, [frame(CHAINS[c], d) for c, d in sent])
        got = drain(rx, len(sent), timeout=20)
        after = rx.stats()
        rx.umem.pool.check()
    d = {k: after["xdp"][k] - before[k] for k in before}
    assert len(got) == len(sent), d
    for i, ((chain, data), (_, payload, g)) in enumerate(zip(sent, got)):
        assert payload == data, f"payload {i} ({chain}, {len(data)} B) differs"
        assert g == f"[{G6}]:{P}"
    assert d["redirected"] == len(sent)
    assert d["malformed"] == d["ext_limit"] == d["fragment"] == 0
    assert after["receiver"]["rejected"] == 0 and after["drops"] == 0


def test_beyond_the_bound_counted_and_passed_to_the_kernel(pair):
    n = 20
    over = {MAX_EXT_HDRS + 1: [(0, {})] + [(60, {})] * MAX_EXT_HDRS,
            MAX_EXT_HDRS + 2: [(0, {})] + [(60, {})] * (MAX_EXT_HDRS + 1)}
    sent = [f"{k} headers #{i}".encode() for k in over for i in range(n)]
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [f"[{G6}]:{P}"])
        # an ordinary kernel socket on the same group and port: what XDP
        # passes, the kernel's own IPv6 stack delivers here
        ks = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        ks.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ks.bind(("::", P))
        ifindex = socket.if_nametoindex(pair.rx_if)
        ks.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                      socket.inet_pton(socket.AF_INET6, G6) + struct.pack("@I", ifindex))
        ks.settimeout(0.2)
    with rx, ks:
        before = rx.stats()["xdp"]
        send(pair, [frame(over[int(p.split()[0])], p) for p in sent])
        kernel = []
        deadline = time.monotonic() + 10
        while len(kernel) < len(sent) and time.monotonic() < deadline:
            try:
                kernel.append(ks.recv(2048))
            except socket.timeout:
                pass
        got = drain(rx, 1, timeout=1)
        after = rx.stats()
    d = {k: after["xdp"][k] - before[k] for k in before}
    assert got == []
    assert d["ext_limit"] == len(sent)
    assert d["redirected"] == 0 and d["malformed"] == 0
    assert d["passed"] >= len(sent) and d["seen"] == d["redirected"] + d["passed"]
    assert sorted(kernel) == sorted(sent)
