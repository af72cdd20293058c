"""Multi-queue receive on veth pairs with 4 RX and 4 TX queues on both ends.

veth delivers what the sender transmits on TX queue q to the peer's RX queue
q (native XDP mode), so an AF_XDP sender per TX queue feeds each RX queue a
stream of its own. Every payload is checked per queue, every packet counted,
every frame back in its queue's pool at the end."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import xdprx
from xdprx.kernel import queues as Q
from xdprx.service.control import request
from xdprx.errors import ConfigError
from xdprx.testing import DaemonProcess, VethPair, send_cmd
from xdprx.umem import FREE

from handlers import LOW56, expected_hashes, new_state_q, record_q, check_queues, S_PKTS

GROUP = "239.8.8.8:8000"
N, LO, HI = 1500, 64, 400
HERE = Path(__file__).parent
XDPRX = str(Path(sys.executable).parent / "xdprx")


@pytest.fixture
def pair4():
    with VethPair(queues=4) as p:
        yield p


def send_queues(pair, queues, n=N, rate=30000):
    """An AF_XDP sender on each TX queue in @queues (seed 100 + q), one after
    the other; asserts each sent all."""
    for q in queues:
        r = pair.run("tx", send_cmd(GROUP, n, seed=100 + q, lo=LO, hi=HI, rate=rate, xdp=True,
                                    queue=q))
        assert r.returncode == 0 and int(r.stdout.split()[-1]) == n, (q, r.stdout, r.stderr)


def frames_home(rx):
    for p in rx.umem.pools:
        assert (p.state[p.state != 3] == FREE).all(), p.census()   # 3: ABSENT
        p.check()


def test_every_queue_feeds_in_process_consumers_and_recv(pair4):
    """queues="all" opens 4 sockets on one UMEM; two consumers (one run(),
    one recv()) and the application's own recv() get every packet of every
    queue, payload for payload, in order within each queue."""
    wants = [expected_hashes(100 + q, N, LO, HI) for q in range(4)]
    with pair4.inside("rx"):
        rx = xdprx.Receiver(pair4.rx_if, [GROUP], mode="native")
    with rx:
        assert rx.queues == [0, 1, 2, 3] and len(rx.lanes) == 4
        assert "queues 0,1,2,3" in rx.describe()
        c_run = rx.subscribe(ring_size=4096)
        c_recv = rx.subscribe(ring_size=4096)
        state = new_state_q(N, stop=4 * N)
        why = {}
        t = threading.Thread(target=lambda: why.setdefault("r", c_run.run(record_q, state,
                                                                           duration=60)))
        t.start()
        got: dict[int, list[bytes]] = {q: [] for q in range(4)}
        own: dict[int, list[bytes]] = {q: [] for q in range(4)}

        def drain(src, into, n):
            deadline = time.monotonic() + 90
            while sum(map(len, into.values())) < n and time.monotonic() < deadline:
                for p in src.recv(timeout=0.05):
                    into[p.seq >> 56].append((p.seq & int(LOW56), bytes(p.payload)))
        tc = threading.Thread(target=drain, args=(c_recv, got, 4 * N))
        tc.start()
        sender = threading.Thread(target=send_queues, args=(pair4, range(4)))
        sender.start()
        drain(rx, own, 4 * N)          # the application's own batches, all queues
        sender.join(timeout=120)
        tc.join(timeout=60)
        t.join(timeout=60)
        assert why == {"r": "handler"}, why
        check_queues(state, wants, N)
        from xdprx.testing import payloads
        for q in range(4):
            data = payloads(100 + q, N, LO, HI)
            for into in (got, own):
                assert [s for s, _ in into[q]] == list(range(N)), f"queue {q}: order or loss"
                assert [p for _, p in into[q]] == data, f"queue {q}: payload bytes"
        st = rx.stats()
        assert [pq["queue"] for pq in st["per_queue"]] == [0, 1, 2, 3]
        for pq in st["per_queue"]:
            assert pq["receiver"]["packets"] == N, pq["receiver"]     # every queue received
            assert pq["group_packets"][GROUP] == N
        assert st["receiver"]["packets"] == 4 * N and st["drops"] == 0
        assert st["group_packets"][GROUP] == 4 * N
        for c in st["consumers"]:
            assert c["delivered"] == 4 * N and c["dropped"] == 0, c
            assert [c["queues"][str(q)]["delivered"] for q in range(4)] == [N] * 4
        for c in (c_run, c_recv):
            s = c.stats()
            assert s["received"] == 4 * N and s["gaps"] == 0 and s["dropped"] == 0, s
        assert st["xdp"]["no_socket"] == 0 and st["xdp"]["redirected"] == 4 * N
        c_run.close()
        c_recv.close()
        rx.recv(timeout=0)
        rx.recv(timeout=0).release()
    frames_home(rx)
    assert rx.stats_after_close()["frames"]["held"] == 0


def test_subscribers_in_other_processes_receive_from_all_queues(pair4):
    """The daemon with --queues all: two Subscriber processes get one ring
    per queue and every packet of every queue; the daemon serves each queue
    with a loop of its own; stats per queue; frames home when it stops."""
    wants = [expected_hashes(100 + q, N, LO, HI) for q in range(4)]
    ctl = f"/tmp/xrx-mq-{pair4.tag}.sock"
    with DaemonProcess(pair4, ctl, [GROUP], "--mode", "native", "--queues", "all") as d:
        procs = [pair4.popen("rx", [sys.executable, str(HERE / "run_mq_consumer.py"), ctl,
                                    GROUP, str(N), str(4 * N)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=HERE) for _ in range(2)]
        try:
            for p in procs:
                line = p.stdout.readline()
                assert json.loads(line)["ready"] == [0, 1, 2, 3], (line, p.stderr.read())
            send_queues(pair4, range(4))
            outs = [json.loads(p.communicate(timeout=90)[0].splitlines()[-1]) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        st = request(ctl, {"cmd": "stats"})["stats"]
        text = subprocess.run([XDPRX, "stats", "--control", ctl], capture_output=True,
                              text=True).stdout
        for q in range(4):
            assert f"queue {q}: rx {N:,d} pkts" in text, text
        for o in outs:
            assert o["why"] == "handler", o["why"]
            assert o["counts"] == [N] * 4, o["counts"]
            s = o["stats"]
            assert s["received"] == 4 * N and s["gaps"] == 0 and s["dropped"] == 0, s
            check_queues(np.array([0] * 8 + o["hashes"], np.int64), wants, N)
        assert [pq["receiver"]["packets"] for pq in st["per_queue"]] == [N] * 4
        assert st["drops"] == 0 and st["receiver"]["deliveries"] == 8 * N
        rc = d.stop()
    assert rc == 0, d.err
    assert "4 queues" in d.out or "queues 0,1,2,3" in d.out, d.out
    assert "frames back in pool" in d.out
    line = [ln for ln in d.out.splitlines() if "frames back in pool" in ln][-1]
    back = line.split("frames back in pool ")[1].split()[0]
    free, total = back.split("/")
    assert free == total, line


def test_queue_subset_passes_the_rest_and_count_changes_between_runs(pair4):
    """queues=2 receives queues 0-1; what arrives on 2-3 passes to the kernel,
    counted as no_socket. After `ethtool -L rx 2`, queues="all" means 2."""
    with pair4.inside("rx"):
        rx = xdprx.Receiver(pair4.rx_if, [GROUP], mode="native", queues=2)
    with rx:
        assert rx.queues == [0, 1]
        send_queues(pair4, range(4), n=300)
        got = 0
        for _ in range(400):
            got += rx.pump(timeout=0.01)
            if got >= 600:
                break
        st = rx.stats()
        assert st["receiver"]["packets"] == 600, st["receiver"]
        assert st["xdp"]["no_socket"] == 600 and st["xdp"]["redirected"] == 600
    frames_home(rx)
    # (native XDP on veth needs the peer's TX queues <= our RX queues: both ends)
    for side, ifn in (("tx", pair4.tx_if), ("rx", pair4.rx_if)):
        r = pair4.run(side, ["ethtool", "-L", ifn, "rx", "2", "tx", "2"])
        assert r.returncode == 0, r.stderr
    with pair4.inside("rx"):
        assert Q.rx_queue_count(pair4.rx_if) == 2
        rx = xdprx.Receiver(pair4.rx_if, [GROUP], mode="native")
    with rx:
        assert rx.queues == [0, 1]
    frames_home(rx)


def test_bad_queue_input_gets_one_clear_line(pair4):
    with pair4.inside("rx"):
        for spec, words in ((9, "has 4 RX queue"), ("0,7", "queue 7 does not exist"),
                            ("1,1", "twice"), ("x", "not a queue list"),
                            ("2-9", "queue 4 does not exist")):
            with pytest.raises(ConfigError) as e:
                xdprx.Receiver(pair4.rx_if, [GROUP], queues=spec)
            assert words in str(e.value) and e.value.remedy, (spec, str(e.value))
        with pytest.raises(ConfigError) as e:
            xdprx.Receiver(pair4.rx_if, [GROUP], queues="all", cpus="0")
        assert "queue 1 has none" in str(e.value)
        with pytest.raises(ConfigError) as e:
            xdprx.Receiver(pair4.rx_if, [GROUP], queues=2, cpus="0,999")
        assert "CPU 999" in str(e.value)
    r = subprocess.run(pair4.nsenter("rx") + [XDPRX, "run", pair4.rx_if,
                                              "--group", GROUP, "--queues", "0,5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "queue 5 does not exist" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_queue_parsing_and_irq_cpus(tmp_path):
    assert Q.parse("all", 4) == [0, 1, 2, 3] and Q.parse("2", 4) == [0, 1]
    assert Q.parse("1-3", 4) == [1, 2, 3] and Q.parse("0,2", 4) == [0, 2]
    assert Q.parse([3], 4) == [3] and Q.parse(4, 4) == [0, 1, 2, 3]
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "smp_affinity_list").write_text("3\n")
    interrupts = ("           CPU0       CPU1\n"
                  " 40:          0          0   PCI-MSI 1  eth0-TxRx-0\n"
                  " 41:          0          0   PCI-MSI 2  eth0-TxRx-1\n")
    assert Q.irq_cpus("eth0", 1, interrupts, str(tmp_path)) == [3]
    assert Q.irq_cpus("eth0", 2, interrupts, str(tmp_path)) is None
    assert Q.irq_cpus("eth1", 1, interrupts, str(tmp_path)) is None


def test_a_stalled_and_then_killed_subscriber_costs_only_itself_on_every_queue(pair4):
    """A subscriber that never reads fills its ring on every queue: its losses
    are counted per queue while another subscriber gets every packet; once
    it is SIGKILLed every frame it held, on every queue, is back."""
    n = 3000                                   # > the staller's 2048-slot rings
    wants = [expected_hashes(100 + q, n, LO, HI) for q in range(4)]
    ctl = f"/tmp/xrx-mq-{pair4.tag}.sock"
    with DaemonProcess(pair4, ctl, [GROUP], "--mode", "native") as d:
        stall = pair4.popen("rx", [sys.executable, "-m", "xdprx.testing", "consume", "--control",
                                   ctl, "--group", GROUP, "--count", str(4 * n), "--timeout",
                                   "120", "--stall"], stdout=subprocess.PIPE, text=True)
        reader = pair4.popen("rx", [sys.executable, str(HERE / "run_mq_consumer.py"), ctl,
                                    GROUP, str(n), str(4 * n)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
        try:
            assert stall.stdout.readline().strip() == "ready"
            assert json.loads(reader.stdout.readline())["ready"] == [0, 1, 2, 3]
            send_queues(pair4, range(4), n=n)
            out = json.loads(reader.communicate(timeout=90)[0].splitlines()[-1])
            st = request(ctl, {"cmd": "stats"})["stats"]
            staller = [c for c in st["consumers"] if c.get("name", "").startswith("consume-")][0]
            for q in range(4):
                pq = staller["queues"][str(q)]
                assert pq["delivered"] == 2048 and pq["dropped"] == n - 2048, (q, pq)
                assert pq["held"] == 2048
            stall.kill()
            stall.wait()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = request(ctl, {"cmd": "stats"})["stats"]
                if not st["consumers"] and all(q["frames"]["held"] == 0 for q in st["per_queue"]):
                    break
                time.sleep(0.1)
            assert not st["consumers"], st["consumers"]
            assert [q["frames"]["held"] for q in st["per_queue"]] == [0] * 4
        finally:
            for p in (stall, reader):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert out["why"] == "handler" and out["counts"] == [n] * 4, out
        s = out["stats"]
        assert s["received"] == 4 * n and s["gaps"] == 0 and s["dropped"] == 0, s
        check_queues(np.array([0] * 8 + out["hashes"], np.int64), wants, n)
        assert st["drops"] == 0
        assert d.stop() == 0, d.err


def test_a_driver_without_shared_umem_gets_one_clear_line(pair4, monkeypatch):
    """A driver that cannot share one UMEM between queues fails the second
    queue's socket with EOPNOTSUPP (veth can, so the failure is injected at
    libxdp's xsk_socket__create_shared): one error naming the queue and the
    remedy, and nothing left behind (no XDP program, the queue free again)."""
    from xdprx.errors import XdprxError
    from xdprx.kernel import native
    from helpers import xdp_attached
    calls = []

    def refuse(*args):
        calls.append(args[2])             # the queue
        return -95                        # -EOPNOTSUPP
    monkeypatch.setattr(native.libxdp, "xsk_socket__create_shared", refuse)
    with pair4.inside("rx"):
        with pytest.raises(XdprxError) as e:
            xdprx.Receiver(pair4.rx_if, [GROUP], mode="native", queues="0-1")
    assert calls == [1]
    msg = str(e.value)
    assert "queue 1" in msg and "cannot share one UMEM" in msg and "--queues 1" in msg, msg
    assert e.value.errno == 95
    assert xdp_attached(pair4, "rx") == ""
    monkeypatch.undo()
    with pair4.inside("rx"):                 # nothing held: both queues open again
        rx = xdprx.Receiver(pair4.rx_if, [GROUP], mode="native", queues="0-1")
    with rx:
        send_queues(pair4, [0, 1], n=200)
        got = 0
        end = time.monotonic() + 10
        while got < 400 and time.monotonic() < end:
            got += len(rx.recv(timeout=0.2))
        assert got == 400
    frames_home(rx)


def test_more_queues_than_cpus_is_one_warning_line(pair4, caplog):
    """Loops of queues beyond the CPUs this process may use share CPUs: it
    works (the default takes every queue), with one warning line that names
    those queues and the remedy."""
    import logging
    import os
    mine = os.sched_getaffinity(0)
    cpu = min(mine)
    caplog.set_level(logging.WARNING, logger="xdprx")
    os.sched_setaffinity(0, {cpu})
    try:
        with pair4.inside("rx"):
            rx = xdprx.Receiver(pair4.rx_if, [GROUP], mode="native")
    finally:
        os.sched_setaffinity(0, mine)
    with rx:
        assert rx.queues == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if "CPU" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "queues 1,2,3" in lines[0] and "--queues 0" in lines[0] and "ethtool -L" in lines[0], \
        lines[0]


def test_each_queue_pool_grows_to_its_own_cap_and_gives_back(pair4):
    """Queues 0-1, 1024 ring frames and a cap of 2048 per queue. A consumer
    that holds every frame makes queue 0's pool grow, chunk by chunk, to its
    cap and no further (the kernel drops the rest of queue 0, counted there);
    queue 1's pool does not grow and its packets all arrive. When the
    consumer reads and lets go, every payload byte is there, in order per
    queue, and both pools shrink back to their rings."""
    from xdprx.testing import payloads
    RING, CAP, CHUNK, N0, N1 = 1024, 2048, 512, 3000, 500
    with pair4.inside("rx"):
        rx = xdprx.Receiver(pair4.rx_if, [GROUP], mode="native", queues="0-1", frames=RING,
                            max_frames=CAP, chunk=CHUNK, reserve=0, trim_after=0.3,
                            hugepages="off")
    with rx:
        holder = rx.subscribe(ring_size=4096, quota=CAP, batch_size=512, spin=0)

        def send(q, n, want):
            """Send @n on queue @q while the loops run (they grow the pool), until
            every queue's packets + kernel drops are @want."""
            s = pair4.popen("tx", send_cmd(GROUP, n, seed=100 + q, lo=LO, hi=HI, rate=20000,
                                           xdp=True, queue=q), stdout=subprocess.PIPE, text=True)

            def counted():
                return [p["receiver"]["packets"] + p["xsk"]["rx_dropped"]
                        for p in rx.stats()["per_queue"]]
            end = time.monotonic() + 60
            while counted() != want and time.monotonic() < end:
                rx.pump(timeout=0.01)
            out, _ = s.communicate(timeout=30)
            assert s.returncode == 0 and int(out.split()[-1]) == n, out
            assert counted() == want

        send(0, N0, [N0, 0])
        send(1, N1, [N0, N1])
        q0, q1 = rx.stats()["per_queue"]
        f0, f1 = q0["frames"], q1["frames"]
        assert f0["total"] == CAP and f0["held"] == CAP and f0["grows"] == (CAP - RING) // CHUNK
        assert f0["at_cap"] >= 1 and q0["receiver"]["packets"] == CAP
        assert q0["xsk"]["rx_dropped"] == N0 - CAP, q0["xsk"]
        assert f1["total"] == RING and f1["held"] == N1 and f1["grows"] == 0
        assert q1["receiver"]["packets"] == N1 and q1["xsk"]["rx_dropped"] == 0
        assert holder.stats()["dropped"] == 0

        got: dict[int, list] = {0: [], 1: []}
        end = time.monotonic() + 30
        while len(got[0]) + len(got[1]) < CAP + N1 and time.monotonic() < end:
            for p in holder.recv(timeout=0.2):
                got[p.seq >> 56].append((p.seq & int(LOW56), bytes(p.payload)))
        holder.recv(timeout=0)                               # lets go of the last batch
        assert [s for s, _ in got[0]] == list(range(CAP)), "queue 0: order or loss"
        assert [p for _, p in got[0]] == payloads(100, N0, LO, HI)[:CAP], "queue 0 bytes"
        assert [s for s, _ in got[1]] == list(range(N1)), "queue 1: order or loss"
        assert [p for _, p in got[1]] == payloads(101, N1, LO, HI), "queue 1 bytes"
        end = time.monotonic() + 10
        while time.monotonic() < end and any(
                p["frames"]["total"] != RING or p["frames"]["held"] for p in rx.stats()["per_queue"]):
            rx.pump(timeout=0.05)
        for p in rx.stats()["per_queue"]:
            assert p["frames"]["total"] == RING and p["frames"]["held"] == 0, p["frames"]
        holder.close()
    frames_home(rx)
