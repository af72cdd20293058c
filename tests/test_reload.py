"""`xdprx run --config FILE` and SIGHUP: the file's groups change live, the
subscribers keep their rings (real daemon, real veth, real AF_XDP)."""
import hashlib
import signal
import time

import pytest

from xdprx.consumer import Subscriber
from xdprx.service.control import request
from xdprx.service.subscribe import Digest
from xdprx.testing import DaemonProcess, payloads, send_cmd

A, B = "239.5.0.1:5001", "239.5.0.2:5002"


def sha(seed, n):
    return hashlib.sha256(b"".join(payloads(seed, n))).hexdigest()


def stats(ctl):
    return request(ctl, {"cmd": "stats"})["stats"]


def write(path, groups, extra=""):
    path.write_text(f"group = {groups!r}\n".replace("'", '"') + extra)


class Readers:
    """Subscribers read in this process, each into its Digest."""

    def __init__(self):
        self.subs, self.dig = [], []

    def add(self, ctl, groups):
        # the largest ring the daemon's pool allows: the reader stops while a
        # subscriber is set up, and 2-core CI may be busy
        s = Subscriber(ctl, groups, name=f"reload-{len(self.subs)}", ring_size=4096,
                       quota=3072)
        self.subs.append(s)
        self.dig.append(Digest())
        return s

    def read(self, seconds, until=lambda: False):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            idle = True
            for s, d in zip(self.subs, self.dig):
                b = s.recv(timeout=0)
                idle = idle and not len(b)
                for pkt in b:
                    d.add(str(pkt.group), pkt.seq, pkt.payload)
            if idle:
                time.sleep(0.002)

    def got(self, k, g):
        return self.dig[k].summary().get(g, {"received": 0, "gaps": 0, "sha256": ""})

    def close(self):
        for s in self.subs:
            s.close()


def hup_until(d, r, ctl, ok, timeout=10):
    """SIGHUP the daemon, reading meanwhile, until its stats satisfy @ok."""
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while not ok(stats(ctl)):
        assert time.monotonic() < deadline, "the reload did not take effect"
        r.read(0.05)


def test_sighup_adds_and_removes_groups_without_disturbing_subscribers(pair, tmp_path):
    ctl, cfg = str(tmp_path / "x.sock"), tmp_path / "xdprx.toml"
    write(cfg, [A])
    na, nb, nb2 = 4000, 500, 300
    r = Readers()
    with DaemonProcess(pair, ctl, [], "--config", str(cfg)) as d:
        try:
            r.add(ctl, [A])
            with pytest.raises(Exception, match="not received here"):
                Subscriber(ctl, [B])
            sa = pair.popen("tx", send_cmd(A, na, seed=1, rate=1000))   # ~4 s, across both reloads
            r.read(0.5)
            write(cfg, [A, B])
            hup_until(d, r, ctl, lambda st: B in st["groups"])
            sb = r.add(ctl, [B])                      # the new group is receivable
            tx = pair.popen("tx", send_cmd(B, nb, seed=2, rate=2000))
            r.read(20, lambda: tx.poll() is not None and r.got(1, B)["received"] >= nb)
            assert tx.wait(timeout=30) == 0
            assert r.got(1, B)["received"] == nb and r.got(1, B)["sha256"] == sha(2, nb)
            # removal: B goes back to the kernel; its subscriber stays connected
            write(cfg, [A])
            hup_until(d, r, ctl, lambda st: st["groups"] == [A])
            st0 = stats(ctl)
            tx = pair.popen("tx", send_cmd(B, nb2, seed=3, rate=2000))
            r.read(30, lambda: tx.poll() is not None)   # A flows on meanwhile: keep reading
            assert tx.wait(timeout=30) == 0
            r.read(20, lambda: sa.poll() is not None and r.got(0, A)["received"] >= na)
            assert sa.wait(timeout=30) == 0
            r.read(0.3)
            st = stats(ctl)
            assert sb.id in [c["id"] for c in st["consumers"]], "still connected"
            assert st["xdp"]["passed"] - st0["xdp"]["passed"] >= nb2, "B passed to the kernel"
            assert st["group_packets"][B] == st0["group_packets"][B] == nb
            # A's subscriber lost nothing, across two reloads: no gap, every byte
            a = r.got(0, A)
            assert (a["received"], a["first_seq"], a["last_seq"], a["gaps"]) == \
                (na, 0, na - 1, 0), (a, st["group_packets"], st["drops"], st["xdp"],
                                     pair.run("rx", ["ethtool", "-S", pair.rx_if]).stdout)
            assert a["sha256"] == sha(1, na)
            assert r.got(1, B)["received"] == nb, "nothing of B after its removal"
            for c in st["consumers"]:
                assert c["dropped"] == 0, c
            # every packet counted: received = delivered + rejected in flight
            rv = st["receiver"]
            assert rv["packets"] == na + nb + rv["rejected"] and rv["violations"] == 0
        finally:
            r.close()
        assert d.stop() == 0
    out = d.out
    assert f"groups added: {B}; removed: none" in out, out
    assert f"groups added: none; removed: {B}" in out, out
    assert "receives nothing more" in out and "reload-1" in out, out
    st = [ln for ln in out.splitlines() if "frames back in pool" in ln][-1]
    free, total = st.split("frames back in pool ")[1].split()[0].rstrip(",").split("/")
    assert free == total, st


def test_bad_file_on_sighup_changes_nothing(pair, tmp_path):
    ctl, cfg = str(tmp_path / "x.sock"), tmp_path / "xdprx.toml"
    write(cfg, [A, B])
    n = 400
    r = Readers()
    with DaemonProcess(pair, ctl, [], "--config", str(cfg)) as d:
        try:
            r.add(ctl, [A, B])
            for text in ('group = ["239.5.0.3:5003"]\nframs = 1\n',   # unknown key
                         'group = ["198.18.0.9:1"]\n',               # not multicast
                         'group = [\n'):                             # not TOML
                cfg.write_text(text)
                d.proc.send_signal(signal.SIGHUP)
                r.read(0.4)
            write(cfg, [A], extra="frames = 8192\n")   # groups apply, frames needs a restart
            hup_until(d, r, ctl, lambda st: st["groups"] == [A])
            assert stats(ctl)["frames"]["total"] == 4096
            tx = pair.popen("tx", send_cmd(A, n, seed=4, rate=4000))
            r.read(20, lambda: tx.poll() is not None and r.got(0, A)["received"] >= n)
            assert tx.wait(timeout=30) == 0
            assert r.got(0, A)["received"] == n and r.got(0, A)["sha256"] == sha(4, n)
        finally:
            r.close()
        assert d.stop() == 0
    out = d.out
    assert out.count("reload refused, nothing changed") == 3, out
    assert "unknown key 'frams'" in out and "not a multicast address" in out
    assert "not valid TOML" in out
    assert "frames changed in the file; restart xdprx run to apply" in out


def test_sighup_without_config_is_only_logged(pair, tmp_path):
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, [A]) as d:
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert stats(ctl)["groups"] == [A], "still running, unchanged"
        assert d.stop() == 0
    assert "SIGHUP: no --config file; nothing to reload" in d.out


def test_sighup_changes_every_queues_table(tmp_path):
    """Two RX queues, a loop each: a group added by SIGHUP arrives from both
    queues with per-queue sequence numbers from 0; removed, from neither."""
    from xdprx.testing import VethPair
    n = 300
    with VethPair(queues=2) as pair:
        ctl, cfg = str(tmp_path / "x.sock"), tmp_path / "xdprx.toml"
        write(cfg, [A])
        r = Readers()
        with DaemonProcess(pair, ctl, [], "--config", str(cfg), "--mode", "native",
                           "--queues", "all") as d:
            try:
                write(cfg, [A, B])
                hup_until(d, r, ctl, lambda st: B in st["groups"])
                sub = r.add(ctl, [B])
                seqs = {0: [], 1: []}
                for q in (0, 1):
                    tx = pair.run("tx", send_cmd(B, n, seed=10 + q, rate=5000, xdp=True, queue=q))
                    assert tx.returncode == 0, tx.stderr
                end = time.monotonic() + 20
                while sum(map(len, seqs.values())) < 2 * n and time.monotonic() < end:
                    for pkt in sub.recv(timeout=0.1):
                        seqs[pkt.seq >> 56].append(pkt.seq & ((1 << 56) - 1))
                assert seqs == {0: list(range(n)), 1: list(range(n))}
                st = stats(ctl)
                assert [pq["group_packets"][B] for pq in st["per_queue"]] == [n, n]
                write(cfg, [A])
                hup_until(d, r, ctl, lambda st: st["groups"] == [A])
                passed = stats(ctl)["xdp"]["passed"]
                for q in (0, 1):
                    assert pair.run("tx", send_cmd(B, n, seed=20, rate=5000, xdp=True,
                                                   queue=q)).returncode == 0
                time.sleep(0.3)
                assert not len(sub.recv(timeout=0.2))
                st = stats(ctl)
                assert st["xdp"]["passed"] - passed >= 2 * n
                assert [pq["group_packets"][B] for pq in st["per_queue"]] == [n, n]
            finally:
                r.close()
            assert d.stop() == 0


def test_receiver_set_groups_in_process(pair):
    """The Python API under the reload: a removed group keeps its id, and
    re-adding it revives the same slot with its sequence numbers going on."""
    import xdprx
    from xdprx.errors import ConfigError
    n = 100

    def receive(rx, want):
        got = []
        end = time.monotonic() + 10
        while len(got) < want and time.monotonic() < end:
            got += [(str(p.group), p.seq) for p in rx.recv(timeout=0.1)]
        return got

    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [A])
    with rx:
        added, removed = rx.set_groups([A, B])
        assert ([str(g) for g in added], removed) == ([B], [])
        assert pair.run("tx", send_cmd(B, n, seed=5, rate=5000)).returncode == 0
        assert receive(rx, n) == [(B, s) for s in range(n)]
        assert [str(g) for g in rx.set_groups([A])[1]] == [B]
        with pytest.raises(ConfigError, match="not received here"):
            rx.subscribe([B])
        with pytest.raises(ConfigError, match="no group given"):
            rx.set_groups([])
        assert rx.stats()["groups"] == [A]
        assert pair.run("tx", send_cmd(B, n, seed=6, rate=5000)).returncode == 0
        assert receive(rx, 1) == [] and rx.stats()["group_packets"][B] == n
        rx.set_groups([B, A])                       # B again: its old slot
        assert [str(g) for g in rx.groups] == [A, B] and rx.stats()["groups"] == [A, B]
        c = rx.subscribe([B])
        assert pair.run("tx", send_cmd(B, n, seed=7, rate=5000)).returncode == 0
        assert receive(rx, n) == [(B, s) for s in range(n, 2 * n)]
        assert [p.seq for p in c.recv(timeout=1)][:1] == [n]
        c.close()
