"""xdprx separate-process fan-out contender: N Subscriber processes of one
`xdprx run` daemon, every one reading the first 64 bytes of every packet.

    proc_rx.py CONTROL N
Imports and compiles once, then forks the N subscribers (cheap even for 64:
they share the parent's pages), prints "ready" when all are subscribed and
serves like fanout_rx.py's serve mode (serve.py) until stdin closes. Each
child keeps its counts and latency histogram in one row of a shared array;
the parent sums the rows for each report."""
from __future__ import annotations

import mmap
import os
import sys
import time

import numpy as np

from xdprx import consumer
from xdprx.consumer import Subscriber
from serve import NB, Requests, account, hist_json
from touch_rx import touch64

GOT, CHECK, READY, CPU_US, HEAD = 0, 1, 2, 3, 8   # row: counters, then the histogram


def child(control: str, row: np.ndarray, stop: np.ndarray) -> None:
    sub = Subscriber(control, "239.1.2.3:5000", ring_size=4096, batch_size=1024, spin=16,
                     name="bench")
    hist = row[HEAD:]
    acc = 0
    row[READY] = 1
    while not stop[0] and not sub.daemon_gone:
        b = sub.recv(timeout=0.05)
        if len(b):
            acc += account(b, hist)
            row[GOT] += len(b)
    row[CHECK] = acc & 1
    t = os.times()
    row[CPU_US] = int((t.user + t.system) * 1e6)
    sub.close()


def main() -> None:
    control, n = sys.argv[1], int(sys.argv[2])
    consumer.warm()
    touch64(np.zeros(8192, np.uint8), np.zeros(1, np.uint64) + 4096, 0)
    shm = mmap.mmap(-1, 8 * (n + 1) * (HEAD + NB))
    rows = np.frombuffer(shm, np.int64).reshape(n + 1, HEAD + NB)
    stop = rows[n]
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(control, rows[i], stop)
            except BaseException as e:   # noqa: BLE001 - report, never return into the parent's code
                print(f"subscriber {i}: {e!r}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        pids.append(pid)
    deadline = time.monotonic() + 60
    while rows[:n, READY].sum() < n:
        if time.monotonic() > deadline or any(os.waitpid(p, os.WNOHANG)[0] for p in pids):
            stop[0] = 1
            sys.exit("subscribers did not start")
        time.sleep(0.01)
    print("ready", flush=True)
    req, answered = Requests(), 0
    last = np.zeros(NB, np.int64)
    while not req.closed:
        time.sleep(0.005)
        if req.asked > answered:
            h = rows[:n, HEAD:].sum(axis=0)
            got = rows[:n, GOT]
            answered = req.answer(answered, deliveries=int(got.sum()),
                                  min_per_consumer=int(got.min()), latency=hist_json(h - last))
            last = h
    stop[0] = 1
    bad = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in pids)
    print(f'{{"children_cpu": {rows[:n, CPU_US].sum() / 1e6}, "failed": {bad}}}', flush=True)


if __name__ == "__main__":
    main()
