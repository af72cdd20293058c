"""The `xdprx` command: daemon life cycle, stats, and one-line errors (exit 2)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from xdprx.service import cli
from xdprx.testing import control_answers, send_cmd

from helpers import attach_foreign_xdp, xdp_attached

GROUP = "239.1.2.3:5000"
XDPRX = [sys.executable, "-m", "xdprx.service.cli"]


def start_daemon(pair, tmp_path, *extra):
    ctl = str(tmp_path / "xdprx.sock")
    p = pair.popen("rx", XDPRX + ["run", pair.rx_if, "--group", GROUP, "--control", ctl,
                                  "--interval", "0.5", *extra],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not control_answers(ctl):  # a stale socket file may exist: wait for a live one
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"daemon did not start: {p.communicate()}")
        time.sleep(0.05)
    return p, ctl


def wait_detached(pair, timeout=5.0):
    deadline = time.monotonic() + timeout
    while xdp_attached(pair) and time.monotonic() < deadline:
        time.sleep(0.05)
    return xdp_attached(pair)


def test_run_stats_and_clean_exit(pair, tmp_path):
    p, ctl = start_daemon(pair, tmp_path, "--max-frames", "8192", "--hugepages", "off")
    try:
        assert xdp_attached(pair), "program attached while the daemon runs"
        s = pair.run("tx", send_cmd(GROUP, 1000, rate=20000))
        assert s.returncode == 0
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run(XDPRX + ["stats", "--control", ctl, "--json"],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            st = json.loads(r.stdout)
            if st["receiver"]["packets"] == 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st["receiver"]["packets"] == 1000 and st["drops"] == 0
        assert st["mode"] in ("native", "skb") and st["zerocopy"] is False
        assert st["xdp"]["redirected"] == 1000
        f = st["frames"]
        assert (f["ring"], f["total"], f["cap"]) == (4096, 4096, 8192)
        assert f["resident_bytes"] == 4096 * 2048 and f["pages"].startswith("4 KiB")
        human = subprocess.run(XDPRX + ["stats", "--control", ctl], capture_output=True,
                               text=True, timeout=30)
        assert human.returncode == 0 and "pps" in human.stdout
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "frames back in pool 4096/4096 (grew 0 times, cap 8192)" in out
    assert "rx " in out  # live counter lines were printed
    assert not wait_detached(pair, 0)
    assert not os.path.exists(ctl)


def test_sigkill_leaves_nothing_attached(pair, tmp_path):
    p, ctl = start_daemon(pair, tmp_path, "--mode", "skb")
    assert xdp_attached(pair)
    p.kill()
    p.wait(timeout=10)
    assert not wait_detached(pair), "the bpf_link died with the process"
    # a new daemon starts on the same interface and reclaims the stale socket path
    p2, _ = start_daemon(pair, tmp_path)
    p2.send_signal(signal.SIGINT)
    _, err = p2.communicate(timeout=30)
    assert p2.returncode == 0, err
    assert not wait_detached(pair, 0)


def run_cli_inside(pair, args):
    r = pair.run("rx", XDPRX + args)
    return r.returncode, r.stderr.strip()


@pytest.mark.parametrize("args,words", [
    (["run", "nosuchif0", "--group", GROUP], ["unknown interface", "ip link"]),
    (["run", "xrx0", "--group", "198.18.0.7:5000"], ["not a multicast", "239."]),
    (["run", "xrx0", "--group", "239.1.2.3:70000"], ["port", "1..65535"]),
    (["run", "xrx0", "--group", "239.1.2.3"], ["GROUP:PORT"]),
    (["run", "xrx0", "--group", GROUP, "--frames", "3000"], ["power of two", "--frames"]),
    (["run", "xrx0"], ["no group", "--group"]),
    (["run", "xrx0", "--group", GROUP, "--frames", "1024", "--max-frames", "512"],
     [">= --frames", "--max-frames 4096"]),
    (["run", "xrx0", "--group", GROUP, "--frames", "1024", "--reserve", "2000"],
     ["reserve", "0..1023"]),
])
def test_bad_input_one_line_exit_2(pair, args, words):
    code, err = run_cli_inside(pair, args)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("xdprx: error:"), err
    for w in words:
        assert w in err
    assert not xdp_attached(pair)


def test_not_root_exit_2(pair):
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, then run the CLI as a user would
        try:
            sys.stderr = os.fdopen(wfd, "w", buffering=1)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = cli.main(["run", "lo", "--group", GROUP])
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    os.close(wfd)
    err = b""
    while chunk := os.read(rfd, 65536):  # two lines, maybe two writes: read to EOF
        err += chunk
    err = err.decode().strip()
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2, err
    lines = err.splitlines()  # the error, then the doctor hint (not for bad input)
    assert len(lines) == 2 and lines[1] == "xdprx: hint: run `xdprx doctor lo` for a full check"
    assert "missing privileges" in lines[0] and "root" in lines[0]


def test_foreign_xdp_program_is_not_clobbered(pair, tmp_path):
    attach_foreign_xdp(pair, tmp_path)
    for mode in ("auto", "skb", "native"):
        code, err = run_cli_inside(pair, ["run", pair.rx_if, "--group", GROUP, "--mode", mode])
        assert code == 2
        err, hint = err.splitlines()
        assert "someone_elses" in err and "xdp off" in err
        assert hint == f"xdprx: hint: run `xdprx doctor {pair.rx_if}` for a full check"
    # the other program is still there, untouched
    assert "someone_elses" in pair.run("rx", ["ip", "-d", "link", "show", pair.rx_if]).stdout \
        or xdp_attached(pair)
