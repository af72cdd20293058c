"""Per-queue receive loops side by side, without the kernel in the way: do
two loops (two queues' state on one shared UMEM, as multi-queue Receiver
lays it out) receive twice what one does?

    .venv/bin/python benchmarks/queues_loop.py [--quick] [--reps N] [--json F]

Each queue's loop is one compiled, nogil function on a thread of its own,
pinned to its own CPU (queue q on CPU q), running per batch of 256 what the
kernel and xdprx do: a Numba "kernel" step moves frames from that queue's
FILL ring to its RX ring writing a 102-byte multicast frame into each (copy
mode), then the real bulk.rx_burst (reap, refill, parse, descriptor, fan-out
to one consumer ring, publish) over that queue's FramePool (lane q of the
shared UMEM), then the consumer's real cring_read / cring_release.

  1 queue    one loop on CPU 0
  2 queues   two loops, CPUs 0 and 1, disjoint frames of one UMEM

Reported: aggregate packets/s and the ratio 2 queues / 1 queue (target
>= 1.8x), medians of --reps interleaved runs. A veth run cannot show this on
a 2-core VM: the generator and the kernel's receive work need the CPUs the
loops would scale onto (benchmarks/RESULTS.md, "Multi-queue").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench import OUT, _cpu_model  # noqa: E402
from numa_loop import fake_kernel  # noqa: E402

from xdprx import bulk, cring as CR
from xdprx.groups import group_table, parse_groups  # noqa: E402
from xdprx.hub import Hub  # noqa: E402
from xdprx.jit import kernel  # noqa: E402
from xdprx.testing import eth, ipv4, udp  # noqa: E402
from xdprx.umem import FramePool  # noqa: E402

FRAMES, BATCH = 4096, 256


@kernel
def lane_run(fill_prod, fill_cons, fill_slots, fill_local, kfill, rx_prod, rx_cons, rx_slots,
             rx_local, krx, flags, pool, umem, pkt, g_addr, g_port, g_seq, o_frame, o_off,
             o_len, o_seq, o_sub, stats, ctab, sub_start, sub_cons, wake, hub, c_prod, c_slots,
             c_cons, c_local, next_seq, counts, c_frame, c_off, c_len, c_seq, c_sub, batches):
    """@batches of kernel step -> rx_burst -> consumer read + release."""
    for b in range(batches):
        fake_kernel(fill_prod, fill_cons, fill_slots, kfill, rx_prod, rx_cons, rx_slots, krx,
                    umem, pkt, BATCH)
        bulk.rx_burst(rx_prod, rx_cons, rx_slots, rx_local, fill_prod, fill_cons, fill_slots,
                      fill_local, flags, pool, umem, g_addr, g_port, g_seq, o_frame, o_off,
                      o_len, o_seq, o_sub, stats, ctab, sub_start, sub_cons, wake, hub, b, 16, 0)
        n = CR.cring_read(c_prod, c_slots, c_local, umem, 11, BATCH, next_seq, counts,
                          c_frame, c_off, c_len, c_seq, c_sub)
        if n:
            CR.cring_release(c_cons, c_local, n)
    return stats[bulk.S_PACKETS]


class Lane:
    """Queue @lane's rings, pool (lane of @lanes on @umem) and one consumer."""

    def __init__(self, lane: int, lanes: int, umem: np.ndarray) -> None:
        self.pool = FramePool(FRAMES, 2048, lane=lane, lanes=lanes)
        self.umem = umem
        z32, z64 = (lambda: np.zeros(1, np.uint32)), (lambda: np.zeros(2, np.int64))
        self.fill = (z32(), z32(), np.zeros(FRAMES, np.uint64), z64(), z64())
        self.rx = (z32(), z32(), np.zeros((FRAMES, 2), np.uint64), z64(), z64())
        self.flags = z32()
        self.pkt = np.frombuffer(eth(ipv4("239.1.2.3", udp(4000, 5000, bytes(60))), 0x0800),
                                 np.uint8).copy()
        self.g_addr, self.g_port = group_table(parse_groups(["239.1.2.3:5000"]))
        self.g_seq = np.full(1, np.uint64(lane) << np.uint64(56), np.uint64)
        self.out = [np.zeros(BATCH, t) for t in (np.uint64, np.uint64, np.uint32, np.uint64,
                                                 np.int32)]
        self.stats = np.zeros(bulk.N_STATS, np.int64)
        self.hub = Hub(1, FRAMES, FRAMES)
        e = self.hub.add([0], 4096, None, 2048)
        self.v = CR.RingViews(e.ring._ring, e.ring._ctl, writable_ring=False)
        self.c_local = np.zeros(2, np.int64)
        self.next_seq = np.full(1, CR.NO_SEQ, np.uint64)
        self.counts = np.zeros(5, np.int64)
        self.c_out = [np.zeros(BATCH, t) for t in (np.uint64, np.uint64, np.uint32, np.uint64,
                                                   np.int32)]

    def run(self, batches: int) -> int:
        f, r, h, v = self.fill, self.rx, self.hub, self.v
        return int(lane_run(f[0], f[1], f[2], f[3], f[4], r[0], r[1], r[2], r[3], r[4],
                            self.flags, self.pool.t, self.umem, self.pkt, self.g_addr,
                            self.g_port, self.g_seq, *self.out, self.stats, h.ctab, h.sub_start,
                            h.sub_cons, h.wake, h.hub, v.prod, v.slots, v.cons, self.c_local,
                            self.next_seq, self.counts, *self.c_out, batches))

    def close(self) -> None:
        st = self.stats
        assert int(st[bulk.S_PACKETS]) == int(self.counts[0]), "every packet read"
        assert st[bulk.S_VIOLATIONS] == 0 and self.counts[1] == 0, "no violation, no gap"
        self.pool.check(int((self.fill[0][0] - self.fill[1][0]) & 0xFFFFFFFF))
        self.hub.close()


def timed(lanes: list[Lane], batches: int) -> float:
    """Every lane on its own thread and CPU, started together: packets/s."""
    barrier = threading.Barrier(len(lanes) + 1)
    got = [0] * len(lanes)

    def work(k: int) -> None:
        os.sched_setaffinity(0, {k})
        barrier.wait()
        before = int(lanes[k].stats[bulk.S_PACKETS])
        got[k] = lanes[k].run(batches) - before
    ts = [threading.Thread(target=work, args=(k,)) for k in range(len(lanes))]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return sum(got) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batches", type=int, default=20000, help="per loop per run")
    ap.add_argument("--json", default=str(OUT / "results-queues-loop.json"))
    a = ap.parse_args()
    if a.quick:
        a.reps, a.batches = 3, 4000
    ncpu = len(os.sched_getaffinity(0))
    span = FramePool(FRAMES, 2048, lane=0, lanes=2).span
    umem = np.zeros(span * 2048, np.uint8)          # one UMEM, two queues' frames
    one = [Lane(0, 2, umem)]
    two = [Lane(0, 2, umem), Lane(1, 2, umem)]
    for lp in one + two:
        lp.run(200)                                  # compile / load, warm
    runs: dict[str, list[float]] = {"1": [], "2": []}
    for i in range(a.reps):
        for name in (("1", "2") if i % 2 == 0 else ("2", "1")):
            runs[name].append(timed(one if name == "1" else two, a.batches))
    for lp in one + two:
        lp.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["2"] / med["1"]
    paired = [b / a_ for a_, b in zip(runs["1"], runs["2"])]
    res = {"pps_median": med, "pps_min": {k: min(v) for k, v in runs.items()},
           "pps_max": {k: max(v) for k, v in runs.items()},
           "ratio_2_over_1": ratio, "ratio_paired_median": statistics.median(paired),
           "target": 1.8, "met": ratio >= 1.8, "cpus": ncpu}
    report = {"machine": {"cpu": _cpu_model(), "kernel": os.uname().release, "cpus": ncpu},
              "batch": BATCH, "frames_per_queue": FRAMES, "batches_per_run": a.batches,
              "reps": a.reps, "results": res, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "benchmarks/queues_loop.py " + " ".join(sys.argv[1:])}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"1 queue {med['1'] / 1e6:.2f} Mpps, 2 queues {med['2'] / 1e6:.2f} Mpps: "
          f"{ratio:.2f}x (target >= 1.8x: {'met' if ratio >= 1.8 else 'missed'}; medians of "
          f"{a.reps} interleaved runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
