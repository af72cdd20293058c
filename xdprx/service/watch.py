"""`xdprx stats --watch`: a running daemon's rates, live.

On a terminal a table redrawn in place (rich): packets/s, deliveries/s,
eventfd writes/s, drops, and per consumer delivered/s, dropped and
wake-ups/s. Otherwise (a pipe, a file, a journal) one plain line per
interval and one per consumer, or with --json one JSON object per interval.
Ctrl-C (SIGINT) ends it with exit code 0.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Callable, TextIO

from ..errors import ConfigError, XdprxError


def rates(st: dict, prev: dict | None, dt: float) -> dict:
    """Per-second rates between two stats snapshots (zeros for the first)."""
    def rate(now: int, before: int | None) -> float:
        return (now - before) / dt if before is not None and dt > 0 else 0.0

    r, p = st["receiver"], (prev or {}).get("receiver", {})
    before = {c["id"]: c for c in (prev or {}).get("consumers", [])}
    drops = st["drops"] + r.get("consumer_drops", 0)
    out = {"packets": r["packets"], "pps": rate(r["packets"], p.get("packets")),
           "mbps": rate(r["bytes"], p.get("bytes")) * 8 / 1e6,
           "deliveries_ps": rate(r["deliveries"], p.get("deliveries")),
           "eventfd_writes_ps": rate(r["eventfd_writes"], p.get("eventfd_writes")),
           "drops": drops,
           "drops_ps": rate(drops, prev["drops"] + p.get("consumer_drops", 0) if prev else None),
           "xsk_drops": st["drops"], "consumer_drops": r.get("consumer_drops", 0),
           "frames_held": st["frames"]["held"], "frames_total": st["frames"]["total"],
           "consumers": [], "queues": []}
    pq = {q["queue"]: q for q in (prev or {}).get("per_queue", [])}
    for q in st.get("per_queue", []):       # several RX queues: each one's rate
        b = pq.get(q["queue"], {}).get("receiver", {})
        out["queues"].append({"queue": q["queue"], "packets": q["receiver"]["packets"],
                              "pps": rate(q["receiver"]["packets"], b.get("packets")),
                              "drops": q["drops"], "frames_held": q["frames"]["held"]})
    for c in st.get("consumers", []):
        b = before.get(c["id"], {})
        out["consumers"].append({
            "id": c["id"], "pid": c.get("pid"), "name": c.get("name", ""),
            "groups": c["groups"], "delivered": c["delivered"],
            "delivered_ps": rate(c["delivered"], b.get("delivered")), "dropped": c["dropped"],
            "wakeups": c["wakeups"], "wakeups_ps": rate(c["wakeups"], b.get("wakeups")),
            "held": c["held"], "quota": c["quota"]})
    return out


def plain_lines(r: dict) -> list[str]:
    lines = [f"{time.strftime('%H:%M:%S')} rx {r['packets']:,d} pkts {r['pps']:,.0f} pps "
             f"{r['mbps']:.1f} Mb/s | deliveries {r['deliveries_ps']:,.0f}/s | eventfd writes "
             f"{r['eventfd_writes_ps']:,.0f}/s | drops {r['drops']:,d} ({r['drops_ps']:,.0f}/s) "
             f"| frames held {r['frames_held']}/{r['frames_total']} | consumers "
             f"{len(r['consumers'])}"]
    if r.get("queues"):
        lines.append("  queues " + ", ".join(f"{q['queue']}: {q['pps']:,.0f} pps (drops "
                                            f"{q['drops']:,d}, held {q['frames_held']})"
                                            for q in r["queues"]))
    for c in r["consumers"]:
        who = f"pid {c['pid']}" if c["pid"] is not None else "in-process"
        lines.append(f"  consumer {c['id']} ({who}{', ' + c['name'] if c['name'] else ''}) "
                     f"{','.join(c['groups'])}: delivered {c['delivered']:,d} "
                     f"({c['delivered_ps']:,.0f}/s) dropped {c['dropped']:,d} wake-ups "
                     f"{c['wakeups']:,d} ({c['wakeups_ps']:,.0f}/s) held {c['held']}/{c['quota']}")
    return lines


def table(r: dict, title: str):
    """The live view: a rich Table."""
    from rich.table import Table
    t = Table(title=title, title_justify="left")
    for col in ("consumer", "delivered", "/s", "dropped", "wake-ups/s", "held"):
        t.add_column(col, justify="left" if col == "consumer" else "right")
    t.caption = (f"rx {r['pps']:,.0f} pkts/s ({r['mbps']:.1f} Mb/s), "
                 f"{r['packets']:,d} in all | deliveries {r['deliveries_ps']:,.0f}/s | "
                 f"eventfd writes {r['eventfd_writes_ps']:,.0f}/s | drops {r['drops']:,d} "
                 f"(socket {r['xsk_drops']:,d}, consumers {r['consumer_drops']:,d}) | "
                 f"frames held {r['frames_held']}/{r['frames_total']}"
                 + ("".join(f"\nqueue {q['queue']}: {q['pps']:,.0f} pkts/s, drops "
                            f"{q['drops']:,d}, frames held {q['frames_held']}"
                            for q in r.get("queues", []))))
    t.caption_justify = "left"
    for c in r["consumers"]:
        who = f"pid {c['pid']}" if c["pid"] is not None else "in-process"
        t.add_row(f"{c['id']} {who} {c['name']} {','.join(c['groups'])}".replace("  ", " "),
                  f"{c['delivered']:,d}", f"{c['delivered_ps']:,.0f}", f"{c['dropped']:,d}",
                  f"{c['wakeups_ps']:,.0f}", f"{c['held']}/{c['quota']}")
    if not r["consumers"]:
        t.add_row("no consumers", "", "", "", "", "")
    return t


def watch(fetch: Callable[[], dict], interval: float = 1.0, as_json: bool = False,
          out: TextIO | None = None, title: str = "xdprx") -> int:
    """Sample @fetch() every @interval s and show the rates until Ctrl-C (0)
    or the daemon goes away (1)."""
    if not interval > 0:
        raise ConfigError(f"--interval {interval} must be > 0", remedy="pass e.g. --interval 1")
    out = out or sys.stdout
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)   # even if inherited ignored
    prev, last = fetch(), time.monotonic()       # the first error: the caller's one line
    live = None
    try:
        if not as_json and out.isatty():
            from rich.console import Console
            from rich.live import Live
            live = Live(table(rates(prev, None, 0), title), console=Console(file=out),
                        auto_refresh=False, transient=False)
            live.start()
        while True:
            time.sleep(max(0.0, last + interval - time.monotonic()))
            try:
                st = fetch()
            except (XdprxError, OSError, ValueError) as e:    # refused, reset, cut short
                print(f"xdprx: the daemon went away: {e}", file=sys.stderr, flush=True)
                return 1
            now = time.monotonic()
            r = rates(st, prev, now - last)
            prev, last = st, now
            if live is not None:
                live.update(table(r, title), refresh=True)
            elif as_json:
                print(json.dumps(r), file=out, flush=True)
            else:
                print("\n".join(plain_lines(r)), file=out, flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        if live is not None:
            live.stop()
