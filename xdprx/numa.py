"""NUMA: where the frames live, where their readers run, and which node's
frames refill the FILL ring (seed 001: allocate receive buffers on the node
of the consumers that read them, learned from feedback).

    Topology   nodes, their CPUs, which have memory, and an interface's own
               node, read from sysfs. The root is a parameter: tests present
               a 2- or 4-node machine from a directory.
    bind       mbind(MPOL_BIND) a range of the UMEM mapping to one node before
               it is faulted in; placement() checks it afterwards with
               get_mempolicy and move_pages (not assumed).
    Policy     per queue: which node pool refills FILL. Every window it sums
               the bytes each node's readers read (consumer feedback, written
               by the consumers into their ring's CTL page, no syscall per
               packet) and picks the node that minimises cross-node bytes, i.e.
               the one whose readers read the most. It switches only after the
               same node has held a clear majority (>= `majority`) for `window`
               windows in a row: a 50/50 split or a majority that alternates
               never moves it.
"""
from __future__ import annotations

import ctypes
import errno as E
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .kernel import native
from .errors import ConfigError, XdprxError

log = logging.getLogger("xdprx")

SYSFS = "/sys"


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class Topology:
    """The machine's NUMA nodes as sysfs under @root describes them."""

    def __init__(self, root: str = SYSFS) -> None:
        self.root = root
        self.simulated = os.path.realpath(root) != os.path.realpath(SYSFS)
        base = os.path.join(root, "devices/system/node")
        nodes: dict[int, list[int]] = {}
        try:
            names = os.listdir(base)
        except OSError:
            names = []
        for name in names:
            if name.startswith("node") and name[4:].isdigit():
                nodes[int(name[4:])] = parse_cpulist(_read(os.path.join(base, name, "cpulist")) or "")
        if not nodes:   # a kernel without CONFIG_NUMA: one node with every CPU
            nodes = {0: sorted(os.sched_getaffinity(0)) if not self.simulated else [0]}
        self.nodes = dict(sorted(nodes.items()))
        mem = _read(os.path.join(base, "has_memory"))
        self.memory_nodes = [n for n in (parse_cpulist(mem) if mem else self.nodes) if n in self.nodes]
        self._cpu_node = {c: n for n, cpus in self.nodes.items() for c in cpus}

    def node_of_cpu(self, cpu: int) -> int:
        """The node of @cpu, -1 if the topology does not list it."""
        return self._cpu_node.get(cpu, -1)

    def interface_node(self, ifname: str) -> int:
        """The NUMA node of @ifname's device, -1 if it has none (veth, lo) or
        the firmware does not say."""
        v = _read(os.path.join(self.root, "class/net", ifname, "device/numa_node"))
        try:
            return int(v) if v is not None else -1
        except ValueError:
            return -1

    def check_node(self, node: int) -> None:
        if node not in self.memory_nodes:
            raise ConfigError(f"NUMA node {node} has no memory here (nodes with memory: "
                              f"{', '.join(map(str, self.memory_nodes))})", E.EINVAL,
                              "pass one of them to --numa, or auto / off")

    def __repr__(self) -> str:
        where = f" (simulated from {self.root})" if self.simulated else ""
        return "Topology(" + ", ".join(f"node {n}: cpus {c}" for n, c in self.nodes.items()) + ")" + where


def getcpu() -> tuple[int, int]:
    """(cpu, node) the calling thread runs on now (a vDSO call)."""
    cpu, node = ctypes.c_uint(), ctypes.c_uint()
    if native.libc.getcpu(ctypes.byref(cpu), ctypes.byref(node)) != 0:
        return -1, -1
    return cpu.value, node.value


def parse_numa(spec: str | int | None) -> str | int:
    """--numa auto|off|NODE -> 'auto', 'off' or a node number."""
    if spec is None:
        return "auto"
    if isinstance(spec, int) or str(spec).isdigit():
        return int(spec)
    if spec in ("auto", "off"):
        return spec
    raise ConfigError(f"unknown --numa setting {spec!r}", E.EINVAL, "use auto, off or a node number")


# ---- memory binding -----------------------------------------------------------
MAXNODE = 1024


def _mask(node: int) -> ctypes.Array:
    m = (ctypes.c_ulong * (MAXNODE // 64))()
    m[node // 64] = 1 << (node % 64)
    return m


def bind(addr: int, length: int, node: int) -> None:
    """MPOL_BIND [addr, addr+length) of a mapping to @node. For a memfd
    mapping this is the file's shared policy: pages faulted in later (by
    registration, by the pool's growth) come from @node, and stay there."""
    if native.sys_mbind is None:
        raise XdprxError(f"mbind is not wired for {os.uname().machine}", E.ENOSYS,
                         "use --numa off")
    if native.sys_mbind(addr, length, native.MPOL_BIND, _mask(node), MAXNODE, 0) != 0:
        err = native.errno()
        raise XdprxError(f"binding {length >> 10} KiB of the UMEM to NUMA node {node} (mbind)",
                         err, "check the node exists and has memory (numactl -H), or use --numa off")


def policy_of(addr: int) -> tuple[str, list[int]]:
    """The memory policy governing @addr: (mode name, nodes)."""
    mode = ctypes.c_int()
    mask = (ctypes.c_ulong * (MAXNODE // 64))()
    if native.sys_get_mempolicy is None or native.sys_get_mempolicy(
            ctypes.byref(mode), mask, MAXNODE, addr, native.MPOL_F_ADDR) != 0:
        return "unknown", []
    names = {native.MPOL_DEFAULT: "default", native.MPOL_PREFERRED: "preferred",
             native.MPOL_BIND: "bind", native.MPOL_INTERLEAVE: "interleave"}
    nodes = [i * 64 + b for i, w in enumerate(mask) for b in range(64) if w >> b & 1]
    return names.get(mode.value & 0xFF, str(mode.value)), nodes


def pages_by_node(addr: int, length: int, page: int = 4096) -> dict[int, int]:
    """Where the pages of [addr, addr+length) are, by node, asked of the kernel
    (move_pages in query mode); -2 (ENOENT) counts pages not faulted in."""
    n = length // page
    if n == 0 or native.sys_move_pages is None:
        return {}
    pages = (ctypes.c_void_p * n)(*range(addr, addr + n * page, page))
    status = (ctypes.c_int * n)()
    if native.sys_move_pages(0, n, pages, None, status, 0) != 0:
        raise XdprxError("asking where the UMEM pages are (move_pages)", native.errno())
    nodes, counts = np.unique(np.frombuffer(status, np.int32), return_counts=True)
    return {int(k): int(v) for k, v in zip(nodes, counts)}


# ---- the policy ----------------------------------------------------------------
@dataclass
class Switch:
    when: float                 # time.time()
    batch: int                  # the receive loop's batch count at the switch
    old: int
    new: int
    why: str

    def as_dict(self) -> dict:
        return {"time": round(self.when, 3), "batch": self.batch, "from": self.old,
                "to": self.new, "why": self.why}


@dataclass
class Policy:
    """Which node pool refills one queue's FILL ring.

    @nodes: the node numbers that have a pool; @mode 'auto', 'off' or a
    fixed node. Feed it bytes read per node (observe); it answers with the
    node to refill from (`current`). Decisions are made per window of at
    least @min_bytes read."""
    nodes: list[int]
    mode: str | int = "auto"
    start: int | None = None
    window: int = 4
    majority: float = 0.6
    min_bytes: int = 64 << 10
    current: int = field(init=False)
    acc: list = field(init=False)
    last_share: list = field(init=False, default_factory=list)
    streak: int = field(init=False, default=0)
    leader: int = field(init=False, default=-1)
    windows: int = field(init=False, default=0)
    switches: list = field(init=False, default_factory=list)
    reason: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if not 0.5 < self.majority <= 1.0:
            raise ConfigError(f"majority {self.majority} must be in (0.5, 1]", E.EINVAL,
                              "a majority of at least 0.6 keeps a split from flapping")
        if self.window < 1:
            raise ConfigError(f"window {self.window} must be >= 1", E.EINVAL, "use e.g. 4")
        if isinstance(self.mode, int):
            self.current = self.mode
            self.reason = f"fixed by --numa {self.mode}"
        elif len(self.nodes) == 1:
            self.current = self.nodes[0]
            self.reason = "the only node with memory"
        elif self.start is not None and self.start in self.nodes:
            self.current = self.start
            self.reason = "the interface's node (no feedback yet)"
        else:
            self.current = self.nodes[0]
            self.reason = "first node with memory (no feedback yet, interface node unknown)"
        self.acc = [0] * len(self.nodes)

    @property
    def adaptive(self) -> bool:
        return self.mode == "auto" and len(self.nodes) > 1

    def observe(self, node_bytes, batch: int = 0) -> bool:
        """Add bytes read per pool node (same order as `nodes`) since the last
        call. Returns True when the refill node changed. Plain Python on a
        handful of ints: it runs every `numa_every` batches."""
        if not self.adaptive:
            return False
        acc = self.acc = [a + int(b) for a, b in zip(self.acc, node_bytes)]
        total = sum(acc)
        if total < self.min_bytes:
            return False
        share = [a / total for a in acc]
        self.acc = [0] * len(acc)
        self.windows += 1
        self.last_share = share
        top = max(range(len(share)), key=share.__getitem__)
        lead = self.nodes[top]
        if lead == self.current or share[top] < self.majority:
            self.streak, self.leader = 0, -1   # no clear challenger: stay
            return False
        self.streak = self.streak + 1 if lead == self.leader else 1
        self.leader = lead
        if self.streak < self.window:
            return False
        why = (f"readers on node {lead} read {share[top]:.0%} of the bytes in each of the last "
               f"{self.window} windows (node {self.current}: "
               f"{share[self.nodes.index(self.current)]:.0%} in the last)")
        self.switches.append(Switch(time.time(), batch, self.current, lead, why))
        log.info("xdprx numa: refill moves from node %d to node %d: %s", self.current, lead, why)
        self.current, self.reason = lead, why
        self.streak, self.leader = 0, -1
        return True

    def describe(self) -> dict:
        return {"mode": self.mode if isinstance(self.mode, str) else "fixed",
                "nodes": self.nodes, "refill_node": self.current, "why": self.reason,
                "last_window_share": {n: round(x, 4) for n, x in zip(self.nodes, self.last_share)}, "windows": self.windows,
                "challenger": {"node": self.leader, "windows": self.streak} if self.streak else None,
                "switches": len(self.switches),
                "history": [s.as_dict() for s in self.switches[-8:]]}
