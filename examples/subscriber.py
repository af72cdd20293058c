"""A consumer in its own process, against a running `xdprx run` daemon.

As root:
    xdprx run eth0 --group 239.1.2.3:5000 &
    .venv/bin/python examples/subscriber.py /run/xdprx/eth0.sock 239.1.2.3:5000

Sums each packet's payload bytes in a Numba function over the batch arrays
(no Python per packet), reads the UMEM read-only, zero-copy.
"""
import sys

import numpy as np
from numba import njit

import xdprx


@njit(cache=True)
def byte_sum(umem, offsets, lengths, n):
    s = np.uint64(0)
    for i in range(n):
        for j in range(lengths[i]):
            s += umem[offsets[i] + j]
    return s


def main() -> None:
    control, group = sys.argv[1], sys.argv[2]
    total = 0
    with xdprx.Subscriber(control, group) as sub:
        print(f"consumer {sub.id} of {group}; Ctrl-C to stop", flush=True)
        try:
            for b in sub:
                total += int(byte_sum(b.umem, b.offsets, b.lengths, len(b)))
        except KeyboardInterrupt:
            pass
        print(sub.stats(), "byte sum", total)


if __name__ == "__main__":
    main()
