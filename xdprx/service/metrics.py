"""`xdprx run --metrics [ADDR:]PORT`: the daemon's counters for Prometheus.

One custom collector (prometheus-client): every scrape calls the daemon's
`stats()` once, which is handed to the receive loop's thread between two
compiled calls (the same snapshot `xdprx stats --json` shows), and turns it
into metric families. Nothing is counted per packet for it: the numbers are
the loop's own counters, the XDP program's per-CPU counters and the
socket's XDP_STATISTICS, read when Prometheus asks.

    m = MetricsServer("127.0.0.1:9464", rx.stats)   # serves /metrics on a thread
    m.close()
"""
from __future__ import annotations

import errno as E
import ipaddress
from typing import Callable, Iterator

from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import ConfigError

DEFAULT_ADDR = "0.0.0.0"
P = "xdprx_"

# the receive loop's counters (bulk.STAT_NAMES) -> (metric, help); returns_* are
# one family with a reason label (loop_returns), anything new gets a generic name
RECEIVER = {
    "packets": ("rx_packets", "Packets taken from the AF_XDP RX ring (subscribed flows)"),
    "bytes": ("rx_bytes", "UDP payload bytes of the packets received"),
    "batches": ("rx_batches", "Receive bursts that took at least one packet"),
    "rejected": ("rx_rejected", "Frames refused after parsing (no subscribed flow, short headroom)"),
    "violations": ("frame_violations", "Frame state violations refused (a corrupt descriptor or cursor)"),
    "filled": ("fill_frames", "Frames put into the FILL ring"),
    "fill_empty": ("fill_empty", "Refills that found no free frame while the FILL ring was empty"),
    "wakeups": ("fill_need_wakeup", "Bursts that found need_wakeup set on the FILL ring"),
    "kicks": ("rx_kicks", "need_wakeup kicks sent to the driver (recvfrom)"),
    "released": ("app_released_frames", "Frames the application's own batches let go of"),
    "own_bytes": ("app_bytes", "Payload bytes of the batches the application itself took"),
    "deliveries": ("deliveries", "Frame references pushed into consumer rings (all consumers)"),
    "consumer_drops": ("consumer_drops", "Packets missed by consumers at their quota (all consumers)"),
    "undelivered": ("undelivered", "Packets nobody took (no consumer, no application batch)"),
    "eventfd_writes": ("eventfd_writes", "Eventfd writes waking sleeping consumers"),
    "sleeps": ("loop_sleeps", "Times the receive loop slept in epoll"),
    "wakes_shared": ("wakes_shared", "Consumer wake-ups covered by another ring's eventfd write (one sleep set)"),
    "naps": ("loop_naps", "Moderated sleeps of the receive loop (rx_usecs)"),
    "handler_calls": ("handler_calls", "run(handler) calls of the receive loop"),
}
RETURNS = ("stop", "attention", "tick")
# pool gauges that only grow (counters); the others are gauges
POOL_COUNTERS = {"grows": "Times the pool grew by a chunk",
                 "trims": "Times free chunks were given back (MADV_REMOVE)",
                 "spilled": "Packets copied into a spare frame (ring frames held)",
                 "at_cap": "Packets that found the pool at its cap",
                 "foreign_fills": "FILL entries taken from another NUMA node's pool"}
POOL_GAUGES = {"ring": "Frames registered with the kernel at start (--frames)",
               "total": "Frames the pool has now (ring + grown)",
               "cap": "Frames the pool may grow to (--max-frames)",
               "chunk": "Frames added per growth",
               "cached": "Frames in the per-queue cache",
               "spare_free": "Spare (grown) frames free",
               "held_ring": "Ring frames held by consumers or the application"}
CONSUMER = {"delivered": "Packets pushed into this consumer's ring",
            "dropped": "Packets this consumer missed at its quota",
            "wakeups": "Eventfd wake-ups of this consumer",
            "read_bytes": "Payload bytes this consumer reports read",
            "read_packets": "Packets this consumer reports read",
            "bad_cursor": "Release cursors from this consumer that were refused"}


def parse_listen(spec: str) -> tuple[str, int]:
    """'[ADDR:]PORT' -> (addr, port): '9464', ':9464', '127.0.0.1:9464',
    '[::1]:9464'. ConfigError (one line) otherwise."""
    bad = ConfigError(f"--metrics {spec!r} is not [ADDR:]PORT",
                      remedy="pass e.g. 9464, 127.0.0.1:9464 or [::1]:9464")
    host, _, port = str(spec).rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise bad
    elif ":" in host:
        raise bad                         # an IPv6 address needs its brackets
    if not host:
        return DEFAULT_ADDR, int(port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--metrics {spec!r}: {host!r} is not an IP address",
                          remedy="listen on an address of this host, e.g. 127.0.0.1:9464") from None
    return host, int(port)


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(P + name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, labels=list(labels))


class StatsCollector(Collector):
    """Metric families from one stats() snapshot per scrape."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self._stats()
        yield from self._receiver(st)
        yield from self._kernel(st)
        yield from self._frames(st)
        yield from self._consumers(st.get("consumers", []))
        yield from self._numa(st.get("numa", {}))
        yield from self._queues(st.get("per_queue", []))

    def _receiver(self, st: dict) -> Iterator[Metric]:
        info = InfoMetricFamily(P + "receiver", "The interface queue this daemon receives on")
        info.add_metric([], {"interface": str(st["interface"]), "queue": str(st["queue"]),
                             "queues": ",".join(map(str, st.get("queues", [st["queue"]]))),
                             "mode": str(st["mode"]),
                             "zerocopy": "true" if st["zerocopy"] else "false"})
        yield info
        rc = st["receiver"]
        for key, value in rc.items():
            if key.startswith("returns_"):
                continue
            name, doc = RECEIVER.get(key, (f"receiver_{key}", f"Receive loop counter {key}"))
            c = _counter(name, doc)
            c.add_metric([], value)
            yield c
        ret = _counter("loop_returns", "Returns of the compiled receive loop to Python, by reason",
                       ("reason",))
        for reason in RETURNS:
            ret.add_metric([reason], rc.get(f"returns_{reason}", 0))
        yield ret
        gp = st.get("group_packets")
        if gp is not None:
            g = _counter("group_packets", "Packets received per subscribed group (its sequence)",
                         ("group",))
            for group, n in gp.items():
                g.add_metric([group], n)
            yield g

    def _queues(self, per: list[dict]) -> Iterator[Metric]:
        """Per RX queue (several queues only; the totals are the unlabelled series)."""
        if not per:
            return
        pk = _counter("queue_packets", "Packets received per RX queue", ("queue",))
        dr = _counter("queue_socket_drops", "AF_XDP socket drops per RX queue "
                      "(rx_dropped + rx_ring_full)", ("queue",))
        fr = _gauge("queue_frames", "Frames of each RX queue's pool by state", ("queue", "state"))
        for q in per:
            lv = str(q["queue"])
            pk.add_metric([lv], q["receiver"]["packets"])
            dr.add_metric([lv], q["drops"])
            for state in ("free", "fill", "kernel", "held"):
                fr.add_metric([lv, state], q["frames"].get(state, 0))
        yield pk
        yield dr
        yield fr

    def _kernel(self, st: dict) -> Iterator[Metric]:
        for key, value in st["xdp"].items():
            c = _counter(f"xdp_{key}", f"XDP program: packets {key} (per-CPU counters summed)")
            c.add_metric([], value)
            yield c
        for key, value in st["xsk"].items():
            c = _counter(f"xsk_{key}", f"AF_XDP socket XDP_STATISTICS {key}")
            c.add_metric([], value)
            yield c

    def _frames(self, st: dict) -> Iterator[Metric]:
        f = st["frames"]
        g = _gauge("frames", "UMEM frames by state (free + fill + kernel + held = total)",
                   ("state",))
        for state in ("free", "fill", "kernel", "held"):
            g.add_metric([state], f.get(state, 0))
        yield g
        for key, doc in POOL_GAUGES.items():
            if key in f:
                m = _gauge(f"pool_{key}_frames", doc)
                m.add_metric([], f[key])
                yield m
        for key, doc in POOL_COUNTERS.items():
            if key in f:
                m = _counter(f"pool_{key}", doc)
                m.add_metric([], f[key])
                yield m
        for key, name, doc in (("resident_bytes", "umem_resident_bytes",
                                "UMEM bytes with memory behind them"),
                               ("frame_size", "frame_size_bytes", "UMEM frame size")):
            if key in f:
                m = _gauge(name, doc)
                m.add_metric([], f[key])
                yield m

    def _consumers(self, consumers: list[dict]) -> Iterator[Metric]:
        labels = ("consumer", "pid", "name", "group")
        counters = {k: _counter(f"consumer_{k}", doc, labels) for k, doc in CONSUMER.items()}
        gauges = {"held": _gauge("consumer_held_frames", "Frames this consumer holds", labels),
                  "quota": _gauge("consumer_quota_frames", "Frames this consumer may hold", labels),
                  "ring": _gauge("consumer_ring_slots", "Slots of this consumer's ring", labels),
                  "node": _gauge("consumer_numa_node", "NUMA node this consumer reports "
                                 "running on (-1: not reported yet)", labels)}
        n = _gauge("consumers", "Consumers subscribed")
        n.add_metric([], len(consumers))
        yield n
        for c in consumers:
            lv = [str(c["id"]), str(c.get("pid", "")), str(c.get("name", "")),
                  ",".join(c.get("groups", []))]
            for k, fam in counters.items():
                fam.add_metric(lv, c.get(k, 0))
            for k, fam in gauges.items():
                fam.add_metric(lv, c.get(k, -1))
        yield from counters.values()
        yield from gauges.values()

    def _numa(self, n: dict) -> Iterator[Metric]:
        if "refill_node" not in n:
            return
        g = _gauge("numa_refill_node", "NUMA node whose frame pool refills the FILL ring")
        g.add_metric([], n["refill_node"])
        yield g
        g = _gauge("numa_interface_node", "NUMA node of the interface (-1: unknown)")
        g.add_metric([], n.get("interface_node", -1))
        yield g
        c = _counter("numa_switches", "Times the refill node moved")
        c.add_metric([], n.get("switches", 0))
        yield c
        share = _gauge("numa_window_share", "Share of the last window's bytes read per node",
                       ("node",))
        for node, x in n.get("last_window_share", {}).items():
            share.add_metric([str(node)], x)
        yield share
        pools = _gauge("numa_pool_frames", "Frames of each node's pool by state",
                       ("node", "state"))
        for p in n.get("pools", []):
            for state in ("free", "kernel", "held"):
                pools.add_metric([str(p["node"]), state], p.get(state, 0))
        yield pools


class MetricsServer:
    """Serve StatsCollector(@stats) at http://ADDR:PORT/metrics on a thread
    of its own (prometheus-client's), plus the process collector."""

    def __init__(self, spec: str, stats: Callable[[], dict]) -> None:
        self.addr, self.port = parse_listen(spec)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(stats))
        ProcessCollector(registry=self.registry)
        try:
            self._server, self._thread = start_http_server(self.port, self.addr,
                                                           registry=self.registry)
        except OSError as e:
            raise ConfigError(f"--metrics {spec}: cannot listen on {self.addr} port {self.port}",
                              e.errno or E.EADDRNOTAVAIL,
                              "choose a free port and an address of this host "
                              "(in a network namespace: one of its addresses)") from None

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
