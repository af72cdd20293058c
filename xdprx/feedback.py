"""Consumer feedback for the NUMA policy: bytes read per node since the last look.

Every consumer writes, in its ring's CTL page, the cpu and node it runs on
(refreshed every 64 batches) and the bytes it has read (every batch). The
receive loop looks every `numa_every` batches: one kernel call copies every
consumer's feedback out (bulk.gather_feedback), and the bytes read since the
last look are credited to the node of the reader's CPU (the topology's word;
the reader's own getcpu node when the topology does not list the CPU). The
application reading Receiver.recv() batches is a reader too, on the receive
thread's CPU.
"""
from __future__ import annotations

import numpy as np

from . import bulk
from .numa import Topology, getcpu


class Feedback:
    def __init__(self, topology: Topology, nodes: list[int], slots: int) -> None:
        maxcpu = max((c for cpus in topology.nodes.values() for c in cpus), default=0)
        self.cpu_node = np.array([topology.node_of_cpu(c) for c in range(maxcpu + 1)], np.int64)
        self.pool_of_node = np.full(max(nodes) + 1, -1, np.int64)
        self.pool_of_node[nodes] = np.arange(len(nodes))
        self.per = np.zeros(len(nodes), np.int64)
        self.last = np.zeros(slots, np.int64)
        self.own_last = 0

    def collect(self, ctab: np.ndarray, hub: np.ndarray, own_bytes: int) -> list[int]:
        """Bytes read per pool node (in `nodes` order) since the last call:
        one kernel call for every consumer, plus the application's own reads."""
        self.per[:] = 0
        bulk.collect_feedback(ctab, hub, self.last, self.cpu_node, self.pool_of_node, self.per)
        if own_bytes != self.own_last:      # the application reading rx.recv() batches
            cpu, node = getcpu()
            if 0 <= cpu < len(self.cpu_node) and self.cpu_node[cpu] >= 0:
                node = int(self.cpu_node[cpu])
            if 0 <= node < len(self.pool_of_node) and self.pool_of_node[node] >= 0:
                self.per[self.pool_of_node[node]] += own_bytes - self.own_last
            self.own_last = own_bytes
        return self.per.tolist()
