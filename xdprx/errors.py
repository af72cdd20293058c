"""Exceptions: every failure says what failed, the errno, and how to fix it."""
from __future__ import annotations

import errno as _errno
import os


class XdprxError(Exception):
    """A failure the user can act on: ``str(e)`` is one line with the remedy."""

    def __init__(self, what: str, err: int = 0, remedy: str = "") -> None:
        self.what = what
        self.errno = err
        self.remedy = remedy
        msg = what
        if err:
            msg += f": {os.strerror(err)} (errno {_errno.errorcode.get(err, err)})"
        if remedy:
            msg += f"; {remedy}"
        super().__init__(msg)


class ConfigError(XdprxError, ValueError):
    """Bad user input (group, port, frame count, interface name ...)."""


class PermissionProblem(XdprxError, PermissionError):
    """Missing root / capabilities."""


NEED_PRIVS = ("run as root, or grant CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and "
              "CAP_SYS_ADMIN (systemd: AmbientCapabilities=, see examples/xdprx@.service)")


def from_errno(what: str, err: int, remedy: str = "") -> XdprxError:
    """The exception class that fits @err, with a default remedy for privileges."""
    err = abs(err)
    if err in (_errno.EPERM, _errno.EACCES):
        return PermissionProblem(what, err, remedy or NEED_PRIVS)
    return XdprxError(what, err, remedy)


# capability bits (linux/capability.h)
CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_BPF = 12, 13, 21, 39


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    """Fail early, in one line, when XDP and AF_XDP set-up cannot succeed."""
    caps = effective_caps()
    have = lambda c: bool(caps >> c & 1)  # noqa: E731
    missing = [n for c, n in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW"))
               if not have(c)]
    if not (have(CAP_BPF) or have(CAP_SYS_ADMIN)):
        missing.append("CAP_BPF")
    if missing:
        raise PermissionProblem(f"missing privileges ({', '.join(missing)})", _errno.EPERM,
                                NEED_PRIVS)
