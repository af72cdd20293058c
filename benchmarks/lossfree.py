"""Placement B, loss-free rates and per-batch latency for `xdprx bench`.

Placement B (PLATFORM.md): all receive work on CPU 1. veth's NAPI is made
threaded (/sys/class/net/IF/threaded, writable while an XDP program is
attached) and its napi/IF-* kthread pinned to CPU 1, next to the receiver;
every XDP attach makes a new kthread, so pinning follows each contender's
start. The paced generator (c/pgen.c, AF_PACKET) runs alone on CPU 0.

A contender runs in serve mode (serve.py; udprx SECONDS 0) for its whole
measurement, and is probed:
  probe(rate)  send rate x seconds packets, wait GRACE, ask for the counts;
               loss = 1 - deliveries / (N x sent). A delivery later than
               GRACE after the last send counts as lost: a receiver that only
               keeps up by filling its buffers does not pass.
  search       the highest rate with loss < 1 %: geometric bisection from
               [2 kpps, the generator's top rate] in the first run, then
               around the first result (each run a full figure).
  latency      per-batch latency (receive time - send time of the batch's
               first packet, one clock) at a fixed rate every contender
               sustains, so N is the only thing that changes.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path

from serve import percentiles

from xdprx.testing import VethPair

RX_CPU, GEN_CPU = "1", "0"
# NAPI deferral in placement B, for every contender alike (0: off): veth runs
# NAPI per queued packet, a NIC per interrupt with its rx-usecs moderation; a
# poll that did work re-arms a timer of this many us instead (napi.py)
NAPI_DEFER_US = 100
GRACE = 0.05      # s after the last send by which a delivery must have happened
SETTLE = 0.2      # s to let the previous probe's leftovers drain before a baseline
LOSS = 0.01


def napi_threads(ifname: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,comm="], capture_output=True, text=True).stdout
    return [int(p) for p, c in (ln.split(None, 1) for ln in out.splitlines() if ln.strip())
            if c.strip().startswith(f"napi/{ifname}-")]


def _deferral(pair: VethPair, usecs: int) -> str:
    """Shell: the device's NAPI deferral (every NAPI instance, and new ones)."""
    d = f"/sys/class/net/{pair.rx_if}"
    return (f"echo {2 if usecs else 0} > {d}/napi_defer_hard_irqs && "
            f"echo {usecs * 1000} > {d}/gro_flush_timeout; ")


def placement_a(pair: VethPair) -> None:
    """NAPI back in softirq context on the sending CPU (threaded off): undoes
    placement_b, which outlives the contender that asked for it (the flag
    belongs to the device), so that an A contender after a B one is placed
    as A says."""
    r = subprocess.run(["ip", "netns", "exec", pair.ns["rx"], "sh", "-c",
                        f"echo 0 > /sys/class/net/{pair.rx_if}/threaded; " + _deferral(pair, 0) +
                        f"cat /sys/class/net/{pair.rx_if}/threaded"],
                       capture_output=True, text=True)
    if r.stdout.strip() != "0":
        raise RuntimeError(f"NAPI threaded off on {pair.rx_if}: {r.stderr.strip()}")


def placement_b(pair: VethPair) -> list[int]:
    """Threaded NAPI on the rx veth, its kthreads pinned to RX_CPU. Call after
    the contender attached its XDP program (that makes the kthreads)."""
    # `ip netns exec` mounts the namespace's own /sys: /sys/class/net shows its devices
    r = subprocess.run(["ip", "netns", "exec", pair.ns["rx"], "sh", "-c",
                        f"echo 1 > /sys/class/net/{pair.rx_if}/threaded && "
                        + _deferral(pair, NAPI_DEFER_US)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"threaded NAPI on {pair.rx_if}: {r.stderr.strip()}")
    pids = []
    for _ in range(50):
        pids = napi_threads(pair.rx_if)
        if pids:
            break
        time.sleep(0.02)
    if not pids:
        raise RuntimeError(f"no napi/{pair.rx_if}-* kthread after threaded=1")
    for p in pids:
        subprocess.run(["taskset", "-pc", RX_CPU, str(p)], check=True, capture_output=True)
    return pids


def cpu_busy_ns(cpu: int = int(RX_CPU)) -> int:
    """Everything CPU @cpu did but idle (user, system, softirq, kthreads)."""
    for line in open("/proc/stat"):
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:7]) - v[3] - v[4]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


class Served:
    """A serve-mode contender in the rx namespace, pinned to RX_CPU (after an
    optional daemon it needs), in placement B once it said "ready"."""

    def __init__(self, pair: VethPair, argv: list[str], n: int, daemon: list[str] | None = None,
                 xdp_obj: str | None = None) -> None:
        self.pair, self.n, self.procs = pair, n, []
        self.xdp_obj = xdp_obj
        try:
            if xdp_obj:   # the kernel path: NAPI on the veth via an XDP_PASS program
                r = pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpdrv", "obj",
                                    xdp_obj, "sec", "xdp"])
                if r.returncode:
                    raise RuntimeError(r.stderr)
            if daemon:
                self.procs.append(pair.popen("rx", ["taskset", "-c", RX_CPU] + daemon,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                             text=True))
                self._wait_control(daemon[daemon.index("--control") + 1])
            self.p = pair.popen("rx", ["taskset", "-c", RX_CPU] + argv, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.procs.append(self.p)
            line = self.p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"contender did not start: {line!r} "
                                   f"{self._stderr()}")
            self.napi = placement_b(pair)
        except BaseException:
            self.close()
            raise

    def _wait_control(self, path: str) -> None:
        from xdprx.testing import control_answers
        deadline = time.monotonic() + 30
        while not control_answers(path):
            if self.procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start: {self._stderr()}")
            time.sleep(0.05)

    def _stderr(self) -> str:
        out = []
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            out.append(p.communicate(timeout=10)[1] or "")
        return " | ".join(o.strip()[-2000:] for o in out)

    def report(self) -> dict:
        self.p.stdin.write("r\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"contender died: {self._stderr()}")
        return json.loads(line)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    if p is getattr(self, "p", None):
                        p.stdin.close()          # serve mode ends at EOF
                        p.wait(timeout=20)
                    else:
                        p.terminate()
                        p.wait(timeout=20)
                except (subprocess.TimeoutExpired, BrokenPipeError):
                    p.kill()
                    p.wait()
        if self.xdp_obj:
            self.pair.run("rx", ["ip", "link", "set", "dev", self.pair.rx_if, "xdpdrv", "off"])

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def send(pair: VethPair, pgen: Path, rate: float, seconds: float) -> dict:
    """pgen on GEN_CPU: rate x seconds packets (rate 0: as fast as it can
    for seconds)."""
    count = int(rate * seconds) if rate else 10 ** 9
    r = pair.run("tx", ["taskset", "-c", GEN_CPU, str(pgen), pair.tx_if, str(int(rate)),
                        str(count), str(seconds * 1.5 + 0.5)], timeout=seconds * 3 + 30)
    if r.returncode:
        raise RuntimeError(f"pgen failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def probe(s: Served, pgen: Path, rate: float, seconds: float) -> dict:
    time.sleep(SETTLE)
    a = s.report()
    c0 = cpu_busy_ns()
    g = send(s.pair, pgen, rate, seconds)
    time.sleep(GRACE)
    b = s.report()
    busy = cpu_busy_ns() - c0
    d = b["deliveries"] - a["deliveries"]
    want = g["sent"] * s.n
    return {"rate": g["sent"] / g["seconds"], "sent": g["sent"], "deliveries": d,
            "loss": 1 - d / want if want else 1.0, "seconds": g["seconds"],
            "deliveries_per_s": d / g["seconds"], "cpu1_ns_per_delivery": busy / d if d else None,
            "latency": percentiles(b["latency"]), "hist": b["latency"]}


def search(s: Served, pgen: Path, seconds: float, top: float | None = None,
           around: float | None = None, steps: int = 7) -> dict:
    """The highest offered rate with loss < LOSS; @around narrows the bracket
    to +-15 % of an earlier result. Returns the best passing probe, with all
    probes, and whether the generator's top rate passed (then it is a floor)."""
    probes = []

    def ok(rate: float) -> dict | None:
        p = probe(s, pgen, rate, seconds)
        probes.append(p)
        return p if p["loss"] < LOSS else None

    best = None
    if around is None:
        best = ok(0)                    # as fast as the generator goes
        if best:
            return {"best": best, "generator_bound": True, "probes": probes}
        lo, hi = 2000.0, probes[-1]["rate"]
    else:
        lo, hi = around * 0.85, around * 1.15
        best = ok(hi)
        if best:
            return {"best": best, "generator_bound": False, "probes": probes}
    best = ok(lo)
    while best is None and lo > 500:
        hi, lo = lo, lo / 4
        best = ok(lo)
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        p = ok(mid)
        if p:
            lo, best = mid, p
        else:
            hi = mid
    return {"best": best, "generator_bound": False, "probes": probes}


def latency(s: Served, pgen: Path, rate: float, seconds: float, runs: int) -> list[dict]:
    return [probe(s, pgen, rate, seconds) for _ in range(runs)]


def contender(s: Served, pgen: Path, reps: int, seconds: float, lat_rate: float,
              lat_seconds: float, steps: int) -> dict:
    """Latency runs, then @reps loss-free searches, in one lifetime."""
    lat = latency(s, pgen, lat_rate, lat_seconds, reps)
    searches = [search(s, pgen, seconds, steps=steps)]
    first = searches[0]["best"]
    for _ in range(reps - 1):
        if searches[0]["generator_bound"]:
            searches.append(search(s, pgen, seconds, steps=steps))
        elif first is None:
            break
        else:
            searches.append(search(s, pgen, seconds, around=first["rate"], steps=max(2, steps // 2)))
    return {"latency_runs": lat, "searches": searches}


def summarize(r: dict, n: int) -> dict:
    best = [x["best"] for x in r["searches"] if x["best"]]
    dps = [b["deliveries_per_s"] for b in best]
    rates = [b["rate"] for b in best]
    lat = r["latency_runs"]
    out = {"n": n, "runs": len(best),
           "generator_bound": any(x["generator_bound"] for x in r["searches"]),
           "lossfree_rate_median": statistics.median(rates) if rates else None,
           "deliveries_per_s_median": statistics.median(dps) if dps else None,
           "deliveries_per_s_min": min(dps) if dps else None,
           "deliveries_per_s_max": max(dps) if dps else None,
           "cpu1_ns_per_delivery_median": statistics.median(
               b["cpu1_ns_per_delivery"] for b in best) if best else None,
           "latency_rate": statistics.median(x["rate"] for x in lat),
           "latency_batches": sum(x["latency"]["batches"] for x in lat),
           "latency_loss_max": max(x["loss"] for x in lat)}
    for k in ("p50", "p99", "p99.9"):
        v = [x["latency"][k] for x in lat if x["latency"][k] is not None]
        out[f"latency_{k}_us"] = statistics.median(v) if v else None
        out[f"latency_{k}_us_min"] = min(v) if v else None
        out[f"latency_{k}_us_max"] = max(v) if v else None
    return out
