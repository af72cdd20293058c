"""`xdprx run`: the receive loop as a daemon on one interface queue.

The compiled receive loop (loop.rx_loop) runs on its own thread ("xdprx-rx",
GIL released, nice -10 so consumers sharing its CPU cannot starve it); the
control socket has a thread of its own; the main thread handles signals and
prints the live line. Signals stop the loop through its control word and
attention eventfd, from the handler itself. SIGHUP asks the main thread to
read the --config file again (config.reread): its groups change live
(Receiver.set_groups), consumers keep their rings."""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
from typing import Callable, TextIO

from .control import ControlServer, Peer, Reply, printable
from .notify import Notifier
from ..cring import reopen_readonly
from ..receiver import Receiver, set_nice


def format_line(st: dict, prev: dict | None, dt: float) -> str:
    r = st["receiver"]
    pps = (r["packets"] - prev["receiver"]["packets"]) / dt if prev else 0.0
    mbps = (r["bytes"] - prev["receiver"]["bytes"]) * 8 / dt / 1e6 if prev else 0.0
    wps = (r["eventfd_writes"] - prev["receiver"]["eventfd_writes"]) / dt if prev else 0.0
    f = st["frames"]
    return (f"rx {r['packets']:>12,d} pkts {pps:>12,.0f} pps {mbps:>9.1f} Mb/s | "
            f"drops {st['drops']:,d} | passed to kernel {st['xdp']['passed']:,d} | "
            f"frames free {f['free']} fill {f['fill']} kernel {f['kernel']} held {f['held']} "
            f"of {f['total']}/{f['cap']} ({f['resident_bytes'] >> 20} MiB)"
            + (f" | consumers {len(st['consumers'])}, wake-ups {wps:,.0f}/s" if st.get("consumers")
               else "")
            + (f" | numa node {st['numa']['refill_node']}" if "refill_node" in st.get("numa", {})
               else "")
            + _queue_rates(st, prev, dt))


def _queue_rates(st: dict, prev: dict | None, dt: float) -> str:
    """Several RX queues: each one's packets/s."""
    per = st.get("per_queue")
    if not per:
        return ""
    before = {q["queue"]: q["receiver"]["packets"] for q in (prev or {}).get("per_queue", [])}
    return " | queues " + " ".join(
        f"{q['queue']}:{(q['receiver']['packets'] - before[q['queue']]) / dt:,.0f}"
        if q["queue"] in before and dt > 0 else f"{q['queue']}:-" for q in per) + " pps"


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
            f"held {c['held']}/{c['quota']} wake-ups {c['wakeups']:,d} "
            f"(every {c['wake_batch']} pkts or {c['wake_usecs']} us)"
            + (f" cpu {c['cpu']} node {c['node']}" if c.get("cpu", -1) >= 0 else ""))


class Daemon:
    def __init__(self, rx: Receiver, control: str | None, out: TextIO = sys.stdout,
                 interval: float = 1.0, json_lines: bool = False,
                 allow_uids: set[int] | None = None, allow_gids: set[int] | None = None,
                 nice: int | None = -10, metrics: str | None = None,
                 reread: "Callable[[], object] | None" = None) -> None:
        """@metrics: '[ADDR:]PORT' to serve Prometheus metrics on (metrics.py).
        @reread: on SIGHUP, returns the config file's settings again
        (config.Reread) or raises ConfigError; None: no file to reload."""
        self.rx = rx
        if nice is not None:
            # every thread of the daemon, not only the receive loop's: the loop
            # needs the GIL whenever it returns, and a control or main thread
            # holding it at a lower priority than busy consumers sharing the
            # CPU would stall it for many ms (priority inversion through the
            # GIL). The threads started from here on inherit it.
            set_nice(nice)
        self.metrics = None
        if metrics is not None:
            from .metrics import MetricsServer
            self.metrics = MetricsServer(metrics, rx.stats)
        self.nice = nice
        self.notify = Notifier()     # systemd Type=notify; a no-op without NOTIFY_SOCKET
        self.out = out
        self.interval = interval
        self.json_lines = json_lines
        self.stopping = False
        self._switches = 0
        # this daemon's lifetime (its start, wall-clock ns): a restarted daemon
        # numbers every group from 0 again, so a reconnecting Subscriber needs
        # to know the numbering it reads is a new one
        self.epoch = time.time_ns()
        self.reread = reread
        self._hup = False
        # the main thread sleeps on this: a signal (or the loop ending) wakes it
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # handlers first: once the control socket exists, a signal must stop us cleanly
        self._old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._sighup)
        try:
            self.control = ControlServer(control, {"stats": self._stats,
                                                   "subscribe": self._subscribe},
                                         allow_uids, allow_gids, log=self._log) if control else None
        except BaseException:
            self._close_metrics()
            os.close(self._wake)
            raise

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _log(self, msg: str) -> None:
        print(f"xdprx: {msg}", file=self.out, flush=True)

    def _stats(self, req: dict, peer: Peer) -> Reply:
        return Reply({"ok": True, "stats": self.rx.stats()})

    def _subscribe(self, req: dict, peer: Peer) -> Reply:
        """A consumer in another process: its ring, and the UMEM read-only."""
        ring = _int(req, "ring", 2048)
        quota = _int(req, "quota", None)
        name = printable(str(req.get("name") or ""))   # client text: never a forged log line
        entries = self.rx.add_consumer(req.get("groups"), ring, quota,
                                       info={"pid": peer.pid, "uid": peer.uid, "name": name},
                                       wake_batch=_int(req, "wake_batch", None),
                                       wake_usecs=_int(req, "wake_usecs", None))
        e = entries[0]
        cid = e.ring.id
        fds: list[int] = []
        try:     # the UMEM, then (ring, control page, eventfd) per queue
            fds.append(reopen_readonly(self.rx.umem.memfd))
            for x in entries:
                fds += x.ring.reader_fds()
        except OSError:
            for fd in fds:
                os.close(fd)
            self.rx.unsubscribe(cid)
            raise
        who = f"pid {peer.pid} uid {peer.uid}" + (f" name '{name}'" if name else "")
        self._log(f"consumer {cid} ({who}) subscribed to "
                  f"{', '.join(str(self.rx.groups[s]) for s in e.subs)}")

        def gone() -> None:
            n = self.rx.unsubscribe(cid)
            self._log(f"consumer {cid} ({who}) left; {n} frame references reclaimed")
        return Reply({"ok": True, "consumer": cid, "groups": [str(g) for g in self.rx.groups],
                      "subs": e.subs, "umem_size": self.rx.umem.size,
                      "frame_size": self.rx.umem.frame_size, "ring": ring,
                      "queues": list(self.rx.queues),
                      "quota": int(e.ring.views.quota),
                      "epoch": self.epoch, "pid": os.getpid()}, fds, gone)

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
        self.rx.stop()
        self._poke()

    def _poke(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:     # closed: serve() has returned
            pass

    def _sighup(self, *_sig) -> None:
        """Only a flag: the main loop does the work (a handler may run while
        the main thread holds a receiver lock)."""
        self._hup = True
        self._poke()

    def reload(self) -> None:
        """Read the config file again (SIGHUP): apply its groups, report the
        rest. A bad file changes nothing."""
        from ..errors import XdprxError
        if self.reread is None:
            self._log("SIGHUP: no --config file; nothing to reload")
            return
        try:
            r = self.reread()
        except XdprxError as e:
            self._log(f"reload refused, nothing changed: {e}")
            return
        if r.groups is None:
            self._log("reload: --group on the command line overrides the file's groups; "
                      "they stay as they are")
        else:
            try:
                added, removed = self.rx.set_groups(r.groups)
            except XdprxError as e:     # checks first; a join/leave failing comes last
                self._log(f"reload failed: {e}")
                return
            gone = {str(g) for g in removed}
            self._log(f"reload: groups added: {', '.join(map(str, added)) or 'none'}; "
                      f"removed: {', '.join(map(str, removed)) or 'none'}; now receiving "
                      f"{', '.join(map(str, self.rx.live_groups()))}")
            if gone:
                for c in self.rx.stats()["consumers"]:
                    if set(c["groups"]) <= gone:
                        who = c.get("name") or f"pid {c.get('pid')}"
                        self._log(f"consumer {c['id']} ({who}) has none of its groups left "
                                  f"({', '.join(c['groups'])}): "
                                  f"it stays connected and receives nothing more")
        if r.restart:
            self._log(f"reload: {', '.join(r.restart)} changed in the file; "
                      f"restart xdprx run to apply (running with the old values)")

    def serve(self, duration: float | None = None) -> dict:
        """Receive until SIGINT/SIGTERM (or @duration s); returns final stats."""
        t0 = last = time.monotonic()
        prev = None
        failed: list[BaseException] = []

        def receive() -> None:
            try:
                self.rx.serve(nice=self.nice)
            except BaseException as e:   # noqa: BLE001 - reported by the main thread
                failed.append(e)
            finally:
                self.stopping = True
                self._poke()

        rx_thread = threading.Thread(target=receive, name="xdprx-rx", daemon=True)
        try:
            print(f"xdprx: receiving on {self.rx.describe()}", file=self.out, flush=True)
            if self.control:
                print(f"xdprx: control socket {self.control.path}", file=self.out, flush=True)
            if self.metrics:
                print(f"xdprx: metrics at {self.metrics.url}", file=self.out, flush=True)
            rx_thread.start()
            self.notify.ready(f"receiving on {self.rx.describe()}")
            while not self.stopping:
                now = time.monotonic()
                # the main thread pings: a receive loop that stopped answering
                # shows up as stats() timing out below, and the pings stop
                self.notify.watchdog(now)
                wait = last + self.interval - now
                if duration is not None:
                    wait = min(wait, t0 + duration - now)
                # signals and the loop's end write to _wake
                if select.select([self._wake], [], [], max(wait, 0.0))[0]:
                    os.eventfd_read(self._wake)
                if self._hup and not self.stopping:
                    self._hup = False
                    try:
                        self.reload()
                    except Exception as e:  # noqa: BLE001 - a reload never ends the daemon
                        self._log(f"reload failed: {type(e).__name__}: {e}")
                now = time.monotonic()
                if duration is not None and now - t0 >= duration:
                    break
                if now - last >= self.interval and not self.stopping:
                    st = self.rx.stats()
                    line = format_line(st, prev, now - last)
                    if self.json_lines:
                        print(json.dumps(st), file=self.out, flush=True)
                    else:
                        print(line, file=self.out, flush=True)
                    self.notify.status(line)
                    self._log_switches(st)
                    prev, last = st, now
        finally:
            self.notify.stopping("stopping: leaving groups, detaching")
            self.rx.stop()
            rx_thread.join(timeout=30)
            self._close_metrics()
            for s, h in self._old.items():
                signal.signal(s, h)
            wake, self._wake = self._wake, -1    # a late signal must not write to a reused fd
            os.close(wake)
            if self.control:
                self.control.close()
        if failed:
            raise failed[0]
        return self.rx.stats()


def _int(req: dict, key: str, default):
    """An integer field of a control request (None/absent: @default)."""
    v = req.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        from ..errors import ConfigError
        raise ConfigError(f"{key} must be an integer, not {type(v).__name__}")
    return v
