"""The daemon's control socket: a Unix stream socket speaking JSON lines.

Request  {"cmd": "stats"}          Reply {"ok": true, "stats": {...}}
Unknown or malformed requests get {"ok": false, "error": "..."}; the daemon's
receive loop never waits on a client (the server runs in its own thread and
every client socket has a timeout).
"""
from __future__ import annotations

import errno as E
import json
import os
import socket
import threading
from typing import Callable

from .errors import XdprxError, from_errno

DEFAULT_DIR = "/run/xdprx"


def default_path(ifname: str) -> str:
    return os.path.join(DEFAULT_DIR, f"{ifname}.sock")


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Callable[[dict], dict]]) -> None:
        self.path = path
        self.handlers = handlers
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            _claim_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o660)
            self.sock.listen(16)
        except OSError as e:
            self.sock.close()
            raise from_errno(f"control socket {path}", e.errno) from None
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="xdprx-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    self._handle(conn)
                except (OSError, ValueError):
                    pass  # a client that misbehaves costs only itself

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        while not buf.endswith(b"\n") and len(buf) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
        try:
            req = json.loads(buf or b"{}")
            fn = self.handlers.get(req.get("cmd"))
            reply = fn(req) if fn else {"ok": False, "error": f"unknown command {req.get('cmd')!r}"}
        except (ValueError, AttributeError) as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


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


def request(path: str, req: dict, timeout: float = 5.0) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except FileNotFoundError:
        raise XdprxError(f"no control socket at {path}", E.ENOENT,
                         "is `xdprx run` running? pass its --control path") from None
    except ConnectionRefusedError:
        raise XdprxError(f"nobody listens on {path}", E.ECONNREFUSED,
                         "the daemon has exited; start `xdprx run` again") from None
    except PermissionError:
        raise XdprxError(f"not allowed to connect to {path}", E.EACCES,
                         "run as root or as a member of the socket's group") from None
    finally:
        s.close()
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise XdprxError(f"daemon refused: {reply.get('error')}")
    return reply
