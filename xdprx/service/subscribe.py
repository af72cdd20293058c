"""`xdprx subscribe`: a consumer in its own process, from the command line.

Prints the rate and sequence gaps live; --pcap writes every received frame to
a pcap file; --json prints a final summary; --digest adds a SHA-256 of each
group's payload stream (to compare two consumers, or against the sender).
"""
from __future__ import annotations

import hashlib
import json
import signal
import sys
import time

from ..consumer import Subscriber
from .pcap import PcapWriter


class Digest:
    """Per-group account of a packet stream: count, sequence range, gaps, and
    a SHA-256 of the payloads in order."""

    def __init__(self) -> None:
        self.groups: dict[str, dict] = {}

    def add(self, group: str, seq: int, payload) -> None:
        g = self.groups.get(group)
        if g is None:
            g = self.groups[group] = {"received": 0, "first_seq": seq, "last_seq": seq,
                                      "gaps": 0, "h": hashlib.sha256()}
        elif seq > g["last_seq"] + 1:
            g["gaps"] += seq - g["last_seq"] - 1
        g["received"] += 1
        g["last_seq"] = seq
        g["h"].update(payload)

    def summary(self) -> dict:
        return {k: {"received": v["received"], "first_seq": v["first_seq"],
                    "last_seq": v["last_seq"], "gaps": v["gaps"], "sha256": v["h"].hexdigest()}
                for k, v in self.groups.items()}


def subscribe(control: str, groups: list[str], count: int | None = None,
              duration: float | None = None, pcap: str | None = None, as_json: bool = False,
              digest: bool = False, ring: int = 2048, quota: int | None = None,
              interval: float = 1.0) -> int:
    live = sys.stderr if as_json else sys.stdout
    stop = []
    old = {s: signal.signal(s, lambda *_: stop.append(1)) for s in (signal.SIGINT, signal.SIGTERM)}
    sub = Subscriber(control, groups, ring_size=ring, quota=quota, name="xdprx subscribe")
    writer = PcapWriter(pcap) if pcap else None
    dig = Digest()
    t0 = last = time.monotonic()
    prev = 0
    try:
        print(f"xdprx: consumer {sub.id} subscribed to {', '.join(groups)} via {control}",
              file=live, flush=True)
        while not stop and (count is None or sub.counts[0] < count):
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            b = sub.recv(timeout=0.2)
            if sub.daemon_gone:
                break
            n = len(b)
            if count is not None and sub.counts[0] > count:
                n -= int(sub.counts[0]) - count   # stop exactly at --count
            if writer or digest:
                ts = b.timestamps if writer else None
                for i, pkt in enumerate(b):
                    if i >= n:
                        break
                    if writer:
                        writer.write(b.frame_bytes(i), int(ts[i]))
                    if digest:
                        dig.add(str(pkt.group), pkt.seq, pkt.payload)
            now = time.monotonic()
            if now - last >= interval:
                st = sub.stats()
                print(f"rx {st['received']:>12,d} pkts {(st['received'] - prev) / (now - last):>10,.0f}"
                      f" pps | gaps {st['gaps']:,d} | dropped for us {st['dropped']:,d}",
                      file=live, flush=True)
                prev, last = st["received"], now
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        st = sub.stats()
        gone = sub.daemon_gone
        sub.close()
        if writer:
            writer.close()
    received = min(st["received"], count) if count is not None else st["received"]
    summary = {"received": received, "gaps": st["gaps"], "bytes": st["bytes"],
               "dropped": st["dropped"], "seconds": round(time.monotonic() - t0, 3)}
    if digest:
        summary["groups"] = dig.summary()
    if writer:
        summary["pcap"] = {"file": pcap, "packets": writer.packets}
    if as_json:
        print(json.dumps(summary), flush=True)
    else:
        print(f"xdprx: received {received:,d} packets, {st['bytes']:,d} bytes, "
              f"gaps {st['gaps']:,d}", flush=True)
    if gone and (count is None or received < count):
        print("xdprx: the daemon stopped serving this subscription", file=sys.stderr)
        return 1
    return 0
