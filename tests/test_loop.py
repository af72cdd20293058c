"""The compiled hot path (loop.py) on a real veth pair with a real AF_XDP
socket and the real XDP program: Receiver.serve()/run(), Consumer.run(),
moderated wake-ups, handler preparation, and the returns to Python."""
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
import pytest

import xdprx
from xdprx import bulk, loop, timers
from xdprx.consumer import prepare
from xdprx.service.control import request
from xdprx.errors import ConfigError
from xdprx.testing import DaemonProcess, send, send_cmd
from xdprx.umem import FREE

from handlers import S_PKTS, check_hashes, expected_hashes, new_state, record

GROUP = "239.7.7.7:7000"


def test_serve_thread_feeds_consumers_running_handlers(pair):
    """Receiver.start() runs the compiled loop on a thread; three in-process
    consumers, subscribed while it runs (work handed to the loop's thread),
    each run an njit handler in compiled code: every payload byte, every packet."""
    n, seed = 6000, 11
    want = expected_hashes(seed, n, 64, 300)
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP])
    with rx:
        rx.start()
        cons = [rx.subscribe(ring_size=4096, wake_batch=32, wake_usecs=100) for _ in range(3)]
        states = [new_state(n, stop=n) for _ in cons]
        why = {}
        threads = [threading.Thread(target=lambda c=c, s=s: why.setdefault(c.id, c.run(
            record, s, duration=60))) for c, s in zip(cons, states)]
        for t in threads:
            t.start()
        sender = pair.popen("tx", send_cmd(GROUP, n, seed=seed, lo=64, hi=300, rate=40000))
        assert sender.wait(timeout=60) == 0
        for t in threads:
            t.join(timeout=60)
        assert set(why.values()) == {"handler"}, why
        for c, s in zip(cons, states):
            check_hashes(s, want, n)
            st = c.stats()
            assert st["received"] == n and st["dropped"] == 0 and st["gaps"] == 0, st
            assert st["handler_calls"] >= 1
            assert st["received"] + st["dropped"] == st["delivered"] + st["dropped"] == n
        stats = rx.stats()
        r = stats["receiver"]
        assert r["packets"] == n and r["deliveries"] == 3 * n
        assert r["returns_attention"] >= 1       # subscribes and stats() came through the loop
        assert r["eventfd_writes"] == sum(c["wakeups"] for c in stats["consumers"])
        for c in cons:
            c.close()
        rx.stop()
    assert (rx.umem.pool.state == FREE).all()
    assert rx.stats_after_close()["receiver"]["returns_stop"] == 1


def test_receiver_run_calls_handler_per_batch(pair):
    """Receiver.run(handler): the embedded API's compiled loop, handler on every
    batch, frames released after each call; returns when the handler says so."""
    n, seed = 5000, 12
    want = expected_hashes(seed, n, 1, 1472)
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], batch_size=128)
    with rx:
        state = new_state(n, stop=n)
        sender = pair.popen("tx", send_cmd(GROUP, n, seed=seed, rate=40000))
        assert rx.run(record, state, duration=60) == "handler"
        assert sender.wait(timeout=30) == 0
        check_hashes(state, want, n)
        r = rx.stats()["receiver"]
        assert r["packets"] == n and r["handler_calls"] >= n // 128
        assert rx.umem.pool.census()["held"] == 0     # every batch let go
    assert (rx.umem.pool.state == FREE).all()


def test_moderated_wakeups(pair):
    """A sleeping consumer is woken once `wake_batch` packets wait, or
    `wake_usecs` after the first: a few packets wait for the timer, a burst
    wakes it by count, and each sleep costs at most one eventfd write."""
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP])
    with rx:
        rx.start()
        c = rx.subscribe(wake_batch=256, wake_usecs=300_000)
        got, t_first = [], []

        def reader():
            while sum(got) < 10:
                b = c.recv(timeout=5)
                if not len(b):
                    break
                t_first.append(time.monotonic())
                got.append(len(b))
        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.2)                 # the reader is asleep on its eventfd
        with pair.inside("tx"):
            t0 = time.monotonic()
            assert send(GROUP, 10, 5, 64, 64, 100000, pair.tx_if, 5) == 10
        t.join(timeout=10)
        assert sum(got) == 10
        waited = t_first[0] - t0
        assert 0.2 < waited < 2.0, f"woken after {waited:.3f} s; the timer says 0.3 s"
        st = rx.stats()["consumers"][0]
        assert st["wakeups"] == 1 and st["wake_batch"] == 256 and st["wake_usecs"] == 300_000
        # a burst: woken by count (2048 packets: at most ~one wake-up per 256)
        state = new_state(4096, stop=2048)
        th = threading.Thread(target=c.run, args=(record, state), kwargs={"duration": 30})
        th.start()
        time.sleep(0.2)
        with pair.inside("tx"):
            assert send(GROUP, 2048, 6, 64, 64, 200000, pair.tx_if, 10) == 2048
        th.join(timeout=30)
        assert state[S_PKTS] == 2048
        w = rx.stats()["consumers"][0]["wakeups"] - 1
        assert 1 <= w <= 2048 // 256 + 8, w
        c.close()
    assert (rx.umem.pool.state == FREE).all()


def test_stop_from_another_thread_and_errors(pair):
    """stop() ends serve() from another thread; a second serve() at once is
    refused; recv() while serve() runs is refused; closing stops the loop."""
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP])
    with rx:
        th = rx.start()
        with pytest.raises(xdprx.XdprxError, match="already runs"):
            rx.serve()
        with pytest.raises(xdprx.XdprxError, match="serve"):
            rx.recv(timeout=0)
        time.sleep(1.2)
        rx.stop()
        th.join(timeout=5)
        assert not th.is_alive()
        r = rx.stats()["receiver"]
        assert r["returns_stop"] == 1 and r["returns_tick"] >= 2   # 500 ms maintenance ticks
        assert rx.serve(duration=0.2) == "duration"
        rx.start()
    # close() stopped the running loop and everything came back
    assert (rx.umem.pool.state == FREE).all()


def test_handler_must_be_njit_and_read_only():
    """A plain function, or one that writes to the (read-only) UMEM, is
    refused with one line saying why, before anything is received."""
    def plain(umem, offsets, lengths, seqs, groups, state):
        return 0

    @numba.njit
    def writes(umem, offsets, lengths, seqs, groups, state):
        umem[0] = 1
        return 0

    @numba.njit
    def wrong_arity(umem, offsets):
        return 0

    with pytest.raises(ConfigError, match="not an @numba.njit"):
        prepare(plain)
    with pytest.raises(ConfigError, match="does not compile.*never write to umem"):
        prepare(writes)
    with pytest.raises(ConfigError, match="wrong_arity does not compile"):
        prepare(wrong_arity)
    assert prepare(record) is record
    assert any(sig == loop.HANDLER_SIG.args for sig in record.signatures)


RUN_CONSUMER = str(Path(__file__).with_name("run_consumer.py"))


class Consumers:
    """@n run_consumer.py Subscriber processes of GROUP (pinned to @pin if
    given), all ready when entered; SIGTERMed on the way out, and their JSON
    reports in `results` (when the block raised: only reaped)."""

    def __init__(self, ctl: str, n: int, n_max: int, hashfile: str, pin: str | None = None):
        self.argv = (["taskset", "-c", pin] if pin else []) + [
            sys.executable, RUN_CONSUMER, ctl, GROUP, str(n_max), hashfile]
        self.n, self.procs, self.results = n, [], []

    def __enter__(self) -> "Consumers":
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, text=True))
            for p in self.procs:
                line = p.stdout.readline().strip()
                assert line == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        except BaseException:
            self.__exit__(True)
            raise
        return self

    def __exit__(self, failed, *_) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            out, err = p.communicate(timeout=60)
            if not failed:
                assert p.returncode == 0, err
                self.results.append(json.loads(out.strip().splitlines()[-1]))


def test_sixteen_subscribers_on_one_cpu_started_under_traffic(pair, tmp_path):
    """The oversubscribed case: `xdprx run` and 16 Subscriber processes all
    pinned to one CPU (the generator and the veth's kernel work on the other),
    the subscribers started together while traffic flows. Each one is ready
    (kernels and handler compiled) before it subscribes, receives in every
    second from then on, checks every payload byte in its njit handler, and
    accounts for every packet since it joined: received + gaps = packets
    sent since its first, the daemon's drops for it >= its gaps. The daemon's
    own socket drops nothing, and frames all come back."""
    # traffic runs until every subscriber is ready and then STEADY seconds
    # more, however long 16 imports on one CPU take (at most MAX_S in all)
    n_cons, rate, seed, STEADY, MAX_S = 16, 20000, 21, 6.0, 40
    n_max = rate * MAX_S
    hashfile = str(tmp_path / "hashes.npy")
    np.save(hashfile, expected_hashes(seed, n_max, 64, 128))
    ctl = str(tmp_path / "x.sock")
    # headroom to grow into: 16 consumers starved on one CPU hold frames for
    # a while, and copies into spare frames keep the FILL ring stocked meanwhile
    with DaemonProcess(pair, ctl, [GROUP], "--frames", "8192", "--max-frames", "32768",
                       pin="1"):
        sender = pair.popen("tx", ["taskset", "-c", "0"] + send_cmd(
            GROUP, n_max, seed=seed, lo=64, hi=128, rate=rate, timeout=MAX_S))
        time.sleep(1.0)
        with Consumers(ctl, n_cons, n_max, hashfile, pin="1") as subs:
            time.sleep(STEADY)
            assert sender.poll() is None, "the sender ended before every subscriber was ready"
            sender.terminate()                      # the traffic ends here
            sender.wait(timeout=30)
            t_end = time.monotonic()
            time.sleep(1.0)                         # the last packets drain
            daemon = request(ctl, {"cmd": "stats"})["stats"]
        results = subs.results
    r = daemon["receiver"]
    n = r["packets"]                # everything the sender got out, all received
    assert daemon["drops"] == 0 and daemon["xdp"]["redirected"] == n, json.dumps(
        {k: daemon[k] for k in ("receiver", "xsk", "frames", "xdp")})
    f = daemon["frames"]
    assert f["held"] == 0 and f["free"] + f["fill"] + f["kernel"] == f["total"], f
    drops = []
    for res in results:
        st = res["stats"]
        assert res["mismatches"] == 0 and res["hashed"] == res["packets"] == st["received"]
        assert res["last"] == n - 1, res["last"]              # it kept up to the end
        assert st["received"] + st["gaps"] == n - res["first"], (st, res["first"])
        assert st["dropped"] >= st["gaps"] and st["delivered"] == st["received"], st
        drops.append(st["dropped"])
        # received in every second from its first slice to the end of traffic
        tl = res["timeline"]
        t0 = tl[0][0]
        for k in range(int(t_end - t0 - 1.0)):
            lo, hi = t0 + k, t0 + k + 1
            counts = [c for t, c in tl if lo <= t < hi + 0.3]
            before = max([c for t, c in tl if t < lo] or [0])
            assert counts and max(counts) > before, f"no packets in second {k}: {tl}"
    print(f"drops per consumer: {drops}")


def test_run_many_serves_many_consumers_on_one_thread(pair):
    """xdprx.run_many: eight consumers of two groups on one thread, one
    handler, a state row each: every payload byte of its group, every packet,
    and fewer sleeps than consumers x batches (one wake-up serves them all)."""
    n, seed = 4000, 31
    groups = [GROUP, "239.7.7.8:7001"]
    want = {g: expected_hashes(seed + k, n, 32, 200) for k, g in enumerate(groups)}
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, groups)
    with rx:
        rx.start()
        cons = [rx.subscribe([groups[i % 2]], ring_size=4096) for i in range(8)]
        states = np.zeros((8, 8 + n), np.int64)   # S_STOP 0: a nonzero return stops all
        done = {}
        t = threading.Thread(target=lambda: done.setdefault(
            "why", xdprx.run_many(cons, record, states, duration=60)))
        t.start()
        senders = [pair.popen("tx", send_cmd(g, n, seed=seed + k, lo=32, hi=200, rate=20000))
                   for k, g in enumerate(groups)]
        assert all(s.wait(timeout=60) == 0 for s in senders)
        deadline = time.monotonic() + 30
        while (states[:, 0] < n).any() and time.monotonic() < deadline:
            time.sleep(0.05)
        cons[0].stop()
        t.join(timeout=10)
        assert done["why"] == "stop"
        for i, c in enumerate(cons):
            check_hashes(states[i], want[groups[i % 2]], n)
            st = c.stats()
            assert st["received"] == n and st["dropped"] == 0 and st["gaps"] == 0, (i, st)
        for c in cons:
            c.close()
        with pytest.raises(ConfigError, match="rows"):
            xdprx.run_many([rx.subscribe()], record, np.zeros((2, 4), np.int64))
    assert (rx.umem.pool.state == FREE).all()


def test_one_eventfd_write_per_sleep_set(pair, tmp_path):
    """Rings that sleep in one epoll set (run_many) are woken by one eventfd
    write per wake-up round, not one per ring; rings of different processes
    are never merged, although two Subscriber processes announce the same
    group token (each process numbers its sleep sets from 1): each of them
    is woken for every burst, by its own write."""
    n, seed, rounds = 160, 41, 10           # send() paces bursts of 16: 10 rounds
    want = expected_hashes(seed, n, 32, 64)
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP])
    with rx:
        rx.start()
        cons = [rx.subscribe(ring_size=256, wake_usecs=50) for _ in range(8)]
        states = np.zeros((8, 8 + n), np.int64)
        t = threading.Thread(target=xdprx.run_many, args=(cons, record, states),
                             kwargs={"duration": 60})
        t.start()
        time.sleep(0.3)                        # asleep in run_many's epoll set
        with pair.inside("tx"):                # a burst every 80 ms, each a wake-up round
            assert send(GROUP, n, seed, 32, 64, 200, pair.tx_if, 20) == n
        deadline = time.monotonic() + 10
        while (states[:, 0] < n).any() and time.monotonic() < deadline:
            time.sleep(0.02)
        cons[0].stop()
        t.join(timeout=10)
        for i in range(8):
            check_hashes(states[i], want, n)
        r = rx.stats()["receiver"]
        woken = sum(c["wakeups"] for c in rx.stats()["consumers"])
        assert woken >= 8 * rounds // 2, json.dumps((woken, r))   # most bursts found them asleep
        assert r["eventfd_writes"] + r["wakes_shared"] == woken, r
        assert r["eventfd_writes"] * 4 <= woken, r   # ~1 write per round of 8
        for c in cons:
            c.close()
    assert (rx.umem.pool.state == FREE).all()

    # two processes, same token, same daemon: never merged
    hashfile = str(tmp_path / "hashes.npy")
    np.save(hashfile, want)
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, [GROUP]):
        with Consumers(ctl, 2, n, hashfile) as subs:
            time.sleep(0.3)
            with pair.inside("tx"):
                assert send(GROUP, n, seed, 32, 64, 200, pair.tx_if, 20) == n
            time.sleep(0.5)
            daemon = request(ctl, {"cmd": "stats"})["stats"]
    for res in subs.results:
        assert res["packets"] == n and res["mismatches"] == 0 and res["hashed"] == n, res
    r, cs = daemon["receiver"], daemon["consumers"]
    assert r["wakes_shared"] == 0, r
    assert r["eventfd_writes"] == sum(c["wakeups"] for c in cs), (r, cs)
    assert all(c["wakeups"] >= rounds // 2 for c in cs), cs


@pytest.mark.parametrize("rx_usecs", [0, 2000])
def test_receive_moderation(pair, rx_usecs):
    """rx_usecs: while packets come less than 2 x rx_usecs apart, the loop
    takes them in batches rx_usecs apart (a nap on the attention eventfd
    alone) instead of one wake-up per packet; 0 turns it off. Every payload
    byte arrives either way, and stop() ends a nap at once."""
    n, seed = 2000, 51
    want = expected_hashes(seed, n, 32, 64)
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], rx_usecs=rx_usecs)
    with rx:
        state = new_state(n, stop=n)
        sender = pair.popen("tx", send_cmd(GROUP, n, seed=seed, lo=32, hi=64, rate=5000))
        assert rx.run(record, state, duration=60) == "handler"
        assert sender.wait(timeout=30) == 0
        check_hashes(state, want, n)
        r = rx.stats()["receiver"]
        assert r["packets"] == n, r
        if rx_usecs == 0:
            assert r["naps"] == 0, r
        else:
            # 0.4 s of traffic in bursts of 16 every 3.2 ms: naps of 2 ms
            assert r["naps"] >= 40 and r["handler_calls"] <= 400, r
        # stop() during a long nap: returns at once
        rx._ctl[loop.K_RX_NS] = 5 * 10**9          # naps of 5 s
        naps = r["naps"]
        t = threading.Thread(target=rx.run, args=(record, new_state(16)), kwargs={"duration": 30})
        t.start()
        got = int(rx.counters[bulk.S_PACKETS])
        with pair.inside("tx"):                 # two batches 50 ms apart: then a nap
            send(GROUP, 16, seed, 32, 64, 100000, pair.tx_if, 5)
            # the first batch must be taken before the second is sent (the
            # counters are read without asking the loop: stats() would)
            deadline = time.monotonic() + 10
            while rx.counters[bulk.S_PACKETS] < got + 16 and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.05)
            send(GROUP, 16, seed, 32, 64, 100000, pair.tx_if, 5)
        time.sleep(0.2)
        t0 = time.monotonic()
        rx.stop()
        t.join(timeout=10)
        assert not t.is_alive() and time.monotonic() - t0 < 1.0
        assert rx.stats()["receiver"]["naps"] > naps      # it was napping
    assert (rx.umem.pool.state == FREE).all()
    with pytest.raises(ConfigError, match="rx_usecs"):
        with pair.inside("rx"):
            xdprx.Receiver(pair.rx_if, [GROUP], rx_usecs=-1)


def test_receive_moderation_default_is_measured(pair):
    """Without rx_usecs the period is what this host's timed naps call for
    (timers.py), the loop runs with it, and stats and describe() say so;
    an explicit value wins. Every payload byte arrives."""
    n, seed = 500, 52
    want = expected_hashes(seed, n, 32, 64)
    cost = timers.nap_cost_ns()
    assert 0 < cost < 10**9
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP])
    with rx:
        assert rx.rx_usecs == timers.rx_usecs_for(cost) == timers.auto_rx_usecs()
        assert rx._ctl[loop.K_RX_NS] == rx.rx_usecs * 1000
        assert rx.stats()["moderation"] == {"rx_usecs": rx.rx_usecs, "auto": True,
                                            "nap_cost_ns": cost}
        assert f"receive moderation {rx.rx_usecs} us (a 20 us nap costs" in rx.describe()
        state = new_state(n, stop=n)
        sender = pair.popen("tx", send_cmd(GROUP, n, seed=seed, lo=32, hi=64, rate=20000))
        assert rx.run(record, state, duration=60) == "handler"
        assert sender.wait(timeout=30) == 0
        check_hashes(state, want, n)
    assert (rx.umem.pool.state == FREE).all()
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], rx_usecs=7)
    with rx:
        assert rx.stats()["moderation"] == {"rx_usecs": 7, "auto": False, "nap_cost_ns": None}
        assert "receive moderation 7 us;" in rx.describe() + ";"


def test_rx_usecs_rule():
    """A nap lasts NAP_SPAN x its cost, in tens of us, within [20, 100]."""
    assert [timers.rx_usecs_for(c) for c in (0, 1_000, 5_000, 5_001, 13_700, 17_000,
                                              24_999, 25_001, 10**9)] == \
        [20, 20, 20, 30, 60, 70, 100, 100, 100]
