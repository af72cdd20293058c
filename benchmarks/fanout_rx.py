"""xdprx fan-out contender: one Receiver serving N in-process consumers, the
receive loop and the consumers compiled (Receiver.start(): the receive loop
on its own thread; xdprx.run_many: all N consumers on one other thread, one
wake-up for all, GIL released); every consumer reads the first 64 bytes of
every packet it gets.

    fanout_rx.py [--rx-usecs US] [--batch B] [--max-frames M] [--cons-nice N]
                 IFNAME SECONDS N MODE
prints "ready", waits for the first packet, measures SECONDS, prints JSON.
With SECONDS 0 it serves (serve.py) until stdin closes, with per-batch
latency: each consumer's now - the send time of its batch's first packet."""
from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

import numpy as np

import xdprx
from xdprx import bulk
from xdprx.consumer import prepare
from serve import H_CHECK, H_GOT, H_HIST, Requests, account_h, handler_state, hist_json


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    argv, kw, batch = sys.argv, {}, 1024
    if "--rx-usecs" in argv:           # else the Receiver's default
        i = argv.index("--rx-usecs")
        kw["rx_usecs"] = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    if "--max-frames" in argv:         # the pool's cap (default: frames, no growth)
        i = argv.index("--max-frames")
        kw["max_frames"] = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    cons_nice = None
    if "--cons-nice" in argv:          # the consumer thread's nice value (default: inherited, 0)
        i = argv.index("--cons-nice")
        cons_nice = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    if "--batch" in argv:              # each consumer's batch size
        i = argv.index("--batch")
        batch = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    ifname, seconds, n, mode = argv[1], float(argv[2]), int(argv[3]), argv[4]
    with xdprx.Receiver(ifname, ["239.1.2.3:5000"], mode=mode, frames=8192, **kw) as rx:
        cons = [rx.subscribe(ring_size=4096, batch_size=batch) for _ in range(n)]
        one = handler_state()
        states = np.zeros((n, len(one)), np.int64)
        states[:] = one
        prepare(account_h)
        rx.start(nice=-10)
        def consume() -> None:
            if cons_nice is not None:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), cons_nice)
            xdprx.run_many(cons, account_h, states)

        threads = [threading.Thread(target=consume, daemon=True)]
        for t in threads:
            t.start()
        print("ready", flush=True)
        got = lambda: sum(int(st[H_GOT]) for st in states)   # noqa: E731
        if seconds == 0:
            req, answered = Requests(), 0
            c0 = cpu_seconds()
            last = np.zeros(len(states[0]) - H_HIST, np.int64)
            while not req.closed:
                time.sleep(0.005)
                if req.asked > answered:
                    st = rx.stats()
                    h = sum(s[H_HIST:] for s in states)
                    answered = req.answer(
                        answered, deliveries=got(), min_per_consumer=min(int(s[H_GOT]) for s in states),
                        cpu=cpu_seconds() - c0, xsk_drops=st["drops"],
                        consumer_drops=sum(c["dropped"] for c in st["consumers"]),
                        check=sum(int(s[H_CHECK]) for s in states) & 1,
                        loop={k: st["receiver"][k] for k in ("packets", "batches", "sleeps", "wakes_shared", "naps",
                                                 "eventfd_writes")},
                        latency=hist_json(h - last))
                    last = h
        else:
            deadline = time.monotonic() + 30
            while got() == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            t0 = time.monotonic()
            c0 = cpu_seconds()
            base, rx0 = got(), int(rx.counters[bulk.S_PACKETS])
            time.sleep(seconds)
            dt = time.monotonic() - t0
            cpu = cpu_seconds() - c0
            deliveries, packets = got() - base, int(rx.counters[bulk.S_PACKETS]) - rx0
            st = rx.stats()
        cons[0].stop()
        for t in threads:
            t.join(timeout=10)
        for c in cons:
            c.close()
    if seconds:
        print(json.dumps({"deliveries": deliveries, "packets": packets, "seconds": dt,
                          "cpu": cpu, "consumer_drops": sum(c["dropped"] for c in st["consumers"]),
                          "xsk_drops": st["drops"],
                          "check": sum(int(s[H_CHECK]) for s in states) & 1}))


if __name__ == "__main__":
    main()
