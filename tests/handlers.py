"""njit handlers and payload hashes shared by the compiled-path tests and
their consumer processes (run_consumer.py)."""
import numba
import numpy as np

from xdprx.testing import payloads

BASIS = np.int64(-3750763034362895579)     # FNV-1a 64 offset basis, as int64
PRIME = np.int64(1099511628211)
# handler state: [packets, stop after (0: never), first seq, last seq, hash by seq ...]
S_PKTS, S_STOP, S_FIRST, S_LAST, S_HASH = 0, 1, 2, 3, 8
@numba.njit(cache=True)
def fnv(b, off, n):
    h = BASIS
    for k in range(n):
        h = (h ^ np.int64(b[off + k])) * PRIME
    return h


@numba.njit(cache=True)
def record(umem, offsets, lengths, seqs, groups, state):
    """Hash every payload into state[S_HASH + seq]; stop after state[S_STOP]."""
    for i in range(offsets.shape[0]):
        s = np.int64(seqs[i])
        if state[S_PKTS] == 0:
            state[S_FIRST] = s
        state[S_LAST] = s
        if S_HASH + s < state.shape[0]:
            state[S_HASH + s] = fnv(umem, offsets[i], lengths[i])
        state[S_PKTS] += 1
    return 1 if state[S_STOP] != 0 and state[S_PKTS] >= state[S_STOP] else 0


@numba.njit(cache=True)
def _hashes(pool, sizes, out):
    o = 0
    for i in range(sizes.shape[0]):
        out[i] = fnv(pool, o, sizes[i])
        o += sizes[i]


def expected_hashes(seed, n, lo, hi):
    data = payloads(seed, n, lo, hi)
    pool = np.frombuffer(b"".join(data), np.uint8)
    out = np.zeros(n, np.int64)
    _hashes(pool, np.array([len(d) for d in data], np.int64), out)
    return out


def new_state(n, stop=0):
    st = np.zeros(S_HASH + n, np.int64)
    st[S_STOP] = stop
    return st


def check_hashes(state, want, n):
    got = state[S_HASH:S_HASH + n]
    bad = np.flatnonzero(got != want[:n])
    assert len(bad) == 0, f"{len(bad)} payloads differ, first at seq {bad[:5]}"




# multi-queue: [packets, stop after, per queue n, -, count of queue 0..3, hashes of
# queue q at MQ_HASH + q * n + seq]; the queue's index is the seq's top byte
MQ_N, MQ_COUNT, MQ_HASH, MQ_MAX = 2, 4, 8, 4
LOW56 = np.uint64((1 << 56) - 1)


@numba.njit(cache=True)
def record_q(umem, offsets, lengths, seqs, groups, state):
    n = state[MQ_N]
    for i in range(offsets.shape[0]):
        q = np.int64(seqs[i] >> np.uint64(56))
        s = np.int64(seqs[i] & LOW56)
        if q < MQ_MAX:
            state[MQ_COUNT + q] += 1
            if s < n:
                state[MQ_HASH + q * n + s] = fnv(umem, offsets[i], lengths[i])
        state[S_PKTS] += 1
    return 1 if state[S_STOP] != 0 and state[S_PKTS] >= state[S_STOP] else 0


def new_state_q(n, stop=0):
    st = np.zeros(MQ_HASH + MQ_MAX * n, np.int64)
    st[S_STOP], st[MQ_N] = stop, n
    return st


def check_queues(state, wants, n):
    """Queue q's hashes against wants[q] (all n packets, in seq order)."""
    for q, want in enumerate(wants):
        got = state[MQ_HASH + q * n: MQ_HASH + (q + 1) * n]
        bad = np.flatnonzero(got != want[:n])
        assert len(bad) == 0, f"queue {q}: {len(bad)} payloads differ or missing, first {bad[:5]}"
