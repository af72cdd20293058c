"""A Subscriber process for the many-consumers test: subscribes (every
kernel and the handler compiled first), says "ready", then runs the `record`
handler in compiled code in 0.25 s slices until SIGTERM, noting after each
slice how many packets it has. Prints one JSON line: its stats, first and last
sequence numbers, payload hash mismatches against HASHFILE, the timeline.

    run_consumer.py CONTROL GROUP N HASHFILE"""
import json
import signal
import sys
import time

import numpy as np

from xdprx import Subscriber

from handlers import S_FIRST, S_HASH, S_LAST, S_PKTS, new_state, record


def main() -> None:
    control, group, n, hashfile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sub = Subscriber(control, group, ring_size=4096, handler=record, name="run_consumer")
    state = new_state(n)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: (stop.append(1), sub.stop()))
    print("ready", flush=True)
    timeline = []
    why = ""
    while not stop:
        why = sub.run(record, state, duration=0.25)
        timeline.append((time.monotonic(), int(state[S_PKTS])))
        if why == "gone":
            break
    st = sub.stats()
    want = np.load(hashfile)
    got = state[S_HASH:S_HASH + n]
    seen = got != 0
    bad = int(np.count_nonzero(got[seen] != want[:n][seen]))
    print(json.dumps({"stats": st, "first": int(state[S_FIRST]), "last": int(state[S_LAST]),
                      "packets": int(state[S_PKTS]), "hashed": int(seen.sum()),
                      "mismatches": bad, "timeline": timeline, "why": why}), flush=True)
    sub.close()


if __name__ == "__main__":
    main()
