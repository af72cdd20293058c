"""The receive loop's batch kernels: one Numba call per batch, no Python per packet.

    rx_burst   refill FILL from the pool (bulk) -> peek RX -> for each frame:
               parse, write the headroom descriptor, hand out a reference
               -> release the RX slots (one store)
    release    frames the application let go of -> pool (bulk)

Frames move only in batches (seed 002, bulk alloc/free): the FILL ring is
topped up only when at least `refill_min` slots are free, so the kernel-shared
producer index is written once per batch, not once per frame.
"""
from __future__ import annotations

import numpy as np

from . import fanout as F
from .jit import kernel
from .packet import parse_udp
from .ring import cons_peek, cons_release, prod_free, prod_submit, needs_wakeup
from .umem import HELD, KERNEL, FREE, pool_get, pool_put

# stats slots (int64), read by Receiver.stats()
S_PACKETS, S_BYTES, S_REJECTED, S_VIOLATIONS, S_FILLED, S_BATCHES, S_WAKEUPS, S_RELEASED = range(8)
STAT_NAMES = ("packets", "bytes", "rejected", "violations", "filled", "batches",
              "wakeups", "released")
N_STATS = 16


@kernel
def rx_burst(rx_prod, rx_cons, rx_slots, rx_local,
             fill_prod, fill_cons, fill_slots, fill_local, fill_flags,
             free, top, state, shift,
             umem, g_addr, g_port, g_seq,
             out_frame, out_off, out_len, out_seq, out_sub,
             stats, now_ns, refill_min):
    """Receive up to len(out_frame) packets. Returns how many were delivered
    into out_*; rejected frames go straight back to the pool."""
    # 1. top up the FILL ring in bulk
    fsize = fill_slots.shape[0]
    want = prod_free(fill_cons, fill_local, fsize, fsize)
    if want >= refill_min or want == fsize:
        k = pool_get(free, top, state, fill_slots, fill_local[0], want, KERNEL, shift)
        if k:
            prod_submit(fill_prod, fill_local, k)
            stats[S_FILLED] += k
    if needs_wakeup(fill_flags):
        stats[S_WAKEUPS] += 1

    # 2. peek RX
    rsize = rx_slots.shape[0]
    n = cons_peek(rx_prod, rx_local, out_frame.shape[0])
    if n == 0:
        return 0
    u32 = umem.view(np.uint32)
    u64 = umem.view(np.uint64)
    idx = rx_local[1]
    j = 0
    nbytes = 0
    for i in range(n):
        s = (idx + i) & (rsize - 1)
        addr = rx_slots[s, 0]
        ln = rx_slots[s, 1] & 0xFFFFFFFF
        f = addr >> shift
        base = f << shift
        if f >= state.shape[0] or state[f] != KERNEL:
            stats[S_VIOLATIONS] += 1  # not ours to take: leave it alone
            continue
        state[f] = HELD
        start = addr - base
        off, plen, sub = parse_udp(umem, addr, addr + ln, g_addr, g_port)
        if sub < 0 or start < F.DESC_SIZE:
            stats[S_REJECTED] += 1
            state[f] = FREE
            free[top[0]] = base
            top[0] += 1
            continue
        # 3. the headroom-scratch descriptor, written once
        w = base >> 2
        u32[w + F.W_HEAD] = F.DESC_MAGIC | (F.DESC_VERSION << 16)
        u32[w + F.W_REFCNT] = 1
        u32[w + F.W_PKT_OFF] = start
        u32[w + F.W_PKT_LEN] = ln
        u32[w + F.W_PAYLOAD_OFF] = off - base
        u32[w + F.W_PAYLOAD_LEN] = plen
        u32[w + F.W_SUB] = sub
        q = base >> 3
        seq = g_seq[sub]
        g_seq[sub] = seq + 1
        u64[q + F.Q_SEQ] = seq
        u64[q + F.Q_TS] = now_ns
        out_frame[j] = base
        out_off[j] = off
        out_len[j] = plen
        out_seq[j] = seq
        out_sub[j] = sub
        nbytes += plen
        j += 1
    # 4. one release store for the whole batch
    cons_release(rx_cons, rx_local, n)
    stats[S_PACKETS] += j
    stats[S_BYTES] += nbytes
    stats[S_BATCHES] += 1
    return j


@kernel
def release(frames, n, free, top, state, shift, stats):
    """Return @n HELD frames to the pool in one bulk put."""
    bad = pool_put(free, top, state, frames, n, shift)
    stats[S_RELEASED] += n - bad
    stats[S_VIOLATIONS] += bad
    return bad

