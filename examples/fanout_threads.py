"""In-process fan-out: one receive thread, one thread per consumer.

As root:
    .venv/bin/python examples/fanout_threads.py IFACE 239.1.2.3:5000 [CONSUMERS]

Each consumer thread reads every packet of the group zero-copy and counts
bytes and sequence gaps; Ctrl-C stops everything and prints the totals.
"""
import sys
import threading

import xdprx


def consume(c: xdprx.Consumer, stop: threading.Event) -> None:
    while not stop.is_set():
        c.recv(timeout=0.2)          # a Batch; its frames are ours until the next recv()


def main() -> None:
    ifname, group = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    stop = threading.Event()
    with xdprx.Receiver(ifname, [group]) as rx:
        consumers = [rx.subscribe([group]) for _ in range(n)]
        threads = [threading.Thread(target=consume, args=(c, stop)) for c in consumers]
        for t in threads:
            t.start()
        print(rx.describe(), f"- {n} consumers; Ctrl-C to stop", flush=True)
        try:
            while True:
                rx.pump(timeout=0.5)     # the receive loop: reap, refill, receive, fan out
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for t in threads:
                t.join()
            for i, c in enumerate(consumers):
                print(f"consumer {i}: {c.stats()}")
                c.close()


if __name__ == "__main__":
    main()
