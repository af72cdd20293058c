"""Fuzzing the control protocol of a real daemon (issue 16), with traffic
flowing to a subscriber all along. tests/test_control_fuzz.py uses the
pieces; the full-size run is a command:

    python -m xdprx.testing.ctlfuzz --requests 100000 --json

A veth pair between two xrx-* namespaces, `xdprx run` on its rx end (its log
to a file), a Subscriber in another process receiving a bounded multicast
stream (batches of deterministic payloads, counted and hashed), and then:
requests of every kind (random bytes, JSON that is not an object, wrong types
in every field of every command, unknown commands, invalid UTF-8, NUL bytes,
truncated, oversized and deeply nested lines, clients that never read),
thousands of half-open connections, connect storms, and the daemon's
descriptor limit lowered until accept() fails. What must hold:

- every request gets exactly one reply line, a JSON object; a refusal is
  {"ok": false, "error": ...} naming what was wrong, never a Python exception
  text; the daemon then closes the connection (a subscription's stays open)
- the daemon lives, and its descriptors and threads come back to where they were
- the subscriber gets every packet sent, bytes and order (SHA-256)
- every line of the daemon's log is one printable line
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ..service.control import FIELDS, MAX_REQUEST, REQUEST_TIMEOUT, connect, request
from . import XDPRX, VethPair, control_answers, payloads, send_cmd

GROUP = "239.7.7.7:7000"
# text that means a Python exception leaked into a reply
FORBIDDEN = ("has no attribute", "unhashable", "not subscriptable", "is not iterable",
             "Traceback", "internal error", "NoneType", "codec can't", "Exceeds the limit",
             "argument of type", "invalid literal", "object is not", "Errno")


@dataclass
class Outcome:
    raw: bytes = b""
    reply: dict | None = None
    lines: int = 0
    fds: int = 0
    closed: bool = False        # the daemon closed after its reply
    error: str = ""             # what went wrong on our side (connect, timeout)


def exchange(path: str, data: bytes, shut: bool = False, read: bool = True,
             timeout: float = 10.0) -> Outcome:
    """Send @data on a fresh connection (with @shut, then end our side) and
    read the reply: one line, descriptors closed at once. A subscription's
    connection (it stays open) is closed after its reply."""
    out = Outcome()
    try:
        s = connect(path, timeout)
    except Exception as e:   # noqa: BLE001
        out.error = f"connect: {e}"
        return out
    try:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass   # it refused in the middle of a long line: its reply waits for us
        if not read:
            return out
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                msg, fds, _, _ = socket.recv_fds(s, 1 << 20, 64)
            except ConnectionResetError:
                out.closed = True     # after the reply: it closed with our line unread
                break
            except TimeoutError:
                out.error = "timed out waiting for the reply" if not out.raw else ""
                break
            for fd in fds:
                os.close(fd)
            out.fds += len(fds)
            if not msg:
                out.closed = True
                break
            out.raw += msg
            if out.raw.endswith(b"\n") and out.fds:
                break     # a subscription: the connection is its lifeline
    finally:
        s.close()
    out.lines = out.raw.count(b"\n")
    try:
        out.reply = json.loads(out.raw.split(b"\n")[0])
    except ValueError:
        out.reply = None
    return out


def violations(o: Outcome, expect: str = "any", mention: str | None = None) -> list[str]:
    """What is wrong with @o: @expect 'ok', 'error' or 'any'; @mention: text the
    error must contain (the field or the thing that was wrong)."""
    bad = []
    if o.error:
        return [o.error]
    if o.lines != 1 or not o.raw.endswith(b"\n"):
        bad.append(f"{o.lines} reply lines: {o.raw[:200]!r}")
    r = o.reply
    if not isinstance(r, dict) or not isinstance(r.get("ok"), bool):
        return bad + [f"reply is not an object with ok: {o.raw[:200]!r}"]
    if r["ok"]:
        if expect == "error":
            bad.append(f"accepted: {o.raw[:200]!r}")
        if "consumer" in r and (o.fds < 4 or (o.fds - 1) % 3):   # UMEM + 3 per queue
            bad.append(f"subscription with {o.fds} descriptors")
        if "consumer" not in r and not o.closed:
            bad.append("connection left open after the reply")
        return bad
    err = r.get("error")
    if expect == "ok":
        bad.append(f"refused: {err!r}")
    if not isinstance(err, str) or not err:
        return bad + [f"no error text: {o.raw[:200]!r}"]
    if not err.isprintable():
        bad.append(f"unprintable error text: {err[:200]!r}")
    leaked = [f for f in FORBIDDEN if f in err]
    if leaked:
        bad.append(f"Python text in the error: {err[:200]!r}")
    if mention is not None and mention not in err:
        bad.append(f"error does not name {mention!r}: {err[:200]!r}")
    if not o.closed:
        bad.append("connection left open after an error reply")
    return bad


# ---- the request generator --------------------------------------------------------
def _rand_json(rng: random.Random, depth: int = 0):
    k = rng.randrange(9 if depth < 4 else 6)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.choice([0, -1, 1, 2047, 2048, 1 << 62, -(1 << 63), (1 << 64), 10 ** 30])
    if k == 3:
        return rng.choice([0.5, -1e300, 2.0, 1e-9])
    if k in (4, 5):
        return _rand_text(rng)
    if k in (6, 7):
        return [_rand_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_rand_text(rng): _rand_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _rand_text(rng: random.Random) -> str:
    pool = ["a", "Z", "0", " ", "\n", "\r", "\t", "\x1b[31m", "\x00", "\u2028", "\ud800",
            "é", "\U0001f600", "\\", '"', "239.1.2.3:5000", GROUP, "subscribe", "stats",
            "%s", "{}", "\x7f", "\u202e"]
    return "".join(rng.choice(pool) for _ in range(rng.randrange(8)))


def _line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


WRONG = [None, True, 1.5, "x", [], ["x"], {}, {"a": 1}, 1 << 70, -5, "239.7.7.7:7000"]


def _wrong_for(kind: str, rng: random.Random):
    """A value of the wrong type for a field of @kind."""
    if kind == "int":
        return rng.choice([True, False, 1.5, "1", [], [1], {}, {"a": 1}, 1 << 70, -(1 << 64)])
    if kind == "name":
        return rng.choice([True, 1, 1.5, [], ["a"], {}, {"a": "b"}])
    return rng.choice([True, 1, 1.5, {}, {GROUP: 1}, [], [1], [None], [[GROUP]], [{}],
                       ["x" * 100]])


def generate(rng: random.Random) -> tuple[str, bytes, bool, str, str | None]:
    """One request: (kind, bytes, shut, expect, mention)."""
    kinds = ["bytes", "json", "object", "wrong-type", "unknown-field", "unknown-cmd",
             "utf8", "nul", "truncated", "unterminated", "oversized", "deep", "bigint",
             "float", "multi", "stats", "control", "subscribe", "noread", "whitespace",
             "bom", "subscribe-bad"]
    kind = rng.choice(kinds)
    valid = {"cmd": "subscribe", "groups": [GROUP], "name": "fuzz"}
    if kind == "bytes":
        b = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        return kind, b.replace(b"\n", b"") + b"\n", False, "error", None
    if kind == "json":
        v = _rand_json(rng)
        while isinstance(v, dict):
            v = _rand_json(rng)
        return kind, _line(v), False, "error", "JSON object"
    if kind == "object":
        v = _rand_json(rng, 3)
        d = {_rand_text(rng): _rand_json(rng, 2) for _ in range(rng.randrange(4))}
        if rng.random() < 0.5:
            d["cmd"] = rng.choice(["stats", "subscribe", "control", v if not isinstance(
                v, (dict, list)) else "x"])
        return kind, _line(d), False, "any", None
    if kind == "wrong-type":
        cmd = "subscribe"
        key, fk = rng.choice(list(FIELDS[cmd].items()))
        d = dict(valid)
        d[key] = _wrong_for(fk, rng)
        return kind, _line(d), False, "error", key
    if kind == "unknown-field":
        cmd = rng.choice(list(FIELDS))
        d = {"cmd": cmd} if cmd != "subscribe" else dict(valid)
        key = rng.choice(["quta", "groupz", "x", "", "\n", "cmd2"]) + _rand_text(rng)
        d[key] = _rand_json(rng, 3)
        return kind, _line(d), False, "any", None   # ignored: the request stands
    if kind == "unknown-cmd":
        c = _rand_text(rng)
        if c in FIELDS:
            c += "?"
        return kind, _line({"cmd": c}), False, "error", "unknown command"
    if kind == "utf8":
        b = bytearray(_line(valid))
        pos = rng.randrange(len(b) - 1)
        b[pos:pos] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return kind, bytes(b), False, "error", "UTF-8"
    if kind == "nul":
        b = bytearray(_line(rng.choice([valid, {"cmd": "stats"}])))
        for _ in range(rng.randrange(1, 4)):
            b.insert(rng.randrange(len(b) - 1), 0)
        return kind, bytes(b), False, "error", None
    if kind == "truncated":
        b = _line(valid)
        return kind, b[:rng.randrange(1, len(b) - 2)] + b"\n", False, "error", None
    if kind == "unterminated":
        b = _line(rng.choice([valid, {"cmd": "stats"}]))[:-1]
        return kind, b[:rng.randrange(1, len(b) + 1)], True, "error", "without a newline"
    if kind == "oversized":
        n = rng.choice([MAX_REQUEST + 1, MAX_REQUEST + 5000, 4 * MAX_REQUEST])
        body = b'{"cmd": "stats", "pad": "' + b"x" * n + b'"}'
        return kind, body + (b"\n" if rng.random() < 0.5 else b""), False, "error", "too long"
    if kind == "deep":
        d = rng.choice([1000, 5000, 30000, 100000])
        inner = b"[" * d + b"]" * d
        if rng.random() < 0.5:
            inner = b'{"cmd": "subscribe", "groups": ' + inner + b"}"
        return kind, inner + b"\n", False, "error", None
    if kind == "bigint":
        key = rng.choice(["ring", "quota", "wake_batch", "wake_usecs"])
        digits = rng.choice([20, 400, 5000])
        return (kind, b'{"cmd": "subscribe", "groups": ["' + GROUP.encode() + b'"], "'
                + key.encode() + b'": ' + b"9" * digits + b"}\n", False, "error", None)
    if kind == "float":
        key = rng.choice(["ring", "quota", "wake_batch", "wake_usecs"])
        v = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"2048.0"])
        return (kind, b'{"cmd": "subscribe", "groups": ["' + GROUP.encode() + b'"], "'
                + key.encode() + b'": ' + v + b"}\n", False, "error", key)
    if kind == "multi":
        return kind, _line({"cmd": "stats"}) + b"junk\n" * rng.randrange(1, 50), False, "ok", None
    if kind == "stats":
        return kind, _line({"cmd": "stats"}), False, "ok", None
    if kind == "control":
        return kind, _line({"cmd": "control"}), False, "ok", None
    if kind == "subscribe":
        d = dict(valid, name=_rand_text(rng), ring=rng.choice([None, 64, 1024, 4096]))
        return kind, _line(d), False, "ok", None
    if kind == "subscribe-bad":   # right types, wrong values: the handlers' own errors
        d = dict(valid)
        key, v = rng.choice([("groups", ["239.9.9.9:1"]), ("groups", ["10.0.0.1:5"]),
                             ("groups", [GROUP, GROUP]), ("groups", ["nonsense"]),
                             ("ring", 1000), ("ring", 0), ("ring", -(1 << 63)),
                             ("quota", 0), ("quota", 1 << 62), ("wake_batch", -1),
                             ("wake_usecs", 10 ** 9), ("groups", ["239.7.7.7:0"])])
        d[key] = v
        return kind, _line(d), False, "error", None
    if kind == "noread":
        return kind, _line(rng.choice([{"cmd": "stats"}, valid, {"cmd": 5}])), False, "none", None
    if kind == "whitespace":
        return kind, rng.choice([b"\n", b"\r\n", b"   \n", b"\t\n"]), False, "error", "empty"
    return "bom", b"\xef\xbb\xbf" + _line({"cmd": "stats"}), False, "error", "byte order mark"


def fuzz(path: str, count: int, seed: int = 1, workers: int = 2,
         deadline: float | None = None) -> dict:
    """@count generated requests from @workers threads; a summary of replies
    and every violation (the first 50 in full)."""
    kinds: Counter = Counter()
    errors: Counter = Counter()
    ok = refused = 0
    bad: list[dict] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def work(w: int) -> None:
        nonlocal ok, refused
        rng = random.Random(seed * 1000 + w)
        for i in range(w, count, workers):
            if deadline is not None and time.monotonic() > deadline:
                return
            kind, data, shut, expect, mention = generate(rng)
            o = exchange(path, data, shut=shut, read=expect != "none")
            v = [] if expect == "none" else violations(o, expect, mention)
            with lock:
                kinds[kind] += 1
                if o.reply and o.reply.get("ok"):
                    ok += 1
                elif o.reply:
                    refused += 1
                    errors[_shape(str(o.reply.get("error")))] += 1
                if v:
                    bad.append({"kind": kind, "request": data[:300].decode("latin-1"),
                                "violations": v})

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    n = sum(kinds.values())
    return {"requests": n, "seconds": round(dt, 1), "per_second": round(n / dt) if dt else 0,
            "ok": ok, "refused": refused, "no_read": kinds["noread"], "kinds": dict(kinds),
            "violations": len(bad), "violation_examples": bad[:50],
            "errors": dict(errors.most_common(40))}


def _shape(err: str) -> str:
    """An error message with the client's own text and numbers blanked, to count kinds."""
    import re
    err = re.sub(r"'[^']*'", "'…'", err)
    return re.sub(r"\d+", "N", err)[:120]


# ---- connection abuse ----------------------------------------------------------------
def half_open(path: str, count: int, hold: float = REQUEST_TIMEOUT + 2.0) -> dict:
    """@count connections that send nothing or half a line and hold; while they
    are held the daemon must keep answering; each then gets one error reply."""
    conns = []
    for i in range(count):
        s = connect(path, 10.0)
        if i % 2:
            s.sendall(b'{"cmd": "sta')
        conns.append(s)
    t0 = time.monotonic()
    served = []
    while time.monotonic() - t0 < 1.0:
        a = time.monotonic()
        request(path, {"cmd": "stats"}, timeout=5.0)
        served.append(time.monotonic() - a)
    ctl = request(path, {"cmd": "control"})["control"]
    time.sleep(max(hold - (time.monotonic() - t0), 0))
    replies: Counter = Counter()
    bad = []
    for s in conns:
        s.settimeout(5.0)
        raw = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
        except OSError:
            pass
        s.close()
        try:
            r = json.loads(raw)
            replies[_shape(r["error"])] += 1
            if r["ok"] is not False or raw.count(b"\n") != 1:
                bad.append(raw[:200].decode("latin-1"))
        except (ValueError, KeyError, TypeError):
            bad.append(raw[:200].decode("latin-1"))
    return {"connections": count, "stats_while_held": len(served),
            "stats_max_ms": round(max(served) * 1000, 1), "pending_seen": ctl["pending"],
            "max_pending": ctl["max_pending"], "replies": dict(replies),
            "without_one_clear_reply": len(bad), "examples": bad[:5]}


def storm(path: str, count: int, threads: int = 4) -> dict:
    """@count connect+close from @threads threads; meanwhile stats must answer."""
    done = threading.Event()
    failures = Counter()

    def hammer(n: int) -> None:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                failures["backlog full (EAGAIN)"] += 1
            except OSError as e:
                failures[str(e)] += 1
            s.close()

    ts = [threading.Thread(target=hammer, args=(count // threads,)) for _ in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    answered, lat = 0, []
    errors = []

    def ask() -> None:
        nonlocal answered
        while not done.is_set():
            a = time.monotonic()
            try:
                request(path, {"cmd": "stats"}, timeout=10.0)
                answered += 1
                lat.append(time.monotonic() - a)
            except Exception as e:   # noqa: BLE001
                errors.append(repr(e))
    asker = threading.Thread(target=ask)
    asker.start()
    for t in ts:
        t.join()
    done.set()
    asker.join()
    dt = time.monotonic() - t0
    return {"connections": count, "seconds": round(dt, 2), "per_second": round(count / dt),
            "client_side_refusals": dict(failures), "stats_answered": answered,
            "stats_failed": len(errors), "stats_max_ms": round(max(lat, default=0) * 1000, 1),
            "errors": errors[:5]}


def never_read(path: str, count: int) -> dict:
    """@count clients send a request (control; every 10th stats, every 10th
    subscribe) and never read; half close at once, half hold their connection
    until the daemon has answered them all. Then everything is closed."""
    held = []
    for i in range(count):
        s = connect(path, 10.0)
        s.sendall(_line({"cmd": "stats"}) if i % 10 == 1 else
                  _line({"cmd": "subscribe", "groups": [GROUP], "name": f"noread-{i}"})
                  if i % 10 == 0 else _line({"cmd": "control"}))
        if i % 2:
            held.append(s)
        else:
            s.close()
    t0 = time.monotonic()
    ctl = request(path, {"cmd": "control"}, timeout=120)["control"]
    drained = time.monotonic() - t0
    for s in held:
        s.close()
    return {"clients": count, "held": len(held), "open_while_held": ctl["open"],
            "drain_seconds": round(drained, 2)}


# ---- the setup: a pair, a daemon, a subscriber, traffic ------------------------------
class Harness:
    """@rate packets/s in batches of @batch (each a sender process with its
    own seed) until stop_traffic(), at most @max_seconds."""

    def __init__(self, workdir: str, rate: int = 2000, batch: int = 2000,
                 max_seconds: float = 600.0) -> None:
        self.workdir = workdir
        self.ctl = os.path.join(workdir, "fuzz.sock")
        self.logfile = os.path.join(workdir, "daemon.log")
        self.rate, self.batch, self.max_seconds = rate, batch, max_seconds
        self.pair: VethPair | None = None
        self.daemon: subprocess.Popen | None = None
        self.consumer: subprocess.Popen | None = None
        self.batches: list[tuple[int, int]] = []   # (seed, sent)
        self._stop = threading.Event()
        self._traffic: threading.Thread | None = None
        self.traffic_error = ""

    def __enter__(self) -> "Harness":
        try:
            self.pair = VethPair().__enter__()
            self._log = open(self.logfile, "w")
            self.daemon = self.pair.popen("rx", XDPRX + ["run", self.pair.rx_if, "--control",
                                                         self.ctl, "--group", GROUP,
                                                         "--interval", "1"],
                                          stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 90
            while not control_answers(self.ctl):
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not start: {self.log()[-2000:]}")
                time.sleep(0.05)
            self.consumer = subprocess.Popen(
                [sys.executable, "-m", "xdprx.testing.ctlfuzz", "consume", "--control", self.ctl],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = self.consumer.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"consumer did not start: {line} {self.consumer.stderr.read()}")
            self._traffic = threading.Thread(target=self._send, daemon=True)
            self._traffic.start()
        except BaseException:
            self.close()
            raise
        return self

    def _send(self) -> None:
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set() and time.monotonic() - t0 < self.max_seconds:
            seed = 100 + k
            r = self.pair.run("tx", send_cmd(GROUP, self.batch, seed=seed, rate=self.rate,
                                             timeout=30))
            try:
                self.batches.append((seed, int(r.stdout.strip().splitlines()[-1])))
            except (ValueError, IndexError):
                self.traffic_error = r.stderr[-500:]
                return
            k += 1

    def pid(self) -> int:
        return self.daemon.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid()}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid()}/task"))

    def settle(self, fds: int, threads: int, timeout: float = 5.0) -> tuple[int, int]:
        """The daemon's descriptors and threads, once back to @fds/@threads (or @timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.fds(), self.threads()
            if now[0] <= fds and now[1] <= threads or time.monotonic() > deadline:
                return now
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def stop_traffic(self, timeout: float = 60.0) -> dict:
        """Stop after the current batch; the subscriber's account against what was sent."""
        self._stop.set()
        if self._traffic is not None:
            self._traffic.join(timeout=timeout)
        out, err = self.consumer.communicate(input="", timeout=timeout)
        got = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
        sent = sum(n for _, n in self.batches)
        h = hashlib.sha256()
        for seed, n in self.batches:
            h.update(b"".join(payloads(seed, self.batch)[:n]))
        g = got.get("digest", {}).get(GROUP, {})
        return {"sent": sent, "batches": len(self.batches), "rate": self.rate,
                "received": g.get("received", 0), "gaps": g.get("gaps"),
                "payload_sha256_match": g.get("sha256") == h.hexdigest(),
                "consumer_dropped": got.get("stats", {}).get("dropped"),
                "consumer_stats": got.get("stats"), "traffic_error": self.traffic_error,
                "consumer_error": got.get("error", "")}

    def close(self) -> None:
        self._stop.set()
        if self._traffic is not None:
            self._traffic.join(timeout=60)
        if self.consumer is not None and self.consumer.poll() is None:
            self.consumer.kill()
            self.consumer.wait()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self.pair is not None:
            self.pair.close()

    def __exit__(self, *exc) -> None:
        self.close()


def consume(control: str, ring: int = 8192) -> int:
    """The subscriber of Harness: prints 'ready', reads until stdin closes,
    then until 1.5 s of quiet; prints its Digest and stats as JSON."""
    from ..consumer import Subscriber
    from ..service.subscribe import Digest
    sub = Subscriber(control, [GROUP], ring_size=ring, name="ctlfuzz-stream")
    dig = Digest()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    quiet = None
    hard = time.monotonic() + 3600
    while time.monotonic() < hard:
        b = sub.recv(timeout=0.1)
        for pkt in b:
            dig.add(str(pkt.group), pkt.seq, pkt.payload)
        if len(b) or not stop.is_set():
            quiet = None
        else:
            quiet = quiet or time.monotonic()
            if time.monotonic() - quiet > 1.5:
                break
        if sub.daemon_gone:
            break
    print(json.dumps({"digest": dig.summary(), "stats": sub.stats(),
                      "daemon_gone": bool(sub.daemon_gone)}), flush=True)
    sub.close()
    return 0


def fd_exhaustion(h: Harness, idle: int = 200) -> dict:
    """Lower the daemon's descriptor limit to a few above what it has open,
    hold @idle connections (accept() fails with EMFILE), and ask: stats must
    be answered, a subscription succeed or be refused clearly. Limit restored."""
    pid = h.pid()
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (h.fds() + 8, old[1]))
        conns = [connect(h.ctl, 10.0) for _ in range(idle)]
        time.sleep(0.3)
        st = exchange(h.ctl, _line({"cmd": "stats"}))
        sub = exchange(h.ctl, _line({"cmd": "subscribe", "groups": [GROUP], "name": "emfile"}))
        ctl = request(h.ctl, {"cmd": "control"})["control"]
        for s in conns:
            s.close()
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
    return {"idle": idle, "stats": violations(st, "ok") or "answered",
            "subscribe": (sub.reply or {}).get("error") or ("subscribed" if sub.fds else sub.raw),
            "subscribe_violations": violations(sub),
            "accept_failures": ctl["accept_failures"], "evicted": ctl["evicted"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdprx.testing.ctlfuzz", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("consume")
    c.add_argument("--control", required=True)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--half-open", type=int, default=3000)
    ap.add_argument("--storm", type=int, default=20000)
    ap.add_argument("--never-read", type=int, default=500)
    ap.add_argument("--rate", type=int, default=2000, help="packets/s to the subscriber")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "consume":
        return consume(a.control)
    import tempfile
    with tempfile.TemporaryDirectory(prefix="xrx-ctlfuzz-") as d, Harness(d, rate=a.rate) as h:
        time.sleep(1.0)
        fds0, thr0 = h.fds(), h.threads()
        t0 = time.monotonic()
        rep: dict = {"command": "python -m xdprx.testing.ctlfuzz " + " ".join(argv or sys.argv[1:]),
                     "baseline": {"fds": fds0, "threads": thr0}}
        for name, phase in (("fuzz", lambda: fuzz(h.ctl, a.requests, a.seed, a.workers)),
                            ("half_open", lambda: half_open(h.ctl, a.half_open)),
                            ("storm", lambda: storm(h.ctl, a.storm)),
                            ("never_read", lambda: never_read(h.ctl, a.never_read)),
                            ("fd_exhaustion", lambda: fd_exhaustion(h))):
            t1 = time.monotonic()
            try:
                rep[name] = phase()
            except Exception as e:   # noqa: BLE001 - reported, and the run goes on
                rep[name] = {"failed": repr(e)}
            rep[name]["phase_seconds"] = round(time.monotonic() - t1, 1)
        fds1, thr1 = h.settle(fds0, thr0)
        rep["after"] = {"fds": fds1, "threads": thr1, "daemon_alive": h.daemon.poll() is None}
        rep["control"] = request(h.ctl, {"cmd": "control"})["control"]
        st = request(h.ctl, {"cmd": "stats"})["stats"]
        rep["data_path"] = h.stop_traffic()
        rep["data_path"]["daemon_drops"] = st["drops"]
        log = h.log()
        rep["log"] = {"lines": log.count("\n"),
                      "unprintable_lines": sum(not ln.isprintable() for ln in log.splitlines())}
        rep["seconds"] = round(time.monotonic() - t0, 1)
        dp = rep["data_path"]
        rep["pass"] = bool(not any("failed" in rep[k] for k in ("fuzz", "half_open", "storm",
                                                                  "never_read", "fd_exhaustion"))
                           and rep["fuzz"]["violations"] == 0
                           and rep["half_open"]["without_one_clear_reply"] == 0
                           and rep["storm"]["stats_failed"] == 0
                           and rep["fd_exhaustion"]["stats"] == "answered"
                           and not rep["fd_exhaustion"]["subscribe_violations"]
                           and (fds1, thr1) == (fds0, thr0) and rep["after"]["daemon_alive"]
                           and dp["sent"] == dp["received"] and dp["payload_sha256_match"]
                           and dp["gaps"] == 0 and rep["log"]["unprintable_lines"] == 0)
    if a.json:
        print(json.dumps(rep, indent=2))
    else:
        for k, v in rep.items():
            print(f"{k}: {v}")
    return 0 if rep["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
