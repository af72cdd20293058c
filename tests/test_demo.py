"""`xdprx demo`: the daemon, three subscriber processes and a sender on the
demo's own veth pair; every consumer gets every packet, nothing is left behind."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

DEMO = [sys.executable, "-m", "xdprx.service.cli", "demo"]


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


def leftovers(out: str) -> list[str]:
    """Namespaces and processes of this demo run still there."""
    ns = re.search(r"namespaces (xrx-demo-\S+)-rx", out).group(1)
    ctl = re.search(r"control socket (\S+)", out).group(1).rstrip(";")
    left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout.split() if n.startswith(ns)]
    procs = subprocess.run(["pgrep", "-f", ctl], capture_output=True, text=True).stdout.split()
    return left + [f"pid {p}" for p in procs] + ([ctl] if os.path.exists(ctl) else [])


def test_demo_every_consumer_gets_everything(root):
    r = subprocess.run(DEMO + ["--seconds", "3"], capture_output=True, text=True, timeout=300)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    count = 3 * 20000
    for k, kind in enumerate(["run(handler)", "recv()", "recv()"]):
        assert (f"demo: consumer {k} ({kind}): received {count:,d} of {count:,d}, gaps 0, "
                f"payload check OK -> OK") in out, out
    assert "demo: OK: every consumer received every packet" in out
    assert re.search(r"frames back in pool (\d+)/\1", out), out
    assert re.search(r"kernel drops 0, consumer ring drops 0", out), out
    assert len(re.findall(r"^\s+\d+\.\ds\s+daemon rx", out, re.M)) >= 2, "live lines"
    assert leftovers(out) == []


def test_demo_ctrl_c_cleans_up(root):
    p = subprocess.Popen(DEMO + ["--seconds", "30", "--consumers", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out = ""
    try:
        deadline = time.monotonic() + 120
        for line in p.stdout:
            out += line
            if line.startswith("demo: sending") or time.monotonic() > deadline:
                break
        assert "demo: sending" in out, out
        time.sleep(1)
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out += rest
    assert p.returncode == 1, out + err
    assert "demo: interrupted; cleaning up" in out
    assert "Traceback" not in err, err
    assert leftovers(out) == []


def test_bench_without_a_source_tree_says_how(tmp_path):
    """An installed xdprx (no benchmarks/ beside the package): one line, exit 2."""
    import shutil
    import xdprx
    shutil.copytree(os.path.dirname(xdprx.__file__), tmp_path / "xdprx",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "xdprx.service.cli", "bench", "--quick"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdprx: error: xdprx bench needs the source "
                                                   "tree"), r.stderr
    assert "git clone" in lines[0] and "pip install -e ." in lines[0]
