"""An AF_XDP socket on one (interface, queue), created through libxdp.

libxdp is told not to load its own XDP program (INHIBIT_PROG_LOAD): xdprx
attaches bpf/redirect.c itself. The bind asks for need_wakeup and lets the
kernel choose zero-copy when the driver supports it, copy otherwise; what was
chosen is read back with XDP_OPTIONS.

Several queues on one UMEM (XDP_SHARED_UMEM): the first socket (lane 0)
uses the UMEM's own FILL/COMPLETION pair; every other one is created with
xsk_socket__create_shared and a pair of its own, which the kernel ties to
its (interface, queue). The bind mode (copy / zero-copy, need_wakeup) is
inherited from the first socket.
"""
from __future__ import annotations

import ctypes
import errno as E
import os
import time

from . import native
from ..errors import ConfigError, from_errno
from ..ring import Ring
from ..umem import Umem


BUSY_WAIT = 2.0  # seconds to wait for a just-closed socket's queue


class XskSocket:
    def __init__(self, ifname: str, queue: int, umem: Umem, rx_size: int = 2048,
                 copy: str = "auto", tx_size: int = 0, lane: int = 0) -> None:
        for name, n in (("rx", rx_size), ("tx", tx_size)):
            if n < 0 or n & (n - 1):
                raise ConfigError(f"{name} ring size {n} is not a power of two", remedy="use 2048")
        if not rx_size and not tx_size:
            raise ConfigError("an AF_XDP socket needs an RX or a TX ring", remedy="use 2048")
        bind = native.XDP_USE_NEED_WAKEUP | {"auto": 0, "copy": native.XDP_COPY,
                                               "zerocopy": native.XDP_ZEROCOPY}[copy]
        self._handle = ctypes.c_void_p()
        self.rx_x = native.XskRing()
        self.tx_x = native.XskRing()
        cfg = native.XskSocketConfig(rx_size=rx_size, tx_size=tx_size,
                                     libxdp_flags=native.XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
                                     xdp_flags=0, bind_flags=bind)
        # the kernel frees a closed socket's buffer pool from a work queue: a
        # socket closed a moment ago (a restart) can still hold the queue
        deadline = time.monotonic() + BUSY_WAIT
        self.fill_x, self.comp_x = native.XskRing(), native.XskRing()
        while True:
            if lane == 0:
                err = native.libxdp.xsk_socket__create(
                    ctypes.byref(self._handle), os.fsencode(ifname), queue, umem.handle,
                    ctypes.byref(self.rx_x) if rx_size else None,
                    ctypes.byref(self.tx_x) if tx_size else None, ctypes.byref(cfg))
            else:
                err = native.libxdp.xsk_socket__create_shared(
                    ctypes.byref(self._handle), os.fsencode(ifname), queue, umem.handle,
                    ctypes.byref(self.rx_x) if rx_size else None,
                    ctypes.byref(self.tx_x) if tx_size else None,
                    ctypes.byref(self.fill_x), ctypes.byref(self.comp_x), ctypes.byref(cfg))
            if abs(err) != E.EBUSY or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if err:
            remedy = {E.EINVAL: f"does {ifname} have a queue {queue}? (ethtool -l {ifname})",
                      E.EOPNOTSUPP: "the driver has no zero-copy: use copy mode" if lane == 0
                      else f"the driver cannot share one UMEM between queues: receive "
                           f"from one queue (--queues {queue}) per xdprx",
                      E.EBUSY: f"another AF_XDP socket is bound to {ifname} queue {queue} "
                               f"(still after {BUSY_WAIT:.0f} s)"}
            raise from_errno(f"creating an AF_XDP socket on {ifname} queue {queue}", err,
                             remedy.get(abs(err), ""))
        self.fd = native.libxdp.xsk_socket__fd(self._handle)
        self.rx = Ring(self.rx_x, desc=True) if rx_size else None
        self.tx = Ring(self.tx_x, desc=True) if tx_size else None
        self.queue = queue
        self.lane = lane
        if lane:
            self.fill, self.comp = Ring(self.fill_x, desc=False), Ring(self.comp_x, desc=False)
            umem.fills[lane] = self.fill
        else:
            self.fill, self.comp = umem.fill, umem.comp
        self._umem = umem

    @property
    def zerocopy(self) -> bool:
        opts = native.getsockopt_struct(self.fd, native.SOL_XDP, native.XDP_OPTIONS,
                                        native.XdpOptions)
        return bool(opts.flags & native.XDP_OPTIONS_ZEROCOPY)

    def statistics(self) -> dict[str, int]:
        st = native.getsockopt_struct(self.fd, native.SOL_XDP, native.XDP_STATISTICS,
                                      native.XdpStatistics)
        return {name: int(getattr(st, name)) for name, _ in native.XdpStatistics._fields_}

    def close(self) -> None:
        if self._handle:
            self.rx = self.tx = self.fill = self.comp = None
            if self.lane and self._umem.fills:
                self._umem.fills[self.lane] = None
            native.libxdp.xsk_socket__delete(self._handle)
            self._handle = ctypes.c_void_p()
