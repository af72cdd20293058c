"""Parsing and validating subscriptions: "239.1.2.3:5000", "[ff15::1]:5000"."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Group:
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @classmethod
    def parse(cls, spec: "str | Group") -> "Group":
        if isinstance(spec, Group):
            return spec
        s = str(spec).strip()
        if s.startswith("["):
            host, sep, port = s[1:].partition("]:")
        else:
            host, sep, port = s.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"group {spec!r} is not GROUP:PORT",
                              remedy="write e.g. 239.1.2.3:5000 or [ff15::1]:5000")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"group {spec!r}: {host!r} is not an IP address",
                              remedy="write e.g. 239.1.2.3:5000") from None
        if not addr.is_multicast:
            raise ConfigError(f"group {spec!r}: {addr} is not a multicast address",
                              remedy="use 224.0.0.0/4 (e.g. 239.x.y.z) or ff00::/8")
        try:
            p = int(port, 10)
        except ValueError:
            p = -1
        if not 1 <= p <= 65535:
            raise ConfigError(f"group {spec!r}: port {port!r} is not in 1..65535",
                              remedy="write e.g. 239.1.2.3:5000")
        return cls(addr, p)

    def mapped16(self) -> bytes:
        """The address as 16 bytes, IPv4 mapped into IPv6 (as the XDP map keys it)."""
        if self.addr.version == 4:
            return b"\0" * 10 + b"\xff\xff" + self.addr.packed
        return self.addr.packed

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.addr.version == 6 else f"{self.addr}:{self.port}"


def parse_groups(specs) -> list[Group]:
    groups = [Group.parse(s) for s in specs]
    if not groups:
        raise ConfigError("no group given", remedy="add --group 239.1.2.3:5000")
    if len(set(groups)) != len(groups):
        raise ConfigError("a group is given twice", remedy="list each GROUP:PORT once")
    return groups


def group_table(groups: list[Group]) -> tuple[np.ndarray, np.ndarray]:
    """(addr uint8[N,16], port uint16[N]) for the receive kernel's lookup."""
    addrs = np.zeros((max(len(groups), 1), 16), np.uint8)
    ports = np.zeros(max(len(groups), 1), np.uint16)
    for i, g in enumerate(groups):
        addrs[i] = np.frombuffer(g.mapped16(), np.uint8)
        ports[i] = g.port
    return addrs, ports
