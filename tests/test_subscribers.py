"""Consumers in other processes: `xdprx run` serves them over its control
socket (SCM_RIGHTS: the UMEM read-only, a ring each); real veth, real AF_XDP."""
import ctypes
import hashlib
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import xdprx
from xdprx.service import pcap
from xdprx.service.control import request
from xdprx.testing import XDPRX, DaemonProcess, payloads, send_cmd

from test_fanout import GROUPS, groups_of

CONSUME = [sys.executable, "-m", "xdprx.testing", "consume"]


def consume_proc(ctl, groups, consumers=1, count=1000, timeout=60, stall=False):
    argv = CONSUME + ["--control", ctl, "--consumers", str(consumers), "--count", str(count),
                      "--timeout", str(timeout)] + [x for g in groups for x in ("--group", g)]
    p = subprocess.Popen(argv + (["--stall"] if stall else []), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    return p


def wait_ready(procs, timeout=120):
    deadline = time.monotonic() + timeout
    for p in procs:
        line = p.stdout.readline().strip()
        assert line == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        assert time.monotonic() < deadline


def sha(seed, n):
    return hashlib.sha256(b"".join(payloads(seed, n))).hexdigest()


def stats(ctl):
    return request(ctl, {"cmd": "stats"})["stats"]


@pytest.mark.parametrize("procs,per_proc", [(1, 1), (8, 1), (16, 4)])
def test_processes_get_exactly_their_groups(pair, tmp_path, procs, per_proc):
    """1, 8 and 64 consumers in 1, 8 and 16 processes, mixed over 3 groups."""
    n = 600
    total = procs * per_proc
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, GROUPS) as d:
        procs = [consume_proc(ctl, groups_of(i), consumers=per_proc,
                              count=n * len(groups_of(i))) for i in range(procs)]
        try:
            wait_ready(procs)
            st = stats(ctl)
            assert len(st["consumers"]) == total
            assert {c["pid"] for c in st["consumers"]} == {p.pid for p in procs}
            senders = [pair.popen("tx", send_cmd(g, n, seed=30 + k, rate=2000))
                       for k, g in enumerate(GROUPS)]
            for s in senders:
                assert s.wait(timeout=60) == 0
            results = [json.loads(p.communicate(timeout=90)[0]) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for i, res in enumerate(results):
            assert len(res) == per_proc
            for c in res:
                assert sorted(c["groups"]) == sorted(groups_of(i))
                for g in groups_of(i):
                    k = GROUPS.index(g)
                    got = c["groups"][g]
                    assert (got["received"], got["first_seq"], got["last_seq"], got["gaps"]) \
                        == (n, 0, n - 1, 0), (i, g, got)
                    assert got["sha256"] == sha(30 + k, n), f"process {i} {g}: payload bytes"
                cs = c["stats"]
                assert cs["delivered"] + cs["dropped"] == n * len(groups_of(i)) == cs["received"]
                assert cs["dropped"] == 0
        # they exited: subscriptions removed, every frame back
        deadline = time.monotonic() + 2
        while stats(ctl)["consumers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st = stats(ctl)
        assert st["consumers"] == [] and st["frames"]["held"] == 0
        assert st["receiver"]["packets"] == 3 * n and st["drops"] == 0
        assert st["receiver"]["violations"] == 0
        assert d.stop() == 0
    assert "frames back in pool 4096/4096" in d.out
    assert d.out.count("subscribed to") == total and d.out.count(" left; ") == total


def test_sigkilled_consumer_is_reclaimed_within_a_second(pair, tmp_path):
    n = 4000
    ctl = str(tmp_path / "x.sock")
    g = GROUPS[0]
    with DaemonProcess(pair, ctl, [g]) as d:
        readers = [consume_proc(ctl, [g], count=n) for _ in range(2)]
        victim = consume_proc(ctl, [g], count=n, stall=True)   # holds what it gets
        try:
            wait_ready(readers + [victim])
            s = pair.popen("tx", send_cmd(g, n, seed=3, rate=4000))
            deadline = time.monotonic() + 10
            while True:  # mid-stream: the victim holds frames
                mine = [c for c in stats(ctl)["consumers"] if c["pid"] == victim.pid]
                if mine and mine[0]["held"] >= 500 or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert mine and mine[0]["held"] >= 500, mine
            assert s.poll() is None, "still mid-stream"
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while any(c["pid"] == victim.pid for c in stats(ctl)["consumers"]):
                assert time.monotonic() - killed < 1.0, "not reclaimed within 1 s"
                time.sleep(0.01)
            assert s.wait(timeout=60) == 0
            results = [json.loads(r.communicate(timeout=60)[0])[0] for r in readers]
        finally:
            for p in readers + [victim]:
                if p.poll() is None:
                    p.kill()
        for r in results:  # the others continued, losing nothing
            assert r["groups"][g]["received"] == n and r["groups"][g]["gaps"] == 0
            assert r["groups"][g]["sha256"] == sha(3, n)
        deadline = time.monotonic() + 2
        while stats(ctl)["consumers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st = stats(ctl)
        assert st["frames"]["held"] == 0 and st["receiver"]["violations"] == 0
        assert sum(st["frames"][k] for k in ("free", "fill", "kernel", "held")) == st["frames"]["total"]
        assert d.stop() == 0
    assert "frames back in pool 4096/4096" in d.out


def _raw_subscribe(ctl, group):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(ctl)
    s.sendall(json.dumps({"cmd": "subscribe", "groups": [group]}).encode() + b"\n")
    msg, fds, _, _ = socket.recv_fds(s, 65536, 4)
    return s, json.loads(msg), fds


def test_consumers_cannot_write_packet_memory(pair, tmp_path):
    ctl = str(tmp_path / "x.sock")
    g = GROUPS[0]
    with DaemonProcess(pair, ctl, [g]):
        # 1. the descriptors themselves are read-only
        s, reply, fds = _raw_subscribe(ctl, g)
        try:
            assert reply["ok"] and len(fds) == 4
            umem_fd, ring_fd, ctl_fd, efd = fds
            for fd, size in ((umem_fd, reply["umem_size"]), (ring_fd, 4096)):
                with pytest.raises(PermissionError):
                    mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                with pytest.raises(OSError):
                    os.write(fd, b"x")
                with pytest.raises(OSError):
                    os.ftruncate(fd, 0)
            m = mmap.mmap(umem_fd, reply["umem_size"], mmap.MAP_SHARED, mmap.PROT_READ)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            a = np.frombuffer(m, np.uint8)
            page = a.ctypes.data
            assert libc.mprotect(page, 4096, mmap.PROT_READ | mmap.PROT_WRITE) == -1
            assert ctypes.get_errno() == 13  # EACCES: the mapping can never become writable
            del a
            m.close()
        finally:
            s.close()
            for fd in fds:
                os.close(fd)
        # 2. through the API: the batch is a read-only array, and a raw store faults
        sub = xdprx.Subscriber(ctl, g)
        try:
            sender = pair.popen("tx", send_cmd(g, 10, seed=1, rate=1000))
            b = sub.recv(timeout=10)
            assert len(b) and not b.umem.flags.writeable
            with pytest.raises(ValueError):
                b.umem[int(b.offsets[0])] = 0
            with pytest.raises(ValueError):
                b.umem.setflags(write=True)
            sender.wait(timeout=30)
        finally:
            sub.close()
        code = ("import ctypes, xdprx, sys\n"
                f"s = xdprx.Subscriber({ctl!r}, {g!r})\n"
                "print('mapped', flush=True)\n"
                "ctypes.memset(s._area.ctypes.data + 4096, 0, 1)\n"
                "print('wrote', flush=True)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60)
        assert "mapped" in r.stdout and "wrote" not in r.stdout
        assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr[-500:])
        # and the daemon carries on: a new consumer reads correct payloads
        with xdprx.Subscriber(ctl, g) as sub:
            sender = pair.popen("tx", send_cmd(g, 50, seed=9, rate=2000))
            got = []
            deadline = time.monotonic() + 10
            while len(got) < 50 and time.monotonic() < deadline:
                got += [bytes(p.payload) for p in sub.recv(timeout=0.2)]
            assert got == payloads(9, 50)
            sender.wait(timeout=30)


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
ASK = ("import json, socket, sys\n"
       "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
       "s.connect(sys.argv[1])\n"
       "s.sendall(json.dumps({'cmd': sys.argv[2], 'groups': ['239.1.2.3:5000']}).encode() + b'\\n')\n"
       "print(s.recv(65536).decode())\n")


@pytest.fixture
def open_dir():
    """A directory every user may enter (pytest's tmp_path is root-only)."""
    d = tempfile.mkdtemp(prefix="xrx-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_uid_not_allowed_is_refused_with_a_clear_message(pair, open_dir):
    ctl = os.path.join(open_dir, "x.sock")
    with DaemonProcess(pair, ctl, [GROUPS[0]], "--allow-uid", "0"):
        os.chmod(ctl, 0o666)  # the file lets anyone in; the daemon's own check must not
        r = subprocess.run(NOBODY + [sys.executable, "-c", ASK, ctl, "subscribe"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        reply = json.loads(r.stdout)
        assert reply["ok"] is False
        assert "uid 65534" in reply["error"] and "not allowed" in reply["error"]
        assert "--allow-uid" in reply["remedy"]
        assert stats(ctl)["consumers"] == []
    with DaemonProcess(pair, ctl, [GROUPS[0]], "--allow-uid", "nobody"):
        os.chmod(ctl, 0o666)
        r = subprocess.run(NOBODY + [sys.executable, "-c", ASK, ctl, "stats"],
                           capture_output=True, text=True, timeout=30)
        assert json.loads(r.stdout)["ok"] is True
    # and the default socket mode keeps other users out before any of that
    with DaemonProcess(pair, ctl, [GROUPS[0]]):
        assert os.stat(ctl).st_mode & 0o777 == 0o660
        r = subprocess.run(NOBODY + [sys.executable, "-c", ASK, ctl, "stats"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "PermissionError" in r.stderr


def test_cli_subscribe_pcap_json_and_daemon_exit(pair, tmp_path):
    n = 300
    g = GROUPS[0]
    ctl = str(tmp_path / "x.sock")
    cap = str(tmp_path / "rx.pcap")
    with DaemonProcess(pair, ctl, [g]) as d:
        p = subprocess.Popen(XDPRX + ["subscribe", "--control", ctl, "--group", g, "--count",
                                      str(n), "--pcap", cap, "--json", "--digest"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "subscribed to" in p.stderr.readline()
        s = pair.run("tx", send_cmd(g, n, seed=4, lo=20, hi=900, rate=5000))
        assert s.returncode == 0
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        summary = json.loads(out)
        expected = payloads(4, n, 20, 900)
        assert summary["received"] == n and summary["gaps"] == 0
        assert summary["bytes"] == sum(map(len, expected))
        assert summary["groups"][g]["sha256"] == hashlib.sha256(b"".join(expected)).hexdigest()
        recs = pcap.read(cap)
        assert len(recs) == n
        for (ts, frame), data in zip(recs, expected):
            assert frame[14 + 20 + 8:] == data and abs(ts / 1e9 - time.time()) < 120
        if subprocess.run(["which", "tcpdump"], capture_output=True).returncode == 0:
            t = subprocess.run(["tcpdump", "-nn", "-r", cap], capture_output=True, text=True)
            assert t.returncode == 0 and t.stdout.count("239.1.2.3.5000") == n
        # a subscriber without --count outlives the daemon: it says so, exit 1
        p = subprocess.Popen(XDPRX + ["subscribe", "--control", ctl, "--group", g],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "subscribed to" in p.stdout.readline()
        assert d.stop() == 0
        out, err = p.communicate(timeout=30)
        assert p.returncode == 1 and "daemon stopped" in err
    # bad input: one line, exit 2
    for args, msg in ((["--group", "10.0.0.1:5"], "not a multicast"),
                      ([], "no group"),
                      (["--group", g], "no control socket")):
        r = subprocess.run(XDPRX + ["subscribe", "--control", ctl] + args,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith("xdprx: error:"), r.stderr
        assert msg in r.stderr


def test_subscriber_errors_are_clear(pair, tmp_path):
    ctl = str(tmp_path / "x.sock")
    with pytest.raises(xdprx.XdprxError, match="no control socket"):
        xdprx.Subscriber(ctl, GROUPS[0])
    with DaemonProcess(pair, ctl, [GROUPS[0]]):
        with pytest.raises(xdprx.XdprxError, match="not received here.*--group"):
            xdprx.Subscriber(ctl, GROUPS[1])
        with pytest.raises(xdprx.XdprxError, match="power of two"):
            xdprx.Subscriber(ctl, GROUPS[0], ring_size=1000)
        r = subprocess.run(XDPRX + ["subscribe", "--control", ctl, "--group", GROUPS[1]],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "not received here" in r.stderr
        assert stats(ctl)["consumers"] == []
