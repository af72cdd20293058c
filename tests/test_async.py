"""asyncio consumers: `await c.recv_async()` and `async for batch in c`, the
eventfd awaited on the running event loop (real veth, real AF_XDP, real
daemon): every packet, every payload byte, no lost wake-up."""
import asyncio
import hashlib
import time

import pytest

import xdprx
from xdprx.service.subscribe import Digest
from xdprx.testing import DaemonProcess, payloads, send_cmd

G1, G2 = "239.6.6.1:6001", "239.6.6.2:6002"


def sha(seed, n, lo=1, hi=1472):
    return hashlib.sha256(b"".join(payloads(seed, n, lo, hi))).hexdigest()


async def read_iter(c, want: int, digest: Digest) -> int:
    """`async for` until @want packets."""
    async for batch in c:
        for pkt in batch:
            digest.add(str(pkt.group), pkt.seq, pkt.payload)
        if c.counts[0] >= want:
            break
    return int(c.counts[0])


async def read_await(c, want: int, digest: Digest) -> int:
    """`await recv_async(timeout=...)` until @want packets."""
    while c.counts[0] < want and not c.daemon_gone:
        for pkt in await c.recv_async(timeout=0.5):
            digest.add(str(pkt.group), pkt.seq, pkt.payload)
    return int(c.counts[0])


async def send(pair, group, n, seed, rate):
    p = await asyncio.create_subprocess_exec(*pair.nsenter("tx"),
                                             *send_cmd(group, n, seed=seed, rate=rate))
    return await p.wait()


def check(digest: Digest, group: str, n: int, seed: int) -> None:
    got = digest.summary()[group]
    assert (got["received"], got["first_seq"], got["last_seq"], got["gaps"]) == \
        (n, 0, n - 1, 0), got
    assert got["sha256"] == sha(seed, n), f"{group}: payload bytes"


def test_two_async_consumers_of_an_in_process_receiver(pair):
    """Receiver.start() runs the compiled loop on its thread; two in-process
    consumers are read by two tasks of one event loop, sleeping on their
    eventfds between batches (moderated wake-ups: every 32 packets or 200 us)."""
    n = 3000
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [G1, G2])
    with rx:
        rx.start()
        a = rx.subscribe([G1], wake_batch=32, wake_usecs=200)
        b = rx.subscribe(wake_batch=32, wake_usecs=200)       # both groups
        da, db = Digest(), Digest()

        async def main():
            ta = asyncio.create_task(read_iter(a, n, da))
            tb = asyncio.create_task(read_await(b, 2 * n, db))
            await asyncio.sleep(0.05)                          # both asleep first
            codes = await asyncio.gather(send(pair, G1, n, 41, 20000),
                                         send(pair, G2, n, 42, 20000))
            assert codes == [0, 0]
            return await asyncio.wait_for(asyncio.gather(ta, tb), 60)

        assert asyncio.run(main()) == [n, 2 * n]
        check(da, G1, n, 41)
        check(db, G1, n, 41)
        check(db, G2, n, 42)
        assert G2 not in da.summary()
        st = rx.stats()
        assert st["receiver"]["packets"] == 2 * n and st["drops"] == 0
        assert st["receiver"]["deliveries"] == 3 * n and st["receiver"]["consumer_drops"] == 0
        woke = {c["id"]: c["wakeups"] for c in st["consumers"]}
        assert woke[a.id] >= 1 and woke[b.id] >= 1, "they slept and were woken"
        assert st["receiver"]["eventfd_writes"] == sum(woke.values())
        # idle: recv_async(timeout) returns an empty batch after about the timeout
        async def idle():
            t0 = time.monotonic()
            got = await a.recv_async(timeout=0.2)
            return len(got), time.monotonic() - t0
        k, dt = asyncio.run(idle())
        assert k == 0 and 0.15 < dt < 2.0
        a.close()
        b.close()


def test_two_async_subscribers_of_a_daemon_and_daemon_gone(pair, tmp_path):
    """Two Subscribers (the daemon's consumers in this process) in one event
    loop; when the daemon stops, `async for` ends and daemon_gone is set."""
    n = 3000
    ctl = str(tmp_path / "x.sock")
    with DaemonProcess(pair, ctl, [G1]) as d:
        s1 = xdprx.Subscriber(ctl, G1, name="async-iter")
        s2 = xdprx.Subscriber(ctl, G1, name="async-await", wake_batch=16, wake_usecs=100)
        d1, d2 = Digest(), Digest()

        async def main():
            t1 = asyncio.create_task(read_iter(s1, n, d1))
            t2 = asyncio.create_task(read_await(s2, n, d2))
            await asyncio.sleep(0.05)
            assert await send(pair, G1, n, 43, 20000) == 0
            counts = await asyncio.wait_for(asyncio.gather(t1, t2), 60)
            # then the daemon goes away while s1 awaits in `async for`
            t3 = asyncio.create_task(read_iter(s1, n + 1, Digest()))
            await asyncio.sleep(0.1)
            assert not t3.done()
            assert await asyncio.to_thread(d.stop) == 0
            await asyncio.wait_for(t3, 10)
            return counts

        assert asyncio.run(main()) == [n, n]
        assert s1.daemon_gone
        check(d1, G1, n, 43)
        check(d2, G1, n, 43)
        for s in (s1, s2):
            st = s.stats()
            assert st["delivered"] == n and st["dropped"] == 0 and st["gaps"] == 0
        s1.close()
        s2.close()


def test_recv_async_is_one_waiter_per_consumer(pair):
    with pair.inside("rx"):
        rx = xdprx.Receiver(pair.rx_if, [G1])
    with rx:
        c = rx.subscribe()

        async def twice():
            t = asyncio.create_task(c.recv_async(timeout=1.0))
            await asyncio.sleep(0.05)
            with pytest.raises(xdprx.XdprxError, match="already awaited"):
                await c.recv_async(timeout=0.1)
            return len(await t)

        assert asyncio.run(twice()) == 0
        c.close()
