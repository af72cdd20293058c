"""A batch of received packets: zero-copy views into the UMEM.

The same class serves the Receiver (the application's own batch) and every
consumer (in-process or another process). Its frames are held until the
next recv() or release(); its arrays are views of buffers the next batch
reuses: copy what must outlive it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from . import fanout as F
from .groups import Group


@dataclass
class Packet:
    payload: memoryview
    seq: int
    group: Group
    frame: int


class Batch:
    """Up to batch_size packets. `umem` is the frame area (read-only for
    consumers); offsets index it directly."""

    __slots__ = ("_src", "_n", "umem")

    def __init__(self, src, n: int) -> None:
        self._src = src
        self._n = n
        self.umem: np.ndarray = src._area

    @property
    def timestamp_ns(self) -> int:
        """When the batch was received (CLOCK_MONOTONIC ns; 0 when empty)."""
        if not self._n:
            return 0
        return int(self.umem.view(np.uint64)[(int(self._src._frame[0]) >> 3) + F.Q_TS])

    # views made on demand: a Numba user touching two of them pays for two
    @property
    def frames(self) -> np.ndarray:
        return self._src._frame[:self._n]

    @property
    def offsets(self) -> np.ndarray:
        return self._src._off[:self._n]

    @property
    def lengths(self) -> np.ndarray:
        return self._src._len[:self._n]

    @property
    def seqs(self) -> np.ndarray:
        return self._src._seq[:self._n]

    @property
    def groups_idx(self) -> np.ndarray:
        return self._src._sub[:self._n]

    @property
    def timestamps(self) -> np.ndarray:
        """Receive time of each packet (CLOCK_MONOTONIC ns), from the descriptors."""
        return self.umem.view(np.uint64)[(self.frames >> np.uint64(3)) + F.Q_TS]

    def frame_bytes(self, i: int) -> memoryview:
        """The whole received frame (Ethernet header on) of packet @i."""
        d = self.umem[int(self.frames[i]):int(self.frames[i]) + F.DESC_SIZE].view(F.DESC)[0]
        start = int(self.frames[i]) + int(d["pkt_off"])
        return self._src._mv[start:start + int(d["pkt_len"])]

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Packet]:
        mv = self._src._mv
        groups = self._src.groups
        offs, lens, seqs, subs, frames = (self.offsets, self.lengths, self.seqs,
                                          self.groups_idx, self.frames)
        for i in range(self._n):
            off = int(offs[i])
            yield Packet(mv[off: off + int(lens[i])], int(seqs[i]), groups[subs[i]],
                         int(frames[i]))

    def release(self) -> None:
        """Give the frames back now (otherwise the next recv() does)."""
        self._src._release_held()
