"""The `xdprx` command: run, stats, demo.

Every user error ends in one line `xdprx: error: <what>; <remedy>` and exit
code 2 (argparse's convention for usage errors).
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import XdprxError

EXIT_USAGE = 2


def _add_rx_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", action="append", default=[], metavar="G:PORT",
                   help="multicast group and UDP port, e.g. 239.1.2.3:5000 (repeatable)")
    p.add_argument("--queue", type=int, default=0, help="NIC rx queue (default 0)")
    p.add_argument("--mode", choices=("auto", "native", "skb"), default="auto",
                   help="XDP attach mode (auto: native, else skb)")
    p.add_argument("--frames", type=int, default=4096, help="UMEM frames, a power of two")
    p.add_argument("--frame-size", type=int, default=2048, choices=(2048, 4096))
    p.add_argument("--batch", type=int, default=256, help="packets per receive batch")


def cmd_run(a: argparse.Namespace) -> int:
    from .control import default_path
    from .daemon import Daemon
    from .groups import parse_groups
    from .receiver import Receiver
    parse_groups(a.group)  # report bad groups before touching the system
    rx = Receiver(a.iface, a.group, queue=a.queue, mode=a.mode, frames=a.frames,
                  frame_size=a.frame_size, batch_size=a.batch)
    try:
        d = Daemon(rx, a.control or default_path(a.iface), interval=a.interval,
                   json_lines=a.json)
        d.serve(duration=a.duration)
    finally:
        rx.close()
    st = rx.stats_after_close()
    print(f"xdprx: stopped; {st['receiver']['packets']} packets received, "
          f"{st['drops']} dropped, frames back in pool {st['frames']['free']}/"
          f"{st['frames']['total']}; XDP program detached", flush=True)
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    from .control import default_path, request
    path = a.control or (default_path(a.iface) if a.iface else None)
    if not path:
        raise XdprxError("which daemon?", 0, "pass --control PATH (or the interface name)")
    st = request(path, {"cmd": "stats"})["stats"]
    if a.json:
        print(json.dumps(st, indent=2))
    else:
        from .daemon import format_line
        print(format_line(st, None, 1.0))
        for k in ("receiver", "xdp", "xsk", "frames"):
            print(f"  {k:9s} " + "  ".join(f"{n}={v}" for n, v in st[k].items()))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import demo
    return demo(seconds=a.seconds, rate=a.rate, mode=a.mode)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xdprx", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="receive on an interface queue (daemon)")
    r.add_argument("iface")
    _add_rx_options(r)
    r.add_argument("--control", help="control socket path (default /run/xdprx/IFACE.sock)")
    r.add_argument("--interval", type=float, default=1.0, help="seconds between stat lines")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.add_argument("--json", action="store_true", help="stat lines as JSON")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("stats", help="counters of a running daemon")
    s.add_argument("iface", nargs="?")
    s.add_argument("--control")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_stats)
    d = sub.add_parser("demo", help="self-contained demo on its own veth pair")
    d.add_argument("--seconds", type=float, default=5.0)
    d.add_argument("--rate", type=int, default=100000, help="packets/s offered")
    d.add_argument("--mode", choices=("auto", "native", "skb"), default="native")
    d.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except XdprxError as e:
        print(f"xdprx: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
