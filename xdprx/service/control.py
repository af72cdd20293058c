"""The daemon's control socket: a Unix stream socket speaking JSON lines.

Request  {"cmd": "stats"}          Reply {"ok": true, "stats": {...}}, then close
Request  {"cmd": "subscribe", ...} Reply {"ok": true, ...} with four file
         descriptors (SCM_RIGHTS); the connection then stays open and is the
         subscription's lifeline: when it closes (exit, crash, SIGKILL) the
         daemon reclaims everything the consumer held.
Request  {"cmd": "control"}        Reply {"ok": true, "control": {...}}: this
         server's own counters (connections, refusals, timeouts), then close
Failures get {"ok": false, "error": "...", "errno": N, "remedy": "..."}.

One request per connection, one reply per request: a request is one line of
UTF-8 JSON, an object with "cmd" and the fields of that command (FIELDS: a
field of the wrong type is refused, naming it; an unknown field is ignored, so
clients older or newer than the daemon keep working). Whatever a
client sends - bytes that are not UTF-8 or not JSON, JSON nested 100000 deep,
a line longer than MAX_REQUEST, a line cut short by the end of the connection -
it gets one {"ok": false, ...} reply that says what was wrong, and the
connection is closed.

Who may connect: the socket file is mode 0660, and with allowed uids/gids
every peer's credentials (SO_PEERCRED, SO_PEERGROUPS) are checked first. One
thread serves every connection through a selector, never blocking on a client:
a reply the client does not read waits in its socket (or, if it does not fit,
in our buffer for REQUEST_TIMEOUT), and a dead subscriber is noticed as soon
as its socket closes. A connection that has not sent a whole request within
REQUEST_TIMEOUT gets a timeout reply; at most max_pending() such connections
are held (the oldest is told so and closed to make room), so idle or half-open
connections can neither exhaust the daemon's descriptors nor lock out the
next client. Subscriber lifelines never time out.

Text a client chose (a consumer's name, a command, a field name) is passed
through printable() before it reaches a reply, the stats or the log: control
characters escaped, length capped, so it can never forge a log line.
"""
from __future__ import annotations

import errno as E
import grp
import json
import os
import pwd
import resource
import selectors
import socket
import struct
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError, XdprxError, from_errno

DEFAULT_DIR = "/run/xdprx"
SO_PEERGROUPS = 59
MAX_REQUEST = 65536          # bytes in one request line
REQUEST_TIMEOUT = 5.0        # s from connecting to a whole request (and its reply sent)
MAX_PENDING = 1024           # connections held that are not subscriber lifelines
NAME_MAX = 64                # characters of client-chosen text kept
LOG_PER_SECOND = 5           # refused requests logged per second (then counted)

# The fields of each command: "int" (an integer or null: the default),
# "groups" (null: all, a string, or a list of strings), "name" (a string or
# null; printable()'d). "cmd" is implied. A command not listed is not checked.
FIELDS: dict[str, dict[str, str]] = {
    "stats": {},
    "control": {},
    "subscribe": {"groups": "groups", "ring": "int", "quota": "int", "name": "name",
                  "wake_batch": "int", "wake_usecs": "int"},
}
GROUPS_MAX = 1024            # entries in a subscribe request's "groups"
GROUP_TEXT_MAX = 64          # characters in one of them ("[ffff:...:ffff]:65535" is 47)
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1


def default_path(ifname: str) -> str:
    return os.path.join(DEFAULT_DIR, f"{ifname}.sock")


def printable(text: str, cap: int = NAME_MAX) -> str:
    """@text safe for a log line: every character that does not print
    (newlines, ANSI escapes, other controls, surrogates, line separators) as
    an escape like \\n, \\x1b or \\u2028; at most @cap characters ('...' marks a cut).
    Idempotent: what it returns passes through unchanged."""
    out = []
    n = 0
    for ch in text:
        if ch.isprintable():
            s = ch
        elif ch == "\n":
            s = "\\n"
        elif ch == "\r":
            s = "\\r"
        elif ch == "\t":
            s = "\\t"
        elif ord(ch) < 0x100:
            s = f"\\x{ord(ch):02x}"
        elif ord(ch) < 0x10000:
            s = f"\\u{ord(ch):04x}"
        else:
            s = f"\\U{ord(ch):08x}"
        if n + len(s) > cap:
            while out and n + 3 > cap:
                n -= len(out.pop())
            out.append("...")
            break
        out.append(s)
        n += len(s)
    return "".join(out)


@dataclass
class Peer:
    pid: int
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)


@dataclass
class Reply:
    """What a handler returns: the JSON reply, descriptors to pass, and for a
    connection that stays open, what to do when it closes."""
    body: dict
    fds: list[int] = field(default_factory=list)
    on_close: Callable[[], None] | None = None


Handler = Callable[[dict, Peer], Reply]


class BadRequest(Exception):
    """A request the protocol cannot accept; the message says why."""

    def __init__(self, what: str, err: int = E.EINVAL,
                 remedy: str = 'send one JSON object per line, e.g. {"cmd": "stats"}') -> None:
        super().__init__(what)
        self.what, self.errno, self.remedy = what, err, remedy

    def body(self) -> dict:
        return {"ok": False, "error": self.what, "errno": self.errno, "remedy": self.remedy}


def peer_of(conn: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
        groups = list(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        groups = []
    return Peer(pid, uid, gid, groups)


def parse_ids(values: list[str], kind: str) -> set[int]:
    """--allow-uid / --allow-gid values: numbers or names."""
    out = set()
    for v in values:
        for item in filter(None, v.split(",")):
            try:
                out.add(int(item) if item.isdigit() else
                        (pwd.getpwnam(item).pw_uid if kind == "uid" else grp.getgrnam(item).gr_gid))
            except KeyError:
                raise ConfigError(f"unknown {'user' if kind == 'uid' else 'group'} {item!r}",
                                  remedy="use a name from /etc/passwd or /etc/group, or a number")
    return out


# ---- requests: bytes -> a checked dict, or BadRequest --------------------------
def _jtype(v) -> str:
    """The JSON name of @v's type, for error messages (never its value)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def parse_request(line: bytes, commands) -> tuple[str, dict]:
    """(cmd, request) from one request line (without its newline), checked
    against FIELDS; BadRequest says what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"request is not valid UTF-8 (byte 0x{line[e.start]:02x} at offset "
                         f"{e.start})") from None
    if not text.strip():
        raise BadRequest("empty request line")
    if text.startswith("\ufeff"):
        raise BadRequest("request starts with a byte order mark (U+FEFF)")
    try:
        req = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"request is not valid JSON: {e.msg} (offset {e.pos})") from None
    except RecursionError:
        raise BadRequest("request is not acceptable JSON: nested too deeply") from None
    except ValueError:   # int("9" * 5000): more digits than Python converts
        raise BadRequest("request is not acceptable JSON: a number has too many digits") from None
    if not isinstance(req, dict):
        raise BadRequest(f'request must be a JSON object like {{"cmd": "stats"}}, '
                         f"not {_jtype(req)}")
    names = ", ".join(sorted(commands))
    if "cmd" not in req:
        raise BadRequest(f'request has no "cmd" (commands: {names})')
    cmd = req["cmd"]
    if not isinstance(cmd, str):
        raise BadRequest(f'"cmd" must be a string, not {_jtype(cmd)} (commands: {names})')
    if cmd not in commands:
        raise BadRequest(f"unknown command '{printable(cmd)}' (commands: {names})")
    spec = FIELDS.get(cmd)
    if spec is not None:
        req = _check_fields(cmd, req, spec)
    return cmd, req


def _check_fields(cmd: str, req: dict, spec: dict[str, str]) -> dict:
    out = {"cmd": cmd}
    for key, v in req.items():
        if key == "cmd":
            continue
        kind = spec.get(key)
        if kind is None:
            continue   # ignored, not passed on: older and newer clients keep working
        if kind == "int":
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise BadRequest(f'"{key}" must be an integer or null, not {_jtype(v)}')
            if v is not None and not INT_MIN <= v <= INT_MAX:
                raise BadRequest(f'"{key}" is out of range (not a 64-bit integer)')
        elif kind == "name":
            if v is not None and not isinstance(v, str):
                raise BadRequest(f'"{key}" must be a string or null, not {_jtype(v)}')
            v = printable(v or "")
        elif kind == "groups":
            v = _check_groups(key, v)
        out[key] = v
    return out


def _check_groups(key: str, v):
    if v is None or isinstance(v, str):
        items = [] if v is None else [v]
    elif isinstance(v, list):
        items = v
        if not v:
            raise BadRequest(f'"{key}" is empty', remedy="name at least one group, e.g. "
                             '["239.1.2.3:5000"], or leave it out for all of them')
        if len(v) > GROUPS_MAX:
            raise BadRequest(f'"{key}" has {len(v)} entries (at most {GROUPS_MAX})')
    else:
        raise BadRequest(f'"{key}" must be a list of strings like ["239.1.2.3:5000"], '
                         f"not {_jtype(v)}")
    for i, g in enumerate(items):
        where = f'"{key}"' if isinstance(v, str) else f'"{key}"[{i}]'
        if not isinstance(g, str):
            raise BadRequest(f'{where} must be a string like "239.1.2.3:5000", not {_jtype(g)}')
        if len(g) > GROUP_TEXT_MAX:
            raise BadRequest(f"{where} is too long ({len(g)} characters) to be GROUP:PORT")
    return v


# ---- the server ---------------------------------------------------------------------
class _Conn:
    __slots__ = ("sock", "fd", "peer", "buf", "t0", "out", "on_close", "closing")

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.buf = b""
        self.t0 = time.monotonic()
        self.out = b""            # reply bytes the socket did not take yet
        self.on_close: Callable[[], None] | None = None   # set: a lifeline
        self.closing = False      # replied; close once @out is sent


def max_pending() -> int:
    """How many connections without a lifeline we hold: MAX_PENDING, or a
    quarter of the descriptor limit if that is lower (at least 16)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_PENDING
    return max(16, min(MAX_PENDING, soft // 4))


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler],
                 allow_uids: set[int] | None = None, allow_gids: set[int] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        """@log: where refused requests and internal errors are reported
        (one line each, printable(), at most LOG_PER_SECOND a second)."""
        self.path = path
        self.handlers = dict(handlers)
        self.handlers.setdefault("control", self._control)
        self.allow_uids = allow_uids or set()
        self.allow_gids = allow_gids or set()
        self.log = log
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            _claim_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o660)
            self.sock.listen(4096)   # the kernel caps it at net.core.somaxconn
        except OSError as e:
            self.sock.close()
            raise from_errno(f"control socket {path}", e.errno) from None
        self.sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, "listen")
        self._listening = True
        self._resume_at = 0.0
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._conns: dict[int, _Conn] = {}
        self._pending: dict[int, _Conn] = {}   # no lifeline yet, oldest first
        self.refused = 0
        self.counts = {"accepted": 0, "requests": 0, "ok": 0, "errors": 0, "refused": 0,
                       "timed_out": 0, "evicted": 0, "too_long": 0, "unterminated": 0,
                       "accept_failures": 0, "internal_errors": 0}
        self._log_t = 0.0
        self._log_n = 0
        self._log_skipped = 0
        self._thread = threading.Thread(target=self._serve, name="xdprx-control", daemon=True)
        self._thread.start()

    # ---- the loop ----------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            for key, mask in self._sel.select(timeout=self._wait()):
                if key.data == "stop":
                    return
                try:
                    if key.data == "listen":
                        self._accept()
                    elif mask & selectors.EVENT_WRITE:
                        self._writable(key.data)
                    else:
                        self._readable(key.data)
                except Exception as e:   # noqa: BLE001 - a bug must not stop the server
                    self._internal("serving a connection", e)
                    if isinstance(key.data, _Conn):
                        self._drop(key.data)
            try:
                self._expire()
            except Exception as e:       # noqa: BLE001
                self._internal("expiring connections", e)

    def _wait(self) -> float:
        t = 1.0
        now = time.monotonic()
        if self._pending:
            oldest = next(iter(self._pending.values()))
            t = min(t, oldest.t0 + REQUEST_TIMEOUT - now)
        if not self._listening:
            t = min(t, self._resume_at - now)
        return max(t, 0.0)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            c = next(iter(self._pending.values()))
            if c.t0 + REQUEST_TIMEOUT > now:
                break
            if not c.closing:
                # its request may be waiting unread while a handler kept us busy
                self._readable(c)
                if self._conns.get(c.fd) is not c or c.closing or c.on_close is not None:
                    continue
            self.counts["timed_out"] += 1
            if c.closing:
                self._drop(c)   # it does not read its reply: its loss
            else:
                self._refuse(c, BadRequest(
                    f"no whole request line within {REQUEST_TIMEOUT:g} s", E.ETIMEDOUT,
                    "send the request, ending in a newline, right after connecting"), now=True)
        if not self._listening and now >= self._resume_at:
            self._sel.register(self.sock, selectors.EVENT_READ, "listen")
            self._listening = True
        if self._log_skipped and now - self._log_t >= 1.0:
            self._note("")

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.counts["accept_failures"] += 1
                if e.errno in (E.EMFILE, E.ENFILE, E.ENOBUFS, E.ENOMEM) and self._pending:
                    # out of descriptors: the connection that waited longest makes room
                    self._evict("the daemon ran out of file descriptors")
                    continue
                # nothing to free (or another error): stop accepting for a moment
                # rather than spin on a listening socket that stays readable
                self._sel.unregister(self.sock)
                self._listening = False
                self._resume_at = time.monotonic() + 0.1
                return
            self.counts["accepted"] += 1
            try:
                conn.setblocking(False)
                # credentials are checked once the request is read: replying and
                # closing with the request unread would reset the connection instead
                c = _Conn(conn, peer_of(conn))
            except OSError:
                conn.close()
                continue
            if len(self._pending) >= max_pending():
                self._evict(f"{len(self._pending)} connections are waiting to send a request")
            self._conns[c.fd] = c
            self._pending[c.fd] = c
            self._sel.register(conn, selectors.EVENT_READ, c)

    def _evict(self, why: str) -> None:
        c = next(iter(self._pending.values()))
        self.counts["evicted"] += 1
        if c.closing:
            self._drop(c)
        else:
            self._refuse(c, BadRequest(
                f"connection closed to make room: {why}, and this one waited longest",
                E.EBUSY, "send the request, ending in a newline, right after connecting"),
                now=True)

    def _allowed(self, peer: Peer) -> bool:
        if not (self.allow_uids or self.allow_gids) or peer.uid in (0, os.geteuid()):
            return True
        return (peer.uid in self.allow_uids or peer.gid in self.allow_gids
                or bool(self.allow_gids.intersection(peer.groups)))

    def _readable(self, c: _Conn) -> None:
        if c.on_close is not None:
            try:
                chunk = c.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:     # a subscriber has nothing more to say; only its EOF matters
                self._drop(c)
            return
        # a request: read until it is whole, refused, or the socket is empty
        while self._conns.get(c.fd) is c and not c.closing and self._take(c):
            pass

    def _take(self, c: _Conn) -> bool:
        """Read once more from @c, and answer if the request is whole, too
        long or cut short. True: the request is incomplete, read again."""
        try:
            chunk = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            chunk = b""
        if not chunk:
            if not c.buf.strip():
                self._drop(c)          # connected and left without a word
            else:
                self.counts["unterminated"] += 1
                self._refuse(c, BadRequest(
                    f"the request ended without a newline ({len(c.buf)} bytes, then the "
                    "end of the connection)", E.EPROTO,
                    "end the request line with a newline, and keep the connection open "
                    "for the reply"))
            return False
        nl = chunk.find(b"\n")
        if nl >= 0:
            nl += len(c.buf)
        c.buf += chunk
        if nl > MAX_REQUEST or (nl < 0 and len(c.buf) > MAX_REQUEST):
            self.counts["too_long"] += 1
            self._refuse(c, BadRequest(f"request too long (more than {MAX_REQUEST} bytes "
                                       "before the newline)", E.EMSGSIZE,
                                       "send one short JSON object per line"), now=True)
            return False
        if nl < 0:
            return True
        self._answer(c, c.buf[:nl])
        return False

    def _answer(self, c: _Conn, line: bytes) -> None:
        c.buf = b""
        self.counts["requests"] += 1
        if not self._allowed(c.peer):
            self.refused += 1
            self.counts["refused"] += 1
            self._finish(c, Reply(_refusal(c.peer)), "request")
            return
        cmd = "request"
        try:
            cmd, req = parse_request(line, self.handlers)
            reply = self._call(cmd, req, c.peer)
        except BadRequest as e:
            reply = Reply(e.body())
        self._finish(c, reply, cmd)

    def _call(self, cmd: str, req: dict, peer: Peer) -> Reply:
        try:
            return self.handlers[cmd](req, peer)
        except BadRequest as e:
            return Reply(e.body())
        except XdprxError as e:
            return Reply({"ok": False, "error": e.what, "errno": e.errno, "remedy": e.remedy})
        except OSError as e:
            remedy = ("the daemon is out of file descriptors: close idle connections and "
                      "consumers, or raise its limit (LimitNOFILE=)"
                      if e.errno in (E.EMFILE, E.ENFILE) else "")
            return Reply({"ok": False, "error": f"{cmd} failed: "
                          f"{os.strerror(e.errno) if e.errno else 'system error'}",
                          "errno": e.errno or E.EIO, "remedy": remedy})
        except Exception as e:   # noqa: BLE001 - a bug: the client still gets its reply
            self._internal(f"handling {cmd}", e)
            return Reply({"ok": False, "error": f"internal error while handling {cmd}; "
                          "the daemon's log has the details", "errno": E.EIO,
                          "remedy": "please report it, with that log"})

    def _control(self, req: dict, peer: Peer) -> Reply:
        return Reply({"ok": True, "control": self.stats()})

    def stats(self) -> dict:
        return dict(self.counts, open=len(self._conns), pending=len(self._pending),
                    lifelines=len(self._conns) - len(self._pending),
                    max_pending=max_pending(), request_timeout=REQUEST_TIMEOUT,
                    max_request=MAX_REQUEST)

    # ---- replies -------------------------------------------------------------------
    def _refuse(self, c: _Conn, e: BadRequest, now: bool = False) -> None:
        """Reply @e and close; with @now, close even if the reply is not all sent
        (the client is misbehaving and we want the descriptor back)."""
        self._finish(c, Reply(e.body()), "request")
        if now and c.fd in self._conns:
            self._drop(c)

    def _finish(self, c: _Conn, reply: Reply, cmd: str) -> None:
        ok = bool(reply.body.get("ok"))
        self.counts["ok" if ok else "errors"] += 1
        if not ok:
            self._note(f"control: pid {c.peer.pid} uid {c.peer.uid}: {cmd} refused: "
                       f"{reply.body.get('error')}")
        data = json.dumps(reply.body).encode() + b"\n"
        sent = 0
        try:
            if reply.fds:
                sent = socket.send_fds(c.sock, [data], reply.fds)
            else:
                sent = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0 if not reply.fds else -1   # descriptors go with the first byte or not at all
        except OSError:
            sent = -1   # the client went away: its loss
        finally:
            for fd in reply.fds:
                os.close(fd)
        if sent < 0:
            if reply.on_close is not None:
                reply.on_close()
            self._drop(c)
            return
        c.out = data[sent:]
        c.on_close = reply.on_close
        c.closing = reply.on_close is None
        if c.on_close is not None:
            self._pending.pop(c.fd, None)   # a lifeline: no timeout
        if c.out:
            self._sel.modify(c.sock, selectors.EVENT_WRITE, c)
        elif c.closing:
            self._drop(c)

    def _writable(self, c: _Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        c.out = c.out[n:]
        if c.out:
            return
        if c.closing:
            self._drop(c)
        else:
            self._sel.modify(c.sock, selectors.EVENT_READ, c)

    def _drop(self, c: _Conn) -> None:
        if self._conns.pop(c.fd, None) is None:
            return
        self._pending.pop(c.fd, None)
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        if c.on_close is not None:
            on_close, c.on_close = c.on_close, None
            try:
                on_close()
            except Exception as e:   # noqa: BLE001
                self._internal("closing a subscription", e)

    # ---- the log -------------------------------------------------------------------
    def _note(self, line: str) -> None:
        """One line to the log, printable(), at most LOG_PER_SECOND a second;
        the rest are counted and the count logged."""
        if self.log is None:
            return
        now = time.monotonic()
        if now - self._log_t >= 1.0:
            if self._log_skipped:
                self._emit(f"control: {self._log_skipped} more refused requests not logged")
            self._log_t, self._log_n, self._log_skipped = now, 0, 0
        if not line:
            return
        if self._log_n >= LOG_PER_SECOND:
            self._log_skipped += 1
            return
        self._log_n += 1
        self._emit(printable(line, 300))

    def _emit(self, line: str) -> None:
        try:
            self.log(line)
        except Exception:   # noqa: BLE001 - a broken log must not stop the server
            pass

    def _internal(self, what: str, e: BaseException) -> None:
        self.counts["internal_errors"] += 1
        if self.log is not None:
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            self._emit(f"control: internal error {what}: " + printable(tb, 4000))

    def close(self) -> None:
        """Stop serving; every subscriber connection is closed (they see EOF)."""
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for c in list(self._conns.values()):
            self._drop(c)
        self._sel.close()
        self.sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _refusal(peer: Peer) -> dict:
    return {"ok": False, "errno": E.EACCES,
            "error": f"uid {peer.uid} (gid {peer.gid}) is not allowed by this daemon",
            "remedy": "ask its operator to add you with --allow-uid or --allow-gid"}


def _claim_stale(path: str) -> None:
    """Remove a socket file left by a daemon that died; refuse a live one."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass   # its backlog is full: it lives
    except OSError as e:
        raise from_errno(f"control socket {path} exists", e.errno,
                         "remove it, or choose another --control path") from None
    finally:
        s.close()
    raise XdprxError(f"another xdprx daemon serves {path}", E.EADDRINUSE,
                     "stop it first, or choose another --control path")


def connect(path: str, timeout: float) -> socket.socket:
    """A connected client socket, or an XdprxError that says what to do. A
    daemon whose backlog is full (a storm of connections) is retried until
    @timeout: a Unix socket refuses at once with EAGAIN rather than wait."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except FileNotFoundError:
            s.close()
            raise XdprxError(f"no control socket at {path}", E.ENOENT,
                             "is `xdprx run` running? pass its --control path") from None
        except ConnectionRefusedError:
            s.close()
            raise XdprxError(f"nobody listens on {path}", E.ECONNREFUSED,
                             "the daemon has exited; start `xdprx run` again") from None
        except PermissionError:
            s.close()
            raise XdprxError(f"not allowed to connect to {path}", E.EACCES,
                             "run as root or as a member of the socket's group") from None
        except BlockingIOError:
            s.close()
            if time.monotonic() + pause > deadline:
                raise XdprxError(f"the daemon at {path} accepts no connection (its backlog "
                                 f"stayed full for {timeout:g} s)", E.EAGAIN,
                                 "it is flooded with connections, or stuck; try again") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def refused(reply: dict, what: str) -> XdprxError:
    return XdprxError(f"{what}: {reply.get('error', 'connection closed')}",
                      int(reply.get("errno") or 0), reply.get("remedy", ""))


def request(path: str, req: dict, timeout: float = 5.0) -> dict:
    s = connect(path, timeout)
    try:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    reply = json.loads(buf or b"{}")
    if not reply.get("ok"):
        raise refused(reply, "daemon refused")
    return reply
