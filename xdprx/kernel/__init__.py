"""Kernel bindings: libbpf/libxdp through ctypes, syscalls from compiled code,
the AF_XDP socket, the XDP program and its maps, group membership, RX queues."""
