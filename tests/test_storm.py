"""Kill storms and soak (issue 16, parts 2 and 4), CI size: a real daemon on
a real veth pair, AF_XDP traffic, consumers forked from a warm fork server.
Full size: `xdprx stress kill --kills 10000 --json`, `xdprx stress soak
--seconds 600 --json` (benchmarks/report/kill-storm.md, soak.md)."""
import os
import time

import pytest

from xdprx.testing import storm
from xdprx.service.control import request

from conftest import needs_root


def _show(o):
    """What failed, first, in a line pytest does not cut short."""
    return "; ".join(o["problems"][:8]) + " | " + str(
        {k: v for k, v in o.items() if k not in ("samples", "problems")})


@needs_root
def test_kill_storm_500(tmp_path):
    """500 consumers SIGKILLed while each holds a batch, 50k pkt/s flowing:
    every frame back, only the survivors listed, survivors lost nothing,
    daemon descriptors as before, RSS within 1 MiB of the warm level."""
    o = storm.kill_storm(str(tmp_path), 500, rate=50000)
    assert o["pass"], _show(o)
    assert o["kills"] == o["kills_holding_frames"] == 500
    assert o["daemon"]["held_after"] == 0 and o["daemon"]["consumers_at_end"] == 0
    for r in o["survivor_results"]:
        assert r["received"] == r["delivered"] == o["sent"] > 0 and r["dropped"] == 0
    assert o["after"]["fds"] == o["baseline"]["fds"]
    assert o["after"]["rss"] - o["baseline"]["rss"] <= storm.RSS_TOLERANCE


@needs_root
def test_soak_60s(tmp_path):
    """60 s at 20k pkt/s, 16 consumers (2 witnesses, 14 churning: readers,
    stallers, SIGKILLed): exact accounts, nothing held, flat RSS and fds."""
    o = storm.soak(str(tmp_path), 60, rate=20000, warmup=15)
    assert o["pass"], _show(o)
    assert all(o["churn"][k] > 5 for k in ("read", "stall", "die")), o["churn"]
    assert o["clean_leaves"] > 20 and o["account_problems"] == 0
    assert o["daemon"]["packets"] == o["sent"] == o["daemon"]["redirected"] > 0
    assert len(o["samples"]) >= 25 and o["rss_drift"] < 1 << 20 and o["fd_drift"] == 0
    for w in o["witnesses_results"]:
        assert w["received"] == o["sent"] and w["gaps"] == w["dropped"] == 0


@needs_root
def test_forked_child_keeps_no_inherited_subscription(tmp_path):
    """A fork server that itself holds a Subscriber: its children close every
    inherited descriptor, so closing ours ends our subscription at once (an
    inherited lifeline would keep it, and its frames, alive until the last
    child died)."""
    from xdprx.consumer import Subscriber
    with storm.Harness(str(tmp_path), rate=20000, batch=20000) as h:
        fs = storm.ForkServer(h.ctl)
        try:
            mine = Subscriber(h.ctl, [storm.GROUP], name="parent")
            kids = [fs.spawn("hold") for _ in range(3)]
            h.pump()
            ids = {k.wait_msg(30)["id"] for k in kids}
            assert len(ids) == 3 and mine.id not in ids
            mine.close()
            st = h.wait_settled(ids, timeout=2, free=False)
            assert {c["id"] for c in st["consumers"]} == ids
            for k in kids:
                k.kill()
            h.stop_traffic()
            st = h.wait_settled(set(), timeout=5)
            assert st["consumers"] == [] and st["frames"]["held"] == 0
        finally:
            fs.close()


def test_checks_catch_what_they_claim():
    """The judges can fail: a frame left held, a survivor's lost packet,
    a descriptor leak, a leaver's account off by one."""
    base = {"kills_asked": 10, "kills": 10, "kills_not_holding": 0, "traffic_error": "",
            "sent": 100, "survivors_ids": [0],
            "daemon": {"held_after": 0, "held_per_queue": [0], "consumers_after_storm": [0],
                       "consumers_at_end": 0, "packets": 100, "redirected": 100, "drops": 0,
                       "frames": {"free": 8, "fill": 0, "kernel": 0, "held": 0, "total": 8}},
            "survivor_results": [{"id": 0, "received": 100, "gaps": 0, "first": 0, "last": 99,
                                  "tail": 0, "delivered": 100, "dropped": 0}],
            "baseline": {"rss": 1 << 30, "fds": 30, "fd_targets": ["a"] * 30},
            "after": {"rss": 1 << 30, "fds": 30, "fd_targets": ["a"] * 30},
            "log_error_lines": [], "subscribed_lines": 11, "left_lines": 11}
    assert storm._kill_problems(base) == []
    import copy
    for path, value, word in (
            (("daemon", "held_after"), 3, "still held"),
            (("daemon", "consumers_after_storm"), [0, 7], "expected the survivors"),
            (("after", "fds"), 31, "descriptors"),
            (("after", "rss"), (1 << 30) + (2 << 20), "RSS grew"),
            (("left_lines",), 10, "subscribed"),
            (("log_error_lines",), ["xdprx: error: x"], "error lines")):
        o = copy.deepcopy(base)
        d = o
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        if path == ("after", "fds"):
            o["after"]["fd_targets"] = ["a"] * 30 + ["/dev/leak"]
        probs = storm._kill_problems(o)
        assert probs and word in " ".join(probs), (path, probs)
    # regression: the 10,000-kill run's baseline caught a control socket
    # being torn down (32 -> 31): fewer descriptors after is no leak
    fewer = copy.deepcopy(base)
    fewer["after"].update(fds=29, fd_targets=["a"] * 29)
    assert storm._kill_problems(fewer) == []
    lost = copy.deepcopy(base)
    lost["survivor_results"][0].update(received=99, delivered=99, gaps=1, dropped=1)
    assert any("kept up" in p for p in storm._kill_problems(lost))
    r = {"id": 5, "received": 50, "gaps": 2, "first": 10, "last": 61, "tail": 3,
         "delivered": 50, "dropped": 5}
    assert storm.check_account(r, kept_up=False) == []
    assert storm.check_account(dict(r, dropped=4), kept_up=False)      # a drop unaccounted
    assert storm.check_account(dict(r, received=49), kept_up=False)    # a packet unread
    assert storm.check_account(r, kept_up=True)                        # a reader that dropped


def test_bad_arguments_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        storm.main(["kill", "--kills", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid int value" in err
    if os.geteuid() == 0:
        with pytest.raises(SystemExit):
            storm.main(["soak", "--seconds", "0"])
        assert "must be positive" in capsys.readouterr().err
