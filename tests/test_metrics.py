"""`xdprx run --metrics [ADDR:]PORT`: Prometheus metrics scraped over HTTP
from inside the daemon's network namespace, checked against `xdprx stats --json`."""
import json
import socket
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import xdprx
from xdprx.service import cli, metrics
from xdprx.service.control import request
from xdprx.errors import ConfigError
from xdprx.testing import XDPRX, DaemonProcess, send_cmd

from helpers import xdp_attached

G1, G2 = "239.5.5.1:5501", "239.5.5.2:5502"
PORT = 9464


def samples(text: str) -> dict:
    """{(name, frozenset(labels.items())): value} of an exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(s: dict, metric: str, **labels) -> float:
    return s[(metric, frozenset(labels.items()))]


@pytest.mark.parametrize("spec,want", [
    ("9464", ("0.0.0.0", 9464)), (":9100", ("0.0.0.0", 9100)),
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)),
    ("198.18.0.1:1", ("198.18.0.1", 1)),
])
def test_parse_listen(spec, want):
    assert metrics.parse_listen(spec) == want


@pytest.mark.parametrize("spec,words", [
    ("", ["is not [ADDR:]PORT", "9464"]), ("http", ["is not [ADDR:]PORT"]),
    ("127.0.0.1", ["is not [ADDR:]PORT"]), ("127.0.0.1:", ["is not [ADDR:]PORT"]),
    ("9464:abc", ["is not [ADDR:]PORT"]), ("70000", ["is not [ADDR:]PORT"]),
    ("0", ["is not [ADDR:]PORT"]), ("::1:9464", ["is not [ADDR:]PORT", "[::1]:9464"]),
    ("[]:9464", ["is not [ADDR:]PORT"]),
    ("localhost:9464", ["'localhost' is not an IP address", "127.0.0.1:9464"]),
])
def test_bad_metrics_address_one_line_exit_2(spec, words, capsys):
    with pytest.raises(ConfigError) as e:
        metrics.parse_listen(spec)
    for w in words:
        assert w in str(e.value)
    # before anything touches the system: no root, no interface needed
    assert cli.main(["run", "nosuchif0", "--group", G1, "--metrics", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"xdprx: error: {e.value}" and len(err.splitlines()) == 1


def test_metrics_in_the_config_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('group = ["239.5.5.1:5501"]\nmetrics = 9464\n')
    assert cli.parse_args(["run", "eth0", "--config", str(f)]).metrics == "9464"
    f.write_text('group = ["239.5.5.1:5501"]\nmetrics = "127.0.0.1:9100"\n')
    a = cli.parse_args(["run", "eth0", "--config", str(f), "--metrics", "9200"])
    assert a.metrics == "9200", "the command line wins"


FAKE = {
    "interface": "xrx0", "queue": 0, "mode": "native", "zerocopy": False,
    "groups": [G1, G2], "group_packets": {G1: 7, G2: 3},
    "receiver": {"packets": 10, "bytes": 1000, "deliveries": 17, "eventfd_writes": 4,
                 "consumer_drops": 0, "returns_stop": 0, "returns_attention": 2,
                 "returns_tick": 5, "sleeps": 9, "something_new": 1},
    "xdp": {"seen": 12, "redirected": 10, "passed": 2},
    "xsk": {"rx_dropped": 0, "rx_ring_full": 0},
    "drops": 0,
    "frames": {"free": 10, "fill": 20, "kernel": 30, "held": 4, "total": 64, "cap": 128,
               "ring": 64, "grows": 0, "resident_bytes": 131072, "frame_size": 2048},
    "consumers": [{"id": 0, "groups": [G1, G2], "delivered": 10, "dropped": 0, "held": 4,
                   "quota": 2048, "ring": 2048, "wakeups": 3, "node": -1, "pid": 42,
                   "name": "a"},
                  {"id": 1, "groups": [G1], "delivered": 7, "dropped": 1, "held": 0,
                   "quota": 2048, "ring": 2048, "wakeups": 1, "node": 0}],
    "numa": {"refill_node": 0, "interface_node": -1, "switches": 0,
             "last_window_share": {0: 1.0}, "pools": [{"node": 0, "free": 10, "kernel": 50,
                                                        "held": 4}]},
}


def test_collector_names_and_types():
    calls = []
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.StatsCollector(lambda: calls.append(1) or FAKE))
    text = generate_latest(reg).decode()
    assert calls == [1], "one stats() per scrape"
    s = samples(text)
    assert value(s, "xdprx_rx_packets_total") == 10
    assert value(s, "xdprx_rx_bytes_total") == 1000
    assert value(s, "xdprx_deliveries_total") == 17
    assert value(s, "xdprx_eventfd_writes_total") == 4
    assert value(s, "xdprx_receiver_something_new_total") == 1
    assert value(s, "xdprx_loop_returns_total", reason="tick") == 5
    assert value(s, "xdprx_loop_returns_total", reason="attention") == 2
    assert value(s, "xdprx_xdp_redirected_total") == 10
    assert value(s, "xdprx_xsk_rx_dropped_total") == 0
    assert value(s, "xdprx_group_packets_total", group=G1) == 7
    for state, n in (("free", 10), ("fill", 20), ("kernel", 30), ("held", 4)):
        assert value(s, "xdprx_frames", state=state) == n
    assert value(s, "xdprx_pool_total_frames") == 64
    assert value(s, "xdprx_pool_grows_total") == 0
    assert value(s, "xdprx_consumers") == 2
    lab = dict(consumer="0", pid="42", name="a", group=f"{G1},{G2}")
    assert value(s, "xdprx_consumer_delivered_total", **lab) == 10
    assert value(s, "xdprx_consumer_wakeups_total", **lab) == 3
    assert value(s, "xdprx_consumer_held_frames", **lab) == 4
    lab = dict(consumer="1", pid="", name="", group=G1)    # in-process: no pid
    assert value(s, "xdprx_consumer_dropped_total", **lab) == 1
    assert value(s, "xdprx_numa_refill_node") == 0
    assert value(s, "xdprx_numa_pool_frames", node="0", state="kernel") == 50
    assert value(s, "xdprx_receiver_info", interface="xrx0", queue="0", queues="0",
                 mode="native", zerocopy="false") == 1
    types = {f.name.removesuffix("_total"): f.type for f in text_string_to_metric_families(text)}
    assert types["xdprx_rx_packets"] == "counter" and types["xdprx_frames"] == "gauge"
    assert types["xdprx_consumer_delivered"] == "counter"


def test_collector_per_queue_series():
    """Several RX queues: each queue's packets, socket drops and frames under a
    `queue` label beside the totals."""
    per = [{"queue": q, "receiver": {"packets": 5 + q}, "drops": q,
            "frames": {"free": 1, "fill": 2, "kernel": 3, "held": q}} for q in (0, 1)]
    st = dict(FAKE, queues=[0, 1], per_queue=per)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(metrics.StatsCollector(lambda: st))
    s = samples(generate_latest(reg).decode())
    assert value(s, "xdprx_queue_packets_total", queue="1") == 6
    assert value(s, "xdprx_queue_socket_drops_total", queue="1") == 1
    assert value(s, "xdprx_queue_frames", queue="1", state="held") == 1
    assert value(s, "xdprx_queue_frames", queue="0", state="fill") == 2
    assert value(s, "xdprx_receiver_info", interface="xrx0", queue="0", queues="0,1",
                 mode="native", zerocopy="false") == 1


def scrape(pair, port=PORT) -> str:
    """GET /metrics from inside the rx namespace (the daemon listens there)."""
    r = pair.run("rx", ["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}/metrics"])
    assert r.returncode == 0, r.stderr
    return r.stdout


def cli_stats(ctl) -> dict:
    r = subprocess.run(XDPRX + ["stats", "--control", ctl, "--json"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_scrape_matches_stats_json(pair, tmp_path):
    n = 2000
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, [G1, G2], "--metrics", f"127.0.0.1:{PORT}") as d:
        sub = xdprx.Subscriber(ctl, [G1], name="metrics-test")
        try:
            assert pair.run("tx", send_cmd(G1, n, seed=51, rate=20000)).returncode == 0
            assert pair.run("tx", send_cmd(G2, n // 2, seed=52, rate=20000)).returncode == 0
            deadline = time.monotonic() + 20
            while sub.counts[0] < n and time.monotonic() < deadline:
                sub.recv(timeout=0.2)
            assert sub.counts[0] == n
            sub.recv(timeout=0.05).release()      # hold nothing
            prev, deadline = None, time.monotonic() + 10
            while time.monotonic() < deadline:      # the loop reaped it all: frames settle
                f = request(ctl, {"cmd": "stats"})["stats"]["frames"]
                if f["held"] == 0 and f == prev:
                    break
                prev = f
                time.sleep(0.25)
            st = cli_stats(ctl)
            s = samples(scrape(pair))
            st2 = cli_stats(ctl)
        finally:
            sub.close()
        r = st["receiver"]
        assert r["packets"] == n + n // 2 == st2["receiver"]["packets"]
        # counters that stand still once traffic stopped: equal to stats --json
        assert value(s, "xdprx_rx_packets_total") == r["packets"]
        assert value(s, "xdprx_rx_bytes_total") == r["bytes"]
        assert value(s, "xdprx_deliveries_total") == r["deliveries"] == n
        assert value(s, "xdprx_undelivered_total") == r["undelivered"] == n // 2
        assert value(s, "xdprx_eventfd_writes_total") == r["eventfd_writes"]
        assert value(s, "xdprx_consumer_drops_total") == r["consumer_drops"] == 0
        # the XDP program also sees the namespace's own IGMP/MLD/ND packets,
        # which pass at any time: between the two stats readings, not equal
        for k in ("redirected", "seen", "passed", "malformed"):
            assert st["xdp"][k] <= value(s, f"xdprx_xdp_{k}_total") <= st2["xdp"][k], k
        assert value(s, "xdprx_xdp_redirected_total") == n + n // 2
        for k, v in st["xsk"].items():
            assert value(s, f"xdprx_xsk_{k}_total") == v, k
        assert value(s, "xdprx_group_packets_total", group=G1) == n
        assert value(s, "xdprx_group_packets_total", group=G2) == n // 2
        for state in ("free", "fill", "kernel", "held"):
            assert value(s, "xdprx_frames", state=state) == st["frames"][state], state
        assert sum(value(s, "xdprx_frames", state=k) for k in ("free", "fill", "kernel", "held")) \
            == value(s, "xdprx_pool_total_frames") == st["frames"]["total"]
        c = st["consumers"][0]
        lab = dict(consumer=str(c["id"]), pid=str(c["pid"]), name="metrics-test", group=G1)
        assert value(s, "xdprx_consumer_delivered_total", **lab) == c["delivered"] == n
        assert value(s, "xdprx_consumer_dropped_total", **lab) == c["dropped"] == 0
        assert value(s, "xdprx_consumer_wakeups_total", **lab) == c["wakeups"]
        assert value(s, "xdprx_consumers") == 1
        # between the two stats calls: a scrape is one more stats() (one attention return)
        for reason in ("stop", "attention", "tick"):
            lo, hi = r[f"returns_{reason}"], st2["receiver"][f"returns_{reason}"]
            assert lo <= value(s, "xdprx_loop_returns_total", reason=reason) <= hi, reason
        assert st2["receiver"]["returns_attention"] >= r["returns_attention"] + 2
        if "refill_node" in st["numa"]:
            assert value(s, "xdprx_numa_refill_node") == st["numa"]["refill_node"]
        assert ("process_cpu_seconds_total", frozenset()) in s
        assert d.stop() == 0
    assert f"metrics at http://127.0.0.1:{PORT}/metrics" in d.out
    # the server went with the daemon
    r = pair.run("rx", ["curl", "-s", "--max-time", "2", f"http://127.0.0.1:{PORT}/metrics"])
    assert r.returncode != 0


def test_port_in_use_one_line_exit_2(pair):
    holder = pair.popen("rx", [sys.executable, "-c",
                               "import socket, time; s = socket.socket(); "
                               f"s.bind(('127.0.0.1', {PORT})); s.listen(); print('ok', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        r = pair.run("rx", XDPRX + ["run", pair.rx_if, "--group", G1, "--control",
                                    "/run/xdprx-test-metrics.sock", "--metrics",
                                    f"127.0.0.1:{PORT}"], timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"xdprx: error: --metrics 127.0.0.1:{PORT}: cannot listen")
    assert "EADDRINUSE" in err and "free port" in err
    assert not xdp_attached(pair)
