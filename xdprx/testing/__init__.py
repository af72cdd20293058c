"""Test helpers shipped with xdprx (like pyroute2's fixtures): namespaces,
veth pairs, and a bounded traffic generator. Used by tests/, benchmarks/ and
`xdprx demo`; usable in your own CI.

Network rules kept here: every namespace is named xrx-*, both veth ends live
in namespaces this module created, addresses come from 198.18.0.0/15 and
fd00::/8, groups from 239.0.0.0/8 / ff15::/16, every traffic loop is bounded
in count and time, and everything is deleted on exit, also on failure.

    with VethPair() as pair:
        with pair.inside("rx"):
            rx = xdprx.Receiver(pair.rx_if, ["239.1.2.3:5000"])
        pair.run("tx", send_cmd(pair, "239.1.2.3:5000", count=1000))
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from typing import Iterator

import numpy as np

from ..kernel import native
from ..errors import from_errno
from ..pace import Pacer

IFA_F_NODAD = 0x02
CLONE_NEWNET = 0x40000000


class VethPair:
    """Namespaces xrx-<tag>-rx and xrx-<tag>-tx joined by a veth pair.

    rx side: interface `xrx0`, 198.18.0.1/24, fd00::1/64
    tx side: interface `xrx1`, 198.18.0.2/24, fd00::2/64
    """

    rx_if, tx_if = "xrx0", "xrx1"
    rx_ip, tx_ip = "198.18.0.1", "198.18.0.2"
    rx_ip6, tx_ip6 = "fd00::1", "fd00::2"

    def __init__(self, tag: str | None = None, queues: int = 1, gro: bool = False) -> None:
        self.tag = tag or f"{os.getpid() % 100000}-{secrets.token_hex(2)}"
        self.ns = {"rx": f"xrx-{self.tag}-rx", "tx": f"xrx-{self.tag}-tx"}
        self.queues = queues
        self.gro = gro
        self._created: list[str] = []

    def __enter__(self) -> "VethPair":
        from pyroute2 import NetNS, netns
        try:
            for side in ("rx", "tx"):
                netns.create(self.ns[side])
                self._created.append(self.ns[side])
            with NetNS(self.ns["rx"]) as ipr:
                ipr.link("add", ifname=self.rx_if, kind="veth",
                         num_rx_queues=self.queues, num_tx_queues=self.queues,
                         peer={"ifname": self.tx_if, "net_ns_fd": self.ns["tx"],
                               "num_rx_queues": self.queues, "num_tx_queues": self.queues})
            for side, ifn, ip4, ip6 in (("rx", self.rx_if, self.rx_ip, self.rx_ip6),
                                        ("tx", self.tx_if, self.tx_ip, self.tx_ip6)):
                with NetNS(self.ns[side]) as ipr:
                    idx = ipr.link_lookup(ifname=ifn)[0]
                    ipr.addr("add", index=idx, address=ip4, prefixlen=24)
                    ipr.addr("add", index=idx, address=ip6, prefixlen=64, flags=IFA_F_NODAD)
                    ipr.link("set", index=idx, state="up")
                    lo = ipr.link_lookup(ifname="lo")[0]
                    ipr.link("set", index=lo, state="up")
            self._wait_ipv6_multicast_routes()
            if self.gro:
                self.run("rx", ["ethtool", "-K", self.rx_if, "gro", "on"], check=False)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ipv6_multicast_routes(self, timeout: float = 5.0) -> None:
        """IPv6 multicast needs the kernel's ff00::/8 route, added shortly after
        link-up; sending before it exists fails with ENETUNREACH."""
        from pyroute2 import NetNS
        deadline = time.monotonic() + timeout
        for side in ("rx", "tx"):
            with NetNS(self.ns[side]) as ipr:
                while time.monotonic() < deadline:
                    routes = ipr.get_routes(family=socket.AF_INET6, table=255)
                    if any(r.get_attr("RTA_DST") == "ff00::" for r in routes):
                        break
                    time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        from pyroute2 import netns
        for name in reversed(self._created):  # deleting a namespace deletes its veth end
            with contextlib.suppress(Exception):
                netns.remove(name)
        self._created.clear()

    def nsenter(self, side: str) -> list[str]:
        # nsenter, not `ip netns exec`: the latter remounts /sys and hides /sys/fs/bpf
        return ["nsenter", f"--net=/run/netns/{self.ns[side]}"]

    def run(self, side: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.nsenter(side) + argv, **kw)

    def popen(self, side: str, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.nsenter(side) + argv, **kw)

    @contextlib.contextmanager
    def inside(self, side: str) -> Iterator[None]:
        """Run this thread in the namespace of @side, then come back."""
        with enter_netns(self.ns[side]):
            yield


@contextlib.contextmanager
def enter_netns(name: str) -> Iterator[None]:
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if native.libc.setns(target, CLONE_NEWNET):
            raise from_errno(f"entering network namespace {name}", native.errno())
        try:
            yield
        finally:
            native.libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)


# ---- deterministic payloads -------------------------------------------------
def payloads(seed: int, count: int, lo: int = 1, hi: int = 1472) -> list[bytes]:
    """@count payloads of random sizes in [lo, hi]; the same on every host."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lo, hi + 1, count)
    pool = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8).tobytes()
    out, o = [], 0
    for s in sizes:
        out.append(pool[o: o + int(s)])
        o += int(s)
    return out


def send_cmd(group: str, count: int, seed: int = 1, lo: int = 1, hi: int = 1472,
             rate: int = 50000, ifname: str = VethPair.tx_if, timeout: float = 60.0,
             xdp: bool = False, queue: int | None = None) -> list[str]:
    """argv that sends payloads(seed, count, lo, hi) to @group from @ifname,
    through a kernel UDP socket, or with @xdp through xdprx.Sender (AF_XDP)."""
    return [sys.executable, "-m", "xdprx.testing", "send", "--group", group,
            "--count", str(count), "--seed", str(seed), "--sizes", f"{lo}:{hi}",
            "--rate", str(rate), "--ifname", ifname, "--timeout", str(timeout)] + \
        (["--xdp"] if xdp else []) + ([] if queue is None else ["--queue", str(queue)])


def send_xdp(group: str, count: int, seed: int, lo: int, hi: int, rate: int, ifname: str,
             timeout: float, queue: int = 0) -> int:
    """The same payloads through xdprx.Sender (AF_XDP TX) on TX queue @queue
    (veth: it arrives on the peer's RX queue of that number, in native mode).
    Returns packets sent."""
    from ..sender import Sender
    with Sender(ifname, queue=queue, sport=40000 + queue) as tx:
        return tx.send(group, payloads(seed, count, lo, hi), rate=rate or None, timeout=timeout)


def send(group: str, count: int, seed: int, lo: int, hi: int, rate: int, ifname: str,
         timeout: float) -> int:
    """Send with an ordinary kernel UDP socket, paced to @rate packets/s,
    stopping after @count packets or @timeout seconds. Returns packets sent."""
    host, _, p = group.rpartition(":")
    addr, port = ipaddress.ip_address(host.strip("[]")), int(p)
    data = payloads(seed, count, lo, hi)
    idx = native.ifindex(ifname)
    if not addr.is_multicast:  # unicast, for tests of what xdprx must pass
        s = socket.socket(socket.AF_INET if addr.version == 4 else socket.AF_INET6,
                          socket.SOCK_DGRAM)
        dst = (str(addr), port)
    elif addr.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # struct ip_mreqn: choose the interface by index
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                     struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, idx))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        dst = (str(addr), port)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        dst = (str(addr), port, 0, idx)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    t0 = time.monotonic()
    pacer = Pacer(rate, slack=64)
    sent = 0
    burst = 16
    for i, p in enumerate(data):
        if time.monotonic() - t0 > timeout:
            break
        while True:
            try:
                s.sendto(p, dst)
                break
            except OSError as e:  # ENOBUFS / EAGAIN: the qdisc is full, back off
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN) or time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.0005)
        sent += 1
        if (i + 1) % burst == 0:
            pacer.wait(i + 1)
    s.close()
    return sent


def send_raw(ifname: str, frames: list[bytes]) -> int:
    """Send whole Ethernet frames with AF_PACKET (for malformed-input tests)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    n = 0
    for f in frames:
        s.send(f)
        n += 1
        time.sleep(0.0002)
    s.close()
    return n


# ---- frame builders (tests craft good and malformed frames with these) ------
def eth(payload: bytes, ethertype: int, vlans: tuple[int, ...] = (),
        dst: bytes = b"\x01\x00\x5e\x01\x02\x03", src: bytes = b"\x02\x00\x00\x00\x00\x02") -> bytes:
    hdr = dst + src
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if i == 0 and len(vlans) > 1 else 0x8100
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", ethertype) + payload


def udp(sport: int, dport: int, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data) if length is None else length, 0) + data


def ipv4(dst: str, payload: bytes, proto: int = 17, ihl: int = 5, tot_len: int | None = None,
         frag: int = 0, version: int = 4, src: str = VethPair.tx_ip) -> bytes:
    opts = b"\x01" * (max(ihl, 5) * 4 - 20)  # NOP options
    tot = 20 + len(opts) + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, tot, 1, frag, 1, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    csum = _csum(hdr + opts)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + opts + payload


def ipv6(dst: str, payload: bytes, nexthdr: int = 17, src: str = VethPair.tx_ip6) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 1,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def ext6(kind: int, nexthdr: int, size: int = 8, frag_off: int = 0,
         segments_left: int = 0) -> bytes:
    """One IPv6 extension header, @size bytes (a multiple of 8; fragment: 8),
    followed by @nexthdr: hop-by-hop (0) and destination options (60) carry
    PadN, routing (43) is type 4 with @segments_left, fragment (44) carries
    @frag_off (offset << 3 | M)."""
    if kind == 44:
        return struct.pack("!BBHI", nexthdr, 0, frag_off, 0x1234)
    assert size >= 8 and size % 8 == 0 and size <= 2048
    if kind == 43:
        return struct.pack("!BBBB", nexthdr, size // 8 - 1, 4, segments_left) + bytes(size - 4)
    return struct.pack("!BBBB", nexthdr, size // 8 - 1, 1, size - 4) + bytes(size - 4)


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---- the daemon and its consumers, as processes ---------------------------------
XDPRX = [sys.executable, "-m", "xdprx.service.cli"]


def fake_sysfs(root: str, nodes: dict[int, str], interfaces: dict[str, int] | None = None,
               memory: str | None = None) -> str:
    """Write a sysfs tree presenting a NUMA machine, for xdprx.numa.Topology:
    @nodes maps node -> cpulist ('0-3,8'), @interfaces name -> numa_node,
    @memory the has_memory list (default: every node). Returns @root."""
    base = os.path.join(root, "devices/system/node")
    for n, cpus in nodes.items():
        os.makedirs(os.path.join(base, f"node{n}"), exist_ok=True)
        with open(os.path.join(base, f"node{n}", "cpulist"), "w") as f:
            f.write(cpus + "\n")
    with open(os.path.join(base, "has_memory"), "w") as f:
        f.write((memory if memory is not None else ",".join(map(str, sorted(nodes)))) + "\n")
    for name, node in (interfaces or {}).items():
        d = os.path.join(root, "class/net", name, "device")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "numa_node"), "w") as f:
            f.write(f"{node}\n")
    return root


def control_answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class DaemonProcess:
    """`xdprx run` in the rx namespace of @pair, serving @control; started when
    entered (once its control socket answers), SIGTERMed and reaped on exit.
    @pin: a CPU list for taskset (the daemon and every thread it starts)."""

    def __init__(self, pair: VethPair, control: str, groups: list[str], *extra: str,
                 pin: str | None = None) -> None:
        argv = (["taskset", "-c", pin] if pin else []) + \
            XDPRX + ["run", pair.rx_if, "--control", control, "--interval", "0.5"]
        for g in groups:
            argv += ["--group", g]
        self.control = control
        self.proc = pair.popen("rx", argv + list(extra), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        self.out = self.err = ""
        deadline = time.monotonic() + 30
        while not control_answers(control):  # a stale file may exist: wait for a live one
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"daemon did not start: {self.proc.communicate()}")
            time.sleep(0.05)

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            self.out, self.err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def consume(control: str, groups: list[str], consumers: int, count: int, timeout: float,
            stall: bool = False) -> list[dict]:
    """@consumers Subscribers of @groups in this process, read round-robin until
    each has @count packets or @timeout; prints "ready" once all subscribed.
    With @stall they subscribe and never read (holding what they get)."""
    from ..consumer import Subscriber
    from ..service.subscribe import Digest
    subs = [Subscriber(control, groups, name=f"consume-{os.getpid()}-{i}", spin=0)
            for i in range(consumers)]
    digests = [Digest() for _ in subs]
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stall:
            time.sleep(0.05)
            continue
        idle = True
        for s, d in zip(subs, digests):
            b = s.recv(timeout=0)
            idle = idle and not len(b)
            for pkt in b:
                d.add(str(pkt.group), pkt.seq, pkt.payload)
        if all(s.counts[0] >= count for s in subs) or any(s.daemon_gone for s in subs):
            break
        if idle:
            time.sleep(0.002)
    out = [{"id": s.id, "stats": s.stats(), "groups": d.summary()} for s, d in zip(subs, digests)]
    for s in subs:
        s.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdprx.testing")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="send deterministic multicast UDP payloads")
    s.add_argument("--group", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--sizes", default="1:1472")
    s.add_argument("--rate", type=int, default=50000)
    s.add_argument("--ifname", default=VethPair.tx_if)
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("--xdp", action="store_true", help="send through xdprx.Sender (AF_XDP)")
    s.add_argument("--queue", type=int, default=None,
                   help="with --xdp: the TX queue (the peer's RX queue on veth)")
    r = sub.add_parser("send-raw", help="send Ethernet frames given as hex lines on stdin")
    r.add_argument("--ifname", default=VethPair.tx_if)
    c = sub.add_parser("consume", help="Subscribers of a daemon; JSON digests at the end")
    c.add_argument("--control", required=True)
    c.add_argument("--group", action="append", required=True)
    c.add_argument("--consumers", type=int, default=1)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout", type=float, default=30.0)
    c.add_argument("--stall", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "consume":
        import json
        print(json.dumps(consume(a.control, a.group, a.consumers, a.count, a.timeout, a.stall)))
        return 0
    if a.cmd == "send-raw":
        frames = [bytes.fromhex(line) for line in sys.stdin.read().split()]
        print(send_raw(a.ifname, frames))
        return 0
    lo, hi = (int(x) for x in a.sizes.split(":"))
    if a.queue is not None:
        if not a.xdp:
            ap.error("--queue needs --xdp")
        n = send_xdp(a.group, a.count, a.seed, lo, hi, a.rate, a.ifname, a.timeout, a.queue)
    else:
        n = (send_xdp if a.xdp else send)(a.group, a.count, a.seed, lo, hi, a.rate, a.ifname,
                                         a.timeout)
    print(n)
    return 0 if n == a.count else 1


if __name__ == "__main__":
    sys.exit(main())
