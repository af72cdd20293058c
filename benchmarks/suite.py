"""`xdprx bench`: xdprx side by side with what a user would otherwise use,
same veth pair, same generators, same run; a JSON + Markdown + PNG report.

    .venv/bin/xdprx bench [--quick] [--out DIR] [--reps N] [--seconds S]

Every contender sees 102-byte frames to 239.1.2.3:5000 and reads the first
64 bytes of every packet it gets (every consumer, every packet).

Placement A (PLATFORM.md): the live-frames generator (BPF_PROG_RUN, ~20 Mpps)
on CPU 0, where veth also runs the receive side's kernel work; the contender
alone on CPU 1. Saturation throughput, median of --reps runs of --seconds
(contenders interleaved within a rep):
  xdp_drop        an XDP_DROP program: the ceiling of this veth
  c_spin, c_poll  a C AF_XDP loop on libxdp (c/rxloop.c)
  xdprx           Receiver.run(handler): the compiled receive loop calling an njit
                  handler per batch (spin 1 ms, then ppoll)
  xdprx_poll      the same in poll mode (spin=0), beside c_poll
  xdprx_recv      the Python API: Receiver.recv() per batch (spin=0)
  c_poll@200k, xdprx_poll@200k   the poll-mode loops offered a fixed 200 kpps
                  by the paced AF_PACKET generator: CPU per packet when every
                  few packets need a wake-up (xdprx_poll_rx0@200k: the same
                  without receive moderation, a wake-up per packet as C's)
  kernel/N        N UDP sockets joined to the group, recvmmsg (c/udprx.c)
  xdprx/N         Receiver + N in-process consumers (fanout_rx.py)

Separate processes, oversubscribed (procfan.py): `xdprx run` + 16 Subscriber
processes against 16 kernel sockets, the AF_PACKET generator flat out on CPU 0;
user space all on CPU 1 ("shared"), or the daemon on CPU 0 ("daemon-core").
Call costs (calls.py): an empty recv(timeout=0) of each API.
The floor under (e) across processes (wakefloor.py, c/wakefan.c): N bare C
processes on one CPU woken per batch, with no packets at all.
Multi-queue (queues.py): 1 vs 2 RX queues, xdprx against the C loop of the
same design (c/mqrx.c), live-frames generator on each queue's CPU; and the
per-queue loops' scaling in memory (queues_loop.py).

Placement B: all receive work on CPU 1 (threaded NAPI pinned next to the
contender, lossfree.py). Saturation for c_poll and xdprx as above; then for
kernel/N, xdprx/N and xdprx-proc/N (`xdprx run` + N Subscriber processes,
proc_rx.py), driven by the paced AF_PACKET generator (c/pgen.c, ~1.7 Mpps
at most): per-batch latency at a fixed rate, and the highest rate with
< 1 % loss (--reps searches each).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import calls  # noqa: E402
import lossfree  # noqa: E402
import procfan  # noqa: E402
import queues  # noqa: E402
import wakefloor  # noqa: E402
from bench import OUT, _cpu_model, build, measure, run_paced  # noqa: E402
from fanout import run_one  # noqa: E402

from xdprx.kernel import bpfprog
from xdprx.testing import XDPRX, VethPair  # noqa: E402

PACED = 200_000     # pps offered to the poll-mode contenders for CPU per packet
# target (a) compares two loops that both wait on CPU 0's kernel work, so its
# runs spread with the VM's hour (0.70-1.35x in one report): its pair gets at
# least this many reps, back to back, and the target is the median of the
# paired ratios
A_PAIR, A_REPS = ("A c_spin", "A xdprx"), 5
GOALS = {"single_pps": 0.95, "single_cpu": 1.2, "inproc": {16: 8.0, 64: 20.0},
         "proc": {16: 4.0}, "latency_p99": 1.5}


def xdp_drop(pair: VethPair, seconds: float) -> dict:
    """Frames dropped by an XDP_DROP program per second (ethtool -S)."""
    def drops() -> int:
        out = pair.run("rx", ["ethtool", "-S", pair.rx_if]).stdout
        return int(re.search(r"rx_queue_0_xdp_drops: (\d+)", out)[1])
    r = pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpdrv", "obj",
                        str(OUT / "drop_kern.o"), "sec", "xdp"])
    assert r.returncode == 0, r.stderr
    try:
        lossfree.placement_a(pair)
        d0, t0 = drops(), time.monotonic()
        gen = pair.run("tx", ["taskset", "-c", "0", str(OUT / "gen"), str(OUT / "gen_kern.o"),
                              pair.tx_if, str(seconds)], timeout=seconds + 60)
        dt, d1 = time.monotonic() - t0, drops()
    finally:
        pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpdrv", "off"])
    return {"packets": d1 - d0, "seconds": dt, "pps": (d1 - d0) / dt,
            "offered": int(gen.stdout.strip() or 0), "cpu_ns_per_pkt": None}


def saturation(seconds: float, ns: tuple[int, ...]) -> dict:
    """Saturation contenders: name -> (kind, argv, placement)."""
    obj = str(bpfprog.build())
    s = str(seconds)
    rxloop = [str(OUT / "rxloop"), obj, VethPair.rx_if, s, "native"]
    touch = [sys.executable, str(HERE / "touch_rx.py"), VethPair.rx_if, s, "native"]
    c = {"A xdp_drop": ("drop", None), "A c_spin": ("pps", rxloop + ["spin"]),
         "A c_poll": ("pps", rxloop + ["poll"]), "A xdprx": ("pps", touch),
         "A xdprx_poll": ("pps", touch[:2] + ["--spin", "0"] + touch[2:]),
         "A xdprx_recv": ("pps", touch[:2] + ["--spin", "0", "--recv"] + touch[2:])}
    for n in ns:
        c[f"A kernel/{n}"] = ("kernel", [str(OUT / "udprx"), VethPair.rx_if, "239.1.2.3",
                                         "5000", str(n), s])
        c[f"A xdprx/{n}"] = ("fan", [sys.executable, str(HERE / "fanout_rx.py"),
                                     VethPair.rx_if, s, str(n), "native"])
    c["B c_poll"] = ("pps", rxloop + ["poll"])
    # CPU per packet when the loop must wake up for its packets: a fixed rate
    c[f"A c_poll@{PACED // 1000}k"] = ("paced", rxloop + ["poll"])
    c[f"A xdprx_poll@{PACED // 1000}k"] = ("paced", touch[:2] + ["--spin", "0"] + touch[2:])
    # the same without receive moderation: a wake-up per packet, like the C loop
    c[f"A xdprx_poll_rx0@{PACED // 1000}k"] = ("paced", touch[:2] + ["--spin", "0",
                                                                  "--rx-usecs", "0"] + touch[2:])
    # B: NAPI shares the contender's CPU, where spinning collapses (PLATFORM.md)
    c["B xdprx"] = ("pps", touch[:2] + ["--spin", "0"] + touch[2:])
    return c


def one(pair: VethPair, name: str, kind: str, argv, seconds: float) -> dict:
    # the threaded flag outlives a B contender: every A contender resets it
    after = lossfree.placement_b if name.startswith("B ") else lossfree.placement_a
    if kind == "drop":
        return xdp_drop(pair, seconds + 1.5)
    if kind == "pps":
        return measure(pair, argv, seconds, after)
    if kind == "paced":
        return run_paced(pair, argv, seconds, PACED, after)
    r = run_one(pair, argv, seconds, kernel_path=(kind == "kernel"), after_ready=after)
    r["pps"] = r["deliveries_per_s"]
    r["cpu_ns_per_pkt"] = r["cpu_ns_per_delivery"]
    return r


def served(pair: VethPair, who: str, n: int, ctl_dir: str) -> lossfree.Served:
    """A placement-B serve-mode contender: kernel, xdprx (in-process), proc."""
    if who == "kernel":
        return lossfree.Served(pair, [str(OUT / "udprx"), pair.rx_if, "239.1.2.3", "5000",
                                      str(n), "0"], n, xdp_obj=str(OUT / "pass_kern.o"))
    if who == "xdprx":
        return lossfree.Served(pair, [sys.executable, str(HERE / "fanout_rx.py"), pair.rx_if,
                                      "0", str(n), "native"], n)
    ctl = os.path.join(ctl_dir, f"xrx-bench-{n}.sock")
    daemon = XDPRX + ["run", pair.rx_if, "--group", "239.1.2.3:5000", "--control", ctl,
                      "--mode", "native", "--frames", "8192", "--interval", "3600"]
    return lossfree.Served(pair, [sys.executable, str(HERE / "proc_rx.py"), ctl, str(n)], n,
                           daemon=daemon)


def a_pair(runs: dict[str, list[dict]]) -> dict | None:
    """Target (a)'s paired ratios: xdprx / the C loop, run by run."""
    v = [x["pps"] / y["pps"] for x, y in zip(runs[A_PAIR[1]], runs[A_PAIR[0]]) if y["pps"]]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "ratios": v} \
        if v else None


def summarize(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rs in runs.items():
        v = [r["pps"] for r in rs]
        cpu = [r["cpu_ns_per_pkt"] for r in rs if r.get("cpu_ns_per_pkt") is not None]
        out[name] = {"median": statistics.median(v), "min": min(v), "max": max(v),
                     "cpu_ns_median": statistics.median(cpu) if cpu else None,
                     "unit": "deliveries/s" if "/" in name else "packets/s", "runs": len(rs)}
    return out


def targets(s: dict, b: dict, ns: tuple[int, ...], pf: dict | None = None,
            cc: dict | None = None, mq: dict | None = None,
            wf: dict | None = None, ap: dict | None = None) -> list[dict]:
    """The project's targets, met or not and by how much, from this run."""
    def ratio(x, y) -> float | None:
        return x / y if x is not None and y else None

    def sat(name: str, key: str = "median"):
        return s.get(name, {}).get(key)

    def lf(name: str):
        return b.get(name, {}).get("deliveries_per_s_median")

    rows = [{"target": "xdprx single consumer >= 0.95x the C loop's packets/s (A, C loop "
                       "spinning; median of the paired runs' ratios)",
             "value": (ap or {}).get("median"),
             "goal": GOALS["single_pps"], "higher_is_better": True},
            {"target": f"xdprx CPU per packet within 1.2x of the C loop's, both in poll mode, "
                       f"{PACED // 1000} kpps offered (A)",
             "value": ratio(sat(f"A xdprx_poll@{PACED // 1000}k", "cpu_ns_median"),
                            sat(f"A c_poll@{PACED // 1000}k", "cpu_ns_median")),
             "goal": GOALS["single_cpu"], "higher_is_better": False},
            {"target": "the same without receive moderation (rx_usecs 0: a wake-up per "
                       "packet, like the C loop; for comparison)",
             "value": ratio(sat(f"A xdprx_poll_rx0@{PACED // 1000}k", "cpu_ns_median"),
                            sat(f"A c_poll@{PACED // 1000}k", "cpu_ns_median")),
             "goal": GOALS["single_cpu"], "higher_is_better": False},
            {"target": "the same at saturation (for comparison)",
             "value": ratio(sat("A xdprx_poll", "cpu_ns_median"),
                            sat("A c_poll", "cpu_ns_median")),
             "goal": GOALS["single_cpu"], "higher_is_better": False}]
    for who, label in (("xdprx", "in-process"), ("xdprx-proc", "separate-process")):
        for n, goal in GOALS["inproc" if who == "xdprx" else "proc"].items():
            if n in ns:
                v = ratio(lf(f"B {who}/{n}"), lf(f"B kernel/{n}"))
                rows.append({"target": f"{label} fan-out >= {goal:g}x the kernel's loss-free "
                                       f"deliveries/s at N={n} (B)", "value": v, "goal": goal,
                             "higher_is_better": True,
                             "floor": b.get(f"B {who}/{n}", {}).get("generator_bound", False)})
    if pf:
        for k, label in (("shared", "all user space on CPU 1"),
                         ("daemon_core", "the daemon on CPU 0, consumers on CPU 1")):
            rows.append({"target": f"separate-process fan-out, N={pf['n']}, {label}: >= "
                                   f"{GOALS['proc'][16]:g}x the kernel's {pf['n']} sockets in "
                                   f"deliveries/s (AF_PACKET generator flat out)",
                         "value": pf[f"ratio_{k}"], "goal": GOALS["proc"][16],
                         "higher_is_better": True,
                         "floor": pf.get("generator_bound", {}).get(
                             "xdprx " + k.replace("_", "-"), False)})
    for name, v in (cc or {}).items():
        rows.append({"target": f"empty {name} <= {v['goal_us']} us (absolute, us)",
                     "value": v["us_median"], "goal": v["goal_us"], "higher_is_better": False,
                     "unit": "us"})
    if mq:
        rows += [{"target": "multi-queue: two receive loops >= 1.8x one (in memory, each loop "
                            "on its own CPU, no kernel work competing)",
                  "value": mq["in_memory"]["ratio_2_over_1"], "goal": 1.8, "higher_is_better": True},
                 {"target": "multi-queue on veth: xdprx 2 queues / 1 queue (live-frames generator "
                            "on each CPU; the CPUs are shared, see the section)",
                  "value": mq["ratio_xdprx_2_over_1"], "goal": 1.8, "higher_is_better": True},
                 {"target": "multi-queue on veth: the C loop 2 queues / 1 queue (for comparison)",
                  "value": mq["ratio_c_2_over_1"], "goal": 1.8, "higher_is_better": True},
                 {"target": "multi-queue on veth, 2 queues: xdprx / the C loop (same design)",
                  "value": mq["ratio_xdprx_over_c"][2], "goal": GOALS["single_pps"],
                  "higher_is_better": True}]
    lo, hi = min(ns), max(ns)
    for who in ("xdprx", "xdprx-proc", "kernel"):
        a, z = b.get(f"B {who}/{lo}", {}), b.get(f"B {who}/{hi}", {})
        rows.append({"target": f"{who}: p99 per-batch latency at N={hi} within "
                               f"{GOALS['latency_p99']:g}x of N={lo} (B, fixed rate)"
                               + ("" if who.startswith("xdprx") else " (for comparison)"),
                     "value": ratio(z.get("latency_p99_us"), a.get("latency_p99_us")),
                     "goal": GOALS["latency_p99"], "higher_is_better": False})
    if wf:
        # what the OS alone costs: bare C processes woken per batch (wakefloor.py)
        p1 = b.get(f"B xdprx-proc/{lo}", {}).get("latency_p99_us")
        rows += [{"target": f"the floor: {hi} bare C processes on one CPU woken per batch "
                            f"(c/wakefan.c), p99 N={hi} / N={lo}, best of "
                            f"{len(wf['variants'])} variants (for comparison)",
                  "value": wf["best_ratio"], "goal": GOALS["latency_p99"],
                  "higher_is_better": False},
                 {"target": f"xdprx-proc: the best p99 N={hi} / N={lo} any design that wakes each "
                            f"process could reach here: (N={lo} p99 + the floor's least added "
                            f"p99, {wf['least_added_us']:.0f} us) / N={lo} p99",
                  "value": ratio(p1 + wf["least_added_us"], p1) if p1 else None,
                  "goal": GOALS["latency_p99"], "higher_is_better": False}]
    for r in rows:
        v = r["value"]
        r["met"] = None if v is None else bool(v >= r["goal"] if r["higher_is_better"]
                                                else v <= r["goal"])
        if r["met"] is False:
            r["missed_by"] = (f"{(1 - v / r['goal']) * 100:.0f}% short" if r["higher_is_better"]
                              else f"{(v / r['goal'] - 1) * 100:.0f}% over")
            if r.get("floor"):
                r["missed_by"] += (" as measured, but xdprx read everything the generator "
                                   "offered: a floor, not a limit of xdprx")
    return rows


def _fmt_m(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 1e6:.3f} M"


def _fmt_us(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def markdown(report: dict) -> str:
    m, s, b = report["machine"], report["summary"], report["lossfree"]
    lines = [f"# xdprx bench: {report['date']}", "",
             f"`{report['command']}` on {m['cpu']}, kernel {m['kernel']}, {m['cpus']} CPUs, "
             f"{m['frame_bytes']}-byte frames, every packet's first 64 bytes read by every "
             f"consumer. Wall time {report['wall_seconds']} s.", "",
             "Placement **A**: generator and veth's receive-side kernel work on CPU 0, the "
             "contender alone on CPU 1. Placement **B**: all receive work (NAPI kthread and "
             "contender) on CPU 1, the generator on CPU 0; NAPI deferral "
             f"{report.get('napi_defer_us', 0)} us for every contender alike (0: off, a NAPI "
             "run per packet).", "",
             f"## Saturation (live-frames generator, ~20 Mpps offered), median of "
             f"{report['reps']} x {report['seconds']} s", "",
             "| placement, contender | median | min-max | unit | contender CPU ns per "
             "packet/delivery |", "|---|---|---|---|---|"]
    for name, r in s.items():
        cpu = f"{r['cpu_ns_median']:.1f}" if r["cpu_ns_median"] is not None else "n/a"
        lines.append(f"| {name} | {_fmt_m(r['median'])} | {r['min'] / 1e6:.3f}-"
                     f"{r['max'] / 1e6:.3f} M | {r['unit']} | {cpu} |")
    ap = report.get("a_pair")
    if ap:
        lines += ["", f"Target (a), xdprx / c_spin run by run (the pair within each rep; "
                      f"{len(ap['ratios'])} reps): "
                      + ", ".join(f"{v:.2f}" for v in ap["ratios"])
                      + f"; median {ap['median']:.2f}x."]
    lines += ["", f"## Placement B: highest rate with < 1 % loss, and per-batch latency at "
                  f"{report['latency_rate'] / 1e3:g} kpps", "",
              "Paced AF_PACKET generator; a delivery more than "
              f"{lossfree.GRACE * 1e3:g} ms after the last send counts as lost. Deliveries/s = "
              "offered rate x N x (1 - loss), median of the searches (min-max). CPU is all of "
              "CPU 1 (kernel and user) per delivery. Latency: receive time - send time of the "
              "batch's first packet, one clock; median of the runs' percentiles, in us.", "",
              "| contender | loss-free rate in | deliveries/s (min-max) | CPU 1 ns/delivery | "
              "p50 | p99 | p99.9 | batches |", "|---|---|---|---|---|---|---|---|"]
    for name, r in b.items():
        floor = " (sender's top, throttled by veth: a floor)" if r["generator_bound"] else ""
        cpu = r["cpu1_ns_per_delivery_median"]
        lines.append(
            f"| {name} | {(r['lossfree_rate_median'] or 0) / 1e3:.1f} k{floor} | "
            f"{_fmt_m(r['deliveries_per_s_median'])} ({_fmt_m(r['deliveries_per_s_min'])}-"
            f"{_fmt_m(r['deliveries_per_s_max'])}) | {'n/a' if cpu is None else f'{cpu:.0f}'} | "
            f"{_fmt_us(r['latency_p50_us'])} | {_fmt_us(r['latency_p99_us'])} | "
            f"{_fmt_us(r['latency_p99.9_us'])} | {r['latency_batches']} |")
    pf = report.get("procfan")
    if pf:
        lines += ["", f"## Separate processes on a shared core: N={pf['n']}, AF_PACKET generator "
                      f"flat out on CPU 0, median of {pf['reps']} x {pf['seconds']} s", "",
                  "| contender | M deliveries/s (median) | runs |", "|---|---|---|"]
        for k, v in pf["median_deliveries_per_s"].items():
            runs = ", ".join(f"{r['deliveries_per_s'] / 1e6:.3f}" for r in pf["runs"][k])
            lines.append(f"| {k} | {v / 1e6:.3f} | {runs} |")
    if report.get("wakefloor"):
        lines += wakefloor.markdown(report["wakefloor"])
    cc = report.get("calls")
    if cc:
        lines += ["", "## An empty recv(timeout=0), pinned to CPU 1 (us per call)", "",
                  "| call | median | min-max |", "|---|---|---|"]
        for k, v in cc.items():
            lines.append(f"| `{k}` | {v['us_median']:.2f} | {v['us_min']:.2f}-{v['us_max']:.2f} |")
    mq = report.get("queues")
    if mq:
        lines += ["", f"## Multi-queue: 1 vs 2 RX queues (veth, native, live-frames generator on "
                      f"each queue's CPU, receivers unpinned), median of {mq['reps']} x "
                      f"{mq['seconds']} s", "",
                  "| contender | packets/s (median) | min-max | CPU ns/packet |", "|---|---|---|---|"]
        for k, v in mq["pps_median"].items():
            lines.append(f"| {k.replace('/', ', ')} queue(s) | {_fmt_m(v)} | "
                         f"{mq['pps_min'][k] / 1e6:.3f}-{mq['pps_max'][k] / 1e6:.3f} M | "
                         f"{mq['cpu_ns_per_pkt_median'][k]:.1f} |")
        im = mq["in_memory"]
        lines += ["", f"In memory (benchmarks/queues_loop.py, each loop pinned to its own CPU): "
                      f"1 loop {im['pps_median']['1'] / 1e6:.2f} M, 2 loops "
                      f"{im['pps_median']['2'] / 1e6:.2f} M packets/s: "
                      f"{im['ratio_2_over_1']:.2f}x."]
    lines += ["", "## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        unit = " us" if t.get("unit") == "us" else "x"
        v = "n/a" if t["value"] is None else (">= " if t.get("floor") else "") + \
            f"{t['value']:.2f}{unit}"
        g = "" if t["goal"] is None else f"{t['goal']:g}{unit}"
        met = {True: "yes", False: f"no, {t.get('missed_by', '')}", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {v} | {g} | {met} |")
    lines += [""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s, b, ns = report["summary"], report["lossfree"], report["ns"]
    names = []

    def logx(ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("listeners N")
        ax.grid(alpha=0.3)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for who, label in (("kernel", "kernel: N UDP sockets"), ("xdprx", "xdprx: N consumers")):
        rows = [s[f"A {who}/{n}"] for n in ns]
        med = [r["median"] / 1e6 for r in rows]
        a1.errorbar(ns, med, yerr=[[m - r["min"] / 1e6 for m, r in zip(med, rows)],
                                   [r["max"] / 1e6 - m for m, r in zip(med, rows)]],
                    marker="o", capsize=3, label=label)
    a1.set_title("A: saturation, user space alone on CPU 1")
    a1.set_ylabel("M deliveries/s (every payload read)")
    logx(a1)
    a1.legend()
    for who, label in (("kernel", "kernel: N UDP sockets"), ("xdprx", "xdprx: N in-process"),
                       ("xdprx-proc", "xdprx: N processes")):
        rows = [b.get(f"B {who}/{n}") for n in ns]
        pts = [(n, r) for n, r in zip(ns, rows) if r and r["deliveries_per_s_median"]]
        if pts:
            a2.plot([n for n, _ in pts], [r["deliveries_per_s_median"] / 1e6 for _, r in pts],
                    marker="o", label=label)
    a2.set_title("B: loss-free (< 1 %), all receive work on CPU 1")
    a2.set_ylabel("M deliveries/s")
    logx(a2)
    a2.legend()
    fig.tight_layout()
    fig.savefig(out / "deliveries_vs_n.png", dpi=110)
    plt.close(fig)
    names.append("deliveries_vs_n.png")

    fig, axs = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    for ax, who in zip(axs, ("kernel", "xdprx", "xdprx-proc")):
        for k, style in (("p50", "o-"), ("p99", "s-"), ("p99.9", "^-")):
            pts = [(n, b[f"B {who}/{n}"][f"latency_{k}_us"]) for n in ns
                   if b.get(f"B {who}/{n}", {}).get(f"latency_{k}_us")]
            if pts:
                ax.plot(*zip(*pts), style, label=k)
        ax.set_yscale("log")
        ax.set_title(f"{who}, B, {report['latency_rate'] / 1e3:g} kpps")
        logx(ax)
        ax.legend()
    axs[0].set_ylabel("per-batch latency, us (send -> consumer)")
    fig.tight_layout()
    fig.savefig(out / "latency_vs_n.png", dpi=110)
    plt.close(fig)
    names.append("latency_vs_n.png")

    fig, ax = plt.subplots(figsize=(10, 4.2))
    cpu = {k: v["cpu_ns_median"] for k, v in s.items() if v["cpu_ns_median"] is not None}
    cpu.update({f"{k} (CPU 1)": v["cpu1_ns_per_delivery_median"] for k, v in b.items()
                if v["cpu1_ns_per_delivery_median"] is not None})
    ax.bar(list(cpu), list(cpu.values()),
           color=["tab:blue" if k.startswith("A") else "tab:orange" for k in cpu])
    ax.set_yscale("log")
    ax.set_ylabel("CPU ns per packet (per delivery for /N)")
    ax.set_title("CPU per packet: A = contender's own CPU, B = all of CPU 1 at the loss-free rate")
    ax.tick_params(axis="x", rotation=70, labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "cpu_per_packet.png", dpi=110)
    plt.close(fig)
    names.append("cpu_per_packet.png")
    return names


def run(quick: bool = False, out: str | None = None, reps: int | None = None,
        seconds: float | None = None, argv: list[str] | None = None) -> dict:
    ns = (1, 16) if quick else (1, 4, 16, 64)
    reps = reps or (1 if quick else 3)
    seconds = seconds or (2.0 if quick else 3.0)
    probe_s, lat_s, steps = (0.5, 0.5, 4) if quick else (1.0, 1.0, 7)
    lat_rate = 10000.0
    outdir = Path(out or OUT / "report")
    outdir.mkdir(parents=True, exist_ok=True)
    build()
    t0 = time.monotonic()
    cs = saturation(seconds, ns)
    runs: dict[str, list[dict]] = {k: [] for k in cs}
    raw_b: dict[str, dict] = {}
    with VethPair() as pair, tempfile.TemporaryDirectory(prefix="xrx-bench-") as ctl_dir:
        for rep in range(reps):
            for name, (kind, cmd) in cs.items():
                r = one(pair, name, kind, cmd, seconds)
                runs[name].append(r)
                cpu = r.get("cpu_ns_per_pkt")
                print(f"rep {rep + 1} {name:14s} {r['pps'] / 1e6:7.3f} M/s"
                      + (f"  {cpu:7.1f} ns CPU" if cpu is not None else ""), flush=True)
        for rep in range(reps, 1 if quick else max(reps, A_REPS)):
            for name in A_PAIR:
                kind, cmd = cs[name]
                runs[name].append(one(pair, name, kind, cmd, seconds))
                print(f"rep {rep + 1} {name:14s} {runs[name][-1]['pps'] / 1e6:7.3f} M/s",
                      flush=True)
        for n in ns:
            for who in ("kernel", "xdprx", "xdprx-proc"):
                name = f"B {who}/{n}"
                with served(pair, who, n, ctl_dir) as s:
                    lossfree.probe(s, OUT / "pgen", lat_rate, 0.5)     # warm-up, discarded
                    raw_b[name] = lossfree.contender(s, OUT / "pgen", reps, probe_s, lat_rate,
                                                     lat_s, steps)
                sm = lossfree.summarize(raw_b[name], n)
                print(f"{name:16s} loss-free {(sm['lossfree_rate_median'] or 0) / 1e3:8.1f} kpps "
                      f"in = {(sm['deliveries_per_s_median'] or 0) / 1e6:7.3f} M deliveries/s"
                      f"{' (generator-bound)' if sm['generator_bound'] else ''}; latency "
                      f"p50/p99/p99.9 {sm['latency_p50_us']}/{sm['latency_p99_us']}/"
                      f"{sm['latency_p99.9_us']} us", flush=True)
    pf = procfan.run(16, seconds, reps)
    wf = wakefloor.run(ns, reps, 1.0 if quick else 2.0, lat_rate)
    mq = queues.run(seconds, reps, quick)
    for v in mq["runs"].values():
        for r in v:
            r.pop("check", None)
    cc = calls.run(100_000 if quick else 300_000, reps + 2)
    lf = {k: lossfree.summarize(v, int(k.rsplit("/", 1)[1])) for k, v in raw_b.items()}
    for k, v in raw_b.items():
        for x in v["latency_runs"] + [p for sr in v["searches"] for p in sr["probes"]]:
            x.pop("hist", None)
    report = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                          "cpu": _cpu_model(), "frame_bytes": 102,
                          "placements": {"A": "generator + veth receive-side kernel work on "
                                              "CPU 0; contender alone on CPU 1",
                                         "B": "threaded NAPI kthread and contender on CPU 1; "
                                              "generator on CPU 0"}},
              "command": "xdprx bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick, "reps": reps,
              "seconds": seconds, "probe_seconds": probe_s, "latency_rate": lat_rate,
              "loss_threshold": lossfree.LOSS, "grace_seconds": lossfree.GRACE,
              "napi_defer_us": lossfree.NAPI_DEFER_US,
              "ns": list(ns), "wall_seconds": None, "summary": summarize(runs), "lossfree": lf,
              "runs": runs, "lossfree_runs": raw_b, "procfan": pf, "calls": cc, "queues": mq,
              "wakefloor": wf}
    report["a_pair"] = a_pair(runs)
    report["targets"] = targets(report["summary"], lf, ns, pf, cc, mq, wf, report["a_pair"])
    report["plots"] = plots(report, outdir)
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    (outdir / "report.json").write_text(json.dumps(report, indent=2))
    (outdir / "report.md").write_text(markdown(report))
    print(markdown(report))
    print(f"report: {outdir}/report.md, report.json, " + ", ".join(report["plots"]))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xdprx bench")
    ap.add_argument("--quick", action="store_true",
                    help="N = 1, 16; 1 run each, short probes (CI smoke, < 2 min)")
    ap.add_argument("--out", help="report directory (default benchmarks/out/report)")
    ap.add_argument("--reps", type=int, help="runs per figure (default 3; quick 1)")
    ap.add_argument("--seconds", type=float, help="seconds per saturation run (default 3)")
    ap.add_argument("--napi-defer-us", type=int, default=lossfree.NAPI_DEFER_US,
                    help="NAPI deferral in placement B, every contender alike "
                         f"(default {lossfree.NAPI_DEFER_US}; 0: off, a NAPI run per packet)")
    a = ap.parse_args(argv)
    lossfree.NAPI_DEFER_US = a.napi_defer_us
    run(a.quick, a.out, a.reps, a.seconds, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
