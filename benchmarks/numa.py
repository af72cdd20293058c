"""NUMA benchmark (issue 5): what consumer feedback and the refill policy cost
on the receive rate, with and without, in the same run.

    .venv/bin/python benchmarks/numa.py [--quick] [--reps N] [--seconds S]

Placement A (bench.py): live-frames generator and the kernel's receive work
on CPU 0, the receiver alone on CPU 1, reading 64 bytes of every packet.
Contenders, interleaved within each rep:

  off        --numa off: one pool, no binding, no policy (the baseline)
  auto       this machine (one node): one pool mbind()-ed to node 0, policy
             present but with nothing to choose
  auto_2node a simulated 2-node topology (node 0 = CPU 0, node 1 = CPU 1):
             two node pools (every frame's pool found by two shifts, per
             packet), feedback gathered and the policy run every 64 batches,
             and one real switch (the reader runs on node 1's CPU)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench import OUT, _cpu_model, build, measure, pps_summary  # noqa: E402

from xdprx.testing import VethPair, fake_sysfs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 rep of 2 s")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", default=str(OUT / "results-numa.json"))
    a = ap.parse_args()
    if a.quick:
        a.reps, a.seconds = 1, 2.0
    build()
    sysfs = fake_sysfs(tempfile.mkdtemp(prefix="xrx-sysfs-"), {0: "0", 1: "1"})
    py = [sys.executable, str(HERE / "touch_rx.py"), VethPair.rx_if, str(a.seconds), "native",
          "256", "-"]
    cases = {"off": py + ["off"], "auto": py + ["auto"], "auto_2node": py + ["auto", sysfs]}
    runs: dict[str, list[dict]] = {k: [] for k in cases}
    with VethPair() as pair:
        names = list(cases)
        for rep in range(a.reps):
            for name in names[rep % 3:] + names[:rep % 3]:   # rotate: no order bias
                argv = cases[name]
                r = measure(pair, argv, a.seconds)
                runs[name].append(r)
                print(f"rep {rep + 1} {name:10s} {r['pps'] / 1e6:6.3f} Mpps "
                      f"{r['cpu_ns_per_pkt']:6.1f} ns CPU/pkt  switches {r['numa_switches']} "
                      f"windows {r['numa_windows']} refill node {r['refill_node']}", flush=True)
    res = {name: dict(pps_summary(rs), numa_switches=[r["numa_switches"] for r in rs],
                      numa_windows=[r["numa_windows"] for r in rs]) for name, rs in runs.items()}
    base = res["off"]["pps_median"]
    for name in ("auto", "auto_2node"):
        res[name]["ratio_to_off"] = res[name]["pps_median"] / base
        res[name]["overhead_pct"] = (1 - res[name]["ratio_to_off"]) * 100
    report = {"machine": {"cpu": _cpu_model(), "kernel": __import__("platform").release()},
              "placement": "A", "reps": a.reps, "seconds": a.seconds, "results": res,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "benchmarks/numa.py " + " ".join(sys.argv[1:])}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print("\n| contender | Mpps median (min-max) | CPU ns/pkt | vs off |\n|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['pps_median'] / 1e6:.3f} ({r['pps_min'] / 1e6:.3f}-"
              f"{r['pps_max'] / 1e6:.3f}) | {r['cpu_ns_per_pkt_median']:.1f} | "
              f"{r.get('ratio_to_off', 1.0):.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
