"""`xdprx bench`: xdprx side by side with what a user would otherwise use,
same veth pair, same generator, same run; a JSON + Markdown + PNG report.

    sudo .venv/bin/xdprx bench [--quick] [--out DIR] [--reps N] [--seconds S]

Placement A (PLATFORM.md): the live-frames generator pinned to CPU 0, where
veth also runs the receive side's kernel work; the contender alone on CPU 1.
Every contender sees the same 102-byte frames to 239.1.2.3:5000 and reads
the first 64 bytes of every packet (every consumer, of every packet it gets):

  xdp_drop        an XDP_DROP program: the ceiling of this veth
  c_spin, c_poll  a C AF_XDP loop on libxdp (benchmarks/c/rxloop.c)
  xdprx           Receiver, one Numba function over each batch
  kernel/N        N UDP sockets joined to the group, recvmmsg (c/udprx.c)
  xdprx/N         Receiver + N in-process consumers (fanout_rx.py)

Each figure is the median of --reps runs (contenders interleaved within a
rep) with min and max. Not measured yet, and said so in the report:
placement B (all receive work on one CPU, the kernel's loss-free rate),
consumers in separate processes, per-batch latency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench import OUT, _cpu_model, build, measure  # noqa: E402
from fanout import run_one  # noqa: E402

from xdprx import bpfprog  # noqa: E402
from xdprx.testing import VethPair  # noqa: E402

NOT_YET = ["placement B (all receive work on one CPU) and the kernel's loss-free rate there",
           "fan-out to consumers in separate processes",
           "per-batch latency (p50 / p99 / p99.9) against N"]


def xdp_drop(pair: VethPair, seconds: float) -> dict:
    """Frames dropped by an XDP_DROP program per second (ethtool -S)."""
    def drops() -> int:
        out = pair.run("rx", ["ethtool", "-S", pair.rx_if]).stdout
        return int(re.search(r"rx_queue_0_xdp_drops: (\d+)", out)[1])
    r = pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpdrv", "obj",
                        str(OUT / "drop_kern.o"), "sec", "xdp"])
    assert r.returncode == 0, r.stderr
    try:
        d0, t0 = drops(), time.monotonic()
        gen = pair.run("tx", ["taskset", "-c", "0", str(OUT / "gen"), str(OUT / "gen_kern.o"),
                              pair.tx_if, str(seconds)], timeout=seconds + 60)
        dt, d1 = time.monotonic() - t0, drops()
    finally:
        pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpdrv", "off"])
    return {"packets": d1 - d0, "seconds": dt, "pps": (d1 - d0) / dt,
            "offered": int(gen.stdout.strip() or 0), "cpu_ns_per_pkt": None}


def contenders(seconds: float, ns: tuple[int, ...]) -> dict:
    """name -> (kind, argv): kind 'pps' (measure), 'fan' (deliveries), 'drop'."""
    obj = str(bpfprog.build())
    s = str(seconds)
    c = {"xdp_drop": ("drop", None),
         "c_spin": ("pps", [str(OUT / "rxloop"), obj, VethPair.rx_if, s, "native", "spin"]),
         "c_poll": ("pps", [str(OUT / "rxloop"), obj, VethPair.rx_if, s, "native", "poll"]),
         "xdprx": ("pps", [sys.executable, str(HERE / "touch_rx.py"), VethPair.rx_if, s,
                           "native"])}
    for n in ns:
        c[f"kernel/{n}"] = ("kernel", [str(OUT / "udprx"), VethPair.rx_if, "239.1.2.3", "5000",
                                       str(n), s])
        c[f"xdprx/{n}"] = ("fan", [sys.executable, str(HERE / "fanout_rx.py"), VethPair.rx_if,
                                   s, str(n), "native"])
    return c


def one(pair: VethPair, kind: str, argv, seconds: float) -> dict:
    if kind == "drop":
        return xdp_drop(pair, seconds + 1.5)
    if kind == "pps":
        return measure(pair, argv, seconds)
    r = run_one(pair, argv, seconds, kernel_path=(kind == "kernel"))
    r["pps"] = r["deliveries_per_s"]
    r["cpu_ns_per_pkt"] = r["cpu_ns_per_delivery"]
    return r


def summarize(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rs in runs.items():
        v = [r["pps"] for r in rs]
        cpu = [r["cpu_ns_per_pkt"] for r in rs if r.get("cpu_ns_per_pkt") is not None]
        out[name] = {"median": statistics.median(v), "min": min(v), "max": max(v),
                     "cpu_ns_median": statistics.median(cpu) if cpu else None,
                     "unit": "deliveries/s" if "/" in name else "packets/s",
                     "runs": len(rs)}
    return out


def targets(s: dict, ns: tuple[int, ...]) -> list[dict]:
    """The project's targets, met or not, by how much, from this run."""
    def ratio(a: str, b: str, key: str = "median") -> float | None:
        if a in s and b in s and s[b][key]:
            return s[a][key] / s[b][key]
        return None
    rows = [{"target": "xdprx single consumer >= 0.95x the C loop's packets/s (A)",
             "value": ratio("xdprx", "c_spin"), "goal": 0.95, "higher_is_better": True},
            {"target": "xdprx CPU per packet within 1.2x of the C loop's, poll mode (A)",
             "value": ratio("xdprx", "c_poll", "cpu_ns_median"), "goal": 1.2,
             "higher_is_better": False}]
    for n, goal in ((16, 8.0), (64, 20.0)):
        if n in ns:
            rows.append({"target": f"in-process fan-out >= {goal:g}x the kernel's deliveries/s "
                                   f"at N={n} (goal is for B, loss-free; this is A)",
                         "value": ratio(f"xdprx/{n}", f"kernel/{n}"), "goal": goal,
                         "higher_is_better": True})
    for r in rows:
        v = r["value"]
        r["met"] = None if v is None else (v >= r["goal"] if r["higher_is_better"]
                                           else v <= r["goal"])
    rows += [{"target": t, "value": None, "goal": None, "met": None,
              "note": "not measured yet"} for t in
             ("separate-process fan-out >= 4x the kernel's at N=16 (B)",
              "p99 per-batch latency at N=64 within 1.5x of N=1")]
    return rows


def markdown(report: dict) -> str:
    m, s = report["machine"], report["summary"]
    lines = [f"# xdprx bench: {report['date']}", "",
             f"`{report['command']}` on {m['cpu']}, kernel {m['kernel']}, {m['cpus']} CPUs; "
             f"placement A (generator and kernel receive work on CPU 0, the contender alone "
             f"on CPU 1); {m['frame_bytes']}-byte frames; median of {report['reps']} x "
             f"{report['seconds']} s (min-max).", "",
             "| contender | median | min-max | unit | CPU ns per packet/delivery |",
             "|---|---|---|---|---|"]
    for name, r in s.items():
        cpu = f"{r['cpu_ns_median']:.1f}" if r["cpu_ns_median"] is not None else "n/a"
        lines.append(f"| {name} | {r['median'] / 1e6:.3f} M | {r['min'] / 1e6:.3f}-"
                     f"{r['max'] / 1e6:.3f} M | {r['unit']} | {cpu} |")
    lines += ["", "## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:.2f}x"
        g = "" if t["goal"] is None else f"{t['goal']:g}x"
        met = {True: "yes", False: "no", None: t.get("note", "n/a")}[t["met"]]
        lines.append(f"| {t['target']} | {v} | {g} | {met} |")
    lines += ["", "Not measured yet: " + "; ".join(report["not_measured"]) + ".", ""]
    lines += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s, ns = report["summary"], report["ns"]
    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for who, label in (("kernel", "kernel: N UDP sockets"), ("xdprx", "xdprx: N consumers")):
        med = [s[f"{who}/{n}"]["median"] / 1e6 for n in ns]
        lo = [m - s[f"{who}/{n}"]["min"] / 1e6 for m, n in zip(med, ns)]
        hi = [s[f"{who}/{n}"]["max"] / 1e6 - m for m, n in zip(med, ns)]
        ax.errorbar(ns, med, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("listeners N")
    ax.set_ylabel("M deliveries/s (every payload read)")
    ax.set_title("Fan-out, placement A")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "deliveries_vs_n.png", dpi=110)
    plt.close(fig)
    names.append("deliveries_vs_n.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    cpu = {k: v["cpu_ns_median"] for k, v in s.items() if v["cpu_ns_median"] is not None}
    ax.bar(list(cpu), list(cpu.values()), color="tab:blue")
    ax.set_ylabel("receiver CPU ns per packet (per delivery for /N)")
    ax.set_title("CPU per packet, placement A")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out / "cpu_per_packet.png", dpi=110)
    plt.close(fig)
    names.append("cpu_per_packet.png")
    return names


def run(quick: bool = False, out: str | None = None, reps: int | None = None,
        seconds: float | None = None, argv: list[str] | None = None) -> dict:
    ns = (1, 16) if quick else (1, 4, 16, 64)
    reps = reps or (1 if quick else 3)
    seconds = seconds or (2.0 if quick else 5.0)
    outdir = Path(out or OUT / "report")
    outdir.mkdir(parents=True, exist_ok=True)
    build()
    cs = contenders(seconds, ns)
    runs: dict[str, list[dict]] = {k: [] for k in cs}
    t0 = time.monotonic()
    with VethPair() as pair:
        for rep in range(reps):
            for name, (kind, cmd) in cs.items():
                r = one(pair, kind, cmd, seconds)
                runs[name].append(r)
                cpu = r.get("cpu_ns_per_pkt")
                print(f"rep {rep + 1} {name:11s} {r['pps'] / 1e6:7.3f} M/s"
                      + (f"  {cpu:7.1f} ns CPU" if cpu is not None else ""), flush=True)
    report = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                          "cpu": _cpu_model(), "placement": "A", "frame_bytes": 102},
              "command": "xdprx bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick, "reps": reps,
              "seconds": seconds, "ns": list(ns), "wall_seconds": None,
              "summary": summarize(runs), "runs": runs, "not_measured": NOT_YET}
    report["targets"] = targets(report["summary"], ns)
    report["plots"] = plots(report, outdir)
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    (outdir / "report.json").write_text(json.dumps(report, indent=2))
    (outdir / "report.md").write_text(markdown(report))
    print(markdown(report))
    print(f"report: {outdir}/report.md, report.json, " + ", ".join(report["plots"]))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xdprx bench")
    ap.add_argument("--quick", action="store_true", help="N = 1, 16; 1 rep of 2 s (CI smoke)")
    ap.add_argument("--out", help="report directory (default benchmarks/out/report)")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--seconds", type=float)
    a = ap.parse_args(argv)
    run(a.quick, a.out, a.reps, a.seconds, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
