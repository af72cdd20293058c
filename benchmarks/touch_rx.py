"""xdprx contender: Receiver.run(handler), the compiled receive loop calling
an njit handler that reads the first 64 bytes of every packet (as the C loop).

    touch_rx.py [--spin US] [--rx-usecs US] [--recv] IFNAME SECONDS MODE [BATCH] [CACHE|-] [NUMA] [SYSFS_ROOT]

--spin 0 is poll mode: block in ppoll() as soon as the ring is empty; --spin
US busy-polls that long first. --rx-usecs: receive moderation (default: the
Receiver's). --recv: the Python API instead (recv() per
batch, touch64 over the batch arrays)."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from numba import njit

import xdprx
from xdprx.consumer import prepare
from xdprx.numa import Topology

ETH_IP_UDP = 42  # header bytes in front of the payload (IPv4, no VLAN)


@njit(cache=True, nogil=True)
def touch64(umem, offsets, n):
    """Read the first 64 bytes of each packet (8 u64 loads, as the C loop)."""
    u64 = umem.view(np.uint64)
    s = 0
    for i in range(n):
        w = (offsets[i] - ETH_IP_UDP) >> 3
        for j in range(8):
            s += u64[w + j]
    return s


@njit(cache=True, nogil=True)
def touch_h(umem, offsets, lengths, seqs, groups, state):
    """The handler: touch64 of the batch; state = [packets, checksum]."""
    state[1] += touch64(umem, offsets, offsets.shape[0])
    state[0] += offsets.shape[0]
    return 0


def main() -> None:
    argv, spin = sys.argv, 1000
    if "--spin" in argv:
        i = argv.index("--spin")
        spin = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    rx_usecs = None                    # the Receiver's default
    if "--rx-usecs" in argv:
        i = argv.index("--rx-usecs")
        rx_usecs = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    use_recv = "--recv" in argv
    argv = [a for a in argv if a != "--recv"]
    sys.argv = argv
    ifname, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    cache = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    numa = sys.argv[6] if len(sys.argv) > 6 else "auto"      # auto | off | NODE
    topo = Topology(sys.argv[7]) if len(sys.argv) > 7 else None   # a simulated sysfs
    with xdprx.Receiver(ifname, ["239.1.2.3:5000"], mode=mode, batch_size=batch,
                        cache=cache, numa=numa, topology=topo, spin=spin,
                        **({} if rx_usecs is None else {"rx_usecs": rx_usecs})) as rx:
        touch64(rx.umem.area, np.zeros(1, np.uint64) + 4096, 0)
        prepare(touch_h)
        print("ready", flush=True)
        # wait for the first packet, then measure a fixed window
        first = rx.recv(timeout=30)
        pkts, acc = len(first), 0
        t0 = time.monotonic()
        import resource
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        if use_recv:
            while True:
                b = rx.recv(timeout=0.05)
                n = len(b)
                if n:
                    acc += touch64(b.umem, b.offsets, n)
                    pkts += n
                if time.monotonic() - t0 >= seconds:
                    break
        else:
            first.release()
            state = np.zeros(2, np.int64)
            rx.run(touch_h, state, duration=seconds)
            pkts, acc = pkts + int(state[0]), int(state[1])
        dt = time.monotonic() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        st = rx.stats()
    n = st["numa"]
    if os.environ.get("XDPRX_BENCH_STATS"):      # the receiver's whole stats, for profiling
        with open(os.environ["XDPRX_BENCH_STATS"], "w") as f:
            json.dump(st, f, default=str)
    print(json.dumps({"packets": pkts, "seconds": dt, "cpu": cpu, "drops": st["drops"],
                      "check": int(acc & 1), "numa_switches": n.get("switches", 0),
                      "numa_windows": n.get("windows", 0), "refill_node": n.get("refill_node")}))


if __name__ == "__main__":
    main()
