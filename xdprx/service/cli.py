"""The `xdprx` command: run, subscribe, stats, doctor, demo, bench, stress.

Every user error ends in one line `xdprx: error: <what>; <remedy>` and exit
code 2 (argparse's convention for usage errors).
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError, XdprxError

EXIT_USAGE = 2


def _add_rx_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", action="append", default=[], metavar="G:PORT",
                   help="multicast group and UDP port, e.g. 239.1.2.3:5000 (repeatable)")
    p.add_argument("--queues", default=None, metavar="all|N|A-B|A,B",
                   help="RX queues to receive from, one AF_XDP socket and receive loop each "
                        "(default: all of the interface's; N: the first N)")
    p.add_argument("--queue", type=int, default=None, help="one RX queue (same as --queues Q-Q)")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="pin the receive loops, one CPU per queue in order, e.g. 2,3 "
                        "(default: each queue's IRQ affinity when known, else unpinned)")
    p.add_argument("--mode", choices=("auto", "native", "skb"), default="auto",
                   help="XDP attach mode (auto: native, else skb)")
    p.add_argument("--frames", type=int, default=4096,
                   help="frames ready at start (registered with the kernel), a power of two")
    p.add_argument("--max-frames", type=int, default=None,
                   help="cap the pool may grow to when consumers hold frames (default: --frames)")
    p.add_argument("--hugepages", choices=("auto", "on", "off"), default="auto",
                   help="hugetlb pages for the UMEM (auto: when enough are free)")
    p.add_argument("--reserve", type=int, default=None,
                   help="ring frames kept for the FILL ring when consumers hold many "
                        "(default frames/4; 0: the kernel drops at the FILL ring instead)")
    p.add_argument("--numa", default="auto", metavar="auto|off|NODE",
                   help="frame pools per NUMA node, refill node chosen from consumer feedback "
                        "(auto), one unbound pool (off), or one pool bound to NODE")
    p.add_argument("--numa-sysfs", default="/sys", metavar="ROOT",
                   help=argparse.SUPPRESS)   # tests: a simulated topology (sysfs copy)
    p.add_argument("--frame-size", type=int, default=2048, choices=(2048, 4096))
    p.add_argument("--batch", type=int, default=256, help="packets per receive batch")


def cmd_run(a: argparse.Namespace) -> int:
    from .control import default_path, parse_ids
    from .daemon import Daemon
    from ..groups import parse_groups
    from ..numa import Topology, parse_numa
    from ..receiver import Receiver
    if not a.iface:
        raise ConfigError("no interface given", remedy="pass IFACE (or iface = \"...\" in --config)")
    parse_groups(a.group)  # report bad input before touching the system
    parse_numa(a.numa)
    if a.metrics is not None:
        from .metrics import parse_listen
        parse_listen(a.metrics)
    if not -20 <= a.nice <= 19:
        raise ConfigError(f"--nice {a.nice} out of range", remedy="use -20..19")
    uids, gids = parse_ids(a.allow_uid, "uid"), parse_ids(a.allow_gid, "gid")
    if a.queue is not None and a.queues is not None:
        raise ConfigError("both --queue and --queues given", remedy="use --queues alone")
    rx = Receiver(a.iface, a.group, queue=a.queue, queues=a.queues, cpus=a.cpus,
                  mode=a.mode, frames=a.frames,
                  frame_size=a.frame_size, batch_size=a.batch, max_frames=a.max_frames,
                  hugepages=a.hugepages, reserve=a.reserve, numa=a.numa,
                  topology=Topology(a.numa_sysfs), spin=a.spin,
                  **({} if a.rx_usecs is None else {"rx_usecs": a.rx_usecs}),
                  wake_batch=a.wake_batch,
                  wake_usecs=a.wake_usecs, napi_defer_us=a.napi_defer_us)
    try:
        reread = None
        if a.config:
            from .config import reread as _reread
            reread = lambda: _reread(a.config, a.argv, a, parse_args)  # noqa: E731
        d = Daemon(rx, a.control or default_path(a.iface), interval=a.interval,
                   json_lines=a.json, allow_uids=uids, allow_gids=gids, nice=a.nice,
                   metrics=a.metrics, reread=reread)
        d.serve(duration=a.duration)
    finally:
        rx.close()
    st = rx.stats_after_close()
    print(f"xdprx: stopped; {st['receiver']['packets']} packets received, "
          f"{st['drops']} dropped, frames back in pool {st['frames']['free']}/"
          f"{st['frames']['total']} (grew {st['frames']['grows']} times, cap "
          f"{st['frames']['cap']}); XDP program detached", flush=True)
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    from .control import default_path, request
    path = a.control or (default_path(a.iface) if a.iface else None)
    if not path:
        raise XdprxError("which daemon?", 0, "pass --control PATH (or the interface name)")
    if a.watch:
        from .watch import watch
        return watch(lambda: request(path, {"cmd": "stats"})["stats"],
                     1.0 if a.interval is None else a.interval, as_json=a.json,
                     title=f"xdprx {path}")
    if a.interval is not None:
        raise ConfigError("--interval needs --watch", remedy="add --watch, or drop --interval")
    st = request(path, {"cmd": "stats"})["stats"]
    if a.json:
        print(json.dumps(st, indent=2))
    else:
        from .daemon import format_consumer, format_line, format_numa
        print(format_line(st, None, 1.0))
        for k in ("receiver", "xdp", "xsk", "frames"):
            print(f"  {k:9s} " + "  ".join(f"{n}={v}" for n, v in st[k].items()))
        print(format_numa(st["numa"]))
        for q in st.get("per_queue", []):
            r, f = q["receiver"], q["frames"]
            print(f"  queue {q['queue']}: rx {r['packets']:,d} pkts, drops {q['drops']:,d}, "
                  f"frames free {f['free']} fill {f['fill']} kernel {f['kernel']} "
                  f"held {f['held']} of {f['total']}/{f['cap']}")
        for c in st.get("consumers", []):
            print(format_consumer(c))
    return 0


def cmd_subscribe(a: argparse.Namespace) -> int:
    from .control import default_path
    from ..groups import parse_groups
    from .subscribe import subscribe
    path = a.control or (default_path(a.iface) if a.iface else None)
    if not path:
        raise XdprxError("which daemon?", 0, "pass --control PATH (or the interface name)")
    if not a.group:
        raise XdprxError("no group given", 0, "pass --group G:PORT (repeatable)")
    groups = [str(g) for g in parse_groups(a.group)]
    return subscribe(path, groups, count=a.count, duration=a.duration, pcap=a.pcap,
                     as_json=a.json, digest=a.digest, ring=a.ring, quota=a.quota,
                     interval=a.interval)


def cmd_doctor(a: argparse.Namespace) -> int:
    from .doctor import doctor
    return doctor(a.iface, a.group, as_json=a.json)


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import demo
    return demo(seconds=a.seconds, rate=a.rate, mode=a.mode, consumers=a.consumers)


def cmd_stress(a: argparse.Namespace) -> int:
    """The checkers (xdprx.testing.stress dispatches to fuzz, storm, ...)."""
    from ..testing import stress
    return stress.main(a.args)


def cmd_bench(a: argparse.Namespace) -> int:
    """Run benchmarks/suite.py from the source tree this xdprx comes from."""
    import runpy
    from pathlib import Path
    suite = Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py"
    if not suite.exists():
        raise ConfigError(f"xdprx bench needs the source tree (benchmarks/suite.py next to "
                          f"{Path(__file__).resolve().parents[1]}), and this xdprx is installed "
                          f"without it",
                          remedy="git clone the xdprx repository, pip install -e . in the clone, "
                                 "and run xdprx bench there")
    argv = (["--quick"] if a.quick else []) + (["--out", a.out] if a.out else []) + \
        (["--reps", str(a.reps)] if a.reps else []) + \
        (["--seconds", str(a.seconds)] if a.seconds else []) + \
        ([] if a.napi_defer_us is None else ["--napi-defer-us", str(a.napi_defer_us)])
    return runpy.run_path(str(suite), run_name="xdprx_bench")["main"](argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xdprx", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="receive on an interface queue (daemon)")
    r.add_argument("iface", nargs="?", help="interface (or iface in --config)")
    r.add_argument("--config", metavar="FILE.toml",
                   help="read options from a TOML file (keys: these long options); "
                        "the command line overrides it")
    _add_rx_options(r)
    r.add_argument("--control", help="control socket path (default /run/xdprx/IFACE.sock)")
    r.add_argument("--interval", type=float, default=1.0, help="seconds between stat lines")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.add_argument("--json", action="store_true", help="stat lines as JSON")
    r.add_argument("--metrics", metavar="[ADDR:]PORT", default=None,
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics "
                        "(ADDR default 0.0.0.0)")
    r.add_argument("--allow-uid", action="append", default=[], metavar="UID",
                   help="only these users (and root) may connect (names or numbers, repeatable)")
    r.add_argument("--allow-gid", action="append", default=[], metavar="GID",
                   help="members of these groups may connect too (repeatable)")
    r.add_argument("--nice", type=int, default=-10,
                   help="nice value of the receive thread (default -10: consumers sharing its "
                        "CPU cannot starve it)")
    r.add_argument("--spin", type=int, default=0, metavar="US",
                   help="busy-poll an empty ring this long before sleeping (default 0: on a "
                        "shared core a spin steals the CPU from the work it waits for)")
    r.add_argument("--rx-usecs", type=int, default=None, metavar="US",
                   help="receive moderation, like a NIC's rx-usecs: while packets come less "
                        "than 2 x US apart, take them in batches US apart (default: 4x what a "
                        "timed nap costs on this host, 20-100, see `xdprx doctor`; "
                        "0: a wake-up per packet, the lowest latency)")
    r.add_argument("--napi-defer-us", type=int, default=None, metavar="US",
                   help="NAPI deferral on the interface while running (Linux 6.13+): the "
                        "kernel's receive work runs once per US while traffic flows instead "
                        "of per interrupt (veth: per packet); restored at exit. 50-100 when "
                        "many consumers share the receive core (README, Tuning)")
    r.add_argument("--wake-batch", type=int, default=None, metavar="N",
                   help="wake a sleeping subscriber once N packets wait for it (default 64; "
                        "a subscriber may ask for its own)")
    r.add_argument("--wake-usecs", type=int, default=None, metavar="US",
                   help="... or this long after the first one (default 50)")
    r.set_defaults(fn=cmd_run)
    ap.run_parser = r  # type: ignore[attr-defined]  # parse_args applies --config to it
    c = sub.add_parser("subscribe", help="consume a running daemon's packets in this process")
    c.add_argument("iface", nargs="?", help="the daemon's interface (or use --control)")
    c.add_argument("--control", help="the daemon's control socket")
    c.add_argument("--group", action="append", default=[], metavar="G:PORT",
                   help="group to consume (repeatable; the daemon must receive it)")
    c.add_argument("--count", type=int, default=None, help="stop after N packets")
    c.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    c.add_argument("--pcap", metavar="FILE", help="write received frames to a pcap file")
    c.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    c.add_argument("--digest", action="store_true", help="SHA-256 of each group's payloads")
    c.add_argument("--ring", type=int, default=2048, help="consumer ring slots (power of two)")
    c.add_argument("--quota", type=int, default=None, help="frames we may hold (default: ring)")
    c.add_argument("--interval", type=float, default=1.0, help="seconds between live lines")
    c.set_defaults(fn=cmd_subscribe)
    s = sub.add_parser("stats", help="counters of a running daemon")
    s.add_argument("iface", nargs="?")
    s.add_argument("--control")
    s.add_argument("--json", action="store_true", help="JSON (with --watch: one object a line)")
    s.add_argument("--watch", action="store_true",
                   help="live rates until Ctrl-C: a table on a terminal, plain lines otherwise")
    s.add_argument("--interval", type=float, default=None, metavar="S",
                   help="seconds between two samples with --watch (default 1)")
    s.set_defaults(fn=cmd_stats)
    dr = sub.add_parser("doctor", help="check the kernel, privileges, libraries and an interface")
    dr.add_argument("iface", nargs="?", help="also check this interface")
    dr.add_argument("--group", action="append", default=[], metavar="G:PORT",
                    help="check that this group is joined on IFACE (repeatable)")
    dr.add_argument("--json", action="store_true", help="the checks as JSON")
    dr.set_defaults(fn=cmd_doctor)
    b = sub.add_parser("bench", help="xdprx against the kernel path and a C AF_XDP loop")
    b.add_argument("--quick", action="store_true", help="a smoke run under 2 minutes")
    b.add_argument("--out", help="report directory (default benchmarks/out/report)")
    b.add_argument("--reps", type=int, default=None, help="runs per figure (default 3)")
    b.add_argument("--seconds", type=float, default=None, help="seconds per run (default 5)")
    b.add_argument("--napi-defer-us", type=int, default=None, metavar="US",
                   help="NAPI deferral in placement B, every contender alike (default 100; 0: off)")
    b.set_defaults(fn=cmd_bench)
    st = sub.add_parser("stress", add_help=False,
                        help="checkers: ring stress (xsk, cring), parser fuzzing (fuzz), "
                             "kill storms (kill), soak (soak)")
    st.add_argument("args", nargs=argparse.REMAINDER)
    st.set_defaults(fn=cmd_stress)
    d = sub.add_parser("demo", help="the daemon and its subscribers on their own veth pair")
    d.add_argument("--seconds", type=float, default=5.0)
    d.add_argument("--rate", type=int, default=20000, help="packets/s offered")
    d.add_argument("--mode", choices=("auto", "native", "skb"), default="native")
    d.add_argument("--consumers", type=int, default=3,
                   help="subscriber processes (the first uses run(handler), the others recv())")
    d.set_defaults(fn=cmd_demo)
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse @argv; for `run --config FILE` parse again with the file's values as
    the defaults, so the command line overrides the file."""
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.cmd == "run" and a.config:
        from .config import apply
        cli_groups = bool(a.group)
        lists = apply(ap.run_parser, a.config)
        a = ap.parse_args(argv)
        for k, v in lists.items():
            if not getattr(a, k):   # a list on the command line replaces the file's
                setattr(a, k, v)
        # SIGHUP reads the file again under the same command line
        a.argv, a.cli_groups = list(sys.argv[1:] if argv is None else argv), cli_groups
    return a


def main(argv: list[str] | None = None) -> int:
    cmd, a = None, None
    try:
        a = parse_args(argv)
        cmd = a.cmd
        return a.fn(a)
    except XdprxError as e:
        print(f"xdprx: error: {e}", file=sys.stderr)
        if cmd == "run" and not isinstance(e, ConfigError):
            print(f"xdprx: hint: run `xdprx doctor {a.iface or 'IFACE'}` for a full check",
                  file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
