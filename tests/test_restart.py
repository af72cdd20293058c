"""Daemon crash and restart (issue 16, part 3): `xdprx run` killed mid-stream
and started again on the same control path; Subscribers that see it go, and
Subscribers that reconnect. Real daemon, real veth, real AF_XDP."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xdprx.testing import restart
from xdprx.consumer import Subscriber, run_many
from xdprx.service.control import request
from xdprx.testing import DaemonProcess, send_cmd

from handlers import new_state, record
from helpers import xdp_attached

HERE = Path(__file__).parent
G = "239.7.7.8:5008"


def send(pair, count, seed=1, rate=5000):
    r = pair.run("tx", send_cmd(G, count, seed=seed, lo=16, hi=512, rate=rate, timeout=30))
    assert r.returncode == 0 and int(r.stdout) == count, r.stderr


def wait_for(cond, timeout, what):
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)


def root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


def test_sigkill_rounds():
    """10 SIGKILLs mid-stream (the full 100: benchmarks/report/restart.md):
    each time no XDP program is left, the restart on the same control path
    works, every observer sees daemon_gone within 1 s, the reconnecting
    subscriber rejoins every daemon with consecutive seqs in each, and no fd
    or mapping leaks."""
    root()
    res = restart.run(kills=10, signal="KILL", observers=2, rate=2000)
    assert res["ok"], res["failures"]
    assert res["survived"] == 10
    assert res["gone_ms"]["n"] == 20 and res["gone_ms"]["max"] < 1000
    assert res["rejoiner"]["reconnects"] == 9
    assert res["rejoiner"]["epochs_with_packets"] == 10
    assert res["leaks"]["fds"] <= 0 and res["leaks"]["maps"] <= 0
    assert res["rejoiner"]["close_ms"] < 1000


def test_sigterm_rounds():
    """The graceful way down too (the daemon closes the rings itself)."""
    root()
    res = restart.run(kills=3, signal="TERM", observers=1, rate=2000)
    assert res["ok"], res["failures"]
    assert res["rejoiner"]["reconnects"] == 2


def both_read(ctl, n):
    """Wait until both restart-* subscribers had @n packets from this daemon."""
    def ok():
        try:
            cs = request(ctl, {"cmd": "stats"})["stats"]["consumers"]
        except Exception:       # noqa: BLE001 - starting
            return False
        got = [c["delivered"] for c in cs if c.get("name", "").startswith("restart-")]
        return len(got) == 2 and min(got) >= n
    wait_for(ok, 20, f"both subscribers to read {n} packets")


def consumer_proc(pair, ctl, mode, seed, n):
    return subprocess.Popen([sys.executable, str(HERE / "run_restart_consumer.py"), ctl, G, mode,
                             str(seed), str(n), "16", "512"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_systemd_style_restarts_under_traffic(pair, tmp_path):
    """A paced sender runs throughout; the daemon is killed (SIGKILL, SIGTERM,
    SIGKILL) and started again 3 times; two reconnecting subscriber processes
    read, one with run(handler), one with recv(). Asserted for each:
      - 3 reconnects, packets in each of the 4 daemon lifetimes;
      - every payload is one that was sent (hash), each at most once, in the
        order sent (payload indices strictly increase: nothing invented,
        duplicated or reordered);
      - within a lifetime, payload index - seq is constant (the daemon
        numbered every packet sent in it) and received + gaps = last seq -
        first seq + 1; what the daemon delivered to it, it read (delivered
        = received per past lifetime);
      - sent = sum over lifetimes of (received + gaps) + the packets sent
        while no daemon served it: none before the first lifetime or after
        the last (it was subscribed throughout), and each hole between two
        lifetimes is at most rate x (kill to its reconnect + 0.5 s).
    """
    n, rate, seed = 14000, 1000, 7
    ctl = str(tmp_path / "x.sock")
    d = DaemonProcess(pair, ctl, [G])
    procs = []
    sender = None
    try:
        procs = [consumer_proc(pair, ctl, m, seed, n) for m in ("run", "recv")]
        for p in procs:
            line = p.stdout.readline().strip()
            assert line == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        sender = pair.popen("tx", send_cmd(G, n, seed=seed, lo=16, hi=512, rate=rate,
                                           timeout=60),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kills = []
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
            both_read(ctl, 300)     # mid-stream: both got packets from this daemon
            kills.append(time.monotonic())
            d.stop(sig)
            assert not xdp_attached(pair), "an XDP program survived the daemon"
            d = DaemonProcess(pair, ctl, [G])      # the same control path
        both_read(ctl, 300)
        assert sender.poll() is None, "the sender ended before the last restart: too slow"
        out, err = sender.communicate(timeout=60)
        assert sender.returncode == 0 and int(out) == n, err
        time.sleep(0.5)                             # the last packets reach the rings
        res = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
            o, e = p.communicate(timeout=30)
            assert p.returncode == 0, e
            res.append(json.loads(o.strip().splitlines()[-1]))
    finally:
        for p in procs + ([sender] if sender else []):
            if p.poll() is None:
                p.kill()
                p.wait()
        d.stop()
    for mode, r in zip(("run", "recv"), res):
        st, lives = r["stats"], r["lifetimes"]
        assert r["logged"] < r["capacity"]
        assert st["reconnects"] == 3, (mode, st)
        assert len(lives) == 4 and all(lives), (mode, [len(x) for x in lives])
        idx = [i for life in lives for _, i in life]
        assert -1 not in idx, f"{mode}: {idx.count(-1)} payloads match nothing sent"
        assert all(b > a for a, b in zip(idx, idx[1:])), f"{mode}: duplicated or reordered"
        # each lifetime's figures: past ones from epochs, the last from the totals
        past = r["epochs"][:-1]
        assert len(past) == 3 and len({e["epoch"] for e in r["epochs"]}) == 4
        last = {"received": st["received"] - sum(e["received"] for e in past),
                "gaps": st["gaps"] - sum(e["gaps"] for e in past)}
        known = 0
        for k, (life, ep) in enumerate(zip(lives, past + [last])):
            seqs = [s for s, _ in life]
            offs = {i - s for s, i in life}
            assert len(offs) == 1, f"{mode} lifetime {k}: index - seq not constant"
            assert ep["received"] == len(life), (mode, k, ep, len(life))
            assert ep["received"] + ep["gaps"] == seqs[-1] - seqs[0] + 1, (mode, k, ep)
            if "delivered" in ep:
                assert ep["delivered"] == ep["received"], (mode, k, ep)
            known += ep["received"] + ep["gaps"]
        assert lives[0][0][1] == 0, f"{mode}: lost the first packets, though subscribed"
        assert lives[-1][-1][1] == n - 1, f"{mode}: lost the last packets, though subscribed"
        holes = [lives[k + 1][0][1] - lives[k][-1][1] - 1 for k in range(3)]
        assert known + sum(holes) == n
        for k, h in enumerate(holes):
            bound = rate * (r["reconnect_times"][k] - kills[k] + 0.5)
            assert 0 <= h <= bound, f"{mode}: {h} packets lost at restart {k} (bound {bound:.0f})"
        # nothing of the dead daemons is still held: fds and mappings as after
        # the first reconnect
        assert r["last"][0] <= r["first"][0] and r["last"][1] <= r["first"][1], (mode, r)


def test_reconnect_run_many_and_no_daemon(pair, tmp_path):
    """run_many goes on across a restart with two reconnecting subscribers;
    then, the daemon never coming back: recv(timeout) and run(duration)
    return on time, stop() and close() end a wait for it at once, and the
    subscriber lets go of every fd."""
    ctl = str(tmp_path / "x.sock")
    fds0 = len(os.listdir("/proc/self/fd"))
    d = DaemonProcess(pair, ctl, [G])
    subs = []
    try:
        subs = [Subscriber(ctl, G, reconnect=True, handler=record) for _ in range(2)]
        states = np.zeros((2, 8 + 4000), np.int64)
        why = []
        t = threading.Thread(target=lambda: why.append(run_many(subs, record, states,
                                                                duration=60)))
        t.start()
        send(pair, 300, seed=1)
        wait_for(lambda: (states[:, 0] >= 300).all(), 10, "packets before the kill")
        d.stop(signal.SIGKILL)
        d = DaemonProcess(pair, ctl, [G])
        wait_for(lambda: all(s.reconnects == 1 and s._attached() for s in subs), 10,
                 "both subscribers to reconnect")
        send(pair, 300, seed=2)
        wait_for(lambda: (states[:, 0] >= 600).all(), 10, "packets after the restart")
        subs[0].stop()
        t.join(timeout=5)
        assert why == ["stop"]
        for s in subs:
            st = s.stats()
            assert st["reconnects"] == 1 and st["received"] == 600 and st["gaps"] == 0, st
            assert st["delivered"] == 600, st
            assert s.epochs[0]["epoch"] != st["epoch"]
        # the daemon goes for good
        d.stop(signal.SIGKILL)
        s = subs[0]
        t0 = time.monotonic()
        assert len(s.recv(timeout=0.5)) == 0 and not s.daemon_gone
        assert 0.4 < time.monotonic() - t0 < 1.5
        assert s.stats()["attached"] == 0 and s.last_error
        t0 = time.monotonic()
        assert s.run(record, new_state(10), duration=0.5) == "duration"
        assert time.monotonic() - t0 < 1.5
        threading.Timer(0.3, s.stop).start()
        t0 = time.monotonic()
        assert s.run(record, new_state(10)) == "stop"
        assert time.monotonic() - t0 < 1.0
        r = subs[1]
        threading.Timer(0.3, r.close).start()
        t0 = time.monotonic()
        assert len(r.recv()) == 0                  # forever, until close()
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(Exception, match="closed"):
            r.recv(timeout=0)
    finally:
        for s in subs:
            s.close()
        d.stop()
    assert len(os.listdir("/proc/self/fd")) <= fds0
