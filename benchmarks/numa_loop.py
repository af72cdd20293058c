"""The receive loop's CPU cost per packet with and without NUMA feedback and
policy, on in-memory rings: no kernel, no veth, so none of the VM's
run-to-run noise (the veth runs of benchmarks/numa.py spread by +-15 %,
more than the effect measured here).

    .venv/bin/python benchmarks/numa_loop.py [--quick] [--reps N]

One thread, pinned to CPU 1, does per batch of 256 what the kernel and the
receiver do: a Numba "kernel" step moves frames from FILL to RX writing a
102-byte multicast frame into each (as copy mode does), then the real
bulk.rx_burst (reap, refill, parse, descriptor, fan-out to one consumer,
publish), then the consumer's real cring_read / cring_release with its
feedback stores (bytes every batch, getcpu every 64 batches).

  off      one pool (--numa off)
  2node    two node pools (a simulated 2-node topology: CPU 0 node 0, CPU 1
           node 1): each frame's pool found by two shifts, per packet; the
           feedback gathered and the policy run every 64 batches (one real
           switch to node 1, where the consumer runs)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench import OUT, _cpu_model  # noqa: E402

from xdprx import bulk, cring as CR
from xdprx.feedback import Feedback  # noqa: E402
from xdprx.groups import group_table, parse_groups  # noqa: E402
from xdprx.hub import Hub  # noqa: E402
from xdprx.jit import kernel  # noqa: E402
from xdprx.numa import Policy, Topology, getcpu  # noqa: E402
from xdprx.ring import cons_peek, cons_release, prod_free, prod_submit  # noqa: E402
from xdprx.testing import eth, fake_sysfs, ipv4, udp  # noqa: E402
from xdprx.umem import FramePool  # noqa: E402

FRAMES, BATCH, EVERY = 4096, 256, 64


@kernel
def fake_kernel(fill_prod, fill_cons, fill_slots, kfill, rx_prod, rx_cons, rx_slots, krx,
                umem, pkt, n):
    """Copy mode's receive: FILL addresses -> packet copied at +256 -> RX."""
    fmask, rsize = fill_slots.shape[0] - 1, rx_slots.shape[0]
    k = cons_peek(fill_prod, kfill, n)
    m = min(k, prod_free(rx_cons, krx, rsize, n))
    ln = pkt.shape[0]
    for i in range(m):
        a = fill_slots[(kfill[1] + i) & fmask] + 256
        for b in range(ln):     # a loop: kernels allocate nothing (jit.kernel)
            umem[a + b] = pkt[b]
        rx_slots[(krx[0] + i) & (rsize - 1), 0] = a
        rx_slots[(krx[0] + i) & (rsize - 1), 1] = ln
    cons_release(fill_cons, kfill, m)
    prod_submit(rx_prod, krx, m)
    return m


class Loop:
    """One variant's rings, pool, consumer and policy, run a chunk at a time."""

    def __init__(self, variant: str, sysfs: str) -> None:
        nodes = [0, 1] if variant == "2node" else None
        self.pool = FramePool(FRAMES, 2048, nodes=nodes)
        self.umem = np.zeros(self.pool.span * 2048, np.uint8)
        self.rx = (np.zeros(1, np.uint32), np.zeros(1, np.uint32),
                   np.zeros((FRAMES, 2), np.uint64), np.zeros(2, np.int64))
        self.fill = (np.zeros(1, np.uint32), np.zeros(1, np.uint32), np.zeros(FRAMES, np.uint64),
                     np.zeros(2, np.int64))
        self.kfill, self.krx = np.zeros(2, np.int64), np.zeros(2, np.int64)
        self.flags = np.zeros(1, np.uint32)
        self.g_addr, self.g_port = group_table(parse_groups(["239.1.2.3:5000"]))
        self.g_seq = np.zeros(1, np.uint64)
        self.out = [np.zeros(BATCH, t) for t in (np.uint64, np.uint64, np.uint32, np.uint64,
                                                 np.int32)]
        self.stats = np.zeros(bulk.N_STATS, np.int64)
        self.hub = Hub(1, FRAMES, FRAMES)
        e = self.hub.add([0], 4096, None, 2048)
        self.v = CR.RingViews(e.ring._ring, e.ring._ctl, writable_ring=False)
        self.local = np.zeros(2, np.int64)
        self.counts, self.next_seq = np.zeros(5, np.int64), np.full(1, CR.NO_SEQ, np.uint64)
        self.c_out = [np.zeros(BATCH, t) for t in (np.uint64, np.uint64, np.uint32, np.uint64,
                                                   np.int32)]
        self.fb = self.v.feedback[8:24].view(np.uint64)
        self.fb_where = self.v.feedback[:8].view(np.uint32)
        self.pkt = np.frombuffer(eth(ipv4("239.1.2.3", udp(4000, 5000, bytes(60))), 0x0800),
                                 np.uint8).copy()
        self.policy = self.feedback = None
        if nodes:
            self.policy = Policy(nodes, "auto", start=0)
            self.feedback = Feedback(Topology(sysfs), nodes, len(self.hub.ctab))
        self.nxt = 0
        self.b = 0

    def chunk(self, batches: int) -> tuple[int, float]:
        """@batches receive batches; returns (packets, seconds)."""
        rx, fill, st, v, fb = self.rx, self.fill, self.stats, self.v, self.fb
        p0 = int(st[bulk.S_PACKETS])
        t0 = time.perf_counter()
        for _ in range(batches):
            self.b += 1
            fake_kernel(fill[0], fill[1], fill[2], self.kfill, rx[0], rx[1], rx[2], self.krx,
                        self.umem, self.pkt, BATCH)
            bulk.rx_burst(rx[0], rx[1], rx[2], rx[3], fill[0], fill[1], fill[2], fill[3],
                          self.flags, self.pool.t, self.umem, self.g_addr, self.g_port,
                          self.g_seq, *self.out, st, self.hub.ctab, self.hub.sub_start,
                          self.hub.sub_cons, self.hub.wake, self.hub.hub, self.b, 16, 0)
            n = CR.cring_read(v.prod, v.slots, self.local, self.umem, 11, BATCH, self.next_seq,
                              self.counts, *self.c_out)
            if n:                               # what Reader._release_held does
                CR.cring_release(v.cons, self.local, n)
                fb[0] = self.counts[2]
                fb[1] = self.counts[0]
                if self.b & 63 == 1:
                    self.fb_where[:] = getcpu()
            if self.policy is not None and st[bulk.S_BATCHES] >= self.nxt:   # _numa_tick
                self.nxt = st[bulk.S_BATCHES] + EVERY
                per = self.feedback.collect(self.hub.ctab, self.hub.hub,
                                            int(st[bulk.S_OWN_BYTES]))
                if self.policy.observe(per, int(st[bulk.S_BATCHES])):
                    self.pool.set_active(self.policy.current)
        return int(st[bulk.S_PACKETS]) - p0, time.perf_counter() - t0

    def close(self) -> dict:
        st = self.stats
        assert int(st[bulk.S_PACKETS]) == int(self.counts[0]), "every packet read"
        assert st[bulk.S_VIOLATIONS] == 0 and self.counts[1] == 0, "no violation, no gap"
        self.pool.check(int((self.fill[0][0] - self.fill[1][0]) & 0xFFFFFFFF))
        self.hub.close()
        return {"packets": int(st[bulk.S_PACKETS]),
                "switches": len(self.policy.switches) if self.policy else 0,
                "refill_node": self.policy.current if self.policy else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5, help="x 20 paired chunks")
    ap.add_argument("--batches", type=int, default=20000, help="per variant per rep")
    ap.add_argument("--json", default=str(OUT / "results-numa-loop.json"))
    a = ap.parse_args()
    if a.quick:
        a.reps, a.batches = 1, 4000
    os.sched_setaffinity(0, {1})
    sysfs = fake_sysfs(tempfile.mkdtemp(prefix="xrx-sysfs-"), {0: "0", 1: "1"})
    loops = {"off": Loop("off", sysfs), "2node": Loop("2node", sysfs)}
    for lp in loops.values():
        lp.chunk(300)                        # compile, warm, and the one switch
    # the VM's speed drifts by +-15 % over seconds: alternate short chunks and
    # compare each pair, so the drift cancels out of the ratio
    ns: dict[str, list[float]] = {k: [] for k in loops}
    paired = []
    for i in range(a.reps * 20):
        order = ("off", "2node") if i % 2 == 0 else ("2node", "off")
        got = {}
        for name in order:
            pk, dt = loops[name].chunk(a.batches // 20)
            got[name] = dt * 1e9 / pk
            ns[name].append(got[name])
        paired.append(got["2node"] / got["off"])
    final = {k: lp.close() for k, lp in loops.items()}
    for k, f in final.items():
        print(f"{k}: {f}")
    res = {k: {"ns_per_pkt_median": statistics.median(v), "min": min(v), "max": max(v),
               **final[k]} for k, v in ns.items()}
    res["pairs"] = len(paired)
    res["overhead_pct_median_of_paired"] = (statistics.median(paired) - 1) * 100
    q = statistics.quantiles(paired, n=4)
    res["overhead_pct_paired_iqr"] = [(q[0] - 1) * 100, (q[2] - 1) * 100]
    report = {"machine": {"cpu": _cpu_model(), "kernel": __import__("platform").release()},
              "batch": BATCH, "frames": FRAMES, "batches_per_run": a.batches, "reps": a.reps,
              "results": res, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "benchmarks/numa_loop.py " + " ".join(sys.argv[1:])}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"\noff {res['off']['ns_per_pkt_median']:.1f} ns/pkt, 2node "
          f"{res['2node']['ns_per_pkt_median']:.1f} ns/pkt: overhead "
          f"{res['overhead_pct_median_of_paired']:+.2f} % (median of {len(paired)} paired chunks, "
          f"IQR {res['overhead_pct_paired_iqr'][0]:+.2f} .. {res['overhead_pct_paired_iqr'][1]:+.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
