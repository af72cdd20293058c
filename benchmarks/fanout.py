"""Fan-out benchmark: deliveries/s to N consumers, xdprx against the kernel
path it replaces (N UDP sockets joined to the group, recvmmsg), same veth,
same generator, same run; N = 1, 4, 16, 64 (issue 3).

    .venv/bin/python benchmarks/fanout.py [--quick] [--seconds S] [--reps R]

Placement A (PLATFORM.md): the live-frames generator on CPU 0, where veth also
runs the receive side's kernel work (XDP, AF_XDP copy, UDP stack and its
per-socket clones); the receiving process alone on CPU 1. The kernel
contender gets an XDP_PASS program on the receiving veth (live frames need
NAPI there, which xdprx's own program provides for xdprx). Every consumer
and every socket reads the first 64 bytes of every packet it receives.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench import OUT, _cpu_model, add_rates, build, run_pinned

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from xdprx.testing import VethPair  # noqa: E402


def run_one(pair: VethPair, argv: list[str], seconds: float, kernel_path: bool,
            after_ready=None) -> dict:
    if kernel_path:
        r = pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpdrv", "obj",
                            str(OUT / "pass_kern.o"), "sec", "xdp"])
        assert r.returncode == 0, r.stderr
    try:
        res = run_pinned(pair, argv, seconds, after_ready)
    finally:
        if kernel_path:
            pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpdrv", "off"])
    return add_rates(res, "deliveries", "deliveries_per_s", "cpu_ns_per_delivery")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N = 1, 16; 1 rep of 2 s")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=str(OUT / "fanout.json"))
    a = ap.parse_args()
    ns = (1, 4, 16, 64)
    if a.quick:
        a.seconds, a.reps, ns = 2.0, 1, (1, 16)
    build()
    runs: dict[str, list[dict]] = {}
    with VethPair() as pair:
        for rep in range(a.reps):
            for n in ns:
                for name, argv, kpath in (
                        ("kernel", [str(OUT / "udprx"), pair.rx_if, "239.1.2.3", "5000", str(n),
                                    str(a.seconds)], True),
                        ("xdprx", [sys.executable, str(HERE / "fanout_rx.py"), pair.rx_if,
                                   str(a.seconds), str(n), "native"], False)):
                    r = run_one(pair, argv, a.seconds, kpath)
                    runs.setdefault(f"{name}/{n}", []).append(r)
                    print(f"rep {rep + 1} {name:6s} N={n:<3d} "
                          f"{r['deliveries_per_s'] / 1e6:7.2f} M deliveries/s "
                          f"({r['deliveries_per_s'] / n / 1e6:5.2f} Mpps per consumer) "
                          f"{r['cpu_ns_per_delivery']:6.1f} ns CPU/delivery", flush=True)
    rows = []
    for n in ns:
        row = {"n": n}
        for name in ("kernel", "xdprx"):
            rs = runs[f"{name}/{n}"]
            d = [r["deliveries_per_s"] for r in rs]
            row[name] = {"deliveries_per_s_median": statistics.median(d), "min": min(d),
                         "max": max(d), "packets_per_s_median": statistics.median(d) / n,
                         "cpu_ns_per_delivery_median":
                             statistics.median(r["cpu_ns_per_delivery"] for r in rs),
                         "offered_pps_median": statistics.median(r["offered_pps"] for r in rs)}
        k = row["kernel"]["deliveries_per_s_median"]
        row["ratio"] = row["xdprx"]["deliveries_per_s_median"] / k if k else 0.0
        rows.append(row)
    import os
    import platform
    report = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                          "cpu": _cpu_model(), "placement": "A", "frame_bytes": 102},
              "command": " ".join(sys.argv), "seconds": a.seconds, "reps": a.reps,
              "rows": rows, "runs": runs, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print("\n| N | kernel M deliveries/s (min-max) | kernel Mpps/consumer | xdprx M deliveries/s "
          "(min-max) | xdprx Mpps/consumer | xdprx / kernel |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        k, x = r["kernel"], r["xdprx"]
        print(f"| {r['n']} | {k['deliveries_per_s_median'] / 1e6:.2f} ({k['min'] / 1e6:.2f}-"
              f"{k['max'] / 1e6:.2f}) | {k['packets_per_s_median'] / 1e6:.3f} | "
              f"{x['deliveries_per_s_median'] / 1e6:.2f} ({x['min'] / 1e6:.2f}-"
              f"{x['max'] / 1e6:.2f}) | {x['packets_per_s_median'] / 1e6:.3f} | "
              f"{r['ratio']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
