"""ctypes declarations for libbpf, libxdp and libc: the only foreign calls.

Every function used anywhere in xdprx is declared here once, with argtypes and
restype. All of them are set-up calls (load, attach, create, query): nothing
here is ever called per packet. Kernel and library structs are declared once,
here, mirroring their C headers (named in each comment).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as E
import os
from ctypes import (POINTER, Structure, c_char_p, c_int, c_long, c_size_t,
                    c_uint, c_uint8, c_uint16, c_uint32, c_uint64, c_ulong,
                    c_void_p)

from ..errors import ConfigError, XdprxError


def _load(names: tuple[str, ...], package: str) -> ctypes.CDLL:
    for name in names:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise XdprxError(f"cannot load {names[0]}", 0,
                     f"install it: apt-get install {package} (or run ./install.sh)")


libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libbpf = _load(("libbpf.so.1", "libbpf.so"), "libbpf1")
libxdp = _load(("libxdp.so.1", "libxdp.so"), "libxdp1")

# ---- constants (linux/if_xdp.h, linux/if_link.h, linux/bpf.h) -------------
SOL_XDP = 283
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_OPTIONS_ZEROCOPY = 1 << 0
XDP_RING_NEED_WAKEUP = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3
XDP_PACKET_HEADROOM = 256
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, XDP_ATTACHED_MULTI = range(5)
BPF_XDP = 37  # enum bpf_attach_type
XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD = 1 << 0
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_HUGETLB = 0x0004


# ---- structs ---------------------------------------------------------------
class XskRing(Structure):
    """DEFINE_XSK_RING in xdp/xsk.h: both xsk_ring_prod and xsk_ring_cons."""
    _fields_ = [("cached_prod", c_uint32), ("cached_cons", c_uint32),
                ("mask", c_uint32), ("size", c_uint32),
                ("producer", c_void_p), ("consumer", c_void_p),
                ("ring", c_void_p), ("flags", c_void_p)]


class XskUmemConfig(Structure):
    """struct xsk_umem_config, xdp/xsk.h."""
    _fields_ = [("fill_size", c_uint32), ("comp_size", c_uint32),
                ("frame_size", c_uint32), ("frame_headroom", c_uint32),
                ("flags", c_uint32)]


class XskSocketConfig(Structure):
    """struct xsk_socket_config, xdp/xsk.h."""
    _fields_ = [("rx_size", c_uint32), ("tx_size", c_uint32),
                ("libxdp_flags", c_uint32), ("xdp_flags", c_uint32),
                ("bind_flags", c_uint16)]


class XdpStatistics(Structure):
    """struct xdp_statistics, linux/if_xdp.h."""
    _fields_ = [("rx_dropped", c_uint64), ("rx_invalid_descs", c_uint64),
                ("tx_invalid_descs", c_uint64), ("rx_ring_full", c_uint64),
                ("rx_fill_ring_empty_descs", c_uint64), ("tx_ring_empty_descs", c_uint64)]


class XdpOptions(Structure):
    """struct xdp_options, linux/if_xdp.h."""
    _fields_ = [("flags", c_uint32)]


class BpfLinkCreateOpts(Structure):
    """struct bpf_link_create_opts, bpf/bpf.h; the tail is kept zero."""
    _fields_ = [("sz", c_size_t), ("flags", c_uint32), ("_pad", c_uint64 * 15)]


class BpfXdpQueryOpts(Structure):
    """struct bpf_xdp_query_opts, bpf/libbpf.h (libbpf 1.1)."""
    _fields_ = [("sz", c_size_t), ("prog_id", c_uint32), ("drv_prog_id", c_uint32),
                ("hw_prog_id", c_uint32), ("skb_prog_id", c_uint32),
                ("attach_mode", c_uint8)]


class BpfProgInfo(Structure):
    """The head of struct bpf_prog_info, linux/bpf.h (type, id, tag, ...; name)."""
    _fields_ = [("type", c_uint32), ("id", c_uint32), ("tag", c_uint8 * 8),
                ("jited_prog_len", c_uint32), ("xlated_prog_len", c_uint32),
                ("jited_prog_insns", c_uint64), ("xlated_prog_insns", c_uint64),
                ("load_time", c_uint64), ("created_by_uid", c_uint32),
                ("nr_map_ids", c_uint32), ("map_ids", c_uint64),
                ("name", ctypes.c_char * 16), ("_rest", c_uint8 * 256)]


def _decl(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


# ---- libbpf: object, program, map, link, xdp query -------------------------
_decl(libbpf, "bpf_object__open_file", c_void_p, c_char_p, c_void_p)
_decl(libbpf, "bpf_object__load", c_int, c_void_p)
_decl(libbpf, "bpf_object__close", None, c_void_p)
_decl(libbpf, "bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p)
_decl(libbpf, "bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)
_decl(libbpf, "bpf_program__fd", c_int, c_void_p)
_decl(libbpf, "bpf_map__fd", c_int, c_void_p)
_decl(libbpf, "bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
_decl(libbpf, "bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
_decl(libbpf, "bpf_map_delete_elem", c_int, c_int, c_void_p)
_decl(libbpf, "bpf_link_create", c_int, c_int, c_int, c_uint, POINTER(BpfLinkCreateOpts))
_decl(libbpf, "bpf_xdp_query", c_int, c_int, c_int, POINTER(BpfXdpQueryOpts))
_decl(libbpf, "bpf_prog_get_fd_by_id", c_int, c_uint32)
_decl(libbpf, "bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, POINTER(c_uint32))
_decl(libbpf, "libbpf_num_possible_cpus", c_int)
_decl(libbpf, "libbpf_set_print", c_void_p, c_void_p)

# ---- libxdp: AF_XDP umem and socket (xdp/xsk.h) ---------------------------
_decl(libxdp, "xsk_umem__create", c_int, POINTER(c_void_p), c_void_p, c_uint64,
      POINTER(XskRing), POINTER(XskRing), POINTER(XskUmemConfig))
_decl(libxdp, "xsk_umem__delete", c_int, c_void_p)
_decl(libxdp, "xsk_umem__fd", c_int, c_void_p)
_decl(libxdp, "xsk_socket__create", c_int, POINTER(c_void_p), c_char_p, c_uint32,
      c_void_p, POINTER(XskRing), POINTER(XskRing), POINTER(XskSocketConfig))
_decl(libxdp, "xsk_socket__create_shared", c_int, POINTER(c_void_p), c_char_p, c_uint32,
      c_void_p, POINTER(XskRing), POINTER(XskRing), POINTER(XskRing), POINTER(XskRing),
      POINTER(XskSocketConfig))
_decl(libxdp, "xsk_socket__delete", None, c_void_p)
_decl(libxdp, "xsk_socket__fd", c_int, c_void_p)

# ---- libc: memory, sockets options, namespaces -----------------------------
_decl(libc, "memfd_create", c_int, c_char_p, c_uint)
_decl(libc, "getsockopt", c_int, c_int, c_int, c_int, c_void_p, POINTER(c_uint32))
_decl(libc, "mmap", c_void_p, c_void_p, c_size_t, c_int, c_int, c_int, c_long)
_decl(libc, "munmap", c_int, c_void_p, c_size_t)
_decl(libc, "madvise", c_int, c_void_p, c_size_t, c_int)
_decl(libc, "setns", c_int, c_int, c_int)
_decl(libc, "if_nametoindex", c_uint, c_char_p)
_decl(libc, "getcpu", c_int, POINTER(c_uint), POINTER(c_uint))
_decl(libc, "prctl", c_int, c_int, c_ulong, c_ulong, c_ulong, c_ulong)
_decl(libc, "ioctl", c_int, c_int, c_ulong, c_void_p)
PR_SET_TIMERSLACK = 29

# ---- NUMA memory policy (linux/mempolicy.h): raw syscalls, no libnuma ------
MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE = 0, 1, 2, 3
MPOL_F_NODE, MPOL_F_ADDR = 1 << 0, 1 << 1
MPOL_MF_STRICT = 1 << 0
_SYSNO = {"x86_64": (237, 239, 279), "aarch64": (235, 236, 239)}.get(os.uname().machine)


def _syscall(nr: int | None, *argtypes):
    """A typed prototype of syscall(2) for one syscall number."""
    proto = ctypes.CFUNCTYPE(c_long, c_long, *argtypes, use_errno=True)(("syscall", libc))
    return (lambda *a: proto(nr, *a)) if nr is not None else None


# mbind(addr, len, mode, nodemask, maxnode, flags)
sys_mbind = _syscall(_SYSNO and _SYSNO[0], c_void_p, c_ulong, c_int, POINTER(c_ulong), c_ulong,
                     c_uint)
# get_mempolicy(&mode, nodemask, maxnode, addr, flags)
sys_get_mempolicy = _syscall(_SYSNO and _SYSNO[1], POINTER(c_int), POINTER(c_ulong), c_ulong,
                             c_void_p, c_ulong)
# move_pages(pid, count, pages, nodes, status, flags): nodes NULL = query only
sys_move_pages = _syscall(_SYSNO and _SYSNO[2], c_int, c_ulong, POINTER(c_void_p), c_void_p,
                          POINTER(c_int), c_int)

MAP_FAILED = ctypes.c_void_p(-1).value


def errno() -> int:
    return ctypes.get_errno()


def quiet_libbpf() -> None:
    """Silence libbpf's stderr chatter; xdprx reports errors itself."""
    libbpf.libbpf_set_print(None)


def getsockopt_struct(fd: int, level: int, opt: int, struct_type):
    """getsockopt into a ctypes struct; raises XdprxError on failure."""
    val = struct_type()
    ln = c_uint32(ctypes.sizeof(val))
    if libc.getsockopt(fd, level, opt, ctypes.byref(val), ctypes.byref(ln)) != 0:
        raise XdprxError(f"getsockopt(level {level}, option {opt})", errno())
    return val


def ifindex(name: str) -> int:
    """Index of interface @name in the current network namespace, 0 if none."""
    return libc.if_nametoindex(os.fsencode(name))


def require_ifindex(name: str) -> int:
    """Index of interface @name; ConfigError with the remedy if there is none."""
    idx = ifindex(name)
    if not idx:
        raise ConfigError(f"unknown interface {name!r} in this network namespace", E.ENODEV,
                          "check the name with `ip link` (or enter its namespace first)")
    return idx
