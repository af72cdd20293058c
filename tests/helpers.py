"""Small helpers shared by the tests (the reusable ones live in xdprx.testing)."""
from __future__ import annotations

import time

import xdprx


def drain(rx: xdprx.Receiver, want: int, timeout: float = 20.0, idle: float = 1.0,
          sender=None) -> list[tuple[int, bytes, str]]:
    """Receive until @want packets, or @idle seconds of silence after the sender
    exited, or @timeout. Returns (seq, payload, group) for each packet."""
    got: list[tuple[int, bytes, str]] = []
    deadline = time.monotonic() + timeout
    quiet_since = None
    while len(got) < want and time.monotonic() < deadline:
        b = rx.recv(timeout=0.1)
        for pkt in b:
            got.append((pkt.seq, bytes(pkt.payload), str(pkt.group)))
        if len(b):
            quiet_since = None
        elif sender is None or sender.poll() is not None:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > idle:
                break
    return got


def xdp_attached(pair, side: str = "rx") -> str:
    """The `ip link` line of the interface if any XDP program is attached, else ''."""
    ifn = pair.rx_if if side == "rx" else pair.tx_if
    out = pair.run(side, ["ip", "-d", "link", "show", "dev", ifn]).stdout
    return out if " xdp" in out or "prog/xdp" in out else ""
