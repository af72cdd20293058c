"""The receive loop's batch kernels: one Numba call per batch, no Python per packet.

    rx_burst   reap consumer releases (bulk) -> refill FILL from the pool (bulk)
               -> peek RX -> for each frame: parse, write the headroom
               descriptor -> for each run of one subscription's packets:
               push them to each subscribed consumer in turn (fan-out), set
               their reference counts -> release the RX slots (one store)
               -> publish each consumer ring (one store each)
    release    the application's batch lets go of its frames (bulk)
    reclaim    a consumer that left: every frame it held drops its reference

Frames move only in batches (seed 002, bulk alloc/free): the FILL ring is
topped up only when at least `refill_min` slots are free, and every
kernel-shared or consumer-shared index is written once per batch, not once
per frame.

Reference counts live in the pool's dense `refs` array (umem.py) and only
this thread writes them, so they need no atomics, even with consumers in other
processes: consumers publish a release cursor, and the reap step turns cursor
movement into decrements (FCLONE_SCRATCH's one clone per listener becomes one
ring slot per consumer).
"""
from __future__ import annotations

import numpy as np

from . import cring as CR
from . import fanout as F
from .atomics import fence_seq_cst, load_acquire, load_relaxed, store_release
from .jit import inline, kernel, prefetch, raw
from .packet import parse_udp
from .ring import U32, cons_peek, cons_release, prod_free, prod_submit, needs_wakeup
from .umem import (HELD, KERNEL, P_CAP, P_HELD_RING, P_RING, P_SPILLED, X_NODES, X_SHIFT,
                   active_meta, fill_get, fill_get_foreign, frame_put, hold, ring_end,
                   short_of_ring_frames, spare_get)

# stats slots (int64), read by Receiver.stats()
(S_PACKETS, S_BYTES, S_REJECTED, S_VIOLATIONS, S_FILLED, S_BATCHES, S_WAKEUPS, S_RELEASED,
 S_DELIVERIES, S_CONSUMER_DROPS, S_UNDELIVERED, S_FILL_EMPTY, S_OWN_BYTES,
 S_EFD_WRITES, S_SLEEPS, S_RET_STOP, S_RET_ATTN, S_RET_TICK, S_KICKS, S_HANDLER_CALLS,
 S_WAKES_SHARED, S_NAPS) = range(22)
STAT_NAMES = ("packets", "bytes", "rejected", "violations", "filled", "batches",
              "wakeups", "released", "deliveries", "consumer_drops", "undelivered",
              "fill_empty", "own_bytes",
              # the compiled loop (loop.py): eventfd writes to consumers, sleeps in
              # epoll, returns to Python by reason, need_wakeup kicks, run() handler calls
              "eventfd_writes", "sleeps", "returns_stop", "returns_attention",
              "returns_tick", "kicks", "handler_calls",
              # wake-ups covered by another ring's eventfd write (one sleep set)
              "wakes_shared",
              # moderated sleeps of the receive loop (rx_usecs)
              "naps")
N_STATS = 24

# consumer table: one int64 row per consumer, private to the receive thread
(C_ACTIVE, C_RING, C_CTL, C_SIZE, C_QUOTA, C_PROD, C_PUB, C_REAPED, C_DELIVERED,
 C_DROPPED, C_BAD, C_WAKES, C_EFD, C_WAKE_BATCH, C_WAKE_NS, C_PEND_NS, C_WOKEN,
 C_DROP_END, C_OWNER, C_WGROUP) = range(20)
# C_EFD: the consumer's eventfd; C_WAKE_BATCH / C_WAKE_NS: wake it when this
# many entries are queued or this long after the first one (interrupt
# moderation); C_PEND_NS: when entries first waited for a sleeping consumer (0: none);
# C_WOKEN: the consumer's `waiting` word (its sleep number) when we last woke it;
# C_DROP_END: 1 + the sequence number of the last packet dropped for it (0: none),
# so that a consumer can count drops after the last packet it read (a gap
# shows only once a later packet arrives; one that leaves sees none)
# C_OWNER: the consumer's process as the kernel told us (SO_PEERCRED pid; 0 in
# this process); C_WGROUP: the sleep set it announced at this flush (loop.py)
NCOL = 20
# hub parameters and gauges (int64)
H_NSLOTS, H_NACTIVE, H_RESERVE, H_NWAKE = range(4)
N_HUB = 8


# ---- reference counting -----------------------------------------------------
@inline
def unref(base, pool):
    """Drop one reference to the frame at @base; the last one returns it to
    the pool. Returns 1 for a frame with no reference (a bug, counted). The
    frame's state is checked only when the last reference goes: a load of
    the count, not of the state too, per delivery in the reap step (2.7 ->
    1.8 ns per delivery in memory at N=64)."""
    refs = pool[6]
    f = np.int64(base >> pool[5][X_SHIFT])
    if f >= refs.shape[0] or refs[f] == 0:
        return 1
    r = refs[f] - 1
    refs[f] = r
    if r == 0:
        if pool[4][f] != HELD:
            return 1
        frame_put(pool, f)
    return 0


@inline
def unref_range(ctab, c, upto, pool):
    """Drop consumer @c's references from its reap cursor up to @upto."""
    size = ctab[c, C_SIZE]
    slots = raw(ctab[c, C_RING] + CR.OFF_SLOTS, size, np.uint64)
    start = ctab[c, C_REAPED]
    d = (upto - start) & U32
    bad = 0
    for i in range(d):
        bad += unref(slots[(start + i) & (size - 1)], pool)
    ctab[c, C_REAPED] = upto & U32
    return bad


@inline
def reap(ctab, pool, hub):
    """Turn every consumer's release cursor into reference drops (bulk)."""
    bad = 0
    for c in range(hub[H_NSLOTS]):
        if ctab[c, C_ACTIVE] == 0:
            continue
        # acquire: the consumer's reads of those frames happened before
        cons = np.int64(load_acquire(raw(ctab[c, C_CTL] + CR.CTL_CONS, 1, np.uint32)))
        moved = (cons - ctab[c, C_REAPED]) & U32
        if moved == 0:
            continue
        if moved > ((ctab[c, C_PROD] - ctab[c, C_REAPED]) & U32):
            ctab[c, C_BAD] += 1  # a cursor past what it was given: not believed
            continue
        bad += unref_range(ctab, c, cons, pool)
    return bad


# ---- fan-out ------------------------------------------------------------------
@inline
def settle(frames, i0, i1, full, u32, pool, shift):
    """After fan_out: each frame of frames[i0:i1] counts its references
    (those the partial takers added to its count, plus @full) in the pool's
    dense array; the descriptor keeps the count taken at delivery (for tools:
    its line is still hot). A frame nobody took goes straight back. Returns
    how many did."""
    refs_of = pool[6]
    back = 0
    for i in range(i0, i1):
        base = frames[i]
        f = np.int64(base >> shift)
        refs = refs_of[f] + full
        u32[(base >> 2) + F.W_REFCNT] = refs
        refs_of[f] = max(refs, 1)
        if refs == 0:
            back += 1
            unref(base, pool)
    return back


@inline
def fan_out(ctab, sub_start, sub_cons, sub, frames, i0, i1, last_seq, hub, meta,
            refs_of, shift):
    """Offer frames[i0:i1], consecutive packets of subscription @sub (the last
    one's sequence number @last_seq), to each of its consumers, one consumer
    at a time: its ring position stays in a register and its slot stores are
    one stream (packet by packet, each store found another consumer's row and
    ring: 11 of the loop's 15 ns per delivery in memory at N=64). A consumer
    at its quota (or, when the pool runs low, above its fair share) misses
    the tail of the run alone (its ring frees nothing before the next reap).
    Returns (consumers that took the whole run, references taken, misses);
    the references of consumers that took part of it are already in @refs_of."""
    m = i1 - i0
    full = 0
    taken = 0
    missed = 0
    # pressure: so many ring frames are held (the pool is at its cap, or
    # cannot grow) that the FILL ring could run dry; only then the fair share
    fair = np.int64(1) << 62
    if meta[P_HELD_RING] > meta[P_RING] - hub[H_RESERVE]:
        fair = (meta[P_CAP] - hub[H_RESERVE]) // max(hub[H_NACTIVE], 1)
    for k in range(sub_start[sub], sub_start[sub + 1]):
        c = sub_cons[k]
        p = ctab[c, C_PROD]
        held = (p - ctab[c, C_REAPED]) & U32
        take = min(max(min(ctab[c, C_QUOTA], fair) - held, 0), m)
        size = ctab[c, C_SIZE]
        slots = raw(ctab[c, C_RING] + CR.OFF_SLOTS, size, np.uint64)
        mask = size - 1
        for i in range(take):
            slots[(p + i) & mask] = frames[i0 + i]
        ctab[c, C_PROD] = (p + take) & U32
        ctab[c, C_DELIVERED] += take
        taken += take
        if take == m:
            full += 1
            continue
        for i in range(take):
            refs_of[np.int64(frames[i0 + i] >> shift)] += 1
        ctab[c, C_DROPPED] += m - take
        ctab[c, C_DROP_END] = last_seq + 1
        missed += m - take
    return full, taken, missed


@inline
def waiting_of(ctab, c):
    """Consumer @c's `waiting` word: 0 awake, else the number of its current
    sleep (cring.arm)."""
    return np.int64(load_acquire(raw(ctab[c, C_CTL] + CR.CTL_WAITING, 1, np.uint32)))


@inline
def group_of(ctab, c):
    """The sleep set consumer @c announced with its last sleep (cring.arm;
    0: it sleeps alone). A consumer's hint: it only ever merges wake-ups of
    rings of the same process (C_OWNER), so a wrong one costs only its own."""
    return np.int64(load_relaxed(raw(ctab[c, C_CTL] + CR.CTL_GROUP, 1, np.uint32)))


@inline
def wake_check(ctab, c, wake, nw, now, w):
    """Consumer @c sleeps (sleep number @w) with entries queued: wake it
    (append it to @wake) once `wake_batch` are queued or `wake_ns` after the
    first, whichever comes first; once per sleep. Returns the new length of
    the wake list."""
    if w == ctab[c, C_WOKEN] or nw >= wake.shape[0]:
        ctab[c, C_PEND_NS] = 0      # already signalled for this sleep
        return nw
    queued = (ctab[c, C_PUB] - np.int64(load_relaxed(
        raw(ctab[c, C_CTL] + CR.CTL_CONS, 1, np.uint32)))) & U32
    if queued == 0:
        ctab[c, C_PEND_NS] = 0
        return nw
    if ctab[c, C_PEND_NS] == 0:
        ctab[c, C_PEND_NS] = now
    if queued >= ctab[c, C_WAKE_BATCH] or now - ctab[c, C_PEND_NS] >= ctab[c, C_WAKE_NS]:
        wake[nw] = c
        ctab[c, C_WAKES] += 1
        ctab[c, C_PEND_NS] = 0
        ctab[c, C_WOKEN] = w
        return nw + 1
    return nw


@inline
def publish(ctab, hub, wake, now):
    """Make this batch's references visible, one release store per consumer,
    then list the sleeping consumers that are due a wake-up (loop.py writes
    their eventfds)."""
    any_new = False
    for c in range(hub[H_NSLOTS]):
        if ctab[c, C_ACTIVE] == 0:
            continue
        counters = raw(ctab[c, C_RING] + CR.OFF_COUNTERS, 3, np.uint64)
        counters[0] = ctab[c, C_DELIVERED]
        counters[1] = ctab[c, C_DROPPED]
        counters[2] = ctab[c, C_DROP_END]
        if ctab[c, C_PROD] != ctab[c, C_PUB]:
            # release: the slots and the frames' descriptors are visible first
            store_release(raw(ctab[c, C_RING] + CR.OFF_PROD, 1, np.uint32), ctab[c, C_PROD])
            ctab[c, C_PUB] = ctab[c, C_PROD]
            any_new = True
    nw = hub[H_NWAKE]
    if any_new:
        # the prod stores above must be visible before we read `waiting`; the
        # consumer does the mirror image (store waiting, fence, load prod), so
        # one side sees the other: a consumer we do not see waiting saw our prod
        fence_seq_cst()
        for c in range(hub[H_NSLOTS]):
            if ctab[c, C_ACTIVE] != 0 and ctab[c, C_PUB] != ctab[c, C_REAPED]:
                w = waiting_of(ctab, c)
                if w != 0:
                    nw = wake_check(ctab, c, wake, nw, now, w)
    hub[H_NWAKE] = nw


@inline
def wake_due(ctab, hub, wake, now):
    """Sleeping consumers whose moderation time ran out with no new packet
    since: onto the wake list. Returns when the next one is due (ns, 1 << 62
    when none is pending)."""
    nxt = np.int64(1) << 62
    nw = hub[H_NWAKE]
    for c in range(hub[H_NSLOTS]):
        if ctab[c, C_ACTIVE] == 0 or ctab[c, C_PEND_NS] == 0:
            continue
        w = waiting_of(ctab, c)
        if w == 0:
            ctab[c, C_PEND_NS] = 0      # it woke on its own (a timeout)
            continue
        nw = wake_check(ctab, c, wake, nw, now, w)
        if ctab[c, C_PEND_NS] != 0:
            nxt = min(nxt, ctab[c, C_PEND_NS] + ctab[c, C_WAKE_NS])
    hub[H_NWAKE] = nw
    return nxt


# ---- the receive burst ---------------------------------------------------------
# Prefetch distances (packets): the RX ring's slots and the packets' lines were
# last written by the CPU that ran the kernel's receive work, so each is a miss
# here; asked for this far ahead they arrive while earlier packets are worked on
PF_PKT = 4      # packet header lines and headroom descriptor
PF_SLOT = 16    # RX ring slots (four to a cache line)


@inline
def prefetch_packet(rx_slots, s, umem, shift):
    """The lines packet slot @s's work will touch: its headers (and the next
    line, where a handler's first payload bytes end), and its frame's headroom,
    about to be written."""
    addr = rx_slots[s, 0]
    prefetch(umem, addr, 0)
    prefetch(umem, addr + np.uint64(64), 0)
    prefetch(umem, (addr >> shift) << shift, 1)


@inline
def refill(pool, fill_prod, fill_cons, fill_slots, fill_local, refill_min, stats):
    """Top up the FILL ring in bulk: only when at least @refill_min slots are
    free (or the ring is empty), with one release store."""
    fsize = fill_slots.shape[0]
    want = prod_free(fill_cons, fill_local, fsize, fsize)
    k = 0
    if want >= refill_min or want == fsize:
        k = fill_get(pool, fill_slots, fill_local[0], want)
        low = (fsize >> 2) - (fsize - want + k)
        if low > 0 and pool[5][X_NODES] > 1:
            # the refill node's pool is out of frames and FILL is below a
            # quarter: top it up to a quarter from the other nodes' pools
            k += fill_get_foreign(pool, fill_slots, fill_local[0] + k, low)
        if k:
            prod_submit(fill_prod, fill_local, k)
            stats[S_FILLED] += k
    if want == fsize and k == 0:
        stats[S_FILL_EMPTY] += 1   # the kernel has no frame to receive into


@inline
def spill(pool, umem, addr, ln, base):
    """Copy the packet at @addr into a spare frame, at the same offset, and
    give its ring frame straight back (it is HELD, with no reference yet).
    Returns the spare frame's base, or -1 at the cap (nothing moved)."""
    sb = spare_get(pool, umem)
    if sb < 0:
        return sb
    start = addr - base
    dst = sb + start
    for i in range(ln):          # a loop, not a slice copy: no allocation
        umem[dst + i] = umem[addr + i]
    frame_put(pool, np.int64(base >> pool[5][X_SHIFT]))
    active_meta(pool)[P_SPILLED] += 1
    return sb


@kernel
def rx_burst(rx_prod, rx_cons, rx_slots, rx_local,
             fill_prod, fill_cons, fill_slots, fill_local, fill_flags,
             pool, umem, g_addr, g_port, g_seq,
             out_frame, out_off, out_len, out_seq, out_sub,
             stats, ctab, sub_start, sub_cons, wake, hub,
             now_ns, refill_min, self_ref):
    """Receive up to len(out_frame) packets, listed in out_* (scratch
    without @self_ref). With @self_ref the caller's batch takes one reference
    per frame; consumers get theirs through their rings. Returns the number
    of packets in the caller's batch (0 without @self_ref)."""
    u32 = umem.view(np.uint32)
    u64 = umem.view(np.uint64)
    state, refs_of = pool[4], pool[6]
    shift = pool[5][X_SHIFT]
    rend = ring_end(pool)
    hub[H_NWAKE] = 0
    # 1. consumer releases back to the pool, so they can refill FILL right away
    stats[S_VIOLATIONS] += reap(ctab, pool, hub)
    # 2. top up the FILL ring in bulk
    refill(pool, fill_prod, fill_cons, fill_slots, fill_local, refill_min, stats)
    if needs_wakeup(fill_flags):
        stats[S_WAKEUPS] += 1

    # 3. peek RX
    rsize = rx_slots.shape[0]
    n = cons_peek(rx_prod, rx_local, out_frame.shape[0])
    if n == 0:
        return 0
    idx = rx_local[1]
    mask = rsize - 1
    for i in range(min(n, PF_PKT)):
        prefetch_packet(rx_slots, (idx + i) & mask, umem, shift)
    for i in range(PF_PKT, min(n, PF_SLOT)):
        prefetch(rx_slots[(idx + i) & mask], 0, 0)
    j = 0
    nbytes = 0
    for i in range(n):
        s = (idx + i) & mask
        if i + PF_SLOT < n:
            prefetch(rx_slots[(idx + i + PF_SLOT) & mask], 0, 0)
        if i + PF_PKT < n:
            prefetch_packet(rx_slots, (idx + i + PF_PKT) & mask, umem, shift)
        addr = rx_slots[s, 0]
        ln = rx_slots[s, 1] & 0xFFFFFFFF
        f = np.int64(addr >> shift)
        base = np.uint64(f) << shift
        if f >= rend or state[f] != KERNEL:
            stats[S_VIOLATIONS] += 1  # not ours to take: leave it alone
            continue
        hold(pool, f)
        start = addr - base
        off, plen, sub = parse_udp(umem, addr, addr + ln, g_addr, g_port)
        if sub < 0 or start < F.DESC_SIZE:
            stats[S_REJECTED] += 1
            refs_of[f] = 1
            unref(base, pool)
            continue
        # consumers hold so many ring frames that FILL could run short: this
        # packet moves to a spare frame (the pool grows up to its cap)
        if short_of_ring_frames(pool, f):
            sb = spill(pool, umem, addr, ln, base)
            if sb >= 0:
                off = off - base + np.uint64(sb)
                base = np.uint64(sb)
        # 4. the headroom-scratch descriptor, written once
        w = base >> 2
        u32[w + F.W_HEAD] = F.DESC_MAGIC | (F.DESC_VERSION << 16)
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
        # the batch's packets, in order: the caller's (with @self_ref) and the
        # fan-out's list; the live count starts with the caller's reference
        out_frame[j] = base
        out_off[j] = off
        out_len[j] = plen
        out_seq[j] = seq
        out_sub[j] = sub
        j += 1
        refs_of[np.int64(base >> shift)] = self_ref
        nbytes += plen
    stats[S_PACKETS] += j
    if self_ref:
        stats[S_OWN_BYTES] += nbytes
    # 5. fan-out, per run of one subscription's packets: one ring slot per
    # consumer and packet, then each frame's reference count
    meta = active_meta(pool)
    i0 = 0
    while i0 < j:
        sub = out_sub[i0]
        i1 = i0 + 1
        while i1 < j and out_sub[i1] == sub:
            i1 += 1
        full, taken, missed = fan_out(ctab, sub_start, sub_cons, sub, out_frame, i0, i1,
                                      out_seq[i1 - 1], hub, meta, refs_of, shift)
        stats[S_DELIVERIES] += taken
        stats[S_CONSUMER_DROPS] += missed
        stats[S_UNDELIVERED] += settle(out_frame, i0, i1, full, u32, pool, shift)
        i0 = i1
    # 6. one release store for the whole batch, one per consumer ring
    cons_release(rx_cons, rx_local, n)
    publish(ctab, hub, wake, now_ns)
    stats[S_BYTES] += nbytes
    stats[S_BATCHES] += 1
    return j if self_ref else 0


@kernel
def release(frames, n, pool, stats):
    """The application's batch drops its reference to @n frames (bulk)."""
    bad = 0
    for i in range(n):
        bad += unref(frames[i], pool)
    stats[S_RELEASED] += n - bad
    stats[S_VIOLATIONS] += bad
    return bad


@kernel
def reclaim(ctab, c, pool, stats, hub):
    """Consumer @c is gone: drop every reference it still holds, deactivate it.
    Returns how many references were dropped."""
    if ctab[c, C_ACTIVE] == 0:
        return 0
    held = (ctab[c, C_PROD] - ctab[c, C_REAPED]) & U32
    stats[S_VIOLATIONS] += unref_range(ctab, c, ctab[c, C_PROD], pool)
    ctab[c, C_ACTIVE] = 0
    hub[H_NACTIVE] -= 1
    return held


@kernel
def collect_feedback(ctab, hub, last, cpu_node, pool_of_node, per):
    """Credit the bytes each consumer read since the last call (from the
    feedback in its CTL page) to the pool of the node it runs on: per[pool]
    += bytes. The node is the topology's for the consumer's cpu (@cpu_node),
    else the node the consumer reported; nodes without a pool get nothing.
    @last: bytes seen per slot at the last call (0 for a new consumer)."""
    for c in range(hub[H_NSLOTS]):
        if ctab[c, C_ACTIVE] == 0:
            last[c] = 0
            continue
        where = raw(ctab[c, C_CTL] + CR.CTL_FEEDBACK, 2, np.uint32)
        b = np.int64(raw(ctab[c, C_CTL] + CR.CTL_FEEDBACK + 8, 1, np.uint64)[0])
        d = b - last[c] if b >= last[c] else b
        last[c] = b
        if d == 0:
            continue
        node = np.int64(-1)
        if where[0] != CR.NO_CPU and where[0] < cpu_node.shape[0]:
            node = cpu_node[where[0]]
        if node < 0 and where[1] != CR.NO_CPU:
            node = np.int64(where[1])
        if 0 <= node < pool_of_node.shape[0] and pool_of_node[node] >= 0:
            per[pool_of_node[node]] += d
    return 0
