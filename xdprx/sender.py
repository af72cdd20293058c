"""xdprx.Sender: UDP multicast out of an AF_XDP socket, frames built in place.

    with xdprx.Sender("xrx1") as tx:
        tx.send("239.1.2.3:5000", [b"hello", b"world"], rate=100_000)

The TX path recycles frames in bulk, like the receive side: each burst
first drains the COMPLETION ring (KERNEL -> FREE, into the pool's cache),
then takes frames from the pool, writes Ethernet/IP/UDP headers from a
template plus the payload straight into each frame, and submits them with one
release store on the TX ring; one sendto() per burst kicks the kernel.
Used as the traffic generator of the tests and benchmarks (on the peer side
of a veth pair). No XDP program is needed to send.
"""
from __future__ import annotations

import errno as E
import fcntl
import ipaddress
import socket
import struct
import time
from typing import Sequence

import numpy as np

from .kernel import native
from .errors import ConfigError, XdprxError, check_privileges
from .groups import Group
from .pace import Pacer
from .jit import inline, kernel
from .ring import cons_peek, cons_release, prod_free, prod_submit
from .umem import KERNEL, X_SHIFT, Umem, fill_get, to_free

SIOCGIFHWADDR = 0x8927
ETH, IP4, IP6, UDP = 14, 20, 40, 8


@inline
def csum_add(buf, start, n, acc):
    """One's-complement sum of big-endian 16-bit words."""
    i = 0
    while i + 1 < n:
        acc += (np.int64(buf[start + i]) << 8) | np.int64(buf[start + i + 1])
        i += 2
    if n & 1:
        acc += np.int64(buf[start + n - 1]) << 8
    return acc


@inline
def csum_fold(acc):
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return np.int64(0xFFFF) - acc


@inline
def put16(buf, at, v):
    buf[at] = (v >> 8) & 0xFF
    buf[at + 1] = v & 0xFF


@kernel
def tx_burst(tx_prod, tx_cons, tx_slots, tx_local, comp_prod, comp_cons, comp_slots, comp_local,
             pool, umem, tmpl, hlen, is6, data, offs, lens, first, n, ip_id, addrs, stats):
    """Drain completions, then build and submit up to @n frames for payloads
    first.. of (data, offs, lens). @addrs: scratch, a power of two >= n.
    stats: [sent, completed]. Returns frames submitted."""
    state = pool[4]
    shift = pool[5][X_SHIFT]
    # 1. completions back to the pool, in bulk
    csize = comp_slots.shape[0]
    k = cons_peek(comp_prod, comp_local, csize)
    for i in range(k):
        f = np.int64(comp_slots[(comp_local[1] + i) & (csize - 1)] >> shift)
        if f < state.shape[0] and state[f] == KERNEL:
            to_free(pool, f)
    if k:
        cons_release(comp_cons, comp_local, k)
        stats[1] += k
    # 2. frames out of the pool, in bulk (into the TX slots' address words)
    tsize = tx_slots.shape[0]
    got = fill_get(pool, addrs, 0, prod_free(tx_cons, tx_local, tsize, n))
    for i in range(got):
        a = addrs[i]
        p = first + i
        plen = lens[p]
        for b in range(hlen):      # loops, not slice copies: no allocation
            umem[a + b] = tmpl[b]
        src, dst = offs[p], a + hlen
        for b in range(plen):
            umem[dst + b] = data[src + b]
        ulen = np.int64(UDP + plen)
        if is6:
            put16(umem, a + ETH + 4, ulen)
            put16(umem, a + hlen - UDP + 4, ulen)
            acc = csum_add(umem, a + ETH + 8, 32, np.int64(ulen + 17))
            c = csum_fold(csum_add(umem, a + hlen - UDP, ulen, acc))
            put16(umem, a + hlen - UDP + 6, c if c else 0xFFFF)
        else:
            put16(umem, a + ETH + 2, IP4 + ulen)
            put16(umem, a + ETH + 4, (ip_id + p) & 0xFFFF)
            put16(umem, a + ETH + 10, csum_fold(csum_add(umem, a + ETH, IP4, np.int64(0))))
            put16(umem, a + hlen - UDP + 4, ulen)
        s = (tx_local[0] + i) & (tsize - 1)
        tx_slots[s, 0] = a
        tx_slots[s, 1] = hlen + plen
    if got:
        prod_submit(tx_prod, tx_local, got)
        stats[0] += got
    return got


def _mac(ifname: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))
    return info[18:24]


def _sources(ifindex: int) -> dict[int, str]:
    """The interface's first IPv4 and IPv6 addresses (in this namespace)."""
    from pyroute2 import IPRoute
    out: dict[int, str] = {}
    with IPRoute() as ipr:
        for v, fam in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            for a in ipr.get_addr(index=ifindex, family=fam):
                out[v] = a.get_attr("IFA_ADDRESS")
                break
    return out


def template(group: Group, src_mac: bytes, src: str, sport: int) -> np.ndarray:
    """Ethernet + IP + UDP headers for @group; lengths and checksums are
    filled in per packet by tx_burst."""
    g = group.addr
    if g.version == 4:
        dmac = bytes([0x01, 0x00, 0x5E]) + (int(g) & 0x7FFFFF).to_bytes(3, "big")
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 1, 17, 0,
                         ipaddress.IPv4Address(src).packed, g.packed)
        eth = dmac + src_mac + b"\x08\x00"
    else:
        dmac = b"\x33\x33" + g.packed[-4:]
        ip = struct.pack("!IHBB16s16s", 6 << 28, 0, 17, 1, ipaddress.IPv6Address(src).packed,
                         g.packed)
        eth = dmac + src_mac + b"\x86\xdd"
    udp = struct.pack("!HHHH", sport, group.port, 0, 0)
    return np.frombuffer(eth + ip + udp, np.uint8).copy()


class Sender:
    """Send UDP to multicast groups from @ifname through AF_XDP (copy or
    zero-copy, as the driver allows)."""

    def __init__(self, ifname: str, queue: int = 0, frames: int = 4096,
                 frame_size: int = 2048, tx_size: int = 2048, batch: int = 32,
                 sport: int = 40000) -> None:
        check_privileges()
        self.ifname = ifname
        self.ifindex = native.require_ifindex(ifname)
        if not 1 <= batch <= tx_size:
            raise ConfigError(f"batch {batch} out of range", remedy=f"use 1..{tx_size}")
        from .kernel.xsk import XskSocket
        self.batch = batch
        self.sport = sport
        self.mac = _mac(ifname)
        self.umem = Umem(frames, frame_size, fill_size=min(frames, 4096), comp_size=tx_size,
                         hugepages="off")
        try:
            self.xsk = XskSocket(ifname, queue, self.umem, rx_size=0, tx_size=tx_size)
        except BaseException:
            self.umem.close()
            raise
        # sendto() on the xsk fd kicks the kernel, once per burst (AF_XDP = 44)
        self._kick = socket.socket(44, socket.SOCK_RAW, 0, fileno=self.xsk.fd)
        self.stats = np.zeros(2, np.int64)
        self._addrs = np.zeros(1 << (batch - 1).bit_length(), np.uint64)
        self._ip_id = 0
        self._src = _sources(self.ifindex)

    def send(self, group: str | Group, payloads: Sequence[bytes], rate: float | None = None,
             timeout: float = 30.0, src: str | None = None) -> int:
        """Send @payloads in order, at most @rate packets/s, for at most
        @timeout seconds. Returns how many were sent (all, unless timed out)."""
        g = group if isinstance(group, Group) else Group.parse(group)
        src = src or self._src.get(g.addr.version)
        if src is None:
            raise ConfigError(f"{self.ifname} has no IPv{g.addr.version} address to send from",
                              E.EADDRNOTAVAIL, "add one (ip addr add ...) or pass src=")
        tmpl = template(g, self.mac, src, self.sport)
        hlen = len(tmpl)
        lens = np.array([len(p) for p in payloads], np.int64)
        room = self.umem.frame_size - hlen
        if len(lens) and lens.max() > min(room, 1500 - (hlen - ETH)):
            raise ConfigError(f"a payload of {int(lens.max())} bytes does not fit one frame",
                              remedy=f"keep payloads <= {min(room, 1500 - (hlen - ETH))} bytes")
        offs = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offs[1:])
        data = np.frombuffer(b"".join(payloads) or b"\0", np.uint8).copy()
        u, x = self.umem, self.xsk
        t0 = time.monotonic()
        pacer = Pacer(rate, slack=2 * self.batch)
        sent = 0
        while sent < len(lens) and time.monotonic() - t0 < timeout:
            n = min(self.batch, len(lens) - sent)
            pacer.wait(sent)
            k = tx_burst(x.tx.prod, x.tx.cons, x.tx.slots, x.tx.local, u.comp.prod, u.comp.cons,
                         u.comp.slots, u.comp.local, u.pool.t, u.area, tmpl, hlen,
                         g.addr.version == 6, data, offs, lens, sent, n, self._ip_id, self._addrs,
                         self.stats)
            sent += k
            self._kick_kernel()
        self._ip_id = (self._ip_id + sent) & 0xFFFF
        self.flush()
        return sent

    def _kick_kernel(self) -> None:
        """sendto() until the TX ring is drained: in copy mode each call sends
        at most 32 frames (the kernel's per-call budget)."""
        for _ in range(self.xsk.tx.size // 32 + 2):
            if not self.xsk.tx.occupancy():
                return
            try:
                self._kick.send(b"", socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass   # the kernel is busy sending; try again
            except OSError as e:
                if e.errno not in (E.EBUSY, E.ENOBUFS, E.EAGAIN):
                    raise XdprxError(f"kicking AF_XDP TX on {self.ifname}", e.errno) from None

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until every submitted frame has completed (is back in the pool)."""
        u, x = self.umem, self.xsk
        deadline = time.monotonic() + timeout
        empty = np.zeros(1, np.int64)
        while self.stats[1] < self.stats[0] and time.monotonic() < deadline:
            tx_burst(x.tx.prod, x.tx.cons, x.tx.slots, x.tx.local, u.comp.prod, u.comp.cons,
                     u.comp.slots, u.comp.local, u.pool.t, u.area, np.zeros(1, np.uint8), 0,
                     False, np.zeros(1, np.uint8), empty, empty, 0, 0, 0, self._addrs, self.stats)
            self._kick_kernel()
        return self.stats[1] == self.stats[0]

    def tx_stats(self) -> dict[str, int]:
        st = self.xsk.statistics()
        return {"submitted": int(self.stats[0]), "completed": int(self.stats[1]),
                "tx_invalid_descs": st["tx_invalid_descs"],
                "tx_ring_empty_descs": st.get("tx_ring_empty_descs", 0)}

    def close(self) -> None:
        if getattr(self, "xsk", None) is not None:
            self._kick.detach()
            self.xsk.close()
            self.xsk = None
            self.umem.close()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def warm() -> None:
    """Compile tx_burst for the types Sender.send uses (under the cache lock)."""
    from .umem import FramePool
    pool = FramePool(4, 2048, cache=2)
    u32, z64 = np.zeros(1, np.uint32), np.zeros(1, np.int64)
    slots, c = np.zeros((4, 2), np.uint64), np.zeros(4, np.uint64)
    tx_burst(u32, u32, slots, np.zeros(2, np.int64), u32, u32, c, np.zeros(2, np.int64),
             pool.t, np.zeros(4 * 2048, np.uint8), np.zeros(1, np.uint8), 0, False,
             np.zeros(1, np.uint8), z64, z64, 0, 0, 0, np.zeros(1, np.uint64),
             np.zeros(2, np.int64))
