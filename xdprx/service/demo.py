"""`xdprx demo`: the fan-out on a private veth pair, no NIC needed.

Creates two namespaces (xrx-demo-*), a veth pair between them, starts the
daemon (`xdprx run`) on one end, several subscriber processes (the first
with run(handler), compiled; the others with recv()), and a paced kernel UDP
multicast sender on the other end. Prints each consumer's rate live, checks
every payload byte and sequence number, and deletes everything on the way
out, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numba
import numpy as np

GROUP = "239.1.2.3:5000"
SEED = 42
# ~0.4 s of slack per consumer at 20,000 pps: a Python consumer on a busy
# 2-core machine may stall that long (32 MiB of UMEM)
FRAMES, RING = 16384, 8192
# the njit consumer's state: counters, then the expected payload hash by seq
S_RECEIVED, S_GAPS, S_BAD, S_NEXT, S_COUNT, S_HASH = 0, 1, 2, 3, 4, 8
BASIS = np.int64(-3750763034362895579)     # FNV-1a 64
PRIME = np.int64(1099511628211)


def expected(count: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sizes, offsets, byte pool) of testing.payloads(SEED, count, lo, hi),
    without a bytes object per packet."""
    rng = np.random.default_rng(SEED)
    sizes = rng.integers(lo, hi + 1, count)
    pool = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    offs = np.zeros(count, np.int64)
    offs[1:] = np.cumsum(sizes)[:-1]
    return sizes, offs, pool


@numba.njit(cache=True)
def _fnv(b, off, n):
    h = BASIS
    for k in range(n):
        h = (h ^ np.int64(b[off + k])) * PRIME
    return h


@numba.njit(cache=True)
def _hashes(pool, offs, sizes, out):
    for i in range(sizes.shape[0]):
        out[i] = _fnv(pool, offs[i], sizes[i])


@numba.njit(cache=True)
def check_handler(umem, offsets, lengths, seqs, groups, state):
    """run(handler): count, gaps, and every payload against its expected hash."""
    for i in range(offsets.shape[0]):
        s = np.int64(seqs[i])
        if s > state[S_NEXT]:
            state[S_GAPS] += s - state[S_NEXT]
        state[S_NEXT] = s + 1
        if s >= state[S_COUNT] or _fnv(umem, offsets[i], lengths[i]) != state[S_HASH + s]:
            state[S_BAD] += 1
        state[S_RECEIVED] += 1
    return 1 if state[S_RECEIVED] >= state[S_COUNT] else 0


# ---- one consumer process (python -m xdprx.service.demo consumer ...) -----------------------
def consumer(control: str, index: int, count: int, lo: int, hi: int, kind: str,
             timeout: float) -> int:
    """Subscribe, print "ready", then a JSON status line twice a second and a
    final one; stops at @count packets, @timeout seconds, or SIGTERM/SIGINT."""
    from ..consumer import Subscriber
    stop = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.append(1))
    sizes, offs, pool = expected(count, lo, hi)
    st = {"i": index, "kind": kind, "received": 0, "gaps": 0, "bad": 0}

    def show(final: bool = False) -> None:
        print(json.dumps(dict(st, final=final)), flush=True)

    if kind == "run":
        state = np.zeros(S_HASH + count, np.int64)
        state[S_COUNT] = count
        _hashes(pool, offs, sizes, state[S_HASH:])
        sub = Subscriber(control, [GROUP], name=f"demo-{index}-run", handler=check_handler,
                         ring_size=RING)
    else:
        sub = Subscriber(control, [GROUP], name=f"demo-{index}-recv", ring_size=RING)
    pool_b = pool.tobytes()
    print("ready", flush=True)
    end = time.monotonic() + timeout
    nxt = 0
    try:
        while not stop and st["received"] < count and time.monotonic() < end:
            if kind == "run":
                why = sub.run(check_handler, state, duration=0.5)
                st.update(received=int(state[S_RECEIVED]), gaps=int(state[S_GAPS]),
                          bad=int(state[S_BAD]))
                if why == "gone":
                    break
            else:
                t = time.monotonic() + 0.5
                while time.monotonic() < t and st["received"] < count and not stop:
                    for pkt in sub.recv(timeout=0.1):
                        s = pkt.seq
                        if s > nxt:
                            st["gaps"] += s - nxt
                        nxt = s + 1
                        o = int(offs[s]) if s < count else 0
                        if s >= count or pkt.payload != pool_b[o:o + int(sizes[s])]:
                            st["bad"] += 1
                        st["received"] += 1
                    if sub.daemon_gone:
                        break
                if sub.daemon_gone:
                    break
            show()
    finally:
        sub.close()
        show(final=True)
    return 0


# ---- the demo ----------------------------------------------------------------------
def _readers(procs: list[subprocess.Popen], status: list[dict]) -> list[threading.Thread]:
    """A thread per consumer keeping its last status line."""
    def read(k: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            try:
                status[k] = json.loads(line)
            except ValueError:
                pass
    ts = [threading.Thread(target=read, args=(k, p), daemon=True) for k, p in enumerate(procs)]
    for t in ts:
        t.start()
    return ts


def _end(p: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if p is not None and p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def demo(seconds: float = 5.0, rate: int = 20000, mode: str = "native", consumers: int = 3,
         lo: int = 16, hi: int = 512) -> int:
    from .control import request
    from ..errors import ConfigError
    from ..testing import VethPair, control_answers, send_cmd
    if not 1 <= consumers <= 64:
        raise ConfigError(f"--consumers {consumers} out of range", remedy="use 1..64")
    if not 0 < seconds <= 3600 or not 1 <= rate <= 10_000_000:
        raise ConfigError("--seconds or --rate out of range",
                          remedy="use e.g. --seconds 5 --rate 20000")
    count = int(seconds * rate)
    py = [sys.executable, "-m"]
    tmp = tempfile.mkdtemp(prefix="xdprx-demo-")
    ctl = os.path.join(tmp, "demo.sock")
    daemon = sender = None
    procs: list[subprocess.Popen] = []
    ok = False
    with VethPair(tag=f"demo-{os.getpid()}") as pair:
        try:   # the processes end before the namespaces go
            print(f"demo: namespaces {pair.ns['rx']} / {pair.ns['tx']}, veth "
                  f"{pair.rx_if} <-> {pair.tx_if}; control socket {ctl}", flush=True)
            log = open(os.path.join(tmp, "daemon.log"), "w+")
            daemon = pair.popen("rx", py + ["xdprx.service.cli", "run", pair.rx_if, "--group", GROUP,
                                            "--control", ctl, "--mode", mode,
                                            "--frames", str(FRAMES),
                                            "--interval", "3600"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 120
            while not control_answers(ctl):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise ConfigError(f"the daemon did not start: {log.read().strip()[-400:]}",
                                      remedy=f"run `xdprx doctor` (mode {mode}; try --mode skb)")
                time.sleep(0.05)
            print(f"demo: daemon (xdprx run, pid {daemon.pid}) receiving {GROUP}", flush=True)
            kinds = ["run" if k == 0 else "recv" for k in range(consumers)]
            procs = [subprocess.Popen(py + ["xdprx.service.demo", "consumer", "--control", ctl,
                                            "--index", str(k), "--count", str(count),
                                            "--sizes", f"{lo}:{hi}", "--kind", kinds[k],
                                            "--timeout", str(seconds * 3 + 120)],
                                      stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
                     for k in range(consumers)]
            for k, p in enumerate(procs):     # subscribed (and compiled) before traffic
                line = p.stdout.readline().strip()
                if line != "ready":
                    raise ConfigError(f"consumer {k} did not start ({line or 'no output'})",
                                      remedy="see its error above")
            status = [{"received": 0, "gaps": 0, "bad": 0, "final": False} for _ in procs]
            readers = _readers(procs, status)
            print(f"demo: {consumers} subscriber processes: consumer 0 run(handler) "
                  f"(compiled), the others recv(); each checks every payload byte", flush=True)
            sender = pair.popen("tx", send_cmd(GROUP, count, SEED, lo, hi, rate,
                                               timeout=seconds * 3),
                                stdout=subprocess.DEVNULL, start_new_session=True)
            print(f"demo: sending {count:,d} packets of {lo}..{hi} B at {rate:,d} pps from "
                  f"the peer namespace with a kernel UDP socket", flush=True)
            t0 = last = time.monotonic()
            prev = [0] * consumers
            sent_at = None
            deadline = t0 + seconds * 3 + 10
            while time.monotonic() < deadline:
                time.sleep(0.2)
                now = time.monotonic()
                done = all(s["received"] >= count or s.get("final") for s in status)
                if now - last >= 1.0 or done:
                    st = request(ctl, {"cmd": "stats"})["stats"]
                    rates = " | ".join(
                        f"c{k} {(s['received'] - prev[k]) / (now - last):>7,.0f}/s "
                        f"{s['received']:>9,d} gaps {s['gaps']} bad {s['bad']}"
                        for k, s in enumerate(status))
                    print(f"  {now - t0:5.1f}s  daemon rx {st['receiver']['packets']:>9,d} "
                          f"drops {st['drops']} | {rates}", flush=True)
                    prev, last = [s["received"] for s in status], now
                if sent_at is None and sender.poll() is not None:
                    sent_at = now
                if done or (sent_at is not None and now - sent_at > 3):   # the rest is lost
                    break
            _end(sender)
            st = request(ctl, {"cmd": "stats"})["stats"]
            for p in procs:
                _end(p)
            for t in readers:
                t.join(timeout=5)
            fine = []
            for k, s in enumerate(status):
                good = s["received"] == count and s["gaps"] == 0 and s["bad"] == 0
                fine.append(good)
                print(f"demo: consumer {k} ({'run(handler)' if kinds[k] == 'run' else 'recv()'})"
                      f": received {s['received']:,d} of {count:,d}, gaps {s['gaps']}, "
                      f"payload check {'OK' if s['bad'] == 0 else 'FAILED (%d bad)' % s['bad']}"
                      f" -> {'OK' if good else 'FAILED'}", flush=True)
            dropped = sum(c["dropped"] for c in st["consumers"])
            print(f"demo: daemon received {st['receiver']['packets']:,d}, kernel drops "
                  f"{st['drops']}, consumer ring drops {dropped}; XDP saw {st['xdp']['seen']:,d}, "
                  f"redirected {st['xdp']['redirected']:,d}, passed {st['xdp']['passed']:,d}",
                  flush=True)
            _end(daemon, signal.SIGTERM, 30)
            log.seek(0)
            stopped = [ln for ln in log.read().splitlines() if "stopped;" in ln]
            print("demo: " + (stopped[-1].removeprefix("xdprx: ") if stopped
                              else "the daemon printed no stop line"), flush=True)
            log.close()
            ok = all(fine) and daemon.returncode == 0
            print("demo: " + ("OK: every consumer received every packet, payloads checked"
                              if ok else "FAILED"), flush=True)
        except KeyboardInterrupt:
            print("demo: interrupted; cleaning up", flush=True)
        finally:
            for p in [sender, *procs]:
                _end(p)
            _end(daemon, signal.SIGTERM, 30)
            shutil.rmtree(tmp, ignore_errors=True)
    print("demo: processes stopped, namespaces and veth pair removed", flush=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdprx.service.demo")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("consumer", help="one demo consumer (started by xdprx demo)")
    c.add_argument("--control", required=True)
    c.add_argument("--index", type=int, default=0)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--sizes", default="16:512")
    c.add_argument("--kind", choices=("run", "recv"), default="recv")
    c.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args(argv)
    lo, hi = (int(x) for x in a.sizes.split(":"))
    try:
        return consumer(a.control, a.index, a.count, lo, hi, a.kind, a.timeout)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
