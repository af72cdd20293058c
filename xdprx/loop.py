"""The data path, compiled end to end: the receive loop and the consume loop.

Everything per packet and per batch runs here, in nopython mode with the GIL
released; Python drivers (Receiver, the daemon, Consumer, Subscriber) set up
the arrays, call in, and handle what comes back. Read it top to bottom:

  receive side (one thread per socket; `rx_*`)
    rx_loop    burst -> reap -> publish -> wake -> [your handler] -> poll, until
               something needs Python: a stop flag, a control request (a
               consumer joins or leaves, stats), a tick (maintenance, NUMA,
               the caller's deadline). Each return is counted by reason.
    rx_recv    one batch for Receiver.recv()/pump(), waiting up to a timeout.
    rx_release / rx_reclaim   the application's batch / a departed consumer
               lets go of its frames.

      burst   bulk.rx_burst: reap consumer cursors, refill FILL, peek RX, write
              each frame's descriptor, push references, publish each ring
      wake    eventfd writes for sleeping consumers, moderated: a consumer is
              woken when `wake_batch` entries wait for it or `wake_ns` after
              the first one (bulk.publish / bulk.wake_due), once per sleep,
              and one write per sleep set (flush_wakes)
      poll    epoll on the socket and the attention eventfd, for at most the
              time to the next due wake-up or tick; FILL running low shortens it;
              while batches come faster than 2 x K_RX_NS, a nap of K_RX_NS on
              the attention eventfd alone instead (rx_nap: receive moderation)

  consume side (one per consumer; `cons_*`)
    cons_recv  release the last batch, read the next (one call from recv())
    cons_recv_many  the same over a consumer's rings of several receive queues
    cons_run   read -> your handler -> release, sleeping on the eventfd
               (arm: waiting = sleep number, fence, look again) when empty
    cons_run_many  the same for many consumers on one thread: one sleep,
               one wake-up for all of them
    cons_arm   the arm step alone, for recv_async() (asyncio awaits the eventfd)

Control words (int64 `ctl`, written by Python, read here with relaxed atomic
loads): K_STOP, K_ATTN (Python has work for the loop's thread), K_DEADLINE
(CLOCK_MONOTONIC ns to return by), K_NUMA_NEXT (batch count to return at),
K_SPIN_NS (busy-poll before sleeping; 0 by default: on a shared core a spin
steals the CPU from the work it waits for), K_REFILL_MIN, K_SELF_REF.

A handler is an njit function of HANDLER_SIG,
    handler(umem, offsets, lengths, seqs, groups, state) -> int64
umem is the whole UMEM, read-only; offsets/lengths/seqs/groups describe this
batch; state is the caller's int64 array. Return 0 to go on, anything else
to stop. It is called through a first-class function pointer, so the loop is
compiled (and cached) once for every handler.
"""
from __future__ import annotations

import numpy as np
from numba import types

from . import bulk, cring as CR
from . import context as X
from .atomics import fence_seq_cst, load_acquire, load_relaxed, store_relaxed
from .context import a1, a2, pool_of
from .jit import inline, kernel
from .kernel.libc import epoll_data, epoll_wait_ns, efd_write, getcpu, kick_rx, now_ns
from .ring import U32, cons_release, needs_wakeup

# ---- control words of a loop (ctl) ---------------------------------------------
(K_STOP, K_ATTN, K_DEADLINE, K_NUMA_NEXT, K_SPIN_NS, K_REFILL_MIN, K_SELF_REF, K_HELD,
 K_SHIFT, K_BATCH, K_RELEASES, K_GONE, K_RX_NS, K_LAST_BATCH) = range(14)
# K_HELD: entries/frames of the caller's current batch; consumers only:
# K_SHIFT frame size log2, K_BATCH max batch,
# K_RELEASES batches let go, K_GONE daemon gone; receive side: K_RX_NS
# receive moderation (rx_nap), K_LAST_BATCH when the loop last took a batch
# (kept here, not in a local: a return to Python for a tick must not make
# the next batch look like the first after a quiet spell)
N_CTL = 16
FOREVER = np.int64(1) << 62
TICK_DUE = 1 << 40          # added to rx_recv's result: a tick is due

# why a loop returned (also counted in stats)
R_STOP, R_ATTN, R_TICK, R_HANDLER, R_GONE, R_TIMEOUT = range(6)

# the handler's type: the loops are compiled once for this signature
RO_U8 = types.Array(types.uint8, 1, "C", readonly=True)
HANDLER_SIG = types.int64(RO_U8, types.uint64[::1], types.uint32[::1], types.uint64[::1],
                          types.int32[::1], types.int64[::1])
HANDLER = types.FunctionType(HANDLER_SIG)

FILL_LOW_NS = 200_000        # sleep at most this long while FILL is below a quarter
# the sleep set (int32 `pfd` of a context): [epoll fd, the AF_XDP socket (receive
# side), the lifeline socket (a Subscriber; else -1) or, receive side, the nap's
# epoll fd (the attention eventfd alone), the set's group token (consume side:
# announced with each sleep, cring.arm), ready events ...].
# Every descriptor is registered once; the eventfds edge-triggered, so a wake-up
# needs no read to re-arm it (a write while we were awake is a pending edge).
P_EPFD, P_XSK, P_LIFELINE, P_GROUP, P_EVENTS, N_PFD = 0, 1, 2, 3, 4, 16
P_NAP = P_LIFELINE
REPORT_EVERY = 64            # consumer batches between two getcpu() feedback reports


def new_ctl() -> np.ndarray:
    ctl = np.zeros(N_CTL, np.int64)
    ctl[K_DEADLINE] = FOREVER
    ctl[K_LAST_BATCH] = -FOREVER
    ctl[K_NUMA_NEXT] = FOREVER
    return ctl


def signal_ctl(ctl: np.ndarray, word: int, efd: int) -> None:
    """From Python, any thread (or a signal handler): set @word, then wake the
    loop from its epoll wait through the attention eventfd @efd."""
    import os
    ctl[word] = 1
    try:
        os.eventfd_write(efd, 1)
    except (BlockingIOError, OSError):
        pass   # saturated (the loop has a wake-up pending) or closed (gone)


@kernel(HANDLER_SIG)
def no_handler(umem, offsets, lengths, seqs, groups, state):
    """The handler of a loop that only serves consumers."""
    return 0


# =============================================================================
# receive side
# =============================================================================
@inline
def flush_wakes(ctab, hub, wake, fn, scratch, stats):
    """Write the eventfd of every consumer on the wake list, once per sleep
    set: rings of one process that sleep in one epoll set (run_many, a
    consumer's rings of several queues) announce the same group, and one
    write wakes the thread that serves them all. Group tokens are unique
    over a process's life (consumer.wake_group), so a group read here names
    the set the consumer sleeps in now or a finished one it has left."""
    one = scratch[2:3]
    one[0] = 1
    nw = hub[bulk.H_NWAKE]
    shared = 0
    for i in range(nw):
        c = wake[i]
        g = bulk.group_of(ctab, c)
        ctab[c, bulk.C_WGROUP] = g
        dup = False
        if g != 0:
            for j in range(i):
                d = wake[j]
                if ctab[d, bulk.C_WGROUP] == g and ctab[d, bulk.C_OWNER] == ctab[c, bulk.C_OWNER]:
                    dup = True
                    break
        if dup:
            shared += 1
        else:
            efd_write(fn, ctab[c, bulk.C_EFD], one)
    stats[bulk.S_EFD_WRITES] += nw - shared
    stats[bulk.S_WAKES_SHARED] += shared
    hub[bulk.H_NWAKE] = 0


@inline
def rx_step(ctx, self_ref, now):
    """One burst and everything that follows it. Returns (packets for the
    caller's batch, time the next moderated wake-up is due)."""
    rx_prod, rx_cons = a1(ctx, X.RX_PROD, np.uint32), a1(ctx, X.RX_CONS, np.uint32)
    rx_slots, rx_local = a2(ctx, X.RX_SLOTS, 2, np.uint64), a1(ctx, X.RX_LOCAL, np.int64)
    fill_prod, fill_cons = a1(ctx, X.FILL_PROD, np.uint32), a1(ctx, X.FILL_CONS, np.uint32)
    fill_slots, fill_local = a1(ctx, X.FILL_SLOTS, np.uint64), a1(ctx, X.FILL_LOCAL, np.int64)
    fill_flags = a1(ctx, X.FILL_FLAGS, np.uint32)
    stats, ctab = a1(ctx, X.STATS, np.int64), a2(ctx, X.CTAB, bulk.NCOL, np.int64)
    wake, hub = a1(ctx, X.WAKE, np.int32), a1(ctx, X.HUB, np.int64)
    ctl, fn = a1(ctx, X.CTL, np.int64), a1(ctx, X.FN, np.uint64)
    pfd, scratch = a1(ctx, X.PFD, np.int32), a1(ctx, X.SCRATCH, np.int64)
    n = bulk.rx_burst(
        rx_prod, rx_cons, rx_slots, rx_local, fill_prod, fill_cons, fill_slots, fill_local,
        fill_flags, pool_of(ctx), a1(ctx, X.UMEM, np.uint8), a2(ctx, X.G_ADDR, 16, np.uint8),
        a1(ctx, X.G_PORT, np.uint16), a1(ctx, X.G_SEQ, np.uint64),
        a1(ctx, X.OUT_FRAME, np.uint64), a1(ctx, X.OUT_OFF, np.uint64),
        a1(ctx, X.OUT_LEN, np.uint32), a1(ctx, X.OUT_SEQ, np.uint64),
        a1(ctx, X.OUT_SUB, np.int32), stats, ctab, a1(ctx, X.SUB_START, np.int64),
        a1(ctx, X.SUB_CONS, np.int32), wake, hub, now, ctl[K_REFILL_MIN], self_ref)
    due = bulk.wake_due(ctab, hub, wake, now)
    flush_wakes(ctab, hub, wake, fn, scratch, stats)
    if needs_wakeup(fill_flags):
        kick_rx(fn, pfd[P_XSK])    # the driver asked to be told about new FILL entries
        stats[bulk.S_KICKS] += 1
    return n, due


@inline
def fill_low(ctx):
    """Fewer than a quarter of the FILL ring's entries are with the kernel."""
    fill_cons, fill_local = a1(ctx, X.FILL_CONS, np.uint32), a1(ctx, X.FILL_LOCAL, np.int64)
    in_fill = (fill_local[0] - np.int64(load_acquire(fill_cons))) & U32
    return in_fill < ctx[2 * X.FILL_SLOTS + 1] // 4


@inline
def rx_sleep(ctx, now, until):
    """Sleep in epoll on the socket and the attention eventfd until @until
    at most (shorter while FILL is low: consumers may be letting go of frames
    the kernel needs)."""
    stats = a1(ctx, X.STATS, np.int64)
    fn, pfd, scratch = a1(ctx, X.FN, np.uint64), a1(ctx, X.PFD, np.int32), a1(ctx, X.SCRATCH, np.int64)
    timeout = until - now
    if fill_low(ctx) and timeout > FILL_LOW_NS:
        timeout = FILL_LOW_NS
    if timeout < 0:
        timeout = 0
    stats[bulk.S_SLEEPS] += 1
    epoll_wait_ns(fn, pfd[P_EPFD], pfd[P_EVENTS:], timeout, scratch)


@inline
def rx_nap(ctx, now, until):
    """Receive moderation (a NIC's rx-usecs): packets are coming faster than
    K_RX_NS apart, so sleep until @until whatever arrives, on the attention
    eventfd alone, and take what came as one batch: one wake-up, one pass
    over the consumers and one wake-up for each of them per nap instead of
    per packet. Not while FILL is low. True if it napped."""
    if until <= now or fill_low(ctx):
        return False
    stats = a1(ctx, X.STATS, np.int64)
    fn, pfd, scratch = a1(ctx, X.FN, np.uint64), a1(ctx, X.PFD, np.int32), a1(ctx, X.SCRATCH, np.int64)
    stats[bulk.S_NAPS] += 1
    epoll_wait_ns(fn, pfd[P_NAP], pfd[P_EVENTS:], until - now, scratch)
    return True


@inline
def rx_spin(ctx, now):
    """Busy-poll the RX producer index for up to K_SPIN_NS. True if a packet came."""
    spin = a1(ctx, X.CTL, np.int64)[K_SPIN_NS]
    if spin <= 0:
        return False
    rx_prod, rx_local = a1(ctx, X.RX_PROD, np.uint32), a1(ctx, X.RX_LOCAL, np.int64)
    fn, scratch = a1(ctx, X.FN, np.uint64), a1(ctx, X.SCRATCH, np.int64)
    end = now + spin
    while True:
        for _ in range(64):
            if np.int64(load_relaxed(rx_prod)) != rx_local[1]:
                return True
        if now_ns(fn, scratch) >= end:
            return False


@kernel
def rx_loop(ctx, umem_ro, handler, state):
    """The receive loop: serve consumers (and, with K_SELF_REF, call @handler
    on every batch, then release it) until Python is needed. Returns R_*."""
    stats, ctl = a1(ctx, X.STATS, np.int64), a1(ctx, X.CTL, np.int64)
    fn, scratch = a1(ctx, X.FN, np.uint64), a1(ctx, X.SCRATCH, np.int64)
    self_ref = ctl[K_SELF_REF]
    off, ln = a1(ctx, X.OUT_OFF, np.uint64), a1(ctx, X.OUT_LEN, np.uint32)
    seq, sub = a1(ctx, X.OUT_SEQ, np.uint64), a1(ctx, X.OUT_SUB, np.int32)
    rx_prod, rx_local = a1(ctx, X.RX_PROD, np.uint32), a1(ctx, X.RX_LOCAL, np.int64)
    while True:
        if load_relaxed(ctl[K_STOP:]) != 0:
            stats[bulk.S_RET_STOP] += 1
            return R_STOP
        if load_relaxed(ctl[K_ATTN:]) != 0:
            stats[bulk.S_RET_ATTN] += 1
            return R_ATTN
        now = now_ns(fn, scratch)
        if now >= ctl[K_DEADLINE] or stats[bulk.S_BATCHES] >= ctl[K_NUMA_NEXT]:
            stats[bulk.S_RET_TICK] += 1
            return R_TICK
        batches = stats[bulk.S_BATCHES]
        n, due = rx_step(ctx, self_ref, now)
        if n > 0:
            stats[bulk.S_HANDLER_CALLS] += 1
            r = handler(umem_ro, off[:n], ln[:n], seq[:n], sub[:n], state)
            rx_release_n(ctx, n)
            if r != 0:
                return R_HANDLER
        # more already waiting: the next burst at once; a batch that emptied
        # the ring goes straight to sleep (a second, empty burst would cost
        # as much as the wake-up's own work at low rates)
        got = stats[bulk.S_BATCHES] != batches
        if got and np.int64(load_relaxed(rx_prod)) != rx_local[1]:
            continue
        if rx_spin(ctx, now):
            continue
        until = min(ctl[K_DEADLINE], due)
        if got:
            # batches less than two moderation periods apart: the next one
            # is taken a period after this one, however many packets come
            gap = now - ctl[K_LAST_BATCH]
            ctl[K_LAST_BATCH] = now
            if gap < 2 * ctl[K_RX_NS] and rx_nap(ctx, now, min(now + ctl[K_RX_NS], until)):
                continue
        rx_sleep(ctx, now, until)


@inline
def rx_release_n(ctx, n):
    bulk.release(a1(ctx, X.OUT_FRAME, np.uint64), n, pool_of(ctx), a1(ctx, X.STATS, np.int64))


@kernel
def rx_recv(ctx, timeout_ns):
    """Release the caller's last batch, then receive: with K_SELF_REF a batch
    for the caller (returns its size, K_HELD frames held), else one burst for
    the consumers (returns its packets). Waits up to @timeout_ns (< 0:
    forever). Returns 0 on timeout, -1 when K_ATTN is set, -2 when a tick
    (K_DEADLINE, K_NUMA_NEXT) is due first: call again after it. A result
    with TICK_DUE added means: a tick is due, after this batch."""
    stats, ctl = a1(ctx, X.STATS, np.int64), a1(ctx, X.CTL, np.int64)
    fn, scratch = a1(ctx, X.FN, np.uint64), a1(ctx, X.SCRATCH, np.int64)
    if ctl[K_HELD] > 0:
        rx_release_n(ctx, ctl[K_HELD])
        ctl[K_HELD] = 0
    self_ref = ctl[K_SELF_REF]
    now = now_ns(fn, scratch)
    end = FOREVER if timeout_ns < 0 else now + timeout_ns
    while True:
        batches = stats[bulk.S_BATCHES]
        packets = stats[bulk.S_PACKETS]
        n, due = rx_step(ctx, self_ref, now)
        tick = now >= ctl[K_DEADLINE] or stats[bulk.S_BATCHES] >= ctl[K_NUMA_NEXT]
        flag = TICK_DUE if tick else 0
        if self_ref and n > 0:
            ctl[K_HELD] = n
            return n + flag
        if not self_ref and stats[bulk.S_BATCHES] != batches:
            return stats[bulk.S_PACKETS] - packets + flag
        if now >= end:
            return flag
        if tick:
            return -2
        if load_relaxed(ctl[K_ATTN:]) != 0:
            return -1
        if not rx_spin(ctx, now):
            rx_sleep(ctx, now, min(end, ctl[K_DEADLINE], due))
        now = now_ns(fn, scratch)


@kernel
def rx_reclaim(ctx, c):
    """bulk.reclaim of consumer @c."""
    return bulk.reclaim(
        a2(ctx, X.CTAB, bulk.NCOL, np.int64), c, pool_of(ctx), a1(ctx, X.STATS, np.int64),
        a1(ctx, X.HUB, np.int64))


@kernel
def rx_release(ctx):
    """The caller's batch lets go of its frames now (Batch.release)."""
    ctl = a1(ctx, X.CTL, np.int64)
    if ctl[K_HELD] > 0:
        rx_release_n(ctx, ctl[K_HELD])
        ctl[K_HELD] = 0
    return 0


# =============================================================================
# consume side
# =============================================================================
@inline
def cons_let_go(cctx):
    """Release the entries of the last batch (one release store) and publish
    the feedback the NUMA policy reads: bytes and packets read, and every
    REPORT_EVERY batches the cpu and node we run on (getcpu, vDSO)."""
    ctl = a1(cctx, X.C_CTL, np.int64)
    held = ctl[K_HELD]
    if held == 0:
        return
    cons_release(a1(cctx, X.C_CONS, np.uint32), a1(cctx, X.C_LOCAL, np.int64), held)
    ctl[K_HELD] = 0
    counts = a1(cctx, X.C_COUNTS, np.int64)
    fb = a1(cctx, X.C_FEEDBACK, np.uint64)     # [cpu|node u32 x2, bytes, packets]
    fb[1] = counts[2]
    fb[2] = counts[0]
    r = ctl[K_RELEASES]
    ctl[K_RELEASES] = r + 1
    if r & (REPORT_EVERY - 1) == 0:
        getcpu(a1(cctx, X.C_FN, np.uint64), fb[0:1].view(np.uint32))


@inline
def cons_read(cctx):
    """Read the next batch into out_*. Returns how many are in it (0: none);
    K_HELD says how many ring entries to release for it."""
    ctl = a1(cctx, X.C_CTL, np.int64)
    counts = a1(cctx, X.C_COUNTS, np.int64)
    while True:
        n = CR.read_batch(
            a1(cctx, X.C_PROD, np.uint32), a1(cctx, X.C_SLOTS, np.uint64),
            a1(cctx, X.C_LOCAL, np.int64), a1(cctx, X.C_UMEM, np.uint8), ctl[K_SHIFT],
            ctl[K_BATCH], a1(cctx, X.C_NEXT_SEQ, np.uint64), counts,
            a1(cctx, X.C_OUT_FRAME, np.uint64), a1(cctx, X.C_OUT_OFF, np.uint64),
            a1(cctx, X.C_OUT_LEN, np.uint32), a1(cctx, X.C_OUT_SEQ, np.uint64),
            a1(cctx, X.C_OUT_SUB, np.int32))
        if n == 0:
            return 0
        ctl[K_HELD] = n
        if counts[4] > 0:
            return counts[4]
        cons_let_go(cctx)   # only entries we refused to read: let them go, look again


@inline
def cons_gone(cctx):
    """The daemon closed this ring, or its lifeline socket hung up."""
    return (a1(cctx, X.C_STATUS, np.uint32)[0] == CR.STATUS_CLOSED
            or a1(cctx, X.C_CTL, np.int64)[K_GONE] != 0)


@inline
def cons_sleep(cctx, timeout_ns):
    """Arm (waiting = sleep number, fence, look again), then epoll-wait on
    the eventfd (and the lifeline socket) for up to @timeout_ns."""
    waiting = a1(cctx, X.C_WAITING, np.uint32)
    local = a1(cctx, X.C_LOCAL, np.int64)
    pfd = a1(cctx, X.C_PFD, np.int32)
    if CR.arm(waiting, a1(cctx, X.C_PROD, np.uint32), local, np.uint32(pfd[P_GROUP])):
        return
    ctl, fn = a1(cctx, X.C_CTL, np.int64), a1(cctx, X.C_FN, np.uint64)
    scratch = a1(cctx, X.C_SCRATCH, np.int64)
    events = pfd[P_EVENTS:]
    k = epoll_wait_ns(fn, pfd[P_EPFD], events, timeout_ns, scratch)
    store_relaxed(waiting, 0)
    for i in range(k):
        if epoll_data(events, i) == pfd[P_LIFELINE]:
            ctl[K_GONE] = 1      # the daemon never writes after its reply: EOF


@inline
def cons_wait(cctx, end):
    """Read a batch, sleeping until @end (ns) at most. Returns its size, 0 at
    @end or when K_STOP is set, -1 once the daemon is gone and the ring empty."""
    ctl, fn = a1(cctx, X.C_CTL, np.int64), a1(cctx, X.C_FN, np.uint64)
    scratch = a1(cctx, X.C_SCRATCH, np.int64)
    prod, local = a1(cctx, X.C_PROD, np.uint32), a1(cctx, X.C_LOCAL, np.int64)
    cons_let_go(cctx)
    while True:
        j = cons_read(cctx)
        if j > 0:
            return j
        if cons_gone(cctx):
            return -1
        now = now_ns(fn, scratch)
        if now >= end or load_relaxed(ctl[K_STOP:]) != 0:
            return 0
        spin_end = now + ctl[K_SPIN_NS]
        while ctl[K_SPIN_NS] > 0 and np.int64(load_relaxed(prod)) == local[1]:
            if now_ns(fn, scratch) >= spin_end:
                break
        if np.int64(load_relaxed(prod)) == local[1]:
            cons_sleep(cctx, end - now)


@kernel
def cons_recv(cctx, timeout_ns):
    """Consumer.recv(): release the last batch, return the next one's size
    (waiting up to @timeout_ns; < 0 forever), 0 on timeout, -1 when gone."""
    fn, scratch = a1(cctx, X.C_FN, np.uint64), a1(cctx, X.C_SCRATCH, np.int64)
    if timeout_ns == 0:
        cons_let_go(cctx)
        j = cons_read(cctx)
        if j == 0 and cons_gone(cctx):
            return -1
        return j
    end = FOREVER if timeout_ns < 0 else now_ns(fn, scratch) + timeout_ns
    return cons_wait(cctx, end)


@inline
def cons_sleep_all(cctxs, gpfd, timeout_ns):
    """cons_sleep for many rings at once: announce the sleep on each, one
    fence for all (the store-load order arm() needs holds for every ring
    announced before it), look again at each; if all are still empty, one
    epoll wait on the set in
    @gpfd (every ring's eventfd, the lifelines) for up to @timeout_ns; a
    lifeline's EOF marks the rings whose pfd names it gone; disarm."""
    n = cctxs.shape[0]
    c0 = cctxs[0]
    fn, scratch = a1(c0, X.C_FN, np.uint64), a1(c0, X.C_SCRATCH, np.int64)
    events = gpfd[P_EVENTS:]
    avail = 0
    group = np.uint32(gpfd[P_GROUP])
    for i in range(n):
        CR.announce(a1(cctxs[i], X.C_WAITING, np.uint32), group)
    fence_seq_cst()
    for i in range(n):
        c = cctxs[i]
        avail += CR.look(a1(c, X.C_PROD, np.uint32), a1(c, X.C_LOCAL, np.int64))
    if avail == 0:
        k = epoll_wait_ns(fn, gpfd[P_EPFD], events, timeout_ns, scratch)
        for e in range(k):
            fd = epoll_data(events, e)
            for i in range(n):
                if a1(cctxs[i], X.C_PFD, np.int32)[P_LIFELINE] == fd:
                    a1(cctxs[i], X.C_CTL, np.int64)[K_GONE] = 1
    for i in range(n):
        store_relaxed(a1(cctxs[i], X.C_WAITING, np.uint32), 0)


@kernel
def cons_recv_many(cctxs, rr, timeout_ns):
    """recv() of a consumer with one ring per receive queue (@cctxs, a row
    each): let go of the last batch, then the next batch of the first ring,
    round-robin from rr[0], that has one; when none has, arm every ring and
    sleep once (their eventfds share one epoll set) up to @timeout_ns (< 0:
    forever). Returns the size, 0 on timeout or K_STOP, -1 once every ring
    is closed or the daemon gone, and empty."""
    n = cctxs.shape[0]
    c0 = cctxs[0]
    fn, scratch = a1(c0, X.C_FN, np.uint64), a1(c0, X.C_SCRATCH, np.int64)
    ctl0, pfd0 = a1(c0, X.C_CTL, np.int64), a1(c0, X.C_PFD, np.int32)
    for i in range(n):
        cons_let_go(cctxs[i])
    now = now_ns(fn, scratch)
    end = FOREVER if timeout_ns < 0 else now + timeout_ns
    while True:
        gone = 0
        for i in range(n):
            k = (rr[0] + i) % n
            j = cons_read(cctxs[k])
            if j > 0:
                rr[0] = (k + 1) % n
                return j
            if cons_gone(cctxs[k]):
                gone += 1
        if gone == n:
            return -1
        if now >= end or load_relaxed(ctl0[K_STOP:]) != 0:
            return 0
        cons_sleep_all(cctxs, pfd0, end - now)
        now = now_ns(fn, scratch)


@kernel
def cons_arm(cctx):
    """recv_async(): announce a sleep the way cons_sleep does (waiting = sleep
    number, fence, look again) without sleeping: the caller awaits the eventfd
    on its event loop, then stores 0 into waiting. Returns entries available
    (0: await the eventfd; else waiting is already 0 again)."""
    return CR.arm(a1(cctx, X.C_WAITING, np.uint32), a1(cctx, X.C_PROD, np.uint32),
                  a1(cctx, X.C_LOCAL, np.int64), np.uint32(a1(cctx, X.C_PFD, np.int32)[P_GROUP]))


@kernel
def cons_done(cctx):
    """Batch.release() of a consumer's batch."""
    cons_let_go(cctx)
    return 0


@kernel
def cons_run(cctx, umem_ro, handler, state, slice_ns):
    """Consumer.run(): read -> handler -> release, for @slice_ns at most
    (then Python checks for signals and comes back). Returns R_*."""
    ctl, fn = a1(cctx, X.C_CTL, np.int64), a1(cctx, X.C_FN, np.uint64)
    scratch, counts = a1(cctx, X.C_SCRATCH, np.int64), a1(cctx, X.C_COUNTS, np.int64)
    off, ln = a1(cctx, X.C_OUT_OFF, np.uint64), a1(cctx, X.C_OUT_LEN, np.uint32)
    seq, sub = a1(cctx, X.C_OUT_SEQ, np.uint64), a1(cctx, X.C_OUT_SUB, np.int32)
    end = now_ns(fn, scratch) + slice_ns
    while True:
        j = cons_wait(cctx, end)
        if j < 0:
            return R_GONE
        if j == 0:
            cons_let_go(cctx)
            return R_STOP if load_relaxed(ctl[K_STOP:]) != 0 else R_TIMEOUT
        counts[5] += 1
        if handler(umem_ro, off[:j], ln[:j], seq[:j], sub[:j], state) != 0:
            cons_let_go(cctx)
            return R_HANDLER


@kernel
def cons_run_many(cctxs, gpfd, umem_ro, handler, states, rows, slice_ns):
    """Many consumer rings on one thread (run_many, and a consumer's rings of
    several queues): round-robin read -> handler (ring i with state row
    rows[i]) -> release; when every ring is empty, arm
    them all and sleep once, in one epoll set holding every eventfd. N
    consumers cost one thread and one wake-up, not N context switches.
    @gpfd: [epoll fd, -, -, group token, events ...]; lifeline sockets have epoll data
    = their fd, and are listed in each consumer's own pfd[P_LIFELINE].
    Returns R_*; R_GONE only when every consumer is gone."""
    n = cctxs.shape[0]
    c0 = cctxs[0]
    fn, scratch = a1(c0, X.C_FN, np.uint64), a1(c0, X.C_SCRATCH, np.int64)
    ctl0 = a1(c0, X.C_CTL, np.int64)
    end = now_ns(fn, scratch) + slice_ns
    while True:
        if load_relaxed(ctl0[K_STOP:]) != 0:
            for i in range(n):
                cons_let_go(cctxs[i])
            return R_STOP
        got = False
        alive = 0
        for i in range(n):
            c = cctxs[i]
            cons_let_go(c)
            j = cons_read(c)
            if j > 0:
                got = True
                a1(c, X.C_COUNTS, np.int64)[5] += 1
                off, ln = a1(c, X.C_OUT_OFF, np.uint64), a1(c, X.C_OUT_LEN, np.uint32)
                seq, sub = a1(c, X.C_OUT_SEQ, np.uint64), a1(c, X.C_OUT_SUB, np.int32)
                if handler(umem_ro, off[:j], ln[:j], seq[:j], sub[:j], states[rows[i]]) != 0:
                    for k in range(n):
                        cons_let_go(cctxs[k])
                    return R_HANDLER
            if not cons_gone(c):
                alive += 1
        if got:
            continue
        if alive == 0:
            return R_GONE
        now = now_ns(fn, scratch)
        if now >= end:
            return R_TIMEOUT
        # every ring looked empty: announce the sleep on each, look once more
        cons_sleep_all(cctxs, gpfd, end - now)


# ---- warm-up: load every kernel with its real types before traffic ------------
CTX = types.uint64[::1]
I64 = types.int64
STATE = types.int64[::1]


def warm_rx() -> None:
    """The receive side's kernels (caller holds jit.cache_lock). The loops
    taking a handler are then closed to new signatures: a handler passed in
    converts to the one first-class function type instead of compiling (and
    failing to cache) one loop per handler."""
    if not rx_loop._can_compile:
        return                      # done in this process already
    rx_loop.compile((CTX, RO_U8, HANDLER, STATE))
    rx_loop.disable_compile()
    rx_recv.compile((CTX, I64))
    rx_reclaim.compile((CTX, I64))
    rx_release.compile((CTX,))
    # the NUMA policy's feedback kernel: else it compiles at the first tick
    a2d, a1d = types.int64[:, ::1], types.int64[::1]
    bulk.collect_feedback.compile((a2d, a1d, a1d, a1d, a1d, a1d))


def warm_consumer() -> None:
    """A consumer's kernels (caller holds jit.cache_lock): loaded, then each
    called once on an empty ring of its own, because a cached kernel's first
    call still costs ~10 ms (the object code is linked then): a Subscriber's
    first recv() must find everything ready."""
    if not cons_run._can_compile:
        return
    cons_recv.compile((CTX, I64))
    cons_done.compile((CTX,))
    cons_arm.compile((CTX,))
    cons_run.compile((CTX, RO_U8, HANDLER, STATE, I64))
    cons_run.disable_compile()
    cons_run_many.compile((types.uint64[:, ::1], types.int32[::1], RO_U8, HANDLER,
                           types.int64[:, ::1], types.int64[::1], I64))
    cons_run_many.disable_compile()
    cons_recv_many.compile((types.uint64[:, ::1], types.int64[::1], I64))
    keep, ctx = _empty_consumer()
    umem = keep["umem"].view()
    umem.setflags(write=False)
    state = np.zeros(1, np.int64)
    cons_recv(ctx, 0)
    cons_done(ctx)
    cons_arm(ctx)
    cons_run(ctx, umem, no_handler, state, 0)
    cons_run_many(ctx.reshape(1, -1), keep["pfd"], umem, no_handler, state.reshape(1, -1),
                  np.zeros(1, np.int64), 0)
    cons_recv_many(ctx.reshape(1, -1), np.zeros(2, np.int64), 0)


def _empty_consumer() -> tuple[dict, np.ndarray]:
    """A consumer context over an empty ring in private arrays (warm-up)."""
    from .kernel.libc import table
    arrays = {
        "prod": np.zeros(1, np.uint32), "slots": np.zeros(64, np.uint64),
        "local": np.zeros(2, np.int64), "umem": np.zeros(4096, np.uint8),
        "next_seq": np.zeros(1, np.uint64), "counts": np.zeros(8, np.int64),
        "out_frame": np.zeros(4, np.uint64), "out_off": np.zeros(4, np.uint64),
        "out_len": np.zeros(4, np.uint32), "out_seq": np.zeros(4, np.uint64),
        "out_sub": np.zeros(4, np.int32), "cons": np.zeros(1, np.uint32),
        "waiting": np.zeros(3, np.uint32), "feedback": np.zeros(3, np.uint64),
        "status": np.zeros(1, np.uint32), "ctl": new_ctl(), "fn": table(),
        "pfd": np.full(N_PFD, -1, np.int32), "scratch": np.zeros(4, np.int64)}
    arrays["ctl"][K_BATCH] = 4
    arrays["ctl"][K_SHIFT] = 11
    return arrays, X.make(arrays, X.CONS_FIELDS)
