"""examples/xdprx@.service: systemd parses it without a warning, and it keeps what
AF_XDP needs (capabilities, memlock, address families, executable memory for Numba)."""
import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "examples" / "xdprx@.service"
REPO = UNIT.parent.parent
CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_SYS_ADMIN", "CAP_IPC_LOCK"}


def service() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp["Service"]


def test_unit_keeps_what_af_xdp_needs():
    s = service()
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main" and s["WatchdogSec"]
    assert set(s["CapabilityBoundingSet"].split()) == CAPS
    assert set(s["AmbientCapabilities"].split()) == CAPS
    assert s["LimitMEMLOCK"] == "infinity" and s["RuntimeDirectory"] == "xdprx"
    assert s["ProtectSystem"] == "strict"
    assert {"AF_XDP", "AF_NETLINK", "AF_UNIX", "AF_INET"} <= set(s["RestrictAddressFamilies"].split())
    assert " %I " in s["ExecStart"] and "--config /etc/xdprx/%I.toml" in s["ExecStart"]
    active = [ln.split("=")[0] for ln in UNIT.read_text().splitlines() if ln and ln[0] != "#"]
    for forbidden in ("MemoryDenyWriteExecute", "PrivateNetwork", "PrivateUsers", "IPAddressDeny"):
        assert forbidden not in active
    # the syscalls xdprx makes are not in the denied sets
    denied = s["SystemCallFilter"]
    assert denied.startswith("~") and "@privileged" not in denied and "@system-service" not in denied


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_analyze_verify_has_no_warnings(tmp_path):
    unit = tmp_path / "xdprx@xrx0.service"
    unit.write_text(UNIT.read_text().replace("/opt/xdprx", str(REPO)))
    if not (REPO / ".venv/bin/xdprx").exists():
        pytest.skip("needs the .venv (./install.sh)")
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       env={"SYSTEMD_LOG_LEVEL": "notice", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr


def test_the_units_capabilities_are_enough(pair, tmp_path):
    """`xdprx run` with exactly the unit's capability bounding set receives."""
    import json
    import sys
    import time
    from xdprx.testing import control_answers, send_cmd
    caps = ",".join("+" + c[4:].lower() for c in sorted(CAPS))
    limited = ["setpriv", f"--bounding-set=-all,{caps}", "--", sys.executable, "-m", "xdprx.service.cli"]
    ctl, g = str(tmp_path / "x.sock"), "239.1.2.3:5000"
    r = pair.run("rx", limited + ["doctor", pair.rx_if, "--json"])
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 0 and checks["privileges"]["status"] == "ok", checks["privileges"]
    p = pair.popen("rx", limited + ["run", pair.rx_if, "--group", g, "--control", ctl],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not control_answers(ctl):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        status = Path(f"/proc/{p.pid}/status").read_text()
        assert "CapBnd:\t0000008000207000" in status, "the daemon ran with the unit's set only"
        assert pair.run("tx", send_cmd(g, 500, rate=10000)).returncode == 0
        deadline = time.monotonic() + 10
        while True:
            st = json.loads(subprocess.run([sys.executable, "-m", "xdprx.service.cli", "stats", "--control",
                                            ctl, "--json"], capture_output=True, text=True).stdout)
            if st["receiver"]["packets"] == 500 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st["receiver"]["packets"] == 500
    finally:
        p.terminate()
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
