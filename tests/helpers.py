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


def attach_foreign_xdp(pair, tmp_path) -> None:
    """Somebody else's XDP program (tests/data/xdp_pass.c, generic mode) on
    the rx end of @pair, for the tests that xdprx neither clobbers nor hides it."""
    import os
    import subprocess
    obj = tmp_path / "pass.o"
    src = os.path.join(os.path.dirname(__file__), "data", "xdp_pass.c")
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["clang", "-O2", "-target", "bpf", f"-I/usr/include/{arch}", "-c", src,
                    "-o", str(obj)], check=True)
    r = pair.run("rx", ["ip", "link", "set", "dev", pair.rx_if, "xdpgeneric", "obj", str(obj),
                        "sec", "xdp"])
    assert r.returncode == 0, r.stderr
