"""Serve mode for the benchmark's Python contenders (as udprx's SECONDS 0):
the receiver runs until stdin closes; each line on stdin asks for one JSON
line of cumulative counts plus the per-batch latency histogram since the
last one. The suite's driver uses it to probe many rates in one receiver
lifetime (loss-free search, latency) without paying start-up per probe.

Latency histogram: the same buckets as c/lat.h; bucket i holds
[2^(i/16), 2^((i+1)/16)) ns, so histograms of processes merge by adding."""
from __future__ import annotations

import json
import math
import sys
import threading
import time

import numpy as np
from numba import njit

from touch_rx import touch64
from xdprx.kernel import libc

SUB, NB = 16, 16 * 40


def lat_bucket(ns: int) -> int:
    return min(NB - 1, int(math.log2(ns) * SUB)) if ns > 1 else 0


def send_ns(umem: np.ndarray, payload_offset: int) -> int:
    """The CLOCK_MONOTONIC ns pgen wrote at payload offset 8."""
    o = payload_offset + 8
    return int(umem[o:o + 8].view(np.uint64)[0])


def account(batch, hist: np.ndarray) -> int:
    """One batch a consumer got: its latency into @hist (now - the send time
    of its first packet, taken before reading), then the 64-byte read every
    contender does. Returns touch64's sum (keep it, or the reads go away)."""
    hist[lat_bucket(time.monotonic_ns() - send_ns(batch.umem, int(batch.offsets[0])))] += 1
    return touch64(batch.umem, batch.offsets, len(batch))


# ---- the same work as a compiled handler (run(handler)): state layout -------------
H_GOT, H_CHECK, H_CLOCK, H_TS, H_HIST = 0, 1, 2, 3, 8   # H_TS: 2 words of timespec


def handler_state() -> np.ndarray:
    st = np.zeros(H_HIST + NB, np.int64)
    st[H_CLOCK] = int(libc.table()[libc.FN_CLOCK])
    return st


@njit(cache=True, nogil=True)
def account_h(umem, offsets, lengths, seqs, groups, state):
    """account() in compiled code: latency of the batch's first packet (now -
    pgen's send time), then the first 64 bytes of every packet."""
    n = offsets.shape[0]
    ts = state[H_TS:H_TS + 2]
    libc.ccall2(state[H_CLOCK], libc.CLOCK_MONOTONIC, ts.ctypes.data)
    now = ts[0] * 1000000000 + ts[1]
    o = offsets[0] + 8
    sent = np.int64(umem[o: o + 8].view(np.uint64)[0])
    d = now - sent
    b = 0
    if d > 1:
        b = min(NB - 1, int(np.log2(d) * SUB))
    state[H_HIST + b] += 1
    state[H_CHECK] ^= touch64(umem, offsets, n)
    state[H_GOT] += n
    return 0


def hist_json(h: np.ndarray) -> dict[str, int]:
    return {str(i): int(h[i]) for i in np.flatnonzero(h)}


def percentiles(hist: dict[str, int], qs=(0.5, 0.99, 0.999)) -> dict[str, float | None]:
    """Latency percentiles in µs from a {bucket: count} histogram (the
    bucket's geometric middle: within 2.2 % of the true value)."""
    items = sorted((int(k), v) for k, v in hist.items())
    total = sum(v for _, v in items)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{q * 100:g}"
        if not total:
            out[key] = None
            continue
        need, acc = q * total, 0
        for i, v in items:
            acc += v
            if acc >= need:
                out[key] = 2 ** ((i + 0.5) / SUB) / 1e3
                break
    out["batches"] = total
    return out


class Requests:
    """Lines on stdin, counted by a reader thread; `pending` is read by the
    receive loop between batches (no syscall in the loop)."""

    def __init__(self) -> None:
        self.asked = 0
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for _line in sys.stdin:
            self.asked += 1
        self.closed = True

    def answer(self, answered: int, **counts) -> int:
        """Print one report per request not answered yet; return the count."""
        while answered < self.asked:
            print(json.dumps(counts), flush=True)
            answered += 1
        return answered
