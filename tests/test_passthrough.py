"""What xdprx does not subscribe to still reaches the kernel, untouched."""
import socket
import struct
import time

import xdprx
from xdprx.testing import payloads, send_cmd

from helpers import drain

GROUP = "239.1.2.3:5000"
SO_RCVBUFFORCE = 33  # asm-generic/socket.h


def _kernel_socket(pair, group: str | None, port: int, bind: str = "0.0.0.0") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # read only after the senders finish: room for every skb (truesize ~2 KiB each)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    s.bind((bind if group is None else group, port))
    if group:
        idx = socket.if_nametoindex(pair.rx_if)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("=4s4si", socket.inet_aton(group), b"\0" * 4, idx))
    s.settimeout(0.2)
    return s


def _read_all(s: socket.socket, want: int, timeout: float = 10.0) -> list[bytes]:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            out.append(s.recv(2048))
        except socket.timeout:
            pass
    return out


def test_unsubscribed_traffic_reaches_kernel_sockets(pair, mode):
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], mode=mode)
        other_port = _kernel_socket(pair, "239.1.2.3", 5001)
        other_group = _kernel_socket(pair, "239.9.9.9", 5000)
        unicast = _kernel_socket(pair, None, 7000, bind=pair.rx_ip)
        same_group = _kernel_socket(pair, "239.1.2.3", 5000)  # xdprx takes these
    n = 200
    with rx, other_port, other_group, unicast, same_group:
        # ARP and ICMP: the peer can ping us while the program is attached
        # (first, so the unicast flow below does not wait for ARP)
        ping = pair.run("tx", ["ping", "-c", "3", "-i", "0.2", "-W", "2", pair.rx_ip])
        assert ping.returncode == 0, ping.stdout + ping.stderr
        procs = [pair.popen("tx", send_cmd(g, n, seed=i, hi=1000, rate=10000))
                 for i, g in enumerate([GROUP, "239.1.2.3:5001", "239.9.9.9:5000",
                                        f"{pair.rx_ip}:7000"])]
        got = drain(rx, n, sender=procs[0])
        for p in procs:
            assert p.wait(timeout=30) == 0
        assert [d for _, d, _ in got] == payloads(0, n, hi=1000)
        assert _read_all(other_port, n) == payloads(1, n, hi=1000)
        assert _read_all(other_group, n) == payloads(2, n, hi=1000)
        assert _read_all(unicast, n) == payloads(3, n, hi=1000)
        # the subscribed flow went to AF_XDP, not to the kernel socket
        assert _read_all(same_group, 1, timeout=0.5) == []
        c = rx.stats()["xdp"]
        assert c["redirected"] == n
        assert c["passed"] >= 3 * n + 3  # three kernel flows and the pings at least
        assert c["seen"] == c["redirected"] + c["passed"]
