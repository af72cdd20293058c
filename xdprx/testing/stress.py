"""Two-process ring stress: millions of entries between two CPUs, checked.

    python -m xdprx.testing.stress xsk   --count 4000000 [--batch 32]
    python -m xdprx.testing.stress cring --count 2000000 [--batch 32]
    python -m xdprx.testing.stress fuzz  --frames 1000000 [--seed S]   (xdprx.testing.fuzz)
    python -m xdprx.testing.stress restart --kills 100 [--json]         (xdprx.testing.restart)
    python -m xdprx.testing.stress kill  --kills 10000 --json          (xdprx.testing.storm)
    python -m xdprx.testing.stress soak  --seconds 600 --json          (xdprx.testing.storm)

This process produces on CPU 0; a child it spawns consumes on CPU 1, over
shared memfds. Both sides run xdprx's own ring code, spinning, so every
index and slot crosses between CPUs:

  xsk     the AF_XDP ring layout and ops (ring.py): frames go out through
          ring A (like FILL/RX) and come back through ring B (like
          COMPLETION). Each frame carries its sequence number in 8 words; the
          consumer checks the sequence and every word (data written before
          the release store must be visible after the acquire load), the
          producer checks each returned frame was outstanding (no duplicate).
  cring   the consumer ring with the receive loop's real code: bulk.fan_out,
          publish and reap over a FramePool and headroom descriptors on the
          producer side; cring_read and cring_release on the consumer side.

Both print one JSON line; the producer's includes the consumer's. Any lost,
duplicated, reordered or torn entry shows up as a non-zero error count. With
--batch 1 every entry is its own ring operation: the "one at a time" side of
benchmarks/recycle.py.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time

import numpy as np

from .. import bulk
from .. import cring as CR
from .. import fanout as F
from ..jit import kernel, raw
from ..ring import U32, cons_peek, cons_release, prod_free, prod_submit
from ..umem import P_HELD, X_SHIFT, FramePool, active_meta, fill_get, hold

WORDS = 8            # u64 words of payload per entry
SEQ_SHIFT = 24       # xsk slot = seq << 24 | frame
BUDGET = 1 << 20     # loop iterations per kernel call: Python checks the deadline


# ---- xsk layout: two rings and a frame area in one memfd ----------------------
def xsk_layout(size: int, frames: int) -> dict[str, int]:
    a = 4096
    b = a + size * 8
    data = b + frames * 8
    return {"a_slots": a, "b_slots": b, "data": data, "bytes": data + frames * WORDS * 8}


def xsk_views(buf, size: int, frames: int) -> tuple:
    lay = xsk_layout(size, frames)
    m = np.frombuffer(buf, np.uint8)
    u32 = m[:4096].view(np.uint32)
    return (u32[0:1], u32[16:17], u32[32:33], u32[48:49],   # a.prod a.cons b.prod b.cons
            m[lay["a_slots"]:lay["b_slots"]].view(np.uint64),
            m[lay["b_slots"]:lay["data"]].view(np.uint64),
            m[lay["data"]:lay["bytes"]].view(np.uint64))


@kernel
def xsk_produce(a_prod, a_cons, a_slots, a_local, b_prod, b_slots, b_local, b_cons, data,
                free, out, st, count, batch, budget, broken):
    """st: [sent, returned, top, dup_errors]. Returns 1 when done. @broken
    publishes before writing (the checker's negative control)."""
    asize = a_slots.shape[0]
    bsize = b_slots.shape[0]
    fmask = (1 << SEQ_SHIFT) - 1
    for _ in range(budget):
        # reap returned frames (COMPLETION-like), in bulk
        k = cons_peek(b_prod, b_local, batch)
        for i in range(k):
            f = b_slots[(b_local[1] + i) & (bsize - 1)] & fmask
            if out[f] == 0:
                st[3] += 1          # returned twice, or never sent
            out[f] = 0
            free[st[2]] = f
            st[2] += 1
        if k:
            cons_release(b_cons, b_local, k)
            st[1] += k
        # refill ring A (FILL-like), in bulk
        m = min(prod_free(a_cons, a_local, asize, batch), st[2], count - st[0])
        if broken and m:
            prod_submit(a_prod, a_local, m)
            a_local[0] = (a_local[0] - m) & U32
        for i in range(m):
            st[2] -= 1
            f = free[st[2]]
            out[f] = 1
            seq = st[0] + i
            for w in range(WORDS):
                data[f * WORDS + w] = seq
            a_slots[(a_local[0] + i) & (asize - 1)] = (seq << SEQ_SHIFT) | f
        if m:
            prod_submit(a_prod, a_local, m)
            st[0] += m
        if st[1] == count:
            return 1
    return 0


@kernel
def xsk_consume(a_prod, a_slots, a_local, a_cons, b_prod, b_cons, b_slots, b_local, data,
                st, count, batch, budget):
    """st: [received, seq_errors, data_errors]. Returns 1 when done."""
    asize = a_slots.shape[0]
    bsize = b_slots.shape[0]
    fmask = (1 << SEQ_SHIFT) - 1
    for _ in range(budget):
        n = cons_peek(a_prod, a_local, batch)
        if n == 0:
            if st[0] == count:
                return 1
            continue
        n = min(n, prod_free(b_cons, b_local, bsize, n))
        for i in range(n):
            v = a_slots[(a_local[1] + i) & (asize - 1)]
            seq = v >> SEQ_SHIFT
            f = v & fmask
            if seq != st[0] + i:
                st[1] += 1
            for w in range(WORDS):
                if data[f * WORDS + w] != seq:
                    st[2] += 1
            b_slots[(b_local[0] + i) & (bsize - 1)] = f
        cons_release(a_cons, a_local, n)
        prod_submit(b_prod, b_local, n)
        st[0] += n
    return 0


# ---- consumer ring, with the receive loop's own code -----------------------------
@kernel
def cring_produce(ctab, umem, pool, hub, sub_start, sub_cons, wake, tmp, st, count, batch,
                  budget):
    """st: [sent, missed, violations]. Frames get a descriptor and WORDS words
    of payload = seq, one reference each for consumer 0. Returns 1 when done
    (everything sent and every frame reaped back)."""
    u32 = umem.view(np.uint32)
    u64 = umem.view(np.uint64)
    shift = pool[5][X_SHIFT]
    for _ in range(budget):
        st[2] += bulk.reap(ctab, pool, hub)
        room = ctab[0, bulk.C_QUOTA] - ((ctab[0, bulk.C_PROD] - ctab[0, bulk.C_REAPED]) & U32)
        k = fill_get(pool, tmp, 0, min(batch, room, count - st[0]))
        for i in range(k):
            base = tmp[i]
            hold(pool, np.int64(base >> shift))
            w = base >> 2
            u32[w + F.W_HEAD] = F.DESC_MAGIC | (F.DESC_VERSION << 16)
            u32[w + F.W_PAYLOAD_OFF] = 256
            u32[w + F.W_PAYLOAD_LEN] = WORDS * 8
            u32[w + F.W_SUB] = 0
            seq = st[0] + i
            u64[(base >> 3) + F.Q_SEQ] = seq
            for j in range(WORDS):
                u64[((base + 256) >> 3) + j] = seq
            pool[6][np.int64(base >> shift)] = 0
        if k:
            full, taken, missed = bulk.fan_out(ctab, sub_start, sub_cons, 0, tmp, 0, k,
                                               st[0] + k - 1, hub, active_meta(pool), pool[6],
                                               shift)
            st[1] += missed
            bulk.settle(tmp, 0, k, full, u32, pool, shift)   # missed: straight back
            hub[bulk.H_NWAKE] = 0           # no sleepers here: the consumer polls
            bulk.publish(ctab, hub, wake, 0)
            st[0] += k
        if st[0] == count and pool[3][0, P_HELD] == 0:
            return 1
    return 0


@kernel
def cring_consume(prod, slots, local, cons, umem, next_seq, counts, o_frame, o_off, o_len,
                  o_seq, o_sub, st, count, budget):
    """The consumer's own read and release kernels, in a loop; every payload
    word must equal its packet's sequence number (st[0] counts those that do
    not). Returns 1 when @count packets were read."""
    u64 = umem.view(np.uint64)
    for _ in range(budget):
        n = CR.cring_read(prod, slots, local, umem, 11, o_frame.shape[0], next_seq, counts,
                          o_frame, o_off, o_len, o_seq, o_sub)
        if n == 0:
            if counts[0] >= count:
                return 1
            continue
        for i in range(counts[4]):
            o = o_off[i] >> 3
            for j in range(WORDS):
                if u64[o + j] != o_seq[i]:
                    st[0] += 1
        CR.cring_release(cons, local, n)
    return 0


# ---- drivers -------------------------------------------------------------------
def _pin(cpu: int) -> None:
    ncpu = os.cpu_count() or 1
    os.sched_setaffinity(0, {cpu % ncpu})


def _memfd(size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("xdprx-stress", 0)
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


def _spawn(args: list[str], fds: list[int]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xdprx.testing.stress", *args], pass_fds=fds,
                            stdout=subprocess.PIPE, text=True)


def _drive(step, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if step():
            return True
    return False


def run_xsk(count: int, batch: int, size: int, timeout: float, broken: bool = False) -> dict:
    frames = size * 2
    fd, buf = _memfd(xsk_layout(size, frames)["bytes"])
    a_prod, a_cons, b_prod, b_cons, a_slots, b_slots, data = xsk_views(buf, size, frames)
    child = _spawn(["xsk-consumer", str(fd), str(count), str(batch), str(size), str(timeout)], [fd])
    _pin(0)
    free = np.arange(frames, dtype=np.uint64)
    out = np.zeros(frames, np.uint8)
    st = np.zeros(4, np.int64)
    st[2] = frames
    al, bl = np.zeros(2, np.int64), np.zeros(2, np.int64)
    t0 = time.perf_counter()
    done = _drive(lambda: xsk_produce(a_prod, a_cons, a_slots, al, b_prod, b_slots, bl, b_cons,
                                      data, free, out, st, count, batch, BUDGET, broken),
                  time.monotonic() + timeout)
    dt = time.perf_counter() - t0
    peer = json.loads(child.communicate(timeout=timeout + 30)[0] or "{}")
    return {"ring": "xsk", "count": count, "batch": batch, "done": done, "seconds": dt,
            "ns_per_entry": dt * 1e9 / max(count, 1), "sent": int(st[0]),
            "returned": int(st[1]), "dup_errors": int(st[3]),
            "frames_home": int(st[2]) == frames and not out.any(), "consumer": peer}


def xsk_consumer(fd: int, count: int, batch: int, size: int, timeout: float) -> dict:
    _pin(1)
    frames = size * 2
    buf = mmap.mmap(fd, xsk_layout(size, frames)["bytes"])
    a_prod, a_cons, b_prod, b_cons, a_slots, b_slots, data = xsk_views(buf, size, frames)
    st = np.zeros(3, np.int64)
    al, bl = np.zeros(2, np.int64), np.zeros(2, np.int64)
    done = _drive(lambda: xsk_consume(a_prod, a_slots, al, a_cons, b_prod, b_cons, b_slots, bl,
                                      data, st, count, batch, BUDGET),
                  time.monotonic() + timeout)
    return {"done": done, "received": int(st[0]), "seq_errors": int(st[1]),
            "data_errors": int(st[2])}


def run_cring(count: int, batch: int, size: int, timeout: float) -> dict:
    from ..hub import Hub
    frames = size * 2
    fd, buf = _memfd(frames * 2048)
    umem = np.frombuffer(buf, np.uint8)
    pool = FramePool(frames, 2048)
    hub = Hub(1, frames, frames, reserve=0, max_consumers=1)
    e = hub.add([0], size, size, 2048)
    ring_fd, ctl_fd, _efd = e.ring.reader_fds()
    child = _spawn(["cring-consumer", str(fd), str(ring_fd), str(ctl_fd), str(count),
                    str(batch), str(frames), str(timeout)], [fd, ring_fd, ctl_fd])
    for x in (ring_fd, ctl_fd, _efd):
        os.close(x)
    _pin(0)
    st = np.zeros(3, np.int64)
    tmp = np.zeros(1 << (max(batch, 1) - 1).bit_length(), np.uint64)  # fill_get wants 2^k
    t0 = time.perf_counter()
    done = _drive(lambda: cring_produce(hub.ctab, umem, pool.t, hub.hub, hub.sub_start,
                                        hub.sub_cons, hub.wake, tmp, st, count, batch, BUDGET),
                  time.monotonic() + timeout)
    dt = time.perf_counter() - t0
    peer = json.loads(child.communicate(timeout=timeout + 30)[0] or "{}")
    pool.check()
    res = {"ring": "cring", "count": count, "batch": batch, "done": done, "seconds": dt,
           "ns_per_entry": dt * 1e9 / max(count, 1), "sent": int(st[0]),
           "missed": int(st[1]), "violations": int(st[2]),
           "frames_home": pool.census()["free"] == frames, "consumer": peer}
    e.ring.close()
    return res


def cring_consumer(fd: int, ring_fd: int, ctl_fd: int, count: int, batch: int, frames: int,
                   timeout: float) -> dict:
    _pin(1)
    umem = np.frombuffer(mmap.mmap(fd, frames * 2048, prot=mmap.PROT_READ), np.uint8)
    size_hdr = np.frombuffer(mmap.mmap(ring_fd, 64, prot=mmap.PROT_READ), np.uint32)
    size = int(size_hdr[2])
    ring = mmap.mmap(ring_fd, CR.ring_bytes(size), prot=mmap.PROT_READ)
    ctl = mmap.mmap(ctl_fd, CR.CTL_SIZE)
    v = CR.RingViews(ring, ctl, writable_ring=False)
    local = np.zeros(2, np.int64)
    next_seq = np.full(1, CR.NO_SEQ, np.uint64)
    counts = np.zeros(5, np.int64)
    outs = [np.zeros(batch, t) for t in (np.uint64, np.uint64, np.uint32, np.uint64, np.int32)]
    st = np.zeros(1, np.int64)
    done = _drive(lambda: cring_consume(v.prod, v.slots, local, v.cons, umem, next_seq, counts,
                                        *outs, st, count, BUDGET), time.monotonic() + timeout)
    return {"done": done, "received": int(counts[0]), "gaps": int(counts[1]),
            "bad": int(counts[3]), "data_errors": int(st[0])}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "restart":  # daemon kill/restart rounds: python -m xdprx.testing.restart
        from .restart import main as restart_main
        return restart_main(argv[1:])
    if argv and argv[0] == "fuzz":  # parser fuzzing: python -m xdprx.testing.fuzz
        from .fuzz import main as fuzz_main
        return fuzz_main(argv[1:])
    if argv and argv[0] in ("kill", "soak"):  # kill storms, soak: python -m xdprx.testing.storm
        from .storm import main as storm_main
        return storm_main(argv)
    if argv and argv[0] == "xsk-consumer":
        fd, count, batch, size = (int(x) for x in argv[1:5])
        print(json.dumps(xsk_consumer(fd, count, batch, size, float(argv[5]))))
        return 0
    if argv and argv[0] == "cring-consumer":
        fd, ring_fd, ctl_fd, count, batch, frames = (int(x) for x in argv[1:7])
        print(json.dumps(cring_consumer(fd, ring_fd, ctl_fd, count, batch, frames,
                                        float(argv[7]))))
        return 0
    ap = argparse.ArgumentParser(prog="python -m xdprx.testing.stress", description=__doc__.splitlines()[0])
    ap.add_argument("ring", choices=("xsk", "cring"))
    ap.add_argument("--count", type=int, default=4_000_000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=2048, help="ring entries (power of two)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--broken", action="store_true",
                    help="xsk: publish before writing (shows the checker catches it)")
    a = ap.parse_args(argv)
    if a.ring == "xsk":
        print(json.dumps(run_xsk(a.count, a.batch, a.size, a.timeout, a.broken)))
    else:
        print(json.dumps(run_cring(a.count, a.batch, a.size, a.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
