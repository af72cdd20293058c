"""Pool benchmarks (issue 4): bulk against one-at-a-time recycling, the
per-queue cache on the real receive path, and resident memory against frames
in use.

    .venv/bin/python benchmarks/pool.py [--quick] [--reps N]

1. recycle: the two-CPU ring harness (xdprx/testing/stress.py, AF_XDP ring layout):
   frames go out on a FILL-like ring and come back on a COMPLETION-like one,
   producer on CPU 0, consumer on CPU 1, both checking every entry. Batch 1
   is "one frame at a time" (an index load and a release store per frame,
   as a naive loop or the skb fallback path); larger batches are the bulk
   path. Cost = producer wall time per frame; same run, interleaved.
2. cache: Receiver with the default per-queue cache against cache=0, placement
   A (bench.py: live-frames generator on CPU 0, receiver alone on CPU 1).
3. memory: a consumer holds every frame; the pool grows from --frames 1024 to
   --max-frames 8192; resident UMEM memory and the process's RSS per step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench import OUT, _cpu_model, build, measure, pps_summary  # noqa: E402

from xdprx.testing import VethPair, payloads  # noqa: E402

BATCHES = (1, 4, 16, 32, 64, 256)


def stress(batch: int, count: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "xdprx.testing.stress", "xsk", "--count", str(count),
                          "--batch", str(batch)], capture_output=True, text=True, timeout=300)
    r = json.loads(out.stdout)
    c = r["consumer"]
    assert r["done"] and c["seq_errors"] == c["data_errors"] == r["dup_errors"] == 0, r
    return r


def recycle(reps: int, count: int) -> dict:
    runs: dict[int, list[float]] = {b: [] for b in BATCHES}
    for rep in range(reps):
        for b in BATCHES:
            ns = stress(b, count if b > 1 else count // 4)["ns_per_entry"]
            runs[b].append(ns)
            print(f"recycle rep {rep + 1} batch {b:3d}: {ns:7.1f} ns/frame", flush=True)
    out = {}
    one = statistics.median(runs[1])
    for b, v in runs.items():
        med = statistics.median(v)
        out[str(b)] = {"ns_per_frame_median": med, "min": min(v), "max": max(v),
                       "speedup_vs_one_at_a_time": one / med}
    return out


def cache(reps: int, seconds: float) -> dict:
    build()
    py = [sys.executable, str(HERE / "touch_rx.py"), VethPair.rx_if, str(seconds), "native", "256"]
    runs: dict[str, list[dict]] = {"cache_64": [], "no_cache": []}
    with VethPair() as pair:
        for rep in range(reps):
            for name, extra in (("cache_64", ["64"]), ("no_cache", ["0"])):
                r = measure(pair, py + extra, seconds)
                runs[name].append(r)
                print(f"cache rep {rep + 1} {name:9s} {r['pps'] / 1e6:6.2f} Mpps "
                      f"{r['cpu_ns_per_pkt']:6.1f} ns CPU/pkt", flush=True)
    out = {name: pps_summary(rs) for name, rs in runs.items()}
    out["ratio_cache_to_none"] = out["cache_64"]["pps_median"] / out["no_cache"]["pps_median"]
    return out


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) << 10
    return 0


def memory() -> list[dict]:
    import xdprx
    rows = []
    group = "239.1.2.3:5000"
    with VethPair() as pair:
        with pair.inside("rx"):
            rx = xdprx.Receiver(pair.rx_if, [group], mode="native", frames=1024,
                                max_frames=8192, chunk=512, reserve=0, hugepages="off",
                                trim_after=None)
        with pair.inside("tx"):
            tx = xdprx.Sender(pair.tx_if)
        with rx, tx:
            holder = rx.subscribe(ring_size=16384, quota=8192, spin=0)
            data = payloads(1, 1024, 64, 64)

            def row():
                f = rx.stats()["frames"]
                rows.append({"held": f["held"], "pool_frames": f["total"],
                             "umem_resident_mib": f["resident_bytes"] / 2**20,
                             "process_rss_mib": _status("VmRSS") / 2**20,
                             "process_shmem_mib": _status("RssShmem") / 2**20})
                print("memory", rows[-1], flush=True)

            row()
            import threading
            for _ in range(8):
                t = threading.Thread(target=tx.send, args=(group, data), kwargs={"rate": 50000})
                t.start()
                while t.is_alive():
                    rx.pump(timeout=0.001)
                t.join()
                deadline = time.monotonic() + 5
                want = min(rows[-1]["held"] + 1024, 8192)
                while rx.stats()["frames"]["held"] < want and time.monotonic() < deadline:
                    rx.pump(timeout=0.01)
                row()
            holder.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--count", type=int, default=2_000_000)
    ap.add_argument("--json", default=str(OUT / "results-pool.json"))
    ap.add_argument("--parts", default="recycle,cache,memory",
                    help="comma-separated subset; others are kept from an existing --json")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.seconds, a.count = 1, 2.0, 400_000
    parts = a.parts.split(",")
    old = json.loads(Path(a.json).read_text()) if Path(a.json).exists() else {}
    report = {"machine": {"cpu": _cpu_model(), "kernel": __import__("platform").release()},
              "recycle": recycle(a.reps, a.count) if "recycle" in parts else old["recycle"],
              "cache": cache(a.reps, a.seconds) if "cache" in parts else old["cache"],
              "memory": memory() if "memory" in parts else old["memory"],
              "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "benchmarks/pool.py " + " ".join(sys.argv[1:])}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print("\n| batch | ns/frame median (min-max) | vs one at a time |\n|---|---|---|")
    for b, r in report["recycle"].items():
        print(f"| {b} | {r['ns_per_frame_median']:.1f} ({r['min']:.1f}-{r['max']:.1f}) | "
              f"{r['speedup_vs_one_at_a_time']:.1f}x |")
    c = report["cache"]
    print(f"\ncache: {c['cache_64']['pps_median'] / 1e6:.2f} vs {c['no_cache']['pps_median'] / 1e6:.2f}"
          f" Mpps ({c['ratio_cache_to_none']:.3f}x)")
    print("\n| frames held | pool frames | UMEM resident MiB | process RSS MiB |\n|---|---|---|---|")
    for r in report["memory"]:
        print(f"| {r['held']} | {r['pool_frames']} | {r['umem_resident_mib']:.1f} | "
              f"{r['process_rss_mib']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
