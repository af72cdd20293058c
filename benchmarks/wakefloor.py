"""The floor under target (e) across processes: per-batch latency when N bare C
processes on one CPU are woken for every batch, with no packets, rings or
handler (c/wakefan.c). If waking 64 processes alone adds more p99 latency than
the target allows xdprx in total, no design that wakes each consumer process
can meet it on this machine.

    .venv/bin/python benchmarks/wakefloor.py [--reps 3] [--seconds 2] [--rate 10000]

Four variants, each at the bench's latency rate:
  prod CPU 0   the producer on CPU 0, the N consumers alone on CPU 1 (generous:
               the consumers' CPU does nothing else; every wake-up is an IPI)
  prod CPU 1   the producer on the consumers' CPU, as xdprx's daemon in
               placement B
  eventfd      one eventfd per consumer, poll() to sleep (what xdprx does)
  futex        all consumers in one FUTEX_WAIT, one FUTEX_WAKE for all
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import OUT, build  # noqa: E402
from serve import percentiles  # noqa: E402

CONS_CPU = 1
VARIANTS = [(prod, mode) for prod in (0, 1) for mode in ("eventfd", "futex")]


def one(n: int, rate: float, seconds: float, prod: int, mode: str) -> dict:
    r = subprocess.run([str(OUT / "wakefan"), str(n), str(rate), str(seconds), str(CONS_CPU),
                        str(prod), mode], capture_output=True, text=True,
                       timeout=seconds + 60)
    if r.returncode:
        raise RuntimeError(f"wakefan {n} {mode} failed: {r.stderr.strip()}")
    d = json.loads(r.stdout)
    d.update(percentiles(d.pop("hist")))
    return d


def run(ns=(1, 16, 64), reps: int = 3, seconds: float = 2.0, rate: float = 10000.0) -> dict:
    build()
    runs: dict[str, list[dict]] = {}
    for _ in range(reps):               # variants interleaved within a rep
        for prod, mode in VARIANTS:
            for n in ns:
                runs.setdefault(f"prod{prod}/{mode}/{n}", []).append(
                    one(n, rate, seconds, prod, mode))
    med = {k: {q: statistics.median(r[q] for r in v) for q in ("p50", "p99", "p99.9")}
           for k, v in runs.items()}
    lo, hi = min(ns), max(ns)
    var = {f"prod{p}/{m}": {"p99_lo_us": med[f"prod{p}/{m}/{lo}"]["p99"],
                            "p99_hi_us": med[f"prod{p}/{m}/{hi}"]["p99"]} for p, m in VARIANTS}
    for v in var.values():
        v["ratio"] = v["p99_hi_us"] / v["p99_lo_us"]
        v["added_us"] = v["p99_hi_us"] - v["p99_lo_us"]
    return {"ns": list(ns), "reps": reps, "seconds": seconds, "rate": rate, "cons_cpu": CONS_CPU,
            "median": med, "variants": var,
            "best_ratio": min(v["ratio"] for v in var.values()),
            "least_added_us": min(v["added_us"] for v in var.values()), "runs": runs}


def markdown(f: dict) -> list[str]:
    lo, hi = min(f["ns"]), max(f["ns"])
    lines = ["", f"## The floor under (e) across processes: N bare C processes on CPU 1 woken "
                 f"per batch, {f['rate'] / 1e3:g} kpps, median of {f['reps']} x {f['seconds']} s",
             "", "benchmarks/c/wakefan.c: no packets, rings or handler; per wake-up, now - "
                 "stamp of the first unseen sequence number (the same measure and buckets as "
                 "above). Producer on CPU 0 (consumers alone on CPU 1) or on CPU 1 (beside "
                 "them, as xdprx's daemon in B); one eventfd per consumer (as xdprx) or one "
                 "futex broadcast.", "",
             "| variant | " + " | ".join(f"p99 N={n}" for n in f["ns"])
             + f" | p99 N={hi} / N={lo} | added at N={hi} |",
             "|---|" + "---|" * (len(f["ns"]) + 2)]
    for k, v in f["variants"].items():
        cells = " | ".join(f"{f['median'][f'{k}/{n}']['p99']:.0f} us" for n in f["ns"])
        lines.append(f"| {k} | {cells} | {v['ratio']:.1f}x | {v['added_us']:.0f} us |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wakefloor")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10000.0)
    a = ap.parse_args(argv)
    f = run(reps=a.reps, seconds=a.seconds, rate=a.rate)
    print("\n".join(markdown(f)))
    print(f"\nbest ratio {f['best_ratio']:.1f}x, least added p99 {f['least_added_us']:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
