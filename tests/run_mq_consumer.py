"""A Subscriber process for the multi-queue test: runs the `record_q` handler
(payload hashes per queue) until it has STOP packets, the daemon goes, or
SIGTERM; prints one JSON line with its stats, per-queue counts and hashes.

    run_mq_consumer.py CONTROL GROUP N STOP"""
import json
import signal
import sys

from xdprx import Subscriber

from handlers import MQ_COUNT, MQ_HASH, MQ_MAX, new_state_q, record_q


def main() -> None:
    control, group, n, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sub = Subscriber(control, group, ring_size=4096, handler=record_q, name="mq")
    state = new_state_q(n, stop)
    signal.signal(signal.SIGTERM, lambda *_: sub.stop())
    print(json.dumps({"ready": sub.queues}), flush=True)
    why = sub.run(record_q, state, duration=60)
    print(json.dumps({"why": why, "stats": sub.stats(), "queues": sub.queues,
                      "counts": state[MQ_COUNT:MQ_COUNT + MQ_MAX].tolist(),
                      "hashes": state[MQ_HASH:].tolist()}), flush=True)
    sub.close()


if __name__ == "__main__":
    main()
