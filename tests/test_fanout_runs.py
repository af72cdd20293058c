"""The receive burst's fan-out, in memory: the real bulk.rx_burst over rings
in plain memory (a few lines of Python stand in for the kernel), with
interleaved subscriptions, a consumer at its quota, and every frame's
reference count checked. Pure logic beside the veth tests (test_fanout.py),
for the cases a live sender cannot order at will: fan-out works per run of
one subscription's packets, consumer by consumer (bulk.fan_out)."""
from __future__ import annotations

import numpy as np
import pytest

from xdprx import bulk, cring as CR
from xdprx import fanout as F
from xdprx.groups import group_table, parse_groups
from xdprx.hub import Hub
from xdprx.testing import eth, ipv4, udp
from xdprx.umem import FramePool, HELD

FRAMES, FSIZE, SHIFT = 256, 2048, 11
U32 = 0xFFFFFFFF
GROUPS = ["239.1.2.3:5000", "239.1.2.4:5000"]     # subscriptions 0 (A) and 1 (B)


class Loop:
    """One queue's rings, pool and consumer table, and a kernel in Python."""

    def __init__(self) -> None:
        self.pool = FramePool(FRAMES, FSIZE)
        self.umem = np.zeros(self.pool.span * FSIZE, np.uint8)
        z32, z64 = (lambda: np.zeros(1, np.uint32)), (lambda: np.zeros(2, np.int64))
        self.fill = (z32(), z32(), np.zeros(FRAMES, np.uint64), z64())
        self.rx = (z32(), z32(), np.zeros((FRAMES, 2), np.uint64), z64())
        self.flags = z32()
        self.g_addr, self.g_port = group_table(parse_groups(GROUPS))
        self.g_seq = np.zeros(len(GROUPS), np.uint64)
        self.out = [np.zeros(64, t) for t in (np.uint64, np.uint64, np.uint32, np.uint64,
                                              np.int32)]
        self.stats = np.zeros(bulk.N_STATS, np.int64)
        self.hub = Hub(len(GROUPS), FRAMES, FRAMES)

    def burst(self, self_ref: int = 0) -> int:
        f, r, h = self.fill, self.rx, self.hub
        return int(bulk.rx_burst(r[0], r[1], r[2], r[3], f[0], f[1], f[2], f[3], self.flags,
                                 self.pool.t, self.umem, self.g_addr, self.g_port, self.g_seq,
                                 *self.out, self.stats, h.ctab, h.sub_start, h.sub_cons, h.wake,
                                 h.hub, 1, 1, self_ref))

    def kernel_rx(self, frames: list[bytes]) -> None:
        """What the kernel does in copy mode: FILL address -> packet at +256 -> RX."""
        fprod, fcons, fslots, _ = self.fill
        rprod, _, rslots, _ = self.rx
        fc, rp = int(fcons[0]), int(rprod[0])
        assert (int(fprod[0]) - fc) & U32 >= len(frames), "FILL has room for the test's burst"
        for i, pkt in enumerate(frames):
            a = int(fslots[(fc + i) % FRAMES]) + 256
            self.umem[a:a + len(pkt)] = np.frombuffer(pkt, np.uint8)
            rslots[(rp + i) % FRAMES] = (a, len(pkt))
        fcons[0] = (fc + len(frames)) & U32
        rprod[0] = (rp + len(frames)) & U32

    def in_fill(self) -> int:
        return (int(self.fill[0][0]) - int(self.fill[1][0])) & U32


def packet(group: int, seq: int) -> bytes:
    dst = GROUPS[group].split(":")[0]
    return eth(ipv4(dst, udp(4000, 5000, bytes([group, seq]) * 20)), 0x0800)


def read_all(loop: Loop, entry) -> list[tuple[int, int, bytes]]:
    """(subscription, seq, payload) of every entry in the consumer's ring,
    read with the consumer's own kernel, then released."""
    v = CR.RingViews(entry.ring._ring, entry.ring._ctl, writable_ring=False)
    local = np.zeros(2, np.int64)
    local[1] = int(v.cons[0])
    out = [np.zeros(64, t) for t in (np.uint64, np.uint64, np.uint32, np.uint64, np.int32)]
    counts = np.zeros(5, np.int64)
    next_seq = np.full(len(GROUPS), CR.NO_SEQ, np.uint64)
    n = int(CR.cring_read(v.prod, v.slots, local, loop.umem, SHIFT, 64, next_seq, counts, *out))
    got = [(int(out[4][i]), int(out[3][i]),
            loop.umem[int(out[1][i]):int(out[1][i]) + int(out[2][i])].tobytes())
           for i in range(int(counts[4]))]
    CR.cring_release(v.cons, local, n)
    assert counts[1] == 0 and counts[3] == 0, "no gap inside a ring, no bad slot"
    return got


def test_interleaved_runs_go_to_each_subscriber_in_order_and_a_full_consumer_misses_the_tail():
    loop = Loop()
    h = loop.hub
    only_a = h.add([0], 64, 4, FSIZE)           # quota 4: it misses what comes after
    both = h.add([0, 1], 64, None, FSIZE)
    only_b = h.add([1], 64, None, FSIZE)
    try:
        assert loop.burst() == 0 and loop.in_fill() > 0      # the first burst fills FILL
        # runs: A A | B | A | B B | A A A
        order = [0, 0, 1, 0, 1, 1, 0, 0, 0]
        seqs = {0: 0, 1: 0}
        frames = []
        for g in order:
            frames.append(packet(g, seqs[g]))
            seqs[g] += 1
        loop.kernel_rx(frames)
        assert loop.burst() == 0                   # self_ref 0: nothing for the caller
        st = loop.stats
        assert st[bulk.S_PACKETS] == 9
        assert st[bulk.S_DELIVERIES] == 4 + 9 + 3
        assert st[bulk.S_CONSUMER_DROPS] == 2 and st[bulk.S_UNDELIVERED] == 0

        # the live count of each frame: one per holder, and the descriptor says the same
        refs = loop.pool.t[6]
        state = loop.pool.t[4]
        want = {(0, s): 2 for s in range(4)} | {(0, 4): 1, (0, 5): 1} | \
            {(1, s): 2 for s in range(3)}
        descs = F.descriptors(loop.umem, FSIZE)
        held = np.flatnonzero(state == HELD)
        assert len(held) == 9
        for f in held:
            d = descs[f]
            key = (int(d["sub_id"]), int(d["seq"]))
            assert refs[f] == want.pop(key) == d["refcnt"], key
        assert not want

        # every consumer: its subscriptions' packets, in order, every byte
        a = read_all(loop, only_a)
        assert [(g, s) for g, s, _ in a] == [(0, s) for s in range(4)]
        b = read_all(loop, both)
        assert [(g, s) for g, s, _ in b] == [(g, s) for g, s in
                                             zip(order, [0, 1, 0, 2, 1, 2, 3, 4, 5])]
        c = read_all(loop, only_b)
        assert [(g, s) for g, s, _ in c] == [(1, s) for s in range(3)]
        for g, s, payload in a + b + c:
            assert payload == bytes([g, s]) * 20
        # the quota's misses, counted for that consumer alone, with the seq after the last
        assert [int(x) for x in CR.RingViews(only_a.ring._ring, only_a.ring._ctl,
                                             False).counters] == [4, 2, 6]
        for e in (both, only_b):
            assert int(CR.RingViews(e.ring._ring, e.ring._ctl, False).counters[1]) == 0

        # released: the next burst reaps every reference, every frame is back
        loop.burst()
        assert st[bulk.S_VIOLATIONS] == 0
        assert (state != HELD).all()
        loop.pool.check(loop.in_fill())
    finally:
        h.close()


@pytest.mark.parametrize("self_ref", [0, 1])
def test_a_packet_nobody_subscribed_to_goes_straight_back_and_the_callers_batch_counts(self_ref):
    loop = Loop()
    h = loop.hub
    e = h.add([1], 64, None, FSIZE)                 # B only: A has no consumer
    try:
        loop.burst()
        loop.kernel_rx([packet(0, 0), packet(1, 0), packet(0, 1)])
        n = loop.burst(self_ref)
        st = loop.stats
        assert n == (3 if self_ref else 0)
        assert st[bulk.S_DELIVERIES] == 1
        # without the caller's batch, A's two packets had no holder at all
        assert st[bulk.S_UNDELIVERED] == (0 if self_ref else 2)
        assert int((loop.pool.t[4] == HELD).sum()) == (3 if self_ref else 1)
        if self_ref:
            assert [int(x) for x in loop.out[3][:3]] == [0, 0, 1]
            assert [int(x) for x in loop.out[4][:3]] == [0, 1, 0]
            bulk.release(loop.out[0], 3, loop.pool.t, st)
        assert [(g, s) for g, s, _ in read_all(loop, e)] == [(1, 0)]
        loop.burst()
        assert st[bulk.S_VIOLATIONS] == 0 and (loop.pool.t[4] != HELD).all()
        loop.pool.check(loop.in_fill())
    finally:
        h.close()
