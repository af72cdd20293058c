"""NAPI deferral: interrupt moderation for the kernel's receive work.

A NIC's driver runs its NAPI poll (XDP program, AF_XDP copy, the stack) when
the device interrupts; veth runs it whenever the sender queues a packet, so a
paced feed wakes NAPI once per packet. With `defer_hard_irqs` > 0 and
`gro_flush_timeout` T, a poll that did work re-arms a timer instead of the
interrupt: while traffic flows NAPI runs once per T and takes what came
meanwhile, like `ethtool -C IF rx-usecs`. The cost is up to T of latency.

Set per NAPI instance through the netdev generic netlink family
(NETDEV_CMD_NAPI_SET, Linux 6.13+), so it works in the caller's network
namespace (sysfs shows the namespace it was mounted in). Deferral.restore()
puts back what it found. The device-wide equivalent:
    echo 2 > /sys/class/net/IF/napi_defer_hard_irqs
    echo 50000 > /sys/class/net/IF/gro_flush_timeout
"""
from __future__ import annotations

import errno as E
import logging

from ..errors import ConfigError, from_errno

log = logging.getLogger("xdprx")

# linux/netdev.h
CMD_NAPI_GET, CMD_NAPI_SET = 11, 14
DEFER_HARD_IRQS = 2   # polls re-armed by the timer after one that did work


def _msg_class():
    from pyroute2.netlink import genlmsg

    class napimsg(genlmsg):  # NETDEV_A_NAPI_*
        nla_map = (("NETDEV_A_NAPI_UNSPEC", "none"), ("NETDEV_A_NAPI_IFINDEX", "uint32"),
                   ("NETDEV_A_NAPI_ID", "uint32"), ("NETDEV_A_NAPI_IRQ", "uint32"),
                   ("NETDEV_A_NAPI_PID", "uint32"), ("NETDEV_A_NAPI_DEFER_HARD_IRQS", "uint32"),
                   # NLA_UINT: 4 or 8 bytes, decoded by length
                   ("NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT", "cdata"))
    return napimsg


def _uint(raw) -> int:
    return int.from_bytes(bytes(raw), "little") if raw is not None else 0


class _Netdev:
    def __init__(self) -> None:
        from pyroute2.netlink.generic import GenericNetlinkSocket
        self.cls = _msg_class()
        self.s = GenericNetlinkSocket()
        try:
            self.s.bind("netdev", self.cls)
        except Exception as e:
            self.s.close()
            raise from_errno("netdev generic netlink family", E.EOPNOTSUPP,
                             f"Linux 6.13+ sets NAPI deferral per instance ({e}); or set it "
                             "device-wide: /sys/class/net/IF/napi_defer_hard_irqs and "
                             "gro_flush_timeout") from None

    def napis(self, ifindex: int) -> list[dict]:
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
        m = self.cls()
        m["cmd"], m["version"] = CMD_NAPI_GET, 1
        m["attrs"] = [("NETDEV_A_NAPI_IFINDEX", ifindex)]
        out = []
        for r in self.s.nlm_request(m, msg_type=self.s.prid, msg_flags=NLM_F_REQUEST | NLM_F_DUMP):
            if r.get_attr("NETDEV_A_NAPI_IFINDEX") != ifindex:
                continue
            out.append({"id": r.get_attr("NETDEV_A_NAPI_ID"),
                        "defer_hard_irqs": r.get_attr("NETDEV_A_NAPI_DEFER_HARD_IRQS") or 0,
                        "gro_flush_timeout": _uint(r.get_attr("NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT"))})
        return out

    def set(self, napi_id: int, defer: int, timeout_ns: int) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        m = self.cls()
        m["cmd"], m["version"] = CMD_NAPI_SET, 1
        m["attrs"] = [("NETDEV_A_NAPI_ID", napi_id), ("NETDEV_A_NAPI_DEFER_HARD_IRQS", defer),
                      ("NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT", int(timeout_ns).to_bytes(8, "little"))]
        self.s.nlm_request(m, msg_type=self.s.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK)

    def close(self) -> None:
        self.s.close()


def napis(ifindex: int) -> list[dict]:
    """The NAPI instances of @ifindex: [{id, defer_hard_irqs, gro_flush_timeout}]."""
    nd = _Netdev()
    try:
        return nd.napis(ifindex)
    finally:
        nd.close()


def check_usecs(usecs: object) -> None:
    if not isinstance(usecs, int) or isinstance(usecs, bool) or not 0 <= usecs <= 10_000:
        raise ConfigError(f"napi_defer_us {usecs!r} out of range",
                          remedy="use microseconds, 0 (off) .. 10000; 50-100 measured best "
                          "with many consumers on one core")


class Deferral:
    """NAPI deferral of @usecs on every NAPI instance of @ifindex (see the
    module's docstring); restore() puts back each instance's old values. The
    netlink socket stays open until then: NAPI ids are looked up in the
    socket's network namespace, which is the caller's now, not at close."""

    def __init__(self, ifname: str, ifindex: int, usecs: int) -> None:
        check_usecs(usecs)
        self.ifname, self.usecs, self.saved = ifname, usecs, []
        self.nd: _Netdev | None = _Netdev()
        try:
            found = self.nd.napis(ifindex)
            if not found:
                raise ConfigError(f"NAPI deferral on {ifname}: the device has no NAPI instance "
                                  "(veth has them only while an XDP program is attached or GRO "
                                  "is on)", remedy="leave napi_defer_us unset")
            for n in found:
                try:
                    self.nd.set(n["id"], DEFER_HARD_IRQS, usecs * 1000)
                except Exception as e:
                    err = getattr(e, "code", 0) or E.EIO
                    raise from_errno(f"NAPI deferral on {ifname} (NAPI {n['id']})", err,
                                     "Linux 6.13+ and CAP_NET_ADMIN; or set "
                                     f"/sys/class/net/{ifname}/napi_defer_hard_irqs and "
                                     "gro_flush_timeout yourself") from None
                self.saved.append(n)
        except BaseException:
            self.restore()
            raise
        log.info("%s: NAPI deferral %d us on %d NAPI instance(s)", ifname, usecs, len(self.saved))

    def restore(self) -> None:
        if self.nd is None:
            return
        for n in self.saved:
            try:
                self.nd.set(n["id"], n["defer_hard_irqs"], n["gro_flush_timeout"])
            except Exception:   # gone with the XDP program (veth): nothing to put back
                pass
        self.saved = []
        self.nd.close()
        self.nd = None
