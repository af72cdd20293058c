"""The XDP program (bpf/redirect.c): build, load, attach, and its maps.

Attach is through a bpf_link: the kernel detaches the program when the last
link fd is closed, which happens when the owning process dies, even by
SIGKILL. A link attach never replaces a program someone else attached (the
kernel answers EBUSY); xdprx then says whose program is there.
"""
from __future__ import annotations

import ctypes
import errno as E
import hashlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import native
from ..errors import ConfigError, XdprxError, from_errno
from ..jit import cache_dir

SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "redirect.c"
PROG_NAME = b"xdprx_redirect"
COUNTER_NAMES = ("seen", "redirected", "passed", "malformed", "fragment", "no_socket",
                 "ext_limit")
MODES = {"native": native.XDP_FLAGS_DRV_MODE, "skb": native.XDP_FLAGS_SKB_MODE}


def build(source: Path = SOURCE) -> Path:
    """Compile redirect.c with clang (once per source version) and return the
    object's path. Cached by the source's hash under the xdprx cache dir."""
    if not source.exists():
        raise XdprxError(f"XDP program source {source} not found", E.ENOENT,
                         "reinstall xdprx from its source tree (./install.sh)")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out = cache_dir() / f"redirect-{digest}.o"
    if out.exists():
        return out
    clang = shutil.which("clang")
    if not clang:
        raise XdprxError("clang is needed to build the XDP program", E.ENOENT,
                         "apt-get install clang llvm libbpf-dev (or run ./install.sh)")
    out.parent.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("gcc") else "x86_64-linux-gnu"
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [clang, "-O2", "-g", "-Wall", "-target", "bpf", f"-I/usr/include/{arch}",
           "-c", str(source), "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise XdprxError(f"building {source.name} failed: {r.stderr.strip()[:400]}", 0,
                         "install libbpf-dev and linux-libc-dev (./install.sh)")
    os.replace(tmp, out)  # atomic: concurrent builders never see half a file
    return out


def sub_key(group: ipaddress._BaseAddress, port: int) -> bytes:
    """struct sub_key: 16-byte address (IPv4 mapped into IPv6), port (BE), pad."""
    if group.version == 4:
        addr = b"\0" * 10 + b"\xff\xff" + group.packed
    else:
        addr = group.packed
    return addr + port.to_bytes(2, "big") + b"\0\0"


@dataclass
class ForeignProgram:
    prog_id: int
    name: str
    mode: str


def attached_program(ifindex: int) -> ForeignProgram | None:
    """The XDP program attached to @ifindex (any mode), or None."""
    opts = native.BpfXdpQueryOpts(sz=ctypes.sizeof(native.BpfXdpQueryOpts))
    err = native.libbpf.bpf_xdp_query(ifindex, 0, ctypes.byref(opts))
    if err:
        raise from_errno(f"querying XDP programs on ifindex {ifindex}", err)
    for pid, mode in ((opts.drv_prog_id, "native"), (opts.skb_prog_id, "skb"),
                      (opts.hw_prog_id, "offload")):
        if pid:
            return ForeignProgram(pid, _prog_name(pid), mode)
    return None


def _prog_name(prog_id: int) -> str:
    fd = native.libbpf.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return "?"
    try:
        info = native.BpfProgInfo()
        ln = ctypes.c_uint32(ctypes.sizeof(info))
        if native.libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(ln)):
            return "?"
        return info.name.decode(errors="replace")
    finally:
        os.close(fd)


class XdpProgram:
    """redirect.c loaded into the kernel, with its maps; attach() per interface."""

    def __init__(self) -> None:
        self.link_fd = -1
        self.mode = ""
        if not os.environ.get("XDPRX_DEBUG_LIBBPF"):
            native.quiet_libbpf()
        path = build()
        self._obj = native.libbpf.bpf_object__open_file(os.fsencode(path), None)
        if not self._obj:
            raise from_errno(f"opening BPF object {path}", native.errno())
        err = native.libbpf.bpf_object__load(self._obj)
        if err:
            self.close()
            if abs(err) == E.EACCES and os.geteuid() == 0:
                raise XdprxError("the kernel verifier rejected the XDP program", abs(err),
                                 "rerun with XDPRX_DEBUG_LIBBPF=1 to see the verifier log")
            raise from_errno("loading the XDP program into the kernel", err)
        prog = native.libbpf.bpf_object__find_program_by_name(self._obj, PROG_NAME)
        self.prog_fd = native.libbpf.bpf_program__fd(prog)
        self.xsks_fd = self._map_fd(b"xsks")
        self.subs_fd = self._map_fd(b"subscriptions")
        self.counters_fd = self._map_fd(b"counters")
        self.ncpus = native.libbpf.libbpf_num_possible_cpus()

    def _map_fd(self, name: bytes) -> int:
        m = native.libbpf.bpf_object__find_map_by_name(self._obj, name)
        fd = native.libbpf.bpf_map__fd(m) if m else -1
        if fd < 0:
            raise XdprxError(f"map {name.decode()} missing from the XDP object", E.ENOENT)
        return fd

    def attach(self, ifname: str, ifindex: int, mode: str = "auto") -> str:
        """Attach through a bpf_link; returns the mode in use ("native"/"skb")."""
        if mode not in ("auto", "native", "skb"):
            raise ConfigError(f"unknown XDP mode {mode!r}", remedy="use auto, native or skb")
        tries = ["native", "skb"] if mode == "auto" else [mode]
        last = 0
        for m in tries:
            opts = native.BpfLinkCreateOpts(sz=ctypes.sizeof(native.BpfLinkCreateOpts),
                                            flags=MODES[m])
            fd = native.libbpf.bpf_link_create(self.prog_fd, ifindex, native.BPF_XDP,
                                               ctypes.byref(opts))
            if fd >= 0:
                self.link_fd, self.mode = fd, m
                return m
            last = -fd
            if last in (E.EBUSY, E.EEXIST):
                other = attached_program(ifindex)
                who = (f"program {other.name!r} (id {other.prog_id}, {other.mode} mode)"
                       if other else "another program")
                raise XdprxError(
                    f"{ifname} already has an XDP {who} that is not this xdprx's", last,
                    f"remove it first (ip link set dev {ifname} xdp off; for skb mode "
                    f"xdpgeneric off) or use another interface")
            if last in (E.EPERM, E.EACCES):
                break
        raise from_errno(f"attaching the XDP program to {ifname} in {mode} mode", last,
                         "" if last in (E.EPERM, E.EACCES) else
                         "veth: native XDP needs as many RX queues as the peer has TX queues "
                         "(ethtool -L PEER tx N), or --mode skb" if last == E.ENOSPC else
                         "try --mode skb, which every driver supports")

    def set_socket(self, queue: int, xsk_fd: int) -> None:
        key, val = ctypes.c_uint32(queue), ctypes.c_uint32(xsk_fd)
        err = native.libbpf.bpf_map_update_elem(self.xsks_fd, ctypes.byref(key),
                                                ctypes.byref(val), 0)
        if err:
            raise from_errno(f"XSKMAP update for queue {queue}", err,
                             "queue must be below 256 and the socket bound")

    def subscribe(self, group, port: int, sub_id: int) -> None:
        key = ctypes.create_string_buffer(sub_key(group, port), 20)
        val = ctypes.c_uint32(sub_id)
        err = native.libbpf.bpf_map_update_elem(self.subs_fd, key, ctypes.byref(val), 0)
        if err:
            raise from_errno(f"subscribing {group}:{port}", err)

    def unsubscribe(self, group, port: int) -> None:
        key = ctypes.create_string_buffer(sub_key(group, port), 20)
        native.libbpf.bpf_map_delete_elem(self.subs_fd, key)

    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed over CPUs."""
        out = {}
        vals = np.zeros(self.ncpus, np.uint64)
        for i, name in enumerate(COUNTER_NAMES):
            key = ctypes.c_uint32(i)
            if native.libbpf.bpf_map_lookup_elem(self.counters_fd, ctypes.byref(key),
                                                 vals.ctypes.data_as(ctypes.c_void_p)):
                raise from_errno("reading XDP counters", native.errno())
            out[name] = int(vals.sum())
        return out

    def detach(self) -> None:
        if self.link_fd >= 0:
            os.close(self.link_fd)  # the kernel detaches with the last link fd
            self.link_fd = -1

    def close(self) -> None:
        self.detach()
        if self._obj:
            native.libbpf.bpf_object__close(self._obj)
            self._obj = None
