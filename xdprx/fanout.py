"""The headroom-scratch descriptor: per-packet metadata, written once per frame.

FCLONE_SCRATCH (seed 000) carves clone heads out of unused space in the
packet's own buffer. xdprx does the same with the UMEM frame: the first bytes
of every frame, below the packet (the kernel leaves XDP_PACKET_HEADROOM = 256
bytes plus the configured headroom in front of it), hold the descriptor. The
receive loop writes it once; any number of consumers then read it through a
frame reference, so the per-consumer cost is one ring slot, not a copy.

Layout version 1 (little-endian, 48 bytes at frame offset 0):
    magic u16 = 0x7852 ('Rx')   version u8 = 1   flags u8
    refcnt u32        references taken at delivery (the live count, which
                      falls as holders let go, is the pool's dense `refs`
                      array: the receive thread's reap touches it per
                      delivery, umem.py)
    pkt_off u32       frame offset of the Ethernet header
    pkt_len u32       bytes of the whole frame
    payload_off u32   frame offset of the first UDP payload byte
    payload_len u32   UDP payload bytes
    sub_id u32        index of the (group, port) subscription
    _pad u32
    seq u64           per-subscription sequence number, from 0
    ts_ns u64         receive time, CLOCK_MONOTONIC ns (one value per batch)
"""
from __future__ import annotations

import numpy as np

from .kernel import native
from .errors import ConfigError

DESC_MAGIC = 0x7852
DESC_VERSION = 1
DESC = np.dtype([("magic", "<u2"), ("version", "u1"), ("flags", "u1"),
                 ("refcnt", "<u4"), ("pkt_off", "<u4"), ("pkt_len", "<u4"),
                 ("payload_off", "<u4"), ("payload_len", "<u4"), ("sub_id", "<u4"),
                 ("_pad", "<u4"), ("seq", "<u8"), ("ts_ns", "<u8")])
DESC_SIZE = DESC.itemsize
# u32 word / u64 word indices inside the descriptor, for the kernels
W_HEAD, W_REFCNT, W_PKT_OFF, W_PKT_LEN, W_PAYLOAD_OFF, W_PAYLOAD_LEN, W_SUB = range(7)
Q_SEQ, Q_TS = 4, 5
assert DESC.fields["seq"][1] == Q_SEQ * 8 and DESC.fields["ts_ns"][1] == Q_TS * 8

# Room XDP programs may use for metadata (bpf_xdp_adjust_meta) below the packet.
META_RESERVE = 32


def check_headroom(headroom: int) -> None:
    """The descriptor must fit below the packet with metadata room to spare."""
    room = native.XDP_PACKET_HEADROOM + headroom - META_RESERVE
    if DESC_SIZE > room:
        raise ConfigError(f"descriptor ({DESC_SIZE} B) does not fit the headroom ({room} B)",
                          remedy="raise the UMEM headroom")


def descriptors(area: np.ndarray, frame_size: int) -> np.ndarray:
    """A structured view of every frame's descriptor (for tests and tools)."""
    frames = len(area) // frame_size
    rows = area.reshape(frames, frame_size)[:, :DESC_SIZE]
    return np.ascontiguousarray(rows).view(DESC).reshape(frames)
