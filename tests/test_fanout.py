"""Zero-copy fan-out to in-process consumers, on a real veth with the real XDP
program and a real AF_XDP socket: exact delivery, isolation, flat memory."""
import time

import pytest

import xdprx
from xdprx import bulk
from xdprx.service.subscribe import Digest
from xdprx.testing import payloads, send_cmd

GROUPS = ["239.1.2.3:5000", "239.1.2.4:5001", "239.1.2.5:5002"]


def groups_of(i: int) -> list[str]:
    """Consumer i: one group, every fourth consumer two (mixed over 3 groups)."""
    gs = [GROUPS[i % 3]]
    if i % 4 == 3:
        gs.append(GROUPS[(i + 1) % 3])
    return gs


def receiver(pair, **kw) -> xdprx.Receiver:
    with pair.inside("rx"):
        return xdprx.Receiver(pair.rx_if, GROUPS, mode="native", **kw)


def run(rx, consumers, senders, done, timeout=60.0, digests=None):
    """Drive the receive loop and every consumer from this thread until
    done() or @timeout; digests[i] gets consumer i's packets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rx.pump(timeout=0.01)
        for i, c in enumerate(consumers):
            b = c.recv(timeout=0)
            if digests is not None:
                for p in b:
                    digests[i].add(str(p.group), p.seq, p.payload)
        if done() and all(s.poll() is not None for s in senders):
            break
    for s in senders:
        assert s.wait(timeout=30) == 0


def assert_pool_whole(rx):
    fill = rx.umem.fill.occupancy()
    rx.umem.pool.check(fill)
    c = rx.umem.pool.census(fill)
    assert c["held"] == 0 and c["free"] + c["fill"] + c["kernel"] == rx.umem.pool.total, c


@pytest.mark.parametrize("n_consumers", [1, 8, 64])
def test_every_consumer_gets_exactly_its_groups(pair, n_consumers):
    n = 1000  # per group; 3 groups
    rx = receiver(pair)
    with rx:
        consumers = [rx.subscribe(groups_of(i), spin=0) for i in range(n_consumers)]
        digests = [Digest() for _ in consumers]
        senders = [pair.popen("tx", send_cmd(g, n, seed=10 + k, rate=3000))
                   for k, g in enumerate(GROUPS)]
        want = {i: n * len(groups_of(i)) for i in range(n_consumers)}
        run(rx, consumers, senders, digests=digests,
            done=lambda: all(c.counts[0] >= want[i] for i, c in enumerate(consumers)))
        st = rx.stats()
        expected = {g: Digest() for g in GROUPS}
        for k, g in enumerate(GROUPS):
            for seq, p in enumerate(payloads(10 + k, n)):
                expected[g].add(g, seq, p)
        for i, (c, d) in enumerate(zip(consumers, digests)):
            got = d.summary()
            assert sorted(got) == sorted(groups_of(i)), f"consumer {i} got other groups"
            for g in groups_of(i):
                # every payload byte, in order, sequence 0..n-1 without a gap
                assert got[g] == expected[g].summary()[g], f"consumer {i} group {g}"
            cs = c.stats()
            # delivered + dropped for it == received for its groups; no drop when paced
            assert cs["delivered"] + cs["dropped"] == want[i] == cs["received"]
            assert cs["dropped"] == 0 and cs["gaps"] == 0 and cs["bad"] == 0
        assert st["drops"] == 0 and st["receiver"]["packets"] == 3 * n
        assert st["receiver"]["deliveries"] == sum(want.values())
        assert len(st["consumers"]) == n_consumers
        for c in consumers:
            c.close()
        rx.pump(timeout=0)
        assert_pool_whole(rx)
        assert rx.stats()["consumers"] == []


def test_frames_in_use_do_not_grow_with_consumers(pair):
    """A burst of K packets held by 1 or by 64 consumers occupies K frames:
    consumers share frames, each pays one ring slot per packet."""
    k = 400
    held = {}
    for n_consumers in (1, 64):
        rx = receiver(pair)
        with rx:
            consumers = [rx.subscribe([GROUPS[0]]) for _ in range(n_consumers)]
            s = pair.popen("tx", send_cmd(GROUPS[0], k, seed=5, rate=20000))
            deadline = time.monotonic() + 20
            while rx.counters[bulk.S_PACKETS] < k and time.monotonic() < deadline:
                rx.pump(timeout=0.05)
            assert s.wait(timeout=30) == 0
            held[n_consumers] = rx.umem.pool.census()["held"]
            assert rx.counters[bulk.S_DELIVERIES] == k * n_consumers
            for c in consumers:
                assert c.stats()["delivered"] == k
                assert len(c.recv(timeout=1)) > 0   # each can read them all...
                c.close()                           # ...and let go
            rx.pump(timeout=0)
            assert_pool_whole(rx)
    assert held[1] == held[64] == k, held


def test_stalled_consumer_loses_only_its_own_packets(pair):
    n = 2000
    rx = receiver(pair)
    with rx:
        reader = rx.subscribe([GROUPS[0]], spin=0)
        staller = rx.subscribe([GROUPS[0]], quota=256)
        d = Digest()
        s = pair.popen("tx", send_cmd(GROUPS[0], n, seed=7, rate=10000))
        run(rx, [reader], [s], digests=[d], done=lambda: reader.counts[0] >= n)
        assert d.summary()[GROUPS[0]]["received"] == n and reader.stats()["gaps"] == 0
        st = staller.stats()
        assert st["delivered"] == 256 and st["dropped"] == n - 256   # quota, counted for it alone
        assert st["drop_end"] == n              # the last packet sent (seq n - 1) was dropped for it
        assert reader.stats()["dropped"] == 0 and reader.stats()["drop_end"] == 0
        # the staller wakes up: it reads what it holds, then sees the gap
        got = 0
        while got < 256:
            b = staller.recv(timeout=1)
            assert len(b)
            got += len(b)
        s = pair.popen("tx", send_cmd(GROUPS[0], 10, seed=8, rate=1000))
        run(rx, [reader, staller], [s], done=lambda: staller.counts[0] >= 266)
        assert staller.stats()["gaps"] == n - 256
        assert staller.stats()["received"] + staller.stats()["dropped"] == n + 10
        reader.close()
        staller.close()
        rx.pump(timeout=0)
        assert_pool_whole(rx)
        assert rx.stats()["drops"] == 0


def test_stalled_consumers_never_starve_the_fill_ring(pair):
    """Two consumers that never read, each allowed half the pool, on
    different groups: together they could hold every frame. The fair-share
    rule stops them first, whichever sender starts first (one staller may
    take its whole quota before the other's traffic begins: the other then
    stops at its fair share); the reader and the kernel lose nothing."""
    n = 3000
    rx = receiver(pair, frames=4096)
    with rx:
        reader = rx.subscribe(GROUPS[:2], ring_size=4096, spin=0)
        stallers = [rx.subscribe([g], ring_size=4096, quota=2048) for g in GROUPS[:2]]
        senders = [pair.popen("tx", send_cmd(g, n, seed=20 + k, rate=6000))
                   for k, g in enumerate(GROUPS[:2])]
        run(rx, [reader], senders, done=lambda: reader.counts[0] >= 2 * n)
        st = rx.stats()
        assert reader.stats()["received"] == 2 * n and reader.stats()["dropped"] == 0
        assert st["drops"] == 0 and st["xsk"]["rx_fill_ring_empty_descs"] == 0, st["xsk"]
        for c in stallers:
            cs = c.stats()
            assert cs["dropped"] > 0 and cs["delivered"] + cs["dropped"] == n
        # the stallers (disjoint groups) stopped at the reserve, within a
        # batch; the reader's unread backlog is on top, and comes back
        by_id = {c["id"]: c["held"] for c in rx.stats()["consumers"]}
        stalled = sum(by_id[c.id] for c in stallers)
        held = rx.umem.pool.census()["held"]
        assert stalled <= rx.umem.frames - rx.hub.hub[bulk.H_RESERVE] + rx.batch_size, by_id
        assert held <= stalled + by_id[reader.id], (held, by_id)
        for c in stallers + [reader]:
            c.close()
        rx.pump(timeout=0)
        assert_pool_whole(rx)


def test_a_lying_release_cursor_is_not_believed(pair):
    rx = receiver(pair)
    with rx:
        c = rx.subscribe([GROUPS[0]])
        s = pair.popen("tx", send_cmd(GROUPS[0], 100, seed=1, rate=5000))
        deadline = time.monotonic() + 10
        while rx.counters[bulk.S_PACKETS] < 100 and time.monotonic() < deadline:
            rx.pump(timeout=0.05)
        assert s.wait(timeout=30) == 0
        held = rx.umem.pool.census()["held"]
        c._v.cons[0] = (int(c._v.prod[0]) + 1000) & 0xFFFFFFFF   # a cursor past what it got
        rx.pump(timeout=0)
        assert rx.stats()["consumers"][0]["bad_cursor"] >= 1           # counted, every burst
        assert rx.umem.pool.census()["held"] == held            # nothing freed on its word
        c._v.cons[0] = c._v.prod[0]                              # an honest release
        rx.pump(timeout=0)
        assert rx.umem.pool.census()["held"] == 0
        c._held = 0
        c.close()
        assert_pool_whole(rx)


def test_consumer_input_is_checked(pair):
    rx = receiver(pair)
    with rx:
        with pytest.raises(xdprx.ConfigError, match="not received here"):
            rx.subscribe(["239.9.9.9:9"])
        with pytest.raises(xdprx.ConfigError, match="power of two"):
            rx.subscribe(ring_size=1000)
        with pytest.raises(xdprx.ConfigError, match="quota"):
            rx.subscribe(ring_size=1024, quota=2048)
        c = rx.subscribe()  # default: every group
        assert rx.stats()["consumers"][0]["groups"] == GROUPS
        c.close()
        c.close()  # twice is harmless
    assert rx.stats_after_close()["frames"]["free"] == rx.umem.pool.total
    with pytest.raises(xdprx.XdprxError, match="closed"):
        rx.subscribe()
