"""Per-NUMA frame pools chosen from consumer feedback (seed 001).

Topology and policy logic on their own; then the real pipeline (veth, XDP
program, AF_XDP socket) on a simulated 2-node topology where node 0 is CPU 0
and node 1 is CPU 1, with consumer threads and processes pinned to either;
then this machine's real single node, where the binding is checked with
get_mempolicy and move_pages."""
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import xdprx
from xdprx import numa
from xdprx.errors import ConfigError
from xdprx.testing import DaemonProcess, fake_sysfs, payloads, send_cmd

BIG, SMALL = "239.1.2.3:5000", "239.1.2.4:5001"
XDPRX = [sys.executable, "-m", "xdprx.service.cli"]
PAGE = 4096


# ---- topology ---------------------------------------------------------------------
def test_topology_from_a_simulated_sysfs(tmp_path):
    root = fake_sysfs(str(tmp_path), {0: "0-3,8", 1: "4-7", 2: "", 3: "9-11"},
                      {"eth0": 1, "eth9": -1}, memory="0-1,3")
    t = numa.Topology(root)
    assert t.simulated and list(t.nodes) == [0, 1, 2, 3]
    assert t.nodes[0] == [0, 1, 2, 3, 8] and t.nodes[2] == []
    assert t.memory_nodes == [0, 1, 3]           # node 2 has CPUs' worth of nothing
    assert t.node_of_cpu(8) == 0 and t.node_of_cpu(5) == 1 and t.node_of_cpu(42) == -1
    assert t.interface_node("eth0") == 1
    assert t.interface_node("eth9") == -1 and t.interface_node("veth7") == -1
    with pytest.raises(ConfigError, match="node 2 has no memory"):
        t.check_node(2)


def test_this_machine_topology():
    t = numa.Topology()
    assert not t.simulated and t.memory_nodes
    cpu, node = numa.getcpu()
    assert t.node_of_cpu(cpu) == node


@pytest.mark.parametrize("spec,want", [("auto", "auto"), ("off", "off"), ("1", 1), (0, 0),
                                       (None, "auto")])
def test_numa_option(spec, want):
    assert numa.parse_numa(spec) == want


def test_numa_option_errors():
    with pytest.raises(ConfigError, match="unknown --numa"):
        numa.parse_numa("nearest")
    with pytest.raises(ConfigError, match="majority"):
        numa.Policy([0, 1], majority=0.5)
    with pytest.raises(ConfigError, match="window"):
        numa.Policy([0, 1], window=0)


# ---- the policy, fed directly ------------------------------------------------------
W = 100_000     # more than one window's worth of bytes (64 KiB)


def feed(pol, shares, windows, batch0=0):
    """@windows windows with bytes split by @shares; returns windows until a switch."""
    for i in range(windows):
        if pol.observe(np.array([int(W * s) for s in shares], np.int64), batch0 + i):
            return i + 1
    return None


def test_a_sustained_majority_moves_refill_after_exactly_window_windows():
    pol = numa.Policy([0, 1], start=0, window=4)
    assert pol.current == 0 and "interface" in pol.reason
    assert feed(pol, (0.2, 0.8), 10) == 4
    assert pol.current == 1 and len(pol.switches) == 1
    s = pol.switches[0]
    assert (s.old, s.new) == (0, 1) and "80%" in s.why and "node 1" in s.why
    assert feed(pol, (0.2, 0.8), 50) is None      # stays: no flapping back and forth
    assert feed(pol, (0.9, 0.1), 10) == 4 and pol.current == 0


@pytest.mark.parametrize("pattern", [
    [(0.5, 0.5)],                                  # an even split
    [(0.45, 0.55), (0.55, 0.45)],                  # noise around it
    [(0.2, 0.8), (0.2, 0.8), (0.2, 0.8), (0.8, 0.2)],   # majorities that do not last
    [(0.41, 0.59)],                                # a majority below the threshold
])
def test_no_sustained_clear_majority_never_switches(pattern):
    pol = numa.Policy([0, 1], start=0, window=4)
    for i in range(400):
        assert not pol.observe(np.array([int(W * x) for x in pattern[i % len(pattern)]]), i)
    assert pol.current == 0 and pol.switches == [] and pol.windows == 400


def test_small_reads_accumulate_into_one_window():
    pol = numa.Policy([0, 1], start=0, window=1)
    for _ in range(7):                             # 7 x 8 KiB < 64 KiB: no decision yet
        assert not pol.observe(np.array([0, 8 << 10]))
    assert pol.windows == 0
    assert pol.observe(np.array([0, 8 << 10])) and pol.current == 1 and pol.windows == 1


def test_four_nodes_pick_the_node_that_reads_most():
    pol = numa.Policy([0, 1, 2, 3], start=None, window=2)
    assert pol.current == 0
    assert feed(pol, (0.1, 0.1, 0.7, 0.1), 5) == 2 and pol.current == 2


@pytest.mark.parametrize("mode", ["off", 0])
def test_fixed_and_off_never_move(mode):
    pol = numa.Policy([0, 1] if mode == "off" else [0], mode)
    assert not pol.adaptive
    assert feed(pol, (0.0, 1.0) if mode == "off" else (1.0,), 20) is None
    assert pol.current == 0 and pol.windows == 0


# ---- the real pipeline on a simulated two-node machine ------------------------------
@pytest.fixture
def two_nodes(tmp_path, pair):
    """Node 0 = CPU 0, node 1 = CPU 1; the receiving veth on node 0."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    return numa.Topology(fake_sysfs(str(tmp_path / "sys"), {0: "0", 1: "1"}, {pair.rx_if: 0}))


class Reader(threading.Thread):
    """An in-process consumer running on @cpu, recording every packet."""

    def __init__(self, rx, groups, cpu):
        super().__init__(daemon=True)
        self.rx, self.groups, self.cpu = rx, groups, cpu
        self.got: list[tuple[str, int, bytes]] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error = None

    def run(self):
        try:
            os.sched_setaffinity(0, {self.cpu})          # this thread only
            with self.rx.subscribe(self.groups, spin=0) as c:
                self.ready.set()
                while not self.stop.is_set():
                    for p in c.recv(timeout=0.05):
                        self.got.append((str(p.group), p.seq, bytes(p.payload)))
                while True:                              # what is still queued
                    b = c.recv(timeout=0.2)
                    if not len(b):
                        break
                    self.got.extend((str(p.group), p.seq, bytes(p.payload)) for p in b)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
            self.ready.set()


def pump_until(rx, senders, until=lambda: False, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rx.pump(timeout=0.01)
        if until() or all(s.poll() is not None for s in senders):
            break
    for s in senders:
        assert s.wait(timeout=30) == 0
    for _ in range(50):            # the last packets, and the consumers' releases
        rx.pump(timeout=0.01)


def start_readers(rx, specs):
    readers = [Reader(rx, g, cpu) for g, cpu in specs]
    for r in readers:
        r.start()
        assert r.ready.wait(10) and r.error is None, r.error
    return readers


def stop_readers(rx, readers):
    for r in readers:
        r.stop.set()
    while any(r.is_alive() for r in readers):
        rx.pump(timeout=0.01)
    for r in readers:
        r.join()
        assert r.error is None, r.error


def check_exact(reader, group, seed, n, size, first=0):
    """@reader got packets first..n-1 of @group in order, every byte."""
    exp = payloads(seed, n, size, size)
    got = [(s, d) for g, s, d in reader.got if g == group]
    assert [s for s, _ in got] == list(range(first, n)), f"{group}: sequence"
    assert all(d == exp[s] for s, d in got), f"{group}: payload bytes"


def test_refill_follows_the_bytes_to_node_1_and_old_frames_go_home(pair, two_nodes):
    """A consumer on node 1 reads ~10x the bytes of one on node 0: refill moves
    to node 1 within a bounded number of batches, and once the FILL ring has
    turned over, every node 0 frame is back in node 0's pool."""
    n1, n2 = 2000, 1500
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [BIG, SMALL], mode="native", frames=1024,
                            topology=two_nodes, numa_every=8)
    with rx:
        assert rx.policy.current == 0 and rx.policy.reason.startswith("the interface")
        assert len(rx.umem.pool.nodes) == 2 and not rx.umem.bound   # simulated: not bindable
        readers = start_readers(rx, [([BIG], 1), ([SMALL], 0)])
        senders = [pair.popen("tx", send_cmd(BIG, n1, seed=1, lo=1000, hi=1000, rate=4000)),
                   pair.popen("tx", send_cmd(SMALL, n1, seed=2, lo=100, hi=100, rate=4000))]
        pump_until(rx, senders)
        st = rx.stats()["numa"]
        assert st["refill_node"] == 1 and st["switches"] == 1, st
        sw = st["history"][0]
        assert (sw["from"], sw["to"]) == (0, 1) and "node 1 read" in sw["why"]
        # the bound: `window` windows of >= 64 KiB each, every batch carrying at
        # least one 100-byte packet, decided at the first tick after it
        bound = rx.policy.window * (-(-rx.policy.min_bytes // 100) + rx.numa_every)
        assert sw["batch"] <= bound, (sw, bound)
        assert int(re.search(r"read (\d+)% of the bytes", sw["why"])[1]) >= 80, sw
        # round 2: more packets than the FILL ring holds, all refilled from node 1
        foreign0 = st["foreign_fills"]
        senders = [pair.popen("tx", send_cmd(BIG, n2, seed=3, lo=1000, hi=1000, rate=4000)),
                   pair.popen("tx", send_cmd(SMALL, n2, seed=4, lo=100, hi=100, rate=4000))]
        pump_until(rx, senders)
        stop_readers(rx, readers)
        st = rx.stats()
        pools = {p["node"]: p for p in st["numa"]["pools"]}
        foreign = st["numa"]["foreign_fills"] - foreign0
        assert pools[0]["held"] == 0 and pools[0]["kernel"] <= foreign, pools[0]
        rx.umem.pool.check(rx.umem.fill.occupancy())   # per node pool and overall
        assert st["drops"] == 0 and st["receiver"]["consumer_drops"] == 0
        assert st["numa"]["switches"] == 1
    big, small = readers
    assert len(big.got) == n1 + n2 and len(small.got) == n1 + n2
    exp = payloads(1, n1, 1000, 1000) + payloads(3, n2, 1000, 1000)
    assert [d for _, _, d in big.got] == exp, "every byte, in order, across the switch"
    assert [s for _, s, _ in big.got] == list(range(n1 + n2))
    exp = payloads(2, n1, 100, 100) + payloads(4, n2, 100, 100)
    assert [d for _, _, d in small.got] == exp
    # closed: every frame of both pools is back home
    for p in rx.umem.pool.nodes:
        assert p.census() == {"free": p.total, "kernel": 0, "held": 0}


def test_an_even_split_does_not_flap(pair, two_nodes):
    """Two consumers of the same group, one per node: equal bytes, many
    windows, no switch."""
    n = 4000
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [BIG], mode="native", frames=1024,
                            topology=two_nodes, numa_every=8)
    with rx:
        readers = start_readers(rx, [([BIG], 0), ([BIG], 1)])
        s = pair.popen("tx", send_cmd(BIG, n, seed=5, lo=1000, hi=1000, rate=8000))
        pump_until(rx, [s])
        stop_readers(rx, readers)
        st = rx.stats()["numa"]
        assert st["windows"] >= 20, st           # ~4 MB read in 64 KiB windows
        assert st["switches"] == 0 and st["refill_node"] == 0, st
        assert 0.35 < st["last_window_share"][0] < 0.65
        pools = {p["node"]: p for p in st["pools"]}
        assert pools[1]["kernel"] == pools[1]["held"] == 0 and st["foreign_fills"] == 0
    for r in readers:
        assert len(r.got) == n


@pytest.mark.parametrize("numa_arg", ["0", "off"])
def test_fixed_node_and_off_are_honoured(pair, two_nodes, tmp_path, numa_arg):
    """Daemon with every consumer on node 1: --numa 0 keeps refilling from
    node 0 (one pool), --numa off has no policy and no NUMA pools."""
    sysfs = two_nodes.root
    with DaemonProcess(pair, str(tmp_path / "x.sock"), [BIG], "--numa", numa_arg,
                       "--numa-sysfs", sysfs, "--frames", "1024") as d:
        sub = subprocess.Popen(["taskset", "-c", "1"] + XDPRX + [
            "subscribe", "--control", d.control, "--group", BIG, "--count", "3000", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        s = pair.run("tx", send_cmd(BIG, 3000, seed=6, lo=1000, hi=1000, rate=8000))
        assert s.returncode == 0
        out, err = sub.communicate(timeout=60)
        assert sub.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["received"] == 3000
        st = json.loads(subprocess.run(XDPRX + ["stats", "--control", d.control, "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    n = st["numa"]
    if numa_arg == "0":
        assert n["mode"] == "fixed" and n["refill_node"] == 0 and n["switches"] == 0, n
        assert [p["node"] for p in n["pools"]] == [0] and "fixed" in n["why"]
    else:
        assert n["mode"] == "off" and "refill_node" not in n
    assert "numa: refill moves" not in d.out


def test_daemon_follows_a_subscriber_process_on_node_1(pair, two_nodes, tmp_path):
    """The feedback of a consumer in another process (pinned with taskset)
    moves the daemon's refill node; stats and the daemon's log say so and why."""
    with DaemonProcess(pair, str(tmp_path / "x.sock"), [BIG], "--numa-sysfs", two_nodes.root,
                       "--frames", "1024") as d:
        sub = subprocess.Popen(["taskset", "-c", "1"] + XDPRX + [
            "subscribe", "--control", d.control, "--group", BIG, "--count", "8000", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        # enough for several policy ticks (every 64 receive batches) at any batch size
        assert pair.run("tx", send_cmd(BIG, 8000, seed=7, lo=1000, hi=1000,
                                       rate=10000)).returncode == 0
        out, err = sub.communicate(timeout=60)
        assert sub.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["received"] == 8000
        text = subprocess.run(XDPRX + ["stats", "--control", d.control], capture_output=True,
                              text=True, check=True).stdout
        st = json.loads(subprocess.run(XDPRX + ["stats", "--control", d.control, "--json"],
                                       capture_output=True, text=True, check=True).stdout)
        time.sleep(0.6)                      # one more live line: the switch is logged
    n = st["numa"]
    assert n["refill_node"] == 1 and n["switches"] == 1 and n["last_window_share"]["1"] == 1.0
    assert "refill from node 1" in text and "node 0 -> 1" in text
    assert "numa: refill moves from node 0 to node 1" in d.out, d.out
    assert "NUMA auto: pools on node(s) 0,1 (not bound (simulated topology)), refill from node 0" in d.out


# ---- this machine: the pool memory is really on node 0 ----------------------------
def test_pool_memory_is_bound_to_node_0_here(pair):
    """Checked with get_mempolicy and move_pages, for the ring frames and for
    spare frames committed later by growth; the pipeline is unchanged."""
    n = 3000
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [BIG], mode="native", frames=1024, max_frames=4096,
                            reserve=0, hugepages="off")
    with rx:
        node = numa.Topology().memory_nodes[0]
        assert rx.umem.bound and [p.node for p in rx.umem.pool.nodes] == [node]
        where = rx.umem.placement()[0]
        assert where["policy"] == "bind" and where["policy_nodes"] == [node]
        assert where["pages_by_node"] == {node: 1024 * 2048 // PAGE}, where
        # the kernel's own view, independent of xdprx's helpers
        with open("/proc/self/numa_maps") as f:
            line = next(x for x in f if "xdprx-umem" in x)
        assert f"bind:{node}" in line, line
        # a holder makes the pool grow: the new spare frames land on the node too
        c = rx.subscribe([BIG], ring_size=4096, quota=3000, spin=0)
        s = pair.popen("tx", send_cmd(BIG, n, seed=8, lo=500, hi=500, rate=20000))
        pump_until(rx, [s], until=lambda: rx.counters[0] >= n)
        assert rx.umem.pool.total > 1024, rx.umem.pool.gauges()
        where = rx.umem.placement()[0]
        assert set(where["pages_by_node"]) == {node}
        assert where["pages_by_node"][node] == rx.umem.pool.total * 2048 // PAGE
        got = []
        while len(got) < n:
            b = c.recv(timeout=2)
            assert len(b), f"only {len(got)} of {n}"
            got += [bytes(p.payload) for p in b]
        assert got == payloads(8, n, 500, 500)
        c.close()
        assert rx.stats()["numa"]["pools"][0]["memory"]["policy"] == "bind"


def test_numa_node_without_memory_is_refused(pair):
    with pair.inside("rx"):
        with pytest.raises(ConfigError, match="NUMA node 7 has no memory here"):
            xdprx.Receiver(pair.rx_if, [BIG], numa=7)
        with pytest.raises(ConfigError, match="unknown --numa"):
            xdprx.Receiver(pair.rx_if, [BIG], numa="closest")
    r = subprocess.run(XDPRX + ["run", "xrx-none", "--group", BIG, "--numa", "7"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "error:" in r.stderr
