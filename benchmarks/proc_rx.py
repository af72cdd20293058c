"""xdprx separate-process fan-out contender: N Subscriber processes of one
`xdprx run` daemon, every one running the compiled consume loop with an njit
handler that reads the first 64 bytes of every packet (serve.account_h).

    proc_rx.py CONTROL N [SECONDS]
Imports and compiles once, then forks the N subscribers (cheap even for 64:
they share the parent's pages), prints "ready" when all are subscribed. With
SECONDS (saturation) it waits for the first packet, measures SECONDS and
prints one JSON line; without, it serves like fanout_rx.py's serve mode
(serve.py) until stdin closes. Each child's handler state is one row of a
shared array (counts, latency histogram); the parent sums the rows."""
from __future__ import annotations

import json
import mmap
import os
import sys
import time

import numpy as np

from xdprx import consumer
from xdprx.consumer import Subscriber, prepare
from serve import H_CHECK, H_GOT, H_HIST, Requests, account_h, handler_state, hist_json

READY, CPU_US, ROWS_EXTRA = 0, 1, 2


def child(control: str, row: np.ndarray, flags: np.ndarray, stop: np.ndarray) -> None:
    sub = Subscriber(control, "239.1.2.3:5000", ring_size=4096, batch_size=1024,
                     name="bench", handler=account_h)
    row[:] = handler_state()
    flags[READY] = 1
    while not stop[0] and not sub.daemon_gone:
        sub.run(account_h, row, duration=0.05)
    t = os.times()
    flags[CPU_US] = int((t.user + t.system) * 1e6)
    sub.close()


def main() -> None:
    control, n = sys.argv[1], int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    consumer.warm()
    prepare(account_h)
    width = len(handler_state())
    shm = mmap.mmap(-1, 8 * (n * (width + ROWS_EXTRA) + 1))
    arr = np.frombuffer(shm, np.int64)
    rows = arr[:n * width].reshape(n, width)
    flags = arr[n * width:n * (width + ROWS_EXTRA)].reshape(n, ROWS_EXTRA)
    stop = arr[-1:]
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(control, rows[i], flags[i], stop)
            except BaseException as e:   # noqa: BLE001 - report, never return into the parent's code
                print(f"subscriber {i}: {e!r}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        pids.append(pid)
    deadline = time.monotonic() + 60
    while flags[:, READY].sum() < n:
        if time.monotonic() > deadline or any(os.waitpid(p, os.WNOHANG)[0] for p in pids):
            stop[0] = 1
            sys.exit("subscribers did not start")
        time.sleep(0.01)
    print("ready", flush=True)
    got = lambda: int(rows[:, H_GOT].sum())   # noqa: E731
    if seconds:
        deadline = time.monotonic() + 30
        while got() == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        base, t0 = got(), time.monotonic()
        time.sleep(seconds)
        deliveries, dt = got() - base, time.monotonic() - t0
    else:
        req, answered = Requests(), 0
        last = np.zeros(width - H_HIST, np.int64)
        while not req.closed:
            time.sleep(0.005)
            if req.asked > answered:
                h = rows[:, H_HIST:].sum(axis=0)
                g = rows[:, H_GOT]
                answered = req.answer(answered, deliveries=int(g.sum()),
                                      min_per_consumer=int(g.min()), latency=hist_json(h - last))
                last = h
    stop[0] = 1
    bad = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in pids)
    out = {"children_cpu": flags[:, CPU_US].sum() / 1e6, "failed": bad,
           "check": int(rows[:, H_CHECK].sum()) & 1}
    if seconds:
        out.update(deliveries=deliveries, seconds=dt, min_per_consumer=int(rows[:, H_GOT].min()))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
