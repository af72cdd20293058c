"""xdprx.Sender (AF_XDP TX, bulk-recycled frames) on a real veth: the
Receiver gets every payload byte-exact, the kernel's own UDP stack accepts
the frames (so the IPv4 header and IPv6 UDP checksums are right), and every
TX frame comes back to the pool through the COMPLETION ring."""
import socket
import struct
import threading
import time

import pytest

import xdprx
from xdprx.testing import payloads, send_cmd

from helpers import drain


@pytest.mark.parametrize("group", ["239.1.2.3:5000", "[ff15::7]:5001"])
def test_sender_to_receiver_every_byte(pair, group):
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [group], mode="native")
    with pair.inside("tx"):
        tx = xdprx.Sender(pair.tx_if)
    with rx, tx:
        data = payloads(11, 3000, 1, 1400)
        assert tx.send(group, data, rate=50000) == 3000
        got = drain(rx, 3000, timeout=20)
        st = tx.tx_stats()
        assert [d for _, d, _ in got] == data
        assert [s for s, _, _ in got] == list(range(3000))
        assert st["submitted"] == st["completed"] == 3000 and st["tx_invalid_descs"] == 0
        c = tx.umem.pool.census()
        assert c["free"] == tx.umem.pool.total, "every TX frame back in the pool"
        tx.umem.pool.check()
        assert rx.stats()["drops"] == 0


@pytest.mark.parametrize("fam,group,bind", [
    (socket.AF_INET, "239.7.7.7:6000", "0.0.0.0"), (socket.AF_INET6, "[ff15::9]:6001", "::")])
def test_kernel_udp_stack_accepts_sender_frames(pair, fam, group, bind):
    """Sent to a group xdprx does not receive: the XDP program passes them and
    an ordinary UDP socket gets them, checksums verified by the kernel."""
    host, port = group.rsplit(":", 1)
    host = host.strip("[]")
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, ["239.1.2.3:5000"], mode="native")
        s = socket.socket(fam, socket.SOCK_DGRAM)
        # room for every datagram: a slow reader thread must not turn into
        # UdpRcvbufErrors (SO_RCVBUFFORCE: root may exceed net.core.rmem_max)
        s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)
        s.bind((bind, int(port)))
        idx = socket.if_nametoindex(pair.rx_if)
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                         struct.pack("=4s4si", socket.inet_aton(host), b"\0" * 4, idx))
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                         socket.inet_pton(fam, host) + struct.pack("=I", idx))
        s.settimeout(0.5)
    got = []

    def read():
        deadline = time.monotonic() + 30
        while len(got) < 500 and time.monotonic() < deadline:
            try:
                got.append(s.recv(2048))
            except socket.timeout:
                pass

    with rx, s:
        t = threading.Thread(target=read)
        t.start()
        time.sleep(0.1)
        sender = pair.run("tx", send_cmd(group, 500, seed=12, hi=1400, rate=5000, xdp=True))
        t.join(timeout=30)
        assert sender.returncode == 0, sender.stderr
        assert got == payloads(12, 500, 1, 1400)
        assert rx.stats()["xdp"]["passed"] >= 500


def test_sender_errors(pair):
    with pair.inside("tx"):
        with pytest.raises(xdprx.ConfigError, match="unknown interface"):
            xdprx.Sender("nope0")
        with xdprx.Sender(pair.tx_if) as tx:
            with pytest.raises(xdprx.ConfigError, match="does not fit"):
                tx.send("239.1.2.3:5000", [b"x" * 1600])
            with pytest.raises(xdprx.ConfigError, match="not a multicast"):
                tx.send("198.18.0.1:5000", [b"x"])
