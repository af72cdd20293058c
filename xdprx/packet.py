"""Locating the UDP payload of a received frame (Numba).

The XDP program already validated what it redirected; this parser checks
again anyway, because a frame in the RX ring is only as trustworthy as the
program that sent it. A frame it rejects is recycled and counted, never
delivered.
"""
from __future__ import annotations

import numpy as np

from .jit import inline

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_UDP = 17
NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_DEST = 0, 43, 44, 60
# IPv6 extension headers walked before UDP; bpf/redirect.c's MAX_EXT_HDRS
MAX_EXT_HDRS = 4


@inline
def ipv6_ext(nh):
    return nh == NEXTHDR_HOP or nh == NEXTHDR_ROUTING or nh == NEXTHDR_FRAGMENT \
        or nh == NEXTHDR_DEST


@inline
def be16(b, i):
    """Big-endian u16 at b[i] (widened first: uint8 << 8 would overflow)."""
    return (np.int64(b[i]) << 8) | np.int64(b[i + 1])


@inline
def match_group(b, a, v4, port, g_addr, g_port):
    """Index of the subscription for the address at b[a:] and @port, or -1."""
    if not v4 and b[a + 10] == 0xFF and b[a + 11] == 0xFF:
        # an IPv6 packet to ::ffff:a.b.c.d, the form IPv4 groups are keyed
        # in: never an IPv4 group's (bpf/redirect.c passes it too)
        mapped = True
        for j in range(10):
            if b[a + j] != 0:
                mapped = False
                break
        if mapped:
            return -1
    for k in range(g_port.shape[0]):
        if g_port[k] != port:
            continue
        ok = True
        if v4:
            if g_addr[k, 10] != 0xFF or g_addr[k, 11] != 0xFF or g_addr[k, 0] != 0:
                continue
            for j in range(4):
                if g_addr[k, 12 + j] != b[a + j]:
                    ok = False
                    break
        else:
            for j in range(16):
                if g_addr[k, j] != b[a + j]:
                    ok = False
                    break
        if ok:
            return k
    return -1


@inline
def parse_udp(b, p, end, g_addr, g_port):
    """Frame at b[p:end]. Returns (payload offset, payload length, group) with
    group -1 when the frame is not a subscribed, well-formed UDP datagram."""
    if end - p < 14:
        return 0, 0, -1
    et = be16(b, p + 12)
    p += 14
    for _ in range(2):
        if et != ETH_P_8021Q and et != ETH_P_8021AD:
            break
        if end - p < 4:
            return 0, 0, -1
        et = be16(b, p + 2)
        p += 4
    if et == ETH_P_IP:
        if end - p < 20 or (b[p] >> 4) != 4 or b[p + 9] != 17:
            return 0, 0, -1
        ihl = (np.int64(b[p]) & 15) * 4
        tot = be16(b, p + 2)
        if ihl < 20 or tot < ihl or p + tot > end or (be16(b, p + 6) & 0x3FFF) != 0:
            return 0, 0, -1
        daddr, v4, u, ip_end = p + 16, True, p + ihl, p + tot
    elif et == ETH_P_IPV6:
        if end - p < 40 or (b[p] >> 4) != 6:
            return 0, 0, -1
        ip_end = p + 40 + be16(b, p + 4)
        if ip_end > end:
            return 0, 0, -1
        # the XDP program's walk: same headers, same bound, same rejections
        nh = int(b[p + 6])
        u = p + 40
        for i in range(MAX_EXT_HDRS):
            if nh == IPPROTO_UDP:
                break
            if not ipv6_ext(nh) or ip_end - u < 8 or (nh == NEXTHDR_HOP and i > 0):
                return 0, 0, -1
            if nh == NEXTHDR_FRAGMENT:
                if be16(b, u + 2) & 0xFFF9:  # a fragment: offset != 0 or M set
                    return 0, 0, -1
                hl = 8  # atomic fragment
            else:
                if nh == NEXTHDR_ROUTING and b[u + 3] != 0:  # segments left
                    return 0, 0, -1
                hl = (int(b[u + 1]) + 1) * 8
            if ip_end - u < hl:
                return 0, 0, -1
            nh = int(b[u])
            u += hl
        if nh != IPPROTO_UDP:
            return 0, 0, -1
        daddr, v4 = p + 24, False
    else:
        return 0, 0, -1
    if ip_end - u < 8:
        return 0, 0, -1
    ulen = be16(b, u + 4)
    if ulen < 8 or u + ulen > ip_end:
        return 0, 0, -1
    k = match_group(b, daddr, v4, be16(b, u + 2), g_addr, g_port)
    return u + 8, ulen - 8, k
