"""Kill storms and soak runs against a real daemon (issue 16, parts 2 and 4).

    xdprx stress kill --kills 10000 --json      # python -m xdprx.testing.storm kill ...
    xdprx stress soak --seconds 600 --json

A veth pair between two xrx-* namespaces, `xdprx run` on its rx end (its log
to a file), bounded AF_XDP traffic (xdprx.Sender batches, counted), and
consumers in other processes, forked from this one: a fork server imports
xdprx and loads the consume kernels once, so a consumer costs a fork (~ms),
not a fresh interpreter (~0.6 s). A forked child keeps nothing of ours but
its report pipe: every other descriptor is closed first (an inherited copy
of someone's lifeline socket would keep that subscription alive).

kill: survivors read everything while victims subscribe, read one batch,
hold it (never release) and are SIGKILLed; afterwards every frame is back in
the pool, the consumers are the survivors, each survivor got sent = received
+ dropped (dropped 0), the daemon's descriptors are as before and its RSS
within RSS_TOLERANCE of the level after the warm-up.

soak: 16 consumers, 2 of them witnesses reading all along, 14 churning:
readers (read, then leave), stallers (read one batch, hold it, stop reading,
then leave) and dying ones (SIGKILLed holding a batch). Every clean leaver
accounts exactly (see leave_exact); RSS and descriptors are sampled and must
stay flat after the warm-up; the daemon's log must have no error lines.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time

from ..service.control import request
from . import XDPRX, VethPair, control_answers, send_cmd

GROUP = "239.9.9.9:9000"
RSS_TOLERANCE = 1 << 20      # bytes: allocator noise; a leak of a frame or a ring each kill is far more
SIZES = (18, 64)             # small payloads: the sender builds them fast, the rate is in packets
ERROR_LINE = re.compile(r"error|traceback|exception|internal", re.I)


# ---- the setup: a pair, a daemon, bounded traffic ---------------------------------
class Harness:
    """A pair and `xdprx run` on it; traffic at @rate packets/s from one
    AF_XDP sender process (at most @batch packets and @max_seconds, until
    stop_traffic()), polled from the main thread (no threads here: we fork, and a fork copies only the calling
    thread, with whatever locks the others held)."""

    def __init__(self, workdir: str, rate: int, batch: int, frames: int = 8192,
                 max_seconds: float = 3600.0, max_frames: int | None = None) -> None:
        self.workdir = workdir
        self.ctl = os.path.join(workdir, "storm.sock")
        self.logfile = os.path.join(workdir, "daemon.log")
        self.rate, self.batch, self.frames = rate, batch, frames
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self.pair: VethPair | None = None
        self.daemon: subprocess.Popen | None = None
        self.sender: subprocess.Popen | None = None
        self.sent = 0
        self.batches = 0
        self.traffic_error = ""
        self._seed = 100
        self._log = None

    def __enter__(self) -> "Harness":
        try:
            self.pair = VethPair().__enter__()
            self._log = open(self.logfile, "w")
            self.daemon = self.pair.popen(
                "rx", XDPRX + ["run", self.pair.rx_if, "--control", self.ctl, "--group", GROUP,
                               "--interval", "1", "--frames", str(self.frames)]
                + (["--max-frames", str(self.max_frames)] if self.max_frames else []),
                stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 90
            while not control_answers(self.ctl):
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not start (exit {self.daemon.poll()}): "
                                       f"{self.log()[-2000:]}")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise
        return self

    # traffic ---------------------------------------------------------------------
    def _reap_sender(self) -> None:
        out, err = self.sender.communicate(input="", timeout=60)   # EOF: stop
        try:
            self.sent += int(out.strip().splitlines()[-1])
            self.batches += 1
        except (ValueError, IndexError):
            self.traffic_error = (err or out)[-500:]
        self.sender = None

    def pump(self, on: bool = True) -> None:
        """Keep traffic flowing (@on): one sender process for the whole run
        (a fresh one per batch left gaps of seconds on a busy box), started
        here and restarted only if it ends (count or time limit reached)."""
        if self.sender is not None and self.sender.poll() is not None:
            self._reap_sender()
        if on and self.sender is None and not self.traffic_error:
            self._seed += 1
            self.sender = self.pair.popen(
                "tx", [sys.executable, "-m", "xdprx.testing.storm", "send", "--count", str(self.batch),
                       "--rate", str(self.rate), "--seed", str(self._seed),
                       "--seconds", str(self.max_seconds)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, close_fds=True)

    def stop_traffic(self) -> None:
        if self.sender is not None:
            self._reap_sender()

    # the daemon ------------------------------------------------------------------
    def stats(self) -> dict:
        return request(self.ctl, {"cmd": "stats"})["stats"]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.daemon.pid}/fd"))

    def settle_fds(self, fds: int, timeout: float = 3.0) -> int:
        """The daemon's descriptor count once at most @fds (or after @timeout)."""
        deadline = time.monotonic() + timeout
        while (n := self.fds()) > fds and time.monotonic() < deadline:
            time.sleep(0.05)
        return n

    def quiet_fds(self, seconds: float = 0.5) -> int:
        """The fewest descriptors seen over @seconds: a control connection
        (a stats request, a victim's being torn down) is counted only while
        it lasts, and must not make a baseline."""
        end = time.monotonic() + seconds
        n = self.fds()
        while time.monotonic() < end:
            time.sleep(0.02)
            n = min(n, self.fds())
        return n

    def fd_targets(self) -> list[str]:
        """What the daemon's descriptors point to (a leak names itself)."""
        out = []
        base = f"/proc/{self.daemon.pid}/fd"
        for fd in os.listdir(base):
            try:
                out.append(os.readlink(f"{base}/{fd}"))
            except OSError:
                pass
        return sorted(re.sub(r"\[\d+\]", "[*]", t) for t in out)

    def _status(self) -> dict[str, int]:
        with open(f"/proc/{self.daemon.pid}/status") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in
                    (line.split(":", 1) for line in f) if v.strip().endswith("kB")}

    def rss(self) -> int:
        """The daemon's private resident memory (VmRSS less RssShmem): what a
        leak grows. The UMEM is shared memory whose size the pool sets (it
        grows on demand and is trimmed), counted apart by shmem()."""
        s = self._status()
        return s["VmRSS"] - s.get("RssShmem", 0)

    def shmem(self) -> int:
        return self._status().get("RssShmem", 0)

    def log(self) -> str:
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def wait_settled(self, alive: set[int], timeout: float = 10.0, free: bool = True) -> dict:
        """Stats once the consumers are exactly @alive (ids) and (@free) none
        holds a frame (a reader holds its batch until its next read)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            ids = {c["id"] for c in st["consumers"]}
            if ids == alive and (not free or st["frames"]["held"] == 0) \
                    or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def close(self) -> None:
        if self.sender is not None and self.sender.poll() is None:
            self.sender.kill()
            self.sender.wait()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.pair is not None:
            self.pair.close()
            self.pair = None

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the fork server --------------------------------------------------------------
class Child:
    """A forked consumer: its pid, the pipe it reports on (JSON lines) and
    the pipe whose EOF tells it to stop."""

    def __init__(self, pid: int, report: int, stop: int, role: str) -> None:
        self.pid, self.report, self.stop_fd, self.role = pid, report, stop, role
        self.buf = b""
        self.msgs: list[dict] = []
        self.reaped = False
        self.t0 = time.monotonic()

    def read(self) -> bool:
        """Take what it wrote; False at EOF."""
        data = os.read(self.report, 65536)
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.msgs.append(json.loads(line))
        return bool(data)

    def wait_msg(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while not self.msgs:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.report], [], [], left)[0]:
                return None
            if not self.read():
                return None
        return self.msgs.pop(0)

    def tell_stop(self) -> None:
        if self.stop_fd >= 0:
            os.close(self.stop_fd)
            self.stop_fd = -1

    def kill(self) -> None:
        if not self.reaped:
            os.kill(self.pid, signal.SIGKILL)
            self.reap()

    def reap(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while not self.reaped:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.reaped = True
                self.status = status
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)   # bounded: a stuck child ends here
                deadline += 5
            time.sleep(0.002)
        self.tell_stop()
        if self.report >= 0:
            while self.read():
                pass
            os.close(self.report)
            self.report = -1
        return self.status


class ForkServer:
    """Forks consumers from a process that has xdprx loaded and warm."""

    def __init__(self, control: str) -> None:
        from ..consumer import warm
        warm()                    # once here; every child inherits the loaded kernels
        self.control = control
        self.children: list[Child] = []

    def spawn(self, role: str, **kw) -> Child:
        r, w = os.pipe()
        sr, sw = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:     # the child: never returns
            code = 1
            try:
                keep = {w, sr}
                for fd in _open_fds():
                    if fd > 2 and fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)   # our stdout is the parent's JSON result
                os.close(devnull)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                ROLES[role](self.control, w, sr, **kw)
                code = 0
            except BaseException as e:   # noqa: BLE001 - reported to the parent
                try:
                    _say(w, {"error": f"{type(e).__name__}: {e}"})
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        os.close(sr)
        c = Child(pid, r, sw, role)
        self.children.append(c)
        return c

    def close(self) -> None:
        for c in self.children:
            if not c.reaped:
                c.kill()
        self.children.clear()


def _open_fds() -> list[int]:
    return [int(x) for x in os.listdir("/proc/self/fd")]


def _say(fd: int, msg: dict) -> None:
    os.write(fd, json.dumps(msg).encode() + b"\n")


def _stopped(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])   # EOF: the parent closed it


# ---- what the children do ------------------------------------------------------------
class Tally:
    """What a consumer read: packets, first and last sequence number, gaps."""

    def __init__(self) -> None:
        self.received = self.gaps = 0
        self.first = self.last = -1

    def add(self, batch) -> None:
        n = len(batch)
        if not n:
            return
        seqs = batch.seqs
        s0, s1 = int(seqs[0]), int(seqs[n - 1])
        if self.first < 0:
            self.first = s0
        elif s0 != self.last + 1:
            self.gaps += s0 - self.last - 1
        # within a batch the sequence is increasing; any hole in it is a gap too
        self.gaps += (s1 - s0 + 1) - n
        self.last = s1
        self.received += n


def leave_exact(sub, control: str, tally: Tally, final: bool = False,
                timeout: float = 10.0) -> dict:
    """Leave so that the account closes exactly: read until the ring is
    empty, close the lifeline, keep reading until the daemon has dropped us,
    read the rest, and take the ring's counters, final now. A drop shows as a
    gap only once a later packet is read; the drops after our last packet
    (the tail: while we left, or after the traffic ended) are counted from
    the ring's drop_end, the daemon's 1 + the last sequence number it dropped
    for us. Must hold: received = delivered, gaps + tail = dropped,
    delivered + dropped = last + tail - first + 1 (every packet that arrived
    while subscribed; the first is always delivered: the ring is empty
    then); with @final (the traffic is over), last + tail = the group's last
    sequence number when there is a tail."""
    deadline = time.monotonic() + timeout
    while len(b := sub.recv(timeout=0)):
        tally.add(b)
    sub._sock.close()           # the lifeline alone: the mappings stay for the last read
    while any(c["id"] == sub.id for c in request(control, {"cmd": "stats"})["stats"]["consumers"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer {sub.id} still listed {timeout} s after leaving")
        tally.add(sub.recv(timeout=0.005))  # reading on keeps the ring from filling meanwhile
    while len(b := sub.recv(timeout=0)):
        tally.add(b)
    st = sub.stats()
    drop_end = st["drop_end"]
    tail = max(drop_end - 1 - tally.last, 0) if tally.first >= 0 else 0
    total = request(control, {"cmd": "stats"})["stats"]["group_packets"][GROUP] if final else None
    sub.close()
    return {"id": sub.id, "received": tally.received, "gaps": tally.gaps, "first": tally.first,
            "last": tally.last, "tail": tail, "drop_end": drop_end, "final_total": total,
            "delivered": st["delivered"], "dropped": st["dropped"]}


def role_hold(control: str, w: int, stop: int, ring: int = 256, wait: float = 10.0) -> None:
    """Kill-storm victim: subscribe, read one batch, hold it; report; wait to die."""
    from ..consumer import Subscriber
    sub = Subscriber(control, [GROUP], ring_size=ring, name="victim", spin=0)
    deadline = time.monotonic() + wait
    b = sub.recv(timeout=0.2)
    while not len(b) and time.monotonic() < deadline:
        b = sub.recv(timeout=0.2)
    _say(w, {"id": sub.id, "held": len(b)})
    select.select([stop], [], [], 120)   # bounded: SIGKILL comes long before


def role_read(control: str, w: int, stop: int, ring: int = 4096, life: float = 1e9,
              stall_after: float | None = None, quiet: float = 1.0) -> None:
    """Read until @life s pass or the stop pipe closes (then until @quiet s
    without packets), then leave_exact. @stall_after: stop reading after
    that many seconds, holding the last batch, until the end of @life."""
    from ..consumer import Subscriber
    sub = Subscriber(control, [GROUP], ring_size=ring, name="reader", spin=0)
    _say(w, {"id": sub.id})
    tally = Tally()
    t0 = time.monotonic()
    end = t0 + life
    last_pkt = None
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if stall_after is not None and now - t0 >= stall_after:
            if tally.received:      # stall holding a batch: sleep, not read
                select.select([stop], [], [], max(end - now, 0))
                break
        b = sub.recv(timeout=0.05)
        tally.add(b)
        if _stopped(stop):
            if len(b):
                last_pkt = now
            elif last_pkt is None or now - last_pkt > quiet:
                break
            last_pkt = last_pkt or now
        if sub.daemon_gone:
            break
    # the parent closes the stop pipe once the traffic is over
    _say(w, {"result": leave_exact(sub, control, tally, final=_stopped(stop))})


def role_die(control: str, w: int, stop: int, ring: int = 1024) -> None:
    """Read, holding each batch until the next; the parent SIGKILLs us."""
    from ..consumer import Subscriber
    sub = Subscriber(control, [GROUP], ring_size=ring, name="doomed", spin=0)
    _say(w, {"id": sub.id})
    deadline = time.monotonic() + 120
    while not _stopped(stop) and time.monotonic() < deadline:
        sub.recv(timeout=0.05)


ROLES = {"hold": role_hold, "read": role_read, "die": role_die}


def check_account(r: dict, kept_up: bool) -> list[str]:
    """What is wrong with a clean leaver's account (leave_exact)."""
    bad = []
    if r["received"] != r["delivered"]:
        bad.append(f"received {r['received']} != delivered {r['delivered']}")
    if r["gaps"] + r["tail"] != r["dropped"]:
        bad.append(f"gaps {r['gaps']} + tail {r['tail']} != dropped {r['dropped']}")
    arrived = r["last"] + r["tail"] - r["first"] + 1
    if r["first"] >= 0 and r["delivered"] + r["dropped"] != arrived:
        bad.append(f"delivered + dropped {r['delivered'] + r['dropped']} != arrived "
                   f"{arrived} (seq {r['first']}..{r['last']} + tail {r['tail']})")
    if r.get("final_total") is not None and r["tail"] and r["last"] + r["tail"] != r["final_total"] - 1:
        bad.append(f"tail {r['tail']} after seq {r['last']} does not reach the group's last "
                   f"{r['final_total'] - 1}")
    if kept_up and r["dropped"]:
        bad.append(f"dropped {r['dropped']} although it kept up")
    return [f"{r.get('kind', 'consumer')} {r['id']}: {b}" for b in bad]


def _diff(a: list[str], b: list[str]) -> list[str]:
    """@a minus @b, as multisets."""
    rest = list(b)
    out = []
    for x in a:
        if x in rest:
            rest.remove(x)
        else:
            out.append(x)
    return out


def _log_errors(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if ERROR_LINE.search(ln)]


# ---- kill storm ---------------------------------------------------------------------
def kill_storm(workdir: str, kills: int, rate: int = 50000, parallel: int = 4,
               survivors: int = 2, warmup: int | None = None, frames: int = 8192,
               timeout: float = 3600.0) -> dict:
    """@kills victims, @parallel at a time, each SIGKILLed while it holds a
    batch; traffic at @rate all along; @survivors read everything."""
    warmup = max(20, kills // 10) if warmup is None else warmup
    t_start = time.monotonic()
    problems: list[str] = []
    out: dict = {"test": "kill-storm", "kills_asked": kills, "rate": rate,
                 "parallel": parallel, "survivors": survivors}
    with Harness(workdir, rate, batch=rate * 3600, frames=frames) as h:
        fs = ForkServer(h.ctl)
        try:
            readers = [fs.spawn("read", ring=4096) for _ in range(survivors)]
            ids = {c.wait_msg(30)["id"] for c in readers}
            h.pump()
            done = held_kills = not_holding = 0
            baseline = None
            inflight: list[Child] = []
            deadline = t_start + timeout
            while done < kills and time.monotonic() < deadline:
                h.pump()
                while len(inflight) < min(parallel, kills - done):
                    inflight.append(fs.spawn("hold"))
                c = inflight.pop(0)
                msg = c.wait_msg(30)
                if msg is None or "error" in msg:
                    problems.append(f"victim {c.pid}: {msg or 'no report in 30 s'}")
                    c.kill()
                    break
                if msg["held"] > 0:
                    held_kills += 1
                else:
                    not_holding += 1
                c.kill()
                fs.children.remove(c)
                done += 1
                if done == warmup:   # the daemon's level after warm-up, settled
                    for x in inflight:
                        x.kill()
                        fs.children.remove(x)
                    inflight.clear()
                    h.wait_settled(ids, free=False)   # the survivors read: they hold some
                    baseline = {"rss": h.rss(), "fds": h.quiet_fds(), "at_kill": done,
                                "fd_targets": h.fd_targets()}
            for x in inflight:
                x.kill()
            h.stop_traffic()
            t_storm = time.monotonic() - t_start
            st = h.wait_settled(ids)
            # a control connection (our stats request) may close a moment late
            h.settle_fds(baseline["fds"] if baseline else 0)
            after = {"rss": h.rss(), "fds": h.quiet_fds(), "fd_targets": h.fd_targets()}
            listed = sorted(c["id"] for c in st["consumers"])
            for c in readers:
                c.tell_stop()
            results = []
            for c in readers:
                m = c.wait_msg(60)
                results.append(m.get("result", m) if m else {"error": "no result"})
                c.reap()
            end = h.wait_settled(set())
        finally:
            fs.close()
        log = h.log()
        out.update({
            "kills": done, "kills_holding_frames": held_kills, "kills_not_holding": not_holding,
            "seconds": round(t_storm, 1), "kills_per_second": round(done / max(t_storm, 1e-9), 1),
            "sent": h.sent, "sender_batches": h.batches, "traffic_error": h.traffic_error,
            "daemon": {"packets": st["receiver"]["packets"], "drops": st["drops"],
                       "redirected": st["xdp"]["redirected"],
                       "group_packets": st["group_packets"].get(GROUP),
                       "held_after": end["frames"]["held"],
                       "held_per_queue": [q["frames"]["held"] for q in end.get("per_queue", [])],
                       "frames": end["frames"], "consumers_after_storm": listed,
                       "consumers_at_end": len(end["consumers"])},
            "survivors_ids": sorted(ids), "survivor_results": results,
            "baseline": baseline, "after": after,
            "log_lines": log.count("\n"), "log_error_lines": _log_errors(log)[:20],
            "subscribed_lines": log.count("subscribed to"), "left_lines": log.count(" left; ")})
    problems += _kill_problems(out)
    out["problems"] = problems
    out["pass"] = not problems
    return out


def _kill_problems(o: dict) -> list[str]:
    p = []
    d = o["daemon"]
    if o["kills"] < o["kills_asked"]:
        p.append(f"{o['kills']} of {o['kills_asked']} kills done")
    if o["kills_not_holding"]:
        p.append(f"{o['kills_not_holding']} victims held no frame when killed")
    if o["traffic_error"]:
        p.append(f"traffic: {o['traffic_error']}")
    if d["held_after"] or any(d["held_per_queue"]):
        p.append(f"frames still held: {d['held_after']} ({d['held_per_queue']})")
    f = d["frames"]
    if f["free"] + f["fill"] + f["kernel"] + f["held"] != f["total"]:
        p.append(f"frames not all in one state: {f}")
    if d["consumers_after_storm"] != o["survivors_ids"]:
        p.append(f"consumers after the storm {d['consumers_after_storm']}, "
                 f"expected the survivors {o['survivors_ids']}")
    if d["consumers_at_end"]:
        p.append(f"{d['consumers_at_end']} consumers left at the end")
    if d["packets"] != o["sent"] or d["redirected"] != d["packets"] or d["drops"]:
        p.append(f"daemon: sent {o['sent']}, redirected {d['redirected']}, received "
                 f"{d['packets']}, drops {d['drops']}")
    for r in o["survivor_results"]:
        if "error" in r:
            p.append(f"survivor: {r['error']}")
            continue
        p += check_account(r, kept_up=True)
        if r["delivered"] + r["dropped"] != o["sent"]:
            p.append(f"survivor {r['id']}: delivered {r['delivered']} + dropped "
                     f"{r['dropped']} != sent {o['sent']}")
    b, a = o["baseline"], o["after"]
    if b is None:
        p.append("no baseline (fewer kills than the warm-up)")
    else:
        if a["fds"] > b["fds"]:   # fewer: a transient in the baseline, not a leak
            new, gone = _diff(a["fd_targets"], b["fd_targets"]), _diff(b["fd_targets"], a["fd_targets"])
            p.append(f"daemon descriptors {b['fds']} -> {a['fds']} (new: {new}, gone: {gone})")
        if a["rss"] - b["rss"] > RSS_TOLERANCE:
            p.append(f"daemon RSS grew {(a['rss'] - b['rss']) / 1024:.0f} KiB "
                     f"(tolerance {RSS_TOLERANCE >> 10} KiB)")
    if o["log_error_lines"]:
        p.append(f"error lines in the daemon's log: {o['log_error_lines'][:3]}")
    if o["subscribed_lines"] != o["left_lines"]:
        p.append(f"log: {o['subscribed_lines']} subscribed, {o['left_lines']} left")
    return p


# ---- soak ---------------------------------------------------------------------------
def soak(workdir: str, seconds: float, rate: int = 20000, consumers: int = 16,
         witnesses: int = 2, sample_every: float = 2.0, warmup: float | None = None,
         seed: int = 1, frames: int = 8192, max_frames: int | None = None) -> dict:
    """@seconds of traffic at @rate with @consumers consumers churning (all
    but @witnesses); RSS and descriptors sampled every @sample_every s.
    @max_frames (default: room for every consumer's ring plus the FILL
    reserve): the witnesses' no-drop claim holds only while stallers cannot
    bring the pool to its cap; at the cap every consumer, witnesses too, is
    held to a fair share (README, "Frame pool"), which a witness kept off its
    CPU for a few ms on a loaded box can exceed. Pressure is reported
    (`at_cap`), and tested apart (test_fanout.py)."""
    rng = random.Random(seed)
    warmup = min(max(seconds * 0.2, 10.0), 60.0) if warmup is None else warmup
    problems: list[str] = []
    counts = {"read": 0, "stall": 0, "die": 0}
    accounts: list[dict] = []
    samples: list[dict] = []
    if max_frames is None:
        need = witnesses * 4096 + (consumers - witnesses) * 1024 + frames // 4
        max_frames = max(frames, 1 << (need - 1).bit_length())
    with Harness(workdir, rate, batch=rate * 3600, frames=frames, max_frames=max_frames) as h:
        fs = ForkServer(h.ctl)
        try:
            fds_before = h.quiet_fds()    # no consumer yet (nor a passing control connection)
            wit = [fs.spawn("read", ring=4096) for _ in range(witnesses)]
            wit_ids = {c.wait_msg(30)["id"] for c in wit}
            h.wait_settled(wit_ids, free=False)
            per_consumer = (h.fds() - fds_before) / witnesses
            churn: list[Child | None] = [None] * (consumers - witnesses)
            deaths: dict[int, float] = {}      # pid -> when to SIGKILL

            def start(i: int) -> None:
                kind = rng.choice(("read", "stall", "die"))
                counts[kind] += 1
                life = rng.uniform(0.3, 4.0)
                if kind == "die":
                    c = fs.spawn("die")
                    deaths[c.pid] = time.monotonic() + life
                elif kind == "stall":
                    c = fs.spawn("read", ring=1024, life=life, stall_after=life * rng.random())
                else:
                    c = fs.spawn("read", ring=1024, life=life)
                c.kind = kind
                churn[i] = c

            for i in range(len(churn)):
                start(i)
            t0 = time.monotonic()
            next_sample = t0
            while time.monotonic() - t0 < seconds:
                h.pump()
                now = time.monotonic()
                if now >= next_sample:
                    # descriptors come and go with the consumers (per_consumer
                    # each: socket, ring, control page, eventfd, ...)
                    n = len(h.stats()["consumers"])
                    samples.append({"t": round(now - t0, 2), "rss": h.rss(), "shmem": h.shmem(),
                                    "fds": h.fds(),
                                    "consumers": n})
                    next_sample += sample_every
                fds = [c.report for c in churn if c is not None and c.report >= 0]
                ready = select.select(fds, [], [], 0.02)[0] if fds else []
                for i, c in enumerate(churn):
                    if c.report in ready and not c.read():
                        c.reap()              # ended (after its result)
                        for m in c.msgs:
                            if "result" in m:
                                accounts.append(dict(m["result"], kind=c.kind))
                            elif "error" in m:
                                problems.append(f"{c.kind} consumer {c.pid}: {m['error']}")
                        fs.children.remove(c)
                        start(i)
                    elif c.pid in deaths and now >= deaths[c.pid]:
                        del deaths[c.pid]
                        c.kill()
                        fs.children.remove(c)
                        start(i)
            soaked = time.monotonic() - t0
            h.stop_traffic()
            # the end: dying ones die, the others leave exactly
            for c in churn:
                if c.pid in deaths:
                    c.kill()
                else:
                    c.tell_stop()
            for c in churn + wit:
                if c.reaped:
                    continue
                c.tell_stop()
                m = c.wait_msg(60)
                while m is not None and "result" not in m and "error" not in m:
                    m = c.wait_msg(60)
                if m is None or "error" in m:
                    problems.append(f"consumer {c.pid}: {m or 'no result'}")
                elif c in wit:
                    accounts.append(dict(m["result"], kind="witness"))
                else:
                    accounts.append(dict(m["result"], kind=c.kind))
                c.reap()
            end = h.wait_settled(set())
            h.settle_fds(fds_before)
            final = {"rss": h.rss(), "fds": h.quiet_fds(), "fds_before": fds_before}
        finally:
            fs.close()
        log = h.log()
    after = [s for s in samples if s["t"] >= warmup]
    rss = [s["rss"] for s in after] + [final["rss"]]
    fdn = [s["fds"] - per_consumer * s["consumers"] for s in after] + [final["fds"]]
    witness = [a for a in accounts if a["kind"] == "witness"]
    out = {"test": "soak", "seconds": round(soaked, 1), "minutes": round(soaked / 60, 2),
           "rate": rate, "consumers": consumers, "witnesses": witnesses, "warmup_s": warmup,
           "frames": frames, "max_frames": max_frames,
           "sent": h.sent, "sender_batches": h.batches, "traffic_error": h.traffic_error,
           "churn": counts, "clean_leaves": len(accounts) - len(witness),
           # drops of churning readers (fine when exactly accounted: 16
           # processes on 2 CPUs can keep a reader off its CPU for a ring's time)
           "churn_dropped": sum(a["dropped"] for a in accounts if a["kind"] != "witness"),
           "tails": sum(1 for a in accounts if a["tail"]),
           "daemon": {"packets": end["receiver"]["packets"], "drops": end["drops"],
                      "redirected": end["xdp"]["redirected"],
                      "group_packets": end["group_packets"].get(GROUP),
                      "held": end["frames"]["held"], "frames": end["frames"],
                      "consumers_at_end": len(end["consumers"])},
           "rss_drift": max(rss) - min(rss) if rss else None,
           "rss_end_minus_warm": (final["rss"] - after[0]["rss"]) if after else None,
           "fd_drift": final["fds"] - final["fds_before"],
           "fds_per_consumer": per_consumer,
           "fd_residual_range": [min(fdn), max(fdn)] if fdn else None,
           "witnesses_results": witness, "samples": samples, "final": final,
           "log_lines": log.count("\n"), "log_error_lines": _log_errors(log)[:20],
           "subscribed_lines": log.count("subscribed to"), "left_lines": log.count(" left; ")}
    bad_accounts = [b for a in accounts
                    for b in check_account(a, kept_up=a["kind"] == "witness")]
    out["account_problems"] = len(bad_accounts)
    problems += bad_accounts[:20]
    d = out["daemon"]
    if h.traffic_error:
        problems.append(f"traffic: {h.traffic_error}")
    if d["held"] or d["consumers_at_end"]:
        problems.append(f"at the end {d['held']} frames held, {d['consumers_at_end']} consumers")
    f = d["frames"]
    if f["free"] + f["fill"] + f["kernel"] + f["held"] != f["total"]:
        problems.append(f"frames not all in one state: {f}")
    if d["packets"] != h.sent or d["redirected"] != d["packets"] or d["drops"] \
            or d["group_packets"] != h.sent:
        problems.append(f"daemon: sent {h.sent}, redirected {d['redirected']}, received "
                        f"{d['packets']} ({d['group_packets']} of {GROUP}), drops {d['drops']}")
    for a in witness:
        if a["delivered"] + a["dropped"] != h.sent or a["first"] != 0:
            problems.append(f"witness {a['id']}: {a['delivered']} + {a['dropped']} of "
                            f"{h.sent} sent, first seq {a['first']}")
    if len(witness) != witnesses:
        problems.append(f"{len(witness)} of {witnesses} witnesses reported")
    if out["rss_drift"] is None or out["rss_drift"] >= RSS_TOLERANCE:
        problems.append(f"daemon RSS drift {out['rss_drift']} B after warm-up "
                        f"(limit {RSS_TOLERANCE})")
    if out["fd_drift"] != 0:
        problems.append(f"daemon descriptors drift {out['fd_drift']} after warm-up")
    if out["log_error_lines"]:
        problems.append(f"error lines in the daemon's log: {out['log_error_lines'][:3]}")
    if out["subscribed_lines"] != out["left_lines"]:
        problems.append(f"log: {out['subscribed_lines']} subscribed, {out['left_lines']} left")
    out["problems"] = problems
    out["pass"] = not problems
    return out


def send_stream(count: int, rate: int, seconds: float, seed: int = 1) -> int:
    """AF_XDP traffic to GROUP from the tx end until stdin closes, @count
    packets or @seconds pass: one Sender, the same chunk of payloads again
    and again (the payloads are not what is checked here; the count is).
    Returns packets sent."""
    from ..sender import Sender
    from . import payloads
    chunk = payloads(seed, 2048, *SIZES)
    sent = 0
    end = time.monotonic() + seconds
    with Sender(VethPair.tx_if, queue=0, sport=40000) as tx:
        while sent < count and time.monotonic() < end and not _stopped(0):
            n = min(len(chunk), count - sent)
            sent += tx.send(GROUP, chunk[:n], rate=rate, timeout=max(end - time.monotonic(), 0.1))
    return sent


def _summary(o: dict) -> str:
    mib = 1 << 20
    if o["test"] == "kill-storm":
        b, a = o["baseline"] or {"rss": 0, "fds": 0}, o["after"]
        s = (f"kill storm: {o['kills']} SIGKILLs ({o['kills_holding_frames']} holding frames) "
             f"in {o['seconds']} s, {o['sent']} packets sent at {o['rate']}/s; daemon RSS "
             f"{b['rss'] / mib:.1f} -> {a['rss'] / mib:.1f} MiB, fds {b['fds']} -> {a['fds']}")
    else:
        s = (f"soak: {o['minutes']} min, {o['sent']} packets at {o['rate']}/s, churn {o['churn']}"
             f", {o['clean_leaves']} exact leaves; RSS drift {o['rss_drift'] / 1024:.0f} KiB, "
             f"fd drift {o['fd_drift']}")
    return s + ("; PASS" if o["pass"] else "; FAIL: " + "; ".join(o["problems"][:5]))


def main(argv: list[str] | None = None) -> int:
    import tempfile
    ap = argparse.ArgumentParser(prog="xdprx stress", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kill", help="SIGKILL consumers holding frames, traffic flowing")
    k.add_argument("--kills", type=int, default=500)
    k.add_argument("--rate", type=int, default=50000, help="packets/s offered")
    k.add_argument("--parallel", type=int, default=4, help="victims alive at a time")
    k.add_argument("--survivors", type=int, default=2)
    s = sub.add_parser("soak", help="hours of churn in minutes: leaks, drift, accounts")
    s.add_argument("--seconds", type=float, default=60.0)
    s.add_argument("--rate", type=int, default=20000, help="packets/s offered")
    s.add_argument("--consumers", type=int, default=16)
    s.add_argument("--seed", type=int, default=1)
    t = sub.add_parser("send", help="(internal) the harness's sender, in the tx namespace")
    t.add_argument("--count", type=int, required=True)
    t.add_argument("--rate", type=int, required=True)
    t.add_argument("--seconds", type=float, required=True)
    t.add_argument("--seed", type=int, default=1)
    for p in (k, s):
        p.add_argument("--json", action="store_true", help="the full result as JSON")
    a = ap.parse_args(argv)
    if a.cmd == "send":
        print(send_stream(a.count, a.rate, a.seconds, a.seed), flush=True)
        return 0
    if os.geteuid() != 0:
        print("xdprx: error: stress needs root (namespaces, XDP, AF_XDP); run it as root",
              file=sys.stderr)
        return 2
    if (a.kills if a.cmd == "kill" else a.seconds) <= 0 or a.rate <= 0:
        ap.error("counts, seconds and rates must be positive")
    with tempfile.TemporaryDirectory(prefix="xdprx-storm-") as d:
        if a.cmd == "kill":
            o = kill_storm(d, a.kills, rate=a.rate, parallel=a.parallel, survivors=a.survivors)
        else:
            o = soak(d, a.seconds, rate=a.rate, consumers=a.consumers, seed=a.seed)
    print(json.dumps(o, indent=1) if a.json else _summary(o), flush=True)
    if a.json:
        print(_summary(o), file=sys.stderr, flush=True)
    return 0 if o["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
