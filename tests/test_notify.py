"""xdprx.service.notify.Notifier against a fake NOTIFY_SOCKET (a bound AF_UNIX datagram socket)."""
import os
import secrets
import socket

import pytest

from xdprx.service.notify import Notifier


@pytest.fixture
def manager(tmp_path):
    """A fake service manager: (NOTIFY_SOCKET value, function returning the next datagram)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(2)

    def recv() -> dict[str, str]:
        return dict(line.split("=", 1) for line in s.recv(4096).decode().split("\n"))
    yield path, recv, s
    s.close()


def nothing_queued(s: socket.socket) -> bool:
    try:
        s.recv(4096, socket.MSG_DONTWAIT)
    except (BlockingIOError, TimeoutError):  # EAGAIN (TimeoutError when a timeout is set)
        return True
    return False


def test_ready_status_stopping(manager):
    path, recv, s = manager
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.interval is None
    assert n.ready("receiving on eth0\nqueue 0")
    assert recv() == {"READY": "1", "MAINPID": str(os.getpid()),
                      "STATUS": "receiving on eth0 queue 0"}
    assert n.status("rx 10 pps")
    assert recv() == {"STATUS": "rx 10 pps"}
    assert not n.watchdog(), "no WATCHDOG_USEC: no watchdog"
    assert n.stopping("stopping")
    assert recv() == {"STOPPING": "1", "STATUS": "stopping"}
    assert nothing_queued(s)
    n.close()


def test_watchdog_half_the_timeout(manager):
    path, recv, s = manager
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.interval == 2.0
    n.ready()
    recv()
    t = 1000.0
    n._last = t
    assert not n.watchdog(now=t + 1.9) and nothing_queued(s)
    assert n.watchdog(now=t + 2.0)
    assert recv() == {"WATCHDOG": "1"}
    assert not n.watchdog(now=t + 3.0)
    assert n.watchdog(now=t + 4.1)
    assert recv() == {"WATCHDOG": "1"}
    # a watchdog meant for another process is not ours
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000",
                     "WATCHDOG_PID": "1"}).interval is None
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000",
                     "WATCHDOG_PID": str(os.getpid())}).interval == 2.0


def test_abstract_socket_address():
    name = f"xdprx-test-{secrets.token_hex(4)}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready("up")
        assert s.recv(4096).decode().split("\n")[0] == "READY=1"
    finally:
        s.close()


def test_unset_is_a_no_op_and_a_gone_manager_is_not_fatal(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.ready("x") and not n.status("x") and not n.watchdog() and not n.stopping()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody"), "WATCHDOG_USEC": "2"})
    assert not gone.ready("x") and not gone.watchdog(now=1e9)
    assert gone.errors == 2
