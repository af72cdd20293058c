"""`xdprx run`: the receive loop as a daemon on one interface queue."""
from __future__ import annotations

import json
import signal
import sys
import time
from typing import TextIO

from .control import ControlServer, Peer, Reply
from .cring import reopen_readonly
from .receiver import Receiver


def format_line(st: dict, prev: dict | None, dt: float) -> str:
    r = st["receiver"]
    pps = (r["packets"] - prev["receiver"]["packets"]) / dt if prev else 0.0
    mbps = (r["bytes"] - prev["receiver"]["bytes"]) * 8 / dt / 1e6 if prev else 0.0
    f = st["frames"]
    return (f"rx {r['packets']:>12,d} pkts {pps:>12,.0f} pps {mbps:>9.1f} Mb/s | "
            f"drops {st['drops']:,d} | passed to kernel {st['xdp']['passed']:,d} | "
            f"frames free {f['free']} fill {f['fill']} kernel {f['kernel']} held {f['held']} "
            f"of {f['total']}/{f['cap']} ({f['resident_bytes'] >> 20} MiB)"
            + (f" | consumers {len(st['consumers'])}" if st.get("consumers") else "")
            + (f" | numa node {st['numa']['refill_node']}" if "refill_node" in st.get("numa", {})
               else ""))


def format_numa(n: dict) -> str:
    """The NUMA decision and the feedback behind it, for `xdprx stats`."""
    if n.get("mode") == "off":
        return f"  numa      off ({n['why']})"
    lines = [f"  numa      {n['mode']}: refill from node {n['refill_node']} ({n['why']}); "
             f"{n['switches']} switches; last window's bytes read by node: "
             + (", ".join(f"{k}: {v:.0%}" for k, v in n["last_window_share"].items()) or "none yet")]
    for p in n["pools"]:
        m = p.get("memory", {})
        lines.append(f"  pool      node {p['node']}: free {p['free']} kernel {p['kernel']} "
                     f"held {p['held']} of {p['total']}/{p['cap']}; memory {m.get('policy')} "
                     f"{m.get('policy_nodes')}, pages by node {m.get('pages_by_node')}")
    for h in n["history"]:
        lines.append(f"  switch    batch {h['batch']}: node {h['from']} -> {h['to']}: {h['why']}")
    return "\n".join(lines)


def format_consumer(c: dict) -> str:
    who = f"pid {c['pid']} uid {c['uid']}" if "pid" in c else "in-process"
    return (f"  consumer {c['id']:>3} ({who}{', ' + c['name'] if c.get('name') else ''}) "
            f"{','.join(c['groups'])}: delivered {c['delivered']:,d} dropped {c['dropped']:,d} "
            f"held {c['held']}/{c['quota']}"
            + (f" cpu {c['cpu']} node {c['node']}" if c.get("cpu", -1) >= 0 else ""))


class Daemon:
    def __init__(self, rx: Receiver, control: str | None, out: TextIO = sys.stdout,
                 interval: float = 1.0, json_lines: bool = False,
                 allow_uids: set[int] | None = None, allow_gids: set[int] | None = None) -> None:
        self.rx = rx
        self.out = out
        self.interval = interval
        self.json_lines = json_lines
        self.stopping = False
        self._switches = 0
        # handlers first: once the control socket exists, a signal must stop us cleanly
        self._old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.control = ControlServer(control, {"stats": self._stats, "subscribe": self._subscribe},
                                     allow_uids, allow_gids) if control else None

    def _log(self, msg: str) -> None:
        print(f"xdprx: {msg}", file=self.out, flush=True)

    def _stats(self, req: dict, peer: Peer) -> Reply:
        return Reply({"ok": True, "stats": self.rx.stats()})

    def _subscribe(self, req: dict, peer: Peer) -> Reply:
        """A consumer in another process: its ring, and the UMEM read-only."""
        ring = int(req.get("ring") or 2048)
        quota = req.get("quota")
        name = str(req.get("name") or "")[:64]
        e = self.rx.add_consumer(req.get("groups"), ring, None if quota is None else int(quota),
                                 info={"pid": peer.pid, "uid": peer.uid, "name": name})
        cid = e.ring.id
        try:
            fds = [reopen_readonly(self.rx.umem.memfd)] + e.ring.reader_fds()
        except OSError:
            self.rx.unsubscribe(cid)
            raise
        self._log(f"consumer {cid} (pid {peer.pid} uid {peer.uid}) subscribed to "
                  f"{', '.join(str(self.rx.groups[s]) for s in e.subs)}")

        def gone() -> None:
            n = self.rx.unsubscribe(cid)
            self._log(f"consumer {cid} (pid {peer.pid}) left; {n} frame references reclaimed")
        return Reply({"ok": True, "consumer": cid, "groups": [str(g) for g in self.rx.groups],
                      "subs": e.subs, "umem_size": self.rx.umem.size,
                      "frame_size": self.rx.umem.frame_size, "ring": ring,
                      "quota": int(e.ring.views.quota)}, fds, gone)

    def _log_switches(self, st: dict) -> None:
        """Every NUMA refill switch since the last line, with its reason."""
        n = st.get("numa", {})
        new = n.get("switches", 0) - self._switches
        for h in n.get("history", [])[-new:] if new > 0 else []:
            self._log(f"numa: refill moves from node {h['from']} to node {h['to']} "
                      f"(batch {h['batch']}): {h['why']}")
        self._switches = n.get("switches", 0)

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
                self.rx.pump(timeout=0.2)
                now = time.monotonic()
                if now - last >= self.interval:
                    st = self.rx.stats()
                    if self.json_lines:
                        print(json.dumps(st), file=self.out, flush=True)
                    else:
                        print(format_line(st, prev, now - last), file=self.out, flush=True)
                    self._log_switches(st)
                    prev, last = st, now
                if duration is not None and now - t0 >= duration:
                    break
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)
            if self.control:
                self.control.close()
        return self.rx.stats()
