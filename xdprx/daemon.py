"""`xdprx run`: the receive loop as a daemon on one interface queue."""
from __future__ import annotations

import json
import signal
import sys
import time
from typing import TextIO

from .control import ControlServer
from .receiver import Receiver


def format_line(st: dict, prev: dict | None, dt: float) -> str:
    r = st["receiver"]
    pps = (r["packets"] - prev["receiver"]["packets"]) / dt if prev else 0.0
    mbps = (r["bytes"] - prev["receiver"]["bytes"]) * 8 / dt / 1e6 if prev else 0.0
    f = st["frames"]
    return (f"rx {r['packets']:>12,d} pkts {pps:>12,.0f} pps {mbps:>9.1f} Mb/s | "
            f"drops {st['drops']:,d} | passed to kernel {st['xdp']['passed']:,d} | "
            f"frames free {f['free']} kernel {f['kernel']} held {f['held']}")


class Daemon:
    def __init__(self, rx: Receiver, control: str | None, out: TextIO = sys.stdout,
                 interval: float = 1.0, json_lines: bool = False) -> None:
        self.rx = rx
        self.out = out
        self.interval = interval
        self.json_lines = json_lines
        self.stopping = False
        # handlers first: once the control socket exists, a signal must stop us cleanly
        self._old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.control = ControlServer(control, {"stats": self._stats}) if control else None

    def _stats(self, req: dict) -> dict:
        return {"ok": True, "stats": self.rx.stats()}

    def stop(self, *_sig) -> None:
        self.stopping = True

    def serve(self, duration: float | None = None) -> dict:
        """Receive until SIGINT/SIGTERM (or @duration s); returns final stats."""
        t0 = last = time.monotonic()
        prev = None
        try:
            print(f"xdprx: receiving on {self.rx.describe()}", file=self.out, flush=True)
            if self.control:
                print(f"xdprx: control socket {self.control.path}", file=self.out, flush=True)
            while not self.stopping:
                self.rx.recv(timeout=0.2)
                now = time.monotonic()
                if now - last >= self.interval:
                    st = self.rx.stats()
                    line = json.dumps(st) if self.json_lines else format_line(st, prev, now - last)
                    print(line, file=self.out, flush=True)
                    prev, last = st, now
                if duration is not None and now - t0 >= duration:
                    break
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)
            if self.control:
                self.control.close()
        return self.rx.stats()
