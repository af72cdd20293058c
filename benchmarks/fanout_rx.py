"""xdprx fan-out contender: one Receiver and N in-process consumers on one
thread; every consumer reads the first 64 bytes of every packet it gets.

    fanout_rx.py IFNAME SECONDS N MODE
prints "ready", waits for the first packet, measures SECONDS, prints JSON.
With SECONDS 0 it serves (serve.py) until stdin closes, with per-batch
latency: each consumer's now - the send time of its batch's first packet."""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

import xdprx
from xdprx import bulk
from serve import NB, Requests, account, hist_json
from touch_rx import touch64


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def serve(rx: xdprx.Receiver, cons: list) -> None:
    req, answered, acc = Requests(), 0, 0
    hist = np.zeros(NB, np.int64)
    got = np.zeros(len(cons), np.int64)
    c0 = cpu_seconds()
    while not req.closed:
        rx.pump(timeout=0.01)
        for i, c in enumerate(cons):
            b = c.recv(timeout=0)
            n = len(b)
            if n:
                acc += account(b, hist)
                got[i] += n
        if req.asked > answered:
            st = rx.stats()
            answered = req.answer(answered, deliveries=int(got.sum()),
                                  min_per_consumer=int(got.min()), cpu=cpu_seconds() - c0,
                                  xsk_drops=st["drops"], check=acc & 1,
                                  consumer_drops=sum(c["dropped"] for c in st["consumers"]),
                                  latency=hist_json(hist))
            hist[:] = 0


def main() -> None:
    ifname, seconds, n, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with xdprx.Receiver(ifname, ["239.1.2.3:5000"], mode=mode, frames=8192) as rx:
        cons = [rx.subscribe(ring_size=4096, batch_size=1024, spin=0) for _ in range(n)]
        touch64(rx.umem.area, np.zeros(1, np.uint64) + 4096, 0)
        print("ready", flush=True)
        if seconds == 0:
            serve(rx, cons)
            for c in cons:
                c.close()
            return
        deadline = time.monotonic() + 30
        while rx.pump(timeout=0.5) == 0 and time.monotonic() < deadline:
            pass
        acc = 0
        t0 = time.monotonic()
        c0 = cpu_seconds()
        base = [int(c.counts[0]) for c in cons]
        rx0 = int(rx.counters[bulk.S_PACKETS])
        while time.monotonic() - t0 < seconds:
            rx.pump(timeout=0.01)
            for c in cons:
                b = c.recv(timeout=0)
                if len(b):
                    acc += touch64(b.umem, b.offsets, len(b))
        dt = time.monotonic() - t0
        cpu = cpu_seconds() - c0
        deliveries = sum(int(c.counts[0]) - b for c, b in zip(cons, base))
        packets = int(rx.counters[bulk.S_PACKETS]) - rx0
        st = rx.stats()
        dropped = sum(c["dropped"] for c in st["consumers"])
        for c in cons:
            c.close()
    print(json.dumps({"deliveries": deliveries, "packets": packets, "seconds": dt, "cpu": cpu,
                      "consumer_drops": dropped, "xsk_drops": st["drops"],
                      "check": int(acc & 1)}))


if __name__ == "__main__":
    main()
