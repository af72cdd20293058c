"""Fuzzing the control socket of a real daemon (issue 16, part 5).

One `xdprx run` on a veth pair for the whole module (xdprx.testing.ctlfuzz.Harness),
with a Subscriber in another process receiving a bounded multicast stream
all along; the last test checks that it got every packet, bytes and order,
and that the daemon has exactly the descriptors and threads it started with.
Every request, however broken, gets one {"ok": false, "error": ...} reply
naming what was wrong (never a Python exception text), then the connection
closes. XRX_FUZZ_EXAMPLES raises the examples per property (default 40); the
full-size run is `python -m xdprx.testing.ctlfuzz --requests 100000 --json`.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xdprx.testing import ctlfuzz as F
from xdprx.service.control import (FIELDS, MAX_REQUEST, NAME_MAX, REQUEST_TIMEOUT, BadRequest,
                           parse_request, printable, request)

EXAMPLES = int(os.environ.get("XRX_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
UNIT = settings(max_examples=max(EXAMPLES * 5, 200), derandomize=True, deadline=None,
                database=None)
G = F.GROUP
COMMANDS = {"stats": None, "subscribe": None, "control": None}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


def _line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# ---- without a daemon: the parser and printable() -----------------------------------
@UNIT
@given(st.binary(max_size=300))
def test_parser_refuses_any_bytes_with_bad_request_only(data):
    try:
        cmd, req = parse_request(data, COMMANDS)
    except BadRequest as e:
        assert e.what and e.what.isprintable()
        return
    assert cmd in COMMANDS and isinstance(req, dict)


@UNIT
@given(json_values)
def test_parser_refuses_any_json_with_bad_request_only(value):
    try:
        parse_request(json.dumps(value).encode(), COMMANDS)
    except BadRequest as e:
        assert e.what.isprintable() and len(e.what) < 400


@UNIT
@given(st.text(), st.integers(3, 300))
def test_printable_is_one_capped_printable_line(text, cap):
    p = printable(text, cap)
    assert p.isprintable() and "\n" not in p and len(p) <= cap
    assert printable(p, cap) == p
    if text.isprintable() and len(text) <= cap:
        assert p == text


# ---- the daemon ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def h(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, XDP, AF_XDP)")
    if not shutil.which("nsenter"):
        pytest.skip("needs nsenter (util-linux)")
    with F.Harness(str(tmp_path_factory.mktemp("ctlfuzz")), rate=2000, batch=1000) as harness:
        time.sleep(0.5)
        harness.base = (harness.fds(), harness.threads())
        yield harness


def refused(h, data: bytes, mention=None, shut=False) -> str:
    """The one error reply to @data, checked; its text."""
    o = F.exchange(h.ctl, data, shut=shut)
    assert not F.violations(o, "error", mention), (data[:200], o)
    return o.reply["error"]


SUB = {"cmd": "subscribe", "groups": [G]}

# every case here failed before: a Python exception text, a silent accept, a
# connection never answered, or the control thread killed (the deep ones, EMFILE)
REGRESSIONS = [
    ("list", b"[1, 2]\n", "JSON object"),
    ("number", b"5\n", "JSON object"),
    ("string", b'"stats"\n', "JSON object"),
    ("null", b"null\n", "JSON object"),
    ("true", b"true\n", "JSON object"),
    ("cmd-list", _line({"cmd": ["stats"]}), '"cmd" must be a string'),
    ("cmd-null", _line({"cmd": None}), '"cmd" must be a string'),
    ("cmd-missing", _line({}), 'no "cmd"'),
    ("unknown-cmd", _line({"cmd": "reboot"}), "unknown command 'reboot'"),
    ("groups-int", _line(dict(SUB, groups=5)), '"groups"'),
    ("groups-object", _line(dict(SUB, groups={G: 1})), '"groups"'),
    ("groups-nested", _line(dict(SUB, groups=[[G]])), '"groups"[0]'),
    ("groups-empty", _line(dict(SUB, groups=[])), '"groups" is empty'),
    ("groups-long", _line(dict(SUB, groups=["2" * 100000])), "too long"),
    ("name-list", _line(dict(SUB, name=["a"])), '"name"'),
    ("ring-string", _line(dict(SUB, ring="2048")), '"ring"'),
    ("ring-bool", _line(dict(SUB, ring=True)), '"ring"'),
    ("ring-float", _line(dict(SUB, ring=2048.0)), '"ring"'),
    ("ring-nan", b'{"cmd": "subscribe", "ring": NaN}\n', '"ring"'),
    ("ring-huge", _line(dict(SUB, ring=10 ** 30)), "out of range"),
    ("ring-5000-digits", b'{"cmd": "subscribe", "ring": ' + b"9" * 5000 + b"}\n",
     "too many digits"),
    ("quota-float", _line(dict(SUB, quota=1.5)), '"quota"'),
    ("wake-batch-list", _line(dict(SUB, wake_batch=[])), '"wake_batch"'),
    ("wake-usecs-object", _line(dict(SUB, wake_usecs={})), '"wake_usecs"'),
    ("invalid-utf8", b'{"cmd": "st\xffats"}\n', "UTF-8"),
    ("utf16", '{"cmd": "stats"}\n'.encode("utf-16"), "UTF-8"),
    ("nul", b'{"cmd": "st\x00ats"}\n', "JSON"),
    ("nul-only", b"\x00\x00\n", "JSON"),
    ("bom", b"\xef\xbb\xbf" + _line({"cmd": "stats"}), "byte order mark"),
    ("empty", b"\n", "empty"),
    ("deep-30000", b"[" * 30000 + b"]" * 30000 + b"\n", "nested too deeply"),
    ("deep-in-a-field", b'{"cmd": "subscribe", "groups": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
     "nested too deeply"),
    ("deep-100000", b"[" * 100000 + b"]" * 100000 + b"\n", "too long"),
    ("oversized", b'{"cmd": "stats", "x": "' + b"x" * MAX_REQUEST + b'"}\n', "too long"),
    ("truncated", b'{"cmd": "subscr\n', "JSON"),
]


@pytest.mark.parametrize("data,mention", [c[1:] for c in REGRESSIONS],
                         ids=[c[0] for c in REGRESSIONS])
def test_regressions_get_one_clear_error(h, data, mention):
    refused(h, data, mention)


def test_trailing_bytes_after_the_line_and_unterminated_requests(h):
    # the request line is answered even when more follows in the same write
    # (it used to wait forever for a buffer ending in a newline)
    o = F.exchange(h.ctl, _line({"cmd": "control"}) + b'{"cmd": "stats"}\njunk')
    assert not F.violations(o, "ok") and "control" in o.reply
    # the client ends its side before the newline: told so, not dropped
    refused(h, b'{"cmd": "stats"}', "without a newline", shut=True)
    # a line longer than MAX_REQUEST that never ends
    s = F.connect(h.ctl, 5)
    try:
        s.sendall(b"x" * (MAX_REQUEST + 10))
        s.settimeout(5)
        r = json.loads(s.recv(65536))
        assert r["ok"] is False and "too long" in r["error"]
    finally:
        s.close()


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(h, data):
    o = F.exchange(h.ctl, data.replace(b"\n", b"") + b"\n")
    assert not F.violations(o), (data, o)


@FUZZ
@given(json_values.filter(lambda v: not isinstance(v, dict)))
def test_json_that_is_not_an_object(h, value):
    refused(h, _line(value), "JSON object")


WRONG = {"int": st.one_of(st.booleans(), st.floats(), st.text(), st.lists(st.integers()),
                          st.dictionaries(st.text(), st.integers())),
         "name": st.one_of(st.booleans(), st.integers(), st.floats(), st.lists(st.text()),
                           st.dictionaries(st.text(), st.text())),
         "groups": st.one_of(st.booleans(), st.integers(), st.floats(),
                             st.dictionaries(st.text(), st.integers()),
                             st.lists(st.integers() | st.none() | st.lists(st.text()),
                                      min_size=1))}


@st.composite
def wrong_field(draw):
    """A wrong type in a field of a command that has fields (stats and control
    have only "cmd": its wrong types are test_any_object's and the regressions')."""
    cmd = draw(st.sampled_from([c for c in sorted(FIELDS) if FIELDS[c]]))
    key = draw(st.sampled_from(sorted(FIELDS[cmd])))
    return dict(SUB, cmd=cmd, **{key: draw(WRONG[FIELDS[cmd][key]])}), f'"{key}"'


@FUZZ
@given(wrong_field())
def test_wrong_type_in_every_field_of_every_command(h, case):
    req, mention = case
    refused(h, _line(req), mention)


def test_unknown_fields_are_ignored(h):
    # clients older or newer than the daemon (and tests/test_subscribers.py's
    # helper, which sends "groups" with stats) keep working
    for req in ({"cmd": "stats", "groups": [G]}, {"cmd": "control", "verbose": [1, {}]}):
        o = F.exchange(h.ctl, _line(req))
        assert not F.violations(o, "ok"), (req, o)
    o = F.exchange(h.ctl, _line(dict(SUB, quta=5, **{"\n\x1b": None})))
    assert not F.violations(o, "ok") and o.fds >= 4, o


@FUZZ
@given(st.dictionaries(st.sampled_from(["cmd", "groups", "ring", "quota", "name", "wake_batch",
                                        "wake_usecs"]) | st.text(max_size=10),
                       json_values, max_size=6))
def test_any_object(h, req):
    o = F.exchange(h.ctl, _line(req))
    assert not F.violations(o), (req, o)


@FUZZ
@given(st.text(max_size=200).filter(lambda c: c not in COMMANDS))
def test_unknown_commands_are_named_escaped_and_capped(h, cmd):
    err = refused(h, _line({"cmd": cmd}), "unknown command")
    assert len(err) < NAME_MAX + 100


def test_handler_errors_are_clear(h):
    for field, value, mention in (("groups", ["239.9.9.9:1"], "not received here"),
                                  ("groups", ["10.0.0.1:5"], "not a multicast"),
                                  ("groups", [G, G], "twice"),
                                  ("groups", ["nonsense"], "GROUP:PORT"),
                                  ("ring", 1000, "power of two"),
                                  ("quota", 0, "quota"),
                                  ("wake_batch", -1, "wake_batch"),
                                  ("wake_usecs", 10 ** 9, "wake_usecs")):
        refused(h, _line(dict(SUB, **{field: value})), mention)


def test_random_mix_of_everything(h):
    rep = F.fuzz(h.ctl, EXAMPLES * 10, seed=3, workers=2)
    assert rep["violations"] == 0, rep["violation_examples"][:5]
    assert rep["ok"] > 0 and rep["refused"] > 0


def _subscribe_raw(h, name):
    s = F.connect(h.ctl, 5)
    s.sendall(_line(dict(SUB, name=name)))
    s.settimeout(10)
    msg, fds, _, _ = socket.recv_fds(s, 65536, 64)
    for fd in fds:
        os.close(fd)
    return s, json.loads(msg), len(fds)


def _wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def test_client_text_cannot_forge_a_log_line(h):
    forged = "xdprx: consumer 99 (pid 1 uid 0) subscribed to " + G
    name = "evil\x1b[2J\r\u2028\n" + forged + "A" * 200
    s, reply, nfds = _subscribe_raw(h, name)
    try:
        assert reply["ok"] and nfds >= 4
        # `xdprx stats` prints the name on the consumer's one line, escaped
        r = subprocess.run([sys.executable, "-m", "xdprx.service.cli", "stats", "--control", h.ctl],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        mine = [ln for ln in r.stdout.splitlines() if "evil" in ln]
        assert len(mine) == 1 and "\\n" in mine[0] and "\\x1b" in mine[0], r.stdout
        assert "consumer 99" not in r.stdout.replace(mine[0], "")
        st = request(h.ctl, {"cmd": "stats"})["stats"]
        names = [c.get("name", "") for c in st["consumers"]]
        assert [n for n in names if n.startswith("evil")] == [printable(name)]
    finally:
        s.close()
    time.sleep(1.1)   # a fresh second of the log's budget for refusals
    refused(h, _line({"cmd": "evil\nxdprx: forged\x1b[31m"}), "unknown command")
    assert _wait_for(lambda: h.log().count("evil") >= 3)
    log = h.log()
    assert "\x1b" not in log and "\r" not in log and "\u2028" not in log
    lines = [ln for ln in log.splitlines() if "evil" in ln]
    assert len(lines) == 3, lines            # subscribed, left, the refused command
    assert all("\\n" in ln for ln in lines)
    assert sum(ln.endswith("subscribed to " + G) for ln in lines) == 1
    assert not any(ln.startswith("xdprx: consumer 99") or ln.startswith("xdprx: forged")
                   for ln in log.splitlines())
    for ln in lines[:2]:    # the name is capped
        shown = ln.split("name '", 1)[1].rsplit("')", 1)[0]
        assert len(shown) <= NAME_MAX


def test_half_open_connections_time_out_but_lifelines_do_not(h):
    # a subscription whose lifeline stays idle longer than the request timeout
    s, reply, _ = _subscribe_raw(h, "idle-lifeline")
    try:
        assert reply["ok"]
        rep = F.half_open(h.ctl, 1500)       # more than MAX_PENDING: some are evicted
        assert rep["without_one_clear_reply"] == 0, rep
        assert rep["stats_while_held"] > 0   # served all along
        assert set(rep["replies"]) <= {
            "no whole request line within N s",
            "connection closed to make room: N connections are waiting to send a request, "
            "and this one waited longest"}, rep["replies"]
        names = [c.get("name") for c in request(h.ctl, {"cmd": "stats"})["stats"]["consumers"]]
        assert "idle-lifeline" in names and "ctlfuzz-stream" in names
    finally:
        s.close()
    assert _wait_for(lambda: "idle-lifeline" not in [
        c.get("name") for c in request(h.ctl, {"cmd": "stats"})["stats"]["consumers"]])
    ctl = request(h.ctl, {"cmd": "control"})["control"]
    assert ctl["timed_out"] > 0 and ctl["evicted"] > 0


def test_connect_storm(h):
    rep = F.storm(h.ctl, 5000)
    assert rep["stats_failed"] == 0 and rep["stats_answered"] > 0, rep


def test_clients_that_never_read(h):
    rep = F.never_read(h.ctl, 200)
    assert rep["open_while_held"] <= 3, rep   # every one answered and closed
    fds, threads = h.settle(*h.base)
    assert fds <= h.base[0] and threads <= h.base[1], ((fds, threads), h.base)


def test_descriptor_exhaustion(h):
    rep = F.fd_exhaustion(h, idle=200)
    assert rep["stats"] == "answered", rep
    assert not rep["subscribe_violations"], rep
    assert rep["accept_failures"] > 0        # EMFILE happened, and it kept serving


def test_zz_daemon_healthy_and_the_stream_complete(h):
    assert h.daemon.poll() is None
    fds, threads = h.settle(*h.base)
    assert fds <= h.base[0] and threads <= h.base[1], ("leaked", (fds, threads), h.base)
    ctl = request(h.ctl, {"cmd": "control"})["control"]
    assert ctl["internal_errors"] == 0 and ctl["pending"] <= 1
    assert all(ln.isprintable() for ln in h.log().splitlines())
    st = request(h.ctl, {"cmd": "stats"})["stats"]
    dp = h.stop_traffic()
    assert dp["sent"] > 0 and dp["traffic_error"] == "" and dp["consumer_error"] == "", dp
    assert (dp["received"], dp["gaps"], dp["consumer_dropped"]) == (dp["sent"], 0, 0), dp
    assert dp["payload_sha256_match"], dp
    assert st["drops"] == 0
    assert REQUEST_TIMEOUT <= 10
