"""The capped on-demand pool on a real veth (umem.py): a consumer that holds
every frame it gets makes the pool grow, chunk by chunk, exactly to the cap;
resident memory follows; at the cap the kernel drops at the FILL ring, counted;
when the consumer lets go, reception continues and the memory goes back."""
import time

import pytest

import xdprx
from xdprx.testing import payloads, send_cmd

from helpers import xdp_attached

GROUP = "239.1.2.3:5000"
FS, RING, CAP, CHUNK = 2048, 1024, 4096, 512


def pump_until(rx, cond, timeout=30.0, each=None):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        rx.pump(timeout=0.01)
        if each:
            each()
    return cond()


def test_holding_consumer_grows_the_pool_to_the_cap_and_no_further(pair):
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], mode="native", frames=RING, max_frames=CAP,
                            chunk=CHUNK, reserve=0, trim_after=0.3, hugepages="off")
    with rx:
        holder = rx.subscribe(ring_size=8192, quota=CAP, batch_size=512, spin=0)
        u = rx.umem
        assert u.resident() == RING * FS, "only the ring frames are committed at start"

        # 600 packets fit in the ring frames: no growth, no extra memory
        s = pair.popen("tx", send_cmd(GROUP, 600, seed=1, rate=20000))
        assert pump_until(rx, lambda: rx.counters[0] == 600)
        assert s.wait(timeout=30) == 0
        assert u.pool.total == RING and u.resident() == RING * FS

        # 4,400 more, never released: the pool grows in chunks, memory with it
        samples = []
        s = pair.popen("tx", send_cmd(GROUP, 4400, seed=2, rate=20000))
        pump_until(rx, lambda: s.poll() is not None, timeout=60,
                   each=lambda: samples.append((u.pool.total, u.resident())))
        assert s.wait(timeout=30) == 0
        pump_until(rx, lambda: False, timeout=0.3)
        st = rx.stats()
        f, xs = st["frames"], st["xsk"]
        assert all(res == total * FS for total, res in samples), "resident tracks the pool"
        assert sorted({t for t, _ in samples} | {RING, CAP}) == list(range(RING, CAP + 1, CHUNK))
        assert f["total"] == CAP and f["grows"] == (CAP - RING) // CHUNK
        assert u.resident() == CAP * FS
        # every frame is held; everything beyond is dropped by the kernel, counted
        assert f["held"] == CAP and st["receiver"]["packets"] == CAP
        assert xs["rx_dropped"] == 5000 - CAP, xs
        assert xs["rx_fill_ring_empty_descs"] >= 5000 - CAP
        assert st["xdp"]["redirected"] == 5000
        assert st["receiver"]["fill_empty"] >= 1 and f["at_cap"] >= 1
        assert f["spilled"] == CAP - RING
        assert holder.stats()["dropped"] == 0          # the consumer lost nothing itself

        # the consumer lets go, reading every byte of what it held
        expected = payloads(1, 600) + payloads(2, 4400)
        got = 0
        while got < CAP:
            b = holder.recv(timeout=1)
            assert len(b)
            for p in b:
                assert p.seq == got and bytes(p.payload) == expected[got], f"packet {got}"
                got += 1
        holder.recv(timeout=0)                          # releases the last batch
        assert pump_until(rx, lambda: u.pool.total == RING, timeout=5), "memory given back"
        assert u.resident() == RING * FS and rx.stats()["frames"]["trims"] >= 1

        # reception continues, no restart
        s = pair.popen("tx", send_cmd(GROUP, 1000, seed=3, rate=20000))
        more = payloads(3, 1000)
        got = 0
        deadline = time.monotonic() + 30
        while got < 1000 and time.monotonic() < deadline:
            rx.pump(timeout=0.01)
            for p in holder.recv(timeout=0):
                assert p.seq == CAP + got and bytes(p.payload) == more[got]
                got += 1
        assert s.wait(timeout=30) == 0 and got == 1000
        assert rx.stats()["xsk"]["rx_dropped"] == 5000 - CAP   # no new drops
        holder.close()
        rx.pump(timeout=0)
        fill = u.fill.occupancy()
        u.pool.check(fill)
        assert u.pool.census(fill)["held"] == 0


def test_default_reserve_drops_at_the_holder_not_at_the_fill_ring(pair):
    """With the default reserve, the holder is cut at its fair share at the
    cap and misses packets alone (counted per consumer); the kernel drops none."""
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], mode="native", frames=RING, max_frames=2048,
                            hugepages="off")
    with rx:
        holder = rx.subscribe(ring_size=4096, spin=0)
        s = pair.popen("tx", send_cmd(GROUP, 3000, seed=4, rate=20000))
        pump_until(rx, lambda: s.poll() is not None, timeout=60)
        assert s.wait(timeout=30) == 0
        pump_until(rx, lambda: False, timeout=0.3)
        st = rx.stats()
        assert st["frames"]["total"] == 2048 and st["drops"] == 0
        assert st["receiver"]["packets"] == 3000
        hs = holder.stats()
        assert hs["delivered"] == 2048 - RING // 4 and hs["delivered"] + hs["dropped"] == 3000


def test_consumers_lagging_together_lose_nothing_while_the_pool_can_grow(pair):
    """Four consumers of one feed hold the same frames. While the pool can
    still grow they are not cut at a quarter of it each (the fair share is
    for a pool at its cap): every packet reaches all four, the pool grows,
    and every frame comes back when they have read."""
    n = 2500
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], mode="native", frames=RING, max_frames=CAP,
                            chunk=CHUNK, hugepages="off")
    with rx:
        cons = [rx.subscribe(ring_size=4096, batch_size=512) for _ in range(4)]
        s = pair.popen("tx", send_cmd(GROUP, n, seed=5, rate=20000))
        pump_until(rx, lambda: s.poll() is not None, timeout=60)
        assert s.wait(timeout=30) == 0
        assert pump_until(rx, lambda: rx.counters[0] == n, timeout=5)
        st = rx.stats()
        assert st["drops"] == 0 and st["receiver"]["consumer_drops"] == 0
        # the old fair share, (CAP - reserve) / 4 = 960 frames each, would have cut all four
        assert st["frames"]["spilled"] > 0 and st["frames"]["total"] > RING, st["frames"]
        expected = payloads(5, n)
        for c in cons:
            got: list[bytes] = []
            while len(got) < n:
                b = c.recv(timeout=1)
                assert len(b), f"consumer stopped at {len(got)}"
                got += [bytes(p.payload) for p in b]
            assert got == expected and c.stats()["dropped"] == 0
            c.recv(timeout=0)                    # lets go of the last batch
        rx.pump(timeout=0)
        fill = rx.umem.fill.occupancy()
        rx.umem.pool.check(fill)
        assert rx.umem.pool.census(fill)["held"] == 0


@pytest.mark.parametrize("kw,msg", [
    (dict(max_frames=1000), "power of two"), (dict(max_frames=512), ">= --frames"),
    (dict(reserve=RING), "reserve"), (dict(hugepages="maybe"), "hugepages"),
    (dict(refill_min=0), "refill batch")])
def test_pool_options_are_checked(pair, kw, msg):
    with pair.inside("rx"):
        with pytest.raises(xdprx.ConfigError, match=msg):
            xdprx.Receiver(pair.rx_if, [GROUP], frames=RING, **kw)
    assert not xdp_attached(pair)


def _meminfo(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


@pytest.fixture
def hugepages():
    """Reserve a few hugetlb pages for one test, then restore the setting."""
    path = "/proc/sys/vm/nr_hugepages"
    before = int(open(path).read())
    with open(path, "w") as f:
        f.write(str(before + 4))
    if _meminfo("HugePages_Free") < 4:
        open(path, "w").write(str(before))
        pytest.skip("the kernel could not allocate 4 hugetlb pages")
    yield
    with open(path, "w") as f:
        f.write(str(before))


def test_umem_on_hugetlb_pages(pair, hugepages):
    free0 = _meminfo("HugePages_Free")
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [GROUP], mode="native", frames=RING, max_frames=2048,
                            hugepages="on")
    with rx:
        assert rx.umem.pages.startswith("hugetlb 2 MiB")
        # the ring frames (2 MiB) are one pinned huge page; the cap is reserved
        assert _meminfo("HugePages_Free") == free0 - 1 and _meminfo("HugePages_Rsvd") >= 1
        s = pair.popen("tx", send_cmd(GROUP, 300, seed=5, rate=20000))
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 300 and time.monotonic() < deadline:
            got += [bytes(p.payload) for p in rx.recv(timeout=0.1)]
        assert s.wait(timeout=30) == 0 and got == payloads(5, 300)
    del rx, got
    deadline = time.monotonic() + 3   # the kernel unpins a closed UMEM from a work queue
    while _meminfo("HugePages_Free") != free0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _meminfo("HugePages_Free") == free0   # all given back


def test_hugepages_fallback_is_explained(pair):
    if _meminfo("HugePages_Free") >= 2:
        pytest.skip("hugetlb pages are free here")
    with pair.inside("rx"):
        with pytest.raises(xdprx.ConfigError, match="vm.nr_hugepages"):
            xdprx.Receiver(pair.rx_if, [GROUP], frames=RING, hugepages="on")
        with xdprx.Receiver(pair.rx_if, [GROUP], frames=RING, hugepages="auto") as rx:
            assert "no hugetlb" in rx.umem.pages and "vm.nr_hugepages=" in rx.umem.pages
            assert "hugetlb" not in rx.describe().split(" on ")[1].split(";")[0]
