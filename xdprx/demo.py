"""`xdprx demo`: the whole path on a private veth pair, no NIC needed.

Creates two namespaces (xrx-*), a veth pair between them, runs a Receiver on
one end and an ordinary kernel UDP multicast sender on the other, prints live
rates, checks every payload byte, and deletes everything on the way out.
"""
from __future__ import annotations

import subprocess
import time

from .receiver import Receiver
from .testing import VethPair, payloads, send_cmd

GROUP = "239.1.2.3:5000"
SEED = 42


def demo(seconds: float = 5.0, rate: int = 100000, mode: str = "native",
         lo: int = 16, hi: int = 512) -> int:
    count = int(seconds * rate)
    expected = payloads(SEED, count, lo, hi)
    with VethPair() as pair:
        print(f"demo: namespaces {pair.ns['rx']} / {pair.ns['tx']}, veth "
              f"{pair.rx_if} <-> {pair.tx_if}")
        with pair.inside("rx"):
            rx = Receiver(pair.rx_if, [GROUP], mode=mode)
        with rx:
            print(f"demo: {rx.describe()}")
            sender = pair.popen("tx", send_cmd(GROUP, count, SEED, lo, hi, rate,
                                               timeout=seconds * 3),
                                stdout=subprocess.DEVNULL)
            print(f"demo: sending {count:,d} packets of {lo}..{hi} B at {rate:,d} pps "
                  f"from the peer namespace with a kernel UDP socket")
            got = bad = 0
            t0 = last = time.monotonic()
            last_got = 0
            deadline = t0 + seconds * 3 + 5
            while got < count and time.monotonic() < deadline:
                for pkt in rx.recv(timeout=0.2):
                    if pkt.seq >= count or pkt.payload != expected[pkt.seq]:
                        bad += 1
                    got += 1
                now = time.monotonic()
                if now - last >= 1.0:
                    st = rx.stats()
                    print(f"  {now - t0:5.1f}s  {got:>9,d} received  "
                          f"{(got - last_got) / (now - last):>10,.0f} pps  "
                          f"drops {st['drops']}  payload errors {bad}")
                    last, last_got = now, got
                if sender.poll() is not None and got < count and now - t0 > seconds + 2:
                    if not len(rx.recv(timeout=0.5)):
                        break
            sender.wait(timeout=30)
            st = rx.stats()
        census = rx.umem.pool.census()
        ok = got == count and bad == 0
        print(f"demo: sent {count:,d}, received {got:,d}, drops {st['drops']}, "
              f"payload mismatches {bad}; XDP saw {st['xdp']['seen']:,d}, "
              f"redirected {st['xdp']['redirected']:,d}, passed {st['xdp']['passed']:,d}")
        print(f"demo: frames back in the pool {census['free']}/{rx.umem.pool.total}; "
              f"{'OK' if ok else 'FAILED'}")
    print("demo: namespaces and veth pair removed")
    return 0 if ok else 1
