"""systemd's notify protocol (sd_notify(3)) for `Type=notify` units: a plain
datagram of `KEY=VALUE` lines to $NOTIFY_SOCKET. Without that variable (not
under systemd) every call is a no-op, so the daemon can call it always.

    n = Notifier()
    n.ready("receiving on eth0 queue 0")      # READY=1, after start-up
    n.watchdog()                              # from the loop; sends when due
    n.stopping("stopping")                    # STOPPING=1, on SIGTERM
"""
from __future__ import annotations

import os
import socket
import time
from typing import Mapping


class Notifier:
    """Talks to the service manager named by @env (default: os.environ)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        # '@name' is an abstract socket; anything else a filesystem path
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.interval: float | None = None   # seconds between WATCHDOG=1, half WATCHDOG_USEC
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval = int(usec) / 2e6
        self._last = 0.0
        self._sock: socket.socket | None = None
        self.errors = 0                     # datagrams the manager did not take

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: object) -> bool:
        """One datagram of KEY=VALUE lines; False if unset or not delivered."""
        if not self.address:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self.address)
            return True
        except OSError:
            self.errors += 1  # the manager went away: never a reason to stop receiving
            return False

    def ready(self, status: str = "") -> bool:
        """Start-up done (READY=1), with a STATUS line; also MAINPID."""
        fields: dict[str, object] = {"READY": 1, "MAINPID": os.getpid()}
        if status:
            fields["STATUS"] = _one_line(status)
        self._last = time.monotonic()
        return self.send(**fields)

    def status(self, text: str) -> bool:
        """A free-form STATUS line (`systemctl status` shows it)."""
        return self.send(STATUS=_one_line(text))

    def watchdog(self, now: float | None = None) -> bool:
        """WATCHDOG=1 if the watchdog is on and half its timeout has passed since
        the last one; cheap enough to call every loop iteration."""
        if self.interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last < self.interval:
            return False
        self._last = now
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "") -> bool:
        """Shutdown begins (STOPPING=1)."""
        fields: dict[str, object] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = _one_line(status)
        return self.send(**fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
