"""A minimal pcap writer (nanosecond timestamps, Ethernet link type): what
tcpdump -r and tshark -r read."""
from __future__ import annotations

import struct
import time
from typing import BinaryIO

PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1


class PcapWriter:
    def __init__(self, path: str, snaplen: int = 65535) -> None:
        self.f: BinaryIO = open(path, "wb")
        self.f.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen,
                                 LINKTYPE_ETHERNET))
        # descriptors carry CLOCK_MONOTONIC; pcap wants wall-clock time
        self._offset = time.time_ns() - time.monotonic_ns()
        self.packets = 0

    def write(self, frame: memoryview | bytes, monotonic_ns: int) -> None:
        t = monotonic_ns + self._offset
        n = len(frame)
        self.f.write(struct.pack("<IIII", t // 1_000_000_000, t % 1_000_000_000, n, n))
        self.f.write(frame)
        self.packets += 1

    def close(self) -> None:
        self.f.close()


def read(path: str) -> list[tuple[int, bytes]]:
    """(timestamp ns, frame) of every record: for tests and tools."""
    out = []
    with open(path, "rb") as f:
        magic, _, _, _, _, _, link = struct.unpack("<IHHiIII", f.read(24))
        assert magic == PCAP_MAGIC_NS and link == LINKTYPE_ETHERNET
        while hdr := f.read(16):
            s, ns, incl, _orig = struct.unpack("<IIII", hdr)
            out.append((s * 1_000_000_000 + ns, f.read(incl)))
    return out
