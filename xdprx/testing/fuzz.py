"""Parser fuzzing: the XDP program and the receive loop's parser against an
independent reference, frame by frame.

    python -m xdprx.testing.fuzz --frames 1000000 [--seed S] [--workers N] [--json]
    python -m xdprx.testing.fuzz --seed S --index I       # replay one frame, verbose
    xdprx stress fuzz ...                         # the same

Every generated frame is decided three times:

  bpf        bpf/redirect.c itself, built and loaded the way xdprx loads it
             (bpfprog.XdpProgram) with a few subscriptions in its own
             `subscriptions` map, run on the frame through BPF_PROG_RUN. No
             AF_XDP socket is in `xsks`, so a frame the program would redirect
             takes bpf_redirect_map's XDP_PASS fallback and bumps no_socket:
             that counter is the redirect decision. The per-CPU counters are
             read (one batch lookup) after every frame and the difference says
             which one it bumped: malformed, fragment, ext_limit, no_socket, or
             none (a plain pass).
  user       packet.parse_udp, the receive loop's re-parse, called from a Numba
             kernel the way bulk.rx_burst calls it: on a UMEM-like byte array
             with the frame at an address behind 256 bytes of headroom,
             surrounded by garbage, with the subscription table the receiver
             builds (groups.group_table). Bounds-checked: a read at or past the
             frame's end raises.
  reference  reference() below: scapy decodes the headers, the rules are
             those documented at the top of bpf/redirect.c, and subscriptions
             are looked up per address family (an IPv4 group is never matched
             by an IPv6 packet).

They must agree: bpf's verdict equals the reference's; the user parser accepts
exactly the frames the reference redirects, with the reference's payload
offset, payload length and subscription id. A disagreement prints the frame
in hex with the three verdicts and the seed and index that replay it.

BPF_PROG_RUN cannot hand a program more than one page of linear data (the
rest goes to fragments, which redirect.c, not an xdp.frags program, does not
see): for a frame longer than that limit (probed at start, 3520 B on x86-64)
bpf is compared with the reference's verdict on the part the program sees,
while user and the reference still judge the whole frame. Frames shorter than
an Ethernet header (14 B) are refused by BPF_PROG_RUN, as no driver delivers
them: only user and the reference judge those.

The generator is seeded per frame (frame i of seed S is the same whatever the
frame count, chunking or worker count). The seed comes from --seed, else
$XDPRX_FUZZ_SEED, else the clock, and is printed in the summary.
"""
from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import logging
import os
import random
import struct
import sys
import time
from collections import Counter
from ctypes import POINTER, Structure, c_int, c_size_t, c_uint32, c_void_p

import numpy as np

logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,  # noqa: E402
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Dot1Q, Ether  # noqa: E402

import numba  # noqa: E402

from ..groups import Group, group_table  # noqa: E402
from ..packet import parse_udp  # noqa: E402

# ---- verdicts --------------------------------------------------------------
PASS, MALFORMED, FRAGMENT, REDIRECT, EXT_LIMIT = "pass", "malformed", "fragment", "redirect", \
    "ext_limit"
VERDICTS = (PASS, MALFORMED, FRAGMENT, REDIRECT, EXT_LIMIT)
NA = "n/a"  # BPF_PROG_RUN refuses frames under 14 bytes

# The subscriptions every parser is given; the id of each is its index, as in
# xdprx.receiver (map value i <-> row i of the group table).
GROUPS = ("239.1.2.3:5000", "239.1.2.3:5001", "239.255.0.1:6000", "224.0.1.129:319",
          "[ff15::1234]:5000", "[ff02::fb]:5353", "[ff3e::8000:1]:7000", "[ff05::1:3]:5000")
MAX_EXT_HDRS = 4  # documented in bpf/redirect.c; the reference's own copy
EXT_HDRS = {0: IPv6ExtHdrHopByHop, 43: IPv6ExtHdrRouting, 44: IPv6ExtHdrFragment,
            60: IPv6ExtHdrDestOpt}
ETH_P_IP, ETH_P_IPV6, VLAN_TPIDS = 0x0800, 0x86DD, (0x8100, 0x88A8)


# ---- the reference -----------------------------------------------------------
def subscriptions(groups=GROUPS) -> dict:
    """{(ipaddress object, port): subscription id}: IPv4Address and
    IPv6Address never compare equal, so the lookup is per family."""
    return {(g.addr, g.port): i for i, g in enumerate(Group.parse(s) for s in groups)}


def reference(frame: bytes, subs: dict) -> tuple[str, int, int, int]:
    """(verdict, payload offset, payload length, subscription id) of @frame,
    offset/length/id only for REDIRECT (else 0, 0, -1).

    Rules, from bpf/redirect.c's documentation, first match wins:
      Ethernet: shorter than 14 B -> malformed. Up to two VLAN tags (802.1Q or
        802.1ad, either order); a tag cut short -> malformed. Then an EtherType
        other than IPv4/IPv6 (ARP, a third tag, 802.3 lengths) -> pass.
      IPv4: fixed header cut short, version != 4 or IHL < 5 -> malformed (the
        header the program must read to know the protocol). Protocol not UDP
        -> pass, nothing more is checked. Total length below IHL or beyond the
        frame -> malformed. MF set or offset != 0 -> fragment. The UDP header
        must fit the IP datagram, UDP length >= 8 and within the datagram,
        else malformed. (Ethernet padding after the datagram is allowed; a UDP
        length shorter than the datagram is honoured; checksums are not
        checked, zero or not.)
      IPv6: fixed header cut short or version != 6 -> malformed. First next
        header neither UDP nor an extension header (0, 43, 44, 60) -> pass.
        Payload length beyond the frame -> malformed. Extension headers, at
        most MAX_EXT_HDRS: a header type that is neither -> pass (ICMPv6, ESP,
        No Next Header...); one more extension header than the bound ->
        ext_limit; a header whose 8 first bytes do not fit the payload ->
        malformed; hop-by-hop not first -> malformed; a fragment header with
        offset != 0 or M -> fragment if it announces UDP, else pass (an atomic
        fragment is 8 B of a whole datagram); routing with segments left ->
        pass; a header whose length runs past the payload -> malformed. Then
        UDP as for IPv4, bounded by the IPv6 payload.
      Both: (destination, UDP destination port) subscribed -> redirect, else
        pass.
    """
    n = len(frame)
    if n < 14:
        return MALFORMED, 0, 0, -1
    eth = Ether(frame[:14])
    etype = getattr(eth, "type", None)  # scapy makes 802.3 frames Dot3 (no type)
    off = 14
    for _ in range(2):
        if etype not in VLAN_TPIDS:
            break
        if n - off < 4:
            return MALFORMED, 0, 0, -1
        etype = Dot1Q(frame[off:off + 4]).type
        off += 4
    if etype == ETH_P_IP:
        return _reference4(frame, off, subs)
    if etype == ETH_P_IPV6:
        return _reference6(frame, off, subs)
    return PASS, 0, 0, -1


def _reference4(frame: bytes, l3: int, subs: dict):
    if len(frame) - l3 < 20:
        return MALFORMED, 0, 0, -1
    ip = IP(frame[l3:l3 + 20])
    if ip.version != 4 or ip.ihl < 5:
        return MALFORMED, 0, 0, -1
    if ip.proto != 17:
        return PASS, 0, 0, -1
    hlen, total = ip.ihl * 4, ip.len
    if total < hlen or l3 + total > len(frame):
        return MALFORMED, 0, 0, -1
    if ip.flags.MF or ip.frag:
        return FRAGMENT, 0, 0, -1
    return _reference_udp(frame, l3 + hlen, l3 + total, ipaddress.IPv4Address(ip.dst), subs)


def _reference6(frame: bytes, l3: int, subs: dict):
    if len(frame) - l3 < 40:
        return MALFORMED, 0, 0, -1
    ip6 = IPv6(frame[l3:l3 + 40])
    if ip6.version != 6:
        return MALFORMED, 0, 0, -1
    nh = ip6.nh
    if nh != 17 and nh not in EXT_HDRS:
        return PASS, 0, 0, -1
    end = l3 + 40 + ip6.plen
    if end > len(frame):
        return MALFORMED, 0, 0, -1
    p, seen = l3 + 40, 0
    while nh != 17:
        if nh not in EXT_HDRS:
            return PASS, 0, 0, -1
        if seen == MAX_EXT_HDRS:
            return EXT_LIMIT, 0, 0, -1
        if end - p < 8:
            return MALFORMED, 0, 0, -1
        if nh == 0 and seen:
            return MALFORMED, 0, 0, -1
        h = EXT_HDRS[nh](frame[p:p + 8])
        if nh == 44:
            if h.offset or h.m:
                return (FRAGMENT if h.nh == 17 else PASS), 0, 0, -1
            size = 8
        else:
            if nh == 43 and h.segleft:
                return PASS, 0, 0, -1
            size = (h.len + 1) * 8
        if p + size > end:
            return MALFORMED, 0, 0, -1
        nh, p, seen = h.nh, p + size, seen + 1
    return _reference_udp(frame, p, end, ipaddress.IPv6Address(ip6.dst), subs)


def _reference_udp(frame: bytes, u: int, end: int, dst, subs: dict):
    if end - u < 8:
        return MALFORMED, 0, 0, -1
    udp = UDP(frame[u:u + 8])
    if udp.len < 8 or u + udp.len > end:
        return MALFORMED, 0, 0, -1
    sub = subs.get((dst, udp.dport))
    if sub is None:
        return PASS, 0, 0, -1
    return REDIRECT, u + 8, udp.len - 8, sub


# ---- the generator -------------------------------------------------------------
_SUBS = [Group.parse(s) for s in GROUPS]
_SUB4 = [(g.addr.packed, g.port) for g in _SUBS if g.addr.version == 4]
_SUB6 = [(g.addr.packed, g.port) for g in _SUBS if g.addr.version == 6]
_PORTS = sorted({g.port for g in _SUBS} | {9, 4000, 65535})
_OTHER4 = [ipaddress.IPv4Address(a).packed for a in
           ("239.1.2.4", "239.0.0.1", "224.0.0.1", "10.0.0.1", "255.255.255.255", "0.0.0.0")]
_OTHER6 = [ipaddress.IPv6Address(a).packed for a in
           ("ff15::1235", "ff02::1", "ff05::1:4", "fe80::1", "2001:db8::1", "::")]
# IPv6 destinations that carry a subscribed IPv4 group (::ffff:a.b.c.d)
_MAPPED6 = [(b"\0" * 10 + b"\xff\xff" + a, p) for a, p in _SUB4]
_NON_UDP4 = (1, 2, 6, 47, 50, 89, 103, 132, 0, 255)
_NON_UDP6 = (58, 6, 59, 50, 51, 135, 139, 140, 253, 132)


def _csum(b: bytes) -> int:
    if len(b) & 1:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _vlans(rng: random.Random, n: int | None = None) -> bytes:
    if n is None:
        n = rng.choices((0, 1, 2), (6, 2, 2))[0]
    return b"".join(struct.pack("!HH", rng.choice(VLAN_TPIDS), rng.getrandbits(16))
                    for _ in range(n))


def _eth(rng: random.Random, ethertype: int, l3: bytes, vlans: bytes | None = None) -> bytes:
    dst = rng.choice((b"\x01\x00\x5e\x01\x02\x03", b"\x33\x33\x00\x00\x12\x34",
                      b"\xff" * 6, b"\x02\x00\x00\x00\x00\x01"))
    return (dst + b"\x02\x00\x00\x00\x00\x02" + (_vlans(rng) if vlans is None else vlans)
            + struct.pack("!H", ethertype) + l3)


def _size(rng: random.Random) -> int:
    return rng.choice((0, 1, rng.randrange(64), rng.randrange(600), rng.randrange(1473)))


def _udp(rng: random.Random, dport: int, data: bytes, length: int | None = None) -> bytes:
    csum = rng.choice((0, 0, rng.getrandbits(16)))  # zero: no checksum (IPv4)
    sport = rng.choice((rng.getrandbits(16), rng.choice((0, 1, 53, 5000, 40000))))
    return struct.pack("!HHHH", sport, dport,
                       8 + len(data) if length is None else length, csum) + data


def _options4(rng: random.Random, n: int) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return b"\x01" * (n - 1) + b"\x00"  # NOPs, EOL
    if kind == 1 and n >= 4:
        return b"\x94\x04\x00\x00" + b"\x01" * (n - 4)  # router alert
    return rng.randbytes(n)


def _ipv4(rng: random.Random, dst: bytes, proto: int, payload: bytes, ihl: int = 5,
          total: int | None = None, frag: int | None = None, version: int = 4) -> bytes:
    opts = _options4(rng, ihl * 4 - 20) if ihl > 5 else b""
    if frag is None:
        frag = rng.choice((0, 0x4000))  # DF or not: never a fragment
    tot = 20 + len(opts) + len(payload) if total is None else total
    src = bytes((10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)))
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | (ihl & 15), rng.getrandbits(8),
                      tot & 0xFFFF, rng.getrandbits(16), frag, rng.randrange(1, 256), proto, 0,
                      src, dst)
    csum = rng.choice((_csum(hdr + opts), 0, rng.getrandbits(16)))
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + opts + payload


def _ipv6(rng: random.Random, dst: bytes, nh: int, payload: bytes, plen: int | None = None,
          version: int = 6) -> bytes:
    src = rng.choice((b"\xfe\x80" + bytes(6), b"\x20\x01\x0d\xb8" + bytes(4))) + rng.randbytes(8)
    return struct.pack("!IHBB16s16s", (version << 28) | rng.getrandbits(28),
                       (len(payload) if plen is None else plen) & 0xFFFF, nh,
                       rng.randrange(1, 256), src, dst) + payload


def _ext(rng: random.Random, kind: int, nh: int, units: int | None = None, segleft: int = 0,
         frag: int = 0) -> bytes:
    """One IPv6 extension header announcing @nh: hop-by-hop / destination
    options (0 / 60) and routing (43) of @units 8-byte units, fragment (44)
    with @frag = offset << 3 | M."""
    if kind == 44:
        res = rng.choice((0, 0, rng.getrandbits(8)))
        return struct.pack("!BBHI", nh, res, frag | rng.choice((0, 0, 2, 4, 6)),
                           rng.getrandbits(32))
    if units is None:
        units = rng.choice((1, 1, 1, 2, 3, rng.randrange(1, 9), rng.randrange(1, 9),
                            rng.randrange(1, 257)))  # up to 2 KB
    if kind == 43:
        rtype = rng.choice((0, 2, 3, 4, rng.getrandbits(8)))
        return struct.pack("!BBBB", nh, units - 1, rtype, segleft) + rng.randbytes(units * 8 - 4)
    body = units * 8 - 2
    style = rng.randrange(3)
    if style == 0:
        opts = _pad(body)  # PadN
    elif style == 1:
        opts = b"\x00" * body  # Pad1s
    else:  # router alert (hop-by-hop, MLD) then padding
        opts = b"\x05\x02\x00\x00" + _pad(body - 4)
    return struct.pack("!BB", nh, units - 1) + opts


def _pad(n: int) -> bytes:
    """@n bytes of IPv6 option padding: PadN options, a Pad1 for a last byte."""
    out = b""
    while n > 0:
        if n == 1:
            return out + b"\x00"
        k = min(n - 2, 255)
        out += bytes((1, k)) + bytes(k)
        n -= k + 2
    return out


def _chain(rng: random.Random, kinds, last: int, special: dict | None = None) \
        -> tuple[int, bytes]:
    """Extension headers of @kinds in order, the last announcing @last; returns
    (first next header, bytes). @special maps a position to _ext kwargs."""
    special = special or {}
    nxt = list(kinds[1:]) + [last]
    body = b"".join(_ext(rng, k, nxt[i], **special.get(i, {})) for i, k in enumerate(kinds))
    return (kinds[0] if kinds else last), body


def _valid_chain(rng: random.Random, n: int) -> list[int]:
    """@n extension header types in an order redirect.c accepts."""
    kinds = []
    for i in range(n):
        choice = [43, 44, 60] + ([0, 0] if i == 0 else [])
        kinds.append(rng.choice(choice))
    return kinds


def _target4(rng: random.Random) -> tuple[bytes, int]:
    if rng.random() < 0.7:
        return rng.choice(_SUB4)
    return (rng.choice(_OTHER4 + [a for a, _ in _SUB4]),
            rng.choice(_PORTS + [rng.randrange(1, 65536)]))


def _target6(rng: random.Random) -> tuple[bytes, int]:
    if rng.random() < 0.7:
        return rng.choice(_SUB6)
    return (rng.choice(_OTHER6 + [a for a, _ in _SUB6]),
            rng.choice(_PORTS + [rng.randrange(1, 65536)]))


def _v4(rng: random.Random, data: bytes | None = None, ihl: int = 5, **kw) -> bytes:
    dst, port = _target4(rng)
    data = rng.randbytes(_size(rng)) if data is None else data
    return _eth(rng, ETH_P_IP, _ipv4(rng, dst, 17, _udp(rng, port, data), ihl=ihl, **kw))


def _v6(rng: random.Random, kinds=(), data: bytes | None = None, target=None,
        special: dict | None = None) -> bytes:
    dst, port = target or _target6(rng)
    data = rng.randbytes(_size(rng)) if data is None else data
    nh, ext = _chain(rng, list(kinds), 17, special)
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, ext + _udp(rng, port, data)))


# One builder per frame class; CLASSES below gives each a weight and the
# verdict it must produce at least once in a run (the run's coverage check).
def c_v4_udp(rng):
    return _v4(rng)


def c_v4_options(rng):
    return _v4(rng, ihl=rng.randrange(6, 16))


def c_v4_bad_ihl(rng):
    return _v4(rng, ihl=rng.randrange(5))


def c_v4_bad_version(rng):
    return _v4(rng, version=rng.choice((0, 5, 6, 15)))


def c_v4_bad_total(rng):
    dst, port = _target4(rng)
    ihl = rng.choice((5, 5, rng.randrange(6, 16)))
    udp = _udp(rng, port, rng.randbytes(_size(rng)))
    real = ihl * 4 + len(udp)
    total = rng.choice((rng.randrange(ihl * 4), rng.randrange(ihl * 4, ihl * 4 + 8),
                        real + rng.randrange(1, 64), rng.getrandbits(16), real - 1))
    return _eth(rng, ETH_P_IP, _ipv4(rng, dst, 17, udp, ihl=ihl, total=max(total, 0)))


def _frag4(rng, where):
    off = 0 if where == "first" else rng.randrange(1, 8192)
    mf = 0 if where == "last" else 0x2000
    dst, port = _target4(rng)
    proto = 17 if rng.random() < 0.8 else rng.choice(_NON_UDP4)
    payload = _udp(rng, port, rng.randbytes(_size(rng))) if off == 0 else rng.randbytes(_size(rng))
    flags = mf | rng.choice((0, 0x4000, 0x8000))  # DF or the reserved bit set too: ignored
    return _eth(rng, ETH_P_IP, _ipv4(rng, dst, proto, payload, ihl=rng.choice((5, 5, 6)),
                                     frag=flags | off))


def c_v4_frag_first(rng):
    return _frag4(rng, "first")


def c_v4_frag_middle(rng):
    return _frag4(rng, "middle")


def c_v4_frag_last(rng):
    return _frag4(rng, "last")


def c_v4_non_udp(rng):
    dst, _ = _target4(rng)
    return _eth(rng, ETH_P_IP, _ipv4(rng, dst, rng.choice(_NON_UDP4),
                                     rng.randbytes(_size(rng)), ihl=rng.choice((5, 5, 6))))


def c_v6_udp(rng):
    return _v6(rng)


def c_v6_ext(rng):
    return _v6(rng, _valid_chain(rng, rng.randrange(1, MAX_EXT_HDRS + 1)))


def c_v6_ext_long(rng):
    return _v6(rng, _valid_chain(rng, rng.randrange(MAX_EXT_HDRS + 1, MAX_EXT_HDRS + 5)))


def c_v6_routing_segleft(rng):
    kinds = _valid_chain(rng, rng.randrange(1, MAX_EXT_HDRS + 1))
    i = rng.randrange(len(kinds))
    kinds[i] = 43
    return _v6(rng, kinds, special={i: {"segleft": rng.randrange(1, 256)}})


def _frag6(rng, where):
    off = 0 if where == "first" else rng.randrange(1, 8192)
    m = 0 if where == "last" else 1
    kinds = _valid_chain(rng, rng.randrange(0, MAX_EXT_HDRS))
    kinds = [k if k != 44 else 60 for k in kinds]
    i = len(kinds)
    kinds.append(44)
    dst, port = _target6(rng)
    last = 17 if rng.random() < 0.8 else rng.choice(_NON_UDP6)
    upper = _udp(rng, port, rng.randbytes(_size(rng))) if off == 0 else rng.randbytes(_size(rng))
    nh, ext = _chain(rng, kinds, last, {i: {"frag": (off << 3) | m}})
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, ext + upper))


def c_v6_frag_first(rng):
    return _frag6(rng, "first")


def c_v6_frag_middle(rng):
    return _frag6(rng, "middle")


def c_v6_frag_last(rng):
    return _frag6(rng, "last")


def c_v6_hbh_not_first(rng):
    kinds = _valid_chain(rng, rng.randrange(1, MAX_EXT_HDRS))
    kinds.insert(rng.randrange(1, len(kinds) + 1), 0)
    return _v6(rng, kinds)


def c_v6_ext_bad_length(rng):
    """An extension header (or the payload length) that runs past the payload."""
    kinds = _valid_chain(rng, rng.randrange(1, MAX_EXT_HDRS + 1))
    dst, port = _target6(rng)
    nh, ext = _chain(rng, kinds, 17)
    body = ext + _udp(rng, port, rng.randbytes(rng.randrange(64)))
    how = rng.randrange(3)
    if how == 0:  # payload length shorter than the headers
        plen = rng.randrange(len(ext) + 1)
        return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, body, plen=plen))
    if how == 1:  # payload length beyond the frame
        return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, body, plen=len(body) + rng.randrange(1, 300)))
    # a header length byte lying (the fragment header has none)
    starts, p = [], 0
    for k in kinds:
        if k != 44:
            starts.append(p)
        p += 8 if k == 44 else (ext[p + 1] + 1) * 8
    if not starts:
        return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, body, plen=len(ext) - 1))
    at = rng.choice(starts)
    lie = rng.choice((rng.getrandbits(8), 255, ext[at + 1] + 1))
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, body[:at + 1] + bytes([lie]) + body[at + 2:]))


def c_v6_non_udp(rng):
    dst, _ = _target6(rng)
    kinds = _valid_chain(rng, rng.randrange(0, MAX_EXT_HDRS + 1))
    nh, ext = _chain(rng, kinds, rng.choice(_NON_UDP6))
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, ext + rng.randbytes(_size(rng))))


def c_v6_bad_version(rng):
    dst, port = _target6(rng)
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, 17, _udp(rng, port, rng.randbytes(_size(rng))),
                                       version=rng.choice((0, 4, 7, 15))))


def c_udp_len_long(rng):
    data = rng.randbytes(_size(rng))
    length = 8 + len(data) + rng.choice((1, 2, 8, rng.randrange(1, 2000)))
    if rng.random() < 0.5:
        dst, port = _target4(rng)
        return _eth(rng, ETH_P_IP, _ipv4(rng, dst, 17, _udp(rng, port, data, length & 0xFFFF)))
    dst, port = _target6(rng)
    nh, ext = _chain(rng, _valid_chain(rng, rng.randrange(0, 3)), 17)
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, ext + _udp(rng, port, data, length & 0xFFFF)))


def c_udp_len_short(rng):
    data = rng.randbytes(rng.randrange(1, 600))
    length = rng.choice((rng.randrange(8), rng.randrange(8, 8 + len(data))))
    if rng.random() < 0.5:
        dst, port = _target4(rng)
        return _eth(rng, ETH_P_IP, _ipv4(rng, dst, 17, _udp(rng, port, data, length)))
    dst, port = _target6(rng)
    nh, ext = _chain(rng, _valid_chain(rng, rng.randrange(0, 3)), 17)
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, nh, ext + _udp(rng, port, data, length)))


def c_zero_checksums(rng):
    """Valid datagrams with UDP (and IPv4 header) checksums zero."""
    data = rng.randbytes(_size(rng))
    if rng.random() < 0.5:
        dst, port = _target4(rng)
        ip = bytearray(_ipv4(rng, dst, 17, _udp(rng, port, data)))
        ip[10:12] = b"\0\0"
        ip[26:28] = b"\0\0"
        return _eth(rng, ETH_P_IP, bytes(ip))
    dst, port = _target6(rng)
    udp = bytearray(_udp(rng, port, data))
    udp[6:8] = b"\0\0"
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, 17, bytes(udp)))


def c_vlan(rng):
    """Zero to three tags, any TPID order (three: passed)."""
    n = rng.randrange(4)
    if rng.random() < 0.5:
        dst, port = _target4(rng)
        return _eth(rng, ETH_P_IP, _ipv4(rng, dst, 17, _udp(rng, port, rng.randbytes(_size(rng)))),
                    vlans=_vlans(rng, n))
    dst, port = _target6(rng)
    return _eth(rng, ETH_P_IPV6, _ipv6(rng, dst, 17, _udp(rng, port, rng.randbytes(_size(rng)))),
                vlans=_vlans(rng, n))


def c_non_ip(rng):
    kind = rng.randrange(4)
    if kind == 0:  # ARP
        return _eth(rng, 0x0806, b"\x00\x01\x08\x00\x06\x04\x00\x01" + rng.randbytes(20))
    if kind == 1:  # 802.3 length field, LLC
        return _eth(rng, rng.randrange(46, 1501), b"\xaa\xaa\x03" + rng.randbytes(_size(rng)))
    if kind == 2:  # IPv4 datagram behind the wrong EtherType
        dst, port = _target4(rng)
        return _eth(rng, rng.choice((0x86DD, 0x88CC, 0x8847, 0x9100)),
                    _ipv4(rng, dst, 17, _udp(rng, port, rng.randbytes(_size(rng)))))
    return _eth(rng, rng.getrandbits(16), rng.randbytes(_size(rng)))


def c_padded(rng):
    """Ethernet padding / trailer after the IP datagram (frames under 60 B are
    padded on the wire)."""
    f = c_v4_udp(rng) if rng.random() < 0.5 else c_v6_ext(rng)
    return f + rng.randbytes(rng.choice((1, 4, rng.randrange(1, 64))))


def c_mapped_v6(rng):
    """IPv6 to an IPv4-mapped address (::ffff:a.b.c.d) of a subscribed IPv4
    group and its port: not that group's traffic (RFC 4291 2.5.5.2: such
    addresses never appear on the wire)."""
    target = rng.choice(_MAPPED6)
    return _v6(rng, _valid_chain(rng, rng.randrange(0, 3)), target=target)


def c_jumbo(rng):
    size = rng.randrange(1473, 9000 - 62 - 8 * 16)
    if rng.random() < 0.5:
        return _v4(rng, data=rng.randbytes(size), ihl=rng.choice((5, 5, 6, 15)))
    return _v6(rng, _valid_chain(rng, rng.randrange(0, MAX_EXT_HDRS + 1)),
               data=rng.randbytes(size))


_BASES = None  # builders that truncated/mutated frames start from (set below)


def c_truncated(rng):
    """Any frame cut at a random byte (frames under 14 B included)."""
    f = rng.choice(_BASES)(rng)
    return f[:rng.randrange(len(f))]


_INTERESTING = (0, 0xFF, 17, 0, 43, 44, 60, 58, 0x45, 0x60, 0x08, 0x86, 0x81, 0x88)


def c_mutated(rng):
    """Any frame with 1 to 4 bytes of its headers overwritten."""
    f = bytearray(rng.choice(_BASES)(rng))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(min(len(f), 120))
        f[i] = rng.choice(_INTERESTING) if rng.random() < 0.4 else rng.getrandbits(8)
    return bytes(f)


# name -> (builder, weight, a verdict the class must produce at least once)
CLASSES = {
    "v4_udp": (c_v4_udp, 6, REDIRECT),
    "v4_options": (c_v4_options, 4, REDIRECT),
    "v4_bad_ihl": (c_v4_bad_ihl, 2, MALFORMED),
    "v4_bad_version": (c_v4_bad_version, 1, MALFORMED),
    "v4_bad_total_length": (c_v4_bad_total, 3, MALFORMED),
    "v4_fragment_first": (c_v4_frag_first, 2, FRAGMENT),
    "v4_fragment_middle": (c_v4_frag_middle, 2, FRAGMENT),
    "v4_fragment_last": (c_v4_frag_last, 2, FRAGMENT),
    "v4_non_udp": (c_v4_non_udp, 2, PASS),
    "v6_udp": (c_v6_udp, 4, REDIRECT),
    "v6_ext": (c_v6_ext, 8, REDIRECT),
    "v6_ext_beyond_bound": (c_v6_ext_long, 4, EXT_LIMIT),
    "v6_routing_segments_left": (c_v6_routing_segleft, 2, PASS),
    "v6_fragment_first": (c_v6_frag_first, 2, FRAGMENT),
    "v6_fragment_middle": (c_v6_frag_middle, 2, FRAGMENT),
    "v6_fragment_last": (c_v6_frag_last, 2, FRAGMENT),
    "v6_hop_by_hop_not_first": (c_v6_hbh_not_first, 2, MALFORMED),
    "v6_ext_bad_length": (c_v6_ext_bad_length, 3, MALFORMED),
    "v6_non_udp": (c_v6_non_udp, 2, PASS),
    "v6_bad_version": (c_v6_bad_version, 1, MALFORMED),
    "v6_to_v4_mapped": (c_mapped_v6, 1, PASS),
    "udp_length_long": (c_udp_len_long, 3, MALFORMED),
    "udp_length_short": (c_udp_len_short, 3, REDIRECT),
    "zero_checksums": (c_zero_checksums, 2, REDIRECT),
    "vlan_0_to_3": (c_vlan, 3, REDIRECT),
    "non_ip": (c_non_ip, 2, PASS),
    "padded": (c_padded, 2, REDIRECT),
    "jumbo": (c_jumbo, 2, REDIRECT),
    "truncated": (c_truncated, 12, MALFORMED),
    "mutated": (c_mutated, 10, MALFORMED),
}
_BASES = [b for name, (b, _, _) in CLASSES.items() if name not in ("truncated", "mutated")]
_NAMES = list(CLASSES)
_WEIGHTS = [w for _, w, _ in CLASSES.values()]


def generate(seed: int, index: int) -> tuple[str, bytes]:
    """Frame @index of run @seed: (class name, frame)."""
    rng = random.Random(seed * 1_000_003 + index)
    name = rng.choices(_NAMES, _WEIGHTS)[0]
    return name, CLASSES[name][0](rng)


# ---- the XDP program through BPF_PROG_RUN -----------------------------------------
class BpfTestRunOpts(Structure):
    """struct bpf_test_run_opts, bpf/bpf.h (libbpf 1.1)."""
    _fields_ = [("sz", c_size_t), ("data_in", c_void_p), ("data_out", c_void_p),
                ("data_size_in", c_uint32), ("data_size_out", c_uint32),
                ("ctx_in", c_void_p), ("ctx_out", c_void_p),
                ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32),
                ("retval", c_uint32), ("repeat", c_int), ("duration", c_uint32),
                ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32)]


# A handle of its own (same library): xdprx.kernel.native's declarations stay untouched.
_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
_prog_test_run = _libbpf.bpf_prog_test_run_opts
_prog_test_run.argtypes = [c_int, POINTER(BpfTestRunOpts)]
_prog_test_run.restype = c_int
_map_lookup_batch = _libbpf.bpf_map_lookup_batch
_map_lookup_batch.argtypes = [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32),
                              c_void_p]
_map_lookup_batch.restype = c_int

XDP_PASS = 2
# counter indices (bpfprog.COUNTER_NAMES) -> the verdict each one means
_C_SEEN, _C_REDIRECTED, _C_PASSED = 0, 1, 2
_C_VERDICT = {3: MALFORMED, 4: FRAGMENT, 5: REDIRECT, 6: EXT_LIMIT}


class BpfRunner:
    """redirect.c loaded with @groups subscribed (id = index), run per frame."""

    def __init__(self, groups=GROUPS) -> None:
        from ..kernel.bpfprog import COUNTER_NAMES, XdpProgram
        self.prog = XdpProgram()
        try:
            self.ncounters = len(COUNTER_NAMES)
            assert self.ncounters == 7 and COUNTER_NAMES[3:] == \
                ("malformed", "fragment", "no_socket", "ext_limit"), COUNTER_NAMES
            for i, spec in enumerate(groups):
                g = Group.parse(spec)
                self.prog.subscribe(g.addr, g.port, i)
            self.opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts), repeat=1)
            self._keys = np.zeros(self.ncounters, np.uint32)
            self._batch = c_uint32()
            self._count = c_uint32()
            self.linear = self._probe_linear()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.prog is not None:
            self.prog.close()  # the program and its maps go with their fds
            self.prog = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _snapshot(self, out: np.ndarray) -> None:
        """All counters, per CPU, into @out (uint64[ncounters, ncpus])."""
        self._count.value = self.ncounters
        rc = _map_lookup_batch(self.prog.counters_fd, None, ctypes.byref(self._batch),
                               self._keys.ctypes.data, out.ctypes.data,
                               ctypes.byref(self._count), None)
        if (rc and rc != -2) or self._count.value != self.ncounters:  # -ENOENT: the end
            raise OSError(-rc, f"reading the counters: {os.strerror(-rc)}")

    def _run(self, addr: int, size: int) -> int:
        o = self.opts
        o.data_in, o.data_size_in, o.data_size_out = addr, size, 0
        rc = _prog_test_run(self.prog.prog_fd, ctypes.byref(o))
        if rc:
            return -1000 + rc
        return o.retval

    def verdicts(self, buf: np.ndarray, slots: np.ndarray) -> list[str]:
        """Run the program on each frame buf[addr:addr + len] of @slots
        (uint64[n, 2]); the verdict of each from the counter it bumped."""
        n = len(slots)
        snaps = np.zeros((n + 1, self.ncounters, self.prog.ncpus), np.uint64)
        rets = np.full(n, XDP_PASS, np.int64)
        base = buf.ctypes.data
        self._snapshot(snaps[0])
        for i in range(n):
            addr, size = int(slots[i, 0]), int(slots[i, 1])
            if size < 14:
                snaps[i + 1] = snaps[i]
                continue
            rets[i] = self._run(base + addr, size)
            self._snapshot(snaps[i + 1])
        d = np.diff(snaps.sum(axis=2).astype(np.int64), axis=0)
        out = []
        for i in range(n):
            if slots[i, 1] < 14:
                out.append(NA)
                continue
            row = d[i]
            hit = [v for c, v in _C_VERDICT.items() if row[c]]
            ok = (rets[i] == XDP_PASS and row[_C_SEEN] == 1 and row[_C_PASSED] == 1
                  and row[_C_REDIRECTED] == 0 and len(hit) <= 1
                  and all(row[c] in (0, 1) for c in _C_VERDICT))
            out.append((hit[0] if hit else PASS) if ok else
                       f"odd(ret={rets[i]}, counters={row.tolist()})")
        return out

    def _probe_linear(self) -> int:
        """The longest frame BPF_PROG_RUN shows the program whole: the longest
        subscribed datagram it still redirects."""
        g = _SUB4[0]

        def redirected(size: int) -> bool:
            data = bytes(size - 42)
            f = (bytes(12) + b"\x08\x00" + struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0,
                                                        64, 17, 0, bytes(4), g[0])
                 + struct.pack("!HHHH", 1, g[1], size - 34, 0) + data)
            arr = np.frombuffer(f, np.uint8).copy()
            return self.verdicts(arr, np.array([[0, len(f)]], np.uint64))[0] == REDIRECT

        lo, hi = 64, 16384  # redirected(lo), not redirected(hi)
        if not redirected(lo) or redirected(hi):
            raise RuntimeError("BPF_PROG_RUN: a plain subscribed datagram is not redirected")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if redirected(mid) else (lo, mid)
        return lo


# ---- the receive loop's parser ---------------------------------------------------------
HEADROOM = 256  # XDP_PACKET_HEADROOM: where a frame starts in its UMEM chunk


@numba.njit(cache=True, nogil=True, boundscheck=True)
def _user_parse(umem, slots, g_addr, g_port, out):
    """bulk.rx_burst's call of parse_udp, per slot; each frame sees the UMEM
    only up to its own end, so a read past the frame raises IndexError."""
    for i in range(slots.shape[0]):
        addr = slots[i, 0]
        ln = slots[i, 1] & 0xFFFFFFFF
        end = addr + ln
        off, plen, sub = parse_udp(umem[:end], addr, end, g_addr, g_port)
        out[i, 0] = off
        out[i, 1] = plen
        out[i, 2] = sub


class UserParser:
    def __init__(self, groups=GROUPS) -> None:
        self.g_addr, self.g_port = group_table([Group.parse(s) for s in groups])

    def parse(self, umem: np.ndarray, slots: np.ndarray) -> list[tuple[int, int, int]]:
        """(payload offset from the frame's start, payload length, group or -1)."""
        out = np.zeros((len(slots), 3), np.int64)
        try:
            _user_parse(umem, slots, self.g_addr, self.g_port, out)
        except IndexError:  # find which: one frame at a time
            for i in range(len(slots)):
                try:
                    _user_parse(umem, slots[i:i + 1], self.g_addr, self.g_port, out[i:i + 1])
                except IndexError:
                    out[i] = (-1, -1, -2)  # read past the frame's end
        res = []
        for i in range(len(slots)):
            off, plen, sub = (int(x) for x in out[i])
            res.append((off - int(slots[i, 0]), plen, sub) if sub >= 0 else (0, 0, sub))
        return res


def place(frames: list[bytes], rng: np.random.Generator, buf: np.ndarray | None = None):
    """A UMEM-like buffer of garbage holding each frame behind HEADROOM bytes
    of (garbage) headroom, 64-byte aligned; returns (buf, slots uint64[n, 2])."""
    slots = np.zeros((len(frames), 2), np.uint64)
    cur = 0
    for i, f in enumerate(frames):
        slots[i] = (cur + HEADROOM, len(f))
        cur = (cur + HEADROOM + len(f) + 63) & ~63
    if buf is None or len(buf) < cur:
        buf = rng.integers(0, 256, cur + 65536, np.uint8)
    for (addr, ln), f in zip(slots, frames):
        buf[int(addr):int(addr) + int(ln)] = np.frombuffer(f, np.uint8)
    return buf, slots


# ---- comparing ---------------------------------------------------------------------------
class Fuzzer:
    """The three parsers, with the same subscriptions."""

    def __init__(self, groups=GROUPS, seed: int = 0) -> None:
        self.subs = subscriptions(groups)
        self.user = UserParser(groups)
        self.bpf = BpfRunner(groups)
        self.linear = self.bpf.linear
        self._np_rng = np.random.default_rng(seed)
        self._buf = None

    def close(self) -> None:
        self.bpf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, frames: list[bytes]) -> list[dict]:
        """Per frame: the three verdicts and whether they agree."""
        self._buf, slots = place(frames, self._np_rng, self._buf)
        bpf = self.bpf.verdicts(self._buf, slots)
        user = self.user.parse(self._buf, slots)
        out = []
        for f, b, u in zip(frames, bpf, user):
            ref = reference(f, self.subs)
            if len(f) < 14:
                want_bpf = NA
            elif len(f) > self.linear:  # the program sees the first page only
                want_bpf = reference(f[:self.linear], self.subs)[0]
            else:
                want_bpf = ref[0]
            want_user = ref[1:] if ref[0] == REDIRECT else (0, 0, -1)
            why = []
            if b != want_bpf:
                why.append(f"bpf {b}, reference {want_bpf}")
            if u != want_user:
                why.append(f"user (payload offset, length, group) {u}, reference {want_user}")
            out.append({"reference": ref, "bpf": b, "user": u, "want_bpf": want_bpf,
                        "why": "; ".join(why)})
        return out


def _empty() -> dict:
    return {"frames": 0, "verdicts": Counter(), "bpf": Counter(), "user_accepted": 0,
            "beyond_linear": 0, "classes": {}, "disagreements": 0, "examples": []}


def check_range(fz: Fuzzer, seed: int, start: int, count: int, keep: int = 20) -> dict:
    """Frames start..start+count-1 of @seed through @fz: counts and the first
    @keep disagreements."""
    s = _empty()
    gen = [generate(seed, i) for i in range(start, start + count)]
    res = fz.check([f for _, f in gen])
    for i, ((name, f), r) in enumerate(zip(gen, res)):
        v = r["reference"][0]
        s["frames"] += 1
        s["verdicts"][v] += 1
        s["bpf"][r["bpf"]] += 1
        s["user_accepted"] += r["user"][2] >= 0
        s["beyond_linear"] += len(f) > fz.linear and v == REDIRECT
        s["classes"].setdefault(name, Counter())[v] += 1
        if r["why"]:
            s["disagreements"] += 1
            if len(s["examples"]) < keep:
                s["examples"].append({"index": start + i, "class": name, "frame": f.hex(),
                                      "reference": list(r["reference"]), "bpf": r["bpf"],
                                      "user": list(r["user"]), "why": r["why"]})
    return s


def _merge(a: dict, b: dict, keep: int = 20) -> dict:
    for k in ("frames", "user_accepted", "beyond_linear", "disagreements"):
        a[k] += b[k]
    a["verdicts"].update(b["verdicts"])
    a["bpf"].update(b["bpf"])
    for name, c in b["classes"].items():
        a["classes"].setdefault(name, Counter()).update(c)
    a["examples"] = sorted(a["examples"] + b["examples"], key=lambda e: e["index"])[:keep]
    return a


def missing_coverage(summary: dict) -> list[str]:
    """Frame classes never generated, or that never produced their verdict."""
    miss = []
    for name, (_, _, want) in CLASSES.items():
        got = summary["classes"].get(name, {})
        if not got.get(want):
            miss.append(f"{name}: no {want} among {dict(got)}")
    if not summary["beyond_linear"]:
        miss.append("jumbo: no redirected frame beyond BPF_PROG_RUN's linear limit")
    return miss


_WORKER: Fuzzer | None = None


def _worker_init(seed: int) -> None:
    global _WORKER
    _WORKER = Fuzzer(seed=seed)


def _worker_run(args) -> dict:
    seed, start, count = args
    return check_range(_WORKER, seed, start, count)


def run(frames: int, seed: int, workers: int = 1, chunk: int = 2000, progress=None) -> dict:
    """Fuzz @frames frames of @seed; the JSON-ready summary."""
    t0 = time.monotonic()
    tasks = [(seed, s, min(chunk, frames - s)) for s in range(0, frames, chunk)]
    total = _empty()
    if workers <= 1:
        with Fuzzer(seed=seed) as fz:
            linear = fz.linear
            for t in tasks:
                _merge(total, check_range(fz, *t))
                if progress:
                    progress(total)
    else:
        import multiprocessing as mp
        with Fuzzer(seed=seed) as fz:  # compiles the user kernel before the fork
            linear = fz.linear
            fz.check([generate(seed, 0)[1]])
        with mp.get_context("fork").Pool(workers, _worker_init, (seed,)) as pool:
            for part in pool.imap_unordered(_worker_run, tasks):
                _merge(total, part)
                if progress:
                    progress(total)
            pool.close()
            pool.join()
    secs = time.monotonic() - t0
    out = {"frames": total["frames"], "seed": seed, "disagreements": total["disagreements"],
           "seconds": round(secs, 1), "frames_per_second": round(total["frames"] / secs),
           "workers": max(workers, 1),
           "verdicts": dict(sorted(total["verdicts"].items())),
           "bpf_verdicts": dict(sorted(total["bpf"].items())),
           "user_accepted": total["user_accepted"],
           "linear_limit": linear, "redirected_beyond_linear_limit": total["beyond_linear"],
           "classes": {k: dict(sorted(v.items())) for k, v in sorted(total["classes"].items())},
           "examples": total["examples"]}
    out["coverage_missing"] = missing_coverage(total)
    return out


def describe(example: dict) -> str:
    return (f"frame {example['index']} ({example['class']}): {example['why']}\n"
            f"  reference {example['reference']}, bpf {example['bpf']}, user {example['user']}\n"
            f"  {example['frame']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdprx.testing.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=None,
                    help="default $XDPRX_FUZZ_SEED, else from the clock")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes, each with its own program (default: one per CPU)")
    ap.add_argument("--index", type=int, default=None, help="replay this one frame, verbosely")
    ap.add_argument("--json", action="store_true", help="one JSON summary line on stdout")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int(os.environ.get("XDPRX_FUZZ_SEED") or
                                                 time.time_ns() % 1_000_000_007)
    if a.index is not None:
        name, f = generate(seed, a.index)
        with Fuzzer(seed=seed) as fz:
            r = fz.check([f])[0]
        print(f"seed {seed} frame {a.index}: {name}, {len(f)} B\n  {f.hex()}\n"
              f"  reference {r['reference']}  bpf {r['bpf']} (expected {r['want_bpf']})  "
              f"user {r['user']}\n  {r['why'] or 'all three agree'}")
        return 1 if r["why"] else 0

    def progress(s: dict) -> None:
        if not a.json and sys.stderr.isatty():
            print(f"\r{s['frames']}/{a.frames} frames, {s['disagreements']} disagreements",
                  end="", file=sys.stderr, flush=True)

    out = run(a.frames, seed, a.workers, progress=progress)
    for e in out["examples"]:
        print(describe(e), file=sys.stderr)
    if a.json:
        print(json.dumps(out))
    else:
        print(f"\n{out['frames']} frames, seed {seed}, {out['seconds']} s: "
              f"{out['disagreements']} disagreements; reference verdicts {out['verdicts']}")
        for m in out["coverage_missing"]:
            print(f"not covered: {m}")
    return 1 if out["disagreements"] else 0


if __name__ == "__main__":
    sys.exit(main())
