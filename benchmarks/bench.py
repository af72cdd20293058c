"""xdprx benchmarks: Receiver against a C AF_XDP loop on libxdp, same veth,
same generator, same run (placement A of PLATFORM.md).

    .venv/bin/python benchmarks/bench.py [--quick] [--seconds S] [--reps N]

Placement A: the generator (BPF_PROG_RUN live frames, XDP_TX) is pinned to
CPU 0, and on veth the receive side's NAPI (XDP program + AF_XDP copy) runs on
the CPU that transmitted, so CPU 0 carries all kernel work; the receiver under
test is pinned alone to CPU 1. Every contender sees the same 102-byte frames
to 239.1.2.3:5000 and reads the first 64 bytes of each packet. Figures are
medians over --reps runs, contenders interleaved within each rep, and are
reported as ratios to the C loop measured in the same rep.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE.parent))

from xdprx.kernel import bpfprog
from xdprx.testing import VethPair  # noqa: E402

RX_CPU, GEN_CPU = "1", "0"


def build() -> None:
    r = subprocess.run(["make", "-s", "-C", str(HERE / "c"), f"OUT={OUT}"],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"building the C contenders failed:\n{r.stderr}")


def contenders(seconds: float, mode: str) -> dict[str, list[str]]:
    obj = str(bpfprog.build())
    py = [sys.executable, str(HERE / "touch_rx.py"), VethPair.rx_if, str(seconds), mode]
    return {
        "c_spin": [str(OUT / "rxloop"), obj, VethPair.rx_if, str(seconds), mode, "spin"],
        "c_poll": [str(OUT / "rxloop"), obj, VethPair.rx_if, str(seconds), mode, "poll"],
        "xdprx": py,
    }


def start_receiver(pair: VethPair, argv: list[str]) -> subprocess.Popen:
    """The receiver @argv on RX_CPU in the rx namespace, once it said "ready"."""
    rx = pair.popen("rx", ["taskset", "-c", RX_CPU] + argv, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    line = rx.stdout.readline()
    if line.strip() != "ready":
        rx.kill()
        raise RuntimeError(f"receiver did not start: {line} {rx.communicate()[1]}")
    return rx


def _receive(pair: VethPair, argv: list[str], seconds: float, gen_argv: list[str],
             after_ready: Callable[[VethPair], object] | None = None) -> tuple[dict, str]:
    """The receiver @argv (ready, then @after_ready) fed by the generator
    @gen_argv on GEN_CPU: (the receiver's last JSON line, the generator's stdout)."""
    rx = start_receiver(pair, argv)
    try:
        if after_ready:
            after_ready(pair)
        gen = pair.run("tx", ["taskset", "-c", GEN_CPU] + gen_argv, timeout=seconds * 3 + 60)
        out, _ = rx.communicate(timeout=seconds + 60)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    return json.loads(out.strip().splitlines()[-1]), gen.stdout


def run_paced(pair: VethPair, argv: list[str], seconds: float, rate: float,
              after_ready: Callable[[VethPair], object] | None = None) -> dict:
    """As run_pinned, but offered at a fixed @rate by the paced AF_PACKET
    generator (c/pgen.c) instead of saturated: CPU per packet when the
    receiver has to wake up for its packets."""
    total = seconds + 1.5
    res, out = _receive(pair, argv, seconds, [str(OUT / "pgen"), VethPair.tx_if, str(int(rate)),
                                              str(int(rate * total)), str(total * 2)],
                          after_ready)
    g = json.loads(out)
    res["offered"] = g["sent"]
    res["offered_pps"] = g["sent"] / g["seconds"]
    return add_rates(res, "packets", "pps", "cpu_ns_per_pkt")


def run_pinned(pair: VethPair, argv: list[str], seconds: float,
               after_ready: Callable[[VethPair], object] | None = None) -> dict:
    """Start the receiver @argv on RX_CPU in the rx namespace, wait for its
    "ready" (then call @after_ready, e.g. to set placement B), run the
    generator on GEN_CPU for @seconds + 1.5 s, and return the receiver's last
    JSON line plus offered_pps."""
    res, out = _receive(pair, argv, seconds, [str(OUT / "gen"), str(OUT / "gen_kern.o"),
                                              VethPair.tx_if, str(seconds + 1.5)], after_ready)
    res["offered"] = int(out.strip() or 0)
    res["offered_pps"] = res["offered"] / (seconds + 1.5)
    return res


def add_rates(res: dict, count: str, rate: str, cpu_ns: str) -> dict:
    """res[rate] = res[count] per second; res[cpu_ns] = receiver CPU ns per count."""
    res[rate] = res[count] / res["seconds"] if res["seconds"] else 0.0
    res[cpu_ns] = res["cpu"] / res[count] * 1e9 if res[count] else 0.0
    return res


def pps_summary(rs: list[dict]) -> dict:
    """Median, min and max packets/s and the median CPU ns per packet of runs."""
    pps = [r["pps"] for r in rs]
    return {"pps_median": statistics.median(pps), "pps_min": min(pps), "pps_max": max(pps),
            "cpu_ns_per_pkt_median": statistics.median(r["cpu_ns_per_pkt"] for r in rs)}


def measure(pair: VethPair, argv: list[str], seconds: float,
            after_ready: Callable[[VethPair], object] | None = None) -> dict:
    return add_rates(run_pinned(pair, argv, seconds, after_ready), "packets", "pps",
                     "cpu_ns_per_pkt")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 rep of 2 s (CI smoke)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mode", default="native", choices=("native", "skb"))
    ap.add_argument("--json", default=str(OUT / "results.json"))
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.reps = 2.0, 1
    build()
    runs: dict[str, list[dict]] = {}
    with VethPair() as pair:
        for rep in range(a.reps):
            for name, argv in contenders(a.seconds, a.mode).items():
                r = measure(pair, argv, a.seconds)
                runs.setdefault(name, []).append(r)
                print(f"rep {rep + 1} {name:8s} {r['pps'] / 1e6:6.2f} Mpps  "
                      f"{r['cpu_ns_per_pkt']:6.1f} ns CPU/pkt", flush=True)
    summary = {}
    for name, rs in runs.items():
        pps = [r["pps"] for r in rs]
        cpu = [r["cpu_ns_per_pkt"] for r in rs]
        summary[name] = {"offered_pps_median": statistics.median(r["offered_pps"] for r in rs),
                         "pps_median": statistics.median(pps), "pps_min": min(pps),
                         "pps_max": max(pps), "cpu_ns_per_pkt_median": statistics.median(cpu)}
    base = summary["c_spin"]["pps_median"]
    for name in summary:
        summary[name]["ratio_to_c_spin"] = summary[name]["pps_median"] / base if base else 0
    pbase = summary["c_poll"]["cpu_ns_per_pkt_median"]
    summary["xdprx"]["cpu_ratio_to_c_poll"] = (summary["xdprx"]["cpu_ns_per_pkt_median"] / pbase
                                               if pbase else 0)
    report = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                          "cpu": _cpu_model(), "placement": "A", "mode": a.mode,
                          "frame_bytes": 102},
              "seconds": a.seconds, "reps": a.reps, "summary": summary, "runs": runs,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print("\n| contender | offered Mpps | received Mpps median (min-max) | vs C spin | CPU ns/pkt |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['offered_pps_median'] / 1e6:.2f} | "
              f"{s['pps_median'] / 1e6:.2f} ({s['pps_min'] / 1e6:.2f}-"
              f"{s['pps_max'] / 1e6:.2f}) | {s['ratio_to_c_spin']:.2f} | "
              f"{s['cpu_ns_per_pkt_median']:.1f} |")
    return 0


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
