"""The daemon's control socket: a Unix stream socket speaking JSON lines.

Request  {"cmd": "stats"}          Reply {"ok": true, "stats": {...}}, then close
Request  {"cmd": "subscribe", ...} Reply {"ok": true, ...} with four file
         descriptors (SCM_RIGHTS); the connection then stays open and is the
         subscription's lifeline: when it closes (exit, crash, SIGKILL) the
         daemon reclaims everything the consumer held.
Failures get {"ok": false, "error": "...", "errno": N, "remedy": "..."}.

Who may connect: the socket file is mode 0660, and with allowed uids/gids
every peer's credentials (SO_PEERCRED, SO_PEERGROUPS) are checked first. One
thread serves every connection through a selector, never blocking on a client:
a client that does not read its reply is dropped, and a dead subscriber is
noticed as soon as its socket closes.
"""
from __future__ import annotations

import errno as E
import grp
import json
import os
import pwd
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError, XdprxError, from_errno

DEFAULT_DIR = "/run/xdprx"
SO_PEERGROUPS = 59
MAX_REQUEST = 65536


def default_path(ifname: str) -> str:
    return os.path.join(DEFAULT_DIR, f"{ifname}.sock")


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


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler],
                 allow_uids: set[int] | None = None, allow_gids: set[int] | None = None) -> None:
        self.path = path
        self.handlers = handlers
        self.allow_uids = allow_uids or set()
        self.allow_gids = allow_gids or set()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            _claim_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o660)
            self.sock.listen(64)
        except OSError as e:
            self.sock.close()
            raise from_errno(f"control socket {path}", e.errno) from None
        self.sock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self._conns: dict[int, dict] = {}
        self.refused = 0
        self._thread = threading.Thread(target=self._serve, name="xdprx-control", daemon=True)
        self._thread.start()

    # ---- the loop ----------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data == "stop":
                    return
                if key.fileobj is self.sock:
                    self._accept()
                else:
                    self._readable(key.fileobj)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        conn.setblocking(False)
        # credentials are checked once the request is read: replying and
        # closing with the request unread would reset the connection instead
        self._conns[conn.fileno()] = {"buf": b"", "peer": peer_of(conn), "on_close": None}
        self._sel.register(conn, selectors.EVENT_READ, "conn")

    def _allowed(self, peer: Peer) -> bool:
        if not (self.allow_uids or self.allow_gids) or peer.uid in (0, os.geteuid()):
            return True
        return (peer.uid in self.allow_uids or peer.gid in self.allow_gids
                or bool(self.allow_gids.intersection(peer.groups)))

    def _readable(self, conn: socket.socket) -> None:
        st = self._conns.get(conn.fileno())
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if st is None or not chunk:
            self._drop(conn)
            return
        if st["on_close"] is not None:
            return  # a subscriber has nothing more to say; only its EOF matters
        st["buf"] += chunk
        if len(st["buf"]) > MAX_REQUEST:
            self._send(conn, Reply({"ok": False, "error": "request too long"}))
            self._drop(conn)
            return
        if not st["buf"].endswith(b"\n"):
            return
        if self._allowed(st["peer"]):
            reply = self._dispatch(st["buf"], st["peer"])
        else:
            self.refused += 1
            reply = Reply(_refusal(st["peer"]))
        sent = self._send(conn, reply)
        for fd in reply.fds:
            os.close(fd)
        if reply.on_close is not None and sent:
            st["on_close"] = reply.on_close
        else:
            if reply.on_close is not None:
                reply.on_close()
            self._drop(conn)

    def _dispatch(self, buf: bytes, peer: Peer) -> Reply:
        try:
            req = json.loads(buf)
            fn = self.handlers.get(req.get("cmd"))
            if fn is None:
                return Reply({"ok": False, "error": f"unknown command {req.get('cmd')!r}"})
            return fn(req, peer)
        except XdprxError as e:
            return Reply({"ok": False, "error": e.what, "errno": e.errno, "remedy": e.remedy})
        except (ValueError, AttributeError, TypeError, KeyError) as e:
            return Reply({"ok": False, "error": f"bad request: {e}"})

    def _send(self, conn: socket.socket, reply: Reply) -> bool:
        data = json.dumps(reply.body).encode() + b"\n"
        try:
            if reply.fds:
                n = socket.send_fds(conn, [data], reply.fds)
                if n < len(data):
                    conn.setblocking(True)
                    conn.settimeout(0.5)
                    conn.sendall(data[n:])
                    conn.setblocking(False)
            else:
                conn.sendall(data)
            return True
        except OSError:
            return False  # the client went away or will not read: its loss

    def _drop(self, conn: socket.socket) -> None:
        st = self._conns.pop(conn.fileno(), None)
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()
        if st and st["on_close"] is not None:
            st["on_close"]()

    def close(self) -> None:
        """Stop serving; every subscriber connection is closed (they see EOF)."""
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for key in list(self._sel.get_map().values()):
            if key.data == "conn":
                self._drop(key.fileobj)
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
    except OSError as e:
        raise from_errno(f"control socket {path} exists", e.errno,
                         "remove it, or choose another --control path") from None
    finally:
        s.close()
    raise XdprxError(f"another xdprx daemon serves {path}", E.EADDRINUSE,
                     "stop it first, or choose another --control path")


def connect(path: str, timeout: float) -> socket.socket:
    """A connected client socket, or an XdprxError that says what to do."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path)
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
    return s


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
