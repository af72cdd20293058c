"""`xdprx stats --watch`: live rates of a real daemon; plain lines and JSON
lines when stdout is not a terminal, a rich table on one; Ctrl-C exits 0."""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from xdprx.service import cli, watch
from xdprx.testing import XDPRX, DaemonProcess, send_cmd

G = "239.4.4.1:4401"
CONSUME = [sys.executable, "-m", "xdprx.testing", "consume"]


def consumer(ctl, count):
    p = subprocess.Popen(CONSUME + ["--control", ctl, "--group", G, "--count", str(count),
                                    "--timeout", "60"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def read_lines(p, until, timeout=30.0):
    """Lines of @p's stdout until @until(lines) is true or @timeout."""
    lines, deadline = [], time.monotonic() + timeout
    while not until(lines) and time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
    return lines


def test_bad_watch_options_one_line_exit_2(capsys):
    for argv, words in ((["--interval", "1"], "--interval needs --watch"),
                        (["--watch", "--interval", "0"], "--interval 0.0 must be > 0"),
                        (["--watch", "--interval", "-1"], "must be > 0")):
        assert cli.main(["stats", "--control", "/nonexistent.sock", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("xdprx: error:") and words in err
    assert cli.main(["stats", "--control", "/nonexistent.sock", "--watch"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no control socket at /nonexistent.sock" in err and len(err.splitlines()) == 1


def test_rates_between_two_samples():
    def st(pk, dl, ev, drops, cd, cons):
        return {"receiver": {"packets": pk, "bytes": pk * 100, "deliveries": dl,
                             "eventfd_writes": ev, "consumer_drops": cd},
                "drops": drops, "frames": {"held": 3, "total": 64},
                "consumers": [{"id": i, "pid": 7, "name": "", "groups": [G], "delivered": d,
                               "dropped": 0, "wakeups": w, "held": 0, "quota": 64}
                              for i, d, w in cons]}
    a = st(100, 200, 10, 0, 0, [(0, 100, 5), (1, 100, 5)])
    b = st(300, 500, 30, 4, 2, [(0, 300, 15), (1, 200, 10), (2, 0, 0)])
    r = watch.rates(b, a, 2.0)
    assert (r["pps"], r["deliveries_ps"], r["eventfd_writes_ps"]) == (100, 150, 10)
    assert r["mbps"] == 100 * 100 * 8 / 1e6 and r["drops"] == 6 and r["drops_ps"] == 3
    c = {x["id"]: x for x in r["consumers"]}
    assert (c[0]["delivered_ps"], c[0]["wakeups_ps"]) == (100, 5)
    assert c[2]["delivered_ps"] == 0, "a new consumer starts at 0/s"
    first = watch.rates(a, None, 0)
    assert first["pps"] == 0 and first["packets"] == 100
    lines = watch.plain_lines(r)
    assert len(lines) == 4 and "100 pps" in lines[0] and "consumer 1 (pid 7)" in lines[2]


def test_watch_plain_lines_then_sigint_exits_0(pair, tmp_path):
    n = 3000
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, [G]) as d:
        c = consumer(ctl, 10 ** 6)      # stays subscribed: its line stays in the view
        w = subprocess.Popen(XDPRX + ["stats", "--control", ctl, "--watch", "--interval", "0.25"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            sender = pair.popen("tx", send_cmd(G, n, seed=61, rate=2000))
            lines = read_lines(w, lambda ls: any(" pps " in x and " 0 pps " not in x
                                                 for x in ls) and len(ls) >= 8)
            assert sender.wait(timeout=60) == 0
            lines += read_lines(w, lambda ls: any(f"delivered {n:,d} " in x for x in ls))
            w.send_signal(signal.SIGINT)
            out, err = w.communicate(timeout=10)
        finally:
            for p in (w, c):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert w.returncode == 0, err
        assert err == ""
        summary = [x for x in lines if " pps " in x]
        assert len(summary) >= 3
        assert all(" deliveries " in x and "eventfd writes" in x and "drops " in x
                   for x in summary)
        busy = [x for x in summary if " 0 pps " not in x]
        assert busy, summary
        cons = [x for x in lines if x.startswith("  consumer ")]
        assert cons and "wake-ups" in cons[-1] and G in cons[-1]
        assert any(f"delivered {n:,d} " in x for x in cons), cons[-3:]
        assert d.stop() == 0


def test_watch_json_lines_and_daemon_gone_exits_1(pair, tmp_path):
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, [G]) as d:
        w = subprocess.Popen(XDPRX + ["stats", "--control", ctl, "--watch", "--json",
                                      "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert pair.run("tx", send_cmd(G, 500, seed=62, rate=5000)).returncode == 0
            lines = read_lines(w, lambda ls: any(json.loads(x)["packets"] == 500 for x in ls))
            assert d.stop() == 0
            out, err = w.communicate(timeout=10)
        finally:
            if w.poll() is None:
                w.kill()
    objs = [json.loads(x) for x in lines]
    assert objs and {"pps", "deliveries_ps", "eventfd_writes_ps", "drops", "consumers"} <= set(objs[0])
    assert any(o["packets"] == 500 for o in objs)
    assert w.returncode == 1
    assert err.strip().startswith("xdprx: the daemon went away:") and len(err.splitlines()) == 1


def test_watch_on_a_terminal_draws_a_table(pair, tmp_path):
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, [G]):
        c = consumer(ctl, 10 ** 6)
        master, slave = pty.openpty()
        w = subprocess.Popen(XDPRX + ["stats", "--control", ctl, "--watch", "--interval", "0.2"],
                             stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, COLUMNS="160", LINES="40", TERM="xterm"))
        os.close(slave)
        screen = b""
        try:
            deadline = time.monotonic() + 30
            while b"pkts/s" not in screen or b"consume-" not in screen:
                assert time.monotonic() < deadline, screen[-2000:]
                r, _, _ = select.select([master], [], [], 0.5)
                if r:
                    try:
                        screen += os.read(master, 65536)
                    except OSError:
                        break
            w.send_signal(signal.SIGINT)
            assert w.wait(timeout=10) == 0, w.stderr.read()
        finally:
            os.close(master)
            for p in (w, c):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    text = screen.decode(errors="replace")
    assert "delivered" in text and "wake-ups/s" in text and "eventfd writes" in text
    assert "\x1b[" in text, "a terminal gets the live (redrawn) view"


def test_rates_per_queue_and_the_daemon_line():
    from xdprx.service.daemon import format_line

    def st(q0, q1):
        per = [{"queue": q, "receiver": {"packets": n}, "drops": q, "frames": {"held": q}}
               for q, n in ((0, q0), (1, q1))]
        return {"receiver": {"packets": q0 + q1, "bytes": 0, "deliveries": 0,
                             "eventfd_writes": 0, "consumer_drops": 0},
                "drops": 1, "frames": {"held": 1, "total": 64, "free": 63, "fill": 0,
                                       "kernel": 0, "cap": 64, "resident_bytes": 0},
                "xdp": {"passed": 0}, "consumers": [], "per_queue": per}
    a, b = st(100, 50), st(300, 250)
    r = watch.rates(b, a, 2.0)
    assert [(q["queue"], q["pps"]) for q in r["queues"]] == [(0, 100), (1, 100)]
    lines = watch.plain_lines(r)
    assert lines[1] == "  queues 0: 100 pps (drops 0, held 0), 1: 100 pps (drops 1, held 1)"
    assert format_line(b, a, 2.0).endswith("| queues 0:100 1:100 pps")
    assert format_line(b, None, 1.0).endswith("| queues 0:- 1:- pps")
