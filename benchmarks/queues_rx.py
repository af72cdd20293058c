"""xdprx multi-queue contender: Receiver(queues=Q) with rx.run(handler), one
compiled loop per queue, each reading the first 64 bytes of every packet
(touch_rx.touch_h), as the C loop (c/mqrx.c) does.

    queues_rx.py IFNAME SECONDS MODE QUEUES [SPIN_US] [RX_USECS]

Prints "ready", then, from the first packet on, receives for SECONDS and
prints one JSON line: packets, seconds, cpu (process), per_queue."""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

import xdprx
from xdprx.consumer import prepare

from touch_rx import touch_h


def main() -> None:
    ifname, seconds, mode, queues = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    spin = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    kw = {"rx_usecs": int(sys.argv[6])} if len(sys.argv) > 6 else {}
    with xdprx.Receiver(ifname, ["239.1.2.3:5000"], mode=mode, queues=queues, spin=spin,
                        **kw) as rx:
        prepare(touch_h)
        print("ready", flush=True)
        first = rx.pump(timeout=30)          # the clock starts with the first packet
        t0 = time.monotonic()
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        state = np.zeros((len(rx.lanes), 2), np.int64)
        rx.run(touch_h, state, duration=seconds)
        dt = time.monotonic() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        st = rx.stats()
    per = [int(x) for x in state[:, 0]]
    print(json.dumps({"packets": first + sum(per), "seconds": dt, "cpu": cpu,
                      "per_queue": per, "drops": st["drops"], "check": int(state[:, 1].sum() & 1),
                      **{k: st["receiver"][k] for k in ("batches", "sleeps", "kicks", "naps")}}))


if __name__ == "__main__":
    main()
