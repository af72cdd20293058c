"""Multi-queue receive: 1 vs 2 RX queues, xdprx against the C loop with the
same design (c/mqrx.c: one AF_XDP socket per queue on a shared UMEM, one
thread per queue), and the per-queue loops' scaling without the kernel
(queues_loop.py).

    .venv/bin/python benchmarks/queues.py [--quick] [--reps N] [--seconds S]

veth, native XDP, 2 RX / 2 TX queues each end. The live-frames generator
(c/gen.c: BPF_PROG_RUN, XDP_TX) puts what it sends from CPU c on the peer's
RX queue c (veth picks the queue from the sending CPU), and veth's receive
work (XDP, the copy into the UMEM) runs on that CPU too. So one queue: one
generator on CPU 0; two queues: one generator on each CPU. Receivers are not
pinned. What bounds it: this VM has 2 CPUs, and at 2 queues each CPU runs a
generator flat out, its queue's kernel receive work, and a receive loop.
Four queues cannot be fed here (2 CPUs send to 2 queues); the in-memory run
shows what the loops do when nothing else needs the CPUs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench import OUT, build  # noqa: E402

from xdprx.kernel import bpfprog
from xdprx.testing import VethPair  # noqa: E402

QLISTS = {1: "0", 2: "0,1"}


def contender(who: str, nq: int, seconds: float, obj: str) -> list[str]:
    if who == "c":
        return [str(OUT / "mqrx"), obj, VethPair.rx_if, str(seconds), "native", "poll",
                QLISTS[nq]]
    return [sys.executable, str(HERE / "queues_rx.py"), VethPair.rx_if, str(seconds),
            "native", str(nq)]


def one(pair: VethPair, argv: list[str], nq: int, seconds: float) -> dict:
    rx = pair.popen("rx", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    cwd=HERE)
    try:
        line = rx.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"receiver did not start: {line} {rx.communicate()[1]}")
        gens = [pair.popen("tx", ["taskset", "-c", str(c), str(OUT / "gen"),
                                  str(OUT / "gen_kern.o"), VethPair.tx_if, str(seconds + 1.5)],
                           stdout=subprocess.PIPE, text=True) for c in range(nq)]
        offered = sum(int((g.communicate(timeout=seconds * 3 + 60)[0] or "0").split()[-1])
                      for g in gens)
        out, err = rx.communicate(timeout=seconds + 60)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    if not out.strip():
        raise RuntimeError(f"{argv[:2]} printed nothing: {err[-2000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r["pps"] = r["packets"] / r["seconds"] if r["seconds"] else 0.0
    r["cpu_ns_per_pkt"] = r["cpu"] / r["packets"] * 1e9 if r["packets"] else None
    r["offered_pps"] = offered / (seconds + 1.5)
    return r


def run(seconds: float = 3.0, reps: int = 3, quick: bool = False) -> dict:
    build()
    obj = str(bpfprog.build())
    runs: dict[str, list[dict]] = {f"{w}/{n}": [] for n in (1, 2) for w in ("c", "xdprx")}
    with VethPair(queues=2) as pair:
        for rep in range(reps):
            for nq in (1, 2):
                for who in (("c", "xdprx") if rep % 2 == 0 else ("xdprx", "c")):
                    r = one(pair, contender(who, nq, seconds, obj), nq, seconds)
                    runs[f"{who}/{nq}"].append(r)
                    print(f"rep {rep + 1} {who:6s} {nq} queue(s) {r['pps'] / 1e6:7.3f} Mpps "
                          f"per queue {r.get('per_queue')}", flush=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, str(HERE / "queues_loop.py"), "--json", f.name]
                       + (["--quick"] if quick else []), check=True, cwd=HERE)
        mem = json.loads(Path(f.name).read_text())["results"]
    med = {k: statistics.median(r["pps"] for r in v) for k, v in runs.items()}
    return {"seconds": seconds, "reps": reps, "pps_median": med,
            "pps_min": {k: min(r["pps"] for r in v) for k, v in runs.items()},
            "pps_max": {k: max(r["pps"] for r in v) for k, v in runs.items()},
            "cpu_ns_per_pkt_median": {k: statistics.median(r["cpu_ns_per_pkt"] or 0 for r in v)
                                      for k, v in runs.items()},
            "ratio_xdprx_2_over_1": med["xdprx/2"] / med["xdprx/1"],
            "ratio_c_2_over_1": med["c/2"] / med["c/1"],
            "ratio_xdprx_over_c": {n: med[f"xdprx/{n}"] / med[f"c/{n}"] for n in (1, 2)},
            "in_memory": mem, "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", default=str(OUT / "results-queues.json"))
    a = ap.parse_args()
    if a.quick:
        a.reps, a.seconds = 1, 2.0
    res = run(a.seconds, a.reps, a.quick)
    res["command"] = "benchmarks/queues.py " + " ".join(sys.argv[1:])
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(a.json).write_text(json.dumps(res, indent=2))
    m = res["pps_median"]
    print(f"1 queue: C {m['c/1'] / 1e6:.2f} M, xdprx {m['xdprx/1'] / 1e6:.2f} M; 2 queues: "
          f"C {m['c/2'] / 1e6:.2f} M, xdprx {m['xdprx/2'] / 1e6:.2f} M; xdprx 2/1 "
          f"{res['ratio_xdprx_2_over_1']:.2f}x, C 2/1 {res['ratio_c_2_over_1']:.2f}x; in memory "
          f"2/1 {res['in_memory']['ratio_2_over_1']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
