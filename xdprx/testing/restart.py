"""Daemon crash and restart, checked: `xdprx run` killed mid-stream, again and again.

    python -m xdprx.testing.restart --kills 100 [--signal KILL|TERM|mixed] [--json]
    xdprx stress restart --kills 100 --json

On one veth pair between two xrx-* namespaces, each round: start `xdprx
run` on the same --control path, attach observer Subscribers
(reconnect=False) that read in threads, with recv() or run(handler), send
a short paced burst, kill the daemon while they read, and check:

  restart   the new daemon takes over the same control path every time (a
            socket file left by a killed daemon must not block it);
  gone      every observer sees daemon_gone; the time from the kill to it is
            measured (limit: 1 s);
  detach    no XDP program is left on the interface once the daemon is
            reaped (its bpf_link dies with its last fd; polled up to 1 s);
  rejoin    one Subscriber(reconnect=True) lives through every round: it
            reconnects once per kill, gets packets in every daemon lifetime,
            its sequence numbers are consecutive within each lifetime, and
            the time from the new daemon answering to its resubscription is
            measured;
  leaks     this process's fds and memory mappings after the last round
            equal those after the first (observers and old daemons' UMEMs
            all let go).

Prints one JSON object (--json) or a summary; exits 1 when a check failed.
Traffic stays inside the namespaces (198.18.0.0/15, 239.0.0.0/8), every
send is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import signal as sig
import statistics
import subprocess
import sys
import tempfile
import threading
import time

GROUP = "239.7.7.7:5007"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _count_py(umem, offsets, lengths, seqs, groups, state):
    state[0] += offsets.shape[0]
    return 0


_count = None


class _Observer(threading.Thread):
    """A reconnect=False Subscriber read in a thread, with recv() (even @i)
    or run(handler) (odd); notes when it saw daemon_gone / run() returned
    "gone" (monotonic s) and how many packets it got."""

    def __init__(self, control: str, i: int) -> None:
        super().__init__(daemon=True, name=f"observer-{i}")
        from ..consumer import Subscriber
        self.handler = _count if i % 2 else None
        self.sub = Subscriber(control, GROUP, name=f"observer-{i}", handler=self.handler)
        self.gone_at: float | None = None
        self.stop = False

    @property
    def packets(self) -> int:
        return int(self.sub.counts[0])

    def run(self) -> None:
        while not self.stop:
            if self.handler is not None:
                gone = self.sub.run(self.handler, duration=0.2) == "gone"
            else:
                self.sub.recv(timeout=0.2)
                gone = self.sub.daemon_gone
            if gone:
                self.gone_at = time.monotonic()
                return


class _Rejoiner(threading.Thread):
    """The reconnect=True Subscriber: reads with recv() across every round,
    checking each lifetime's sequence numbers are consecutive."""

    def __init__(self, control: str) -> None:
        super().__init__(daemon=True, name="rejoiner")
        from ..consumer import Subscriber
        self.rejoined_at: list[float] = []
        self.per_epoch: dict[int, int] = {}
        self.seq_errors = 0
        self._next: int | None = None
        self.stop = False
        self.sub = Subscriber(control, GROUP, name="rejoiner", reconnect=True,
                              on_reconnect=self._on_reconnect)

    def _on_reconnect(self, s) -> None:
        self.rejoined_at.append(time.monotonic())
        self._next = None           # a new daemon: its numbering starts again

    def run(self) -> None:
        while not self.stop:
            b = self.sub.recv(timeout=0.2)
            if not len(b):
                continue
            e = self.sub.epoch
            self.per_epoch[e] = self.per_epoch.get(e, 0) + len(b)
            for s in b.seqs.tolist():
                if self._next is not None and s != self._next:
                    self.seq_errors += 1
                self._next = s + 1


def _detached(r: "_Rejoiner | None", timeout: float = 3.0) -> None:
    """Wait (bounded) until the rejoiner has let go of a killed daemon."""
    t = time.monotonic()
    while r is not None and r.sub._attached() and time.monotonic() - t < timeout:
        time.sleep(0.005)


def _attached(pair) -> bool:
    from ..kernel.bpfprog import attached_program
    from ..kernel.native import ifindex
    with pair.inside("rx"):
        return attached_program(ifindex(pair.rx_if)) is not None


def run(kills: int = 100, signal: str = "KILL", observers: int = 2, rate: int = 2000,
        burst: int = 4000, gone_limit: float = 1.0, log=None) -> dict:
    """@kills rounds (see the module doc); @signal KILL, TERM or mixed
    (alternating). Returns the figures and the failures found."""
    from . import XDPRX, VethPair, control_answers, send_cmd
    global _count
    if _count is None:      # the run() observers' handler (compiled once, here)
        import numba
        _count = numba.njit(cache=True)(_count_py)
    say = log or (lambda m: None)
    fails: list[str] = []
    gone_ms: list[float] = []
    restart_ms: list[float] = []
    rejoin_ms: list[float] = []
    detach_ms: list[float] = []
    survived = 0
    base: dict | None = None
    leaks: dict = {}
    with VethPair() as pair, tempfile.TemporaryDirectory(prefix="xdprx-restart-") as tmp:
        control = os.path.join(tmp, "x.sock")
        errlog = open(os.path.join(tmp, "daemon.err"), "w+")
        argv = XDPRX + ["run", pair.rx_if, "--control", control, "--group", GROUP,
                        "--interval", "5"]
        rejoiner: _Rejoiner | None = None
        daemon = None
        killed_at = None
        try:
            for k in range(kills):
                signum = {"KILL": sig.SIGKILL, "TERM": sig.SIGTERM}.get(
                    signal, sig.SIGKILL if k % 2 == 0 else sig.SIGTERM)
                # restart on the same control path, right after the last kill
                t0 = time.monotonic()
                daemon = pair.popen("rx", argv, stdout=subprocess.DEVNULL, stderr=errlog)
                while not control_answers(control):
                    if daemon.poll() is not None or time.monotonic() - t0 > 30:
                        break
                    time.sleep(0.005)
                if not control_answers(control):
                    errlog.seek(0)
                    tail = errlog.read()[-300:].strip().replace("\n", " | ")
                    fails.append(f"round {k}: the daemon did not restart on {control}: {tail}")
                    break
                ready = time.monotonic()
                if killed_at is not None:
                    restart_ms.append((ready - killed_at) * 1e3)
                if not _attached(pair):
                    fails.append(f"round {k}: no XDP program attached while the daemon runs")
                if rejoiner is None:
                    rejoiner = _Rejoiner(control)
                    rejoiner.start()
                obs = [_Observer(control, i) for i in range(observers)]
                for o in obs:
                    o.start()
                sender = pair.popen("tx", send_cmd(GROUP, burst, seed=k + 1, lo=16, hi=512,
                                                   rate=rate, timeout=30),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                # kill mid-stream: once every reader has packets of this daemon
                deadline = time.monotonic() + 10
                want = len(rejoiner.rejoined_at)
                while time.monotonic() < deadline and not (
                        all(o.packets for o in obs) and len(rejoiner.rejoined_at) >= want
                        and rejoiner.per_epoch.get(rejoiner.sub.epoch, 0) > 0
                        and rejoiner.sub._attached()):
                    time.sleep(0.01)
                if rejoiner.rejoined_at and k > 0:
                    rejoin_ms.append((rejoiner.rejoined_at[-1] - ready) * 1e3)
                if not all(o.packets for o in obs):
                    fails.append(f"round {k}: an observer got no packet in 10 s")
                if sender.poll() is not None:
                    fails.append(f"round {k}: the burst ended before the kill (not mid-stream)")
                killed_at = time.monotonic()
                daemon.send_signal(signum)
                daemon.wait(timeout=30)
                for o in obs:
                    o.join(timeout=gone_limit + 5)
                    if o.gone_at is None:
                        fails.append(f"round {k}: {o.name} never saw daemon_gone")
                        o.stop = True
                        o.join(timeout=5)
                    else:
                        gone_ms.append((o.gone_at - killed_at) * 1e3)
                        if o.gone_at - killed_at > gone_limit:
                            fails.append(f"round {k}: {o.name} saw daemon_gone after "
                                         f"{o.gone_at - killed_at:.3f} s")
                    o.sub.close()
                t = time.monotonic()
                while _attached(pair) and time.monotonic() - t < 1.0:
                    time.sleep(0.005)
                if _attached(pair):
                    fails.append(f"round {k}: an XDP program is still attached 1 s after "
                                 f"the daemon was reaped")
                detach_ms.append((time.monotonic() - killed_at) * 1e3)
                sender.terminate()     # the rest of the burst is not needed
                sender.wait(timeout=30)
                survived += 1
                if k == 0:
                    _detached(rejoiner)
                    base = {"fds": _fds(), "maps": _maps(), "rss_kb": _rss_kb()}
                say(f"round {k + 1}/{kills}: {sig.Signals(signum).name}, gone "
                    f"{max(gone_ms[-observers:] or [0]):.1f} ms, restart "
                    f"{restart_ms[-1] if restart_ms else 0:.0f} ms")
            # the last daemon is dead: once the rejoiner let go of it, this
            # process holds what it held after the first round
            if base is not None:
                _detached(rejoiner)
                leaks = {"fds": _fds() - base["fds"], "maps": _maps() - base["maps"],
                         "rss_kb": _rss_kb() - base["rss_kb"]}
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            errlog.close()
            if rejoiner is not None:
                rejoiner.stop = True
                t = time.monotonic()
                rejoiner.sub.close()      # it may be waiting for a daemon: prompt
                rejoiner.join(timeout=5)
                close_ms = (time.monotonic() - t) * 1e3
    rej = rejoiner.sub.stats() if rejoiner else {}
    epochs_with_packets = sum(1 for n in (rejoiner.per_epoch.values() if rejoiner else []) if n)
    if rejoiner is not None:
        if rej["reconnects"] != survived - 1:
            fails.append(f"rejoiner: {rej['reconnects']} reconnects for {survived} daemons")
        if epochs_with_packets != survived:
            fails.append(f"rejoiner: packets in {epochs_with_packets} of {survived} daemon "
                         f"lifetimes")
        if rejoiner.seq_errors:
            fails.append(f"rejoiner: {rejoiner.seq_errors} sequence breaks within a lifetime")
        if rejoiner.is_alive():
            fails.append("rejoiner: close() did not end its recv() within 5 s")
    if leaks:
        if leaks["fds"] > 0 or leaks["maps"] > 0:
            fails.append(f"leaks after {survived} rounds: {leaks}")

    def fig(v: list[float]) -> dict:
        return ({"n": len(v), "median": round(statistics.median(v), 2), "max": round(max(v), 2),
                 "min": round(min(v), 2)} if v else {"n": 0})
    return {"kills": kills, "signal": signal, "survived": survived, "observers": observers,
            "rate_pps": rate, "gone_ms": fig(gone_ms),
            "gone_within_limit": sum(1 for g in gone_ms if g <= gone_limit * 1e3),
            "gone_limit_ms": gone_limit * 1e3, "restart_ms": fig(restart_ms),
            "rejoin_ms": fig(rejoin_ms), "detached_ms": fig(detach_ms),
            "rejoiner": {"reconnects": rej.get("reconnects"), "received": rej.get("received"),
                         "gaps": rej.get("gaps"), "epochs_with_packets": epochs_with_packets,
                         "seq_errors": rejoiner.seq_errors if rejoiner else None,
                         "close_ms": round(close_ms, 2) if rejoiner else None},
            "leaks": leaks, "failures": fails, "ok": not fails}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdprx.testing.restart",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--signal", choices=("KILL", "TERM", "mixed"), default="KILL")
    ap.add_argument("--observers", type=int, default=2,
                    help="reconnect=False subscribers per round, timing daemon_gone")
    ap.add_argument("--rate", type=int, default=2000, help="packets/s of each round's burst")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not 1 <= a.kills <= 100000:
        ap.error("--kills must be 1..100000")
    if os.geteuid() != 0:
        print("xdprx restart: needs root (namespaces, XDP); run it as root", file=sys.stderr)
        return 2
    res = run(a.kills, a.signal, a.observers, a.rate,
              log=None if a.json else (lambda m: print(m, flush=True)))
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{res['survived']}/{res['kills']} kills survived; daemon_gone after "
              f"{res['gone_ms']}; restart {res['restart_ms']}; rejoin {res['rejoin_ms']}; "
              f"leaks {res['leaks']}")
        for f in res["failures"]:
            print(f"FAIL {f}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
