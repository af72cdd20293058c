"""A reconnecting Subscriber process for test_restart: reads GROUP from the
daemon at CONTROL with reconnect=True, through run(handler) ("run") or
recv() ("recv"), until SIGTERM. Logs every packet as (seq, payload hash)
and every reconnect as a marker, then prints one JSON line: its stats, its
past epochs, and the log split by daemon lifetime as (seq, payload index)
pairs (index: which sent payload it is, -1 if none matches), plus the fds
and mappings it had before the first and after the last reconnect.

    run_restart_consumer.py CONTROL GROUP MODE SEED N LO HI"""
import json
import os
import signal
import sys
import time

import numba
import numpy as np

from xdprx import Subscriber

from handlers import expected_hashes, fnv

L_N, L_CAP, L_LOG = 0, 1, 8        # state: [logged, capacity, -, ..., (seq, hash) pairs]
MARK = -1                          # a reconnect: (MARK, epoch)


@numba.njit(cache=True)
def log_packets(umem, offsets, lengths, seqs, groups, state):
    for i in range(offsets.shape[0]):
        k = state[L_N]
        if k < state[L_CAP]:
            state[L_LOG + 2 * k] = np.int64(seqs[i])
            state[L_LOG + 2 * k + 1] = fnv(umem, offsets[i], lengths[i])
            state[L_N] = k + 1
    return 0


def counts() -> tuple[int, int]:
    with open("/proc/self/maps") as f:
        return len(os.listdir("/proc/self/fd")), sum(1 for _ in f)


def main() -> None:
    control, group, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    seed, n, lo, hi = (int(x) for x in sys.argv[4:8])
    cap = 4 * n
    state = np.zeros(L_LOG + 2 * cap, np.int64)
    state[L_CAP] = cap
    res = {"first": None, "last": None, "reconnect_times": []}

    def mark(s: Subscriber) -> None:
        # runs in this thread between compiled calls: the log is ours to touch
        k = state[L_N]
        if k < cap:
            state[L_LOG + 2 * k], state[L_LOG + 2 * k + 1] = MARK, s.epoch
            state[L_N] = k + 1
        res["reconnect_times"].append(time.monotonic())
        if res["first"] is None:
            res["first"] = counts()

    sub = Subscriber(control, group, ring_size=4096, name=f"restart-{mode}",
                     handler=log_packets, reconnect=True, on_reconnect=mark)
    stop = []

    def on_term(*_):
        stop.append(1)
        sub.stop()
    signal.signal(signal.SIGTERM, on_term)
    epoch0 = sub.epoch
    print("ready", flush=True)
    while not stop:
        if mode == "run":
            sub.run(log_packets, state, duration=0.25)
        else:
            b = sub.recv(timeout=0.1)
            if len(b):
                log_packets(b.umem, b.offsets, b.lengths, b.seqs, b.groups_idx, state)
    res["last"] = counts()
    want = {int(h): i for i, h in enumerate(expected_hashes(seed, n, lo, hi))}
    lifetimes = [[]]
    for k in range(int(state[L_N])):
        s, h = int(state[L_LOG + 2 * k]), int(state[L_LOG + 2 * k + 1])
        if s == MARK:
            lifetimes.append([])
        else:
            lifetimes[-1].append((s, want.get(h, -1)))
    st = sub.stats()
    epochs = sub.epochs + [{"epoch": sub.epoch, "received": None}]
    sub.close()
    print(json.dumps({"stats": st, "epochs": epochs, "epoch0": epoch0, "lifetimes": lifetimes,
                      "logged": int(state[L_N]), "capacity": cap, **res}), flush=True)


if __name__ == "__main__":
    main()
