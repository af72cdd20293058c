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
              "CAP_SYS_ADMIN (e.g. sudo xdprx ...)")


def from_errno(what: str, err: int, remedy: str = "") -> XdprxError:
    """The exception class that fits @err, with a default remedy for privileges."""
    err = abs(err)
    if err in (_errno.EPERM, _errno.EACCES):
        return PermissionProblem(what, err, remedy or NEED_PRIVS)
    return XdprxError(what, err, remedy)
