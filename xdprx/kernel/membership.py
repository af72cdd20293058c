"""Multicast group membership (IGMP / MLD) held by a kernel socket.

The XDP program steals the packets, but a real switch (IGMP snooping) and the
NIC's multicast filter deliver them only to a host that has joined. One UDP
socket per address family holds the memberships; closing it leaves them.
"""
from __future__ import annotations

import socket
import struct

from ..errors import from_errno
from ..groups import Group


class Membership:
    def __init__(self, ifindex: int, groups: list[Group]) -> None:
        self._socks: dict[int, socket.socket] = {}
        self.ifindex = ifindex
        try:
            for g in groups:
                self._join(ifindex, g)
        except BaseException:
            self.close()
            raise

    def _sock(self, version: int) -> socket.socket:
        if version not in self._socks:
            fam = socket.AF_INET if version == 4 else socket.AF_INET6
            self._socks[version] = socket.socket(fam, socket.SOCK_DGRAM)
        return self._socks[version]

    def _join(self, ifindex: int, g: Group, leave: bool = False) -> None:
        s = self._sock(g.addr.version)
        try:
            if g.addr.version == 4:  # struct ip_mreqn
                s.setsockopt(socket.IPPROTO_IP,
                             socket.IP_DROP_MEMBERSHIP if leave else socket.IP_ADD_MEMBERSHIP,
                             struct.pack("=4s4si", g.addr.packed, b"\0" * 4, ifindex))
            else:  # struct ipv6_mreq
                s.setsockopt(socket.IPPROTO_IPV6,
                             socket.IPV6_LEAVE_GROUP if leave else socket.IPV6_JOIN_GROUP,
                             struct.pack("=16si", g.addr.packed, ifindex))
        except OSError as e:
            raise from_errno(f"{'leaving' if leave else 'joining'} multicast group {g.addr} "
                             f"on ifindex {ifindex}", e.errno,
                             "check the interface is up and has an address of that family"
                             ) from None

    def join(self, g: Group) -> None:
        """One more group (config reload)."""
        self._join(self.ifindex, g)

    def leave(self, g: Group) -> None:
        """Leave one group (config reload); the other memberships stay."""
        self._join(self.ifindex, g, leave=True)

    def close(self) -> None:
        for s in self._socks.values():
            s.close()  # the kernel sends the leave reports
        self._socks.clear()
